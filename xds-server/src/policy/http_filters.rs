//! Inbound HTTP filters from MeshTrafficPermission (RBAC), MeshRateLimit and MeshFaultInjection,
//! plus the TCP local rate limit.
//!
//! [`inbound_http_filters`] returns, in order: the RBAC filter (deny the unauthorised before
//! anything else), the local rate limit, then the fault filters. It never includes the router:
//! the caller appends `envoy.filters.http.router` last, after these.
//!
//! Rate limit (`local.http`): one `envoy.filters.http.local_ratelimit` whose token bucket holds
//! `requestRate.num` tokens refilled every `requestRate.interval`, always enabled and enforced,
//! answering `onRateLimit.status` (Envoy's 429 by default) with `onRateLimit.headers`. Kuma puts
//! the bucket on each inbound route instead; an inbound has one route, so it is the same limit.
//! Conditional `rules` (on the caller's SPIFFE ID) are not applied yet.
//!
//! Faults: one `envoy.filters.http.fault` per fault of each source (abort: status and
//! percentage; delay: fixed delay and percentage; response bandwidth: kbps and percentage).
//! Kuma restricts a `from` source to its callers with the `x-kuma-tags` request header, which
//! the calling proxy sets to its own tags ([`source_tags_header`]: outbound routes must add it,
//! and inbound routes must remove it before the application sees it); Meridian does the same:
//! a source's filters match its tags and exclude every narrower source's tags, so each caller
//! gets the faults of the most specific of nested sources that select it (a caller selected by
//! two sources that do not nest, say `MeshSubset {team: a}` and `MeshService client`, gets
//! both sources' faults; Kuma would merge them). The header is only as
//! trustworthy as the callers (with mTLS, every caller is a mesh proxy). A `rules` entry with
//! `matches` wraps its faults in an `ExtensionWithMatcher` that skips the fault unless the
//! caller's certificate URI SAN (SPIFFE ID) or the requested SNI matches, as Kuma does.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::extensions::common::matching::v3::ExtensionWithMatcher;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    fault_delay, fault_rate_limit, FaultDelay, FaultRateLimit,
};
use envoy_types::pb::envoy::extensions::filters::common::matcher::action::v3::SkipFilter;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as TcpLocalRateLimit;
use envoy_types::pb::envoy::extensions::matching::common_inputs::network::v3::ServerNameInput;
use envoy_types::pb::envoy::extensions::matching::common_inputs::ssl::v3::UriSanInput;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::{
    fractional_percent::DenominatorType, FractionalPercent, HttpStatus, TokenBucket,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig as XdsTypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3 as xds_matcher;
use envoy_types::util::pack_any;
use mesh_api::core::dataplane::DataplaneSpec;
use mesh_api::matching::covers;
use mesh_api::policies::common::{IntOrString, Match, SpiffeIdMatchType, TargetRef, TargetRefKind};
use mesh_api::policies::mesh_fault_injection::{self, Fault};
use mesh_api::policies::mesh_rate_limit::{LocalHttp, LocalTcp, Rate};
use mesh_api::{ResourceType, SERVICE_TAG};

use super::cluster::header_options;
use super::convert::{decimal, duration, fractional_percent};
use super::matched::{FaultSource, InboundPolicies};
use super::rbac::InboundRbac;
use super::PolicyError;

/// The request header carrying the calling proxy's tags (`&key=v1,v2&&key2=v&`).
pub const SOURCE_TAGS_HEADER: &str = "x-kuma-tags";

const FAULT_FILTER: &str = "envoy.filters.http.fault";
const HTTP_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const TCP_RATE_LIMIT_FILTER: &str = "envoy.filters.network.local_ratelimit";

/// The `x-kuma-tags` header a proxy adds to its outbound requests: the tags of all its
/// inbounds, keys sorted, each `&key=values&` with the key's values sorted and comma-joined.
pub fn source_tags_header(dataplane: &DataplaneSpec) -> HeaderValueOption {
    let mut tags: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for inbound in dataplane.inbounds() {
        for (k, v) in &inbound.tags {
            tags.entry(k).or_default().insert(v);
        }
    }
    let value: String = tags
        .iter()
        .map(|(k, vs)| format!("&{k}={}&", vs.iter().copied().collect::<Vec<_>>().join(",")))
        .collect();
    HeaderValueOption {
        header: Some(HeaderValue {
            key: SOURCE_TAGS_HEADER.to_owned(),
            value,
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// The inbound HTTP filters, router excluded (see the module docs for the order).
pub fn inbound_http_filters(
    p: &InboundPolicies,
    rbac: Option<&InboundRbac>,
) -> Result<Vec<HttpFilter>, PolicyError> {
    let mut filters = Vec::new();
    if let Some(rbac) = rbac {
        filters.push(rbac.http_filter());
    }
    if let Some(limit) = p
        .rate_limit
        .as_ref()
        .and_then(|c| c.local.as_ref())
        .and_then(|l| l.http.as_ref())
        .and_then(http_rate_limit)
    {
        filters.push(HttpFilter {
            name: HTTP_RATE_LIMIT_FILTER.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(limit))),
            ..HttpFilter::default()
        });
    }
    for (index, source) in p.fault_injection.iter().enumerate() {
        filters.extend(fault_filters(source, index, &p.fault_injection));
    }
    Ok(filters)
}

/// The TCP connection rate limit (`local.tcp`), to put first in an inbound filter chain (HTTP
/// or TCP), as Kuma does.
pub fn inbound_tcp_rate_limit(p: &InboundPolicies) -> Option<Filter> {
    let tcp: &LocalTcp = p.rate_limit.as_ref()?.local.as_ref()?.tcp.as_ref()?;
    if tcp.disabled == Some(true) {
        return None;
    }
    let config = TcpLocalRateLimit {
        stat_prefix: "tcp_rate_limit".to_owned(),
        token_bucket: Some(token_bucket(tcp.connection_rate.as_ref()?)),
        ..TcpLocalRateLimit::default()
    };
    Some(Filter {
        name: TCP_RATE_LIMIT_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(config))),
    })
}

fn token_bucket(rate: &Rate) -> TokenBucket {
    let num = rate.num.map_or(0, super::convert::count);
    TokenBucket {
        max_tokens: num,
        tokens_per_fill: Some(UInt32Value { value: num }),
        fill_interval: rate.interval.as_ref().map(duration),
    }
}

fn always() -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    })
}

