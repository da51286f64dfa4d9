//! A service's sidecar. Its snapshot has two parts:
//!
//! - its own resources: one inbound listener per inbound (mTLS with the mesh CA when the mesh has
//!   it, then the service's protocol: HTTP connection manager or TCP proxy to
//!   `localhost:<servicePort>`), one outbound listener per `networking.outbound` entry, and its
//!   certificate over SDS;
//! - the outbound bundle, shared: for every service of the mesh, an EDS cluster (mTLS to the
//!   service's identity, one transport socket per remote zone for its SNI), its
//!   ClusterLoadAssignment (`super::endpoints`) and its RouteConfiguration `outbound:<service>`.
//!   The bundle depends only on the mesh and on which policies apply to the proxy, so proxies the
//!   same policies apply to share one (`MeshContext::bundles`, keyed by [`policy_fingerprint`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use mesh_api::core::dataplane::DataplaneSpec;
use mesh_api::matching::matched_policies;
use mesh_api::{Resource, ResourceType, Spec, SERVICE_TAG};

use super::endpoints::{load_assignment, CrossZone};
use super::envoy::{
    any, downstream_mtls, eds_cluster, network_filter, single_endpoint, socket, tcp_proxy_filter,
    upstream_mtls,
};
use super::gateways::{external_cluster, external_parts, sni_for_external};
use crate::context::MeshContext;
use crate::snapshot::{Snapshot, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use crate::sni::SniTarget;

/// Whether a `kuma.io/protocol` value is served by an HTTP connection manager.
pub fn is_http(protocol: &str) -> bool {
    matches!(protocol, "http" | "http2" | "grpc")
}

/// The RDS name of the outbound routes to `service`.
pub fn outbound_route_name(service: &str) -> String {
    format!("outbound:{service}")
}

/// The sidecar snapshot of `dataplane` (a Dataplane of `ctx`'s mesh).
pub fn sidecar_snapshot(ctx: &MeshContext, dataplane: &Resource) -> Snapshot {
    let Spec::Dataplane(spec) = &dataplane.spec else {
        return Snapshot::default().seal();
    };
    let mut snapshot = Snapshot::default();
    inbound(ctx, spec, &mut snapshot);
    outbound_listeners(ctx, spec, &mut snapshot);
    let bundle = outbound_bundle(ctx, dataplane);
    snapshot.extend_from(&bundle);
    snapshot.seal()
}

fn http_connection_manager(
    stat_prefix: &str,
    route: http_connection_manager::RouteSpecifier,
) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(route),
        http_filters: vec![router_filter()],
        ..HttpConnectionManager::default()
    }
}

/// The terminal router HTTP filter.
pub fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..HttpFilter::default()
    }
}

fn hcm_filter(hcm: &HttpConnectionManager) -> envoy_types::pb::envoy::config::listener::v3::Filter {
    network_filter("envoy.filters.network.http_connection_manager", hcm)
}

/// A route configuration sending everything to `cluster`.
fn route_to_cluster(name: &str, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: cluster.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..RouteMatch::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.to_string(),
                    )),
                    ..RouteAction::default()
                })),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

fn inbound(ctx: &MeshContext, spec: &DataplaneSpec, snapshot: &mut Snapshot) {
    let address = spec
        .networking
        .as_ref()
        .map(|n| n.address.as_str())
        .unwrap_or_default();
    let mtls = ctx.mtls_enabled();
    for inbound in spec.inbounds() {
        let ip = if inbound.address.is_empty() {
            address
        } else {
            &inbound.address
        };
        let port = inbound.workload_port();
        let local = format!("localhost:{port}");
        let name = format!("inbound:{ip}:{}", inbound.port);
        let protocol = inbound
            .tags
            .get(mesh_api::PROTOCOL_TAG)
            .map(String::as_str)
            .unwrap_or("tcp");
        let filter = if is_http(protocol) {
            hcm_filter(&http_connection_manager(
                &name,
                http_connection_manager::RouteSpecifier::RouteConfig(route_to_cluster(
                    &name, &local,
                )),
            ))
        } else {
            tcp_proxy_filter(&local, &local)
        };
        let listener = Listener {
            name: name.clone(),
            address: Some(socket(ip, inbound.port)),
            filter_chains: vec![FilterChain {
                filters: vec![filter],
                transport_socket: mtls.then(|| downstream_mtls(&ctx.name)),
                ..FilterChain::default()
            }],
            ..Listener::default()
        };
        snapshot.insert(LISTENER_TYPE, &listener.name, &listener);
        let mut cluster = Cluster {
            name: local.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(single_endpoint(&local, "127.0.0.1", port)),
            ..Cluster::default()
        };
        if protocol == "http2" || protocol == "grpc" {
            enable_http2(&mut cluster);
        }
        snapshot.insert(CLUSTER_TYPE, &local, &cluster);
    }
}

