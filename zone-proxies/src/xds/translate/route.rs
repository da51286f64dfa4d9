//! RDS: a `RouteConfiguration` -> [`RouteTable`] (also used for an HTTP connection manager's
//! inline `route_config`): virtual hosts, route matches on path, headers and query, actions
//! (forward to one or weighted clusters with timeouts, retries and rewrites, a redirect, or a
//! direct response), and the request and response header changes of the route, the virtual
//! host and the configuration. Regex redirects, header changes per weighted cluster and header
//! values with formatter commands (`%REQ(...)%` and the like) are refused.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route, route_action, route_match::PathSpecifier,
    HeaderMatcher as PbHeaderMatcher, RedirectAction as PbRedirectAction,
    RetryPolicy as PbRetryPolicy, Route as PbRoute, RouteAction as PbRouteAction,
    RouteConfiguration, VirtualHost as PbVirtualHost,
};

use super::{
    data_source_text, duration, each, optional_timeout, value_match, At, FieldError, FieldResult,
    InlineSecrets, ResourceHandler,
};
use crate::config::{
    Forward, HeaderAction, HeaderAdd, HeaderMatch, HeaderMutations, HeaderRules, PathMatch,
    QueryMatch, Redirect, RedirectPath, RegexRewrite, RetryOn, RetryPolicy, Route, RouteAction,
    RouteMatch, RouteTable, ValueMatch, VirtualHost, WeightedCluster,
};

/// Envoy's default route timeout.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default retry back-off base interval (the maximum defaults to 10 times it).
const RETRY_BASE: Duration = Duration::from_millis(25);

/// The RDS handler.
#[derive(Debug)]
pub struct RouteHandler;

impl ResourceHandler for RouteHandler {
    const TYPE_URL: &'static str = super::super::ROUTE_TYPE;
    const KIND: &'static str = "route configuration";
    type Proto = RouteConfiguration;
    type Model = RouteTable;

    fn name(proto: &RouteConfiguration) -> &str {
        &proto.name
    }

    fn translate(r: &RouteConfiguration, _: &mut InlineSecrets) -> FieldResult<Option<RouteTable>> {
        route_table(r).map(Some)
    }
}

/// A route configuration, from RDS or inline.
pub fn route_table(r: &RouteConfiguration) -> FieldResult<RouteTable> {
    let virtual_hosts = each(&r.virtual_hosts, "virtual_hosts", virtual_host)?;
    if r.vhds.is_some() {
        return Err(FieldError::new("VHDS is not supported").at("vhds"));
    }
    Ok(RouteTable {
        name: r.name.clone(),
        virtual_hosts,
        headers: header_rules(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )?,
        most_specific_header_mutations_wins: r.most_specific_header_mutations_wins,
    })
}

/// The header changes of one level (route configuration, virtual host or route).
fn header_rules(
    request_add: &[HeaderValueOption],
    request_remove: &[String],
    response_add: &[HeaderValueOption],
    response_remove: &[String],
) -> FieldResult<HeaderRules> {
    Ok(HeaderRules {
        request: header_mutations(request_add, request_remove, "request")?,
        response: header_mutations(response_add, response_remove, "response")?,
    })
}

fn header_mutations(
    add: &[HeaderValueOption],
    remove: &[String],
    side: &str,
) -> FieldResult<HeaderMutations> {
    let remove = each(remove, format!("{side}_headers_to_remove"), |name| {
        modifiable_name(name)
    })?;
    let add = each(add, format!("{side}_headers_to_add"), header_add)?;
    Ok(HeaderMutations { remove, add })
}

/// A header name a route may add or remove, lower-cased: a valid name, neither a pseudo-header
/// (`:path`, ...) nor `host`, which Envoy refuses too (rewrites have fields of their own).
fn modifiable_name(name: &str) -> FieldResult<String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') || lower == "host" {
        return Err(FieldError::new(format!(
            "{name:?}: `:`-prefixed and host headers may not be added or removed"
        )));
    }
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        return Err(FieldError::new(format!("{name:?} is not a header name")));
    }
    Ok(lower)
}

