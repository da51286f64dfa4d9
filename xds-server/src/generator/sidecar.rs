//! A service's sidecar. Its snapshot has two parts:
//!
//! - its own resources: one inbound listener per inbound (mTLS with the mesh CA when the mesh has
//!   it, RBAC from MeshTrafficPermission against the peer's SPIFFE identity, then the service's
//!   protocol: an HTTP connection manager with the inbound policies' filters, or a TCP proxy, to
//!   `localhost:<servicePort>`), one outbound listener per `networking.outbound` entry (RDS
//!   `outbound:<service>` for HTTP, or a TCP proxy to the MeshTCPRoute/TrafficRoute split), and
//!   its certificate and the mesh CA over SDS;
//! - the outbound bundle, shared: for every service the proxy reaches ([`Reachable`]: its
//!   outbounds, or with transparent proxying every service or its reachable list), an EDS cluster
//!   configured by the outbound policies (timeouts, circuit breaker, health checks, load
//!   balancer), with mTLS to the service's identity and one transport socket per remote zone for
//!   its SNI; its ClusterLoadAssignment (`super::endpoints`, priorities from
//!   MeshLoadBalancingStrategy); its RouteConfiguration `outbound:<service>` (MeshHTTPRoute, else
//!   TrafficRoute, else one default route; timeouts and retries from MeshTimeout/MeshRetry); the
//!   named-only api listener gRPC's proxyless clients ask for; then clusters (and endpoints) for
//!   what those routes send to (subsets, other services), and the ExternalServices among all
//!   these. The bundle depends only on the mesh, on which policies select the proxy and on what it
//!   reaches, so proxies with the same [`policy_fingerprint`] and [`Reachable`] share one
//!   (`MeshContext::bundles`).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use mesh_api::core::dataplane::DataplaneSpec;
use mesh_api::matching::MatchedPolicies;
use mesh_api::{Resource, ResourceType, Spec, PROTOCOL_TAG, SERVICE_TAG};

use super::endpoints::{load_assignment, CrossZone};
use super::envoy::{
    ads, any, ca_secret_name, downstream_mtls, eds_cluster, identity_secret_name, network_filter,
    single_endpoint, socket, tcp_proxy_filter_with, upstream_mtls,
};
use super::gateways::{external_cluster, external_parts, sni_for_external};
use crate::context::{BundleKey, MeshContext};
use crate::policy::{
    access_logs, configure_cluster, configure_inbound_cluster, http_connection_manager_settings,
    inbound_http_filters, inbound_rbac, inbound_route_action_settings, inbound_tcp_rate_limit,
    route_action_settings, tcp_proxy_settings, AccessLogContext, Direction, OutboundPolicies,
    Protocol, ProxyPolicies,
};
use crate::reachable::{outbound_service, Reachable};
use crate::routes::{
    http_route_configuration, outbound_mode, tcp_cluster_specifier, tcp_route_targets,
    ClusterTarget, OutboundMode,
};
use crate::snapshot::{
    Snapshot, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE,
};
use crate::sni::SniTarget;

/// Whether a `kuma.io/protocol` value is served by an HTTP connection manager.
pub fn is_http(protocol: &str) -> bool {
    Protocol::from_tag(Some(protocol)).is_http()
}

/// The RDS name of the outbound routes to `service`.
pub fn outbound_route_name(service: &str) -> String {
    format!("outbound:{service}")
}

/// A proxy's certificate for one mesh, and that mesh's CA (both PEM).
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// When the certificate must be re-issued.
    pub renew_at: std::time::SystemTime,
}

