//! LDS: a `Listener` -> [`Listener`]: its address, the TLS inspector, and per filter chain its SNI
//! match, TLS termination and filters (network RBAC, then tcp_proxy or http_connection_manager
//! with its HTTP filters and routes, inline or by RDS name). A listener with an `api_listener`
//! (gRPC proxyless clients) has no socket: it translates to nothing.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog as PbAccessLog};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain as PbFilterChain, Listener as PbListener,
};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac, Principal as PbPrincipal, Rbac as PbRbac,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    fault_delay, fault_rate_limit,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as PbLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as PbHttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as PbNetworkLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as PbNetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy, TcpProxy as PbTcpProxy,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::Any;
use prost::Name as _;

use envoy_types::pb::envoy::extensions::common::matching::v3::ExtensionWithMatcher;
use envoy_types::pb::envoy::extensions::filters::common::matcher::action::v3::SkipFilter;
use envoy_types::pb::envoy::extensions::matching::common_inputs::network::v3::ServerNameInput;
use envoy_types::pb::envoy::extensions::matching::common_inputs::ssl::v3::UriSanInput;
use envoy_types::pb::xds::r#type::matcher::v3 as xds_matcher;

use super::route::{header_match, route_table};
use super::{
    duration, each, optional_timeout, tls, type_name, unpack, value_match, At, FieldError,
    FieldResult, InlineSecrets, ResourceHandler,
};
use crate::config::{
    AccessLog, CallerMatch, ChainHandler, FaultAbort, FaultBandwidth, FaultDelay, FaultInjection,
    FilterChain, HttpManager, Listener, LocalRateLimit, Principal, Rbac, RbacAction, RouteSource,
    TcpProxy, ValueMatch, WeightedCluster,
};

/// Envoy's default `tcp_proxy` idle timeout.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default HTTP stream idle timeout.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The LDS handler.
#[derive(Debug)]
pub struct ListenerHandler;

impl ResourceHandler for ListenerHandler {
    const TYPE_URL: &'static str = super::super::LISTENER_TYPE;
    const KIND: &'static str = "listener";
    type Proto = PbListener;
    type Model = Listener;

    fn name(proto: &PbListener) -> &str {
        &proto.name
    }

    fn translate(l: &PbListener, secrets: &mut InlineSecrets) -> FieldResult<Option<Listener>> {
        if l.api_listener.is_some() {
            return Ok(None);
        }
        let address = socket_address(
            l.address
                .as_ref()
                .ok_or_else(|| FieldError::new("a listener needs an address").at("address"))?,
        )
        .at("address")?;
        let mut inspect_tls = false;
        for (i, f) in l.listener_filters.iter().enumerate() {
            let at = |e: FieldError| e.at(format!("[{i}]")).at("listener_filters");
            match &f.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any))
                    if any.type_url == TlsInspector::type_url() =>
                {
                    inspect_tls = true
                }
                Some(listener_filter::ConfigType::TypedConfig(any)) => {
                    return Err(at(FieldError::new(format!(
                        "unsupported listener filter type {}",
                        type_name(&any.type_url)
                    ))))
                }
                _ => {
                    return Err(at(FieldError::new(format!(
                        "listener filter {:?} has no typed_config",
                        f.name
                    ))))
                }
            }
        }
        let filter_chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| {
                filter_chain(c, secrets)
                    .at(format!("[{i}]"))
                    .at("filter_chains")
            })
            .collect::<FieldResult<Vec<_>>>()?;
        let default_chain = l
            .default_filter_chain
            .as_ref()
            .map(|c| filter_chain(c, secrets).at("default_filter_chain"))
            .transpose()?;
        Ok(Some(Listener {
            name: l.name.clone(),
            address,
            inspect_tls,
            filter_chains,
            default_chain,
        }))
    }
}

