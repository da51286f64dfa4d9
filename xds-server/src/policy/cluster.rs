//! Cluster settings from policies, as Kuma's plugins set them:
//!
//! - MeshTimeout: `connect_timeout`; for HTTP protocols the upstream `HttpProtocolOptions`
//!   (`idle_timeout`, `max_stream_duration`, `max_connection_duration`) with an explicit HTTP/1.1
//!   or HTTP/2 codec (HTTP/2 for `http2` and `grpc`).
//! - MeshCircuitBreaker: default-priority thresholds (`connectionLimits`, Kuma's defaults when
//!   unset, `track_remaining` on), `outlier_detection` (each detector enforced at 100% when
//!   configured, 0% otherwise), `healthyPanicThreshold`.
//! - MeshHealthCheck (outbound only): one active health check whose checker follows the
//!   protocol (HTTP for http/http2, gRPC for grpc, TCP for tcp; TCP as the fallback when the
//!   protocol's checker is disabled), with Kuma's default interval/timeout/thresholds;
//!   `healthyPanicThreshold`, `failTrafficOnPanic`.
//! - MeshLoadBalancingStrategy (outbound only): `lb_policy` and its config, and
//!   locality-weighted load balancing when affinity tags are set. Hash policies go on routes
//!   ([`super::route_action_settings`]).

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, LocalityWeightedLbConfig, ZoneAwareLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    CommonLbConfig, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    payload, GrpcHealthCheck, HealthChecker, HttpHealthCheck, Payload, TcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, HealthCheck, Http1ProtocolOptions, Http2ProtocolOptions,
    RoutingPriority, RuntimeDouble, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::health_check::event_sinks::file::v3::HealthCheckEventFileSink;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range, Percent};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use mesh_api::policies::common::{HeaderModifier, IntOrString};
use mesh_api::policies::mesh_circuit_breaker::{self, ConnectionLimits};
use mesh_api::policies::mesh_health_check;
use mesh_api::policies::mesh_load_balancing_strategy::{self, LoadBalancerType};
use mesh_api::ResourceType;
use prost::{Message, Name};

use super::convert::{count, decimal, duration, pb_duration, uint32};
use super::defaults;
use super::matched::{InboundPolicies, OutboundPolicies, Timeouts, TrafficPolicies};
use super::{PolicyError, Protocol};

/// The key of the upstream HTTP protocol options in `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Applies the outbound policies for the service of `cluster` (timeouts, circuit breakers,
/// outlier detection, health checks, load balancer). Fields the policies do not cover are left
/// as they are.
pub fn configure_cluster(
    cluster: &mut Cluster,
    p: &OutboundPolicies,
    protocol: Protocol,
) -> Result<(), PolicyError> {
    apply_timeouts(cluster, &p.timeouts(), protocol);
    let cb = p.circuit_breaker.as_ref();
    apply_connection_limits(cluster, cb.and_then(|c| c.connection_limits.as_ref()));
    if let Some(hc) = &p.health_check {
        apply_health_check(cluster, hc, protocol, &|f| p.field(f))?;
    }
    // After the health check: MeshCircuitBreaker's panic threshold wins over the deprecated
    // MeshHealthCheck one, as in Kuma.
    if let Some(od) = cb.and_then(|c| c.outlier_detection.as_ref()) {
        apply_outlier_detection(cluster, od, &|f| p.field(f))?;
    }
    if let Some(lb) = &p.load_balancing {
        apply_load_balancing(cluster, lb, &|f| p.field(f))?;
    }
    if p.locality().locality_weighted() {
        common_lb(cluster).locality_config_specifier = Some(
            LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {}),
        );
    }
    Ok(())
}

/// Applies the inbound policies to the cluster of an inbound (`localhost:<port>`): MeshTimeout
/// and MeshCircuitBreaker `from`/`rules`, as Kuma does for inbound clusters.
pub fn configure_inbound_cluster(
    cluster: &mut Cluster,
    p: &InboundPolicies,
    protocol: Protocol,
) -> Result<(), PolicyError> {
    apply_timeouts(cluster, &p.timeouts(), protocol);
    let cb = p.circuit_breaker.as_ref();
    apply_connection_limits(cluster, cb.and_then(|c| c.connection_limits.as_ref()));
    if let Some(od) = cb.and_then(|c| c.outlier_detection.as_ref()) {
        apply_outlier_detection(cluster, od, &|f| format!("from[Mesh].default.{f}"))?;
    }
    Ok(())
}

