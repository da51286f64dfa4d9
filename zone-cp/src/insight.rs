//! The zone's ZoneInsight: a summary of what this zone runs (Dataplanes and services per mesh,
//! its ingresses and egresses, its version), kept in the zone's store as the resource named after
//! the zone. KDS reports it up like the rest of the zone's inventory, so the global sees every
//! zone's summary. Recomputed on every relevant change ([`crate::reconciler`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_api::core::zone_insight::{MeshSummary, ZoneInsightSpec};
use mesh_api::{Resource, ResourceKey, ResourceType, Spec, ORIGIN_LABEL, SERVICE_TAG};
use mesh_store::{ListQuery, ResourceStore, StoreError};

/// Whether a resource was created in this zone (not relayed from another one by the global).
fn is_local(resource: &Resource) -> bool {
    resource.meta.labels.get(ORIGIN_LABEL).map(String::as_str) != Some("global")
}

/// The summary of `zone` from its resources.
pub fn summarize(
    zone: &str,
    dataplanes: &[Resource],
    ingresses: &[Resource],
    egresses: &[Resource],
) -> ZoneInsightSpec {
    let mut services: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut meshes: BTreeMap<String, MeshSummary> = BTreeMap::new();
    for dataplane in dataplanes.iter().filter(|d| is_local(d)) {
        let mesh = dataplane.meta.mesh.clone().unwrap_or_default();
        meshes.entry(mesh.clone()).or_default().dataplanes += 1;
        if let Spec::Dataplane(spec) = &dataplane.spec {
            let inbounds = spec
                .networking
                .as_ref()
                .map(|n| n.inbound.as_slice())
                .unwrap_or_default();
            for inbound in inbounds {
                if let Some(service) = inbound.tags.get(SERVICE_TAG) {
                    services.entry(mesh.clone()).or_default().insert(service);
                }
            }
        }
    }
    for (mesh, names) in services {
        meshes.entry(mesh).or_default().services = names.len() as u32;
    }
    let count = |rs: &[Resource]| rs.iter().filter(|r| is_local(r)).count() as u32;
    ZoneInsightSpec {
        zone: zone.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        meshes,
        zone_ingresses: count(ingresses),
        zone_egresses: count(egresses),
    }
}

/// Recomputes the zone's insight and writes it when it changed.
pub async fn reconcile(store: &dyn ResourceStore, zone: &str) -> Result<(), StoreError> {
    let list = |rtype| async move { store.list(&ListQuery::all(rtype)).await.map(|p| p.items) };
    let summary = summarize(
        zone,
        &list(ResourceType::Dataplane).await?,
        &list(ResourceType::ZoneIngress).await?,
        &list(ResourceType::ZoneEgress).await?,
    );
    let key = ResourceKey::new(ResourceType::ZoneInsight, None, zone);
    match store.get(&key).await? {
        Some(Resource {
            spec: Spec::ZoneInsight(current),
            ..
        }) if current == summary => Ok(()),
        Some(mut existing) => {
            existing.spec = Spec::ZoneInsight(summary);
            match store.update(existing).await {
                // A concurrent writer's change event brings us back here.
                Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
        None => match store
            .create(Resource::new(zone, None, Spec::ZoneInsight(summary)))
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// Keeps the insight current until `shutdown` is set.
pub async fn run(
    store: Arc<dyn ResourceStore>,
    zone: String,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let watched = [
        ResourceType::Dataplane,
        ResourceType::ZoneIngress,
        ResourceType::ZoneEgress,
    ];
    crate::reconciler::run(store.clone(), shutdown, &watched, || {
        let (store, zone) = (store.clone(), zone.clone());
        async move { reconcile(store.as_ref(), &zone).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Resource {
        mesh_api::parse_documents(text).remove(0).unwrap().resource
    }

    fn dataplane(mesh: &str, name: &str, service: &str) -> Resource {
        parse(&format!(
            "type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 80\n      tags:\n        kuma.io/service: {service}\n"
        ))
    }

    #[test]
    fn counts_dataplanes_and_services_per_mesh_and_skips_relayed_resources() {
        let mut relayed = parse(
            "type: ZoneIngress\nname: other\nnetworking:\n  address: 10.0.0.2\n  port: 10001\n",
        );
        relayed
            .meta
            .labels
            .insert(ORIGIN_LABEL.into(), "global".into());
        let local = parse(
            "type: ZoneIngress\nname: mine\nnetworking:\n  address: 10.0.0.3\n  port: 10001\n",
        );
        let summary = summarize(
            "zone-1",
            &[
                dataplane("default", "a", "web"),
                dataplane("default", "b", "web"),
                dataplane("default", "c", "api"),
                dataplane("other", "d", "web"),
            ],
            &[relayed, local],
            &[],
        );
        assert_eq!(summary.zone, "zone-1");
        assert_eq!(
            summary.meshes["default"],
            MeshSummary {
                dataplanes: 3,
                services: 2
            }
        );
        assert_eq!(
            summary.meshes["other"],
            MeshSummary {
                dataplanes: 1,
                services: 1
            }
        );
        assert_eq!(summary.zone_ingresses, 1);
        assert_eq!(summary.zone_egresses, 0);
    }
}