/// A listener's IP address and port.
fn socket_address(a: &Address) -> FieldResult<SocketAddr> {
    let Some(address::Address::SocketAddress(s)) = &a.address else {
        return Err(FieldError::new("only socket addresses are supported"));
    };
    let ip: IpAddr = s.address.parse().map_err(|_| {
        FieldError::new(format!("{:?} is not an IP address", s.address))
            .at("address")
            .at("socket_address")
    })?;
    let port = match s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).map_err(|_| {
            FieldError::new(format!("port {p} is out of range"))
                .at("port_value")
                .at("socket_address")
        })?,
        _ => return Err(FieldError::new("a numeric port_value is required").at("socket_address")),
    };
    Ok(SocketAddr::new(ip, port))
}

fn filter_chain(c: &PbFilterChain, secrets: &mut InlineSecrets) -> FieldResult<FilterChain> {
    let mut server_names = Vec::new();
    if let Some(m) = &c.filter_chain_match {
        let unsupported = m.destination_port.is_some()
            || !m.prefix_ranges.is_empty()
            || !m.direct_source_prefix_ranges.is_empty()
            || !m.source_prefix_ranges.is_empty()
            || !m.source_ports.is_empty()
            || m.source_type != 0
            || !m.application_protocols.is_empty()
            || !m.address_suffix.is_empty();
        if unsupported {
            return Err(FieldError::new(
                "only server_names (and transport_protocol \"tls\") can be matched",
            )
            .at("filter_chain_match"));
        }
        if !matches!(m.transport_protocol.as_str(), "" | "tls") {
            return Err(FieldError::new(format!(
                "transport_protocol {:?} is not supported",
                m.transport_protocol
            ))
            .at("transport_protocol")
            .at("filter_chain_match"));
        }
        server_names = m.server_names.clone();
    }
    let tls = c
        .transport_socket
        .as_ref()
        .map(|s| tls::downstream(s, secrets).at("transport_socket"))
        .transpose()?
        .flatten();
    let NetworkFilters {
        rbac,
        connection_rate_limit,
        handler,
    } = filters(&c.filters).at("filters")?;
    Ok(FilterChain {
        name: c.name.clone(),
        server_names,
        tls,
        rbac,
        connection_rate_limit,
        handler,
    })
}

fn typed_config(f: &Filter) -> FieldResult<&Any> {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => Ok(any),
        _ => Err(FieldError::new(format!(
            "filter {:?} has no typed_config",
            f.name
        ))),
    }
}

/// A chain's network filters: optional RBAC and connection rate limit, then exactly one
/// terminal filter, last.
fn filters(list: &[Filter]) -> FieldResult<NetworkFilters> {
    let mut rbac_filter = None;
    let mut connection_limit = None;
    let mut handler = None;
    for (i, f) in list.iter().enumerate() {
        let at = |e: FieldError| e.at(format!("[{i}]"));
        if handler.is_some() {
            return Err(at(FieldError::new(format!(
                "filter {:?} after the terminal filter",
                f.name
            ))));
        }
        let any = typed_config(f).map_err(at)?;
        let url = any.type_url.as_str();
        if url == PbNetworkRbac::type_url() {
            let config: PbNetworkRbac = unpack(any).at("typed_config").map_err(at)?;
            if config.matcher.is_some() {
                return Err(at(FieldError::new("RBAC matchers are not supported")
                    .at("matcher")
                    .at("typed_config")));
            }
            if rbac_filter.is_some() {
                return Err(at(FieldError::new("a second network RBAC filter")));
            }
            rbac_filter = Some(
                config
                    .rules
                    .as_ref()
                    .map(rbac)
                    .transpose()
                    .at("rules")
                    .at("typed_config")
                    .map_err(at)?
                    .flatten(),
            );
        } else if url == PbNetworkLocalRateLimit::type_url() {
            let config: PbNetworkLocalRateLimit = unpack(any).at("typed_config").map_err(at)?;
            if connection_limit.is_some() {
                return Err(at(FieldError::new("a second network local rate limit")));
            }
            connection_limit = Some(
                connection_rate_limit(&config)
                    .at("typed_config")
                    .map_err(at)?,
            );
        } else if url == PbTcpProxy::type_url() {
            let config: PbTcpProxy = unpack(any).at("typed_config").map_err(at)?;
            handler = Some(ChainHandler::Tcp(
                tcp_proxy(&config).at("typed_config").map_err(at)?,
            ));
        } else if url == HttpConnectionManager::type_url() {
            let config: HttpConnectionManager = unpack(any).at("typed_config").map_err(at)?;
            handler = Some(ChainHandler::Http(
                http_manager(&config).at("typed_config").map_err(at)?,
            ));
        } else {
            return Err(at(FieldError::new(format!(
                "unsupported filter type {}",
                type_name(url)
            ))));
        }
    }
    let handler = handler.ok_or_else(|| {
        FieldError::new("no terminal filter (tcp_proxy or http_connection_manager)")
    })?;
    Ok(NetworkFilters {
        rbac: rbac_filter.flatten(),
        connection_rate_limit: connection_limit.flatten(),
        handler,
    })
}

