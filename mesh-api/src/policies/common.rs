//! Pieces shared by the targetRef policies: [`TargetRef`] and its validation, Kuma durations,
//! int-or-string percentages, SPIFFE/SNI matches, the generic `to`/`from`/`rules` entries, and
//! the small string enums that decode leniently (an unknown value is kept and reported by the
//! validator, as Kuma does, instead of failing the parse).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::lenient;
use crate::validation::{FieldPath, Violations};

/// Defines a string enum with Kuma's spellings plus `Other(String)` for anything else. The
/// empty `Other("")` is the default and stands for "not set" (Go's zero value).
macro_rules! kuma_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant,)*
            /// A value Kuma does not define (kept so that validation can name it).
            Other(String),
        }

        impl $name {
            /// The spellings Kuma accepts, in declaration order.
            pub const KNOWN: &'static [&'static str] = &[$($text),*];

            /// Reads a value, case-sensitively.
            pub fn parse(text: &str) -> $name {
                match text {
                    $($text => $name::$variant,)*
                    other => $name::Other(other.to_owned()),
                }
            }

            /// The value as written in YAML.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Other(other) => other,
                }
            }

            /// Whether the value is one Kuma defines.
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }

            /// Whether the value was left unset (empty).
            pub fn is_unset(&self) -> bool {
                matches!(self, $name::Other(s) if s.is_empty())
            }
        }

        impl Default for $name {
            fn default() -> $name {
                $name::Other(String::new())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                crate::lenient::string(d).map(|s| $name::parse(&s))
            }
        }
    };
}
pub(crate) use kuma_enum;

kuma_enum! {
    /// What a targetRef points at.
    TargetRefKind {
        Mesh => "Mesh",
        Dataplane => "Dataplane",
        MeshSubset => "MeshSubset",
        MeshGateway => "MeshGateway",
        MeshService => "MeshService",
        MeshExternalService => "MeshExternalService",
        MeshMultiZoneService => "MeshMultiZoneService",
        MeshServiceSubset => "MeshServiceSubset",
        MeshHTTPRoute => "MeshHTTPRoute",
    }
}

impl TargetRefKind {
    /// Kuma's specificity order of kinds: a higher rank is more specific and wins a merge.
    pub fn rank(&self) -> u8 {
        match self {
            TargetRefKind::Mesh => 1,
            TargetRefKind::Dataplane => 2,
            TargetRefKind::MeshSubset => 3,
            TargetRefKind::MeshGateway => 4,
            TargetRefKind::MeshService => 5,
            TargetRefKind::MeshExternalService => 6,
            TargetRefKind::MeshMultiZoneService => 7,
            TargetRefKind::MeshServiceSubset => 8,
            TargetRefKind::MeshHTTPRoute => 9,
            TargetRefKind::Other(_) => 0,
        }
    }
}

kuma_enum! {
    /// The proxy types a `Mesh`/`MeshSubset` targetRef can be narrowed to.
    ProxyType {
        Sidecar => "Sidecar",
        Gateway => "Gateway",
    }
}

/// A reference to what a policy (or one of its entries) applies to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default, skip_serializing_if = "TargetRefKind::is_unset")]
    pub kind: TargetRefKind,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub namespace: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub mesh: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub section_name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_map"
    )]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_map"
    )]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_types: Option<Vec<ProxyType>>,
}

impl TargetRef {
    /// A targetRef of the given kind and nothing else (`{kind: Mesh}`).
    pub fn of_kind(kind: TargetRefKind) -> TargetRef {
        TargetRef {
            kind,
            ..TargetRef::default()
        }
    }

    /// `{kind: Mesh}`, what an absent top-level targetRef means.
    pub fn mesh() -> TargetRef {
        TargetRef::of_kind(TargetRefKind::Mesh)
    }

