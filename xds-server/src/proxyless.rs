//! Configuration for gRPC's proxyless xDS clients (issue [3] point 7): a gRPC channel dialing
//! `xds:///<service>` with a bootstrap pointing at the zone CP subscribes, over state-of-the-world
//! ADS, to the Listener named `<service>`, the RouteConfiguration it names (RDS), the Cluster the
//! route picks (CDS) and that cluster's ClusterLoadAssignment (EDS). [`api_listener`] builds the
//! Listener; [`check_serves`] checks a snapshot against the contract below, so a generator can be
//! tested against gRPC's rules without a gRPC client.
//!
//! # The contract a generator must keep (gRPC's xDS validation, gRFC A27, A28, A39 and the C-core
//! parsers `xds_{listener,route_config,cluster,endpoint}_parser.cc`)
//!
//! A resource that breaks a rule marked NACK is rejected as a whole; "ignored" items are dropped
//! silently, which usually means no traffic.
//!
//! - **Listener** (LDS, asked for by the exact target name, e.g. `greeter` or `greeter:8080`; the
//!   returned name must match exactly): `api_listener.api_listener` must be an
//!   `HttpConnectionManager` (NACK otherwise). Insert it with
//!   [`Snapshot::insert_named_only`](crate::snapshot::Snapshot::insert_named_only): Envoy sidecars
//!   subscribe to LDS by wildcard and must never receive api listeners.
//! - **HttpConnectionManager**: `rds` with `config_source` ADS (or SELF) and a
//!   `route_config_name`, or an inline `route_config` (NACK if neither, or another config
//!   source); `http_filters` non-empty, names non-empty and unique, each `typed_config` a filter
//!   gRPC knows (unknown and not `is_optional`: NACK); the last filter must be the router
//!   (`envoy.extensions.filters.http.router.v3.Router` in `typed_config`) and only the last;
//!   `xff_num_trusted_hops` 0 and no `original_ip_detection_extensions`.
//! - **RouteConfiguration** (RDS, by name): each virtual host needs non-empty, valid `domains`;
//!   gRPC picks the virtual host whose domains best match the target without its port (`*`
//!   matches anything), and fails the channel if none does. Routes are matched in order by path
//!   (`prefix` empty or starting with `/`, `path`, or `safe_regex`) and headers; routes with
//!   `query_parameters` are ignored; a route's action must be `route` with a non-empty `cluster`
//!   (or `weighted_clusters` of non-zero total weight); a route without one fails the RPCs it
//!   matches. The catch-all route is `match.prefix = ""` last.
//! - **Cluster** (CDS, by name): `type: EDS` with `eds_cluster_config.eds_config` ADS (or SELF)
//!   (`service_name`, when set, is the EDS name asked for instead of the cluster name);
//!   `lb_policy: ROUND_ROBIN` (or RING_HASH, or a `load_balancing_policy` gRPC knows; anything
//!   else NACK); a `transport_socket` must be an `UpstreamTlsContext` with CA certificates.
//! - **ClusterLoadAssignment** (EDS, by name): a locality whose `load_balancing_weight` is unset or
//!   0 is **ignored**; a weighted locality must have `locality` set (NACK); no locality may
//!   appear twice in one priority, no endpoint address twice in the resource, and priorities must
//!   be contiguous from 0 (each NACK); each endpoint needs `endpoint.address.socket_address` with
//!   an IP literal (no host names) and `port_value`; endpoint `load_balancing_weight`, when set,
//!   must be > 0; endpoints whose `health_status` is other than UNKNOWN or HEALTHY (or DRAINING)
//!   are ignored. An assignment with no endpoint is valid: RPCs then fail `UNAVAILABLE`.
//! - **Protocol**: gRPC speaks state-of-the-world ADS only, names every resource it wants (LDS and
//!   CDS included), sends `node` on the first request only, and cannot set stream metadata, hence
//!   the token in `node.metadata` (see [`crate::server::TOKEN_METADATA_FIELD`]). A resource it
//!   asked for that never arrives is treated as absent after 15 s.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, AggregatedConfigSource, ApiVersion, ConfigSource,
};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::{Message, Name};

use crate::snapshot::{Snapshot, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// The router filter's name in the HttpConnectionManager (by Envoy's convention).
const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// An ADS config source, as gRPC requires for RDS and EDS.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    }
}

/// The Listener a gRPC client dialing `xds:///<service>` asks for: named `service`, its
/// `api_listener` an HttpConnectionManager taking the route configuration `route_config_name`
/// over ADS, with the router filter (typed config, as gRPC requires) as its only, last filter.
/// Serve it named-only.
pub fn api_listener(service: &str, route_config_name: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: service.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config_name.to_string(),
        })),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..HttpFilter::default()
        }],
        ..HttpConnectionManager::default()
    };
    Listener {
        name: service.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Listener::default()
    }
}