/// What a chain's network filters come to.
struct NetworkFilters {
    rbac: Option<Rbac>,
    connection_rate_limit: Option<LocalRateLimit>,
    handler: ChainHandler,
}

fn tcp_proxy(p: &PbTcpProxy) -> FieldResult<TcpProxy> {
    let clusters = match &p.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => vec![WeightedCluster {
            name: name.clone(),
            weight: 1,
        }],
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| WeightedCluster {
                name: c.name.clone(),
                weight: c.weight,
            })
            .collect(),
        None => return Err(FieldError::new("no cluster")),
    };
    if clusters.is_empty() {
        return Err(FieldError::new("no clusters").at("weighted_clusters"));
    }
    let idle_timeout = match &p.idle_timeout {
        None => Some(TCP_IDLE_TIMEOUT),
        Some(d) => optional_timeout(Some(d)).at("idle_timeout")?,
    };
    Ok(TcpProxy {
        stat_prefix: p.stat_prefix.clone(),
        clusters,
        idle_timeout,
        access_logs: access_logs(&p.access_log).at("access_log")?,
    })
}

/// File access logs; other loggers (fluentd, OpenTelemetry, gRPC) are not written (see the
/// module docs of [`super`]).
fn access_logs(list: &[PbAccessLog]) -> FieldResult<Vec<AccessLog>> {
    let mut logs = Vec::new();
    for (i, log) in list.iter().enumerate() {
        if let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type {
            if any.type_url == FileAccessLog::type_url() {
                let file: FileAccessLog = unpack(any).at("typed_config").at(format!("[{i}]"))?;
                if file.path.is_empty() {
                    return Err(FieldError::new("empty")
                        .at("path")
                        .at("typed_config")
                        .at(format!("[{i}]")));
                }
                logs.push(AccessLog { path: file.path });
            }
        }
    }
    Ok(logs)
}

fn http_manager(h: &HttpConnectionManager) -> FieldResult<HttpManager> {
    let routes = match &h.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            if rds.route_config_name.is_empty() {
                return Err(FieldError::new("empty").at("route_config_name").at("rds"));
            }
            RouteSource::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(config)) => {
            RouteSource::Inline(std::sync::Arc::new(route_table(config).at("route_config")?))
        }
        Some(_) => return Err(FieldError::new("scoped routes are not supported")),
        None => return Err(FieldError::new("no routes (rds or route_config)")),
    };
    let mut manager = HttpManager {
        stat_prefix: h.stat_prefix.clone(),
        routes,
        rbac: None,
        faults: Vec::new(),
        local_rate_limit: None,
        access_logs: access_logs(&h.access_log).at("access_log")?,
        idle_timeout: match &h.stream_idle_timeout {
            None => Some(STREAM_IDLE_TIMEOUT),
            Some(d) => optional_timeout(Some(d)).at("stream_idle_timeout")?,
        },
    };
    http_filters(&h.http_filters, &mut manager).at("http_filters")?;
    Ok(manager)
}

