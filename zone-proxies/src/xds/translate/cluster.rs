//! CDS: a `Cluster` -> [`Cluster`]: discovery (EDS by service name, or endpoints inline for
//! STATIC and STRICT_DNS/LOGICAL_DNS clusters), load balancing policy, connect timeout, circuit
//! breakers, outlier detection, active health checks, TLS (the default transport socket and the
//! per-endpoint `transport_socket_matches`) and the upstream HTTP protocol options.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, Cluster as PbCluster, OutlierDetection as PbOutlier,
};
use envoy_types::pb::envoy::config::core::v3::{
    health_check, health_check::HealthChecker, HeaderValueOption, HealthCheck as PbHealthCheck,
    RoutingPriority,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::CodecClientType;
use prost::Name as _;

use super::endpoint::{load_assignment, struct_value_text};
use super::{
    duration, each, optional_timeout, tls, unpack, At, FieldError, FieldResult, InlineSecrets,
    ResourceHandler,
};
use crate::config::{
    CircuitBreakers, Cluster, Discovery, HealthCheck, HealthCheckKind, LbPolicy, OutlierDetection,
    UpstreamProtocol,
};

/// Envoy's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The CDS handler.
#[derive(Debug)]
pub struct ClusterHandler;

impl ResourceHandler for ClusterHandler {
    const TYPE_URL: &'static str = super::super::CLUSTER_TYPE;
    const KIND: &'static str = "cluster";
    type Proto = PbCluster;
    type Model = Cluster;

    fn name(proto: &PbCluster) -> &str {
        &proto.name
    }

    fn translate(c: &PbCluster, secrets: &mut InlineSecrets) -> FieldResult<Option<Cluster>> {
        cluster(c, secrets).map(Some)
    }
}

fn cluster(c: &PbCluster, secrets: &mut InlineSecrets) -> FieldResult<Cluster> {
    let discovery_type = match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map_err(|_| FieldError::new(format!("unknown discovery type {t}")).at("type"))?,
        Some(cluster::ClusterDiscoveryType::ClusterType(t)) => {
            return Err(FieldError::new(format!(
                "custom cluster type {:?} is not supported",
                t.name
            ))
            .at("cluster_type"))
        }
        None => cluster::DiscoveryType::Static,
    };
    let discovery = match discovery_type {
        cluster::DiscoveryType::Eds => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            Discovery::Eds(service)
        }
        cluster::DiscoveryType::Static
        | cluster::DiscoveryType::StrictDns
        | cluster::DiscoveryType::LogicalDns => {
            let assignment = c
                .load_assignment
                .as_ref()
                .ok_or_else(|| FieldError::new("missing").at("load_assignment"))?;
            Discovery::Static(Arc::new(load_assignment(assignment).at("load_assignment")?))
        }
        cluster::DiscoveryType::OriginalDst => {
            return Err(FieldError::new("ORIGINAL_DST clusters are not supported").at("type"))
        }
    };
    let lb_policy = lb_policy(c)?;
    let connect_timeout = match &c.connect_timeout {
        None => CONNECT_TIMEOUT,
        Some(d) => duration(d).at("connect_timeout")?,
    };
    let circuit_breakers = match &c.circuit_breakers {
        None => CircuitBreakers::default(),
        Some(cb) => {
            let default = cb.thresholds.iter().enumerate().find(|(_, t)| {
                matches!(
                    RoutingPriority::try_from(t.priority),
                    Ok(RoutingPriority::Default)
                )
            });
            match default {
                None => CircuitBreakers::default(),
                Some((i, t)) => thresholds(t)
                    .at(format!("[{i}]"))
                    .at("thresholds")
                    .at("circuit_breakers")?,
            }
        }
    };
    let outlier_detection = c
        .outlier_detection
        .as_ref()
        .map(|o| outlier(o).at("outlier_detection"))
        .transpose()?;
    let health_checks = each(&c.health_checks, "health_checks", health_check)?;
    let tls = c
        .transport_socket
        .as_ref()
        .map(|s| tls::upstream(s, secrets).at("transport_socket"))
        .transpose()?
        .flatten();
    let mut tls_by_metadata = Vec::new();
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let at = |e: FieldError| e.at(format!("[{i}]")).at("transport_socket_matches");
        let matcher: BTreeMap<String, String> = m
            .r#match
            .iter()
            .flat_map(|s| s.fields.iter())
            .map(|(k, v)| (k.clone(), struct_value_text(v.kind.as_ref())))
            .collect();
        let socket = m
            .transport_socket
            .as_ref()
            .map(|s| tls::upstream(s, secrets).at("transport_socket"))
            .transpose()
            .map_err(at)?
            .flatten();
        tls_by_metadata.push((matcher, socket));
    }
    let (protocol, idle_timeout) = http_options(c).at("typed_extension_protocol_options")?;
    Ok(Cluster {
        name: c.name.clone(),
        discovery,
        lb_policy,
        connect_timeout,
        circuit_breakers,
        outlier_detection,
        health_checks,
        tls,
        tls_by_metadata,
        protocol,
        idle_timeout,
    })
}

