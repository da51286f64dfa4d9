//! MeshAccessLog backends -> Envoy access loggers, for HCMs and TCP proxies.
//!
//! - `file`: `envoy.access_loggers.file` at `path`, plain (one line, newline-terminated) or
//!   JSON format, Kuma's default line when no format is given.
//! - `tcp`: Envoy has no raw-TCP logger; Kuma writes to a Unix socket that kuma-dp forwards.
//!   Meridian uses Envoy's `envoy.access_loggers.fluentd` logger instead, which ships records
//!   over a plain TCP cluster (Fluentd Forward protocol, understood by Fluentd, Fluent Bit,
//!   Vector and Logstash's fluent codec), so the configuration works with any Envoy. Each
//!   record is `{"message": <line>}` for plain formats and the JSON fields for JSON formats.
//!   The cluster it needs is returned in [`AccessLogs::clusters`].
//! - `openTelemetry` with `endpoint`: `envoy.access_loggers.open_telemetry` over gRPC to a
//!   cluster for the collector (likewise returned), body = the format line (or the policy's
//!   OTLP-JSON `body`), `attributes`, and resource attributes `kuma.mesh` / `kuma.zone`.
//!   `backendRef` (a MeshOpenTelemetryBackend resource) is not supported yet: an error.
//!
//! Kuma's placeholders are replaced from the [`AccessLogContext`] before Envoy sees the format:
//! `%KUMA_MESH%`, `%KUMA_ZONE%`, `%KUMA_SOURCE_SERVICE%`, `%KUMA_DESTINATION_SERVICE%`,
//! `%KUMA_SOURCE_ADDRESS%` (`<ip>:0`), `%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%`,
//! `%KUMA_TRAFFIC_DIRECTION%`.

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, data_source, grpc_service, socket_address, substitution_format_string, Address,
    ApiVersion, DataSource, GrpcService, Http2ProtocolOptions, SocketAddress,
    SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::access_loggers::fluentd::v3::FluentdAccessLogConfig;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::CommonGrpcAccessLogConfig;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::{value, Any, Struct, Value as PbValue};
use envoy_types::pb::opentelemetry::proto::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use envoy_types::util::pack_any;
use mesh_api::policies::mesh_access_log::{self, Backend, BackendType, Format, FormatType};
use mesh_api::ResourceType;
use serde_json::Value;

use super::cluster::HTTP_PROTOCOL_OPTIONS;
use super::convert::pb_duration;
use super::defaults;
use super::{Direction, PolicyError, Protocol};

/// What the placeholders of a log format stand for, on one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogContext {
    pub mesh: String,
    pub zone: String,
    /// The calling service (`unknown` on inbound listeners, where Kuma cannot know it).
    pub source_service: String,
    /// The proxy's own address for outbound traffic.
    pub source_ip: String,
    pub destination_service: String,
    pub direction: Direction,
    /// Picks Kuma's default HTTP or TCP line.
    pub protocol: Protocol,
}

impl AccessLogContext {
    fn interpolate(&self, format: &str) -> String {
        let source_address = if self.source_ip.contains(':') {
            format!("[{}]:0", self.source_ip)
        } else {
            format!("{}:0", self.source_ip)
        };
        format
            .replace("%KUMA_SOURCE_ADDRESS%", &source_address)
            .replace("%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%", &self.source_ip)
            .replace("%KUMA_SOURCE_SERVICE%", &self.source_service)
            .replace("%KUMA_DESTINATION_SERVICE%", &self.destination_service)
            .replace("%KUMA_MESH%", &self.mesh)
            .replace("%KUMA_TRAFFIC_DIRECTION%", self.direction.as_str())
            .replace("%KUMA_ZONE%", &self.zone)
    }

    fn default_format(&self) -> &'static str {
        if self.protocol.is_http() {
            defaults::HTTP_ACCESS_LOG_FORMAT
        } else {
            defaults::TCP_ACCESS_LOG_FORMAT
        }
    }
}

/// What a log backend sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogClusterKind {
    /// Plain TCP (the Fluentd logger).
    Tcp,
    /// gRPC over HTTP/2 (the OpenTelemetry logger).
    Grpc,
}

/// A cluster a logger needs; the caller adds it to the snapshot (once per name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogCluster {
    pub name: String,
    pub host: String,
    pub port: u32,
    pub kind: LogClusterKind,
}

