//! Route-action templates: what MeshTimeout, MeshRetry and MeshLoadBalancingStrategy put on
//! every route to a service. The route builder clones the template into each route and sets the
//! cluster specifier (and its own matches) itself.
//!
//! - MeshTimeout: `timeout` (`http.requestTimeout`, always written: Envoy's unset default is
//!   15s, zero disables), `idle_timeout` (`http.streamIdleTimeout`), `max_stream_duration`.
//! - MeshRetry: `retry_policy` from the `http` section for http/http2 and the `grpc` section for
//!   grpc, as Kuma's configurer builds it (default `retry_on`, status codes and HTTP methods
//!   split out of `retryOn`, back-offs, host selection). No MeshRetry, or `numRetries: 0`, means
//!   no retry policy. Kuma applies the `http` section to `http` only; Meridian applies it to
//!   `http2` too, which is HTTP as well.
//! - MeshLoadBalancingStrategy: `hash_policy` (root `hashPolicies`, else those under
//!   `loadBalancer.ringHash`/`maglev`).

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    retry_host_predicate, retry_priority, RateLimitedRetryBackOff, ResetHeader, ResetHeaderFormat,
    RetryBackOff, RetryHostPredicate, RetryPriority,
};
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, FilterState, Header, PolicySpecifier, QueryParameter,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, MaxStreamDuration};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RetryPolicy, RouteAction};
use envoy_types::pb::envoy::extensions::retry::host::omit_host_metadata::v3::OmitHostMetadataConfig;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::{value, Struct, Value as PbValue};
use envoy_types::util::pack_any;
use mesh_api::policies::mesh_load_balancing_strategy::{self, HashPolicyType};
use mesh_api::policies::mesh_retry::{self, HeaderMatchType, PredicateType, RateLimitFormat};

use super::convert::{duration, pb_duration, uint32};
use super::defaults;
use super::matched::{InboundPolicies, OutboundPolicies, Timeouts, TrafficPolicies};
use super::Protocol;

/// The route-action template for routes to `p.service`.
pub fn route_action_settings(p: &OutboundPolicies, protocol: Protocol) -> RouteAction {
    let mut action = timeouts_action(&p.timeouts());
    action.retry_policy = p
        .retry
        .as_ref()
        .and_then(|conf| retry_policy(conf, protocol));
    action.hash_policy = p
        .load_balancing
        .as_ref()
        .map(hash_policies)
        .unwrap_or_default();
    action
}

/// The route-action template for the routes of an inbound HTTP listener (MeshTimeout `from` /
/// `rules`; no retries or hashing on the way in).
pub fn inbound_route_action_settings(p: &InboundPolicies) -> RouteAction {
    timeouts_action(&p.timeouts())
}

fn timeouts_action(t: &Timeouts) -> RouteAction {
    RouteAction {
        timeout: Some(pb_duration(t.request)),
        idle_timeout: Some(pb_duration(t.stream_idle)),
        max_stream_duration: (!t.max_stream_duration.is_zero()).then(|| MaxStreamDuration {
            max_stream_duration: Some(pb_duration(t.max_stream_duration)),
            ..MaxStreamDuration::default()
        }),
        ..RouteAction::default()
    }
}

/// Kuma's `retryOn` names to Envoy's conditions.
fn http_retry_on(name: &str) -> Option<&'static str> {
    Some(match name {
        "5xx" => "5xx",
        "GatewayError" => "gateway-error",
        "Reset" => "reset",
        "Retriable4xx" => "retriable-4xx",
        "ConnectFailure" => "connect-failure",
        "EnvoyRatelimited" => "envoy-ratelimited",
        "RefusedStream" => "refused-stream",
        "Http3PostConnectFailure" => "http3-post-connect-failure",
        _ => return None,
    })
}

fn grpc_retry_on(name: &str) -> Option<&'static str> {
    Some(match name {
        "Canceled" => "cancelled",
        "DeadlineExceeded" => "deadline-exceeded",
        "Internal" => "internal",
        "ResourceExhausted" => "resource-exhausted",
        "Unavailable" => "unavailable",
        _ => return None,
    })
}

