//! MeshAccessLog: where and how request/connection logs are written (file, TCP, OpenTelemetry
//! backends; plain or JSON formats).

use serde::{Deserialize, Serialize};

use super::common::{
    items, kuma_enum, len_of, top_or_mesh, validate_match, validate_target_ref, BackendResourceRef,
    DirectionalPolicy, TargetRefKind as K, TargetRefRules,
};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshAccessLog: the shared targetRef/to/from/rules shape over [`Conf`].
pub type MeshAccessLogSpec = DirectionalPolicy<Conf>;

/// One entry's backends.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

kuma_enum! {
    /// Where logs go.
    BackendType { Tcp => "Tcp", File => "File", OpenTelemetry => "OpenTelemetry" }
}

kuma_enum! {
    /// How a log line is written.
    FormatType { Plain => "Plain", Json => "Json" }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    #[serde(default, rename = "type")]
    pub backend_type: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OtelBackend>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtelBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<KeyValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient::string"
    )]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<BackendResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Format {
    #[serde(default, rename = "type")]
    pub format_type: FormatType,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub plain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Vec<KeyValue>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub omit_empty_values: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValue {
    #[serde(default, deserialize_with = "lenient::string")]
    pub key: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::Dataplane,
];

impl Validate for MeshAccessLogSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let (rules_n, to_n, from_n) = (len_of(&self.rules), len_of(&self.to), len_of(&self.from));
        let top = top_or_mesh(&self.target_ref);
        let rules = TargetRefRules::kinds(TOP_KINDS)
            .with_gateway_tags()
            .inbound(rules_n > 0 || from_n > 0);
        if let Some(t) = &self.target_ref {
            validate_target_ref(t, &path.field("targetRef"), &rules, v);
        }
        if rules_n > 0 && (to_n > 0 || from_n > 0) {
            v.add(
                path,
                "fields 'to' and 'from' must be empty when 'rules' is defined",
            );
        }
        if rules_n == 0 && to_n == 0 && from_n == 0 {
            v.add(
                path,
                "at least one of 'from', 'to' or 'rules' has to be defined",
            );
        }
        let to_kinds: &[K] = if top.kind == K::MeshGateway {
            &[K::Mesh]
        } else {
            &[
                K::Mesh,
                K::MeshService,
                K::MeshExternalService,
                K::MeshMultiZoneService,
                K::MeshHTTPRoute,
            ]
        };
        for (i, to) in items(&self.to).iter().enumerate() {
            let tpath = path.field("to").index(i);
            validate_target_ref(
                &to.target_ref,
                &tpath.field("targetRef"),
                &TargetRefRules::kinds(to_kinds),
                v,
            );
            to.default.check(&tpath.field("default"), v);
        }
        for (i, from) in items(&self.from).iter().enumerate() {
            let fpath = path.field("from").index(i);
            validate_target_ref(
                &from.target_ref,
                &fpath.field("targetRef"),
                &TargetRefRules::kinds(&[K::Mesh]),
                v,
            );
            from.default.check(&fpath.field("default"), v);
        }
        for (i, rule) in items(&self.rules).iter().enumerate() {
            let rpath = path.field("rules").index(i);
            for (j, m) in items(&rule.matches).iter().enumerate() {
                validate_match(m, &rpath.field("matches").index(j), v);
            }
            rule.default.check(&rpath.field("default"), v);
        }
    }
}

/// Whether `address` is a URL or `host:port` as govalidator's `IsURL` accepts it.
pub fn is_url(address: &str) -> bool {
    if address.len() <= 3 || address.len() >= 2083 || address.starts_with('.') {
        return false;
    }
    let with_scheme = if address.contains(':') && !address.contains("://") {
        format!("http://{address}")
    } else {
        address.to_owned()
    };
    let Some((scheme, rest)) = with_scheme.split_once("://") else {
        // Without a scheme Go parses the text as a path: it must at least look like a domain.
        return address.contains('.') && host_ok(address.split('/').next().unwrap_or(""));
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(inner) = authority.strip_prefix('[') {
        match inner.split_once(']') {
            Some((ip, port)) => {
                return ip.parse::<std::net::Ipv6Addr>().is_ok() && port_ok(port.strip_prefix(':'));
            }
            None => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => {
                if !port_ok(Some(p)) {
                    return false;
                }
                h
            }
            None => authority,
        }
    };
    host_ok(host)
}

fn port_ok(port: Option<&str>) -> bool {
    match port {
        None | Some("") => true,
        Some(p) => p.parse::<u16>().is_ok_and(|n| n > 0),
    }
}

fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with('.')
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_'))
            }))
}

