//! The zone-inventory janitor of the global. A zone that disconnects keeps its inventory at the
//! global (so other zones keep routing to its ingresses) until either a grace period has passed
//! with the zone still offline, or the operator deletes the zone's `Zone` resource; then every
//! resource labelled `kuma.io/origin: zone` and `kuma.io/zone: <zone>` is deleted, and the deletes
//! reach the other zones through the normal KDS watch. Event-driven: it follows the
//! [`ZoneStatusRegistry`]'s online/offline transitions and the store's watch (for Zone deletions);
//! an offline zone has one timer, cancelled when the zone comes back. At start it also schedules
//! every zone that has inventory in the store but is not connected (e.g. after a global restart).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::{Resource, ResourceType};
use mesh_store::{ChangeKind, ListQuery, ResourceStore, StoreError, Watch};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::status::ZoneStatusRegistry;
use crate::sync::{self, ApplyError};
use crate::wire;

/// Why the janitor could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum JanitorError {
    #[error("zone janitor: store: {0}")]
    Store(#[from] StoreError),
    #[error("zone janitor: removing {resource} of zone {zone}: {reason}")]
    Remove {
        zone: String,
        resource: String,
        reason: String,
    },
}

/// A scheduled removal: its generation (to ignore a stale expiry) and its timer.
#[derive(Debug)]
struct Pending {
    generation: u64,
    timer: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Timers {
    next_generation: u64,
    pending: HashMap<String, Pending>,
}

/// Removes the inventory of zones gone for longer than the grace period, or deleted by the
/// operator. Cloning shares it; run it once with [`ZoneJanitor::run`].
#[derive(Clone)]
pub struct ZoneJanitor {
    store: Arc<dyn ResourceStore>,
    status: ZoneStatusRegistry,
    grace: Duration,
    timers: Arc<Mutex<Timers>>,
}

impl std::fmt::Debug for ZoneJanitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneJanitor")
            .field("grace", &self.grace)
            .field("scheduled", &self.scheduled())
            .finish_non_exhaustive()
    }
}

impl ZoneJanitor {
    /// A janitor over the global's store, following the KDS server's status registry.
    pub fn new(
        store: Arc<dyn ResourceStore>,
        status: ZoneStatusRegistry,
        grace: Duration,
    ) -> ZoneJanitor {
        ZoneJanitor {
            store,
            status,
            grace,
            timers: Arc::default(),
        }
    }

    pub fn grace_period(&self) -> Duration {
        self.grace
    }

    /// The zones whose inventory is scheduled for removal (offline, within their grace period).
    pub fn scheduled(&self) -> Vec<String> {
        let mut zones: Vec<String> = self.lock().pending.keys().cloned().collect();
        zones.sort();
        zones
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows zone transitions and Zone deletions until `shutdown` resolves (or the store
    /// closes). Fails only when it cannot start (listing or watching the store).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), JanitorError> {
        let mut transitions = self.status.subscribe();
        let mut revision = self.store.revision();
        let mut watch = self.store.watch(revision)?;
        let (expired_tx, mut expired_rx) = mpsc::unbounded_channel::<(String, u64)>();
        for zone in self.zones_with_inventory().await? {
            if !self.status.is_online(&zone) {
                self.schedule(&zone, &expired_tx);
            }
        }
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                t = transitions.recv() => match t {
                    Ok(t) => self.reconsider(&t.zone, &expired_tx),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for s in self.status.snapshot() {
                            self.reconsider(&s.zone, &expired_tx);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break Ok(()),
                },
                Some((zone, generation)) = expired_rx.recv() => {
                    self.expired(&zone, generation).await;
                }
                event = watch.next() => match event {
                    Some(Ok(event)) => {
                        revision = event.revision;
                        if event.kind == ChangeKind::Deleted
                            && event.resource.resource_type() == ResourceType::Zone
                        {
                            self.zone_deleted(&event.resource.meta.name).await;
                        }
                    }
                    Some(Err(e)) => match self.rewatch(&e, revision) {
                        Ok((w, from)) => {
                            watch = w;
                            revision = from;
                        }
                        Err(e) => break Err(e),
                    },
                    None => break Ok(()),
                },
            }
        };
        for (_, pending) in self.lock().pending.drain() {
            pending.timer.abort();
        }
        result
    }