fn http_filters(
    list: &[envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter],
    m: &mut HttpManager,
) -> FieldResult<()> {
    let mut router = false;
    for (i, f) in list.iter().enumerate() {
        let at = |e: FieldError| e.at(format!("[{i}]"));
        if router {
            return Err(at(FieldError::new(format!(
                "filter {:?} after the router",
                f.name
            ))));
        }
        if f.disabled {
            continue;
        }
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            _ => {
                return Err(at(FieldError::new(format!(
                    "HTTP filter {:?} has no typed_config",
                    f.name
                ))))
            }
        };
        let url = any.type_url.as_str();
        let typed = |e: FieldError| at(e.at("typed_config"));
        if url == Router::type_url() {
            router = true;
        } else if url == PbHttpRbac::type_url() {
            let config: PbHttpRbac = unpack(any).map_err(typed)?;
            if config.matcher.is_some() {
                return Err(typed(
                    FieldError::new("RBAC matchers are not supported").at("matcher"),
                ));
            }
            if m.rbac.is_some() {
                return Err(at(FieldError::new("a second RBAC filter")));
            }
            m.rbac = config
                .rules
                .as_ref()
                .map(rbac)
                .transpose()
                .at("rules")
                .map_err(typed)?
                .flatten();
        } else if url == HttpFault::type_url() {
            let config: HttpFault = unpack(any).map_err(typed)?;
            m.faults.push(fault(&config).map_err(typed)?);
        } else if url == ExtensionWithMatcher::type_url() {
            let config: ExtensionWithMatcher = unpack(any).map_err(typed)?;
            m.faults.push(conditional_fault(&config).map_err(typed)?);
        } else if url == PbLocalRateLimit::type_url() {
            let config: PbLocalRateLimit = unpack(any).map_err(typed)?;
            if m.local_rate_limit.is_some() {
                return Err(at(FieldError::new("a second local rate limit filter")));
            }
            m.local_rate_limit = local_rate_limit(&config).map_err(typed)?;
        } else if f.is_optional {
            continue;
        } else {
            return Err(at(FieldError::new(format!(
                "unsupported HTTP filter type {}",
                type_name(url)
            ))));
        }
    }
    if !router {
        return Err(FieldError::new("no router filter"));
    }
    Ok(())
}

/// RBAC rules; `None` when they enforce nothing (the LOG action).
fn rbac(rules: &PbRbac) -> FieldResult<Option<Rbac>> {
    let action = match rbac::Action::try_from(rules.action) {
        Ok(rbac::Action::Allow) => RbacAction::Allow,
        Ok(rbac::Action::Deny) => RbacAction::Deny,
        Ok(rbac::Action::Log) => return Ok(None),
        Err(_) => {
            return Err(FieldError::new(format!("unknown action {}", rules.action)).at("action"))
        }
    };
    let mut policies = std::collections::BTreeMap::new();
    for (name, policy) in &rules.policies {
        let at = |e: FieldError| e.at(format!("[{name:?}]")).at("policies");
        for (i, p) in policy.permissions.iter().enumerate() {
            if !matches!(p.rule, Some(permission::Rule::Any(true))) {
                return Err(at(FieldError::new(
                    "only the permission `any: true` is supported (rules on requests are not)",
                )
                .at(format!("[{i}]"))
                .at("permissions")));
            }
        }
        if policy.condition.is_some() || policy.checked_condition.is_some() {
            return Err(at(
                FieldError::new("CEL conditions are not supported").at("condition")
            ));
        }
        let principals = policy
            .principals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                principal(p)
                    .at(format!("[{i}]"))
                    .at("principals")
                    .map_err(at)
            })
            .collect::<FieldResult<Vec<_>>>()?;
        policies.insert(name.clone(), principals);
    }
    Ok(Some(Rbac { action, policies }))
}