fn apply_timeouts(cluster: &mut Cluster, t: &Timeouts, protocol: Protocol) {
    cluster.connect_timeout = Some(pb_duration(t.connect));
    if !protocol.is_http() {
        return;
    }
    update_http_protocol_options(cluster, |options| {
        let common = options
            .common_http_protocol_options
            .get_or_insert_with(Default::default);
        // Zero disables the idle timeout, so it is always written; Envoy would otherwise
        // default it to 1h.
        common.idle_timeout = Some(pb_duration(t.idle));
        common.max_stream_duration =
            (!t.max_stream_duration.is_zero()).then(|| pb_duration(t.max_stream_duration));
        common.max_connection_duration =
            (!t.max_connection_duration.is_zero()).then(|| pb_duration(t.max_connection_duration));
        let http2 = matches!(protocol, Protocol::Http2 | Protocol::Grpc);
        let explicit = match &options.upstream_protocol_options {
            // Keep a codec the caller chose, unless the protocol needs HTTP/2.
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(c)) if !http2 => c.clone(),
            _ => ExplicitHttpConfig {
                protocol_config: Some(if http2 {
                    ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
                } else {
                    ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
                }),
            },
        };
        options.upstream_protocol_options =
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit));
    });
}

/// Decodes the cluster's upstream HTTP protocol options (or starts empty), lets `f` change them,
/// and stores them back.
fn update_http_protocol_options(cluster: &mut Cluster, f: impl FnOnce(&mut HttpProtocolOptions)) {
    let mut options = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .filter(|any| any.type_url == HttpProtocolOptions::type_url())
        .and_then(|any| HttpProtocolOptions::decode(any.value.as_slice()).ok())
        .unwrap_or_default();
    f(&mut options);
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_owned(), pack_any(options));
}

fn common_lb(cluster: &mut Cluster) -> &mut CommonLbConfig {
    cluster
        .common_lb_config
        .get_or_insert_with(Default::default)
}

fn apply_connection_limits(cluster: &mut Cluster, limits: Option<&ConnectionLimits>) {
    let breakers = cluster
        .circuit_breakers
        .get_or_insert_with(CircuitBreakers::default);
    let index = match breakers
        .thresholds
        .iter()
        .position(|t| t.priority == RoutingPriority::Default as i32)
    {
        Some(i) => i,
        None => {
            breakers.thresholds.push(Thresholds::default());
            breakers.thresholds.len() - 1
        }
    };
    let threshold = &mut breakers.thresholds[index];
    let limits = limits.cloned().unwrap_or_default();
    let value = |set: Option<i64>, default: u32| {
        Some(UInt32Value {
            value: set.map_or(default, count),
        })
    };
    threshold.priority = RoutingPriority::Default as i32;
    threshold.track_remaining = true;
    threshold.max_connections = value(limits.max_connections, defaults::MAX_CONNECTIONS);
    threshold.max_pending_requests =
        value(limits.max_pending_requests, defaults::MAX_PENDING_REQUESTS);
    threshold.max_requests = value(limits.max_requests, defaults::MAX_REQUESTS);
    threshold.max_retries = value(limits.max_retries, defaults::MAX_RETRIES);
    if let Some(pools) = limits.max_connection_pools {
        threshold.max_connection_pools = Some(uint32(pools));
    }
}

const CB: ResourceType = ResourceType::MeshCircuitBreaker;

