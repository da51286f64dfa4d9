//! The zone's edge proxies.
//!
//! **Zone ingress**: one listener on the ingress's address, the TLS inspector reading the SNI,
//! and one filter chain per (mesh, service) with local instances, matched by the service's
//! cross-zone SNI (`crate::sni`, zone = this zone) and passed through undecrypted by a TCP proxy
//! to that service's local endpoints: the client's mTLS session ends at the destination sidecar,
//! which checks the client's identity itself.
//!
//! **Zone egress**: the same shape for meshes with `routing.zoneEgress`: a filter chain per
//! (mesh, service, remote zone) passes the TLS through to that zone's ingress; and a filter chain
//! per ExternalService terminates the sidecar's mTLS (the egress holds a certificate of the mesh)
//! and originates the external service's own TLS when it has `networking.tls.enabled`.
//!
//! Both also serve external services to sidecars that reach them directly (no egress):
//! [`external_cluster`] is shared with the sidecar generator.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource as EnvoyDataSource, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, subject_alt_name_matcher, CertificateValidationContext, CommonTlsContext,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use mesh_api::core::external_service::ExternalServiceSpec;
use mesh_api::{Resource, Spec, SERVICE_TAG};

use super::endpoints::{load_assignment, CrossZone};
use super::envoy::{
    any, downstream_mtls, eds_cluster, single_endpoint, socket, tcp_proxy_filter, tls_inspector,
};
use super::sidecar::{insert_identity, sni_for, ProxyIdentity};
use crate::context::{MeshContext, ServiceInfo};
use crate::routes::{subset_targets, ClusterTarget};
use crate::snapshot::{Snapshot, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};

/// The pseudo-zone of external services in SNIs (`<service>.<port>.external.<mesh>.mesh`).
pub const EXTERNAL_ZONE: &str = "external";

fn passthrough_chain(sni: String, cluster: &str) -> FilterChain {
    FilterChain {
        name: sni.clone(),
        filter_chain_match: Some(FilterChainMatch {
            server_names: vec![sni],
            ..FilterChainMatch::default()
        }),
        filters: vec![tcp_proxy_filter(cluster, cluster)],
        ..FilterChain::default()
    }
}

fn edge_listener(name: String, address: &str, port: u32, chains: Vec<FilterChain>) -> Listener {
    Listener {
        name,
        address: Some(socket(address, port)),
        listener_filters: vec![tls_inspector()],
        filter_chains: chains,
        ..Listener::default()
    }
}

/// The snapshot of the zone ingress `ingress`, serving `meshes`.
pub fn ingress_snapshot(ingress: &Resource, meshes: &[Arc<MeshContext>]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let Spec::ZoneIngress(spec) = &ingress.spec else {
        return snapshot.seal();
    };
    let Some(networking) = spec.networking.as_ref() else {
        return snapshot.seal();
    };
    let mut chains = Vec::new();
    for ctx in meshes.iter().filter(|c| c.mtls_enabled()) {
        let zone = ctx.local_zone.as_deref().unwrap_or("local");
        let subsets = mesh_subsets(ctx);
        for (service, info) in ctx.services.iter().filter(|(_, i)| !i.local.is_empty()) {
            let targets = std::iter::once(ClusterTarget::service(service)).chain(
                subsets
                    .iter()
                    .filter(|t| t.service == *service)
                    .filter(|t| info.local.iter().any(|e| has_tags(&e.tags, &t.tags)))
                    .cloned(),
            );
            for target in targets {
                let Some(sni) = sni_for(ctx, service, &target.tags, zone) else {
                    continue;
                };
                let cluster = format!("{}:{}", ctx.name, target.cluster_name());
                chains.push(passthrough_chain(sni, &cluster));
                local_cluster(&mut snapshot, &cluster, info, &target.tags, zone);
            }
        }
    }
    let name = format!("ingress:{}:{}", networking.address, networking.port);
    let listener = edge_listener(name, &networking.address, networking.port, chains);
    snapshot.insert(LISTENER_TYPE, &listener.name, &listener);
    snapshot.seal()
}

