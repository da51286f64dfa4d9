//! Keeps each local ZoneIngress's `availableServices` equal to what the zone's Dataplanes offer:
//! one entry per (mesh, inbound tag set) with the number of ready instances. Other zones route to
//! this zone through that list, so it follows every Dataplane change as it happens
//! ([`crate::reconciler`]), never on a timer.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_api::core::zone_ingress::AvailableService;
use mesh_api::{Resource, ResourceType, Spec, ORIGIN_LABEL, SERVICE_TAG};
use mesh_store::{ListQuery, ResourceStore, StoreError};

/// The services `dataplanes` offer, sorted by mesh then tags: every ready inbound that names its
/// service counts as one instance of its (mesh, tags).
pub fn available_services(dataplanes: &[Resource]) -> Vec<AvailableService> {
    let mut counts: BTreeMap<(String, BTreeMap<String, String>), u32> = BTreeMap::new();
    for dataplane in dataplanes {
        let Spec::Dataplane(spec) = &dataplane.spec else {
            continue;
        };
        let mesh = dataplane.meta.mesh.clone().unwrap_or_default();
        let inbounds = spec
            .networking
            .as_ref()
            .map(|n| n.inbound.as_slice())
            .unwrap_or_default();
        for inbound in inbounds {
            let ready = inbound.state == mesh_api::core::dataplane::InboundState::Ready;
            if ready && inbound.tags.contains_key(SERVICE_TAG) {
                *counts
                    .entry((mesh.clone(), inbound.tags.clone()))
                    .or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .map(|((mesh, tags), instances)| AvailableService {
            tags,
            instances,
            mesh,
            ..AvailableService::default()
        })
        .collect()
}

/// Whether a ZoneIngress was created in this zone (not relayed from another one by the global).
fn is_local(resource: &Resource) -> bool {
    resource.meta.labels.get(ORIGIN_LABEL).map(String::as_str) != Some("global")
}

/// Recomputes once and writes every local ZoneIngress whose list changed. A concurrent write to
/// the same ingress makes its update fail with a conflict; the change event it causes brings us
/// back here, so nothing is lost.
pub async fn reconcile(store: &dyn ResourceStore) -> Result<usize, StoreError> {
    let dataplanes = store
        .list(&ListQuery::all(ResourceType::Dataplane))
        .await?
        .items;
    let services = available_services(&dataplanes);
    let mut written = 0;
    for mut ingress in store
        .list(&ListQuery::all(ResourceType::ZoneIngress))
        .await?
        .items
    {
        if !is_local(&ingress) {
            continue;
        }
        let Spec::ZoneIngress(spec) = &mut ingress.spec else {
            continue;
        };
        if spec.available_services == services {
            continue;
        }
        spec.available_services = services.clone();
        match store.update(ingress).await {
            Ok(_) => written += 1,
            Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Reconciles now and after every Dataplane or ZoneIngress change until `shutdown` completes.
pub async fn run(
    store: Arc<dyn ResourceStore>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let watched = [ResourceType::Dataplane, ResourceType::ZoneIngress];
    crate::reconciler::run(store.clone(), shutdown, &watched, || {
        let store = store.clone();
        async move { reconcile(store.as_ref()).await.map(|_| ()) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataplane(mesh: &str, name: &str, inbounds: &[(&str, &str)]) -> Resource {
        let mut text = format!("type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n");
        for (i, (service, version)) in inbounds.iter().enumerate() {
            text.push_str(&format!(
                "    - port: {}\n      tags:\n        kuma.io/service: {service}\n        version: {version}\n",
                8000 + i
            ));
        }
        mesh_api::parse_documents(&text).remove(0).unwrap().resource
    }

    #[test]
    fn counts_instances_per_mesh_and_tag_set() {
        let dps = [
            dataplane("default", "a", &[("web", "v1")]),
            dataplane("default", "b", &[("web", "v1"), ("api", "v1")]),
            dataplane("default", "c", &[("web", "v2")]),
            dataplane("other", "d", &[("web", "v1")]),
        ];
        let services = available_services(&dps);
        let summary: Vec<_> = services
            .iter()
            .map(|s| {
                (
                    s.mesh.as_str(),
                    s.tags[SERVICE_TAG].as_str(),
                    s.tags["version"].as_str(),
                    s.instances,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("default", "api", "v1", 1),
                ("default", "web", "v1", 2),
                ("default", "web", "v2", 1),
                ("other", "web", "v1", 1)
            ]
        );
    }
}