/// Where a snapshot breaks the contract for a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proxyless target {target:?}: {resource}: {problem}")]
pub struct ContractError {
    pub target: String,
    /// The resource at fault, e.g. `Listener "greeter"`.
    pub resource: String,
    pub problem: String,
}

fn decode<M: Message + Default>(
    snapshot: &Snapshot,
    type_url: &str,
    name: &str,
    kind: &str,
) -> Result<M, (String, String)> {
    let at = format!("{kind} {name:?}");
    let r = snapshot
        .of_type(type_url)
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, r)| r)
        .ok_or_else(|| (at.clone(), "not in the snapshot".to_string()))?;
    M::decode(r.resource.value.as_slice()).map_err(|e| (at, format!("does not decode: {e}")))
}

fn unpack<M: Message + Name + Default>(any: &Any, at: &str) -> Result<M, (String, String)> {
    if any.type_url != M::type_url() {
        return Err((
            at.to_string(),
            format!("type {:?}, expected {:?}", any.type_url, M::type_url()),
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| (at.to_string(), format!("does not decode: {e}")))
}

fn is_ads(source: Option<&ConfigSource>) -> bool {
    matches!(
        source.and_then(|s| s.config_source_specifier.as_ref()),
        Some(config_source::ConfigSourceSpecifier::Ads(_))
            | Some(config_source::ConfigSourceSpecifier::Self_(_))
    )
}

/// gRPC's domain matching, simplified to what a generator emits: exact, `*`, `*suffix`, `prefix*`.
fn domain_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return host.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return host.starts_with(prefix);
    }
    pattern == host
}

/// Checks that `snapshot` serves a gRPC client dialing `xds:///<target>` by the rules above: the
/// named-only Listener, its RouteConfiguration, the cluster of the route matching every path, and
/// that cluster's assignment (which may be empty). Stops at the first violation.
pub fn check_serves(snapshot: &Snapshot, target: &str) -> Result<(), ContractError> {
    check(snapshot, target).map_err(|(resource, problem)| ContractError {
        target: target.to_string(),
        resource,
        problem,
    })
}

fn check(snapshot: &Snapshot, target: &str) -> Result<(), (String, String)> {
    let at = format!("Listener {target:?}");
    let err = |problem: &str| Err((at.clone(), problem.to_string()));
    let named_only = snapshot
        .of_type(LISTENER_TYPE)
        .any(|(n, r)| n == target && r.named_only);
    let listener: Listener = decode(snapshot, LISTENER_TYPE, target, "Listener")?;
    if !named_only {
        return err("must be inserted named-only (sidecars subscribe to LDS by wildcard)");
    }
    let Some(hcm) = listener.api_listener.and_then(|a| a.api_listener) else {
        return err("has no api_listener");
    };
    let hcm: HttpConnectionManager = unpack(&hcm, &format!("{at} api_listener"))?;
    let filters = &hcm.http_filters;
    let mut names = BTreeSet::new();
    for (i, f) in filters.iter().enumerate() {
        if f.name.is_empty() || !names.insert(f.name.as_str()) {
            return err(&format!("http_filters[{i}] has an empty or duplicate name"));
        }
        let router = matches!(&f.config_type,
            Some(http_filter::ConfigType::TypedConfig(any)) if any.type_url == Router::type_url());
        if router != (i + 1 == filters.len()) {
            return err("the router filter (typed config) must be the last http filter, only");
        }
    }
    if filters.is_empty() {
        return err("has no http filters (the router must be last)");
    }
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        return err("must take its routes over RDS");
    };
    if !is_ads(rds.config_source.as_ref()) {
        return err("rds.config_source must be ADS");
    }
    let routes: RouteConfiguration = decode(
        snapshot,
        ROUTE_TYPE,
        &rds.route_config_name,
        "RouteConfiguration",
    )?;
    let at = format!("RouteConfiguration {:?}", rds.route_config_name);
    let err = |problem: &str| Err((at.clone(), problem.to_string()));
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    let Some(vhost) = routes
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| domain_matches(d, host)))
    else {
        return err(&format!("no virtual host's domains match {host:?}"));
    };
    // The route every RPC can take: the first one matching any path.
    let Some(catch_all) = vhost.routes.iter().find(|r| {
        let m = r.r#match.as_ref();
        m.is_some_and(|m| {
            m.query_parameters.is_empty()
                && m.headers.is_empty()
                && matches!(&m.path_specifier, Some(route_match::PathSpecifier::Prefix(p)) if p.is_empty() || p == "/")
        })
    }) else {
        return err("no route with prefix \"\" (the catch-all route)");
    };
    let Some(route::Action::Route(action)) = &catch_all.action else {
        return err("the catch-all route has no route action");
    };
    let Some(route_action::ClusterSpecifier::Cluster(cluster_name)) = &action.cluster_specifier
    else {
        return err("the catch-all route must name one cluster");
    };
    let cluster: Cluster = decode(snapshot, CLUSTER_TYPE, cluster_name, "Cluster")?;
    let at = format!("Cluster {cluster_name:?}");
    let err = |problem: &str| Err((at.clone(), problem.to_string()));
    if cluster.cluster_discovery_type
        != Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        ))
    {
        return err("must be of type EDS");
    }
    let Some(eds) = &cluster.eds_cluster_config else {
        return err("has no eds_cluster_config");
    };
    if !is_ads(eds.eds_config.as_ref()) {
        return err("eds_config must be ADS");
    }
    if cluster.lb_policy != cluster::LbPolicy::RoundRobin as i32
        || cluster.load_balancing_policy.is_some()
    {
        return err("lb_policy must be ROUND_ROBIN");
    }
    if cluster.transport_socket.is_some() {
        return err("has a transport_socket (gRPC needs an UpstreamTlsContext with CA certs; not generated yet)");
    }
    let eds_name = if eds.service_name.is_empty() {
        cluster_name
    } else {
        &eds.service_name
    };
    let cla: ClusterLoadAssignment =
        decode(snapshot, ENDPOINT_TYPE, eds_name, "ClusterLoadAssignment")?;
    check_assignment(&cla)
        .map_err(|problem| (format!("ClusterLoadAssignment {eds_name:?}"), problem))
}