// `append` is deprecated in favour of `append_action`, and still what older control planes send.
#[allow(deprecated)]
fn header_add(option: &HeaderValueOption) -> FieldResult<HeaderAdd> {
    let header = option
        .header
        .as_ref()
        .ok_or_else(|| FieldError::new("missing").at("header"))?;
    let name = modifiable_name(&header.key).at("key").at("header")?;
    let value = if header.raw_value.is_empty() {
        literal_value(&header.value).at("value")
    } else {
        std::str::from_utf8(&header.raw_value)
            .map_err(|_| FieldError::new("not UTF-8"))
            .and_then(literal_value)
            .at("raw_value")
    }
    .at("header")?;
    let action = match (
        &option.append,
        HeaderAppendAction::try_from(option.append_action),
    ) {
        (_, Err(_)) => {
            return Err(
                FieldError::new(format!("unknown append action {}", option.append_action))
                    .at("append_action"),
            )
        }
        (Some(append), Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => match append.value {
            true => HeaderAction::Append,
            false => HeaderAction::Overwrite,
        },
        (Some(_), Ok(_)) => {
            return Err(
                FieldError::new("append and append_action may not both be set").at("append"),
            )
        }
        (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => HeaderAction::Append,
        (None, Ok(HeaderAppendAction::AddIfAbsent)) => HeaderAction::AddIfAbsent,
        (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => HeaderAction::Overwrite,
        (None, Ok(HeaderAppendAction::OverwriteIfExists)) => HeaderAction::OverwriteIfExists,
    };
    Ok(HeaderAdd {
        name,
        value,
        action,
        keep_empty: option.keep_empty_value,
    })
}

/// A header value in Envoy's formatter syntax, where `%%` is a literal `%`: commands
/// (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(x)%`, ...) are refused, as the proxy does not
/// evaluate them.
fn literal_value(format: &str) -> FieldResult<String> {
    let mut value = String::with_capacity(format.len());
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        value.push_str(&rest[..i]);
        match rest[i + 1..].strip_prefix('%') {
            Some(after) => {
                value.push('%');
                rest = after;
            }
            None => {
                return Err(FieldError::new(format!(
                    "{format:?}: formatter commands (%...%) are not supported (a literal % is %%)"
                )))
            }
        }
    }
    value.push_str(rest);
    if http::HeaderValue::from_str(&value).is_err() {
        return Err(FieldError::new(format!("{value:?} is not a header value")));
    }
    Ok(value)
}

fn virtual_host(v: &PbVirtualHost) -> FieldResult<VirtualHost> {
    if v.retry_policy.is_some() {
        return Err(
            FieldError::new("virtual host retry policies are not supported").at("retry_policy"),
        );
    }
    if v.require_tls != 0 {
        return Err(FieldError::new("require_tls is not supported").at("require_tls"));
    }
    let routes = each(&v.routes, "routes", route)?;
    Ok(VirtualHost {
        name: v.name.clone(),
        domains: v.domains.clone(),
        routes,
        headers: header_rules(
            &v.request_headers_to_add,
            &v.request_headers_to_remove,
            &v.response_headers_to_add,
            &v.response_headers_to_remove,
        )?,
    })
}

fn route(r: &PbRoute) -> FieldResult<Route> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| FieldError::new("missing").at("match"))?;
    let matcher = route_match(m).at("match")?;
    let action = match &r.action {
        Some(route::Action::Route(a)) => RouteAction::Forward(forward(a).at("route")?),
        Some(route::Action::DirectResponse(d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    FieldError::new(format!("HTTP status {} is out of range", d.status))
                        .at("status")
                        .at("direct_response")
                })?;
            let body = d
                .body
                .as_ref()
                .map(|b| data_source_text(b).at("body").at("direct_response"))
                .transpose()?
                .unwrap_or_default();
            RouteAction::DirectResponse { status, body }
        }
        Some(route::Action::Redirect(r)) => RouteAction::Redirect(redirect(r).at("redirect")?),
        Some(_) => return Err(FieldError::new("unsupported route action")),
        None => return Err(FieldError::new("no action")),
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        headers: header_rules(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )?,
    })
}