fn retry_policy(conf: &mesh_retry::Conf, protocol: Protocol) -> Option<RetryPolicy> {
    match protocol {
        Protocol::Http | Protocol::Http2 => http_retry(conf.http.as_ref()?),
        Protocol::Grpc => grpc_retry(conf.grpc.as_ref()?),
        Protocol::Tcp | Protocol::Kafka => None,
    }
}

fn back_off(b: &mesh_retry::BackOff, default_base: bool) -> RetryBackOff {
    RetryBackOff {
        base_interval: b
            .base_interval
            .as_ref()
            .map(duration)
            .or_else(|| default_base.then(|| pb_duration(defaults::RETRY_BASE_INTERVAL))),
        max_interval: b.max_interval.as_ref().map(duration),
    }
}

fn rate_limited(r: &mesh_retry::RateLimitedBackOff) -> RateLimitedRetryBackOff {
    RateLimitedRetryBackOff {
        reset_headers: r
            .reset_headers
            .iter()
            .flatten()
            .map(|h| ResetHeader {
                name: h.name.clone(),
                format: match h.format {
                    RateLimitFormat::UnixTimestamp => ResetHeaderFormat::UnixTimestamp,
                    _ => ResetHeaderFormat::Seconds,
                } as i32,
            })
            .collect(),
        max_interval: r.max_interval.as_ref().map(duration),
    }
}

fn string_match(pattern: string_matcher::MatchPattern) -> HeaderMatchSpecifier {
    HeaderMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(pattern),
        ..StringMatcher::default()
    })
}

fn header_matcher(h: &mesh_retry::HeaderMatch) -> HeaderMatcher {
    let value = h.value.clone().unwrap_or_default();
    let specifier = match h.match_type.clone().unwrap_or(HeaderMatchType::Exact) {
        HeaderMatchType::RegularExpression => {
            string_match(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex: value,
                ..RegexMatcher::default()
            }))
        }
        HeaderMatchType::Prefix => string_match(string_matcher::MatchPattern::Prefix(value)),
        HeaderMatchType::Present => HeaderMatchSpecifier::PresentMatch(true),
        HeaderMatchType::Absent => HeaderMatchSpecifier::PresentMatch(false),
        HeaderMatchType::Exact | HeaderMatchType::Other(_) => {
            string_match(string_matcher::MatchPattern::Exact(value))
        }
    };
    HeaderMatcher {
        name: h.name.clone(),
        header_match_specifier: Some(specifier),
        ..HeaderMatcher::default()
    }
}

