//! A service's ClusterLoadAssignment as a sidecar in this zone sees it (DESIGN.md section 5):
//! local instances at priority 0; every other zone through its ingress (the ingress's advertised
//! address, weight = instances behind it, locality = that zone) at priority 1, or at `i + 1` for
//! the `i`-th `crossZone.failover` rule of MeshLoadBalancingStrategy that admits the zone
//! ([`Locality::priority`]). That
//! is locality-aware failover with no policy needed: Envoy (and gRPC, and Meridian's own proxy)
//! spill to the next priority only as the healthy share of the one before drops.
//!
//! Remote endpoints carry `envoy.transport_socket_match: {zone}` metadata so the cluster can pick
//! the transport socket whose SNI names that zone (`crate::sni`); when the mesh routes through
//! the zone egress they point at the local egress instead, which forwards on that SNI. They exist
//! only in meshes with mTLS: the ingress routes on the SNI of the TLS the client opens.

use std::collections::BTreeMap;

use crate::policy::Locality;
use envoy_types::pb::envoy::config::core::v3::{Locality as EnvoyLocality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::{value, Struct, UInt32Value, Value};

use super::envoy::socket;
use crate::context::{LocalEndpoint, RemoteEndpoint, ServiceInfo};

/// The metadata key Envoy's `transport_socket_matches` look endpoints up by.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// Where a cross-zone endpoint is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum CrossZone {
    /// Not at all (no mTLS in the mesh, so no SNI to route on).
    Disabled,
    /// Directly at the remote zone's ingress.
    Direct,
    /// Through this zone's egress at `address:port`.
    ViaEgress { address: String, port: u32 },
}

/// Which endpoints to include: all of the service's, or those whose tags include `subset`.
pub fn load_assignment(
    cluster_name: &str,
    service: &ServiceInfo,
    subset: &BTreeMap<String, String>,
    local_zone: Option<&str>,
    locality: &Locality,
    cross_zone: &CrossZone,
) -> ClusterLoadAssignment {
    let matches =
        |tags: &BTreeMap<String, String>| subset.iter().all(|(k, v)| tags.get(k) == Some(v));
    let local: Vec<&LocalEndpoint> = service.local.iter().filter(|e| matches(&e.tags)).collect();
    let mut groups: Vec<LocalityLbEndpoints> = Vec::new();
    if !local.is_empty() {
        groups.push(LocalityLbEndpoints {
            locality: Some(envoy_locality(local_zone.unwrap_or_default())),
            load_balancing_weight: Some(UInt32Value {
                value: local.len() as u32,
            }),
            priority: 0,
            lb_endpoints: local
                .iter()
                .map(|e| lb_endpoint(&e.address, e.port, 1, None))
                .collect(),
            ..LocalityLbEndpoints::default()
        });
    }
    if *cross_zone != CrossZone::Disabled {
        let mut by_zone: BTreeMap<&str, Vec<&RemoteEndpoint>> = BTreeMap::new();
        for remote in service.remote.iter().filter(|e| matches(&e.tags)) {
            by_zone
                .entry(remote.zone.as_str())
                .or_default()
                .push(remote);
        }
        for (zone, endpoints) in by_zone {
            let Some(priority) = locality.priority(local_zone.unwrap_or_default(), zone) else {
                continue;
            };
            // One endpoint per ingress, weighted by the instances behind it.
            let mut per_ingress: BTreeMap<(&str, u32), u32> = BTreeMap::new();
            for e in &endpoints {
                *per_ingress.entry((e.address.as_str(), e.port)).or_default() += e.instances;
            }
            let total: u32 = per_ingress.values().sum();
            let lb_endpoints = per_ingress
                .into_iter()
                .map(|((address, port), instances)| match cross_zone {
                    CrossZone::ViaEgress { address, port } => {
                        lb_endpoint(address, *port, instances, Some(zone))
                    }
                    _ => lb_endpoint(address, port, instances, Some(zone)),
                })
                .collect();
            groups.push(LocalityLbEndpoints {
                locality: Some(envoy_locality(zone)),
                load_balancing_weight: Some(UInt32Value {
                    value: total.max(1),
                }),
                priority,
                lb_endpoints,
                ..LocalityLbEndpoints::default()
            });
        }
    }
    // Priorities must be contiguous from 0 (Envoy and gRPC both insist).
    let mut used: Vec<u32> = groups.iter().map(|g| g.priority).collect();
    used.sort_unstable();
    used.dedup();
    for group in &mut groups {
        group.priority = used.iter().position(|p| *p == group.priority).unwrap_or(0) as u32;
    }
    groups.sort_by_key(|g| g.priority);
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: groups,
        ..ClusterLoadAssignment::default()
    }
}

fn envoy_locality(zone: &str) -> EnvoyLocality {
    EnvoyLocality {
        zone: zone.to_string(),
        ..EnvoyLocality::default()
    }
}