fn apply_outlier_detection(
    cluster: &mut Cluster,
    conf: &mesh_circuit_breaker::OutlierDetection,
    field: &dyn Fn(&str) -> String,
) -> Result<(), PolicyError> {
    if conf.disabled == Some(true) {
        cluster.outlier_detection = None;
        return Ok(());
    }
    let enforcing = |on: bool| {
        Some(UInt32Value {
            value: if on { 100 } else { 0 },
        })
    };
    let detectors = conf.detectors.clone().unwrap_or_default();
    let mut od = OutlierDetection {
        interval: conf.interval.as_ref().map(duration),
        base_ejection_time: conf.base_ejection_time.as_ref().map(duration),
        max_ejection_percent: conf.max_ejection_percent.map(uint32),
        split_external_local_origin_errors: conf.split_external_and_local_errors == Some(true),
        ..OutlierDetection::default()
    };
    let total = detectors.total_failures.and_then(|d| d.consecutive);
    od.enforcing_consecutive_5xx = enforcing(total.is_some());
    od.consecutive_5xx = total.map(uint32);
    let gateway = detectors.gateway_failures.and_then(|d| d.consecutive);
    od.enforcing_consecutive_gateway_failure = enforcing(gateway.is_some());
    od.consecutive_gateway_failure = gateway.map(uint32);
    let local = detectors.local_origin_failures.and_then(|d| d.consecutive);
    od.enforcing_consecutive_local_origin_failure = enforcing(local.is_some());
    od.consecutive_local_origin_failure = local.map(uint32);
    let success = detectors.success_rate;
    od.enforcing_success_rate = enforcing(success.is_some());
    od.enforcing_local_origin_success_rate = enforcing(success.is_some());
    if let Some(s) = success {
        od.success_rate_minimum_hosts = s.minimum_hosts.map(uint32);
        od.success_rate_request_volume = s.request_volume.map(uint32);
        if let Some(factor) = &s.standard_deviation_factor {
            let f = field("outlierDetection.detectors.successRate.standardDeviationFactor");
            // Envoy reads the factor in thousandths.
            let value = decimal(factor, CB, &f)? * 1000.0;
            od.success_rate_stdev_factor = Some(UInt32Value {
                value: value as u32,
            });
        }
    }
    let failure = detectors.failure_percentage;
    od.enforcing_failure_percentage = enforcing(failure.is_some());
    od.enforcing_failure_percentage_local_origin = enforcing(failure.is_some());
    if let Some(fp) = failure {
        od.failure_percentage_minimum_hosts = fp.minimum_hosts.map(uint32);
        od.failure_percentage_request_volume = fp.request_volume.map(uint32);
        od.failure_percentage_threshold = fp.threshold.map(uint32);
    }
    cluster.outlier_detection = Some(od);
    if let Some(threshold) = &conf.healthy_panic_threshold {
        let f = field("outlierDetection.healthyPanicThreshold");
        set_panic_threshold(cluster, threshold, CB, &f)?;
    }
    Ok(())
}

fn set_panic_threshold(
    cluster: &mut Cluster,
    threshold: &IntOrString,
    policy: ResourceType,
    field: &str,
) -> Result<(), PolicyError> {
    let value = decimal(threshold, policy, field)?;
    common_lb(cluster).healthy_panic_threshold = Some(Percent { value });
    Ok(())
}

const HC: ResourceType = ResourceType::MeshHealthCheck;