fn lb_policy(c: &PbCluster) -> FieldResult<LbPolicy> {
    let policy = cluster::LbPolicy::try_from(c.lb_policy).map_err(|_| {
        FieldError::new(format!("unknown lb_policy {}", c.lb_policy)).at("lb_policy")
    })?;
    Ok(match policy {
        cluster::LbPolicy::RoundRobin => LbPolicy::RoundRobin,
        cluster::LbPolicy::Random => LbPolicy::Random,
        cluster::LbPolicy::LeastRequest => {
            let choice_count = match &c.lb_config {
                Some(cluster::LbConfig::LeastRequestLbConfig(l)) => {
                    l.choice_count.as_ref().map_or(2, |n| n.value)
                }
                _ => 2,
            };
            if choice_count < 2 {
                return Err(FieldError::new("must be at least 2")
                    .at("choice_count")
                    .at("least_request_lb_config"));
            }
            LbPolicy::LeastRequest { choice_count }
        }
        // Maglev is consistent hashing too: a ring gives the same stickiness.
        cluster::LbPolicy::RingHash | cluster::LbPolicy::Maglev => {
            let minimum_ring_size = match &c.lb_config {
                Some(cluster::LbConfig::RingHashLbConfig(r)) => {
                    r.minimum_ring_size.as_ref().map_or(1024, |n| n.value)
                }
                _ => 1024,
            };
            LbPolicy::RingHash { minimum_ring_size }
        }
        other => {
            return Err(FieldError::new(format!(
                "lb_policy {} is not supported",
                other.as_str_name()
            ))
            .at("lb_policy"))
        }
    })
}

fn thresholds(t: &Thresholds) -> FieldResult<CircuitBreakers> {
    let d = CircuitBreakers::default();
    Ok(CircuitBreakers {
        max_connections: t
            .max_connections
            .as_ref()
            .map_or(d.max_connections, |v| v.value),
        max_pending_requests: t
            .max_pending_requests
            .as_ref()
            .map_or(d.max_pending_requests, |v| v.value),
        max_requests: t.max_requests.as_ref().map_or(d.max_requests, |v| v.value),
        max_retries: t.max_retries.as_ref().map_or(d.max_retries, |v| v.value),
    })
}

fn outlier(o: &PbOutlier) -> FieldResult<OutlierDetection> {
    let value = |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        v.map_or(default, |v| v.value)
    };
    let interval = match &o.interval {
        None => Duration::from_secs(10),
        Some(d) => duration(d).at("interval")?,
    };
    let base_ejection_time = match &o.base_ejection_time {
        None => Duration::from_secs(30),
        Some(d) => duration(d).at("base_ejection_time")?,
    };
    // Envoy's defaults: consecutive 5xx on (5, enforced 100%), gateway failures off.
    let consecutive_5xx = (value(o.enforcing_consecutive_5xx.as_ref(), 100) > 0)
        .then(|| value(o.consecutive_5xx.as_ref(), 5));
    let consecutive_gateway_failure = (value(o.enforcing_consecutive_gateway_failure.as_ref(), 0)
        > 0)
    .then(|| value(o.consecutive_gateway_failure.as_ref(), 5));
    Ok(OutlierDetection {
        interval,
        base_ejection_time,
        max_ejection_percent: value(o.max_ejection_percent.as_ref(), 10).min(100),
        consecutive_5xx,
        consecutive_gateway_failure,
    })
}