    /// The name, or "" when unset.
    pub fn name_str(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The tags, or an empty map when unset.
    pub fn tags_map(&self) -> BTreeMap<String, String> {
        self.tags.clone().unwrap_or_default()
    }

    /// Whether the selected proxies may include gateways (Kuma's `IncludesGateways`).
    pub fn includes_gateways(&self) -> bool {
        let proxy_types = self.proxy_types.as_deref().unwrap_or(&[]);
        let mesh_like = matches!(self.kind, TargetRefKind::Mesh | TargetRefKind::MeshSubset);
        let gateway_in_types = proxy_types.is_empty() || proxy_types.contains(&ProxyType::Gateway);
        matches!(
            self.kind,
            TargetRefKind::MeshGateway | TargetRefKind::MeshHTTPRoute
        ) || (mesh_like && gateway_in_types)
    }
}

/// The top-level targetRef of a policy, `{kind: Mesh}` when absent.
pub fn top_or_mesh(target_ref: &Option<TargetRef>) -> TargetRef {
    target_ref.clone().unwrap_or_else(TargetRef::mesh)
}

/// How a targetRef is checked in one place of one policy.
#[derive(Debug, Clone, Default)]
pub struct TargetRefRules<'a> {
    /// The kinds allowed here.
    pub kinds: &'a [TargetRefKind],
    /// Replaces the default "value 'X' is not supported" message.
    pub kinds_error: Option<String>,
    /// Whether a MeshGateway ref may carry listener `tags`.
    pub gateway_listener_tags: bool,
    /// Whether the policy configures inbound traffic (a Dataplane ref may then name a section).
    pub inbound_policy: bool,
}

impl<'a> TargetRefRules<'a> {
    /// Only the given kinds, no other allowance.
    pub fn kinds(kinds: &'a [TargetRefKind]) -> TargetRefRules<'a> {
        TargetRefRules {
            kinds,
            ..TargetRefRules::default()
        }
    }

    /// Also allows gateway listener tags.
    pub fn with_gateway_tags(mut self) -> TargetRefRules<'a> {
        self.gateway_listener_tags = true;
        self
    }

    /// Marks the policy as configuring inbound traffic.
    pub fn inbound(mut self, inbound: bool) -> TargetRefRules<'a> {
        self.inbound_policy = inbound;
        self
    }
}

fn is_set_str(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|s| !s.is_empty())
}

fn is_set_map(value: &Option<BTreeMap<String, String>>) -> bool {
    value.as_ref().is_some_and(|m| !m.is_empty())
}