fn principal(p: &PbPrincipal) -> FieldResult<Principal> {
    use principal::Identifier;
    let set = |ids: &[PbPrincipal], field: &str| {
        ids.iter()
            .enumerate()
            .map(|(i, p)| principal(p).at(format!("[{i}]")).at("ids").at(field))
            .collect::<FieldResult<Vec<_>>>()
    };
    match &p.identifier {
        Some(Identifier::Any(true)) => Ok(Principal::Any),
        // Any authenticated peer: every mesh certificate carries a URI SAN.
        Some(Identifier::Authenticated(a)) => match &a.principal_name {
            None => Ok(Principal::UriSan(ValueMatch::Present)),
            Some(m) => Ok(Principal::UriSan(
                value_match(m).at("principal_name").at("authenticated")?,
            )),
        },
        Some(Identifier::AndIds(s)) => Ok(Principal::AllOf(set(&s.ids, "and_ids")?)),
        Some(Identifier::OrIds(s)) => Ok(Principal::AnyOf(set(&s.ids, "or_ids")?)),
        Some(Identifier::NotId(inner)) => {
            Ok(Principal::Not(Box::new(principal(inner).at("not_id")?)))
        }
        _ => Err(FieldError::new(
            "unsupported principal (any, authenticated, and_ids, or_ids and not_id are)",
        )),
    }
}

/// A fractional percent as 0.0 to 100.0.
fn percent(p: Option<&FractionalPercent>) -> f64 {
    let Some(p) = p else {
        return 0.0;
    };
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    (f64::from(p.numerator) / denominator * 100.0).min(100.0)
}

fn fault(f: &HttpFault) -> FieldResult<FaultInjection> {
    if !f.downstream_nodes.is_empty() || !f.upstream_cluster.is_empty() {
        return Err(FieldError::new(
            "faults restricted to nodes or clusters are not supported",
        ));
    }
    let abort = f
        .abort
        .as_ref()
        .map(|a| match a.error_type {
            Some(fault_abort::ErrorType::HttpStatus(status)) => u16::try_from(status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .map(|status| FaultAbort {
                    status,
                    percent: percent(a.percentage.as_ref()),
                })
                .ok_or_else(|| {
                    FieldError::new(format!("HTTP status {status} is out of range"))
                        .at("http_status")
                        .at("abort")
                }),
            _ => Err(FieldError::new("only HTTP status aborts are supported").at("abort")),
        })
        .transpose()?;
    let delay = f
        .delay
        .as_ref()
        .map(|d| match &d.fault_delay_secifier {
            Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)) => Ok(FaultDelay {
                delay: duration(fixed).at("fixed_delay").at("delay")?,
                percent: percent(d.percentage.as_ref()),
            }),
            _ => Err(FieldError::new("only fixed delays are supported").at("delay")),
        })
        .transpose()?;
    let headers = each(&f.headers, "headers", header_match)?;
    let response_bandwidth = f
        .response_rate_limit
        .as_ref()
        .map(|r| match &r.limit_type {
            Some(fault_rate_limit::LimitType::FixedLimit(fixed)) if fixed.limit_kbps > 0 => {
                Ok(FaultBandwidth {
                    kbps: fixed.limit_kbps,
                    percent: percent(r.percentage.as_ref()),
                })
            }
            Some(fault_rate_limit::LimitType::FixedLimit(_)) => {
                Err(FieldError::new("must be positive")
                    .at("limit_kbps")
                    .at("fixed_limit"))
            }
            _ => Err(FieldError::new(
                "only fixed limits are supported (not header-driven ones)",
            )),
        })
        .transpose()
        .at("response_rate_limit")?;
    Ok(FaultInjection {
        abort,
        delay,
        response_bandwidth,
        headers,
        callers: Vec::new(),
    })
}