/// A health check payload's bytes: `text` is hex, as in Envoy.
fn payload(p: &health_check::Payload) -> FieldResult<Vec<u8>> {
    match &p.payload {
        Some(health_check::payload::Payload::Binary(bytes)) => Ok(bytes.clone()),
        Some(health_check::payload::Payload::Text(text)) => {
            let digits = text.as_bytes();
            if digits.len() % 2 != 0 {
                return Err(FieldError::new("an odd number of hex digits").at("text"));
            }
            digits
                .chunks(2)
                .map(|pair| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|s| u8::from_str_radix(s, 16).ok())
                        .ok_or_else(|| FieldError::new(format!("{text:?} is not hex")).at("text"))
                })
                .collect()
        }
        None => Err(FieldError::new("empty payload")),
    }
}

/// One `request_headers_to_add` entry of an HTTP health check: a valid header name and value.
fn health_check_header(option: &HeaderValueOption) -> FieldResult<(String, String)> {
    let header = option
        .header
        .as_ref()
        .ok_or_else(|| FieldError::new("missing").at("header"))?;
    let value = if header.raw_value.is_empty() {
        header.value.clone()
    } else {
        String::from_utf8(header.raw_value.clone())
            .map_err(|_| FieldError::new("not UTF-8").at("raw_value").at("header"))?
    };
    if http::HeaderName::from_bytes(header.key.as_bytes()).is_err() || header.key.starts_with(':') {
        return Err(
            FieldError::new(format!("{:?} is not a header name", header.key))
                .at("key")
                .at("header"),
        );
    }
    if http::HeaderValue::from_str(&value).is_err() {
        return Err(FieldError::new(format!("{value:?} is not a header value"))
            .at("value")
            .at("header"));
    }
    Ok((header.key.to_ascii_lowercase(), value))
}

fn health_check(h: &PbHealthCheck) -> FieldResult<HealthCheck> {
    let interval = h
        .interval
        .as_ref()
        .ok_or_else(|| FieldError::new("missing").at("interval"))
        .and_then(|d| duration(d).at("interval"))?;
    let timeout = h
        .timeout
        .as_ref()
        .ok_or_else(|| FieldError::new("missing").at("timeout"))
        .and_then(|d| duration(d).at("timeout"))?;
    if interval.is_zero() || timeout.is_zero() {
        return Err(FieldError::new("interval and timeout must be positive"));
    }
    let kind = match &h.health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => {
            if http.send.is_some() || !http.receive.is_empty() {
                return Err(
                    FieldError::new("HTTP health check payloads are not supported")
                        .at("http_health_check"),
                );
            }
            let expected_statuses = if http.expected_statuses.is_empty() {
                vec![(200, 201)]
            } else {
                http.expected_statuses
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let status = |v: i64| u16::try_from(v).ok().filter(|s| *s <= 600);
                        match (status(r.start), status(r.end)) {
                            (Some(s), Some(e)) if s < e => Ok((s, e)),
                            _ => Err(FieldError::new(format!(
                                "[{}, {}) is not a range of HTTP statuses",
                                r.start, r.end
                            ))
                            .at(format!("[{i}]"))
                            .at("expected_statuses")
                            .at("http_health_check")),
                        }
                    })
                    .collect::<FieldResult<Vec<_>>>()?
            };
            let path = if http.path.is_empty() {
                return Err(FieldError::new("empty").at("path").at("http_health_check"));
            } else {
                http.path.clone()
            };
            let at = |e: FieldError| e.at("http_health_check");
            let http2 = match CodecClientType::try_from(http.codec_client_type) {
                Ok(CodecClientType::Http1) => false,
                Ok(CodecClientType::Http2) => true,
                _ => {
                    return Err(at(FieldError::new(format!(
                        "codec_client_type {} is not supported (HTTP1 or HTTP2)",
                        http.codec_client_type
                    ))
                    .at("codec_client_type")))
                }
            };
            let request_headers = each(
                &http.request_headers_to_add,
                "request_headers_to_add",
                health_check_header,
            )
            .map_err(at)?;
            HealthCheckKind::Http {
                path,
                host: http.host.clone(),
                request_headers,
                http2,
                expected_statuses,
            }
        }
        Some(HealthChecker::TcpHealthCheck(tcp)) => {
            if tcp.send.is_none() && tcp.receive.is_empty() {
                HealthCheckKind::Tcp
            } else {
                let at = |e: FieldError| e.at("tcp_health_check");
                HealthCheckKind::TcpPayload {
                    send: tcp
                        .send
                        .as_ref()
                        .map(|p| payload(p).at("send"))
                        .transpose()
                        .map_err(at)?
                        .unwrap_or_default(),
                    receive: each(&tcp.receive, "receive", payload).map_err(at)?,
                }
            }
        }
        Some(HealthChecker::GrpcHealthCheck(g)) => {
            if !g.initial_metadata.is_empty() {
                return Err(FieldError::new("initial metadata is not supported")
                    .at("initial_metadata")
                    .at("grpc_health_check"));
            }
            HealthCheckKind::Grpc {
                service_name: g.service_name.clone(),
                authority: g.authority.clone(),
            }
        }
        Some(HealthChecker::CustomHealthCheck(c)) => {
            return Err(FieldError::new(format!(
                "custom health check {:?} is not supported",
                c.name
            ))
            .at("custom_health_check"))
        }
        None => return Err(FieldError::new("no health checker")),
    };
    Ok(HealthCheck {
        interval,
        timeout,
        unhealthy_threshold: h.unhealthy_threshold.as_ref().map_or(1, |v| v.value.max(1)),
        healthy_threshold: h.healthy_threshold.as_ref().map_or(1, |v| v.value.max(1)),
        kind,
    })
}