/// Checks a targetRef as Kuma's `ValidateTargetRef` does, with violations under `path`.
pub fn validate_target_ref(
    target_ref: &TargetRef,
    path: &FieldPath,
    rules: &TargetRefRules<'_>,
    violations: &mut Violations,
) {
    use TargetRefKind as K;
    let kind = &target_ref.kind;
    if kind.is_unset() {
        violations.add(&path.field("kind"), "must be defined");
        return;
    }
    if !rules.kinds.contains(kind) {
        let message = rules
            .kinds_error
            .clone()
            .unwrap_or_else(|| format!("value '{kind}' is not supported"));
        violations.add(&path.field("kind"), message);
        return;
    }
    let disallow = |violations: &mut Violations, field: &str, set: bool| {
        if set {
            violations.add(
                &path.field(field),
                format!("must not be set with kind {kind}"),
            );
        }
    };
    let proxy_types_set = target_ref
        .proxy_types
        .as_ref()
        .is_some_and(|p| !p.is_empty());
    let labels_and_name = is_set_map(&target_ref.labels)
        && (is_set_str(&target_ref.name) || is_set_str(&target_ref.namespace));
    match kind {
        K::Mesh => {
            if is_set_str(&target_ref.name) {
                violations.add(
                    &path.field("name"),
                    format!("using name with kind {kind} is not yet supported"),
                );
            }
            disallow(violations, "mesh", is_set_str(&target_ref.mesh));
            disallow(violations, "tags", is_set_map(&target_ref.tags));
            disallow(violations, "labels", is_set_map(&target_ref.labels));
            disallow(violations, "namespace", is_set_str(&target_ref.namespace));
            disallow(
                violations,
                "sectionName",
                is_set_str(&target_ref.section_name),
            );
            validate_proxy_types(target_ref, path, violations);
        }
        K::Dataplane => {
            disallow(violations, "tags", is_set_map(&target_ref.tags));
            disallow(violations, "mesh", is_set_str(&target_ref.mesh));
            disallow(violations, "proxyTypes", proxy_types_set);
            if labels_and_name {
                violations.add(
                    &path.field("labels"),
                    "either labels or name and namespace must be specified",
                );
            }
            if !rules.inbound_policy && is_set_str(&target_ref.section_name) {
                violations.add(
                    &path.field("sectionName"),
                    "can only be used with inbound policies",
                );
            }
        }
        K::MeshSubset => {
            disallow(violations, "name", is_set_str(&target_ref.name));
            disallow(violations, "mesh", is_set_str(&target_ref.mesh));
            validate_tags(
                &path.field("tags"),
                &target_ref.tags_map(),
                false,
                violations,
            );
            disallow(violations, "labels", is_set_map(&target_ref.labels));
            disallow(violations, "namespace", is_set_str(&target_ref.namespace));
            disallow(
                violations,
                "sectionName",
                is_set_str(&target_ref.section_name),
            );
            validate_proxy_types(target_ref, path, violations);
        }
        K::MeshService | K::MeshHTTPRoute | K::MeshExternalService | K::MeshMultiZoneService => {
            validate_name(target_ref.name_str(), path, violations);
            disallow(violations, "mesh", is_set_str(&target_ref.mesh));
            disallow(violations, "tags", is_set_map(&target_ref.tags));
            disallow(violations, "proxyTypes", proxy_types_set);
            if matches!(kind, K::MeshHTTPRoute | K::MeshExternalService) {
                disallow(
                    violations,
                    "sectionName",
                    is_set_str(&target_ref.section_name),
                );
            }
            if !is_set_map(&target_ref.labels) && !is_set_str(&target_ref.name) {
                violations.add(
                    path,
                    format!("name or labels must be set when kind is {kind}"),
                );
            }
            if labels_and_name {
                violations.add(
                    &path.field("labels"),
                    "either labels or name and namespace must be specified",
                );
            }
        }
        K::MeshServiceSubset | K::MeshGateway => {
            if !is_set_str(&target_ref.name) {
                violations.add(
                    &path.field("name"),
                    format!("must be set when kind is {kind}"),
                );
            }
            validate_name(target_ref.name_str(), path, violations);
            disallow(violations, "mesh", is_set_str(&target_ref.mesh));
            disallow(violations, "proxyTypes", proxy_types_set);
            validate_tags(
                &path.field("tags"),
                &target_ref.tags_map(),
                true,
                violations,
            );
            if *kind == K::MeshGateway && !rules.gateway_listener_tags {
                disallow(violations, "tags", is_set_map(&target_ref.tags));
            }
            disallow(violations, "labels", is_set_map(&target_ref.labels));
            disallow(violations, "namespace", is_set_str(&target_ref.namespace));
            disallow(
                violations,
                "sectionName",
                is_set_str(&target_ref.section_name),
            );
        }
        K::Other(_) => {}
    }
}

fn validate_proxy_types(target_ref: &TargetRef, path: &FieldPath, violations: &mut Violations) {
    match &target_ref.proxy_types {
        Some(types) if types.is_empty() => violations.add(
            &path.field("proxyTypes"),
            "must be undefined or have at least one element",
        ),
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                if !t.is_known() {
                    violations.add(
                        &path.field("proxyTypes").index(i),
                        format!("value '{t}' is not supported, must be one of: Sidecar, Gateway"),
                    );
                }
            }
        }
        None => {}
    }
}

fn validate_name(name: &str, path: &FieldPath, violations: &mut Violations) {
    let ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'));
    if !ok {
        violations.add(
            &path.field("name"),
            "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
        );
    }
}