impl LogCluster {
    /// The cluster: STATIC for an IP address, STRICT_DNS for a host name; HTTP/2 for gRPC.
    pub fn to_cluster(&self) -> Cluster {
        let is_ip = self.host.parse::<std::net::IpAddr>().is_ok();
        let discovery = if is_ip {
            cluster::DiscoveryType::Static
        } else {
            cluster::DiscoveryType::StrictDns
        };
        let mut c = Cluster {
            name: self.name.clone(),
            connect_timeout: Some(pb_duration(defaults::OUTBOUND_TIMEOUTS.connect)),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: self.name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(Address {
                                address: Some(address::Address::SocketAddress(SocketAddress {
                                    address: self.host.clone(),
                                    port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                        self.port,
                                    )),
                                    ..SocketAddress::default()
                                })),
                            }),
                            ..Endpoint::default()
                        })),
                        ..LbEndpoint::default()
                    }],
                    ..LocalityLbEndpoints::default()
                }],
                ..ClusterLoadAssignment::default()
            }),
            ..Cluster::default()
        };
        if self.kind == LogClusterKind::Grpc {
            c.typed_extension_protocol_options.insert(
                HTTP_PROTOCOL_OPTIONS.to_owned(),
                pack_any(HttpProtocolOptions {
                    upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                        ExplicitHttpConfig {
                            protocol_config: Some(
                                explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                    Http2ProtocolOptions::default(),
                                ),
                            ),
                        },
                    )),
                    ..HttpProtocolOptions::default()
                }),
            );
        }
        c
    }
}

/// The loggers of one MeshAccessLog conf, and the clusters they send to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessLogs {
    pub logs: Vec<AccessLog>,
    pub clusters: Vec<LogCluster>,
}

const T: ResourceType = ResourceType::MeshAccessLog;

/// The access loggers for `conf`'s backends, in order.
pub fn access_logs(
    conf: &mesh_access_log::Conf,
    ctx: &AccessLogContext,
) -> Result<AccessLogs, PolicyError> {
    let mut out = AccessLogs::default();
    for (i, backend) in conf.backends.iter().flatten().enumerate() {
        let field = format!("backends[{i}]");
        let (name, config) = backend_logger(backend, ctx, &field, &mut out.clusters)?;
        out.logs.push(AccessLog {
            name: name.to_owned(),
            config_type: Some(access_log::ConfigType::TypedConfig(config)),
            ..AccessLog::default()
        });
    }
    Ok(out)
}

fn backend_logger(
    backend: &Backend,
    ctx: &AccessLogContext,
    field: &str,
    clusters: &mut Vec<LogCluster>,
) -> Result<(&'static str, Any), PolicyError> {
    let missing = |what: &str| PolicyError::new(T, format!("{field}.{what}"), "must be defined");
    match &backend.backend_type {
        BackendType::File => {
            let file = backend.file.as_ref().ok_or_else(|| missing("file"))?;
            let format = match &file.format {
                None => plain(&ctx.interpolate(ctx.default_format()), false),
                Some(f) => format_string(f, ctx),
            };
            Ok((
                "envoy.access_loggers.file",
                pack_any(FileAccessLog {
                    path: file.path.clone(),
                    access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(format)),
                }),
            ))
        }
        BackendType::Tcp => {
            let tcp = backend.tcp.as_ref().ok_or_else(|| missing("tcp"))?;
            let (host, port) = host_port(&tcp.address, &format!("{field}.tcp.address"))?;
            let cluster = LogCluster {
                name: cluster_name("tcp", &host, port),
                host,
                port,
                kind: LogClusterKind::Tcp,
            };
            let record = match tcp.format.as_ref() {
                Some(f) if f.format_type == FormatType::Json => json_fields(f, ctx),
                Some(f) => message_record(f.plain.as_deref().unwrap_or(ctx.default_format()), ctx),
                None => message_record(ctx.default_format(), ctx),
            };
            let config = FluentdAccessLogConfig {
                cluster: cluster.name.clone(),
                tag: "meshaccesslog".to_owned(),
                stat_prefix: cluster.name.clone(),
                record: Some(record),
                ..FluentdAccessLogConfig::default()
            };
            push_cluster(clusters, cluster);
            Ok(("envoy.access_loggers.fluentd", pack_any(config)))
        }
        BackendType::OpenTelemetry => {
            let otel = backend
                .open_telemetry
                .as_ref()
                .ok_or_else(|| missing("openTelemetry"))?;
            if otel.endpoint.is_empty() {
                return Err(PolicyError::new(
                    T,
                    format!("{field}.openTelemetry.backendRef"),
                    "backendRef (MeshOpenTelemetryBackend) is not supported yet; set endpoint",
                ));
            }
            let (host, port) =
                host_port(&otel.endpoint, &format!("{field}.openTelemetry.endpoint"))?;
            let cluster = LogCluster {
                name: cluster_name("otel", &host, port),
                host,
                port,
                kind: LogClusterKind::Grpc,
            };
            let body = match &otel.body {
                Some(body) => otlp_value(body, ctx),
                None => string_value(ctx.interpolate(ctx.default_format())),
            };
            let attributes = KeyValueList {
                values: otel
                    .attributes
                    .iter()
                    .flatten()
                    .map(|kv| KeyValue {
                        key: kv.key.clone(),
                        value: Some(string_value(ctx.interpolate(&kv.value))),
                        ..KeyValue::default()
                    })
                    .collect(),
            };
            let mut resource = vec![KeyValue {
                key: "kuma.mesh".to_owned(),
                value: Some(string_value(ctx.mesh.clone())),
                ..KeyValue::default()
            }];
            if !ctx.zone.is_empty() {
                resource.push(KeyValue {
                    key: "kuma.zone".to_owned(),
                    value: Some(string_value(ctx.zone.clone())),
                    ..KeyValue::default()
                });
            }
            #[allow(deprecated)]
            let config = OpenTelemetryAccessLogConfig {
                common_config: Some(CommonGrpcAccessLogConfig {
                    log_name: "MeshAccessLog".to_owned(),
                    grpc_service: Some(GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: cluster.name.clone(),
                                ..grpc_service::EnvoyGrpc::default()
                            },
                        )),
                        ..GrpcService::default()
                    }),
                    transport_api_version: ApiVersion::V3 as i32,
                    ..CommonGrpcAccessLogConfig::default()
                }),
                body: Some(body),
                attributes: Some(attributes),
                resource_attributes: Some(KeyValueList { values: resource }),
                ..OpenTelemetryAccessLogConfig::default()
            };
            push_cluster(clusters, cluster);
            Ok(("envoy.access_loggers.open_telemetry", pack_any(config)))
        }
        BackendType::Other(t) => Err(PolicyError::new(
            T,
            format!("{field}.type"),
            format!("'{t}' is not one of Tcp, File, OpenTelemetry"),
        )),
    }
}