fn http_rate_limit(conf: &LocalHttp) -> Option<LocalRateLimit> {
    if conf.disabled == Some(true) {
        return None;
    }
    let rate = conf.request_rate.as_ref()?;
    let on_limit = conf.on_rate_limit.as_ref();
    Some(LocalRateLimit {
        stat_prefix: "rate_limit".to_owned(),
        status: on_limit
            .and_then(|o| o.status)
            .filter(|s| *s > 0)
            .map(|code| HttpStatus {
                code: i32::try_from(code).unwrap_or(429),
            }),
        token_bucket: Some(token_bucket(rate)),
        filter_enabled: always(),
        filter_enforced: always(),
        response_headers_to_add: header_options(on_limit.and_then(|o| o.headers.as_ref())),
        ..LocalRateLimit::default()
    })
}

const FI: ResourceType = ResourceType::MeshFaultInjection;

fn percentage(
    value: Option<&IntOrString>,
    field: &str,
) -> Result<Option<FractionalPercent>, PolicyError> {
    value
        .map(|v| decimal(v, FI, field).map(fractional_percent))
        .transpose()
}

/// `50kbps`, `10 Mbps`, `1Gbps` in kbps.
fn bandwidth_kbps(limit: &str, field: &str) -> Result<u64, PolicyError> {
    let digits_end = limit
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(limit.len());
    let value: u64 = limit[..digits_end]
        .parse()
        .map_err(|_| PolicyError::new(FI, field, format!("'{limit}' is not a bandwidth")))?;
    let factor = match limit[digits_end..].trim() {
        "kbps" => 1,
        "Mbps" => 1_000,
        "Gbps" => 1_000_000,
        _ => {
            return Err(PolicyError::new(
                FI,
                field,
                format!("'{limit}' is not in kbps/Mbps/Gbps"),
            ))
        }
    };
    let kbps = value.saturating_mul(factor);
    if kbps == 0 {
        // Envoy refuses `limit_kbps: 0` (its validation wants at least 1), and so does
        // Meridian's proxy: passing it on would get the whole listener NACKed.
        return Err(PolicyError::new(
            FI,
            field,
            format!("'{limit}' is no bandwidth: the limit must be at least 1kbps"),
        ));
    }
    Ok(kbps)
}