/// Checks tag keys and values (`tags["version"]: tag value must be non-empty`). With
/// `selector`, a value may be `*`.
pub fn validate_tags(
    path: &FieldPath,
    tags: &BTreeMap<String, String>,
    selector: bool,
    violations: &mut Violations,
) {
    for (key, value) in tags {
        if key.is_empty() {
            violations.add(path, "tag name must be non-empty");
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'))
        {
            violations.add(
                &path.key(key),
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        if value.is_empty() {
            violations.add(&path.key(key), "tag value must be non-empty");
        }
        let value_ok = (selector && value == "*")
            || value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !value_ok {
            violations.add(
                &path.key(key),
                "tag value must consist of alphanumeric characters, dots, dashes and underscores",
            );
        }
    }
}

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason}")]
pub struct DurationError {
    pub text: String,
    pub reason: &'static str,
}

/// A Kuma (Go) duration: `5s`, `1m30s`, `100ms`, `1.5h`, `-1s`, `0`. The sign is kept so that
/// validators can reject negative values; the text is kept as written for output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    text: String,
    nanos: i128,
}

impl Duration {
    /// Parses Go's duration syntax.
    pub fn parse(text: &str) -> Result<Duration, DurationError> {
        let err = |reason| DurationError {
            text: text.to_owned(),
            reason,
        };
        let mut rest = text.trim();
        let negative = match rest.as_bytes().first() {
            Some(b'-') => {
                rest = &rest[1..];
                true
            }
            Some(b'+') => {
                rest = &rest[1..];
                false
            }
            _ => false,
        };
        if rest == "0" {
            return Ok(Duration {
                text: text.to_owned(),
                nanos: 0,
            });
        }
        if rest.is_empty() {
            return Err(err("empty"));
        }
        let mut total: f64 = 0.0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if number_len == 0 {
                return Err(err("expected a number"));
            }
            let value: f64 = rest[..number_len].parse().map_err(|_| err("bad number"))?;
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit_nanos: f64 = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            rest = &rest[unit_len..];
            total += value * unit_nanos;
        }
        if total > 9.3e18 {
            return Err(err("out of range"));
        }
        let nanos = total.round() as i128;
        Ok(Duration {
            text: text.to_owned(),
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// The duration in nanoseconds, negative when written with `-`.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The duration as a std duration, `None` when negative.
    pub fn to_std(&self) -> Option<std::time::Duration> {
        u64::try_from(self.nanos)
            .ok()
            .map(std::time::Duration::from_nanos)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = lenient::string(d)?;
        Duration::parse(&text).map_err(de::Error::custom)
    }
}

/// Kubernetes' IntOrString, used by Kuma for percentages and decimals: `10`, `"2.5"`, `"100.0"`.
#[derive(Debug, Clone, PartialEq)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl IntOrString {
    /// The numeric value, `None` when the string is not a number.
    pub fn decimal(&self) -> Option<f64> {
        match self {
            IntOrString::Int(i) => Some(*i as f64),
            IntOrString::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        }
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(i) => s.serialize_i64(*i),
            IntOrString::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IntOrString, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => Ok(match n.as_i64() {
                Some(i) => IntOrString::Int(i),
                None => IntOrString::String(n.to_string()),
            }),
            Value::String(s) => Ok(IntOrString::String(s)),
            other => Err(de::Error::custom(format!(
                "expected an integer or a string, got {other}"
            ))),
        }
    }
}

/// The message of Kuma's percentage range check.
pub const PERCENTAGE_RANGE: &str = "must be in inclusive range [0.0, 100.0]";
/// The message of Kuma's integer percentage range check.
pub const UINT_PERCENTAGE_RANGE: &str = "must be in inclusive range [0, 100]";

/// Checks an optional int-or-string percentage is a number in [0, 100] (and not 0 unless
/// `allow_zero`).
pub fn validate_percentage(
    path: &FieldPath,
    value: Option<&IntOrString>,
    required: bool,
    allow_zero: bool,
    violations: &mut Violations,
) {
    let Some(value) = value else {
        if required {
            violations.add(path, "must be defined");
        }
        return;
    };
    match value.decimal() {
        None => violations.add(path, "string must be a valid number"),
        Some(d) if !(0.0..=100.0).contains(&d) => violations.add(path, PERCENTAGE_RANGE),
        Some(d) if d == 0.0 && !allow_zero => violations.add(path, "must be greater than 0"),
        Some(_) => {}
    }
}

/// `must not be negative when defined`
pub fn validate_not_negative(
    path: &FieldPath,
    value: Option<&Duration>,
    violations: &mut Violations,
) {
    if value.is_some_and(Duration::is_negative) {
        violations.add(path, "must not be negative when defined");
    }
}

/// `must be greater than zero when defined`
pub fn validate_positive(path: &FieldPath, value: Option<&Duration>, violations: &mut Violations) {
    if value.is_some_and(|d| d.nanos() <= 0) {
        violations.add(path, "must be greater than zero when defined");
    }
}

/// An HTTP status code check: `must be in inclusive range [100, 599]`.
pub fn validate_status_code(path: &FieldPath, status: i64, violations: &mut Violations) {
    if !(100..600).contains(&status) {
        violations.add(path, "must be in inclusive range [100, 599]");
    }
}

kuma_enum! {
    /// How a SPIFFE ID is compared.
    SpiffeIdMatchType {
        Exact => "Exact",
        Prefix => "Prefix",
    }
}

kuma_enum! {
    /// How an SNI is compared.
    SniMatchType {
        Exact => "Exact",
    }
}

/// A SPIFFE ID match in `rules[].matches` or MeshTrafficPermission's allow/deny lists.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeIdMatch {
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "SpiffeIdMatchType::is_unset"
    )]
    pub match_type: SpiffeIdMatchType,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