fn push_cluster(clusters: &mut Vec<LogCluster>, cluster: LogCluster) {
    if !clusters.contains(&cluster) {
        clusters.push(cluster);
    }
}

/// `meshaccesslog_<kind>_<host>_<port>`, with characters Envoy stats dislike replaced.
fn cluster_name(kind: &str, host: &str, port: u32) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("meshaccesslog_{kind}_{host}_{port}")
}

/// `host:port`, `[v6]:port` or `scheme://host:port[/...]`.
fn host_port(address: &str, field: &str) -> Result<(String, u32), PolicyError> {
    let bad = || PolicyError::new(T, field, format!("'{address}' is not host:port"));
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u32 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || port > 65535 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

fn plain(line: &str, omit_empty: bool) -> SubstitutionFormatString {
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(format!("{line}\n"))),
                ..DataSource::default()
            },
        )),
        omit_empty_values: omit_empty,
        ..SubstitutionFormatString::default()
    }
}

fn string(value: String) -> PbValue {
    PbValue {
        kind: Some(value::Kind::StringValue(value)),
    }
}

fn json_fields(f: &Format, ctx: &AccessLogContext) -> Struct {
    Struct {
        fields: f
            .json
            .iter()
            .flatten()
            .map(|kv| (kv.key.clone(), string(ctx.interpolate(&kv.value))))
            .collect(),
    }
}

fn message_record(line: &str, ctx: &AccessLogContext) -> Struct {
    Struct {
        fields: [("message".to_owned(), string(ctx.interpolate(line)))].into(),
    }
}

fn format_string(f: &Format, ctx: &AccessLogContext) -> SubstitutionFormatString {
    let omit = f.omit_empty_values == Some(true);
    match f.format_type {
        FormatType::Json => SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(json_fields(
                f, ctx,
            ))),
            omit_empty_values: omit,
            ..SubstitutionFormatString::default()
        },
        _ => plain(
            &ctx.interpolate(f.plain.as_deref().unwrap_or(ctx.default_format())),
            omit,
        ),
    }
}

fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

/// An OTLP AnyValue in its JSON form (`{"stringValue": ..}`, `{"kvlistValue": {"values":
/// [..]}}`, ...) with placeholders replaced in strings and keys; anything else becomes the
/// string of its JSON text, as Kuma falls back.
fn otlp_value(body: &Value, ctx: &AccessLogContext) -> AnyValue {
    otlp_parse(body, ctx).unwrap_or_else(|| {
        let text = match body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        string_value(ctx.interpolate(&text))
    })
}

