//! A zone's ZoneIngress follows its Dataplanes: adding, changing and removing a Dataplane updates
//! `availableServices` through the store's watch (no timer), on a real sled store.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::{Resource, ResourceKey, ResourceType, Spec};
use mesh_store::{ResourceStore, SledStore};

fn parse(text: &str) -> Resource {
    mesh_api::parse_documents(text).remove(0).unwrap().resource
}

fn dataplane(name: &str, service: &str) -> Resource {
    parse(&format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 8080\n      tags:\n        kuma.io/service: {service}\n"
    ))
}

async fn services(store: &dyn ResourceStore) -> Vec<(String, u32)> {
    let key = ResourceKey::new(ResourceType::ZoneIngress, None, "ingress");
    let Some(Resource {
        spec: Spec::ZoneIngress(spec),
        ..
    }) = store.get(&key).await.unwrap()
    else {
        panic!("ingress missing");
    };
    spec.available_services
        .iter()
        .map(|s| (s.tags["kuma.io/service"].clone(), s.instances))
        .collect()
}

async fn wait_for(store: &Arc<dyn ResourceStore>, want: &[(&str, u32)]) {
    let want: Vec<(String, u32)> = want.iter().map(|(s, n)| (s.to_string(), *n)).collect();
    test_support::eventually(
        &format!("availableServices == {want:?}"),
        Duration::from_secs(10),
        || {
            let (store, want) = (store.clone(), want.clone());
            async move { (services(store.as_ref()).await == want).then_some(()) }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn ingress_follows_dataplanes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> = Arc::new(SledStore::open(dir.path()).unwrap());
    store
        .create(parse(
            "type: ZoneIngress\nname: ingress\nnetworking:\n  address: 10.0.0.9\n  advertisedAddress: 10.0.0.9\n  port: 10001\n  advertisedPort: 10001\n",
        ))
        .await
        .unwrap();
    store.create(dataplane("web-1", "web")).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(zone_cp::available_services::run(store.clone(), stop_rx));
    wait_for(&store, &[("web", 1)]).await;

    store.create(dataplane("web-2", "web")).await.unwrap();
    store.create(dataplane("api-1", "api")).await.unwrap();
    wait_for(&store, &[("api", 1), ("web", 2)]).await;

    let key = ResourceKey::new(ResourceType::Dataplane, Some("default"), "web-1");
    store.delete(&key, None).await.unwrap();
    wait_for(&store, &[("api", 1), ("web", 1)]).await;

    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}