/// gRPC's EDS rules (see the module docs).
fn check_assignment(cla: &ClusterLoadAssignment) -> Result<(), String> {
    let mut priorities = BTreeSet::new();
    let mut localities = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for (i, group) in cla.endpoints.iter().enumerate() {
        if group.load_balancing_weight.as_ref().map_or(0, |w| w.value) == 0 {
            if group.lb_endpoints.is_empty() {
                continue; // ignored by gRPC, and nothing is lost
            }
            return Err(format!(
                "endpoints[{i}] has no load_balancing_weight: gRPC ignores the locality"
            ));
        }
        let Some(locality) = &group.locality else {
            return Err(format!("endpoints[{i}] has no locality"));
        };
        let key = (
            group.priority,
            locality.region.clone(),
            locality.zone.clone(),
            locality.sub_zone.clone(),
        );
        if !localities.insert(key) {
            return Err(format!(
                "endpoints[{i}]: its locality appears twice in priority {}",
                group.priority
            ));
        }
        priorities.insert(group.priority);
        for (j, e) in group.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}].lb_endpoints[{j}]");
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                return Err(format!("{at} has no endpoint"));
            };
            let Some(address::Address::SocketAddress(socket)) =
                endpoint.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(format!("{at} has no socket address"));
            };
            if socket.address.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("{at}: {:?} is not an IP address", socket.address));
            }
            let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
                return Err(format!("{at} has no port_value"));
            };
            if e.load_balancing_weight
                .as_ref()
                .is_some_and(|w| w.value == 0)
            {
                return Err(format!("{at}: load_balancing_weight must be > 0"));
            }
            if !addresses.insert((socket.address.clone(), port)) {
                return Err(format!("{at}: {}:{port} appears twice", socket.address));
            }
        }
    }
    if let Some(gap) = (0..priorities.len() as u32).find(|p| !priorities.contains(p)) {
        return Err(format!(
            "priority {gap} is empty (priorities must be contiguous from 0)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_listener_follows_the_contract() {
        let listener = api_listener("greeter", "outbound:greeter");
        assert_eq!(listener.name, "greeter");
        let hcm: HttpConnectionManager = unpack(
            listener
                .api_listener
                .unwrap()
                .api_listener
                .as_ref()
                .unwrap(),
            "l",
        )
        .unwrap();
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
            panic!("not RDS: {hcm:?}")
        };
        assert_eq!(rds.route_config_name, "outbound:greeter");
        assert!(is_ads(rds.config_source.as_ref()));
        let last = hcm.http_filters.last().unwrap();
        assert!(matches!(&last.config_type,
            Some(http_filter::ConfigType::TypedConfig(any)) if any.type_url == "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"));
    }

    use envoy_types::pb::envoy::config::core::v3::{Address, Locality, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteMatch, VirtualHost};
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn endpoint(port: u32) -> LbEndpoint {
        LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..SocketAddress::default()
                    })),
                }),
                ..Endpoint::default()
            })),
            ..LbEndpoint::default()
        }
    }

    fn assignment() -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: "greeter".into(),
            endpoints: vec![LocalityLbEndpoints {
                locality: Some(Locality::default()),
                load_balancing_weight: Some(UInt32Value { value: 2 }),
                lb_endpoints: vec![endpoint(1), endpoint(2)],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }
    }

    /// What gRPC needs for `xds:///greeter`, built by hand.
    fn parts() -> (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment) {
        let routes = RouteConfiguration {
            name: "outbound:greeter".into(),
            virtual_hosts: vec![VirtualHost {
                name: "greeter".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                        ..RouteMatch::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            "greeter".into(),
                        )),
                        ..RouteAction::default()
                    })),
                    ..Route::default()
                }],
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        };
        let cluster = Cluster {
            name: "greeter".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            ..Cluster::default()
        };
        (
            api_listener("greeter", "outbound:greeter"),
            routes,
            cluster,
            assignment(),
        )
    }

    fn snapshot(
        (listener, routes, cluster, cla): (
            Listener,
            RouteConfiguration,
            Cluster,
            ClusterLoadAssignment,
        ),
    ) -> Snapshot {
        let mut s = Snapshot::default();
        s.insert_named_only(LISTENER_TYPE, &listener.name, &listener);
        s.insert(ROUTE_TYPE, &routes.name, &routes);
        s.insert(CLUSTER_TYPE, &cluster.name, &cluster);
        s.insert(ENDPOINT_TYPE, &cla.cluster_name, &cla);
        s.seal()
    }

    fn problem(parts: (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment)) -> String {
        let e = check_serves(&snapshot(parts), "greeter").expect_err("a violation");
        format!("{}: {}", e.resource, e.problem)
    }

    #[test]
    fn a_conforming_snapshot_passes() {
        check_serves(&snapshot(parts()), "greeter").unwrap();
        check_serves(&snapshot(parts()), "greeter:8080").expect_err("no such listener");
    }

    #[test]
    fn violations_name_the_resource() {
        let mut p = parts();
        p.3.endpoints[0].load_balancing_weight = None;
        assert!(problem(p).contains("no load_balancing_weight"));

        let mut p = parts();
        p.3.endpoints[0].locality = None;
        assert!(problem(p).contains("has no locality"));

        let mut p = parts();
        p.3.endpoints[0].priority = 1;
        assert!(problem(p).contains("priority 0 is empty"));

        let mut p = parts();
        p.3.endpoints[0].lb_endpoints.push(endpoint(1));
        assert!(problem(p).contains("appears twice"));

        let mut p = parts();
        p.2.lb_policy = cluster::LbPolicy::Random as i32;
        assert!(problem(p).starts_with("Cluster \"greeter\": lb_policy"));

        let mut p = parts();
        p.2.eds_cluster_config = None;
        assert!(problem(p).contains("eds_cluster_config"));

        let mut p = parts();
        p.1.virtual_hosts[0].domains = vec!["other".into()];
        assert!(problem(p).contains("no virtual host"));

        let mut p = parts();
        p.1.name = "elsewhere".into();
        assert!(problem(p).contains("RouteConfiguration \"outbound:greeter\": not in the snapshot"));

        // A router that is not last.
        let (mut listener, routes, cluster, cla) = parts();
        let mut hcm: HttpConnectionManager = unpack(
            listener
                .api_listener
                .as_ref()
                .unwrap()
                .api_listener
                .as_ref()
                .unwrap(),
            "l",
        )
        .unwrap();
        hcm.http_filters.push(HttpFilter {
            name: "envoy.filters.http.fault".into(),
            ..HttpFilter::default()
        });
        listener.api_listener = Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        });
        assert!(problem((listener, routes, cluster, cla)).contains("router filter"));

        // Served to wildcard subscribers too.
        let (listener, routes, cluster, cla) = parts();
        let mut s = Snapshot::default();
        s.insert(LISTENER_TYPE, &listener.name, &listener);
        s.insert(ROUTE_TYPE, &routes.name, &routes);
        s.insert(CLUSTER_TYPE, &cluster.name, &cluster);
        s.insert(ENDPOINT_TYPE, &cla.cluster_name, &cla);
        let e = check_serves(&s.seal(), "greeter").unwrap_err();
        assert!(e.problem.contains("named-only"), "{e}");
    }

    #[test]
    fn an_empty_assignment_is_valid() {
        let mut p = parts();
        p.3.endpoints[0].lb_endpoints.clear();
        p.3.endpoints[0].load_balancing_weight = None;
        check_serves(&snapshot(p), "greeter").unwrap();
    }

    #[test]
    fn domains() {
        assert!(domain_matches("*", "greeter"));
        assert!(domain_matches("greeter", "GREETER"));
        assert!(domain_matches("*.svc", "greeter.svc"));
        assert!(domain_matches("greeter.*", "greeter.svc"));
        assert!(!domain_matches("other", "greeter"));
    }
}