/// An SNI match in `rules[].matches`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SniMatch {
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "SniMatchType::is_unset"
    )]
    pub match_type: SniMatchType,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

/// A `rules[].matches[]` entry: who the traffic comes from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Match {
    #[serde(rename = "spiffeID", default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeIdMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<SniMatch>,
}

/// Checks a match as Kuma's `ValidateMatch` does.
pub fn validate_match(m: &Match, path: &FieldPath, violations: &mut Violations) {
    if let Some(spiffe) = &m.spiffe_id {
        if let Err(reason) = check_spiffe_id(&spiffe.value) {
            violations.add(
                &path.field("spiffeID"),
                format!("must be a valid Spiffe ID: {reason}"),
            );
        }
    }
    if let Some(sni) = &m.sni {
        let type_path = path.field("sni.type");
        match &sni.match_type {
            SniMatchType::Exact => {}
            t if t.is_unset() => violations.add(&type_path, "must be set"),
            t => violations.add(
                &type_path,
                format!(
                    "unrecognized type {:?}, supported values are: Exact",
                    t.as_str()
                ),
            ),
        }
        if sni.value.is_empty() {
            violations.add(&path.field("sni.value"), "must be set");
        } else if !is_dns1123_subdomain(&sni.value) {
            violations.add(
                &path.field("sni.value"),
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            );
        }
    }
}

/// Checks that every match names a SPIFFE ID or an SNI, with a known SPIFFE match type (the
/// rule-level checks of MeshTimeout and MeshRateLimit). Returns whether any match uses a
/// SPIFFE ID.
pub fn validate_rule_matches(
    matches: &[Match],
    path: &FieldPath,
    violations: &mut Violations,
) -> bool {
    let mut has_spiffe = false;
    for (i, m) in matches.iter().enumerate() {
        let mpath = path.index(i);
        validate_match(m, &mpath, violations);
        if m.spiffe_id.is_none() && m.sni.is_none() {
            violations.add(&mpath, "must specify at least one of 'spiffeID' or 'sni'");
            continue;
        }
        if let Some(spiffe) = &m.spiffe_id {
            has_spiffe = true;
            let tpath = mpath.field("spiffeID").field("type");
            match &spiffe.match_type {
                SpiffeIdMatchType::Exact | SpiffeIdMatchType::Prefix => {}
                t if t.is_unset() => violations.add(&tpath, "must be set"),
                t => violations.add(
                    &tpath,
                    format!(
                        "unrecognized type {:?}, supported values are: Exact, Prefix",
                        t.as_str()
                    ),
                ),
            }
        }
    }
    has_spiffe
}

