//! Cross-zone SNI names. A sidecar reaching a service in another zone opens TLS to that zone's
//! ingress with an SNI naming the target; the ingress routes on it without decrypting (and a zone
//! egress forwards on it). The name is readable and reversible (DESIGN.md section 5):
//!
//! `<service>.<port>.<zone>.<mesh>.mesh` for all of a service's instances, and, for a tag subset
//! of them (a route's MeshServiceSubset backend, a TrafficRoute split to `version: v1`),
//! `<service>.<key1>.<value1>...<keyN>.<valueN>.<port>.t<N>.<zone>.<mesh>.mesh`, tags sorted by
//! key (`backend.version.v1.0.t1.zone-2.default.mesh`). The ingress has a filter chain per name,
//! so a subset's connection reaches only the instances carrying its tags.
//!
//! Read from the right: mesh, zone, then either the port (digits: no tags) or `t<N>` followed by
//! the port and N key/value label pairs; what is left is the service, which may span several
//! labels. Each part is encoded into RFC 1123 label characters: `a-z`, `0-9` and inner `-` stand
//! for themselves; any other byte (upper case, `_`, `.`, `/`, `q` itself) becomes `q` and two
//! hex digits (`backend_v1` -> `backendq5fv1`, `kuma.io/zone` -> `kumaq2eioq2fzone`; `q` is rare
//! in names). Zone, mesh and each tag key and value must fit one label (1 to 63 characters once
//! encoded); the service is cut into 63-character labels; the whole name is at most 253
//! characters. Port `0` means "the service, whatever its port".

use std::collections::BTreeMap;
use std::fmt;

/// The suffix every Meridian cross-zone SNI ends with.
pub const SNI_SUFFIX: &str = "mesh";

/// What a cross-zone SNI names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SniTarget {
    pub mesh: String,
    pub service: String,
    pub port: u32,
    pub zone: String,
    /// The subset: instances carrying all these tags (empty: every instance). Never holds
    /// `kuma.io/service` (that is `service`).
    pub tags: BTreeMap<String, String>,
}

/// Why a name could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("{part} {value:?} does not fit one DNS label once encoded (63 characters)")]
    LabelTooLong { part: &'static str, value: String },
    #[error(
        "tag {key:?}: {value:?} of the subset of service {service:?}: its {part} must be 1 to 63 \
         characters once encoded for a DNS label"
    )]
    TagLabel {
        service: String,
        key: String,
        value: String,
        part: &'static str,
    },
    #[error("the SNI for {target} would be {len} characters (at most 253)")]
    TooLong { target: String, len: usize },
    #[error("{0:?} is not a Meridian cross-zone SNI")]
    NotMeridian(String),
}

fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let edge = i == 0 || i + 1 == bytes.len();
        match b {
            b'a'..=b'p' | b'r'..=b'z' | b'0'..=b'9' => out.push(b as char),
            b'-' if !edge => out.push('-'),
            _ => {
                out.push('q');
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
    out
}

/// Cuts an encoded value into labels of at most 63 characters that neither start nor end with
/// `-` (`None` for a run of dashes too long to cut around).
fn split_labels(encoded: &str) -> Option<Vec<&str>> {
    let mut labels = Vec::new();
    let mut rest = encoded;
    while rest.len() > 63 {
        let bytes = rest.as_bytes();
        let cut = (1..=63)
            .rev()
            .find(|&i| bytes[i - 1] != b'-' && bytes[i] != b'-')?;
        labels.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if rest.is_empty() {
        return None;
    }
    labels.push(rest);
    Some(labels)
}

fn decode(label: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(label.len());
    let mut chars = label.bytes();
    while let Some(c) = chars.next() {
        if c == b'q' {
            let hi = chars.next()?;
            let lo = chars.next()?;
            let hex = [hi, lo];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(c);
        }
    }
    String::from_utf8(bytes).ok()
}

impl SniTarget {
    /// All instances of `service` (port 0) in `zone` of `mesh`.
    pub fn service(mesh: &str, service: &str, zone: &str) -> SniTarget {
        SniTarget {
            mesh: mesh.to_string(),
            service: service.to_string(),
            port: 0,
            zone: zone.to_string(),
            tags: BTreeMap::new(),
        }
    }

    /// The same target restricted to the instances carrying `tags`.
    pub fn with_tags(mut self, tags: BTreeMap<String, String>) -> SniTarget {
        self.tags = tags;
        self
    }

    /// The SNI naming this target.
    pub fn to_sni(&self) -> Result<String, SniError> {
        let label = |part: &'static str, value: &str| {
            let encoded = encode(value);
            if encoded.is_empty() || encoded.len() > 63 {
                Err(SniError::LabelTooLong {
                    part,
                    value: value.to_string(),
                })
            } else {
                Ok(encoded)
            }
        };
        let zone = label("zone", &self.zone)?;
        let mesh = label("mesh", &self.mesh)?;
        let service = encode(&self.service);
        let chunks = split_labels(&service).ok_or_else(|| SniError::LabelTooLong {
            part: "service",
            value: self.service.clone(),
        })?;
        let mut labels: Vec<String> = chunks.into_iter().map(str::to_string).collect();
        for (key, value) in &self.tags {
            for (part, text) in [("key", key), ("value", value)] {
                let encoded = encode(text);
                if encoded.is_empty() || encoded.len() > 63 {
                    return Err(SniError::TagLabel {
                        service: self.service.clone(),
                        key: key.clone(),
                        value: value.clone(),
                        part,
                    });
                }
                labels.push(encoded);
            }
        }
        labels.push(self.port.to_string());
        if !self.tags.is_empty() {
            labels.push(format!("t{}", self.tags.len()));
        }
        let sni = format!("{}.{zone}.{mesh}.{SNI_SUFFIX}", labels.join("."));
        if sni.len() > 253 {
            return Err(SniError::TooLong {
                target: self.to_string(),
                len: sni.len(),
            });
        }
        Ok(sni)
    }

    /// Reads an SNI built by [`SniTarget::to_sni`].
    pub fn parse(sni: &str) -> Result<SniTarget, SniError> {
        let bad = || SniError::NotMeridian(sni.chars().take(253).collect());
        let mut labels: Vec<&str> = sni.split('.').collect();
        if labels.len() < 5 || labels.pop() != Some(SNI_SUFFIX) {
            return Err(bad());
        }
        let mesh = decode(labels.pop().ok_or_else(bad)?).ok_or_else(bad)?;
        let zone = decode(labels.pop().ok_or_else(bad)?).ok_or_else(bad)?;
        let mut port_label = labels.pop().ok_or_else(bad)?;
        // `t<N>` where the plain form has its port: N tags follow, left of the port.
        let tag_count = match port_label.strip_prefix('t') {
            Some(n) if n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0') => {
                port_label = labels.pop().ok_or_else(bad)?;
                n.parse::<usize>().map_err(|_| bad())?
            }
            _ => 0,
        };
        if !port_label.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let port = port_label.parse().map_err(|_| bad())?;
        // At least one service label must remain left of the tags.
        if labels.len() <= tag_count.saturating_mul(2) {
            return Err(bad());
        }
        let tag_labels = labels.split_off(labels.len() - 2 * tag_count);
        let mut tags = BTreeMap::new();
        for pair in tag_labels.chunks(2) {
            let key = decode(pair[0]).filter(|k| !k.is_empty()).ok_or_else(bad)?;
            let value = decode(pair[1]).filter(|v| !v.is_empty()).ok_or_else(bad)?;
            // Keys come sorted and once each, so that every subset has exactly one name.
            if tags
                .keys()
                .next_back()
                .is_some_and(|last: &String| *last >= key)
            {
                return Err(bad());
            }
            tags.insert(key, value);
        }
        let service = decode(&labels.concat()).ok_or_else(bad)?;
        Ok(SniTarget {
            mesh,
            service,
            port,
            zone,
            tags,
        })
    }
}