/// Which checker a protocol gets, as Kuma selects it.
fn health_checker(conf: &mesh_health_check::Conf, protocol: Protocol) -> Option<HealthChecker> {
    let enabled = |disabled: Option<bool>| disabled != Some(true);
    let tcp = conf.tcp.as_ref().filter(|t| enabled(t.disabled));
    let tcp_checker = |t: &mesh_health_check::TcpHealthCheck| {
        let payload = |text: &str| Payload {
            payload: Some(payload::Payload::Text(hex::encode(text.as_bytes()))),
        };
        HealthChecker::TcpHealthCheck(TcpHealthCheck {
            send: t.send.as_deref().map(payload),
            receive: t.receive.iter().flatten().map(|r| payload(r)).collect(),
            ..TcpHealthCheck::default()
        })
    };
    let preferred = match protocol {
        Protocol::Http | Protocol::Http2 => conf.http.as_ref().map(|h| {
            (enabled(h.disabled), {
                let codec = if protocol == Protocol::Http2 {
                    CodecClientType::Http2
                } else {
                    CodecClientType::Http1
                };
                HealthChecker::HttpHealthCheck(HttpHealthCheck {
                    path: h
                        .path
                        .clone()
                        .unwrap_or_else(|| defaults::HEALTH_CHECK_HTTP_PATH.to_owned()),
                    request_headers_to_add: header_options(h.request_headers_to_add.as_ref()),
                    expected_statuses: h
                        .expected_statuses
                        .iter()
                        .flatten()
                        .map(|s| Int64Range {
                            start: *s,
                            end: s + 1,
                        })
                        .collect(),
                    codec_client_type: codec as i32,
                    ..HttpHealthCheck::default()
                })
            })
        }),
        Protocol::Grpc => conf.grpc.as_ref().map(|g| {
            (
                enabled(g.disabled),
                HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
                    service_name: g.service_name.clone().unwrap_or_default(),
                    authority: g.authority.clone().unwrap_or_default(),
                    ..GrpcHealthCheck::default()
                }),
            )
        }),
        Protocol::Tcp | Protocol::Kafka => return tcp.map(tcp_checker),
    };
    match preferred {
        Some((true, checker)) => Some(checker),
        // The protocol's checker is explicitly disabled: fall back to TCP.
        Some((false, _)) => tcp.map(tcp_checker),
        None => None,
    }
}

/// Header add/set lists as Envoy header options (a comma-separated value gives one header per
/// value, as Kuma splits them).
pub(crate) fn header_options(headers: Option<&HeaderModifier>) -> Vec<HeaderValueOption> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let option = |name: &str, value: &str, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            ..HeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    };
    let mut out = Vec::new();
    for h in headers.add.iter().flatten() {
        for v in h.value.split(',') {
            out.push(option(&h.name, v, HeaderAppendAction::AppendIfExistsOrAdd));
        }
    }
    for h in headers.set.iter().flatten() {
        for v in h.value.split(',') {
            out.push(option(
                &h.name,
                v,
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            ));
        }
    }
    out
}

fn apply_health_check(
    cluster: &mut Cluster,
    conf: &mesh_health_check::Conf,
    protocol: Protocol,
    field: &dyn Fn(&str) -> String,
) -> Result<(), PolicyError> {
    if let Some(fail) = conf.fail_traffic_on_panic {
        let lb = common_lb(cluster);
        match &mut lb.locality_config_specifier {
            Some(LocalityConfigSpecifier::ZoneAwareLbConfig(z)) => z.fail_traffic_on_panic = fail,
            // Locality-weighted load balancing has no such switch (Kuma logs and ignores it).
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => {}
            None => {
                lb.locality_config_specifier = Some(LocalityConfigSpecifier::ZoneAwareLbConfig(
                    ZoneAwareLbConfig {
                        fail_traffic_on_panic: fail,
                        ..ZoneAwareLbConfig::default()
                    },
                ))
            }
        }
    }
    if let Some(threshold) = &conf.healthy_panic_threshold {
        set_panic_threshold(cluster, threshold, HC, &field("healthyPanicThreshold"))?;
    }
    let Some(checker) = health_checker(conf, protocol) else {
        return Ok(());
    };
    let pick = |d: Option<&mesh_api::policies::common::Duration>, default| {
        d.map_or_else(|| pb_duration(default), duration)
    };
    let check = HealthCheck {
        interval: Some(pick(
            conf.interval.as_ref(),
            defaults::HEALTH_CHECK_INTERVAL,
        )),
        timeout: Some(pick(conf.timeout.as_ref(), defaults::HEALTH_CHECK_TIMEOUT)),
        unhealthy_threshold: Some(UInt32Value {
            value: conf
                .unhealthy_threshold
                .map_or(defaults::HEALTH_CHECK_UNHEALTHY_THRESHOLD, count),
        }),
        healthy_threshold: Some(UInt32Value {
            value: conf
                .healthy_threshold
                .map_or(defaults::HEALTH_CHECK_HEALTHY_THRESHOLD, count),
        }),
        initial_jitter: conf.initial_jitter.as_ref().map(duration),
        interval_jitter: conf.interval_jitter.as_ref().map(duration),
        interval_jitter_percent: conf.interval_jitter_percent.map_or(0, count),
        no_traffic_interval: conf.no_traffic_interval.as_ref().map(duration),
        always_log_health_check_failures: conf.always_log_health_check_failures == Some(true),
        reuse_connection: conf.reuse_connection.map(|value| BoolValue { value }),
        event_logger: conf
            .event_log_path
            .iter()
            .map(|path| TypedExtensionConfig {
                name: "envoy.health_check.event_sinks.file".to_owned(),
                typed_config: Some(pack_any(HealthCheckEventFileSink {
                    event_log_path: path.clone(),
                })),
            })
            .collect(),
        health_checker: Some(checker),
        ..HealthCheck::default()
    };
    cluster.health_checks = vec![check];
    Ok(())
}