/// Checks a SPIFFE ID (`spiffe://trust-domain/path`), with go-spiffe's messages.
pub fn check_spiffe_id(id: &str) -> Result<(), &'static str> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err("scheme is missing or invalid");
    };
    let (trust_domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if trust_domain.is_empty() {
        return Err("trust domain is missing");
    }
    if !trust_domain
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
    {
        return Err(
            "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores",
        );
    }
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("path cannot contain empty segments"),
            "." | ".." => return Err("path cannot contain dot segments"),
            s if !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
            {
                return Err(
                    "path segment characters are limited to letters, numbers, dots, dashes, and underscores",
                )
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `s` is an RFC 1123 subdomain (lowercase labels joined by dots, at most 253 chars).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `s` is a DNS name as govalidator's `IsDNSName` sees it (letters, digits, `-`, `_`,
/// dot-separated labels, not all-numeric).
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 || s.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// The shape most targetRef policies share: a top-level target, and `to`, `from` or `rules`
/// entries whose `default` is the policy's own configuration `C` (MeshTimeout, MeshCircuitBreaker,
/// MeshFaultInjection, MeshRateLimit, MeshAccessLog). Each policy validates its own
/// `DirectionalPolicy<Conf>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    bound(deserialize = "C: Deserialize<'de> + Default")
)]
pub struct DirectionalPolicy<C> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<ToEntry<C>>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<FromEntry<C>>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleEntry<C>>>,
}

fn none<T>() -> Option<T> {
    None
}

impl<C> Default for DirectionalPolicy<C> {
    fn default() -> Self {
        DirectionalPolicy {
            target_ref: None,
            to: None,
            from: None,
            rules: None,
        }
    }
}

/// A `to[]` entry: a target and the configuration for traffic to it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToEntry<C> {
    #[serde(default)]
    pub target_ref: TargetRef,
    #[serde(default)]
    pub default: C,
}

/// A `from[]` entry: a source and the configuration for traffic from it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FromEntry<C> {
    #[serde(default)]
    pub target_ref: TargetRef,
    #[serde(default)]
    pub default: C,
}

/// A `rules[]` entry: optional source matches and the configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleEntry<C> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<Match>>,
    #[serde(default)]
    pub default: C,
}

/// The length of an optional list.
pub fn len_of<T>(list: &Option<Vec<T>>) -> usize {
    list.as_ref().map_or(0, Vec::len)
}

/// The items of an optional list.
pub fn items<T>(list: &Option<Vec<T>>) -> &[T] {
    list.as_deref().unwrap_or(&[])
}

/// A route or mirror backend: a targetRef plus `weight` and `port`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(default, skip_serializing_if = "TargetRefKind::is_unset")]
    pub kind: TargetRefKind,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub namespace: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub mesh: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub section_name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_map"
    )]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_map"
    )]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_types: Option<Vec<ProxyType>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub weight: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub port: Option<i64>,
}

impl BackendRef {
    /// The targetRef part of the backend.
    pub fn target_ref(&self) -> TargetRef {
        TargetRef {
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            mesh: self.mesh.clone(),
            section_name: self.section_name.clone(),
            labels: self.labels.clone(),
            tags: self.tags.clone(),
            proxy_types: self.proxy_types.clone(),
        }
    }
}

