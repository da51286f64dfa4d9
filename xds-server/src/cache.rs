//! Holds the current snapshot of every connected proxy and pushes new ones. [`SnapshotCache::run`]
//! follows the store's ordered watch (never polls): it gathers the meshes a burst of changes
//! touches (coalesced over [`SnapshotCache::coalesce`]), rebuilds the snapshots of the connected
//! proxies of those meshes only, and publishes each one that changed on its proxy's channel. A
//! proxy whose Dataplane was deleted has its channel dropped, which ends its streams.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::ResourceType;
use mesh_store::ResourceStore;
use tokio::sync::watch;

use crate::auth::{ProxyId, ProxyKind};
use crate::snapshot::{Snapshot, SnapshotSource, SourceError};

/// The published snapshots, one channel per connected proxy.
pub struct SnapshotCache {
    source: Arc<dyn SnapshotSource>,
    proxies: Mutex<HashMap<ProxyId, watch::Sender<Arc<Snapshot>>>>,
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
        SnapshotCache {
            source,
            proxies: Mutex::new(HashMap::new()),
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
        let snapshot = Arc::new(self.source.snapshot(proxy).await?);
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
        Ok(sender.subscribe())
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
        for (proxy, sender) in targets {
            match self.source.snapshot(&proxy).await {
                Ok(snapshot) => {
                    sender.send_if_modified(|current| {
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
        let mut watch = store.watch(store.revision())?;
        loop {
            let first = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                event = watch.next() => event,
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
            self.rebuild(meshes.as_ref()).await;
        }
    }
}
