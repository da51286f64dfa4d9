//! The first real [`SnapshotSource`]: sidecar configuration from the zone store. For the proxy's
//! Dataplane, one inbound listener per inbound (its address and port, a TCP proxy to the
//! `localhost:<servicePort>` cluster, static, 127.0.0.1); for every service of the mesh (the
//! inbounds of its Dataplanes grouped by `kuma.io/service`), an EDS cluster fetched over ADS and a
//! ClusterLoadAssignment with the ready local endpoints at priority 0.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::Any;
use mesh_api::core::dataplane::{DataplaneSpec, InboundState};
use mesh_api::{ResourceKey, ResourceType, Spec, SERVICE_TAG};
use mesh_store::{ListQuery, ResourceStore};
use prost::Message as _;

use crate::auth::ProxyId;
use crate::snapshot::{
    Snapshot, SnapshotSource, SourceError, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE,
};

const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Builds sidecar snapshots from a store.
#[derive(Clone)]
pub struct SidecarGenerator {
    store: Arc<dyn ResourceStore>,
}

impl std::fmt::Debug for SidecarGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarGenerator").finish_non_exhaustive()
    }
}

impl SidecarGenerator {
    pub fn new(store: Arc<dyn ResourceStore>) -> Self {
        SidecarGenerator { store }
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

fn load_assignment(cluster: &str, endpoints: &[(String, u32)]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            priority: 0,
            lb_endpoints: endpoints
                .iter()
                .map(|(ip, port)| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(ip, *port)),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                })
                .collect(),
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

/// The snapshot of the Dataplane `spec`, given every Dataplane of its mesh.
pub fn sidecar_snapshot(spec: &DataplaneSpec, mesh_dataplanes: &[mesh_api::Resource]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let address = spec
        .networking
        .as_ref()
        .map(|n| n.address.as_str())
        .unwrap_or_default();
    for inbound in spec.inbounds() {
        let ip = if inbound.address.is_empty() {
            address
        } else {
            &inbound.address
        };
        let port = inbound.workload_port();
        let local = format!("localhost:{port}");
        let tcp = TcpProxy {
            stat_prefix: local.clone(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(local.clone())),
            ..TcpProxy::default()
        };
        let listener = Listener {
            name: format!("inbound:{ip}:{}", inbound.port),
            address: Some(socket(ip, inbound.port)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".to_string(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: TCP_PROXY_TYPE.to_string(),
                        value: tcp.encode_to_vec(),
                    })),
                }],
                ..FilterChain::default()
            }],
            ..Listener::default()
        };
        snapshot.insert(LISTENER_TYPE, &listener.name, &listener);
        let cluster = Cluster {
            name: local.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(load_assignment(&local, &[("127.0.0.1".to_string(), port)])),
            ..Cluster::default()
        };
        snapshot.insert(CLUSTER_TYPE, &local, &cluster);
    }
    let mut services: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for dataplane in mesh_dataplanes {
        let Spec::Dataplane(other) = &dataplane.spec else {
            continue;
        };
        let other_address = other
            .networking
            .as_ref()
            .map(|n| n.address.as_str())
            .unwrap_or_default();
        for inbound in other.inbounds() {
            let Some(service) = inbound.tags.get(SERVICE_TAG) else {
                continue;
            };
            let endpoints = services.entry(service.clone()).or_default();
            if inbound.state == InboundState::Ready {
                let ip = if inbound.address.is_empty() {
                    other_address
                } else {
                    &inbound.address
                };
                endpoints.push((ip.to_string(), inbound.port));
            }
        }
    }
    for (service, mut endpoints) in services {
        endpoints.sort();
        endpoints.dedup();
        let cluster = Cluster {
            name: service.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    resource_api_version: ApiVersion::V3 as i32,
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..ConfigSource::default()
                }),
                service_name: String::new(),
            }),
            ..Cluster::default()
        };
        snapshot.insert(CLUSTER_TYPE, &service, &cluster);
        snapshot.insert(
            ENDPOINT_TYPE,
            &service,
            &load_assignment(&service, &endpoints),
        );
    }
    snapshot.seal()
}

#[async_trait::async_trait]
impl SnapshotSource for SidecarGenerator {
    async fn snapshot(&self, proxy: &ProxyId) -> Result<Snapshot, SourceError> {
        let key = ResourceKey::new(ResourceType::Dataplane, Some(&proxy.mesh), &proxy.name);
        let Some(dataplane) = self.store.get(&key).await? else {
            return Err(SourceError::UnknownDataplane(proxy.clone()));
        };
        let Spec::Dataplane(spec) = &dataplane.spec else {
            return Err(SourceError::UnknownDataplane(proxy.clone()));
        };
        let mesh = self
            .store
            .list(&ListQuery::in_mesh(ResourceType::Dataplane, &proxy.mesh))
            .await?
            .items;
        Ok(sidecar_snapshot(spec, &mesh))
    }
}