/// Checks an OpenTelemetry backend has exactly one of `endpoint` and `backendRef`, and that an
/// endpoint is `host:port` rather than a URL.
pub fn check_otel_target(
    endpoint: &str,
    backend_ref: Option<&BackendResourceRef>,
    path: &FieldPath,
    v: &mut Violations,
) {
    match (endpoint.is_empty(), backend_ref) {
        (false, Some(_)) => v.add(
            path,
            "openTelemetry must have only one type defined: endpoint, backendRef",
        ),
        (true, None) => v.add(
            path,
            "openTelemetry must have exactly one defined: endpoint, backendRef",
        ),
        (true, Some(r)) => {
            if r.kind != "MeshOpenTelemetryBackend" {
                v.add(
                    &path.field("backendRef").field("kind"),
                    format!(
                        "value '{}' is not supported, must be one of: MeshOpenTelemetryBackend",
                        r.kind
                    ),
                );
            }
            if r.labels.as_ref().is_none_or(|l| l.is_empty()) {
                v.add(&path.field("backendRef").field("labels"), "must be defined");
            }
        }
        (false, None) => {
            if endpoint.contains(['/', '?', '#']) {
                v.add(
                    &path.field("endpoint"),
                    "must be in host:port format, not a URL",
                );
            }
        }
    }
}

fn check_format(format: &Format, path: &FieldPath, v: &mut Violations) {
    match &format.format_type {
        FormatType::Plain => match &format.plain {
            None => v.add(&path.field("plain"), "must be defined"),
            Some(p) if p.is_empty() => v.add(&path.field("plain"), "must not be empty"),
            Some(_) => {}
        },
        FormatType::Json => match &format.json {
            None => v.add(&path.field("json"), "must be defined"),
            Some(list) => {
                if list.is_empty() {
                    v.add(&path.field("json"), "must not be empty");
                }
                for (i, kv) in list.iter().enumerate() {
                    let kp = path.field("json").index(i);
                    if kv.key.is_empty() {
                        v.add(&kp.field("key"), "key cannot be empty");
                    }
                    if kv.value.is_empty() {
                        v.add(&kp.field("value"), "value cannot be empty");
                    }
                    if kv.key.contains('"') || kv.value.contains('"') || kv.key.contains('\\') {
                        v.add(&kp, "is not a valid JSON object");
                    }
                }
            }
        },
        FormatType::Other(t) => v.add(
            &path.field("type"),
            format!(
                "value '{t}' is not supported, must be one of: {}",
                FormatType::KNOWN.join(", ")
            ),
        ),
    }
}

impl Conf {
    fn check(&self, path: &FieldPath, v: &mut Violations) {
        let Some(backends) = &self.backends else {
            v.add(&path.field("backends"), "must be defined");
            return;
        };
        for (i, b) in backends.iter().enumerate() {
            let bp = path.field("backends").index(i);
            match &b.backend_type {
                BackendType::File => {
                    let Some(file) = &b.file else {
                        v.add(&bp.field("file"), "must be defined");
                        continue;
                    };
                    if let Some(f) = &file.format {
                        check_format(f, &bp.field("file").field("format"), v);
                    }
                    if file.path.is_empty() || file.path.contains('\0') {
                        v.add(
                            &bp.field("file").field("path"),
                            "file backend requires a valid path",
                        );
                    }
                }
                BackendType::Tcp => {
                    let Some(tcp) = &b.tcp else {
                        v.add(&bp.field("tcp"), "must be defined");
                        continue;
                    };
                    if let Some(f) = &tcp.format {
                        check_format(f, &bp.field("tcp").field("format"), v);
                    }
                    if !is_url(&tcp.address) {
                        v.add(
                            &bp.field("tcp").field("address"),
                            "tcp backend requires valid address",
                        );
                    }
                }
                BackendType::OpenTelemetry => {
                    let Some(otel) = &b.open_telemetry else {
                        v.add(&bp.field("openTelemetry"), "must be defined");
                        continue;
                    };
                    let op = bp.field("openTelemetry");
                    check_otel_target(&otel.endpoint, otel.backend_ref.as_ref(), &op, v);
                    for (j, a) in items(&otel.attributes).iter().enumerate() {
                        if a.key.is_empty() {
                            v.add(
                                &op.field("attributes").index(j).field("key"),
                                "must be defined",
                            );
                        }
                    }
                }
                BackendType::Other(t) => v.add(
                    &bp.field("type"),
                    format!(
                        "value '{t}' is not supported, must be one of: {}",
                        BackendType::KNOWN.join(", ")
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_url;

    #[test]
    fn tcp_addresses() {
        assert!(is_url("127.0.0.1:5000"));
        assert!(is_url("logstash:1234"));
        assert!(is_url("http://logs.example.com:9000/x"));
        assert!(!is_url("not_valid_url"));
    }
}