/// A fault filter wrapped in an `ExtensionWithMatcher` that skips it unless the caller matches,
/// in the one shape the zone CP generates for MeshFaultInjection `rules[].matches`: a matcher
/// list of one field matcher, `not(or(predicates))` -> `SkipFilter`, each predicate a URI SAN
/// and/or server name value match (alone or under `and`).
fn conditional_fault(e: &ExtensionWithMatcher) -> FieldResult<FaultInjection> {
    use xds_matcher::matcher::matcher_list::predicate::MatchType;
    use xds_matcher::matcher::{on_match, MatcherType};
    let shape = || {
        FieldError::new(
            "only `not(or(uri_san/server_name matches)) -> SkipFilter` matchers are supported",
        )
    };
    #[allow(deprecated)]
    if e.matcher.is_some() {
        return Err(FieldError::new("the legacy `matcher` field is not supported").at("matcher"));
    }
    let inner = e
        .extension_config
        .as_ref()
        .and_then(|c| c.typed_config.as_ref())
        .ok_or_else(|| FieldError::new("missing").at("extension_config"))?;
    if inner.type_url != HttpFault::type_url() {
        return Err(FieldError::new(format!(
            "only fault filters can be wrapped, not {}",
            type_name(&inner.type_url)
        ))
        .at("typed_config")
        .at("extension_config"));
    }
    let config: HttpFault = unpack(inner).at("typed_config").at("extension_config")?;
    let mut fault = fault(&config).at("typed_config").at("extension_config")?;
    let matcher = e
        .xds_matcher
        .as_ref()
        .ok_or_else(|| FieldError::new("missing").at("xds_matcher"))?;
    let at = |err: FieldError| err.at("xds_matcher");
    if matcher.on_no_match.is_some() {
        return Err(at(shape().at("on_no_match")));
    }
    let Some(MatcherType::MatcherList(list)) = &matcher.matcher_type else {
        return Err(at(shape()));
    };
    let [field] = list.matchers.as_slice() else {
        return Err(at(shape().at("matchers")));
    };
    let at = |err: FieldError| {
        err.at("[0]")
            .at("matchers")
            .at("matcher_list")
            .at("xds_matcher")
    };
    let skips = field
        .on_match
        .as_ref()
        .and_then(|o| match &o.on_match {
            Some(on_match::OnMatch::Action(a)) => a.typed_config.as_ref(),
            _ => None,
        })
        .is_some_and(|a| a.type_url == SkipFilter::type_url());
    if !skips {
        return Err(at(shape().at("on_match")));
    }
    let Some(MatchType::NotMatcher(negated)) =
        field.predicate.as_ref().and_then(|p| p.match_type.as_ref())
    else {
        return Err(at(shape().at("predicate")));
    };
    let alternatives = match &negated.match_type {
        Some(MatchType::OrMatcher(list)) => list.predicate.iter().collect::<Vec<_>>(),
        _ => vec![negated.as_ref()],
    };
    for (i, p) in alternatives.into_iter().enumerate() {
        let caller = caller_match(p)
            .at(format!("[{i}]"))
            .at("not_matcher")
            .at("predicate");
        fault.callers.push(caller.map_err(at)?);
    }
    Ok(fault)
}

/// One caller alternative: a single predicate or an `and` of them, on `uri_san` and/or
/// `server_name`.
fn caller_match(p: &xds_matcher::matcher::matcher_list::Predicate) -> FieldResult<CallerMatch> {
    use xds_matcher::matcher::matcher_list::predicate::{single_predicate, MatchType};
    let singles: Vec<_> = match &p.match_type {
        Some(MatchType::SinglePredicate(s)) => vec![s],
        Some(MatchType::AndMatcher(list)) => list
            .predicate
            .iter()
            .map(|q| match &q.match_type {
                Some(MatchType::SinglePredicate(s)) => Ok(s),
                _ => Err(FieldError::new("only single predicates under `and`")),
            })
            .collect::<FieldResult<_>>()?,
        _ => {
            return Err(FieldError::new(
                "only single and `and` predicates are supported",
            ))
        }
    };
    let mut caller = CallerMatch::default();
    for s in singles {
        let input = s
            .input
            .as_ref()
            .and_then(|i| i.typed_config.as_ref())
            .map(|a| a.type_url.as_str())
            .unwrap_or_default();
        let Some(single_predicate::Matcher::ValueMatch(m)) = &s.matcher else {
            return Err(FieldError::new("only value matches are supported").at("matcher"));
        };
        use xds_matcher::string_matcher::MatchPattern;
        let value = match &m.match_pattern {
            Some(MatchPattern::Exact(v)) if !m.ignore_case => ValueMatch::Exact(v.clone()),
            Some(MatchPattern::Prefix(v)) if !m.ignore_case => ValueMatch::Prefix(v.clone()),
            Some(MatchPattern::SafeRegex(r)) if !m.ignore_case => {
                ValueMatch::Regex(r.regex.clone())
            }
            _ => {
                return Err(FieldError::new(
                    "only case-sensitive exact, prefix and regex value matches are supported",
                )
                .at("value_match"))
            }
        };
        if input == UriSanInput::type_url() {
            caller.uri_san = Some(value);
        } else if input == ServerNameInput::type_url() {
            caller.sni = Some(value);
        } else {
            return Err(FieldError::new(format!(
                "matching input {} is not supported (uri_san and server_name are)",
                type_name(input)
            ))
            .at("input"));
        }
    }
    Ok(caller)
}