fn http_retry(conf: &mesh_retry::Http) -> Option<RetryPolicy> {
    if conf.num_retries == Some(0) {
        return None;
    }
    let mut policy = RetryPolicy {
        retry_on: defaults::HTTP_RETRY_ON.to_owned(),
        num_retries: conf.num_retries.map(uint32),
        per_try_timeout: conf.per_try_timeout.as_ref().map(duration),
        retry_back_off: conf.back_off.as_ref().map(|b| back_off(b, false)),
        rate_limited_retry_back_off: conf.rate_limited_back_off.as_ref().map(rate_limited),
        host_selection_retry_max_attempts: conf.host_selection_max_attempts.unwrap_or(0),
        ..RetryPolicy::default()
    };
    // `retryOn` mixes conditions, status codes (-> retriable_status_codes) and HTTP methods
    // (-> a `:method` retriable request header each).
    let mut conditions = Vec::new();
    for item in conf.retry_on.iter().flatten() {
        if let Ok(code) = item.parse::<u16>() {
            if mesh_retry::is_known_status(code) {
                policy.retriable_status_codes.push(u32::from(code));
                continue;
            }
        }
        if let Some(method) = item.strip_prefix("HttpMethod") {
            policy.retriable_request_headers.push(HeaderMatcher {
                name: ":method".to_owned(),
                header_match_specifier: Some(string_match(string_matcher::MatchPattern::Exact(
                    method.to_ascii_uppercase(),
                ))),
                ..HeaderMatcher::default()
            });
            continue;
        }
        if let Some(condition) = http_retry_on(item) {
            conditions.push(condition);
        }
    }
    if !conditions.is_empty() {
        policy.retry_on = conditions.join(",");
    }
    if !policy.retriable_status_codes.is_empty()
        && !policy
            .retry_on
            .split(',')
            .any(|c| c == "retriable-status-codes")
    {
        policy.retry_on.push_str(",retriable-status-codes");
    }
    policy.retriable_request_headers.extend(
        conf.retriable_request_headers
            .iter()
            .flatten()
            .map(header_matcher),
    );
    policy.retriable_headers = conf
        .retriable_response_headers
        .iter()
        .flatten()
        .map(header_matcher)
        .collect();
    for predicate in conf.host_selection.iter().flatten() {
        match predicate.predicate {
            PredicateType::OmitPreviousHosts => {
                policy.retry_host_predicate.push(RetryHostPredicate {
                    name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
                    config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack_any(
                        PreviousHostsPredicate {},
                    ))),
                })
            }
            PredicateType::OmitHostsWithTags => {
                policy.retry_host_predicate.push(RetryHostPredicate {
                    name: "envoy.retry_host_predicates.omit_host_metadata".to_owned(),
                    config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack_any(
                        OmitHostMetadataConfig {
                            metadata_match: Some(lb_metadata(
                                predicate.tags.clone().unwrap_or_default(),
                            )),
                        },
                    ))),
                })
            }
            PredicateType::OmitPreviousPriorities => {
                policy.retry_priority = Some(RetryPriority {
                    name: "envoy.retry_priorities.previous_priorities".to_owned(),
                    config_type: Some(retry_priority::ConfigType::TypedConfig(pack_any(
                        PreviousPrioritiesConfig {
                            update_frequency: i32::try_from(
                                predicate.update_frequency.unwrap_or(0),
                            )
                            .unwrap_or(i32::MAX),
                        },
                    ))),
                })
            }
            PredicateType::Other(_) => {}
        }
    }
    Some(policy)
}

/// Endpoint metadata `envoy.lb` with the given tags, what the endpoint builder puts on
/// endpoints for subset and host-metadata matching.
fn lb_metadata(tags: std::collections::BTreeMap<String, String>) -> Metadata {
    let fields = tags
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                PbValue {
                    kind: Some(value::Kind::StringValue(v)),
                },
            )
        })
        .collect();
    Metadata {
        filter_metadata: [("envoy.lb".to_owned(), Struct { fields })].into(),
        ..Metadata::default()
    }
}

fn grpc_retry(conf: &mesh_retry::Grpc) -> Option<RetryPolicy> {
    if conf.num_retries == Some(0) {
        return None;
    }
    let conditions: Vec<&str> = conf
        .retry_on
        .iter()
        .flatten()
        .filter_map(|r| grpc_retry_on(r))
        .collect();
    Some(RetryPolicy {
        retry_on: if conditions.is_empty() {
            defaults::GRPC_RETRY_ON.to_owned()
        } else {
            conditions.join(",")
        },
        num_retries: conf.num_retries.map(uint32),
        per_try_timeout: conf.per_try_timeout.as_ref().map(duration),
        // Kuma gives a gRPC back-off without `baseInterval` the default base.
        retry_back_off: conf.back_off.as_ref().map(|b| back_off(b, true)),
        rate_limited_retry_back_off: conf.rate_limited_back_off.as_ref().map(rate_limited),
        ..RetryPolicy::default()
    })
}

