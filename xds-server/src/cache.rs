//! Holds the current snapshot of every connected proxy and pushes new ones. [`SnapshotCache::run`]
//! follows the store's ordered watch (never polls): it gathers the meshes a burst of changes
//! touches (coalesced over [`SnapshotCache::coalesce`]), rebuilds the snapshots of the connected
//! proxies of those meshes only, and publishes each one that changed on its proxy's channel. A
//! proxy whose Dataplane was deleted has its channel dropped, which ends its streams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mesh_api::ResourceType;
use mesh_store::ResourceStore;
use tokio::sync::{mpsc, watch};

use crate::auth::{ProxyId, ProxyKind};
use crate::snapshot::{Snapshot, SnapshotSource, SourceError};

/// The published snapshots, one channel per connected proxy.
pub struct SnapshotCache {
    source: Arc<dyn SnapshotSource>,
    proxies: Mutex<HashMap<ProxyId, watch::Sender<Arc<Snapshot>>>>,
    /// Snapshots that must be rebuilt at a time (certificates to re-issue), for [`Self::run`].
    refresh_tx: mpsc::UnboundedSender<(ProxyId, SystemTime)>,
    refresh_rx: Mutex<Option<mpsc::UnboundedReceiver<(ProxyId, SystemTime)>>>,
    /// Bumped by [`Self::run`] after it invalidates the source and before it picks the proxies
    /// to rebuild, so [`Self::subscribe`] can tell that its first snapshot may predate a change
    /// whose rebuild did not see it yet.
    changes: AtomicU64,
    /// How long a burst of store changes is gathered before rebuilding.
    pub coalesce: Duration,
}

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCache")
            .field("coalesce", &self.coalesce)
            .finish_non_exhaustive()
    }
}

/// What a change is relevant to.
enum Touched {
    /// Nothing proxies see (zone insights, Zone resources, global secrets).
    Nothing,
    /// One mesh; `list` when it is the Mesh itself (created, changed or deleted).
    Mesh { mesh: String, list: bool },
    /// Every proxy (zone ingresses and egresses change every mesh's endpoints).
    All,
}

fn touched(resource: &mesh_api::Resource) -> Touched {
    match resource.resource_type() {
        ResourceType::Mesh => Touched::Mesh {
            mesh: resource.meta.name.clone(),
            list: true,
        },
        ResourceType::ZoneIngress | ResourceType::ZoneEgress => Touched::All,
        _ => match &resource.meta.mesh {
            Some(mesh) => Touched::Mesh {
                mesh: mesh.clone(),
                list: false,
            },
            None => Touched::Nothing,
        },
    }
}