fn otlp_parse(v: &Value, ctx: &AccessLogContext) -> Option<AnyValue> {
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    let (kind, inner) = obj.iter().next()?;
    let value = match kind.as_str() {
        "stringValue" => any_value::Value::StringValue(ctx.interpolate(inner.as_str()?)),
        "boolValue" => any_value::Value::BoolValue(inner.as_bool()?),
        "intValue" => any_value::Value::IntValue(match inner {
            Value::String(s) => s.parse().ok()?,
            other => other.as_i64()?,
        }),
        "doubleValue" => any_value::Value::DoubleValue(inner.as_f64()?),
        "arrayValue" => any_value::Value::ArrayValue(ArrayValue {
            values: inner
                .get("values")?
                .as_array()?
                .iter()
                .map(|x| otlp_parse(x, ctx))
                .collect::<Option<_>>()?,
        }),
        "kvlistValue" => any_value::Value::KvlistValue(KeyValueList {
            values: inner
                .get("values")?
                .as_array()?
                .iter()
                .map(|kv| {
                    Some(KeyValue {
                        key: ctx.interpolate(kv.get("key")?.as_str()?),
                        value: Some(otlp_parse(kv.get("value")?, ctx)?),
                        ..KeyValue::default()
                    })
                })
                .collect::<Option<_>>()?,
        }),
        _ => return None,
    };
    Some(AnyValue { value: Some(value) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{dataplane, policies, unpack};
    use crate::policy::ProxyPolicies;

    fn ctx(protocol: Protocol) -> AccessLogContext {
        AccessLogContext {
            mesh: "default".into(),
            zone: "east".into(),
            source_service: "web".into(),
            source_ip: "10.0.0.1".into(),
            destination_service: "backend".into(),
            direction: Direction::Outbound,
            protocol,
        }
    }

    fn logs(backends: &str, protocol: Protocol) -> AccessLogs {
        let yaml = format!(
            "type: MeshAccessLog\nname: al\nmesh: default\nspec:\n  to:\n    - targetRef: {{kind: MeshService, name: backend}}\n      default:\n        backends: {backends}\n"
        );
        let p = ProxyPolicies::compute(&dataplane(), &policies(&yaml)).outbound("backend");
        access_logs(p.access_log.as_ref().unwrap(), &ctx(protocol)).unwrap()
    }

    fn inline(format: &SubstitutionFormatString) -> &str {
        match &format.format {
            Some(substitution_format_string::Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(s)),
                ..
            })) => s,
            other => panic!("expected inline text, got {other:?}"),
        }
    }

    fn typed(log: &AccessLog) -> &Any {
        match &log.config_type {
            Some(access_log::ConfigType::TypedConfig(any)) => any,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_backend_plain_default_and_json() {
        let out = logs(
            "[{type: File, file: {path: /tmp/a.log, format: {type: Plain, plain: '%KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %KUMA_MESH% %KUMA_SOURCE_ADDRESS% %KUMA_TRAFFIC_DIRECTION% %RESPONSE_CODE%'}}}, \
              {type: File, file: {path: /tmp/b.log}}, \
              {type: File, file: {path: /tmp/c.log, format: {type: Json, json: [{key: src, value: '%KUMA_SOURCE_SERVICE%'}], omitEmptyValues: true}}}]",
            Protocol::Http,
        );
        assert!(out.clusters.is_empty());
        assert_eq!(out.logs.len(), 3);
        assert_eq!(out.logs[0].name, "envoy.access_loggers.file");
        let a: FileAccessLog = unpack(typed(&out.logs[0]));
        assert_eq!(a.path, "/tmp/a.log");
        let Some(file_access_log::AccessLogFormat::LogFormat(f)) = &a.access_log_format else {
            panic!("log format expected");
        };
        assert_eq!(
            inline(f),
            "web->backend default 10.0.0.1:0 OUTBOUND %RESPONSE_CODE%\n"
        );
        let b: FileAccessLog = unpack(typed(&out.logs[1]));
        let Some(file_access_log::AccessLogFormat::LogFormat(f)) = &b.access_log_format else {
            panic!("log format expected");
        };
        assert!(inline(f).starts_with("[%START_TIME%] default \"%REQ(:METHOD)%"));
        assert!(inline(f).contains("\"web\" \"backend\" \"10.0.0.1\""));
        let c: FileAccessLog = unpack(typed(&out.logs[2]));
        let Some(file_access_log::AccessLogFormat::LogFormat(f)) = &c.access_log_format else {
            panic!("log format expected");
        };
        assert!(f.omit_empty_values);
        match &f.format {
            Some(substitution_format_string::Format::JsonFormat(s)) => {
                assert_eq!(s.fields["src"], string("web".into()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tcp_backend_needs_a_cluster() {
        let out = logs(
            "[{type: Tcp, tcp: {address: '127.0.0.1:5000'}}, {type: Tcp, tcp: {address: 'logstash.local:5000', format: {type: Json, json: [{key: dst, value: '%KUMA_DESTINATION_SERVICE%'}]}}}]",
            Protocol::Tcp,
        );
        assert_eq!(
            out.clusters,
            [
                LogCluster {
                    name: "meshaccesslog_tcp_127_0_0_1_5000".into(),
                    host: "127.0.0.1".into(),
                    port: 5000,
                    kind: LogClusterKind::Tcp
                },
                LogCluster {
                    name: "meshaccesslog_tcp_logstash_local_5000".into(),
                    host: "logstash.local".into(),
                    port: 5000,
                    kind: LogClusterKind::Tcp
                }
            ]
        );
        let f: FluentdAccessLogConfig = unpack(typed(&out.logs[0]));
        assert_eq!(f.cluster, "meshaccesslog_tcp_127_0_0_1_5000");
        let message = &f.record.unwrap().fields["message"];
        match &message.kind {
            Some(value::Kind::StringValue(s)) => {
                assert!(s.contains("10.0.0.1(web)->%UPSTREAM_HOST%(backend)"), "{s}")
            }
            other => panic!("{other:?}"),
        }
        let g: FluentdAccessLogConfig = unpack(typed(&out.logs[1]));
        assert_eq!(g.record.unwrap().fields["dst"], string("backend".into()));
        let static_cluster = out.clusters[0].to_cluster();
        assert_eq!(
            static_cluster.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32
            ))
        );
        assert_eq!(
            out.clusters[1].to_cluster().cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::StrictDns as i32
            ))
        );
    }

    #[test]
    fn otel_backend() {
        let out = logs(
            r#"[{type: OpenTelemetry, openTelemetry: {endpoint: "otel-collector:4317", attributes: [{key: svc, value: "%KUMA_SOURCE_SERVICE%"}], body: {kvlistValue: {values: [{key: mesh, value: {stringValue: "%KUMA_MESH%"}}]}}}}]"#,
            Protocol::Http,
        );
        assert_eq!(out.clusters[0].kind, LogClusterKind::Grpc);
        assert_eq!(
            out.clusters[0].name,
            "meshaccesslog_otel_otel-collector_4317"
        );
        assert!(out.clusters[0]
            .to_cluster()
            .typed_extension_protocol_options
            .contains_key(HTTP_PROTOCOL_OPTIONS));
        let c: OpenTelemetryAccessLogConfig = unpack(typed(&out.logs[0]));
        #[allow(deprecated)]
        let common = c.common_config.unwrap();
        match common.grpc_service.unwrap().target_specifier {
            Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) => {
                assert_eq!(g.cluster_name, out.clusters[0].name)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.attributes.unwrap().values[0].value,
            Some(string_value("web".into()))
        );
        match c.body.unwrap().value {
            Some(any_value::Value::KvlistValue(kv)) => {
                assert_eq!(kv.values[0].value, Some(string_value("default".into())))
            }
            other => panic!("{other:?}"),
        }
        let resource = c.resource_attributes.unwrap();
        assert_eq!(resource.values[1].key, "kuma.zone");
    }

    #[test]
    fn bad_addresses_and_backend_refs_are_errors() {
        let conf = mesh_access_log::Conf {
            backends: Some(vec![Backend {
                backend_type: BackendType::Tcp,
                tcp: Some(mesh_access_log::TcpBackend {
                    address: "no-port".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
        };
        let err = access_logs(&conf, &ctx(Protocol::Tcp)).unwrap_err();
        assert_eq!(err.field, "backends[0].tcp.address");
        let conf = mesh_access_log::Conf {
            backends: Some(vec![Backend {
                backend_type: BackendType::OpenTelemetry,
                open_telemetry: Some(mesh_access_log::OtelBackend::default()),
                ..Default::default()
            }]),
        };
        let err = access_logs(&conf, &ctx(Protocol::Tcp)).unwrap_err();
        assert_eq!(err.field, "backends[0].openTelemetry.backendRef");
        assert_eq!(
            host_port("tcp://[::1]:9000/x", "f").unwrap(),
            ("::1".into(), 9000)
        );
    }
}