fn hash_policies(conf: &mesh_load_balancing_strategy::Conf) -> Vec<HashPolicy> {
    let lb = conf.load_balancer.as_ref();
    let policies = conf
        .hash_policies
        .as_ref()
        .or_else(|| lb?.ring_hash.as_ref()?.hash_policies.as_ref())
        .or_else(|| lb?.maglev.as_ref()?.hash_policies.as_ref());
    policies
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let specifier = match p.policy_type {
                HashPolicyType::Header => PolicySpecifier::Header(Header {
                    header_name: p.header.as_ref()?.name.clone(),
                    ..Header::default()
                }),
                HashPolicyType::Cookie => {
                    let c = p.cookie.as_ref()?;
                    PolicySpecifier::Cookie(Cookie {
                        name: c.name.clone(),
                        ttl: c.ttl.as_ref().map(duration),
                        path: c.path.clone().unwrap_or_default(),
                        ..Cookie::default()
                    })
                }
                HashPolicyType::Connection => {
                    PolicySpecifier::ConnectionProperties(ConnectionProperties {
                        source_ip: p.connection.as_ref()?.source_ip == Some(true),
                    })
                }
                HashPolicyType::SourceIP => {
                    PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
                }
                HashPolicyType::QueryParameter => PolicySpecifier::QueryParameter(QueryParameter {
                    name: p.query_parameter.as_ref()?.name.clone(),
                }),
                HashPolicyType::FilterState => PolicySpecifier::FilterState(FilterState {
                    key: p.filter_state.as_ref()?.key.clone(),
                }),
                HashPolicyType::Other(_) => return None,
            };
            Some(HashPolicy {
                policy_specifier: Some(specifier),
                terminal: p.terminal == Some(true),
            })
        })
        .collect()
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

    fn millis(ms: i32) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: 0,
            nanos: ms * 1_000_000,
        })
    }

    fn action(yaml: &str, protocol: Protocol) -> RouteAction {
        let p = ProxyPolicies::compute(&dataplane(), &policies(yaml)).outbound("backend");
        route_action_settings(&p, protocol)
    }

    #[test]
    fn defaults_without_policies() {
        let a = action("", Protocol::Http);
        assert_eq!(a.timeout, secs(15));
        assert_eq!(a.idle_timeout, secs(1800));
        assert!(a.max_stream_duration.is_none());
        assert!(a.retry_policy.is_none(), "no MeshRetry, no retries");
        assert!(a.hash_policy.is_empty());
        let p = ProxyPolicies::compute(&dataplane(), &[]).inbound();
        let inbound = inbound_route_action_settings(&p);
        assert_eq!(inbound.timeout, secs(0));
        assert_eq!(inbound.idle_timeout, secs(3600));
    }

    #[test]
    fn timeouts() {
        let a = action(
            "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: MeshService, name: backend}\n      default: {http: {requestTimeout: 2s, streamIdleTimeout: 0s, maxStreamDuration: 1m}}\n",
            Protocol::Http,
        );
        assert_eq!(a.timeout, secs(2));
        assert_eq!(a.idle_timeout, secs(0));
        assert_eq!(
            a.max_stream_duration.and_then(|m| m.max_stream_duration),
            secs(60)
        );
    }

    const RETRY: &str = r#"
type: MeshRetry
name: r
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        http:
          numRetries: 3
          perTryTimeout: 2s
          backOff: {baseInterval: 100ms, maxInterval: 1s}
          retryOn: [5xx, Reset, "503", HttpMethodGet]
          retriableResponseHeaders: [{name: x-retry, type: Present}]
          retriableRequestHeaders: [{name: x-id, type: Prefix, value: a}]
          rateLimitedBackOff: {resetHeaders: [{name: retry-after, format: Seconds}], maxInterval: 5s}
          hostSelection: [{predicate: OmitPreviousHosts}, {predicate: OmitPreviousPriorities, updateFrequency: 2}]
          hostSelectionMaxAttempts: 4
        grpc:
          numRetries: 2
          backOff: {maxInterval: 1s}
          retryOn: [Unavailable, Canceled]