/// One endpoint, `127.0.0.1:port`.
/// Upstream HTTP/2 (gRPC, http2 services).
fn enable_http2(cluster: &mut Cluster) {
    use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options, HttpProtocolOptions,
    };
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..HttpProtocolOptions::default()
    };
    cluster.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        any(&options),
    );
}

fn outbound_listeners(ctx: &MeshContext, spec: &DataplaneSpec, snapshot: &mut Snapshot) {
    for outbound in spec.outbounds() {
        let service = outbound
            .tags
            .get(SERVICE_TAG)
            .cloned()
            .or_else(|| outbound.backend_ref.as_ref().map(|b| b.name.clone()));
        let Some(service) = service else { continue };
        let address = if outbound.address.is_empty() {
            "127.0.0.1"
        } else {
            &outbound.address
        };
        let name = format!("outbound:{address}:{}", outbound.port);
        let protocol = ctx
            .services
            .get(&service)
            .map(|s| s.protocol.as_str())
            .unwrap_or("tcp");
        let filter = if is_http(protocol) {
            hcm_filter(&http_connection_manager(
                &name,
                http_connection_manager::RouteSpecifier::Rds(Rds {
                    config_source: Some(super::envoy::ads()),
                    route_config_name: outbound_route_name(&service),
                }),
            ))
        } else {
            tcp_proxy_filter(&service, &service)
        };
        let listener = Listener {
            name: name.clone(),
            address: Some(socket(address, outbound.port)),
            filter_chains: vec![FilterChain {
                filters: vec![filter],
                ..FilterChain::default()
            }],
            ..Listener::default()
        };
        snapshot.insert(LISTENER_TYPE, &name, &listener);
    }
}

/// A hash of which policies apply to `dataplane`: proxies with equal fingerprints get the same
/// outbound configuration.
pub fn policy_fingerprint(ctx: &MeshContext, dataplane: &Resource) -> u64 {
    let mut by_type: BTreeMap<ResourceType, Vec<Resource>> = BTreeMap::new();
    for policy in &ctx.policies {
        if policy.resource_type().is_policy() {
            by_type
                .entry(policy.resource_type())
                .or_default()
                .push(policy.clone());
        }
    }
    let mut hasher = DefaultHasher::new();
    for (rtype, policies) in &by_type {
        rtype.hash(&mut hasher);
        matched_policies(dataplane, policies)
            .applied
            .hash(&mut hasher);
    }
    hasher.finish()
}

/// The shared outbound resources for `dataplane`'s policy fingerprint, built on first use.
fn outbound_bundle(ctx: &MeshContext, dataplane: &Resource) -> Arc<Snapshot> {
    let fingerprint = policy_fingerprint(ctx, dataplane);
    if let Some(bundle) = ctx
        .bundles
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&fingerprint)
    {
        return bundle.clone();
    }
    let bundle = Arc::new(build_outbound_bundle(ctx));
    ctx.bundles
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(fingerprint)
        .or_insert(bundle)
        .clone()
}