/// The sidecar snapshot of `dataplane` (a Dataplane of `ctx`'s mesh); `identity` is its
/// certificate when the mesh has mTLS.
pub fn sidecar_snapshot(
    ctx: &MeshContext,
    dataplane: &Resource,
    identity: Option<&ProxyIdentity>,
) -> Snapshot {
    let Spec::Dataplane(spec) = &dataplane.spec else {
        return Snapshot::default().seal();
    };
    let policies = ProxyPolicies::compute(dataplane, &ctx.policies);
    for error in policies.errors() {
        tracing::warn!(mesh = %ctx.name, dataplane = %dataplane.meta.name, %error, "policy skipped");
    }
    let mut snapshot = Snapshot::default();
    let mut log_clusters = BTreeMap::new();
    inbound(ctx, spec, &policies, &mut snapshot, &mut log_clusters);
    outbound_listeners(
        ctx,
        dataplane,
        spec,
        &policies,
        &mut snapshot,
        &mut log_clusters,
    );
    for (name, cluster) in log_clusters {
        snapshot.insert(CLUSTER_TYPE, &name, &cluster);
    }
    let (reachable, warnings) = Reachable::of(spec);
    for warning in warnings {
        tracing::warn!(mesh = %ctx.name, dataplane = %dataplane.meta.name, "{warning}");
    }
    let bundle = outbound_bundle(ctx, dataplane, &policies, reachable);
    snapshot.share(bundle);
    if let Some(identity) = identity.filter(|_| ctx.mtls_enabled()) {
        insert_identity(&mut snapshot, &ctx.name, identity);
        snapshot.refresh_at = Some(identity.renew_at);
    }
    snapshot.seal()
}

/// The SDS secrets of one mesh: the proxy's certificate and the mesh CA.
pub fn insert_identity(snapshot: &mut Snapshot, mesh: &str, identity: &ProxyIdentity) {
    let inline = |pem: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(pem.to_string())),
        ..DataSource::default()
    };
    let cert = Secret {
        name: identity_secret_name(mesh),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&identity.cert_chain_pem)),
            private_key: Some(inline(&identity.key_pem)),
            ..TlsCertificate::default()
        })),
    };
    snapshot.insert(SECRET_TYPE, &cert.name, &cert);
    let ca = Secret {
        name: ca_secret_name(mesh),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(&identity.ca_pem)),
                ..CertificateValidationContext::default()
            },
        )),
    };
    snapshot.insert(SECRET_TYPE, &ca.name, &ca);
}

fn http_connection_manager(
    mut hcm: HttpConnectionManager,
    stat_prefix: &str,
    route: http_connection_manager::RouteSpecifier,
    mut filters: Vec<HttpFilter>,
) -> HttpConnectionManager {
    filters.push(router_filter());
    hcm.stat_prefix = stat_prefix.to_string();
    hcm.route_specifier = Some(route);
    hcm.http_filters = filters;
    hcm
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

fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    network_filter("envoy.filters.network.http_connection_manager", hcm)
}

/// A route configuration sending everything to `cluster` with `template`'s settings.
fn route_to_cluster(name: &str, cluster: &str, template: &RouteAction) -> RouteConfiguration {
    let mut action = template.clone();
    action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(cluster.to_string()));
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
                action: Some(route::Action::Route(action)),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

/// Access loggers for one listener, registering the clusters they send to.
fn listener_logs(
    conf: Option<&mesh_api::policies::mesh_access_log::Conf>,
    log_ctx: &AccessLogContext,
    log_clusters: &mut BTreeMap<String, Cluster>,
) -> Vec<AccessLog> {
    let Some(conf) = conf else {
        return Vec::new();
    };
    match access_logs(conf, log_ctx) {
        Ok(logs) => {
            for cluster in logs.clusters {
                let cluster = cluster.to_cluster();
                log_clusters.insert(cluster.name.clone(), cluster);
            }
            logs.logs
        }
        Err(error) => {
            tracing::warn!(mesh = %log_ctx.mesh, %error, "access log skipped");
            Vec::new()
        }
    }
}

fn dataplane_address(spec: &DataplaneSpec) -> &str {
    spec.networking
        .as_ref()
        .map(|n| n.address.as_str())
        .unwrap_or_default()
}