/// The tag subsets the mesh's routes send to (see [`subset_targets`]).
fn mesh_subsets(ctx: &MeshContext) -> BTreeSet<ClusterTarget> {
    subset_targets(&ctx.policies, ctx.services.keys().map(String::as_str))
}

/// Whether an endpoint's `tags` include all of `subset`.
fn has_tags(tags: &BTreeMap<String, String>, subset: &BTreeMap<String, String>) -> bool {
    subset.iter().all(|(k, v)| tags.get(k) == Some(v))
}

fn local_cluster(
    snapshot: &mut Snapshot,
    cluster: &str,
    info: &ServiceInfo,
    subset: &BTreeMap<String, String>,
    zone: &str,
) {
    snapshot.insert(CLUSTER_TYPE, cluster, &eds_cluster(cluster));
    let cla = load_assignment(
        cluster,
        info,
        subset,
        Some(zone),
        &Default::default(),
        &CrossZone::Disabled,
    );
    snapshot.insert(ENDPOINT_TYPE, cluster, &cla);
}

/// The snapshot of the zone egress `egress`, serving `meshes`.
/// `identities` holds the egress's certificate for each mesh it terminates mTLS for.
pub fn egress_snapshot(
    egress: &Resource,
    meshes: &[Arc<MeshContext>],
    identities: &BTreeMap<String, ProxyIdentity>,
) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let Spec::ZoneEgress(spec) = &egress.spec else {
        return snapshot.seal();
    };
    let Some(networking) = spec.networking.as_ref() else {
        return snapshot.seal();
    };
    let mut chains = Vec::new();
    for ctx in meshes
        .iter()
        .filter(|c| c.mtls_enabled() && c.routes_through_egress())
    {
        let subsets = mesh_subsets(ctx);
        for (service, info) in &ctx.services {
            let zones: BTreeSet<&str> = info.remote.iter().map(|r| r.zone.as_str()).collect();
            for zone in zones {
                let only_zone = ServiceInfo {
                    protocol: info.protocol.clone(),
                    local: Vec::new(),
                    remote: info
                        .remote
                        .iter()
                        .filter(|r| r.zone == zone)
                        .cloned()
                        .collect(),
                };
                // The service, and each routed subset with instances there: the sidecar names
                // the subset in its SNI and the egress passes it on to that zone's ingress.
                let targets = std::iter::once(ClusterTarget::service(service)).chain(
                    subsets
                        .iter()
                        .filter(|t| t.service == *service)
                        .filter(|t| only_zone.remote.iter().any(|r| has_tags(&r.tags, &t.tags)))
                        .cloned(),
                );
                for target in targets {
                    let Some(sni) = sni_for(ctx, service, &target.tags, zone) else {
                        continue;
                    };
                    let cluster = format!("{}:{}:{zone}", ctx.name, target.cluster_name());
                    chains.push(passthrough_chain(sni, &cluster));
                    snapshot.insert(CLUSTER_TYPE, &cluster, &eds_cluster(&cluster));
                    let mut cla = load_assignment(
                        &cluster,
                        &only_zone,
                        &target.tags,
                        None,
                        &Default::default(),
                        &CrossZone::Direct,
                    );
                    // The egress reaches the remote ingress directly: one priority.
                    for group in &mut cla.endpoints {
                        group.priority = 0;
                    }
                    snapshot.insert(ENDPOINT_TYPE, &cluster, &cla);
                }
            }
        }
        for external in &ctx.external_services {
            let Some((service, port, es)) = external_parts(external) else {
                continue;
            };
            let Some(sni) = sni_for_external(ctx, &service, port) else {
                continue;
            };
            let cluster_name = format!("{}:{service}", ctx.name);
            let Some(cluster) = external_cluster(ctx, &cluster_name, es) else {
                continue;
            };
            snapshot.insert(CLUSTER_TYPE, &cluster_name, &cluster);
            chains.push(FilterChain {
                name: sni.clone(),
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec![sni],
                    ..FilterChainMatch::default()
                }),
                filters: vec![tcp_proxy_filter(&cluster_name, &cluster_name)],
                transport_socket: Some(downstream_mtls(&ctx.name)),
                ..FilterChain::default()
            });
        }
    }
    let name = format!("egress:{}:{}", networking.address, networking.port);
    let listener = edge_listener(name, &networking.address, networking.port, chains);
    snapshot.insert(LISTENER_TYPE, &listener.name, &listener);
    for (mesh, identity) in identities {
        insert_identity(&mut snapshot, mesh, identity);
        let due = snapshot
            .refresh_at
            .map_or(identity.renew_at, |at| at.min(identity.renew_at));
        snapshot.refresh_at = Some(due);
    }
    snapshot.seal()
}