fn lb_endpoint(address: &str, port: u32, weight: u32, zone: Option<&str>) -> LbEndpoint {
    let metadata = zone.map(|zone| {
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "zone".to_string(),
            Value {
                kind: Some(value::Kind::StringValue(zone.to_string())),
            },
        );
        let mut filter_metadata = std::collections::HashMap::new();
        filter_metadata.insert(TRANSPORT_SOCKET_MATCH.to_string(), Struct { fields });
        Metadata {
            filter_metadata,
            ..Metadata::default()
        }
    });
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(address, port)),
            ..Endpoint::default()
        })),
        load_balancing_weight: Some(UInt32Value {
            value: weight.max(1),
        }),
        metadata,
        ..LbEndpoint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceInfo {
        let remote = |zone: &str, address: &str, instances| RemoteEndpoint {
            zone: zone.into(),
            address: address.into(),
            port: 10001,
            instances,
            tags: [("kuma.io/service".to_string(), "backend".to_string())].into(),
        };
        ServiceInfo {
            protocol: "http".into(),
            local: vec![LocalEndpoint {
                address: "10.0.0.1".into(),
                port: 8080,
                tags: [
                    ("kuma.io/service".to_string(), "backend".to_string()),
                    ("version".to_string(), "v1".to_string()),
                ]
                .into(),
            }],
            remote: vec![
                remote("zone-2", "192.0.2.2", 3),
                remote("zone-3", "192.0.2.3", 1),
            ],
        }
    }

    fn summary(cla: &ClusterLoadAssignment) -> Vec<(u32, String, u32)> {
        cla.endpoints
            .iter()
            .map(|g| {
                (
                    g.priority,
                    g.locality.as_ref().unwrap().zone.clone(),
                    g.load_balancing_weight.as_ref().unwrap().value,
                )
            })
            .collect()
    }

    #[test]
    fn local_first_then_every_other_zone() {
        let cla = load_assignment(
            "backend",
            &service(),
            &BTreeMap::new(),
            Some("zone-1"),
            &Locality::default(),
            &CrossZone::Direct,
        );
        assert_eq!(
            summary(&cla),
            vec![
                (0, "zone-1".into(), 1),
                (1, "zone-2".into(), 3),
                (1, "zone-3".into(), 1)
            ]
        );
        let remote = &cla.endpoints[1].lb_endpoints[0];
        assert_eq!(remote.load_balancing_weight.as_ref().unwrap().value, 3);
        assert!(remote
            .metadata
            .as_ref()
            .unwrap()
            .filter_metadata
            .contains_key(TRANSPORT_SOCKET_MATCH));
    }

    #[test]
    fn no_cross_zone_without_mtls_and_subsets_filter() {
        let cla = load_assignment(
            "backend",
            &service(),
            &BTreeMap::new(),
            Some("zone-1"),
            &Locality::default(),
            &CrossZone::Disabled,
        );
        assert_eq!(summary(&cla), vec![(0, "zone-1".into(), 1)]);
        let subset = [("version".to_string(), "v2".to_string())].into();
        let cla = load_assignment(
            "backend_v2",
            &service(),
            &subset,
            Some("zone-1"),
            &Locality::default(),
            &CrossZone::Direct,
        );
        assert!(cla.endpoints.is_empty());
    }

    #[test]
    fn failover_rules_order_zones_and_priorities_stay_contiguous() {
        let conf: mesh_api::policies::mesh_load_balancing_strategy::Conf = serde_json::from_str(
            r#"{"localityAwareness": {"crossZone": {"failover": [
                {"to": {"type": "Only", "zones": ["zone-3"]}},
                {"to": {"type": "Any"}}]}}}"#,
        )
        .unwrap();
        let mut svc = service();
        svc.local.clear();
        let cla = load_assignment(
            "backend",
            &svc,
            &BTreeMap::new(),
            Some("zone-1"),
            &Locality::from_conf(conf.locality_awareness.as_ref()),
            &CrossZone::ViaEgress {
                address: "10.0.0.9".into(),
                port: 10002,
            },
        );
        // zone-3 by rule 0, zone-2 by rule 1; with no local instances they become 0 and 1.
        assert_eq!(
            summary(&cla),
            vec![(0, "zone-3".into(), 1), (1, "zone-2".into(), 3)]
        );
        let ep = &cla.endpoints[0].lb_endpoints[0];
        let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
            panic!()
        };
        assert_eq!(e.address, Some(socket("10.0.0.9", 10002)));
        let none: mesh_api::policies::mesh_load_balancing_strategy::Conf = serde_json::from_str(
            r#"{"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "None"}}]}}}"#,
        )
        .unwrap();
        let cla = load_assignment(
            "backend",
            &service(),
            &BTreeMap::new(),
            Some("zone-1"),
            &Locality::from_conf(none.locality_awareness.as_ref()),
            &CrossZone::Direct,
        );
        assert_eq!(summary(&cla), vec![(0, "zone-1".into(), 1)]);
    }
}