fn inbound(
    ctx: &MeshContext,
    spec: &DataplaneSpec,
    policies: &ProxyPolicies,
    snapshot: &mut Snapshot,
    log_clusters: &mut BTreeMap<String, Cluster>,
) {
    let address = dataplane_address(spec);
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
        let protocol = Protocol::from_tag(inbound.tags.get(PROTOCOL_TAG).map(String::as_str));
        let service = inbound.tags.get(SERVICE_TAG).cloned().unwrap_or_default();
        let p = policies.inbound_at(inbound.port);
        let rbac = inbound_rbac(&p, &ctx.name, mtls);
        let log_ctx = AccessLogContext {
            mesh: ctx.name.clone(),
            zone: ctx.local_zone.clone().unwrap_or_default(),
            source_service: "unknown".to_string(),
            source_ip: ip.to_string(),
            destination_service: service.clone(),
            direction: Direction::Inbound,
            protocol,
        };
        let logs = listener_logs(p.access_log.as_ref(), &log_ctx, log_clusters);
        let mut filters = Vec::new();
        if protocol.is_http() {
            let http_filters = match inbound_http_filters(&p, rbac.as_ref()) {
                Ok(filters) => filters,
                Err(error) => {
                    tracing::warn!(mesh = %ctx.name, %error, "inbound HTTP filters skipped");
                    rbac.iter().map(|r| r.http_filter()).collect()
                }
            };
            let template = inbound_route_action_settings(&p);
            let hcm = http_connection_manager(
                http_connection_manager_settings(&p, logs),
                &name,
                http_connection_manager::RouteSpecifier::RouteConfig(route_to_cluster(
                    &name, &local, &template,
                )),
                http_filters,
            );
            filters.push(hcm_filter(&hcm));
        } else {
            if let Some(rbac) = &rbac {
                filters.push(rbac.network_filter(&name));
            }
            filters.extend(inbound_tcp_rate_limit(&p));
            let mut tcp = tcp_proxy_settings(&p, logs);
            tcp.stat_prefix = local.clone();
            tcp.cluster_specifier = Some(tcp_proxy::ClusterSpecifier::Cluster(local.clone()));
            filters.push(tcp_proxy_filter_with(tcp));
        }
        let listener = Listener {
            name: name.clone(),
            address: Some(socket(ip, inbound.port)),
            filter_chains: vec![FilterChain {
                filters,
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
        if let Err(error) = configure_inbound_cluster(&mut cluster, &p, protocol) {
            tracing::warn!(mesh = %ctx.name, %error, "inbound cluster policy skipped");
        }
        snapshot.insert(CLUSTER_TYPE, &local, &cluster);
    }
}

/// The MeshHTTPRoute and MeshTCPRoute matches of the proxy (empty when none apply).
fn route_policies(policies: &ProxyPolicies) -> (MatchedPolicies, MatchedPolicies) {
    let applied = policies.applied();
    (
        applied
            .get(&ResourceType::MeshHTTPRoute)
            .cloned()
            .unwrap_or_default(),
        applied
            .get(&ResourceType::MeshTCPRoute)
            .cloned()
            .unwrap_or_default(),
    )
}

fn traffic_routes(ctx: &MeshContext) -> Vec<Resource> {
    ctx.policies
        .iter()
        .filter(|p| p.resource_type() == ResourceType::TrafficRoute)
        .cloned()
        .collect()
}

fn service_protocol(ctx: &MeshContext, service: &str) -> Protocol {
    Protocol::from_tag(ctx.services.get(service).map(|s| s.protocol.as_str()))
}

fn outbound_listeners(
    ctx: &MeshContext,
    dataplane: &Resource,
    spec: &DataplaneSpec,
    policies: &ProxyPolicies,
    snapshot: &mut Snapshot,
    log_clusters: &mut BTreeMap<String, Cluster>,
) {
    let (http_routes, tcp_routes) = route_policies(policies);
    let trs = traffic_routes(ctx);
    let source_service = spec
        .services()
        .first()
        .map(|s| s.to_string())
        .unwrap_or_default();
    for outbound in spec.outbounds() {
        let Some(service) = outbound_service(outbound) else {
            continue;
        };
        let address = if outbound.address.is_empty() {
            "127.0.0.1"
        } else {
            &outbound.address
        };
        let name = format!("outbound:{address}:{}", outbound.port);
        let protocol = service_protocol(ctx, &service);
        let p = policies.outbound(&service);
        let log_ctx = AccessLogContext {
            mesh: ctx.name.clone(),
            zone: ctx.local_zone.clone().unwrap_or_default(),
            source_service: source_service.clone(),
            source_ip: dataplane_address(spec).to_string(),
            destination_service: service.clone(),
            direction: Direction::Outbound,
            protocol,
        };
        let logs = listener_logs(p.access_log.as_ref(), &log_ctx, log_clusters);
        let filter = match outbound_mode(&service, protocol.is_http(), &http_routes, &tcp_routes) {
            OutboundMode::Http => hcm_filter(&http_connection_manager(
                http_connection_manager_settings(&p, logs),
                &name,
                http_connection_manager::RouteSpecifier::Rds(Rds {
                    config_source: Some(ads()),
                    route_config_name: outbound_route_name(&service),
                }),
                Vec::new(),
            )),
            OutboundMode::Tcp => {
                let routed = tcp_route_targets(&service, &tcp_routes, &trs, dataplane);
                for warning in &routed.warnings {
                    tracing::warn!(mesh = %ctx.name, %service, "{warning}");
                }
                let Some(specifier) = tcp_cluster_specifier(&routed.targets) else {
                    tracing::warn!(mesh = %ctx.name, %service, "no TCP route target: outbound {name} not forwarded");
                    continue;
                };
                let mut tcp = tcp_proxy_settings(&p, logs);
                tcp.stat_prefix = service.clone();
                tcp.cluster_specifier = Some(specifier);
                tcp_proxy_filter_with(tcp)
            }
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

/// A hash of what the outbound bundle of `dataplane` depends on beyond the mesh: which policies
/// select it, which TrafficRoute sources match it, and (only when an outbound access log applies)
/// its own service and address, which access log formats interpolate.
pub fn policy_fingerprint(
    ctx: &MeshContext,
    dataplane: &Resource,
    policies: &ProxyPolicies,
) -> u64 {
    let mut hasher = DefaultHasher::new();
    for (rtype, matched) in policies.applied() {
        rtype.hash(&mut hasher);
        matched.applied.hash(&mut hasher);
    }
    let Spec::Dataplane(spec) = &dataplane.spec else {
        return hasher.finish();
    };
    let tag_sets: Vec<&BTreeMap<String, String>> =
        spec.inbounds().iter().map(|i| &i.tags).collect();
    for route in &ctx.policies {
        if let Spec::TrafficRoute(tr) = &route.spec {
            route.meta.name.hash(&mut hasher);
            for (i, source) in tr.sources.iter().enumerate() {
                if tag_sets.iter().any(|tags| source.matches(tags)) {
                    i.hash(&mut hasher);
                }
            }
        }
    }
    if policies
        .applied()
        .contains_key(&ResourceType::MeshAccessLog)
    {
        spec.services().hash(&mut hasher);
        dataplane_address(spec).hash(&mut hasher);
    }
    hasher.finish()
}

/// The shared outbound resources for `dataplane`'s fingerprint and reachable services, built on
/// first use.
fn outbound_bundle(
    ctx: &MeshContext,
    dataplane: &Resource,
    policies: &ProxyPolicies,
    reachable: Reachable,
) -> Arc<Snapshot> {
    let key = BundleKey {
        policies: policy_fingerprint(ctx, dataplane, policies),
        reachable,
    };
    if let Some(bundle) = ctx
        .bundles
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return bundle.clone();
    }
    let bundle = Arc::new(build_outbound_bundle(
        ctx,
        dataplane,
        policies,
        &key.reachable,
    ));
    ctx.bundles
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
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

/// The SNI naming `service`'s instances carrying `tags` (all of them when empty) in `zone` of
/// `ctx`'s mesh (`None`, logged, when it cannot be built).
pub fn sni_for(
    ctx: &MeshContext,
    service: &str,
    tags: &BTreeMap<String, String>,
    zone: &str,
) -> Option<String> {
    let target = SniTarget::service(&ctx.name, service, zone).with_tags(tags.clone());
    match target.to_sni() {
        Ok(sni) => Some(sni),
        Err(e) => {
            tracing::warn!(mesh = %ctx.name, error = %e, "no cross-zone SNI for {target}");
            None
        }
    }
}

/// The cluster and endpoints of `target` (a service, or a tag subset of one) for a proxy whose
/// outbound policies to that service are `p`.
fn outbound_cluster(
    ctx: &MeshContext,
    target: &ClusterTarget,
    p: &OutboundPolicies,
    cross_zone: &CrossZone,
    bundle: &mut Snapshot,
) {
    let name = target.cluster_name();
    let service = &target.service;
    let protocol = service_protocol(ctx, service);
    let mut cluster = eds_cluster(&name);
    // A subset whose SNI cannot name it in some zone is not sent across zones at all: the plain
    // name would reach every instance there and silently break the split.
    let mut cross_zone = cross_zone.clone();
    if ctx.mtls_enabled() {
        let local_zone = ctx.local_zone.as_deref().unwrap_or("local");
        let local_sni = sni_for(ctx, service, &target.tags, local_zone).unwrap_or_default();
        cluster.transport_socket = Some(upstream_mtls(&ctx.name, service, &local_sni));
        if cross_zone != CrossZone::Disabled {
            let zones: BTreeSet<&str> = ctx
                .services
                .get(service)
                .map(|s| s.remote.iter().map(|r| r.zone.as_str()).collect())
                .unwrap_or_default();
            let mut matches = Vec::new();
            for zone in zones {
                // Tagged for a subset, so the zone's ingress picks only the matching instances.
                let Some(sni) = sni_for(ctx, service, &target.tags, zone) else {
                    matches.clear();
                    cross_zone = CrossZone::Disabled;
                    break;
                };
                let mut fields = std::collections::HashMap::new();
                fields.insert(
                    "zone".to_string(),
                    Value {
                        kind: Some(value::Kind::StringValue(zone.to_string())),
                    },
                );
                matches.push(cluster::TransportSocketMatch {
                    name: zone.to_string(),
                    r#match: Some(Struct { fields }),
                    transport_socket: Some(upstream_mtls(&ctx.name, service, &sni)),
                });
            }
            cluster.transport_socket_matches = matches;
        }
    }
    if let Err(error) = configure_cluster(&mut cluster, p, protocol) {
        tracing::warn!(mesh = %ctx.name, %service, %error, "outbound cluster policy skipped");
    }
    bundle.insert(CLUSTER_TYPE, &name, &cluster);
    let empty = Default::default();
    let info = ctx.services.get(service).unwrap_or(&empty);
    let cla = load_assignment(
        &name,
        info,
        &target.tags,
        ctx.local_zone.as_deref(),
        &p.locality(),
        &cross_zone,
    );
    bundle.insert(ENDPOINT_TYPE, &name, &cla);
}

fn build_outbound_bundle(
    ctx: &MeshContext,
    dataplane: &Resource,
    policies: &ProxyPolicies,
    reachable: &Reachable,
) -> Snapshot {
    let mut bundle = Snapshot::default();
    let cross_zone = cross_zone(ctx);
    let (http_routes, tcp_routes) = route_policies(policies);
    let trs = traffic_routes(ctx);
    // Route targets other than the services themselves (subsets, unknown services).
    let mut extra_targets: BTreeSet<ClusterTarget> = BTreeSet::new();
    for service in ctx.services.keys().filter(|s| reachable.contains(s)) {
        let p = policies.outbound(service);
        let protocol = service_protocol(ctx, service);
        outbound_cluster(
            ctx,
            &ClusterTarget::service(service),
            &p,
            &cross_zone,
            &mut bundle,
        );
        let route_name = outbound_route_name(service);
        let template = route_action_settings(&p, protocol);
        let route_config =
            match outbound_mode(service, protocol.is_http(), &http_routes, &tcp_routes) {
                OutboundMode::Http => {
                    let routed = http_route_configuration(
                        &route_name,
                        service,
                        &http_routes,
                        &trs,
                        dataplane,
                        &template,
                    );
                    for warning in &routed.warnings {
                        tracing::warn!(mesh = %ctx.name, %service, "{warning}");
                    }
                    extra_targets.extend(routed.targets);
                    routed.route_config
                }
                OutboundMode::Tcp => {
                    let routed = tcp_route_targets(service, &tcp_routes, &trs, dataplane);
                    extra_targets.extend(routed.targets.into_iter().map(|(t, _)| t));
                    route_to_cluster(&route_name, service, &template)
                }
            };
        bundle.insert(ROUTE_TYPE, &route_name, &route_config);
        // What a gRPC client dialing `xds:///<service>` asks for by name; sidecars subscribe
        // to LDS by wildcard and never get it (crate::proxyless has gRPC's rules).
        bundle.insert_named_only(
            LISTENER_TYPE,
            service,
            &crate::proxyless::api_listener(service, &route_name),
        );
    }
    // Reached through a route even when not reachable by name.
    let routed: BTreeSet<String> = extra_targets.iter().map(|t| t.service.clone()).collect();
    for target in extra_targets {
        let name = target.cluster_name();
        if bundle.of_type(CLUSTER_TYPE).any(|(n, _)| *n == name) {
            continue;
        }
        // An ExternalService gets its own cluster below, and no EDS.
        let external = || {
            ctx.external_services
                .iter()
                .filter_map(external_parts)
                .any(|(service, _, _)| service == target.service)
        };
        if target.tags.is_empty() && external() {
            continue;
        }
        let p = policies.outbound(&target.service);
        outbound_cluster(ctx, &target, &p, &cross_zone, &mut bundle);
    }
    external_services(
        ctx,
        &cross_zone,
        |service| reachable.contains(service) || routed.contains(service),
        &mut bundle,
    );
    bundle
}

/// The identity the zone egress presents to sidecars of a mesh.
pub const EGRESS_SERVICE: &str = "zone-egress";

/// Clusters for the mesh's ExternalServices that are `wanted`: through the zone egress (mTLS to
/// it, the SNI naming the external service) when the mesh routes through it, else straight to
/// the service.
fn external_services(
    ctx: &MeshContext,
    cross_zone: &CrossZone,
    wanted: impl Fn(&str) -> bool,
    bundle: &mut Snapshot,
) {
    for external in &ctx.external_services {
        let Some((service, port, spec)) = external_parts(external) else {
            continue;
        };
        if !wanted(&service) {
            continue;
        }
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
        let snapshot = sidecar_snapshot(&ctx, web, None);
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
        // web reaches its one outbound's service, api (not itself).
        let clusters: Vec<&String> = snapshot.of_type(CLUSTER_TYPE).map(|(n, _)| n).collect();
        assert_eq!(clusters, ["api", "localhost:8080"]);
        let routes: Vec<&String> = snapshot.of_type(ROUTE_TYPE).map(|(n, _)| n).collect();
        assert_eq!(routes, ["outbound:api"]);
        // A second instance of web shares web-1's bundle (same policies, same outbounds); api-1,
        // which reaches nothing, gets its own (empty) one.
        let web_2 = parse(&WEB.split("---").next().unwrap().replace("web-1", "web-2"));
        let _ = sidecar_snapshot(&ctx, &web_2[0], None);
        assert_eq!(ctx.bundles.lock().unwrap().len(), 1);
        let api = sidecar_snapshot(&ctx, ctx.dataplane("api-1").unwrap(), None);
        assert_eq!(ctx.bundles.lock().unwrap().len(), 2);
        let clusters: Vec<&String> = api.of_type(CLUSTER_TYPE).map(|(n, _)| n).collect();
        assert_eq!(clusters, ["localhost:9090"]);
    }

    /// Four services, one ExternalService, and routes from web: api's MeshHTTPRoute splits to
    /// api's v1 subset, to db and to the ExternalService; the TCP service cache's TrafficRoute
    /// splits to queue.
    const MESH: &str = r#"type: Dataplane
name: api-1
mesh: default
networking:
  address: 10.0.0.2
  inbound:
    - {port: 15000, servicePort: 9090, tags: {kuma.io/service: api, kuma.io/protocol: http, version: v1}}
---
type: Dataplane
name: db-1
mesh: default
networking:
  address: 10.0.0.3
  inbound:
    - {port: 15000, servicePort: 5432, tags: {kuma.io/service: db, kuma.io/protocol: http}}
---
type: Dataplane
name: billing-1
mesh: default
networking:
  address: 10.0.0.4
  inbound:
    - {port: 15000, servicePort: 8080, tags: {kuma.io/service: billing, kuma.io/protocol: http}}
---
type: Dataplane
name: cache-1
mesh: default
networking:
  address: 10.0.0.5
  inbound:
    - {port: 15000, servicePort: 6379, tags: {kuma.io/service: cache}}
---
type: Dataplane
name: queue-1
mesh: default
networking:
  address: 10.0.0.6
  inbound:
    - {port: 15000, servicePort: 5672, tags: {kuma.io/service: queue}}
---
type: ExternalService
name: httpbin
mesh: default
tags:
  kuma.io/service: httpbin
  kuma.io/protocol: http
networking:
  address: httpbin.org:80
---
type: MeshHTTPRoute
name: api-split
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  to:
    - targetRef: {kind: MeshService, name: api}
      rules:
        - matches: [{path: {type: PathPrefix, value: /}}]
          default:
            backendRefs:
              - {kind: MeshServiceSubset, name: api, tags: {version: v1}, weight: 80}
              - {kind: MeshService, name: db, weight: 10}
              - {kind: MeshService, name: httpbin, weight: 10}
---
type: TrafficRoute
name: cache-to-queue
mesh: default
sources: [{match: {kuma.io/service: web}}]
destinations: [{match: {kuma.io/service: cache}}]
conf:
  split:
    - {weight: 50, destination: {kuma.io/service: cache}}
    - {weight: 50, destination: {kuma.io/service: queue}}
"#;

    /// The sidecar snapshot of web-1 in [`MESH`], its `networking` after the address and inbound
    /// being `networking`.
    fn web_with(networking: &str) -> (Snapshot, MeshContext) {
        let web = format!(
            "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - {{port: 15000, servicePort: 8080, tags: {{kuma.io/service: web}}}}\n{networking}---\n{MESH}"
        );
        let resources = parse(&web);
        for r in &resources {
            mesh_api::validate_resource(r).unwrap();
        }
        let ctx = MeshContext::from_resources("default", Some("zone-1"), resources, &[], &[]);
        let snapshot = sidecar_snapshot(&ctx, ctx.dataplane("web-1").unwrap(), None);
        (snapshot, ctx)
    }

    fn names_of(snapshot: &Snapshot, type_url: &str) -> Vec<String> {
        snapshot.of_type(type_url).map(|(n, _)| n.clone()).collect()
    }

    const SUBSET_V1: &str = "api_63acdb7e";

    #[test]
    fn explicit_outbounds_get_their_services_and_route_targets_only() {
        let (web, _) = web_with(
            "  outbound:\n    - {port: 10001, tags: {kuma.io/service: api}}\n    - {port: 10002, tags: {kuma.io/service: cache}}\n",
        );
        let subset = crate::routes::ClusterTarget::new(
            "api",
            [("version".to_string(), "v1".to_string())].into(),
        )
        .cluster_name();
        assert_eq!(subset, SUBSET_V1);
        // api and cache by the outbounds; api's v1 subset, db and httpbin by api's route; queue
        // by cache's TrafficRoute. Not billing, nor web itself.
        assert_eq!(
            names_of(&web, CLUSTER_TYPE),
            [
                "api",
                SUBSET_V1,
                "cache",
                "db",
                "httpbin",
                "localhost:8080",
                "queue"
            ]
        );
        let httpbin = web
            .of_type(CLUSTER_TYPE)
            .find(|(n, _)| *n == "httpbin")
            .map(|(_, r)| Cluster::decode(r.resource.value.as_slice()).unwrap())
            .unwrap();
        assert!(
            httpbin.load_assignment.is_some(),
            "the ExternalService's own cluster, not an EDS one"
        );
        for cluster in ["api", SUBSET_V1, "cache", "db", "queue"] {
            assert!(
                names_of(&web, ENDPOINT_TYPE).contains(&cluster.to_string()),
                "{cluster}: {:?}",
                names_of(&web, ENDPOINT_TYPE)
            );
        }
        assert!(!names_of(&web, ENDPOINT_TYPE).contains(&"billing".to_string()));
        assert_eq!(
            names_of(&web, ROUTE_TYPE),
            ["outbound:api", "outbound:cache"]
        );
        // The api listeners gRPC clients may ask for: the reachable services'.
        let named_only: Vec<&String> = web
            .of_type(LISTENER_TYPE)
            .filter(|(_, r)| r.named_only)
            .map(|(n, _)| n)
            .collect();
        assert_eq!(named_only, ["api", "cache"]);
        // (api's route splits, which gRPC does not take; cache routes to one cluster.)
        crate::proxyless::check_serves(&web, "cache").unwrap();
        crate::proxyless::check_serves(&web, "billing").expect_err("billing is not reachable");
    }

    #[test]
    fn transparent_proxying_reaches_every_service_or_its_reachable_list() {
        let tp = "  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n";
        let (all, ctx) = web_with(tp);
        assert_eq!(
            names_of(&all, CLUSTER_TYPE),
            [
                "api",
                SUBSET_V1,
                "billing",
                "cache",
                "db",
                "httpbin",
                "localhost:8080",
                "queue",
                "web"
            ]
        );
        assert_eq!(
            names_of(&all, ROUTE_TYPE),
            [
                "outbound:api",
                "outbound:billing",
                "outbound:cache",
                "outbound:db",
                "outbound:queue",
                "outbound:web"
            ]
        );
        // Another proxy reaching everything with the same policies shares the bundle.
        let other = parse(
            "type: Dataplane\nname: web-2\nmesh: default\nnetworking:\n  address: 10.0.0.9\n  inbound:\n    - {port: 15000, servicePort: 8080, tags: {kuma.io/service: web}}\n  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}\n",
        );
        let web_2 = sidecar_snapshot(&ctx, &other[0], None);
        assert!(Arc::ptr_eq(
            all.shared.as_ref().unwrap(),
            web_2.shared.as_ref().unwrap()
        ));

        let (listed, _) = web_with(&format!("{tp}    reachableServices: [billing]\n"));
        assert_eq!(
            names_of(&listed, CLUSTER_TYPE),
            ["billing", "localhost:8080"]
        );
        assert_eq!(names_of(&listed, ENDPOINT_TYPE), ["billing"]);
        assert_eq!(names_of(&listed, ROUTE_TYPE), ["outbound:billing"]);
        let (backends, _) = web_with(&format!(
            "{tp}    reachableBackends:\n      refs:\n        - {{kind: MeshService, name: api}}\n"
        ));
        assert_eq!(
            names_of(&backends, CLUSTER_TYPE),
            ["api", SUBSET_V1, "db", "httpbin", "localhost:8080"]
        );
    }

    #[test]
    fn an_unreachable_service_changing_leaves_the_snapshot_unchanged() {
        let outbound = "  outbound:\n    - {port: 10001, tags: {kuma.io/service: billing}}\n";
        let (before, _) = web_with(outbound);
        // A second billing instance changes billing's endpoints: web's version changes.
        let billing_2 = "type: Dataplane\nname: billing-2\nmesh: default\nnetworking:\n  address: 10.0.0.14\n  inbound:\n    - {port: 15000, servicePort: 8080, tags: {kuma.io/service: billing, kuma.io/protocol: http}}\n";
        let (after, _) = web_with(&format!("{outbound}---\n{billing_2}"));
        assert_ne!(before.version, after.version);
        // A second queue instance (a service web does not reach) changes nothing for web.
        let queue_2 = "type: Dataplane\nname: queue-2\nmesh: default\nnetworking:\n  address: 10.0.0.16\n  inbound:\n    - {port: 15000, servicePort: 5672, tags: {kuma.io/service: queue}}\n";
        let (unrelated, _) = web_with(&format!("{outbound}---\n{queue_2}"));
        assert_eq!(before.version, unrelated.version);
    }

    #[test]
    fn mtls_mesh_adds_tls_on_both_sides() {
        let mut resources = parse(WEB);
        resources.extend(parse("type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n"));
        let ctx = MeshContext::from_resources("default", Some("zone-1"), resources, &[], &[]);
        let snapshot = sidecar_snapshot(&ctx, ctx.dataplane("web-1").unwrap(), None);
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