fn redirect(r: &PbRedirectAction) -> FieldResult<Redirect> {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let status = match RedirectResponseCode::try_from(r.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => 301,
        Ok(RedirectResponseCode::Found) => 302,
        Ok(RedirectResponseCode::SeeOther) => 303,
        Ok(RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => {
            return Err(
                FieldError::new(format!("unknown response code {}", r.response_code))
                    .at("response_code"),
            )
        }
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if !s.is_empty() => {
            Some(s.to_ascii_lowercase())
        }
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
        _ => None,
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p)
                .map_err(|_| FieldError::new(format!("{p} is not a port")).at("port_redirect"))?,
        ),
    };
    let path = match &r.path_rewrite_specifier {
        None => RedirectPath::Keep,
        Some(PathRewriteSpecifier::PathRedirect(p)) if p.starts_with('/') => {
            RedirectPath::Whole(p.clone())
        }
        Some(PathRewriteSpecifier::PathRedirect(p)) => {
            return Err(FieldError::new(format!("{p:?} does not start with /")).at("path_redirect"))
        }
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => RedirectPath::Prefix(p.clone()),
        Some(PathRewriteSpecifier::RegexRewrite(_)) => {
            return Err(
                FieldError::new("regex path redirects are not supported").at("regex_rewrite")
            )
        }
        Some(PathRewriteSpecifier::PathRewrite(_)) => {
            return Err(FieldError::new("path templates are not supported").at("path_rewrite"))
        }
    };
    Ok(Redirect {
        status,
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        path,
        strip_query: r.strip_query,
    })
}

fn route_match(
    m: &envoy_types::pb::envoy::config::route::v3::RouteMatch,
) -> FieldResult<RouteMatch> {
    if m.case_sensitive.as_ref().is_some_and(|c| !c.value) {
        return Err(
            FieldError::new("case-insensitive paths are not supported").at("case_sensitive")
        );
    }
    if m.runtime_fraction.is_some() {
        return Err(FieldError::new("runtime fractions are not supported").at("runtime_fraction"));
    }
    if m.grpc.is_some() || m.tls_context.is_some() || !m.cookies.is_empty() {
        return Err(FieldError::new(
            "matching on gRPC, TLS context or cookies is not supported",
        ));
    }
    if !m.dynamic_metadata.is_empty() || !m.filter_state.is_empty() {
        return Err(FieldError::new(
            "matching on dynamic metadata or filter state is not supported",
        ));
    }
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(r.regex.clone()),
        Some(_) => {
            return Err(FieldError::new(
                "only prefix, path and safe_regex path matches are supported",
            ))
        }
        None => return Err(FieldError::new("no path match")),
    };
    let headers = each(&m.headers, "headers", header_match)?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let value = match &q.query_parameter_match_specifier {
                Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                    value_match(s).at("string_match")
                }
                Some(QueryParameterMatchSpecifier::PresentMatch(true)) => Ok(ValueMatch::Present),
                _ => Err(FieldError::new(
                    "only string_match and present_match are supported",
                )),
            };
            value
                .map(|value| QueryMatch {
                    name: q.name.clone(),
                    value,
                })
                .at(format!("[{i}]"))
                .at("query_parameters")
        })
        .collect::<FieldResult<Vec<_>>>()?;
    Ok(RouteMatch {
        path,
        headers,
        query,
    })
}

// The deprecated exact/prefix/regex forms are still what many control planes send.
#[allow(deprecated)]
pub(super) fn header_match(h: &PbHeaderMatcher) -> FieldResult<HeaderMatch> {
    let mut invert = h.invert_match;
    let value = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(s)) => value_match(s).at("string_match")?,
        Some(HeaderMatchSpecifier::ExactMatch(v)) => ValueMatch::Exact(v.clone()),
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => ValueMatch::Prefix(v.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => ValueMatch::Regex(r.regex.clone()),
        Some(HeaderMatchSpecifier::PresentMatch(present)) => {
            // `present_match: false` matches when the header is absent.
            invert ^= !present;
            ValueMatch::Present
        }
        None => ValueMatch::Present,
        Some(_) => {
            return Err(FieldError::new(
                "only string, exact, prefix, regex and present header matches are supported",
            ))
        }
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        value,
        invert,
    })
}