/// The upstream protocol and pooled connection idle timeout from HttpProtocolOptions.
fn http_options(c: &PbCluster) -> FieldResult<(UpstreamProtocol, Option<Duration>)> {
    let mut protocol = UpstreamProtocol::Downstream;
    let mut idle_timeout = None;
    for (key, any) in &c.typed_extension_protocol_options {
        let at = |e: FieldError| e.at(format!("[{key:?}]"));
        if any.type_url != HttpProtocolOptions::type_url() {
            return Err(at(FieldError::new(format!(
                "unsupported protocol options {}",
                super::type_name(&any.type_url)
            ))));
        }
        let options: HttpProtocolOptions = unpack(any).map_err(at)?;
        if let Some(common) = &options.common_http_protocol_options {
            idle_timeout = optional_timeout(common.idle_timeout.as_ref())
                .at("idle_timeout")
                .at("common_http_protocol_options")
                .map_err(at)?;
        }
        if let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
            &options.upstream_protocol_options
        {
            if let Some(ProtocolConfig::Http2ProtocolOptions(_)) = &explicit.protocol_config {
                protocol = UpstreamProtocol::Http2;
            }
            if let Some(ProtocolConfig::Http3ProtocolOptions(_)) = &explicit.protocol_config {
                return Err(at(FieldError::new("HTTP/3 upstreams are not supported")
                    .at("explicit_http_config")));
            }
        }
    }
    Ok((protocol, idle_timeout))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    use super::*;

    fn http_check(check: health_check::HttpHealthCheck) -> PbHealthCheck {
        PbHealthCheck {
            interval: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            timeout: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            health_checker: Some(HealthChecker::HttpHealthCheck(check)),
            ..PbHealthCheck::default()
        }
    }

    fn header(key: &str, value: &str) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: value.into(),
                ..HeaderValue::default()
            }),
            ..HeaderValueOption::default()
        }
    }

    #[test]
    fn http_health_checks_keep_their_codec_host_and_headers() {
        let check = health_check(&http_check(health_check::HttpHealthCheck {
            path: "/ready".into(),
            host: "web.internal".into(),
            request_headers_to_add: vec![header("X-Check", "yes")],
            codec_client_type: CodecClientType::Http2 as i32,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            check.kind,
            HealthCheckKind::Http {
                path: "/ready".into(),
                host: "web.internal".into(),
                request_headers: vec![("x-check".into(), "yes".into())],
                http2: true,
                expected_statuses: vec![(200, 201)],
            }
        );
        let e = health_check(&http_check(health_check::HttpHealthCheck {
            path: "/ready".into(),
            request_headers_to_add: vec![header("bad header", "v")],
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(
            e.path(),
            "http_health_check.request_headers_to_add[0].header.key"
        );
        let e = health_check(&http_check(health_check::HttpHealthCheck {
            path: "/ready".into(),
            codec_client_type: CodecClientType::Http3 as i32,
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.path(), "http_health_check.codec_client_type");
    }
}