impl fmt::Display for SniTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.service)?;
        if !self.tags.is_empty() {
            let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, "{{{}}}", tags.join(","))?;
        }
        write!(
            f,
            ":{} in zone {} of mesh {}",
            self.port, self.zone, self.mesh
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(service: &str) -> SniTarget {
        SniTarget {
            mesh: "default".into(),
            service: service.into(),
            port: 8080,
            zone: "zone-2".into(),
            tags: BTreeMap::new(),
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn assert_rfc1123(sni: &str) {
        assert!(sni.len() <= 253, "{sni}");
        for label in sni.split('.') {
            assert!(!label.is_empty() && label.len() <= 63, "{sni}");
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{sni}"
            );
            assert!(!label.starts_with('-') && !label.ends_with('-'), "{sni}");
        }
    }

    #[test]
    fn readable_and_reversible() {
        let t = target("backend");
        let sni = t.to_sni().unwrap();
        assert_eq!(sni, "backend.8080.zone-2.default.mesh");
        assert_eq!(SniTarget::parse(&sni).unwrap(), t);
        for service in [
            "backend_kuma-demo_svc_8080",
            "Web.Frontend",
            "zz-top",
            "quux",
            &format!("{}-{}", "a".repeat(62), "b".repeat(70)),
            "-edge-",
            "ünïcode",
            &"a".repeat(150),
        ] {
            let t = target(service);
            let sni = t.to_sni().unwrap();
            assert_rfc1123(&sni);
            assert_eq!(SniTarget::parse(&sni).unwrap(), t, "{sni}");
        }
    }

    #[test]
    fn limits_and_foreign_names() {
        assert!(matches!(
            target(&"x".repeat(300)).to_sni(),
            Err(SniError::TooLong { .. })
        ));
        let mut t = target("a");
        t.zone = "q".repeat(40);
        assert!(matches!(
            t.to_sni(),
            Err(SniError::LabelTooLong { part: "zone", .. })
        ));
        for foreign in [
            "example.com",
            "a.b.c.d.e",
            "backend.x.zone.default.mesh",
            "",
        ] {
            assert!(SniTarget::parse(foreign).is_err(), "{foreign}");
        }
    }

    #[test]
    fn subsets_carry_their_tags_sorted_and_reversible() {
        let t = target("backend").with_tags(tags(&[("version", "v1")]));
        let sni = t.to_sni().unwrap();
        assert_eq!(sni, "backend.version.v1.8080.t1.zone-2.default.mesh");
        assert_eq!(SniTarget::parse(&sni).unwrap(), t);
        // Without tags the name is the plain one, unchanged.
        assert_eq!(
            SniTarget::service("default", "backend", "zone-2")
                .to_sni()
                .unwrap(),
            "backend.0.zone-2.default.mesh"
        );
        for (service, pairs) in [
            ("backend", vec![("version", "v2"), ("env", "prod")]),
            ("Web.Frontend", vec![("kuma.io/zone", "Zone-1.EU")]),
            ("t1", vec![("team/Name", "a.b/C_d"), ("q", "quux")]),
            (&"s".repeat(70), vec![("k", "v")]),
            ("svc", vec![("-edge-", "ünï")]),
        ] {
            let t = target(service).with_tags(tags(&pairs));
            let sni = t.to_sni().unwrap();
            assert_rfc1123(&sni);
            assert!(sni.ends_with(&format!(".8080.t{}.zone-2.default.mesh", pairs.len())));
            assert_eq!(SniTarget::parse(&sni).unwrap(), t, "{sni}");
            // Distinct from the plain name and from another subset's.
            assert_ne!(sni, target(service).to_sni().unwrap());
        }
        // Tags are written sorted by key, whatever order they came in.
        let sni = target("backend")
            .with_tags(tags(&[("zz", "1"), ("aa", "2")]))
            .to_sni()
            .unwrap();
        assert_eq!(sni, "backend.aa.2.zz.1.8080.t2.zone-2.default.mesh");
        // A plain service whose name looks like a tag marker stays plain.
        let t = target("t1");
        assert_eq!(SniTarget::parse(&t.to_sni().unwrap()).unwrap(), t);
    }

    #[test]
    fn tags_that_do_not_fit_are_clear_errors() {
        let long = target("backend").with_tags(tags(&[("version", &"v".repeat(64))]));
        let err = long.to_sni().unwrap_err();
        assert!(
            matches!(&err, SniError::TagLabel { key, part: "value", .. } if key == "version"),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"version\""), "{err}");
        // Upper case costs three characters a byte: 22 of them no longer fit a label.
        let upper = target("backend").with_tags(tags(&[(&"K".repeat(22), "v")]));
        assert!(matches!(
            upper.to_sni(),
            Err(SniError::TagLabel { part: "key", .. })
        ));
        let empty = target("backend").with_tags(tags(&[("version", "")]));
        assert!(matches!(
            empty.to_sni(),
            Err(SniError::TagLabel { part: "value", .. })
        ));
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("key{i}"), "v".repeat(10)))
            .collect();
        let many = target("backend").with_tags(many.into_iter().collect());
        let err = many.to_sni().unwrap_err();
        assert!(matches!(err, SniError::TooLong { .. }), "{err:?}");
        assert!(err.to_string().contains("backend{key0=vvvvvvvvvv"), "{err}");
        for foreign in [
            "backend.t1.zone-2.default.mesh",
            "version.v1.0.t1.zone-2.default.mesh",
            "backend.version.v1.0.t2.zone-2.default.mesh",
            "backend.version.v1.0.t01.zone-2.default.mesh",
            "backend.zz.1.aa.2.0.t2.zone-2.default.mesh",
            "backend.k.v.k.w.0.t2.zone-2.default.mesh",
        ] {
            assert!(SniTarget::parse(foreign).is_err(), "{foreign}");
        }
    }
}
