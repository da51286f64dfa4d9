//! Cross-zone SNI names. A sidecar reaching a service in another zone opens TLS to that zone's
//! ingress with an SNI naming the target; the ingress routes on it without decrypting (and a zone
//! egress forwards on it). The name is readable and reversible (DESIGN.md section 5):
//!
//! `<service>.<port>.<zone>.<mesh>.mesh`
//!
//! read from the right, so the service may span several labels. Each part is encoded into RFC 1123
//! label characters: `a-z`, `0-9` and inner `-` stand for themselves; any other byte (upper case,
//! `_`, `.`, `q` itself) becomes `q` and two hex digits (`backend_v1` -> `backendq5fv1`; `q` is
//! rare in names). Zone and
//! mesh must fit one label (63 characters); the service is cut into 63-character labels; the
//! whole name is at most 253 characters. Port `0` means "the service, whatever its port".

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
}

/// Why a name could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("{part} {value:?} does not fit one DNS label once encoded (63 characters)")]
    LabelTooLong { part: &'static str, value: String },
    #[error("the SNI for service {service:?} would be {len} characters (at most 253)")]
    TooLong { service: String, len: usize },
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
        let sni = format!(
            "{}.{}.{zone}.{mesh}.{SNI_SUFFIX}",
            chunks.join("."),
            self.port
        );
        if sni.len() > 253 {
            return Err(SniError::TooLong {
                service: self.service.clone(),
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
        let port = labels.pop().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let service = decode(&labels.concat()).ok_or_else(bad)?;
        Ok(SniTarget {
            mesh,
            service,
            port,
            zone,
        })
    }
}

impl fmt::Display for SniTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} in zone {} of mesh {}",
            self.service, self.port, self.zone, self.mesh
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
}