fn cross_zone(ctx: &MeshContext) -> CrossZone {
    if !ctx.mtls_enabled() {
        return CrossZone::Disabled;
    }
    if ctx.routes_through_egress() {
        let local = ctx.egresses.iter().find_map(|e| match &e.spec {
            Spec::ZoneEgress(spec) => spec
                .networking
                .as_ref()
                .filter(|n| !n.address.is_empty() && n.port != 0)
                .map(|n| (n.address.clone(), n.port)),
            _ => None,
        });
        return match local {
            Some((address, port)) => CrossZone::ViaEgress { address, port },
            // Routing through an egress that does not exist: no cross-zone traffic, as Kuma.
            None => CrossZone::Disabled,
        };
    }
    CrossZone::Direct
}

/// The SNI naming `service` in `zone` of `ctx`'s mesh (`None` when it cannot be built).
pub fn sni_for(ctx: &MeshContext, service: &str, zone: &str) -> Option<String> {
    let target = SniTarget {
        mesh: ctx.name.clone(),
        service: service.to_string(),
        port: 0,
        zone: zone.to_string(),
    };
    match target.to_sni() {
        Ok(sni) => Some(sni),
        Err(e) => {
            tracing::warn!(error = %e, "no cross-zone SNI for {target}");
            None
        }
    }
}

fn build_outbound_bundle(ctx: &MeshContext) -> Snapshot {
    let mut bundle = Snapshot::default();
    let cross_zone = cross_zone(ctx);
    let local_zone = ctx.local_zone.as_deref().unwrap_or("local");
    for (service, info) in &ctx.services {
        let mut cluster = eds_cluster(service);
        if ctx.mtls_enabled() {
            let local_sni = sni_for(ctx, service, local_zone).unwrap_or_default();
            cluster.transport_socket = Some(upstream_mtls(&ctx.name, service, &local_sni));
            if cross_zone != CrossZone::Disabled {
                let mut zones: Vec<&str> = info.remote.iter().map(|r| r.zone.as_str()).collect();
                zones.dedup();
                for zone in zones {
                    let Some(sni) = sni_for(ctx, service, zone) else {
                        continue;
                    };
                    let mut fields = std::collections::HashMap::new();
                    fields.insert(
                        "zone".to_string(),
                        Value {
                            kind: Some(value::Kind::StringValue(zone.to_string())),
                        },
                    );
                    cluster
                        .transport_socket_matches
                        .push(cluster::TransportSocketMatch {
                            name: zone.to_string(),
                            r#match: Some(Struct { fields }),
                            transport_socket: Some(upstream_mtls(&ctx.name, service, &sni)),
                        });
                }
            }
        }
        if info.protocol == "http2" || info.protocol == "grpc" {
            enable_http2(&mut cluster);
        }
        bundle.insert(CLUSTER_TYPE, service, &cluster);
        let cla = load_assignment(
            service,
            info,
            &BTreeMap::new(),
            ctx.local_zone.as_deref(),
            None,
            &cross_zone,
        );
        bundle.insert(ENDPOINT_TYPE, service, &cla);
        let route_name = outbound_route_name(service);
        bundle.insert(
            ROUTE_TYPE,
            &route_name,
            &route_to_cluster(&route_name, service),
        );
        // TEMPORARY (proxyless, until the generator owns it): what a gRPC client dialing
        // `xds:///<service>` asks for first; named-only, so wildcard LDS subscribers (sidecars)
        // never get it. The rest of crate::proxyless's contract is met by the cluster, routes
        // and assignment above.
        bundle.insert_named_only(
            LISTENER_TYPE,
            service,
            &crate::proxyless::api_listener(service, &route_name),
        );
    }
    external_services(ctx, &cross_zone, &mut bundle);
    bundle
}

/// The identity the zone egress presents to sidecars of a mesh.
pub const EGRESS_SERVICE: &str = "zone-egress";

/// Clusters for the mesh's ExternalServices: through the zone egress (mTLS to it, the SNI naming
/// the external service) when the mesh routes through it, else straight to the service.
fn external_services(ctx: &MeshContext, cross_zone: &CrossZone, bundle: &mut Snapshot) {
    for external in &ctx.external_services {
        let Some((service, port, spec)) = external_parts(external) else {
            continue;
        };
        let cluster = match cross_zone {
            CrossZone::ViaEgress {
                address,
                port: egress_port,
            } => {
                let Some(sni) = sni_for_external(ctx, &service, port) else {
                    continue;
                };
                let mut cluster = static_cluster(&service, address, *egress_port);
                cluster.transport_socket = Some(upstream_mtls(&ctx.name, EGRESS_SERVICE, &sni));
                cluster
            }
            _ => match external_cluster(ctx, &service, spec) {
                Some(cluster) => cluster,
                None => continue,
            },
        };
        bundle.insert(CLUSTER_TYPE, &service, &cluster);
    }
}