fn http_fault(fault: &Fault, field: &str) -> Result<HttpFault, PolicyError> {
    let mut config = HttpFault::default();
    if let Some(abort) = &fault.abort {
        config.abort = Some(FaultAbort {
            error_type: Some(fault_abort::ErrorType::HttpStatus(
                abort.http_status.map_or(0, super::convert::count),
            )),
            percentage: percentage(
                abort.percentage.as_ref(),
                &format!("{field}.abort.percentage"),
            )?,
            ..FaultAbort::default()
        });
    }
    if let Some(delay) = &fault.delay {
        config.delay = Some(FaultDelay {
            fault_delay_secifier: delay
                .value
                .as_ref()
                .map(|v| fault_delay::FaultDelaySecifier::FixedDelay(duration(v))),
            percentage: percentage(
                delay.percentage.as_ref(),
                &format!("{field}.delay.percentage"),
            )?,
        });
    }
    if let Some(bw) = &fault.response_bandwidth {
        let kbps = bandwidth_kbps(&bw.limit, &format!("{field}.responseBandwidth.limit"))?;
        config.response_rate_limit = Some(FaultRateLimit {
            limit_type: Some(fault_rate_limit::LimitType::FixedLimit(
                fault_rate_limit::FixedLimit { limit_kbps: kbps },
            )),
            percentage: percentage(
                bw.percentage.as_ref(),
                &format!("{field}.responseBandwidth.percentage"),
            )?,
        });
    }
    Ok(config)
}

/// RE2 escaping of a literal.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The tags a source selects its callers by.
fn source_tags(target: &TargetRef) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    if matches!(
        target.kind,
        TargetRefKind::MeshService | TargetRefKind::MeshServiceSubset
    ) {
        tags.insert(SERVICE_TAG.to_owned(), target.name_str().to_owned());
    }
    if matches!(
        target.kind,
        TargetRefKind::MeshSubset | TargetRefKind::MeshServiceSubset
    ) {
        tags.extend(target.tags_map());
    }
    tags
}

/// A regex on `x-kuma-tags` matching callers that carry all `tags` (keys are serialized sorted,
/// so the tags appear in order).
fn tags_regex(tags: &BTreeMap<String, String>) -> String {
    let mut regex = String::new();
    for (k, v) in tags {
        regex.push_str(&format!(
            ".*&{}=([^&]*,)?{}(,[^&]*)?&",
            regex_escape(k),
            regex_escape(v)
        ));
    }
    regex.push_str(".*");
    regex
}

fn tags_matcher(tags: &BTreeMap<String, String>, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: SOURCE_TAGS_HEADER.to_owned(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex: tags_regex(tags),
                ..RegexMatcher::default()
            })),
            ..StringMatcher::default()
        })),
        invert_match: invert,
        ..HeaderMatcher::default()
    }
}

/// The header matchers restricting `source`'s faults to its callers: its tags, and none of the
/// tags of a narrower source (which decides for its own callers).
fn source_headers(source: &FaultSource, all: &[FaultSource]) -> Vec<HeaderMatcher> {
    let mut headers = Vec::new();
    let own = source_tags(&source.from);
    if !own.is_empty() {
        headers.push(tags_matcher(&own, false));
    }
    for other in all.iter().filter(|o| o.matches.is_empty()) {
        if other.from != source.from && covers(&source.from, &other.from) {
            headers.push(tags_matcher(&source_tags(&other.from), true));
        }
    }
    headers
}

fn fault_filters(source: &FaultSource, index: usize, all: &[FaultSource]) -> Vec<HttpFilter> {
    let conf: &mesh_fault_injection::Conf = &source.conf;
    let mut filters = Vec::new();
    for (i, fault) in conf.http.iter().flatten().enumerate() {
        let field = format!("source[{index}].default.http[{i}]");
        // A fault that cannot be carried out is dropped alone (the policy's other faults, and
        // the listener's other filters, still apply).
        let mut config = match http_fault(fault, &field) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(%error, "fault skipped");
                continue;
            }
        };
        let typed = if source.matches.is_empty() {
            config.headers = source_headers(source, all);
            pack_any(config)
        } else {
            conditional(pack_any(config), &source.matches)
        };
        filters.push(HttpFilter {
            name: FAULT_FILTER.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(typed)),
            ..HttpFilter::default()
        });
    }
    filters
}

fn xds_config(name: &str, typed: Any) -> XdsTypedExtensionConfig {
    XdsTypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(typed),
    }
}