impl SnapshotCache {
    pub fn new(source: Arc<dyn SnapshotSource>) -> Self {
        let (refresh_tx, refresh_rx) = mpsc::unbounded_channel();
        SnapshotCache {
            source,
            proxies: Mutex::new(HashMap::new()),
            refresh_tx,
            refresh_rx: Mutex::new(Some(refresh_rx)),
            changes: AtomicU64::new(0),
            coalesce: Duration::from_millis(5),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProxyId, watch::Sender<Arc<Snapshot>>>> {
        // Only inserts and removes happen under the lock: a poisoned map is consistent.
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds `proxy`'s snapshot now and returns the channel its updates arrive on.
    pub async fn subscribe(
        &self,
        proxy: &ProxyId,
    ) -> Result<watch::Receiver<Arc<Snapshot>>, SourceError> {
        loop {
            let seen = self.changes.load(Ordering::SeqCst);
            let snapshot = Arc::new(self.source.snapshot(proxy).await?);
            self.schedule_refresh(proxy, &snapshot);
            let receiver = {
                let mut proxies = self.lock();
                let sender = proxies
                    .entry(proxy.clone())
                    .or_insert_with(|| watch::channel(snapshot.clone()).0);
                sender.send_if_modified(|current| {
                    let changed = current.version != snapshot.version;
                    if changed {
                        *current = snapshot.clone();
                    }
                    changed
                });
                sender.subscribe()
            };
            // A change handled while the snapshot was built may have picked the proxies to
            // rebuild before this one was registered: build again, from the fresh source.
            if self.changes.load(Ordering::SeqCst) == seen {
                return Ok(receiver);
            }
        }
    }

    /// Tells the source that resources of `meshes` (every mesh when `None`) were just written,
    /// ahead of the store watch (see [`SnapshotSource::invalidate`]): a proxy subscribing next
    /// sees them.
    pub fn source_changed(&self, meshes: Option<&BTreeSet<String>>, mesh_list: bool) {
        self.source.invalidate(meshes, mesh_list);
    }

    /// `proxy`'s current snapshot, for inspection: the one published to it when it is connected,
    /// else built from the source now (what it would get if it connected). Publishes nothing.
    pub async fn snapshot_of(&self, proxy: &ProxyId) -> Result<Arc<Snapshot>, SourceError> {
        let published = self
            .lock()
            .get(proxy)
            .filter(|sender| sender.receiver_count() > 0)
            .map(|sender| sender.borrow().clone());
        match published {
            Some(snapshot) => Ok(snapshot),
            None => Ok(Arc::new(self.source.snapshot(proxy).await?)),
        }
    }

    /// Rebuilds the snapshots of the connected proxies in `meshes` (all when `None`; zone
    /// ingresses and egresses serve every mesh, so always) and publishes those that changed.
    /// Proxies whose streams all closed are forgotten.
    pub async fn rebuild(&self, meshes: Option<&BTreeSet<String>>) {
        let targets: Vec<(ProxyId, watch::Sender<Arc<Snapshot>>)> = {
            let mut proxies = self.lock();
            proxies.retain(|_, sender| sender.receiver_count() > 0);
            proxies
                .iter()
                .filter(|(id, _)| {
                    id.kind != ProxyKind::Dataplane || meshes.is_none_or(|m| m.contains(&id.mesh))
                })
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect()
        };
        self.rebuild_targets(targets).await;
    }

    /// Rebuilds the given proxies (those still connected).
    async fn rebuild_proxies(&self, ids: &BTreeSet<ProxyId>) {
        let targets: Vec<(ProxyId, watch::Sender<Arc<Snapshot>>)> = {
            let proxies = self.lock();
            ids.iter()
                .filter_map(|id| proxies.get(id).map(|s| (id.clone(), s.clone())))
                .collect()
        };
        self.rebuild_targets(targets).await;
    }

    fn schedule_refresh(&self, proxy: &ProxyId, snapshot: &Snapshot) {
        if let Some(at) = snapshot.refresh_at {
            // The receiver lives as long as `run`; without it nothing rebuilds anyway.
            let _ = self.refresh_tx.send((proxy.clone(), at));
        }
    }

    async fn rebuild_targets(&self, targets: Vec<(ProxyId, watch::Sender<Arc<Snapshot>>)>) {
        for (proxy, sender) in targets {
            match self.source.snapshot(&proxy).await {
                Ok(mut snapshot) => {
                    self.schedule_refresh(&proxy, &snapshot);
                    sender.send_if_modified(|current| {
                        keep_equal_versions(&mut snapshot, current);
                        let changed = current.version != snapshot.version;
                        if changed {
                            tracing::debug!(%proxy, version = %snapshot.version, "xDS: new snapshot");
                            *current = Arc::new(snapshot);
                        }
                        changed
                    });
                }
                Err(SourceError::UnknownDataplane(_)) => {
                    // Its Dataplane is gone: dropping the channel ends the proxy's streams.
                    tracing::info!(%proxy, "xDS: Dataplane deleted; closing its streams");
                    let mut proxies = self.lock();
                    if proxies.get(&proxy).is_some_and(|s| s.same_channel(&sender)) {
                        proxies.remove(&proxy);
                    }
                }
                Err(e) => tracing::warn!(%proxy, error = %e, "xDS: snapshot not rebuilt"),
            }
        }
    }

    /// Follows `store` until `shutdown` flips to true, rebuilding affected proxies.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn ResourceStore>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), mesh_store::StoreError> {
        if *shutdown.borrow() {
            return Ok(());
        }
        let mut watch = store.watch(store.revision())?;
        let mut refresh_rx = self
            .refresh_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("SnapshotCache::run is called once");
        // When each proxy must be rebuilt again (its certificate is due for re-issue).
        let mut deadlines: BTreeMap<SystemTime, BTreeSet<ProxyId>> = BTreeMap::new();
        loop {
            let next_deadline = deadlines.keys().next().map(|at| {
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::Instant::now() + wait
            });
            let first = tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Ok(());
                    }
                    continue;
                }
                event = watch.next() => event,
                Some((proxy, at)) = refresh_rx.recv() => {
                    deadlines.entry(at).or_default().insert(proxy);
                    continue;
                }
                _ = sleep_until_some(next_deadline) => {
                    let now = SystemTime::now();
                    let mut due = BTreeSet::new();
                    while let Some(entry) = deadlines.first_entry() {
                        if *entry.key() > now {
                            break;
                        }
                        due.extend(entry.remove());
                    }
                    self.rebuild_proxies(&due).await;
                    continue;
                }
            };
            let mut meshes = Some(BTreeSet::new());
            let mut mesh_list = false;
            let mut note = |event: Option<Result<mesh_store::ChangeEvent, _>>,
                            watch: &mut mesh_store::Watch|
             -> Result<bool, mesh_store::StoreError> {
                match event {
                    Some(Ok(event)) => {
                        match (touched(&event.resource), meshes.as_mut()) {
                            (Touched::Mesh { mesh, list }, Some(set)) => {
                                set.insert(mesh);
                                mesh_list |= list;
                            }
                            (Touched::All, _) => meshes = None,
                            _ => {}
                        }
                        Ok(true)
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "xDS: store watch interrupted; rebuilding all");
                        *watch = store.watch(store.revision())?;
                        meshes = None;
                        Ok(false)
                    }
                    None => Ok(false),
                }
            };
            let more = note(first, &mut watch)?;
            if more {
                let window = tokio::time::Instant::now() + self.coalesce;
                while let Ok(event) = tokio::time::timeout_at(window, watch.next()).await {
                    if !note(event, &mut watch)? {
                        break;
                    }
                }
            }
            if meshes.as_ref().is_some_and(|m| m.is_empty()) {
                if !more {
                    // The store closed: nothing more will change.
                    let _ = shutdown.wait_for(|stop| *stop).await;
                    return Ok(());
                }
                // Nothing a proxy sees changed.
                continue;
            }
            self.source.invalidate(meshes.as_ref(), mesh_list);
            self.changes.fetch_add(1, Ordering::SeqCst);
            self.rebuild(meshes.as_ref()).await;
        }
    }
}