/// Checks the backends of a route rule (`backendRefs[i]`): kinds, targetRef rules, weights, and
/// the port a MeshMultiZoneService backend needs.
pub fn validate_backend_refs(
    backends: &[BackendRef],
    path: &FieldPath,
    violations: &mut Violations,
) {
    const KINDS: &[TargetRefKind] = &[
        TargetRefKind::MeshService,
        TargetRefKind::MeshServiceSubset,
        TargetRefKind::MeshExternalService,
        TargetRefKind::MeshMultiZoneService,
    ];
    for (i, backend) in backends.iter().enumerate() {
        let bpath = path.index(i);
        validate_target_ref(
            &backend.target_ref(),
            &bpath,
            &TargetRefRules::kinds(KINDS),
            violations,
        );
        if backend.kind == TargetRefKind::MeshMultiZoneService && backend.port.is_none() {
            violations.add(
                &bpath.field("port"),
                "must be defined with kind MeshMultiZoneService",
            );
        }
        if backend.weight.is_some_and(|w| w < 0) {
            violations.add(&bpath.field("weight"), "must not be negative");
        }
        if backend.port.is_some_and(|p| !(1..=65535).contains(&p)) {
            violations.add(&bpath.field("port"), "port must be a valid (1-65535)");
        }
    }
}

/// A `name: value` header pair (header modifiers, rate-limit responses).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

/// Set/add header lists.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<HeaderValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<HeaderValue>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_vec"
    )]
    pub remove: Option<Vec<String>>,
}

/// A reference to an OpenTelemetry backend resource.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendResourceRef {
    #[serde(default, deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_map"
    )]
    pub labels: Option<BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_sign() {
        assert_eq!(Duration::parse("5s").unwrap().nanos(), 5_000_000_000);
        assert_eq!(Duration::parse("1m30s").unwrap().nanos(), 90_000_000_000);
        assert_eq!(Duration::parse("100ms").unwrap().nanos(), 100_000_000);
        assert_eq!(Duration::parse("1.5h").unwrap().nanos(), 5_400_000_000_000);
        assert!(Duration::parse("-1s").unwrap().is_negative());
        assert_eq!(Duration::parse("0").unwrap().nanos(), 0);
        assert!(Duration::parse("5").is_err());
        assert!(Duration::parse("5x").is_err());
        assert!(Duration::parse("").is_err());
    }

    #[test]
    fn percentages_accept_ints_and_strings() {
        let p: Vec<IntOrString> =
            serde_json::from_value(serde_json::json!([10, "2.5", "100.0", "x"])).unwrap();
        assert_eq!(p[0].decimal(), Some(10.0));
        assert_eq!(p[1].decimal(), Some(2.5));
        assert_eq!(p[2].decimal(), Some(100.0));
        assert_eq!(p[3].decimal(), None);
        assert_eq!(
            serde_json::to_value(&p[1]).unwrap(),
            serde_json::json!("2.5")
        );
    }

    #[test]
    fn target_ref_kinds_are_checked() {
        let tr: TargetRef = serde_json::from_value(serde_json::json!({"kind": "Mesh"})).unwrap();
        let mut v = Violations::new();
        validate_target_ref(
            &tr,
            &FieldPath::new("spec")
                .field("to")
                .index(0)
                .field("targetRef"),
            &TargetRefRules::kinds(&[TargetRefKind::MeshService]),
            &mut v,
        );
        let v = v.into_vec();
        assert_eq!(v[0].field, "spec.to[0].targetRef.kind");
        assert_eq!(v[0].message, "value 'Mesh' is not supported");
    }

    #[test]
    fn spiffe_ids() {
        assert!(check_spiffe_id("spiffe://trust-domain.mesh/ns/legacy").is_ok());
        assert!(check_spiffe_id("spiffe://default.default.mesh.local").is_ok());
        assert_eq!(
            check_spiffe_id("wrong"),
            Err("scheme is missing or invalid")
        );
    }

    #[test]
    fn unknown_enum_values_are_kept() {
        let k: TargetRefKind = serde_json::from_value(serde_json::json!("Foo")).unwrap();
        assert_eq!(k, TargetRefKind::Other("Foo".into()));
        assert!(!k.is_known());
        assert_eq!(
            serde_json::to_value(TargetRefKind::MeshHTTPRoute).unwrap(),
            "MeshHTTPRoute"
        );
    }
}