/// The predicate of one `matches` entry: SPIFFE ID on the certificate URI SAN and/or SNI.
fn match_predicate(m: &Match) -> xds_matcher::matcher::matcher_list::Predicate {
    use xds_matcher::matcher::matcher_list::predicate::{
        single_predicate, MatchType, PredicateList, SinglePredicate,
    };
    use xds_matcher::matcher::matcher_list::Predicate;
    let single = |input: XdsTypedExtensionConfig, pattern| Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(input),
            matcher: Some(single_predicate::Matcher::ValueMatch(
                xds_matcher::StringMatcher {
                    match_pattern: Some(pattern),
                    ..xds_matcher::StringMatcher::default()
                },
            )),
        })),
    };
    let mut parts = Vec::new();
    if let Some(spiffe) = &m.spiffe_id {
        let pattern = match spiffe.match_type {
            SpiffeIdMatchType::Prefix => {
                xds_matcher::string_matcher::MatchPattern::Prefix(spiffe.value.clone())
            }
            _ => xds_matcher::string_matcher::MatchPattern::Exact(spiffe.value.clone()),
        };
        parts.push(single(
            xds_config("envoy.matching.inputs.uri_san", pack_any(UriSanInput {})),
            pattern,
        ));
    }
    if let Some(sni) = &m.sni {
        parts.push(single(
            xds_config(
                "envoy.matching.inputs.server_name",
                pack_any(ServerNameInput {}),
            ),
            xds_matcher::string_matcher::MatchPattern::Exact(sni.value.clone()),
        ));
    }
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        Predicate {
            match_type: Some(MatchType::AndMatcher(PredicateList { predicate: parts })),
        }
    }
}