"#;

    #[test]
    fn http_retry_policy() {
        let r = action(RETRY, Protocol::Http).retry_policy.unwrap();
        assert_eq!(r.num_retries.map(|n| n.value), Some(3));
        assert_eq!(r.per_try_timeout, secs(2));
        assert_eq!(r.retry_on, "5xx,reset,retriable-status-codes");
        assert_eq!(r.retriable_status_codes, [503]);
        let back_off = r.retry_back_off.unwrap();
        assert_eq!(back_off.base_interval, millis(100));
        assert_eq!(back_off.max_interval, secs(1));
        assert_eq!(r.retriable_request_headers.len(), 2);
        assert_eq!(r.retriable_request_headers[0].name, ":method");
        assert_eq!(
            r.retriable_request_headers[0].header_match_specifier,
            Some(string_match(string_matcher::MatchPattern::Exact(
                "GET".into()
            )))
        );
        assert_eq!(
            r.retriable_request_headers[1].header_match_specifier,
            Some(string_match(string_matcher::MatchPattern::Prefix(
                "a".into()
            )))
        );
        assert_eq!(
            r.retriable_headers[0].header_match_specifier,
            Some(HeaderMatchSpecifier::PresentMatch(true))
        );
        let rl = r.rate_limited_retry_back_off.unwrap();
        assert_eq!(rl.reset_headers[0].name, "retry-after");
        assert_eq!(rl.max_interval, secs(5));
        assert_eq!(r.retry_host_predicate.len(), 1);
        let priority = r.retry_priority.unwrap();
        let config: PreviousPrioritiesConfig = match priority.config_type.unwrap() {
            retry_priority::ConfigType::TypedConfig(any) => unpack(&any),
        };
        assert_eq!(config.update_frequency, 2);
        assert_eq!(r.host_selection_retry_max_attempts, 4);
        // http2 is HTTP too.
        assert!(action(RETRY, Protocol::Http2).retry_policy.is_some());
        assert!(action(RETRY, Protocol::Tcp).retry_policy.is_none());
    }

    #[test]
    fn grpc_retry_policy() {
        let r = action(RETRY, Protocol::Grpc).retry_policy.unwrap();
        assert_eq!(r.retry_on, "unavailable,cancelled");
        assert_eq!(r.num_retries.map(|n| n.value), Some(2));
        let back_off = r.retry_back_off.unwrap();
        assert_eq!(back_off.base_interval, millis(25));
    }

    #[test]
    fn retry_defaults_and_zero_retries() {
        let a = action(
            "type: MeshRetry\nname: r\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {http: {perTryTimeout: 1s}, grpc: {perTryTimeout: 1s}}\n",
            Protocol::Http,
        );
        let r = a.retry_policy.unwrap();
        assert_eq!(r.retry_on, defaults::HTTP_RETRY_ON);
        // Envoy's own default (one retry) applies.
        assert!(r.num_retries.is_none());
        let g = action(
            "type: MeshRetry\nname: r\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {grpc: {perTryTimeout: 1s}}\n",
            Protocol::Grpc,
        );
        assert_eq!(g.retry_policy.unwrap().retry_on, defaults::GRPC_RETRY_ON);
        let none = action(
            "type: MeshRetry\nname: r\nmesh: default\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {http: {numRetries: 0}}\n",
            Protocol::Http,
        );
        assert!(none.retry_policy.is_none());
    }

    #[test]
    fn hash_policies_from_the_load_balancer() {
        let a = action(
            r#"
type: MeshLoadBalancingStrategy
name: lb
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        loadBalancer:
          type: RingHash
          ringHash:
            hashPolicies:
              - {type: Header, header: {name: x-user}, terminal: true}
              - {type: Cookie, cookie: {name: session, ttl: 1h, path: /}}
              - {type: SourceIP, connection: {sourceIP: true}}
"#,
            Protocol::Http,
        );
        assert_eq!(a.hash_policy.len(), 3);
        assert!(a.hash_policy[0].terminal);
        assert_eq!(
            a.hash_policy[0].policy_specifier,
            Some(PolicySpecifier::Header(Header {
                header_name: "x-user".into(),
                ..Header::default()
            }))
        );
        match &a.hash_policy[1].policy_specifier {
            Some(PolicySpecifier::Cookie(c)) => {
                assert_eq!(
                    (c.name.as_str(), c.ttl, c.path.as_str()),
                    ("session", secs(3600), "/")
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.hash_policy[2].policy_specifier,
            Some(PolicySpecifier::ConnectionProperties(
                ConnectionProperties { source_ip: true }
            ))
        );
    }
}