/// The service name, port and spec of an ExternalService resource.
pub fn external_parts(resource: &Resource) -> Option<(String, u32, &ExternalServiceSpec)> {
    let Spec::ExternalService(spec) = &resource.spec else {
        return None;
    };
    let service = spec.tags.get(SERVICE_TAG)?.clone();
    let (_, port) = spec.networking.as_ref()?.host_port()?;
    Some((service, u32::from(port), spec))
}

/// The SNI a sidecar uses towards the egress for external service `service`.
pub fn sni_for_external(ctx: &MeshContext, service: &str, port: u32) -> Option<String> {
    let target = crate::sni::SniTarget {
        port,
        ..crate::sni::SniTarget::service(&ctx.name, service, EXTERNAL_ZONE)
    };
    target.to_sni().ok()
}

fn data_source(
    ctx: &MeshContext,
    source: &mesh_api::core::common::DataSource,
) -> Option<EnvoyDataSource> {
    let specifier = if let Some(secret) = &source.secret {
        let bytes = match ctx.secrets.get(secret).map(|r| &r.spec) {
            Some(Spec::Secret(s)) => s.bytes()?,
            _ => {
                tracing::warn!(mesh = %ctx.name, %secret, "external service TLS: secret not found");
                return None;
            }
        };
        data_source::Specifier::InlineBytes(bytes)
    } else if let Some(file) = &source.file {
        data_source::Specifier::Filename(file.clone())
    } else if let Some(inline) = &source.inline {
        let spec = mesh_api::core::secret::SecretSpec {
            data: inline.clone(),
        };
        data_source::Specifier::InlineBytes(spec.bytes()?)
    } else {
        data_source::Specifier::InlineString(source.inline_string.clone()?)
    };
    Some(EnvoyDataSource {
        specifier: Some(specifier),
        ..EnvoyDataSource::default()
    })
}

fn dns_san(host: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Dns as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(host.to_string())),
            ..StringMatcher::default()
        }),
        oid: String::new(),
    }
}