fn forward(a: &PbRouteAction) -> FieldResult<Forward> {
    let clusters = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(name)) => vec![WeightedCluster {
            name: name.clone(),
            weight: 1,
        }],
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let clusters: Vec<WeightedCluster> = w
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if !c.cluster_header.is_empty() {
                        return Err(FieldError::new("cluster_header is not supported")
                            .at(format!("[{i}]"))
                            .at("clusters"));
                    }
                    if !(c.request_headers_to_add.is_empty()
                        && c.request_headers_to_remove.is_empty()
                        && c.response_headers_to_add.is_empty()
                        && c.response_headers_to_remove.is_empty())
                    {
                        return Err(FieldError::new(
                            "header changes per weighted cluster are not supported",
                        )
                        .at(format!("[{i}]"))
                        .at("clusters"));
                    }
                    Ok(WeightedCluster {
                        name: c.name.clone(),
                        weight: c.weight.as_ref().map_or(0, |w| w.value),
                    })
                })
                .collect::<FieldResult<_>>()
                .at("weighted_clusters")?;
            if clusters.iter().all(|c| c.weight == 0) {
                return Err(FieldError::new("no cluster has a weight").at("weighted_clusters"));
            }
            clusters
        }
        _ => {
            return Err(FieldError::new(
                "only cluster and weighted_clusters are supported",
            ))
        }
    };
    if a.path_rewrite_policy.is_some() {
        return Err(FieldError::new("path templates are not supported").at("path_rewrite_policy"));
    }
    let regex_rewrite = a
        .regex_rewrite
        .as_ref()
        .map(|r| {
            let pattern = r
                .pattern
                .as_ref()
                .ok_or_else(|| FieldError::new("missing").at("pattern"))?;
            regex_automata::meta::Regex::new(&pattern.regex)
                .map_err(|e| FieldError::new(e.to_string()).at("regex").at("pattern"))?;
            Ok(RegexRewrite {
                pattern: pattern.regex.clone(),
                substitution: r.substitution.clone(),
            })
        })
        .transpose()
        .at("regex_rewrite")?;
    let host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => None,
        Some(_) => return Err(FieldError::new("only literal host rewrites are supported")),
    };
    let timeout = match &a.timeout {
        None => Some(ROUTE_TIMEOUT),
        Some(d) => optional_timeout(Some(d)).at("timeout")?,
    };
    Ok(Forward {
        clusters,
        timeout,
        idle_timeout: optional_timeout(a.idle_timeout.as_ref()).at("idle_timeout")?,
        retry: a
            .retry_policy
            .as_ref()
            .map(retry_policy)
            .transpose()
            .at("retry_policy")?,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
    })
}

fn retry_policy(r: &PbRetryPolicy) -> FieldResult<RetryPolicy> {
    let mut retry_on = RetryOn::default();
    for condition in r.retry_on.split(',').map(str::trim) {
        match condition {
            "5xx" => retry_on.five_xx = true,
            "gateway-error" => retry_on.gateway_error = true,
            "reset" => retry_on.reset = true,
            "connect-failure" => retry_on.connect_failure = true,
            "retriable-status-codes" => retry_on.retriable_status_codes = true,
            "refused-stream" => retry_on.refused_stream = true,
            // Conditions this proxy cannot observe are dropped (see the module docs of `super`).
            _ => {}
        }
    }
    let (backoff_base, backoff_max) = match &r.retry_back_off {
        None => (RETRY_BASE, RETRY_BASE * 10),
        Some(b) => {
            let base = b
                .base_interval
                .as_ref()
                .map(|d| duration(d).at("base_interval"))
                .transpose()
                .at("retry_back_off")?
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    FieldError::new("must be positive")
                        .at("base_interval")
                        .at("retry_back_off")
                })?;
            let max = b
                .max_interval
                .as_ref()
                .map(|d| duration(d).at("max_interval"))
                .transpose()
                .at("retry_back_off")?
                .unwrap_or(base * 10);
            if max < base {
                return Err(FieldError::new("less than base_interval")
                    .at("max_interval")
                    .at("retry_back_off"));
            }
            (base, max)
        }
    };
    let retriable_status_codes = r
        .retriable_status_codes
        .iter()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    FieldError::new(format!("status {c} is out of range"))
                        .at("retriable_status_codes")
                })
        })
        .collect::<FieldResult<Vec<_>>>()?;
    Ok(RetryPolicy {
        retry_on,
        num_retries: r.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: optional_timeout(r.per_try_timeout.as_ref()).at("per_try_timeout")?,
        backoff_base,
        backoff_max,
        retriable_status_codes,
    })
}
