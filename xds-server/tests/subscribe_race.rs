//! A proxy that connects while a change is being handled must still end up with the change.
//! Its first snapshot is built before it is registered for updates; if the change's rebuild
//! picks the proxies to rebuild in between, that rebuild misses it, and the cache must notice
//! and build it again (the cause of a flaky cross-zone test: a sidecar kept an empty EDS).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use mesh_store::ResourceStore;
use prost::Message as _;
use tokio::sync::{oneshot, Notify};
use xds_server::generator::Generator;
use xds_server::snapshot::{Snapshot, SnapshotSource, SourceError, ENDPOINT_TYPE};
use xds_server::{ProxyId, SnapshotCache};

/// The generator, except that its first snapshot is held back (after it was built) until the
/// test releases it, and every invalidation is signalled.
struct HeldFirstSnapshot {
    generator: Generator,
    built: Notify,
    release: Mutex<Option<oneshot::Receiver<()>>>,
    invalidated: Notify,
}

#[async_trait::async_trait]
impl SnapshotSource for HeldFirstSnapshot {
    async fn snapshot(&self, proxy: &ProxyId) -> Result<Snapshot, SourceError> {
        let snapshot = self.generator.snapshot(proxy).await;
        let release = self.release.lock().unwrap().take();
        if let Some(release) = release {
            self.built.notify_one();
            let _ = release.await;
        }
        snapshot
    }

    fn invalidate(&self, meshes: Option<&BTreeSet<String>>, mesh_list: bool) {
        self.generator.invalidate(meshes, mesh_list);
        self.invalidated.notify_one();
    }
}

async fn apply(store: &Arc<dyn ResourceStore>, yaml: &str) {
    let resource = mesh_api::parse_documents(yaml).remove(0).unwrap().resource;
    store.create(resource).await.unwrap();
}

fn backend_endpoints(snapshot: &Snapshot) -> usize {
    snapshot
        .of_type(ENDPOINT_TYPE)
        .find(|(name, _)| *name == "backend")
        .map(|(_, r)| {
            ClusterLoadAssignment::decode(r.resource.value.as_slice())
                .unwrap()
                .endpoints
                .iter()
                .map(|g| g.lb_endpoints.len())
                .sum()
        })
        .unwrap_or(0)
}

// One thread: the cache's run loop goes from invalidating to picking the proxies to rebuild
// without yielding, so the order below is the racy one on every run, not by chance.
#[tokio::test(flavor = "current_thread")]
async fn a_proxy_subscribing_during_a_change_gets_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> =
        Arc::new(mesh_store::SledStore::open(dir.path().join("store")).unwrap());
    apply(&store, "type: Mesh\nname: default\n").await;
    apply(
        &store,
        "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: web\n  outbound:\n    - port: 10001\n      tags:\n        kuma.io/service: backend\n",
    )
    .await;
    let (release, released) = oneshot::channel();
    let source = Arc::new(HeldFirstSnapshot {
        generator: Generator::new(store.clone(), Some("zone-1".to_string())),
        built: Notify::new(),
        release: Mutex::new(Some(released)),
        invalidated: Notify::new(),
    });
    let cache = Arc::new(SnapshotCache::new(source.clone()));
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(cache.clone().run(store.clone(), stop_rx));

    let subscribing = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .subscribe(&ProxyId::dataplane("default", "web-1"))
                .await
        }
    });
    // The first snapshot is built (no backend instance yet) but web-1 is not registered.
    source.built.notified().await;
    apply(
        &store,
        "type: Dataplane\nname: backend-1\nmesh: default\nnetworking:\n  address: 10.0.0.2\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: backend\n",
    )
    .await;
    // The change was handled: its rebuild found no proxy to rebuild.
    source.invalidated.notified().await;
    release.send(()).unwrap();

    let mut snapshots = subscribing.await.unwrap().unwrap();
    let updated = tokio::time::timeout(
        Duration::from_secs(10),
        snapshots.wait_for(|s| backend_endpoints(s) == 1),
    )
    .await;
    assert!(
        matches!(updated, Ok(Ok(_))),
        "web-1 never got backend-1's endpoint: its snapshot predates the change"
    );
}