    /// Watches again after a watch error: from the last delivered revision when the watcher
    /// lagged, from now (with a warning: a Zone deletion may have been missed) otherwise.
    fn rewatch(&self, error: &StoreError, revision: u64) -> Result<(Watch, u64), JanitorError> {
        let from = match error {
            StoreError::Lagged { last_delivered } => *last_delivered,
            other => {
                tracing::warn!(error = %other, "zone janitor: store watch ended; watching again from now");
                self.store.revision()
            }
        };
        match self.store.watch(from) {
            Ok(w) => Ok((w, from)),
            Err(StoreError::Compacted { .. }) => {
                tracing::warn!(
                    revision,
                    "zone janitor: store watch compacted; watching again from now"
                );
                let now = self.store.revision();
                Ok((self.store.watch(now)?, now))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A zone changed state: schedule its removal when offline, cancel it when online.
    fn reconsider(&self, zone: &str, expired: &mpsc::UnboundedSender<(String, u64)>) {
        if self.status.is_online(zone) {
            if let Some(pending) = self.lock().pending.remove(zone) {
                pending.timer.abort();
                tracing::info!(%zone, "zone back online; its inventory stays");
            }
        } else {
            self.schedule(zone, expired);
        }
    }

    /// Starts the grace timer of an offline zone, unless it runs already.
    fn schedule(&self, zone: &str, expired: &mpsc::UnboundedSender<(String, u64)>) {
        let mut timers = self.lock();
        if timers.pending.contains_key(zone) {
            return;
        }
        timers.next_generation += 1;
        let generation = timers.next_generation;
        let (grace, tx, name) = (self.grace, expired.clone(), zone.to_owned());
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send((name, generation));
        });
        timers
            .pending
            .insert(zone.to_owned(), Pending { generation, timer });
        tracing::info!(%zone, grace = ?self.grace, "zone offline; its inventory is removed unless it returns within the grace period");
    }

    async fn expired(&self, zone: &str, generation: u64) {
        {
            let mut timers = self.lock();
            match timers.pending.get(zone) {
                Some(p) if p.generation == generation => {
                    timers.pending.remove(zone);
                }
                // Cancelled, or superseded by a later schedule.
                _ => return,
            }
        }
        if self.status.is_online(zone) {
            return;
        }
        self.remove_logged(zone, "grace period ended").await;
    }

    async fn zone_deleted(&self, zone: &str) {
        if let Some(pending) = self.lock().pending.remove(zone) {
            pending.timer.abort();
        }
        if self.status.is_online(zone) {
            tracing::warn!(%zone, "Zone resource deleted while the zone is connected; revoke its token to keep it out");
        }
        self.remove_logged(zone, "Zone resource deleted").await;
    }

    async fn remove_logged(&self, zone: &str, why: &str) {
        match self.remove_inventory(zone).await {
            Ok(0) => tracing::debug!(%zone, why, "zone had no inventory to remove"),
            Ok(removed) => tracing::info!(%zone, removed, why, "removed the zone's inventory"),
            Err(e) => {
                tracing::error!(%zone, error = %e, why, "could not remove the zone's inventory")
            }
        }
    }

    /// Deletes every resource labelled as inventory of `zone` (origin zone); returns how many.
    pub async fn remove_inventory(&self, zone: &str) -> Result<usize, JanitorError> {
        let mut removed = 0;
        for rtype in ResourceType::ALL.iter().copied() {
            for resource in self.inventory(rtype, Some(zone)).await? {
                let key = resource.key();
                let guard = |existing: &Resource| {
                    if wire::owning_zone(existing) == Some(zone) {
                        Ok(())
                    } else {
                        Err(ApplyError::Forbidden(format!("{key} changed owner")))
                    }
                };
                sync::delete_guarded(self.store.as_ref(), &key, guard)
                    .await
                    .map_err(|e| JanitorError::Remove {
                        zone: zone.to_owned(),
                        resource: key.to_string(),
                        reason: e.to_string(),
                    })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Resources of `rtype` labelled origin zone (and with `zone`, when given).
    async fn inventory(
        &self,
        rtype: ResourceType,
        zone: Option<&str>,
    ) -> Result<Vec<Resource>, StoreError> {
        let mut query = ListQuery::all(rtype);
        query.labels.insert(
            mesh_api::ORIGIN_LABEL.to_owned(),
            wire::ORIGIN_ZONE.to_owned(),
        );
        if let Some(zone) = zone {
            query
                .labels
                .insert(mesh_api::ZONE_LABEL.to_owned(), zone.to_owned());
        }
        Ok(self.store.list(&query).await?.items)
    }

    async fn zones_with_inventory(&self) -> Result<BTreeSet<String>, StoreError> {
        let mut zones = BTreeSet::new();
        for rtype in ResourceType::ALL.iter().copied() {
            for r in self.inventory(rtype, None).await? {
                if let Some(zone) = wire::owning_zone(&r) {
                    zones.insert(zone.to_owned());
                }
            }
        }
        Ok(zones)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::ResourceKey;
    use mesh_store::SledStore;

    fn dataplane(zone: &str) -> Resource {
        let yaml = "type: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 80\n      tags:\n        kuma.io/service: web\n";
        let mut docs = mesh_api::parse_documents(yaml);
        let reported = docs.remove(0).expect("parses").resource;
        wire::stored_at_global(reported, zone)
    }

    fn dp_key(zone: &str) -> ResourceKey {
        ResourceKey::new(
            ResourceType::Dataplane,
            Some("default"),
            wire::global_name("web", zone),
        )
    }

    struct Setup {
        store: Arc<dyn ResourceStore>,
        status: ZoneStatusRegistry,
        janitor: ZoneJanitor,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<Result<(), JanitorError>>,
        _dir: tempfile::TempDir,
    }

    /// A sled store holding a Dataplane of each of `zones` and a Mesh; `online` zones have a
    /// stream open; then the janitor starts.
    async fn setup(zones: &[&str], online: &[&str], grace: Duration) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn ResourceStore> = Arc::new(SledStore::open(dir.path()).expect("opens"));
        let mut docs = mesh_api::parse_documents("type: Mesh\nname: default\n");
        store
            .create(docs.remove(0).expect("parses").resource)
            .await
            .expect("mesh");
        for zone in zones {
            store.create(dataplane(zone)).await.expect("dataplane");
        }
        let status = ZoneStatusRegistry::new();
        for zone in online {
            status.entry(zone).stream_opened();
        }
        let janitor = ZoneJanitor::new(store.clone(), status.clone(), grace);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let janitor = janitor.clone();
            async move {
                janitor
                    .run(async {
                        let _ = rx.await;
                    })
                    .await
            }
        });
        Setup {
            store,
            status,
            janitor,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    impl Setup {
        async fn present(&self, zone: &str) -> bool {
            self.store.get(&dp_key(zone)).await.expect("get").is_some()
        }

        async fn scheduled_becomes(&self, zones: &[&str]) {
            let want: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
            test_support::eventually("the janitor's schedule", Duration::from_secs(10), || {
                let now = self.janitor.scheduled();
                let ok = now == want;
                async move { ok.then_some(()) }
            })
            .await
            .expect("schedule");
        }

        async fn gone(&self, zone: &str) {
            test_support::eventually("the inventory to go", Duration::from_secs(10), || async {
                (!self.present(zone).await).then_some(())
            })
            .await
            .expect("removed");
        }

        async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            (&mut self.task).await.expect("joins").expect("runs");
        }
    }

    #[tokio::test]
    async fn offline_zones_lose_their_inventory_after_the_grace_period() {
        let s = setup(
            &["zone-1", "zone-2"],
            &["zone-2"],
            Duration::from_millis(50),
        )
        .await;
        s.gone("zone-1").await;
        assert!(
            s.present("zone-2").await,
            "an online zone keeps its inventory"
        );
        let mesh = ResourceKey::new(ResourceType::Mesh, None, "default");
        assert!(s.store.get(&mesh).await.expect("get").is_some());

        // zone-2 leaves: gone after the grace too.
        s.status.entry("zone-2").stream_closed();
        s.gone("zone-2").await;
        s.scheduled_becomes(&[]).await;
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_zone_back_within_the_grace_period_keeps_its_inventory() {
        let grace = Duration::from_secs(3600);
        // Offline at the janitor's start (as after a global restart): scheduled.
        let s = setup(&["zone-1"], &[], grace).await;
        s.scheduled_becomes(&["zone-1"]).await;
        // Back before the grace ends: cancelled, and still there well after the grace.
        let entry = s.status.entry("zone-1");
        entry.stream_opened();
        s.scheduled_becomes(&[]).await;
        tokio::time::advance(grace * 2).await;
        s.scheduled_becomes(&[]).await;
        assert!(s.present("zone-1").await);

        // Gone again, for longer than the grace this time: removed.
        entry.stream_closed();
        s.scheduled_becomes(&["zone-1"]).await;
        tokio::time::advance(grace + Duration::from_secs(1)).await;
        s.gone("zone-1").await;
        s.scheduled_becomes(&[]).await;
        s.stop().await;
    }

    #[tokio::test]
    async fn deleting_the_zone_resource_removes_its_inventory_at_once() {
        let s = setup(&["zone-1", "zone-2"], &[], Duration::from_secs(3600)).await;
        let mut docs = mesh_api::parse_documents("type: Zone\nname: zone-1\n");
        let zone = s
            .store
            .create(docs.remove(0).expect("parses").resource)
            .await
            .expect("zone");
        s.scheduled_becomes(&["zone-1", "zone-2"]).await;
        s.store.delete(&zone.key(), None).await.expect("deleted");
        s.gone("zone-1").await;
        s.scheduled_becomes(&["zone-2"]).await;
        assert!(s.present("zone-2").await);
        s.stop().await;
    }
}