const LB: ResourceType = ResourceType::MeshLoadBalancingStrategy;

fn apply_load_balancing(
    cluster: &mut Cluster,
    conf: &mesh_load_balancing_strategy::Conf,
    field: &dyn Fn(&str) -> String,
) -> Result<(), PolicyError> {
    let Some(lb) = &conf.load_balancer else {
        return Ok(());
    };
    let (policy, config) = match &lb.lb_type {
        LoadBalancerType::RoundRobin => (LbPolicy::RoundRobin, None),
        LoadBalancerType::Random => (LbPolicy::Random, None),
        LoadBalancerType::LeastRequest => {
            let config = match &lb.least_request {
                Some(lr) => {
                    let bias = match &lr.active_request_bias {
                        Some(b) => Some(RuntimeDouble {
                            default_value: decimal(
                                b,
                                LB,
                                &field("loadBalancer.leastRequest.activeRequestBias"),
                            )?,
                            ..RuntimeDouble::default()
                        }),
                        None => None,
                    };
                    Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                        choice_count: lr.choice_count.map(uint32),
                        active_request_bias: bias,
                        ..LeastRequestLbConfig::default()
                    }))
                }
                None => None,
            };
            (LbPolicy::LeastRequest, config)
        }
        LoadBalancerType::RingHash => {
            let config = lb.ring_hash.as_ref().map(|rh| {
                let hash = match rh.hash_function.as_deref() {
                    Some("MurmurHash2") => HashFunction::MurmurHash2,
                    _ => HashFunction::XxHash,
                };
                LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: rh.min_ring_size.map(|n| {
                        envoy_types::pb::google::protobuf::UInt64Value {
                            value: u64::try_from(n).unwrap_or(0),
                        }
                    }),
                    maximum_ring_size: rh.max_ring_size.map(|n| {
                        envoy_types::pb::google::protobuf::UInt64Value {
                            value: u64::try_from(n).unwrap_or(0),
                        }
                    }),
                    hash_function: hash as i32,
                })
            });
            (LbPolicy::RingHash, config)
        }
        LoadBalancerType::Maglev => {
            let config = lb.maglev.as_ref().map(|m| {
                LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: m.table_size.map(|n| {
                        envoy_types::pb::google::protobuf::UInt64Value {
                            value: u64::try_from(n).unwrap_or(0),
                        }
                    }),
                })
            });
            (LbPolicy::Maglev, config)
        }
        LoadBalancerType::Other(t) => {
            return Err(PolicyError::new(
                LB,
                field("loadBalancer.type"),
                format!("'{t}' is not a known load balancer"),
            ))
        }
    };
    cluster.lb_policy = policy as i32;
    cluster.lb_config = config;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{dataplane, policies, unpack};
    use crate::policy::ProxyPolicies;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    fn secs(seconds: i64) -> Option<PbDuration> {
        Some(PbDuration { seconds, nanos: 0 })
    }

    fn outbound(yaml: &str, service: &str) -> OutboundPolicies {
        ProxyPolicies::compute(&dataplane(), &policies(yaml)).outbound(service)
    }

    fn cluster_for(yaml: &str, protocol: Protocol) -> Cluster {
        let mut cluster = Cluster {
            name: "backend".into(),
            ..Cluster::default()
        };
        configure_cluster(&mut cluster, &outbound(yaml, "backend"), protocol).unwrap();
        cluster
    }

    fn http_options(cluster: &Cluster) -> HttpProtocolOptions {
        unpack(&cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS])
    }

    fn default_threshold(cluster: &Cluster) -> &Thresholds {
        &cluster.circuit_breakers.as_ref().unwrap().thresholds[0]
    }

    #[test]
    fn no_policy_gives_kumas_defaults() {
        let tcp = cluster_for("", Protocol::Tcp);
        assert_eq!(tcp.connect_timeout, secs(5));
        assert!(tcp.typed_extension_protocol_options.is_empty());
        let t = default_threshold(&tcp);
        assert_eq!(
            (
                t.max_connections.map(|v| v.value),
                t.max_pending_requests.map(|v| v.value),
                t.max_requests.map(|v| v.value),
                t.max_retries.map(|v| v.value),
                t.track_remaining
            ),
            (Some(1024), Some(1024), Some(1024), Some(3), true)
        );
        assert!(tcp.outlier_detection.is_none() && tcp.health_checks.is_empty());
        assert_eq!(tcp.lb_policy, LbPolicy::RoundRobin as i32);

        let http = cluster_for("", Protocol::Http);
        let common = http_options(&http).common_http_protocol_options.unwrap();
        assert_eq!(common.idle_timeout, secs(3600));
        assert_eq!(common.max_stream_duration, None);
    }

    #[test]
    fn mesh_timeout_sets_connect_and_http_options() {
        let yaml = r#"
type: MeshTimeout
name: t
mesh: default
spec:
  to:
    - targetRef: {kind: Mesh}
      default: {connectionTimeout: 1s, idleTimeout: 0s}
    - targetRef: {kind: MeshService, name: backend}
      default: {connectionTimeout: 3s, http: {maxStreamDuration: 20s, maxConnectionDuration: 1h}}
"#;
        let c = cluster_for(yaml, Protocol::Grpc);
        // The MeshService entry wins over the Mesh one; the Mesh one still supplies idle.
        assert_eq!(c.connect_timeout, secs(3));
        let options = http_options(&c);
        let common = options.common_http_protocol_options.unwrap();
        assert_eq!(common.idle_timeout, secs(0));
        assert_eq!(common.max_stream_duration, secs(20));
        assert_eq!(common.max_connection_duration, secs(3600));
        match options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_)),
            })) => {}
            other => panic!("expected explicit HTTP/2, got {other:?}"),
        }
        let other = {
            let mut c = Cluster::default();
            configure_cluster(&mut c, &outbound(yaml, "other"), Protocol::Http).unwrap();
            c
        };
        assert_eq!(other.connect_timeout, secs(1));
    }

    #[test]
    fn circuit_breaker_limits_and_outlier_detection() {
        let yaml = r#"
type: MeshCircuitBreaker
name: cb
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        connectionLimits: {maxConnections: 2, maxPendingRequests: 8, maxConnectionPools: 4}
        outlierDetection:
          interval: 5s
          baseEjectionTime: 30s
          maxEjectionPercent: 20
          splitExternalAndLocalErrors: true
          healthyPanicThreshold: "12.5"
          detectors:
            totalFailures: {consecutive: 10}
            successRate: {minimumHosts: 5, requestVolume: 10, standardDeviationFactor: "1.9"}
"#;
        let c = cluster_for(yaml, Protocol::Http);
        let t = default_threshold(&c);
        assert_eq!(t.max_connections.map(|v| v.value), Some(2));
        assert_eq!(t.max_pending_requests.map(|v| v.value), Some(8));
        assert_eq!(t.max_connection_pools.map(|v| v.value), Some(4));
        assert_eq!(t.max_requests.map(|v| v.value), Some(1024));
        let od = c.outlier_detection.unwrap();
        assert_eq!(od.interval, secs(5));
        assert_eq!(od.base_ejection_time, secs(30));
        assert_eq!(od.max_ejection_percent.map(|v| v.value), Some(20));
        assert!(od.split_external_local_origin_errors);
        assert_eq!(od.consecutive_5xx.map(|v| v.value), Some(10));
        assert_eq!(od.enforcing_consecutive_5xx.map(|v| v.value), Some(100));
        assert_eq!(
            od.enforcing_consecutive_gateway_failure.map(|v| v.value),
            Some(0)
        );
        assert_eq!(od.enforcing_success_rate.map(|v| v.value), Some(100));
        assert_eq!(od.success_rate_stdev_factor.map(|v| v.value), Some(1900));
        assert_eq!(od.enforcing_failure_percentage.map(|v| v.value), Some(0));
        assert_eq!(
            c.common_lb_config.unwrap().healthy_panic_threshold,
            Some(Percent { value: 12.5 })
        );
    }

    #[test]
    fn disabled_outlier_detection_is_absent() {
        let yaml = r#"
type: MeshCircuitBreaker
name: cb
mesh: default
spec:
  to:
    - targetRef: {kind: Mesh}
      default: {outlierDetection: {disabled: true, detectors: {totalFailures: {consecutive: 1}}}}
"#;
        assert!(cluster_for(yaml, Protocol::Tcp).outlier_detection.is_none());
    }

    fn health_check_yaml(default: &str) -> String {
        format!(
            "type: MeshHealthCheck\nname: hc\nmesh: default\nspec:\n  to:\n    - targetRef: {{kind: MeshService, name: backend}}\n      default: {default}\n"
        )
    }

    #[test]
    fn health_check_follows_the_protocol() {
        let yaml = health_check_yaml(
            "{interval: 10s, unhealthyThreshold: 3, healthyPanicThreshold: 60, failTrafficOnPanic: true, \
             http: {path: /health, expectedStatuses: [200, 204], requestHeadersToAdd: {set: [{name: x-a, value: b}]}}, \
             tcp: {send: ping, receive: [pong]}, grpc: {serviceName: svc}}",
        );
        let http = cluster_for(&yaml, Protocol::Http);
        let hc = &http.health_checks[0];
        assert_eq!(hc.interval, secs(10));
        assert_eq!(hc.timeout, secs(15));
        assert_eq!(hc.unhealthy_threshold.map(|v| v.value), Some(3));
        assert_eq!(hc.healthy_threshold.map(|v| v.value), Some(1));
        match &hc.health_checker {
            Some(HealthChecker::HttpHealthCheck(h)) => {
                assert_eq!(h.path, "/health");
                assert_eq!(
                    h.expected_statuses,
                    [
                        Int64Range {
                            start: 200,
                            end: 201
                        },
                        Int64Range {
                            start: 204,
                            end: 205
                        }
                    ]
                );
                assert_eq!(h.codec_client_type, CodecClientType::Http1 as i32);
                assert_eq!(
                    h.request_headers_to_add[0].header.as_ref().unwrap().key,
                    "x-a"
                );
            }
            other => panic!("expected HTTP check, got {other:?}"),
        }
        let lb = http.common_lb_config.unwrap();
        assert_eq!(lb.healthy_panic_threshold, Some(Percent { value: 60.0 }));
        match lb.locality_config_specifier {
            Some(LocalityConfigSpecifier::ZoneAwareLbConfig(z)) => assert!(z.fail_traffic_on_panic),
            other => panic!("{other:?}"),
        }

        let tcp = cluster_for(&yaml, Protocol::Tcp);
        match &tcp.health_checks[0].health_checker {
            Some(HealthChecker::TcpHealthCheck(t)) => {
                assert_eq!(
                    t.send.as_ref().unwrap().payload,
                    Some(payload::Payload::Text("70696e67".into()))
                );
                assert_eq!(t.receive.len(), 1);
            }
            other => panic!("expected TCP check, got {other:?}"),
        }
        let grpc = cluster_for(&yaml, Protocol::Grpc);
        assert!(matches!(
            &grpc.health_checks[0].health_checker,
            Some(HealthChecker::GrpcHealthCheck(g)) if g.service_name == "svc"
        ));
    }

    #[test]
    fn disabled_protocol_check_falls_back_to_tcp_or_nothing() {
        let yaml = health_check_yaml("{http: {disabled: true}, tcp: {}}");
        assert!(matches!(
            cluster_for(&yaml, Protocol::Http).health_checks[0].health_checker,
            Some(HealthChecker::TcpHealthCheck(_))
        ));
        let yaml = health_check_yaml("{http: {path: /x}}");
        assert!(cluster_for(&yaml, Protocol::Tcp).health_checks.is_empty());
    }

    fn lb_yaml(default: &str) -> String {
        format!(
            "type: MeshLoadBalancingStrategy\nname: lb\nmesh: default\nspec:\n  to:\n    - targetRef: {{kind: MeshService, name: backend}}\n      default: {default}\n"
        )
    }

    #[test]
    fn load_balancers() {
        let c = cluster_for(
            &lb_yaml("{loadBalancer: {type: LeastRequest, leastRequest: {choiceCount: 4, activeRequestBias: \"1.5\"}}}"),
            Protocol::Http,
        );
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
        match c.lb_config {
            Some(LbConfig::LeastRequestLbConfig(l)) => {
                assert_eq!(l.choice_count.map(|v| v.value), Some(4));
                assert_eq!(l.active_request_bias.map(|b| b.default_value), Some(1.5));
            }
            other => panic!("{other:?}"),
        }
        let c = cluster_for(
            &lb_yaml("{loadBalancer: {type: RingHash, ringHash: {hashFunction: MurmurHash2, minRingSize: 64, maxRingSize: 1024}}}"),
            Protocol::Http,
        );
        assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
        match c.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => {
                assert_eq!(r.hash_function, HashFunction::MurmurHash2 as i32);
                assert_eq!(r.minimum_ring_size.map(|v| v.value), Some(64));
                assert_eq!(r.maximum_ring_size.map(|v| v.value), Some(1024));
            }
            other => panic!("{other:?}"),
        }
        let c = cluster_for(
            &lb_yaml("{loadBalancer: {type: Maglev, maglev: {tableSize: 65537}}}"),
            Protocol::Tcp,
        );
        assert_eq!(c.lb_policy, LbPolicy::Maglev as i32);
        assert!(
            matches!(c.lb_config, Some(LbConfig::MaglevLbConfig(m)) if m.table_size.map(|v| v.value) == Some(65537))
        );
        let c = cluster_for(&lb_yaml("{loadBalancer: {type: Random}}"), Protocol::Tcp);
        assert_eq!(c.lb_policy, LbPolicy::Random as i32);
        let c = cluster_for(
            &lb_yaml("{localityAwareness: {localZone: {affinityTags: [{key: k8s.io/az}]}}}"),
            Protocol::Tcp,
        );
        assert!(matches!(
            c.common_lb_config.unwrap().locality_config_specifier,
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        ));
    }

    #[test]
    fn inbound_cluster_uses_inbound_defaults_and_from_conf() {
        let yaml = r#"
type: MeshCircuitBreaker
name: cb
mesh: default
spec:
  from:
    - targetRef: {kind: Mesh}
      default: {connectionLimits: {maxConnections: 7}}
"#;
        let p = ProxyPolicies::compute(&dataplane(), &policies(yaml)).inbound();
        let mut c = Cluster::default();
        configure_inbound_cluster(&mut c, &p, Protocol::Http).unwrap();
        assert_eq!(c.connect_timeout, secs(10));
        assert_eq!(
            default_threshold(&c).max_connections.map(|v| v.value),
            Some(7)
        );
        let common = http_options(&c).common_http_protocol_options.unwrap();
        assert_eq!(common.idle_timeout, secs(7200));
    }

    #[test]
    fn a_bad_percentage_is_an_error_naming_the_field() {
        let mut p = outbound("", "backend");
        p.circuit_breaker = Some(mesh_circuit_breaker::Conf {
            outlier_detection: Some(mesh_circuit_breaker::OutlierDetection {
                healthy_panic_threshold: Some(IntOrString::String("lots".into())),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = configure_cluster(&mut Cluster::default(), &p, Protocol::Tcp).unwrap_err();
        assert_eq!(err.policy, ResourceType::MeshCircuitBreaker);
        assert_eq!(
            err.field,
            "to[backend].default.outlierDetection.healthyPanicThreshold"
        );
    }
}