/// A local rate limit; `None` when it is not enforced on any request.
fn local_rate_limit(l: &PbLocalRateLimit) -> FieldResult<Option<LocalRateLimit>> {
    let share = |f: Option<&envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>| {
        percent(f.and_then(|f| f.default_value.as_ref()))
    };
    let enabled = share(l.filter_enabled.as_ref());
    let enforced = share(l.filter_enforced.as_ref());
    if enabled == 0.0 || enforced == 0.0 {
        return Ok(None);
    }
    if enabled < 100.0 || enforced < 100.0 {
        return Err(FieldError::new(
            "a rate limit enabled or enforced for only a share of requests is not supported",
        ));
    }
    if !l.descriptors.is_empty() {
        return Err(FieldError::new("rate limit descriptors are not supported").at("descriptors"));
    }
    let (max_tokens, tokens_per_fill, fill_interval) = token_bucket(l.token_bucket.as_ref())?;
    let status = match &l.status {
        None => 429,
        Some(s) => u16::try_from(s.code)
            .ok()
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| {
                FieldError::new(format!("HTTP status {} is out of range", s.code)).at("status")
            })?,
    };
    Ok(Some(LocalRateLimit {
        max_tokens,
        tokens_per_fill,
        fill_interval,
        status,
    }))
}

/// A token bucket: (max tokens, tokens per fill, fill interval).
fn token_bucket(
    bucket: Option<&envoy_types::pb::envoy::r#type::v3::TokenBucket>,
) -> FieldResult<(u32, u32, Duration)> {
    let bucket = bucket.ok_or_else(|| FieldError::new("missing").at("token_bucket"))?;
    let fill_interval = bucket
        .fill_interval
        .as_ref()
        .ok_or_else(|| FieldError::new("missing").at("fill_interval"))
        .and_then(|d| duration(d).at("fill_interval"))
        .at("token_bucket")?;
    if fill_interval.is_zero() {
        return Err(FieldError::new("must be positive")
            .at("fill_interval")
            .at("token_bucket"));
    }
    Ok((
        bucket.max_tokens,
        bucket.tokens_per_fill.as_ref().map_or(1, |v| v.value),
        fill_interval,
    ))
}

/// The network local rate limit: a token per new connection, shared by the chain's connections.
fn connection_rate_limit(l: &PbNetworkLocalRateLimit) -> FieldResult<Option<LocalRateLimit>> {
    if let Some(enabled) = &l.runtime_enabled {
        if enabled.default_value.as_ref().is_some_and(|v| !v.value) {
            return Ok(None);
        }
    }
    if !l.share_key.is_empty() {
        // Sharing across chains by key only changes which connections draw from one bucket.
        return Err(FieldError::new("shared token buckets are not supported").at("share_key"));
    }
    let (max_tokens, tokens_per_fill, fill_interval) = token_bucket(l.token_bucket.as_ref())?;
    Ok(Some(LocalRateLimit {
        max_tokens,
        tokens_per_fill,
        fill_interval,
        status: 0,
    }))
}