/// Whether two encodings of a resource of `type_url` are the same message. prost encodes map
/// fields (metadata, JSON log formats, RBAC policies) in hash order, so equal messages can have
/// different bytes; comparing decoded messages ignores that order.
fn same_message(type_url: &str, a: &[u8], b: &[u8]) -> bool {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use prost::Message;
    fn equal<M: Message + Default + PartialEq>(a: &[u8], b: &[u8]) -> bool {
        matches!((M::decode(a), M::decode(b)), (Ok(a), Ok(b)) if a == b)
    }
    match type_url {
        crate::snapshot::LISTENER_TYPE => equal::<Listener>(a, b),
        crate::snapshot::CLUSTER_TYPE => equal::<Cluster>(a, b),
        crate::snapshot::ENDPOINT_TYPE => equal::<ClusterLoadAssignment>(a, b),
        crate::snapshot::ROUTE_TYPE => equal::<RouteConfiguration>(a, b),
        crate::snapshot::SECRET_TYPE => equal::<Secret>(a, b),
        _ => false,
    }
}

/// Gives `snapshot`'s resources that are the same messages as in `previous` the previous bytes
/// and version, so a rebuild that changed nothing but map order pushes nothing (and Envoy does
/// not drain a listener for nothing).
fn keep_equal_versions(snapshot: &mut Snapshot, previous: &Snapshot) {
    let mut kept = false;
    for (type_url, resources) in snapshot.resources.iter_mut() {
        let Some(before) = previous.resources.get(type_url) else {
            continue;
        };
        for (name, resource) in resources.iter_mut() {
            if let Some(old) = before.get(name) {
                if old.version != resource.version
                    && old.named_only == resource.named_only
                    && same_message(type_url, &old.resource.value, &resource.resource.value)
                {
                    *resource = old.clone();
                    kept = true;
                }
            }
        }
    }
    if kept {
        let refresh_at = snapshot.refresh_at;
        let mut sealed = std::mem::take(snapshot).seal();
        sealed.refresh_at = refresh_at;
        *snapshot = sealed;
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::google::protobuf::Struct;

    /// A listener whose metadata map has many entries: its encoding varies with hash order.
    fn listener() -> Listener {
        let mut filter_metadata = std::collections::HashMap::new();
        for i in 0..16 {
            filter_metadata.insert(format!("key-{i}"), Struct::default());
        }
        Listener {
            name: "l".into(),
            metadata: Some(Metadata {
                filter_metadata,
                ..Metadata::default()
            }),
            ..Listener::default()
        }
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.insert(crate::snapshot::LISTENER_TYPE, "l", &listener());
        s.seal()
    }

    #[test]
    fn equal_messages_keep_their_version_whatever_the_map_order() {
        let first = snapshot();
        let mut differs = false;
        for _ in 0..20 {
            let mut next = snapshot();
            differs |= next.version != first.version;
            keep_equal_versions(&mut next, &first);
            assert_eq!(next.version, first.version);
        }
        assert!(
            differs,
            "the encoding never varied: the test proves nothing"
        );
        // A real change still changes the version.
        let mut changed = Snapshot::default();
        let mut l = listener();
        l.name = "l2".into();
        changed.insert(crate::snapshot::LISTENER_TYPE, "l", &l);
        let mut changed = changed.seal();
        keep_equal_versions(&mut changed, &first);
        assert_ne!(changed.version, first.version);
    }
}