/// A cluster reaching an external service directly: DNS-resolved `host:port`, with TLS
/// originated when the ExternalService asks for it.
pub fn external_cluster(
    ctx: &MeshContext,
    name: &str,
    spec: &ExternalServiceSpec,
) -> Option<Cluster> {
    let networking = spec.networking.as_ref()?;
    let (host, port) = networking.host_port()?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let mut cluster = Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(if is_ip {
            cluster::DiscoveryType::Static as i32
        } else {
            cluster::DiscoveryType::StrictDns as i32
        })),
        load_assignment: Some(single_endpoint(name, host, u32::from(port))),
        ..Cluster::default()
    };
    if let Some(tls) = networking.tls.as_ref().filter(|t| t.enabled) {
        let sni = tls
            .server_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                if is_ip {
                    String::new()
                } else {
                    host.to_string()
                }
            });
        // The server must prove it is the host we dial (its DNS SAN), unless told not to check.
        let check_host = !tls.skip_hostname_verification.unwrap_or(false) && !sni.is_empty();
        let validation = tls
            .ca_cert
            .as_ref()
            .and_then(|ca| data_source(ctx, ca))
            .map(|ca| {
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(ca),
                        match_typed_subject_alt_names: if check_host {
                            vec![dns_san(&sni)]
                        } else {
                            Vec::new()
                        },
                        ..CertificateValidationContext::default()
                    },
                )
            });
        let certificates = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => vec![
                envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate {
                    certificate_chain: data_source(ctx, cert),
                    private_key: data_source(ctx, key),
                    ..Default::default()
                },
            ],
            _ => Vec::new(),
        };
        let context = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: certificates,
                validation_context_type: validation,
                ..CommonTlsContext::default()
            }),
            sni,
            allow_renegotiation: tls.allow_renegotiation.unwrap_or(false),
            ..UpstreamTlsContext::default()
        };
        cluster.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
        });
    }
    Some(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ingresses_of;
    use crate::snapshot::Snapshot;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

    fn parse(text: &str) -> Vec<Resource> {
        mesh_api::parse_documents(text)
            .into_iter()
            .map(|d| d.unwrap().resource)
            .collect()
    }

    const MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n";
    const DATAPLANES: &str = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: web\n  outbound:\n    - port: 10001\n      tags:\n        kuma.io/service: api\n---\ntype: Dataplane\nname: api-1\nmesh: default\nnetworking:\n  address: 10.0.0.2\n  inbound:\n    - port: 15000\n      servicePort: 9090\n      tags:\n        kuma.io/service: api\n";
    const INGRESSES: &str = "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 10.0.0.10\n  port: 10001\n---\ntype: ZoneIngress\nname: ingress-2.zone-2\nlabels:\n  kuma.io/origin: global\n  kuma.io/zone: zone-2\nzone: zone-2\nnetworking:\n  address: 172.16.0.2\n  advertisedAddress: 192.0.2.2\n  port: 10001\n  advertisedPort: 20001\navailableServices:\n  - mesh: default\n    instances: 2\n    tags:\n      kuma.io/service: api\n";
    const EGRESS: &str =
        "type: ZoneEgress\nname: egress-1\nnetworking:\n  address: 10.0.0.20\n  port: 10002\n";

    fn context(mesh: &str) -> Arc<MeshContext> {
        let ingresses = ingresses_of(parse(INGRESSES), Some("zone-1"));
        let mut resources = parse(mesh);
        resources.extend(parse(DATAPLANES));
        Arc::new(MeshContext::from_resources(
            "default",
            Some("zone-1"),
            resources,
            &ingresses,
            &parse(EGRESS),
        ))
    }

    fn decode<M: prost::Message + Default>(snapshot: &Snapshot, type_url: &str, name: &str) -> M {
        let (_, r) = snapshot
            .of_type(type_url)
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        M::decode(r.resource.value.as_slice()).unwrap()
    }

    #[test]
    fn sidecars_reach_other_zones_through_their_ingress() {
        let ctx = context(MESH);
        assert_eq!(ctx.services["api"].remote.len(), 1);
        let snapshot = super::super::sidecar_snapshot(&ctx, ctx.dataplane("web-1").unwrap(), None);
        let cla: ClusterLoadAssignment = decode(&snapshot, crate::snapshot::ENDPOINT_TYPE, "api");
        let zones: Vec<(u32, &str)> = cla
            .endpoints
            .iter()
            .map(|g| (g.priority, g.locality.as_ref().unwrap().zone.as_str()))
            .collect();
        assert_eq!(zones, [(0, "zone-1"), (1, "zone-2")]);
        let cluster: Cluster = decode(&snapshot, crate::snapshot::CLUSTER_TYPE, "api");
        assert_eq!(cluster.transport_socket_matches.len(), 1);
        assert_eq!(cluster.transport_socket_matches[0].name, "zone-2");
        // Without mTLS there is no SNI to route on: local endpoints only.
        let plain = context("type: Mesh\nname: default\n");
        let snapshot =
            super::super::sidecar_snapshot(&plain, plain.dataplane("web-1").unwrap(), None);
        let cla: ClusterLoadAssignment = decode(&snapshot, crate::snapshot::ENDPOINT_TYPE, "api");
        assert_eq!(cla.endpoints.len(), 1);
    }

    #[test]
    fn ingress_has_a_passthrough_chain_per_local_service() {
        let ctx = context(MESH);
        let ingress = ctx.ingresses.iter().find(|i| i.local).unwrap();
        let snapshot = ingress_snapshot(&ingress.resource, std::slice::from_ref(&ctx));
        let listener: Listener = decode(&snapshot, LISTENER_TYPE, "ingress:10.0.0.10:10001");
        let names: Vec<&str> = listener
            .filter_chains
            .iter()
            .map(|c| c.filter_chain_match.as_ref().unwrap().server_names[0].as_str())
            .collect();
        assert_eq!(
            names,
            ["api.0.zone-1.default.mesh", "web.0.zone-1.default.mesh"]
        );
        assert!(listener
            .filter_chains
            .iter()
            .all(|c| c.transport_socket.is_none()));
        assert_eq!(listener.listener_filters.len(), 1, "TLS inspector");
        let cla: ClusterLoadAssignment = decode(&snapshot, ENDPOINT_TYPE, "default:api");
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
    }

    #[test]
    fn egress_forwards_to_remote_ingresses_and_sidecars_use_it() {
        let mesh = format!("{MESH}routing:\n  zoneEgress: true\n");
        let ctx = context(&mesh);
        let egress = &ctx.egresses[0];
        let snapshot = egress_snapshot(egress, std::slice::from_ref(&ctx), &BTreeMap::new());
        let listener: Listener = decode(&snapshot, LISTENER_TYPE, "egress:10.0.0.20:10002");
        assert_eq!(
            listener.filter_chains[0]
                .filter_chain_match
                .as_ref()
                .unwrap()
                .server_names,
            ["api.0.zone-2.default.mesh"]
        );
        let cla: ClusterLoadAssignment = decode(&snapshot, ENDPOINT_TYPE, "default:api:zone-2");
        let ep = &cla.endpoints[0].lb_endpoints[0];
        let Some(
            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e),
        ) = &ep.host_identifier
        else {
            panic!()
        };
        assert_eq!(e.address, Some(socket("192.0.2.2", 20001)));
        // The sidecar's remote endpoints now point at the egress.
        let sidecar = super::super::sidecar_snapshot(&ctx, ctx.dataplane("web-1").unwrap(), None);
        let cla: ClusterLoadAssignment = decode(&sidecar, ENDPOINT_TYPE, "api");
        let Some(
            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e),
        ) = &cla.endpoints[1].lb_endpoints[0].host_identifier
        else {
            panic!()
        };
        assert_eq!(e.address, Some(socket("10.0.0.20", 10002)));
    }

    /// Zone-1 with api v1 and v2 behind its ingress, zone-2 with api v1 (2) and v2 (1), and a
    /// 90/10 MeshHTTPRoute between the versions; `extra` is appended to the mesh resources.
    fn subset_context(extra: &str) -> Arc<MeshContext> {
        let ingresses = "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: 10.0.0.10\n  port: 10001\n---\ntype: ZoneIngress\nname: ingress-2.zone-2\nlabels:\n  kuma.io/origin: global\n  kuma.io/zone: zone-2\nzone: zone-2\nnetworking:\n  address: 172.16.0.2\n  advertisedAddress: 192.0.2.2\n  port: 10001\n  advertisedPort: 20001\navailableServices:\n  - {mesh: default, instances: 2, tags: {kuma.io/service: api, version: v1}}\n  - {mesh: default, instances: 1, tags: {kuma.io/service: api, version: v2}}\n";
        let api = |name: &str, ip: &str, version: &str| {
            format!("type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: {ip}\n  inbound:\n    - {{port: 15000, servicePort: 9090, tags: {{kuma.io/service: api, kuma.io/protocol: http, version: {version}}}}}\n")
        };
        let route = "type: MeshHTTPRoute\nname: canary\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n    - targetRef: {kind: MeshService, name: api}\n      rules:\n        - matches: [{path: {type: PathPrefix, value: /}}]\n          default:\n            backendRefs:\n              - {kind: MeshServiceSubset, name: api, tags: {version: v1}, weight: 90}\n              - {kind: MeshServiceSubset, name: api, tags: {version: v2}, weight: 10}\n";
        let web = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - {port: 15000, servicePort: 8080, tags: {kuma.io/service: web}}\n  outbound:\n    - {port: 10001, tags: {kuma.io/service: api}}\n";
        let text = format!(
            "{MESH}{extra}---\n{web}---\n{}---\n{}---\n{}---\n{route}",
            api("api-1", "10.0.0.2", "v1"),
            api("api-2", "10.0.0.3", "v2"),
            api("api-3", "10.0.0.4", "v2"),
        );
        Arc::new(MeshContext::from_resources(
            "default",
            Some("zone-1"),
            parse(&text),
            &ingresses_of(parse(ingresses), Some("zone-1")),
            &parse(EGRESS),
        ))
    }

    fn endpoint_addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
        cla.endpoints
            .iter()
            .flat_map(|g| &g.lb_endpoints)
            .map(|ep| match &ep.host_identifier {
                Some(
                    envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e),
                ) => format!("{:?}", e.address),
                _ => panic!("no address"),
            })
            .collect()
    }

    fn v(version: &str) -> ClusterTarget {
        ClusterTarget::new("api", [("version".to_string(), version.to_string())].into())
    }

    #[test]
    fn ingress_has_a_chain_per_routed_subset_holding_only_its_instances() {
        let ctx = subset_context("");
        let ingress = ctx.ingresses.iter().find(|i| i.local).unwrap();
        let snapshot = ingress_snapshot(&ingress.resource, std::slice::from_ref(&ctx));
        let listener: Listener = decode(&snapshot, LISTENER_TYPE, "ingress:10.0.0.10:10001");
        let chains: Vec<(&str, String)> = listener
            .filter_chains
            .iter()
            .map(|c| {
                let cfg = &c.filters[0];
                let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) = &cfg.config_type else {
                    panic!()
                };
                let tcp = <envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as prost::Message>::decode(any.value.as_slice()).unwrap();
                let Some(envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster(cluster)) = tcp.cluster_specifier else {
                    panic!()
                };
                (c.filter_chain_match.as_ref().unwrap().server_names[0].as_str(), cluster)
            })
            .collect();
        let (v1, v2) = (v("v1").cluster_name(), v("v2").cluster_name());
        assert_eq!(
            chains,
            [
                ("api.0.zone-1.default.mesh", "default:api".to_string()),
                (
                    "api.version.v1.0.t1.zone-1.default.mesh",
                    format!("default:{v1}")
                ),
                (
                    "api.version.v2.0.t1.zone-1.default.mesh",
                    format!("default:{v2}")
                ),
                ("web.0.zone-1.default.mesh", "default:web".to_string()),
            ]
        );
        let all: ClusterLoadAssignment = decode(&snapshot, ENDPOINT_TYPE, "default:api");
        assert_eq!(endpoint_addresses(&all).len(), 3);
        let only_v1: ClusterLoadAssignment =
            decode(&snapshot, ENDPOINT_TYPE, &format!("default:{v1}"));
        assert_eq!(
            endpoint_addresses(&only_v1),
            [format!("{:?}", Some(socket("10.0.0.2", 15000)))]
        );
        let only_v2: ClusterLoadAssignment =
            decode(&snapshot, ENDPOINT_TYPE, &format!("default:{v2}"));
        assert_eq!(
            endpoint_addresses(&only_v2),
            [
                format!("{:?}", Some(socket("10.0.0.3", 15000))),
                format!("{:?}", Some(socket("10.0.0.4", 15000)))
            ]
        );
        // Without the route there is no subset chain (nothing names one).
        let mut plain = Arc::try_unwrap(subset_context("")).unwrap();
        plain.policies.clear();
        let snapshot = ingress_snapshot(&ingress.resource, &[Arc::new(plain)]);
        let listener: Listener = decode(&snapshot, LISTENER_TYPE, "ingress:10.0.0.10:10001");
        assert_eq!(listener.filter_chains.len(), 2);
    }

    #[test]
    fn sidecar_subset_clusters_name_their_tags_to_other_zones() {
        let ctx = subset_context("");
        let snapshot = super::super::sidecar_snapshot(&ctx, ctx.dataplane("web-1").unwrap(), None);
        for (version, remote_weight) in [("v1", 2), ("v2", 1)] {
            let name = v(version).cluster_name();
            let cluster: Cluster = decode(&snapshot, CLUSTER_TYPE, &name);
            let zone_2 = &cluster.transport_socket_matches[0];
            assert_eq!(zone_2.name, "zone-2");
            let tls = zone_2.transport_socket.as_ref().unwrap();
            let Some(transport_socket::ConfigType::TypedConfig(any)) = &tls.config_type else {
                panic!()
            };
            let tls = <UpstreamTlsContext as prost::Message>::decode(any.value.as_slice()).unwrap();
            assert_eq!(
                tls.sni,
                format!("api.version.{version}.0.t1.zone-2.default.mesh")
            );
            let cla: ClusterLoadAssignment = decode(&snapshot, ENDPOINT_TYPE, &name);
            let remote = cla.endpoints.iter().find(|g| g.priority == 1).unwrap();
            assert_eq!(
                remote.load_balancing_weight.as_ref().unwrap().value,
                remote_weight
            );
        }
        // The service's own cluster keeps the plain name.
        let cluster: Cluster = decode(&snapshot, CLUSTER_TYPE, "api");
        let tls = cluster.transport_socket_matches[0]
            .transport_socket
            .as_ref()
            .unwrap();
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &tls.config_type else {
            panic!()
        };
        let tls = <UpstreamTlsContext as prost::Message>::decode(any.value.as_slice()).unwrap();
        assert_eq!(tls.sni, "api.0.zone-2.default.mesh");
    }

    #[test]
    fn egress_forwards_each_routed_subset_to_the_zones_that_have_it() {
        let ctx = subset_context("routing:\n  zoneEgress: true\n");
        let egress = &ctx.egresses[0];
        let snapshot = egress_snapshot(egress, std::slice::from_ref(&ctx), &BTreeMap::new());
        let listener: Listener = decode(&snapshot, LISTENER_TYPE, "egress:10.0.0.20:10002");
        let names: Vec<&str> = listener
            .filter_chains
            .iter()
            .map(|c| c.filter_chain_match.as_ref().unwrap().server_names[0].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "api.0.zone-2.default.mesh",
                "api.version.v1.0.t1.zone-2.default.mesh",
                "api.version.v2.0.t1.zone-2.default.mesh",
            ]
        );
        let v2 = format!("default:{}:zone-2", v("v2").cluster_name());
        let cla: ClusterLoadAssignment = decode(&snapshot, ENDPOINT_TYPE, &v2);
        assert_eq!(
            cla.endpoints[0]
                .load_balancing_weight
                .as_ref()
                .unwrap()
                .value,
            1
        );
        assert_eq!(
            endpoint_addresses(&cla),
            [format!("{:?}", Some(socket("192.0.2.2", 20001)))]
        );
    }
}