fn static_cluster(name: &str, address: &str, port: u32) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(single_endpoint(name, address, port)),
        ..Cluster::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message as _;

    fn parse(text: &str) -> Vec<Resource> {
        mesh_api::parse_documents(text)
            .into_iter()
            .map(|d| d.unwrap().resource)
            .collect()
    }

    fn sidecar_listeners(
        snapshot: &Snapshot,
    ) -> impl Iterator<Item = (&String, &crate::snapshot::VersionedResource)> {
        snapshot
            .of_type(LISTENER_TYPE)
            .filter(|(_, r)| !r.named_only)
    }

    const WEB: &str = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: web\n  outbound:\n    - port: 10001\n      tags:\n        kuma.io/service: api\n---\ntype: Dataplane\nname: api-1\nmesh: default\nnetworking:\n  address: 10.0.0.2\n  inbound:\n    - port: 15000\n      servicePort: 9090\n      tags:\n        kuma.io/service: api\n        kuma.io/protocol: http\n";

    #[test]
    fn inbound_tcp_proxy_outbound_rds_and_shared_bundle() {
        let ctx = MeshContext::from_resources("default", Some("zone-1"), parse(WEB), &[], &[]);
        let web = ctx.dataplane("web-1").unwrap();
        let snapshot = sidecar_snapshot(&ctx, web);
        // What a sidecar gets (LDS by wildcard: not the named-only proxyless api listeners).
        let listeners: Vec<&String> = sidecar_listeners(&snapshot).map(|(n, _)| n).collect();
        assert_eq!(
            listeners,
            ["inbound:10.0.0.1:15000", "outbound:127.0.0.1:10001"]
        );
        let (_, inbound) = sidecar_listeners(&snapshot).next().unwrap();
        let inbound = Listener::decode(inbound.resource.value.as_slice()).unwrap();
        assert_eq!(
            inbound.filter_chains[0].filters[0].name,
            "envoy.filters.network.tcp_proxy"
        );
        assert!(
            inbound.filter_chains[0].transport_socket.is_none(),
            "no mTLS in this mesh"
        );
        let clusters: Vec<&String> = snapshot.of_type(CLUSTER_TYPE).map(|(n, _)| n).collect();
        assert_eq!(clusters, ["api", "localhost:8080", "web"]);
        let routes: Vec<&String> = snapshot.of_type(ROUTE_TYPE).map(|(n, _)| n).collect();
        assert_eq!(routes, ["outbound:api", "outbound:web"]);
        // Both proxies share one bundle: the same policies apply to them.
        let api = ctx.dataplane("api-1").unwrap();
        let _ = sidecar_snapshot(&ctx, api);
        assert_eq!(ctx.bundles.lock().unwrap().len(), 1);
    }

    #[test]
    fn mtls_mesh_adds_tls_on_both_sides() {
        let mut resources = parse(WEB);
        resources.extend(parse("type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n"));
        let ctx = MeshContext::from_resources("default", Some("zone-1"), resources, &[], &[]);
        let snapshot = sidecar_snapshot(&ctx, ctx.dataplane("web-1").unwrap());
        let (_, inbound) = sidecar_listeners(&snapshot).next().unwrap();
        let inbound = Listener::decode(inbound.resource.value.as_slice()).unwrap();
        assert!(inbound.filter_chains[0].transport_socket.is_some());
        let api = snapshot
            .of_type(CLUSTER_TYPE)
            .find(|(n, _)| *n == "api")
            .map(|(_, r)| Cluster::decode(r.resource.value.as_slice()).unwrap())
            .unwrap();
        assert!(api.transport_socket.is_some());
    }
}