/// Wraps a filter config so that it is skipped unless one of `matches` matches the caller.
fn conditional(config: Any, matches: &[Match]) -> Any {
    use xds_matcher::matcher::matcher_list::predicate::{MatchType, PredicateList};
    use xds_matcher::matcher::matcher_list::{FieldMatcher, Predicate};
    use xds_matcher::matcher::{on_match, MatcherList, MatcherType, OnMatch};
    let any_match = Predicate {
        match_type: Some(MatchType::OrMatcher(PredicateList {
            predicate: matches.iter().map(match_predicate).collect(),
        })),
    };
    let matcher = xds_matcher::Matcher {
        matcher_type: Some(MatcherType::MatcherList(MatcherList {
            matchers: vec![FieldMatcher {
                predicate: Some(Predicate {
                    match_type: Some(MatchType::NotMatcher(Box::new(any_match))),
                }),
                on_match: Some(OnMatch {
                    on_match: Some(on_match::OnMatch::Action(xds_config(
                        "skip",
                        pack_any(SkipFilter {}),
                    ))),
                    ..OnMatch::default()
                }),
            }],
        })),
        on_no_match: None,
    };
    #[allow(deprecated)]
    let wrapped = ExtensionWithMatcher {
        xds_matcher: Some(matcher),
        extension_config: Some(TypedExtensionConfig {
            name: FAULT_FILTER.to_owned(),
            typed_config: Some(config),
        }),
        ..ExtensionWithMatcher::default()
    };
    pack_any(wrapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::inbound_rbac;
    use crate::policy::testing::{dataplane, policies, unpack};
    use crate::policy::ProxyPolicies;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    fn inbound(yaml: &str) -> InboundPolicies {
        ProxyPolicies::compute(&dataplane(), &policies(yaml)).inbound()
    }

    fn typed(f: &HttpFilter) -> &Any {
        match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            other => panic!("{other:?}"),
        }
    }

    /// Whether the fault's header matchers accept a request carrying `header`.
    fn accepts(fault: &HttpFault, header: &str) -> bool {
        fault.headers.iter().all(|h| {
            let Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(r)),
                ..
            })) = &h.header_match_specifier
            else {
                panic!("regex expected");
            };
            regex_full_match(&r.regex, header) != h.invert_match
        })
    }

    /// Full match, as Envoy's RE2 `safe_regex` matches header values.
    fn regex_full_match(regex: &str, text: &str) -> bool {
        regex_automata::meta::Regex::new(&format!("^(?:{regex})$"))
            .expect("valid regex")
            .is_match(text)
    }

    #[test]
    fn the_tags_header_serializes_sorted_multi_values() {
        let dp = crate::policy::testing::resource(
            r#"
type: Dataplane
name: multi
mesh: default
networking:
  address: 10.0.0.3
  inbound:
    - port: 1
      tags: {kuma.io/service: b, version: v1}
    - port: 2
      tags: {kuma.io/service: a, zone: z}
"#,
        );
        let mesh_api::Spec::Dataplane(spec) = &dp.spec else {
            panic!()
        };
        let h = source_tags_header(spec);
        assert_eq!(
            h.header.unwrap().value,
            "&kuma.io/service=a,b&&version=v1&&zone=z&"
        );
        assert_eq!(
            h.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
    }

    #[test]
    fn no_policies_no_filters() {
        assert!(inbound_http_filters(&inbound(""), None).unwrap().is_empty());
    }

    #[test]
    fn a_zero_bandwidth_fault_is_dropped_alone() {
        let p = inbound(
            r#"
type: MeshFaultInjection
name: fi
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from:
    - targetRef: {kind: Mesh}
      default:
        http:
          - abort: {httpStatus: 503, percentage: 10}
          - responseBandwidth: {limit: 0 kbps, percentage: 100}
"#,
        );
        let filters = inbound_http_filters(&p, None).unwrap();
        assert_eq!(filters.len(), 1, "{filters:?}");
        let fault: HttpFault = unpack(typed(&filters[0]));
        assert!(fault.abort.is_some() && fault.response_rate_limit.is_none());
    }

    #[test]
    fn faults_per_source_with_the_most_specific_winning() {
        let p = inbound(
            r#"
type: MeshFaultInjection
name: fi
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from:
    - targetRef: {kind: Mesh}
      default:
        http:
          - abort: {httpStatus: 503, percentage: 10}
    - targetRef: {kind: MeshService, name: client}
      default:
        http:
          - delay: {value: 5s, percentage: "62.9"}
            responseBandwidth: {limit: 10 Mbps, percentage: 100}
"#,
        );
        let filters = inbound_http_filters(&p, None).unwrap();
        assert_eq!(filters.len(), 2);
        assert!(filters.iter().all(|f| f.name == FAULT_FILTER));
        let mesh: HttpFault = unpack(typed(&filters[0]));
        assert_eq!(
            mesh.abort.as_ref().unwrap().error_type,
            Some(fault_abort::ErrorType::HttpStatus(503))
        );
        assert_eq!(
            mesh.abort.as_ref().unwrap().percentage,
            Some(FractionalPercent {
                numerator: 10,
                denominator: DenominatorType::Hundred as i32
            })
        );
        let client: HttpFault = unpack(typed(&filters[1]));
        let delay = client.delay.as_ref().unwrap();
        assert_eq!(
            delay.fault_delay_secifier,
            Some(fault_delay::FaultDelaySecifier::FixedDelay(PbDuration {
                seconds: 5,
                nanos: 0
            }))
        );
        assert_eq!(
            delay.percentage,
            Some(FractionalPercent {
                numerator: 6290,
                denominator: DenominatorType::TenThousand as i32
            })
        );
        assert_eq!(
            client.response_rate_limit.as_ref().unwrap().limit_type,
            Some(fault_rate_limit::LimitType::FixedLimit(
                fault_rate_limit::FixedLimit { limit_kbps: 10_000 }
            ))
        );
        let from_client = "&kuma.io/service=client&&version=v1&";
        let from_other = "&kuma.io/service=client-2&";
        // The client gets only its own faults; everyone else only the mesh-wide abort.
        assert!(accepts(&client, from_client) && !accepts(&mesh, from_client));
        assert!(accepts(&mesh, from_other) && !accepts(&client, from_other));
        assert!(accepts(&mesh, "") && !accepts(&client, ""));
    }

    #[test]
    fn subset_sources_match_all_their_tags() {
        let tags = BTreeMap::from([
            ("kuma.io/service".to_owned(), "client".to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ]);
        let regex = tags_regex(&tags);
        assert_eq!(
            regex,
            ".*&kuma\\.io/service=([^&]*,)?client(,[^&]*)?&.*&version=([^&]*,)?v1(,[^&]*)?&.*"
        );
        assert!(regex_full_match(
            &regex,
            "&kuma.io/service=a,client&&version=v1,v2&"
        ));
        assert!(!regex_full_match(
            &regex,
            "&kuma.io/service=client&&version=v2&"
        ));
        assert!(!regex_full_match(
            &regex,
            "&kuma.io/service=xclient&&version=v1&"
        ));
    }

    #[test]
    fn conditional_rule_faults_are_wrapped_in_a_matcher() {
        let p = inbound(
            r#"
type: MeshFaultInjection
name: fi
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  rules:
    - matches:
        - spiffeID: {type: Prefix, value: "spiffe://default/client"}
      default:
        http:
          - abort: {httpStatus: 500, percentage: 50}
"#,
        );
        let filters = inbound_http_filters(&p, None).unwrap();
        assert_eq!(filters.len(), 1);
        let wrapped: ExtensionWithMatcher = unpack(typed(&filters[0]));
        let ext = wrapped.extension_config.unwrap();
        assert_eq!(ext.name, FAULT_FILTER);
        let fault: HttpFault = unpack(ext.typed_config.as_ref().unwrap());
        assert!(fault.abort.is_some() && fault.headers.is_empty());
        let matcher = wrapped.xds_matcher.unwrap();
        let Some(xds_matcher::matcher::MatcherType::MatcherList(list)) = matcher.matcher_type
        else {
            panic!("matcher list expected");
        };
        let field = &list.matchers[0];
        let skip = field.on_match.as_ref().unwrap().on_match.as_ref().unwrap();
        match skip {
            xds_matcher::matcher::on_match::OnMatch::Action(a) => {
                let _: SkipFilter = unpack(a.typed_config.as_ref().unwrap());
            }
            other => panic!("{other:?}"),
        }
        let text = format!("{:?}", field.predicate);
        assert!(text.contains("NotMatcher") && text.contains("spiffe://default/client"));
    }

    #[test]
    fn rate_limit_and_rbac_filters() {
        let p = inbound(
            r#"
type: MeshRateLimit
name: rl
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from:
    - targetRef: {kind: Mesh}
      default:
        local:
          http:
            requestRate: {num: 100, interval: 10s}
            onRateLimit: {status: 423, headers: {add: [{name: x-limited, value: "true"}]}}
          tcp:
            connectionRate: {num: 5, interval: 1s}
---
type: MeshTrafficPermission
name: allow
mesh: default
spec:
  from:
    - targetRef: {kind: Mesh}
      default: {action: Allow}
"#,
        );
        let rbac = inbound_rbac(&p, "default", true);
        let filters = inbound_http_filters(&p, rbac.as_ref()).unwrap();
        let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["envoy.filters.http.rbac", HTTP_RATE_LIMIT_FILTER]);
        let rl: LocalRateLimit = unpack(typed(&filters[1]));
        let bucket = rl.token_bucket.unwrap();
        assert_eq!(bucket.max_tokens, 100);
        assert_eq!(bucket.tokens_per_fill, Some(UInt32Value { value: 100 }));
        assert_eq!(
            bucket.fill_interval,
            Some(PbDuration {
                seconds: 10,
                nanos: 0
            })
        );
        assert_eq!(rl.status, Some(HttpStatus { code: 423 }));
        assert_eq!(
            rl.response_headers_to_add[0].header.as_ref().unwrap().key,
            "x-limited"
        );
        assert!(rl.filter_enforced.is_some() && rl.filter_enabled.is_some());

        let tcp = inbound_tcp_rate_limit(&p).unwrap();
        assert_eq!(tcp.name, TCP_RATE_LIMIT_FILTER);
        let Some(filter::ConfigType::TypedConfig(any)) = &tcp.config_type else {
            panic!()
        };
        let t: TcpLocalRateLimit = unpack(any);
        assert_eq!(t.token_bucket.unwrap().max_tokens, 5);
    }

    #[test]
    fn bad_bandwidth_is_an_error() {
        assert_eq!(bandwidth_kbps("1Gbps", "f").unwrap(), 1_000_000);
        assert_eq!(bandwidth_kbps("50kbps", "f").unwrap(), 50);
        let e = bandwidth_kbps(
            "5 bytes",
            "source[0].default.http[0].responseBandwidth.limit",
        )
        .unwrap_err();
        assert_eq!(e.policy, ResourceType::MeshFaultInjection);
        assert!(e.message.contains("kbps"));
        let e = bandwidth_kbps(
            "0 kbps",
            "source[0].default.http[0].responseBandwidth.limit",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "MeshFaultInjection source[0].default.http[0].responseBandwidth.limit: '0 kbps' is \
             no bandwidth: the limit must be at least 1kbps"
        );
    }
}
