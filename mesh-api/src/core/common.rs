//! Building blocks shared by the core (legacy) types: tag and selector rules, address and port
//! checks, Kuma's duration formats and data sources. Lenient scalar decoding lives in
//! [`crate::lenient`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validation::{FieldPath, Violations};
use crate::{PROTOCOL_TAG, SERVICE_TAG};

/// Protocols Kuma understands in `kuma.io/protocol` (compared case-insensitively).
pub const KNOWN_PROTOCOLS: &[&str] = &["http", "http2", "tcp", "tls", "grpc", "kafka", "mysql"];
/// Protocols Kuma lists to users in error messages.
pub const SUPPORTED_PROTOCOLS: &[&str] = &["grpc", "http", "http2", "kafka", "tcp"];

/// Whether `value` names a protocol Kuma knows.
pub fn is_known_protocol(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    KNOWN_PROTOCOLS.contains(&lower.as_str())
}

/// Kuma's hint listing allowed values (`Allowed values: a, b`).
pub fn allowed_values_hint(values: &[&str]) -> String {
    if values.is_empty() {
        "Allowed values: (none)".to_owned()
    } else {
        format!("Allowed values: {}", values.join(", "))
    }
}

/// `s` parses as an IPv4 or IPv6 address.
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// A DNS name as Kuma's validator library defines it: dot-separated labels of up to 63 characters
/// made of letters, digits, `_` and `-` (not starting with `-`), optionally ending in a dot, and
/// not an IP address.
pub fn is_dns_name(s: &str) -> bool {
    if s.is_empty() || s.chars().filter(|c| *c != '.').count() > 255 || is_ip(s) {
        return false;
    }
    let body = s.strip_suffix('.').unwrap_or(s);
    !body.is_empty()
        && body.split('.').all(|label| {
            let mut chars = label.chars();
            match chars.next() {
                Some(first) if first.is_ascii_alphanumeric() || first == '_' => {}
                _ => return false,
            }
            label.len() <= 63 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

pub use crate::validation::is_rfc1123_subdomain;

/// Kuma's address rule for proxies (`validateAddress`): non-empty, not a wildcard, an IP or a DNS
/// name. Violations are reported at `path.address`, as Kuma does (so an advertised address is
/// reported at `networking.advertisedAddress.address`).
pub fn validate_address(path: &FieldPath, address: &str, violations: &mut Violations) {
    let field = path.field("address");
    if address.is_empty() {
        violations.add(&field, "address can't be empty");
        return;
    }
    if address == "0.0.0.0" || address == "::" {
        violations.add(&field, "must not be 0.0.0.0 or ::");
    }
    if !is_ip(address) && !is_dns_name(address) {
        violations.add(&field, "address has to be valid IP address or domain name");
    }
}

/// A TCP/UDP port: 1 to 65535.
pub fn validate_port(path: &FieldPath, port: u32, violations: &mut Violations) {
    if port == 0 || port > 65535 {
        violations.add(path, "port must be in the range [1, 65535]");
    }
}

/// Which character set tag values must use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TagValues {
    /// Tags on a proxy or service: letters, digits, `.`, `-`, `_`, `:`.
    #[default]
    Tags,
    /// Selectors: additionally `/`, or exactly `*`.
    Selector,
}

/// Options for [`validate_tags`], after Kuma's `ValidateTagsOpts`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TagRules {
    pub values: TagValues,
    pub require_at_least_one: bool,
    pub require_service: bool,
    /// When `kuma.io/protocol` is present it must name a known protocol.
    pub check_protocol: bool,
    /// Exactly one tag, `kuma.io/service` (destinations of a TrafficRoute).
    pub only_service: bool,
}

fn is_tag_name(key: &str) -> bool {
    key.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'))
}

fn is_tag_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

fn is_selector_value(value: &str) -> bool {
    value == "*" || is_tag_name(value)
}

/// Checks a tag map (or selector) the way Kuma does, reporting at `path` and `path["key"]`.
pub fn validate_tags(
    path: &FieldPath,
    tags: &BTreeMap<String, String>,
    rules: TagRules,
    violations: &mut Violations,
) {
    if rules.require_at_least_one && tags.is_empty() {
        violations.add(path, "must have at least one tag");
    }
    if rules.only_service && (tags.len() != 1 || !tags.contains_key(SERVICE_TAG)) {
        violations.add(
            path,
            format!("must consist of exactly one tag {SERVICE_TAG:?}"),
        );
    }
    if rules.check_protocol {
        if let Some(value) = tags.get(PROTOCOL_TAG) {
            if !is_known_protocol(value) {
                violations.add(
                    &path.key(PROTOCOL_TAG),
                    format!(
                        "tag {PROTOCOL_TAG:?} has an invalid value {value:?}. {}",
                        allowed_values_hint(SUPPORTED_PROTOCOLS)
                    ),
                );
            }
        }
    }
    for (key, value) in tags {
        if key.is_empty() {
            violations.add(path, "tag name must be non-empty");
        }
        if !is_tag_name(key) {
            violations.add(
                &path.key(key),
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        if rules.only_service && key != SERVICE_TAG {
            violations.add(&path.key(key), format!("tag {key:?} is not allowed"));
        }
        if value.is_empty() {
            violations.add(&path.key(key), "tag value must be non-empty");
        }
        match rules.values {
            TagValues::Tags if !is_tag_value(value) => violations.add(
                &path.key(key),
                "tag value must consist of alphanumeric characters, dots, dashes and underscores",
            ),
            TagValues::Selector if !is_selector_value(value) => violations.add(
                &path.key(key),
                "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\"",
            ),
            _ => {}
        }
    }
    if (rules.require_service || rules.only_service) && !tags.contains_key(SERVICE_TAG) {
        violations.add(path, format!("mandatory tag {SERVICE_TAG:?} is missing"));
    }
}

/// Parses Kuma's coarse duration format used by mTLS settings: `<n><unit>` with unit one of
/// `y`, `w`, `d`, `h`, `m`, `s`, `ms`, or a bare `0`.
pub fn parse_kuma_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let millis_per_unit: u64 = match unit {
        "y" => 1000 * 60 * 60 * 24 * 365,
        "w" => 1000 * 60 * 60 * 24 * 7,
        "d" => 1000 * 60 * 60 * 24,
        "h" => 1000 * 60 * 60,
        "m" => 1000 * 60,
        "s" => 1000,
        "ms" => 1,
        _ => return None,
    };
    n.checked_mul(millis_per_unit).map(Duration::from_millis)
}

/// Parses a protobuf JSON duration (`"10s"`, `"1.5s"`, `"-2s"`). Returns seconds as `f64`.
pub fn parse_proto_duration(s: &str) -> Option<f64> {
    let number = s.strip_suffix('s')?;
    let unsigned = number.strip_prefix('-').unwrap_or(number);
    let valid = !unsigned.is_empty()
        && unsigned.chars().all(|c| c.is_ascii_digit() || c == '.')
        && unsigned.chars().filter(|c| *c == '.').count() <= 1
        && !unsigned.starts_with('.')
        && !unsigned.ends_with('.');
    if !valid {
        return None;
    }
    number.parse().ok()
}

/// Whether `s` is standard base64 (with padding), as protobuf JSON encodes bytes. Whitespace is
/// not allowed; URL-safe characters are accepted as protobuf JSON decoders do.
pub fn is_base64(s: &str) -> bool {
    // Unpadded input is accepted by protobuf JSON decoders as long as it is complete.
    let body = s.trim_end_matches('=');
    let padding = s.len() - body.len();
    if padding > 2 || body.len() % 4 == 1 || (padding > 0 && !s.len().is_multiple_of(4)) {
        return false;
    }
    body.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

/// Where a certificate, key or other blob comes from: exactly one of a secret name, a file, inline
/// base64 bytes or an inline string.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Base64-encoded bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
}

impl DataSource {
    fn set_count(&self) -> usize {
        [&self.secret, &self.file, &self.inline, &self.inline_string]
            .iter()
            .filter(|v| v.as_deref().is_some_and(|s| !s.is_empty()))
            .count()
    }

    /// Kuma's rule: at least one source must be given; inline bytes must be base64. We also reject
    /// more than one source (protobuf's oneof cannot hold two).
    pub fn validate(&self, path: &FieldPath, violations: &mut Violations) {
        match self.set_count() {
            0 => violations.add(path, "data source cannot be empty"),
            1 => {}
            _ => violations.add(
                path,
                "only one of \"secret\", \"file\", \"inline\" or \"inlineString\" can be set",
            ),
        }
        if let Some(inline) = &self.inline {
            if !is_base64(inline) {
                violations.add(&path.field("inline"), "must be valid base64");
            }
        }
    }
}

/// Decodes a free-form `conf` block into its typed form (as Kuma's `ToTyped`): unknown fields
/// are ignored, an absent block is the default.
pub fn typed_conf<T>(conf: &Option<Value>) -> Result<T, serde_json::Error>
where
    T: serde::de::DeserializeOwned + Default,
{
    match conf {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dns_names_follow_kuma() {
        assert!(is_dns_name("kuma-es-ze_externalservice-http-server"));
        assert!(is_dns_name("example.com."));
        assert!(!is_dns_name("!@#"));
        assert!(!is_dns_name(""));
        assert!(!is_dns_name("-a.com"));
        assert!(!is_dns_name("1.1.1.1"));
        assert!(is_rfc1123_subdomain("dp-1.ns"));
        assert!(!is_rfc1123_subdomain("Dp"));
    }

    #[test]
    fn addresses() {
        let mut v = Violations::new();
        validate_address(&FieldPath::new("networking"), "0.0.0.0", &mut v);
        assert_eq!(v.len(), 1);
        assert_eq!(v.iter().next().unwrap().field, "networking.address");
        let mut v = Violations::new();
        validate_address(&FieldPath::new("x"), "!@#", &mut v);
        assert_eq!(
            v.iter().next().unwrap().message,
            "address has to be valid IP address or domain name"
        );
    }

    #[test]
    fn tag_rules() {
        let mut v = Violations::new();
        let rules = TagRules {
            require_service: true,
            ..TagRules::default()
        };
        validate_tags(
            &FieldPath::new("t"),
            &tags(&[("version", "")]),
            rules,
            &mut v,
        );
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, vec![r#"t["version"]"#, "t"]);

        let mut v = Violations::new();
        let rules = TagRules {
            values: TagValues::Selector,
            ..TagRules::default()
        };
        validate_tags(
            &FieldPath::new("t"),
            &tags(&[("kuma.io/service", "*")]),
            rules,
            &mut v,
        );
        assert!(v.is_empty());
        validate_tags(
            &FieldPath::new("t"),
            &tags(&[("kuma.io/service", "*")]),
            TagRules::default(),
            &mut v,
        );
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_kuma_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(
            parse_kuma_duration("10y").map(|d| d.as_secs()),
            Some(10 * 365 * 86400)
        );
        assert_eq!(parse_kuma_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_kuma_duration("1.5h"), None);
        assert_eq!(parse_kuma_duration("d"), None);
        assert_eq!(parse_proto_duration("1.5s"), Some(1.5));
        assert_eq!(parse_proto_duration("-2s"), Some(-2.0));
        assert_eq!(parse_proto_duration("2m"), None);
    }

    #[test]
    fn base64() {
        assert!(is_base64("dGVzdAo="));
        assert!(is_base64(""));
        assert!(!is_base64("not base64!"));
        assert!(!is_base64("a"));
    }

    #[test]
    fn lenient_numbers() {
        #[derive(Deserialize)]
        struct S {
            #[serde(deserialize_with = "crate::lenient::u32")]
            port: u32,
            #[serde(deserialize_with = "crate::lenient::nullable", default)]
            list: Vec<String>,
        }
        let s: S =
            serde_json::from_value(serde_json::json!({"port": "8080", "list": null})).unwrap();
        assert_eq!(s.port, 8080);
        assert!(s.list.is_empty());
        assert!(serde_json::from_value::<S>(serde_json::json!({"port": -1})).is_err());
    }
}
