//! Which services a sidecar's outbound configuration covers, as Kuma scopes it with reachable
//! services: the clusters, endpoints and routes of the others would only cost memory and pushes.
//!
//! - Without transparent proxying the application can only use the local ports of its
//!   `networking.outbound` entries, so it reaches exactly those services.
//! - With `networking.transparentProxying` any destination is intercepted, so it reaches every
//!   service of the mesh, unless `reachableServices` or `reachableBackends` lists them; its
//!   outbounds stay reachable either way.
//! - A gateway Dataplane forwards wherever its own configuration says: every service.
//!
//! The services the reachable ones' routes send to (route splits, subsets, TrafficRoute
//! destinations) are added when the outbound bundle is built (`crate::generator::sidecar`),
//! since they depend on the policies.

use std::collections::BTreeSet;

use mesh_api::core::dataplane::{DataplaneSpec, Outbound};
use mesh_api::SERVICE_TAG;

/// The services a sidecar reaches (their `kuma.io/service` names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reachable {
    /// Every service of the mesh.
    All,
    /// These services only (plus what their routes send to).
    Only(BTreeSet<String>),
}

impl Reachable {
    /// Whether `service` is reachable.
    pub fn contains(&self, service: &str) -> bool {
        match self {
            Reachable::All => true,
            Reachable::Only(services) => services.contains(service),
        }
    }

    /// What a Dataplane with `spec` reaches, and why some of its declaration was not used (each
    /// naming the field).
    pub fn of(spec: &DataplaneSpec) -> (Reachable, Vec<String>) {
        let mut warnings = Vec::new();
        if spec.gateway().is_some() {
            return (Reachable::All, warnings);
        }
        let mut services: BTreeSet<String> = spec
            .outbounds()
            .iter()
            .filter_map(outbound_service)
            .collect();
        let Some(tp) = spec
            .networking
            .as_ref()
            .and_then(|n| n.transparent_proxying.as_ref())
        else {
            return (Reachable::Only(services), warnings);
        };
        let refs = tp
            .reachable_backends
            .as_ref()
            .map(|b| b.refs.as_slice())
            .unwrap_or_default();
        if tp.reachable_services.is_empty() && refs.is_empty() {
            return (Reachable::All, warnings);
        }
        services.extend(tp.reachable_services.iter().cloned());
        for (i, backend) in refs.iter().enumerate() {
            if backend.name.is_empty() {
                // Kuma matches labels against MeshService resources, which the generator does not
                // use yet (a backend is a `kuma.io/service`): reaching everything keeps the
                // traffic flowing where reaching nothing would cut it.
                warnings.push(format!(
                    "networking.transparentProxying.reachableBackends.refs[{i}]: a backend \
                     selected by labels is not resolved yet, so every service is reachable"
                ));
                return (Reachable::All, warnings);
            }
            services.insert(backend.name.clone());
        }
        (Reachable::Only(services), warnings)
    }
}

/// The service an outbound leads to: its `kuma.io/service` tag, else its backendRef's name.
pub fn outbound_service(outbound: &Outbound) -> Option<String> {
    outbound
        .tags
        .get(SERVICE_TAG)
        .cloned()
        .or_else(|| outbound.backend_ref.as_ref().map(|b| b.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::Spec;

    fn reachable(networking: &str) -> (Reachable, Vec<String>) {
        let text = format!(
            "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 15000\n      tags:\n        kuma.io/service: web\n{networking}"
        );
        let resource = mesh_api::parse_documents(&text).remove(0).unwrap().resource;
        mesh_api::validate_resource(&resource).unwrap();
        let Spec::Dataplane(spec) = &resource.spec else {
            unreachable!()
        };
        Reachable::of(spec)
    }

    fn only(services: &[&str]) -> Reachable {
        Reachable::Only(services.iter().map(|s| s.to_string()).collect())
    }

    const OUTBOUNDS: &str = "  outbound:\n    - port: 10001\n      tags:\n        kuma.io/service: api\n    - port: 10002\n      backendRef:\n        kind: MeshService\n        name: billing\n        port: 8080\n";

    #[test]
    fn without_transparent_proxying_only_the_outbounds() {
        assert_eq!(reachable(OUTBOUNDS), (only(&["api", "billing"]), vec![]));
        assert_eq!(reachable(""), (only(&[]), vec![]));
        assert!(!only(&["api"]).contains("web"));
        assert!(only(&["api"]).contains("api"));
    }

    #[test]
    fn transparent_proxying_reaches_everything_unless_listed() {
        let tp = "  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n";
        assert_eq!(reachable(tp), (Reachable::All, vec![]));
        assert_eq!(
            reachable(&format!("{OUTBOUNDS}{tp}")),
            (Reachable::All, vec![])
        );
        assert!(Reachable::All.contains("anything"));
        let listed = format!("{tp}    reachableServices:\n      - db\n      - cache\n");
        assert_eq!(reachable(&listed), (only(&["cache", "db"]), vec![]));
        // The outbounds stay reachable.
        assert_eq!(
            reachable(&format!("{OUTBOUNDS}{listed}")),
            (only(&["api", "billing", "cache", "db"]), vec![])
        );
        let backends = format!(
            "{tp}    reachableBackends:\n      refs:\n        - kind: MeshService\n          name: db\n        - kind: MeshExternalService\n          name: httpbin\n"
        );
        assert_eq!(reachable(&backends), (only(&["db", "httpbin"]), vec![]));
    }

    #[test]
    fn backends_by_labels_reach_everything_with_a_warning() {
        let (reach, warnings) = reachable(
            "  transparentProxying:\n    reachableServices: [db]\n    reachableBackends:\n      refs:\n        - kind: MeshService\n          name: cache\n        - kind: MeshService\n          labels:\n            team: a\n",
        );
        assert_eq!(reach, Reachable::All);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("networking.transparentProxying.reachableBackends.refs[1]"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_gateway_reaches_everything() {
        let text = "type: Dataplane\nname: gw-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  gateway:\n    tags:\n      kuma.io/service: edge\n";
        let resource = mesh_api::parse_documents(text).remove(0).unwrap().resource;
        let Spec::Dataplane(spec) = &resource.spec else {
            unreachable!()
        };
        assert_eq!(Reachable::of(spec), (Reachable::All, vec![]));
    }
}
