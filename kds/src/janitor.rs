//! The zone-inventory janitor of the global. A zone that disconnects keeps its inventory at the
//! global (so other zones keep routing to its ingresses) until either a grace period has passed
//! with the zone still offline, or the operator deletes the zone's `Zone` resource; then every
//! resource labelled `kuma.io/origin: zone` and `kuma.io/zone: <zone>` is deleted, and the deletes
//! reach the other zones through the normal KDS watch.
//!
//! Whether a zone is online comes from its lease record ([`crate::lease`]: connected, and the
//! lease not run out), which the node holding the zone's stream writes into the global's store,
//! so that in a multi-node global the janitor sees the zones connected to every node; run it on
//! one node only (the Raft leader). Event-driven: it follows the store's watch for lease records
//! and Zone deletions; an online zone has one timer, at its lease's expiry (moved by each
//! renewal), and an offline zone one, at the end of its grace period, cancelled when the zone
//! comes back. The grace period counts from when the zone went offline as its record says (its
//! release, or its lease's expiry), so a janitor started later (a new leader, a restart) does
//! not start it again; a zone with inventory but no record (older versions kept none) gets the
//! whole grace period from the janitor's start.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mesh_api::core::zone_lease::ZoneLeaseSpec;
use mesh_api::{Resource, ResourceType};
use mesh_store::{ChangeKind, ListQuery, ResourceStore, StoreError, Watch};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::lease::{self, Liveness};
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

/// What a zone's timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The zone is online until its lease runs out, unless renewed first.
    LeaseExpiry,
    /// The zone is offline; its grace period ends.
    Removal,
}

/// A zone's timer: its generation (to ignore a stale expiry), what it is for, its task.
#[derive(Debug)]
struct Pending {
    generation: u64,
    due: Due,
    timer: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Timers {
    next_generation: u64,
    pending: HashMap<String, Pending>,
}

/// Removes the inventory of zones gone for longer than the grace period, or deleted by the
/// operator. Cloning shares it; run it once at a time with [`ZoneJanitor::run`].
#[derive(Clone)]
pub struct ZoneJanitor {
    store: Arc<dyn ResourceStore>,
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

/// The lease records the janitor has seen, by zone.
type Leases = HashMap<String, ZoneLeaseSpec>;

impl ZoneJanitor {
    /// A janitor over the global's store (its lease records and inventory).
    pub fn new(store: Arc<dyn ResourceStore>, grace: Duration) -> ZoneJanitor {
        ZoneJanitor {
            store,
            grace,
            timers: Arc::default(),
        }
    }

    pub fn grace_period(&self) -> Duration {
        self.grace
    }

    /// The zones whose inventory is scheduled for removal (offline, within their grace period).
    pub fn scheduled(&self) -> Vec<String> {
        let mut zones: Vec<String> = self
            .lock()
            .pending
            .iter()
            .filter(|(_, p)| p.due == Due::Removal)
            .map(|(z, _)| z.clone())
            .collect();
        zones.sort();
        zones
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows lease records and Zone deletions until `shutdown` resolves (or the store closes),
    /// then cancels its timers. Fails only when it cannot start (listing or watching the store).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), JanitorError> {
        let mut revision = self.store.revision();
        let mut watch = self.store.watch(revision)?;
        let (fired_tx, mut fired_rx) = mpsc::unbounded_channel::<(String, u64)>();
        let mut leases = self.leases().await?;
        let mut zones: BTreeSet<String> = self.zones_with_inventory().await?;
        zones.extend(leases.keys().cloned());
        for zone in &zones {
            self.reconsider(zone, leases.get(zone), &fired_tx);
        }
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                Some((zone, generation)) = fired_rx.recv() => {
                    self.fired(&zone, generation, leases.get(&zone), &fired_tx).await;
                }
                event = watch.next() => match event {
                    Some(Ok(event)) => {
                        revision = event.revision;
                        let name = &event.resource.meta.name;
                        match (event.resource.resource_type(), event.kind) {
                            (ResourceType::ZoneLease, ChangeKind::Deleted) => {
                                // With its Zone resource: nothing left to wait for.
                                leases.remove(name);
                                self.cancel(name);
                            }
                            (ResourceType::ZoneLease, _) => {
                                if let Some(spec) = lease::lease_spec(&event.resource) {
                                    leases.insert(name.clone(), spec.clone());
                                    self.reconsider(name, Some(spec), &fired_tx);
                                }
                            }
                            (ResourceType::Zone, ChangeKind::Deleted) => {
                                self.zone_deleted(name, leases.get(name)).await;
                            }
                            _ => {}
                        }
                    }
                    Some(Err(e)) => match self.rewatch(&e, revision) {
                        Ok((w, from, missed)) => {
                            watch = w;
                            revision = from;
                            if missed {
                                // Lease changes may have been missed too: read them again.
                                match self.leases().await {
                                    Ok(now) => leases = now,
                                    Err(e) => break Err(e.into()),
                                }
                                for zone in leases.keys() {
                                    self.reconsider(zone, leases.get(zone), &fired_tx);
                                }
                            }
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
    /// lagged, from now (with a warning: a Zone deletion may have been missed) otherwise. Says
    /// whether changes were skipped.
    fn rewatch(
        &self,
        error: &StoreError,
        revision: u64,
    ) -> Result<(Watch, u64, bool), JanitorError> {
        let (from, missed) = match error {
            StoreError::Lagged { last_delivered } => (*last_delivered, false),
            other => {
                tracing::warn!(error = %other, "zone janitor: store watch ended; watching again from now");
                (self.store.revision(), true)
            }
        };
        match self.store.watch(from) {
            Ok(w) => Ok((w, from, missed)),
            Err(StoreError::Compacted { .. }) => {
                tracing::warn!(
                    revision,
                    "zone janitor: store watch compacted; watching again from now"
                );
                let now = self.store.revision();
                Ok((self.store.watch(now)?, now, true))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn leases(&self) -> Result<Leases, StoreError> {
        let page = self
            .store
            .list(&ListQuery::all(ResourceType::ZoneLease))
            .await?;
        Ok(page
            .items
            .iter()
            .filter_map(|r| Some((r.meta.name.clone(), lease::lease_spec(r)?.clone())))
            .collect())
    }

    /// A zone's record changed, or its timer fired: while it is online, wait for its lease to
    /// run out (a renewal moves the timer); once offline, for its grace period to end.
    fn reconsider(
        &self,
        zone: &str,
        lease: Option<&ZoneLeaseSpec>,
        fired: &mpsc::UnboundedSender<(String, u64)>,
    ) {
        let now = Utc::now();
        match lease.map(|l| lease::liveness(l, now)) {
            Some(Liveness::Online { until, .. }) => {
                let wait = (until - now).to_std().unwrap_or_default();
                let was = self.arm(zone, Due::LeaseExpiry, wait, fired);
                if was == Some(Due::Removal) {
                    tracing::info!(%zone, "zone back online; its inventory stays");
                }
            }
            Some(Liveness::Offline { since }) => self.schedule_removal(zone, since, now, fired),
            None => self.schedule_removal(zone, None, now, fired),
        }
    }

    /// Starts the grace timer of an offline zone (offline since `since`, or now when unknown),
    /// unless it runs already.
    fn schedule_removal(
        &self,
        zone: &str,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        fired: &mpsc::UnboundedSender<(String, u64)>,
    ) {
        if self
            .lock()
            .pending
            .get(zone)
            .is_some_and(|p| p.due == Due::Removal)
        {
            return;
        }
        let offline_for = since
            .and_then(|since| (now - since).to_std().ok())
            .unwrap_or_default();
        let wait = self.grace.saturating_sub(offline_for);
        self.arm(zone, Due::Removal, wait, fired);
        tracing::info!(%zone, grace = ?self.grace, remaining = ?wait, "zone offline; its inventory is removed unless it returns within the grace period");
    }

    /// Replaces the zone's timer with one for `due` in `wait`; returns what the old one was for.
    fn arm(
        &self,
        zone: &str,
        due: Due,
        wait: Duration,
        fired: &mpsc::UnboundedSender<(String, u64)>,
    ) -> Option<Due> {
        let mut timers = self.lock();
        timers.next_generation += 1;
        let generation = timers.next_generation;
        let (tx, name) = (fired.clone(), zone.to_owned());
        let timer = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = tx.send((name, generation));
        });
        let old = timers.pending.insert(
            zone.to_owned(),
            Pending {
                generation,
                due,
                timer,
            },
        );
        old.map(|old| {
            old.timer.abort();
            old.due
        })
    }

    fn cancel(&self, zone: &str) {
        if let Some(pending) = self.lock().pending.remove(zone) {
            pending.timer.abort();
        }
    }

    async fn fired(
        &self,
        zone: &str,
        generation: u64,
        lease: Option<&ZoneLeaseSpec>,
        fired: &mpsc::UnboundedSender<(String, u64)>,
    ) {
        let due = {
            let mut timers = self.lock();
            match timers.pending.get(zone) {
                Some(p) if p.generation == generation => {
                    let due = p.due;
                    timers.pending.remove(zone);
                    due
                }
                // Cancelled, or superseded by a later timer.
                _ => return,
            }
        };
        match due {
            // Run out (or, a timer being a hair early, not quite yet): see again.
            Due::LeaseExpiry => self.reconsider(zone, lease, fired),
            Due::Removal => {
                if lease.is_some_and(|l| {
                    matches!(lease::liveness(l, Utc::now()), Liveness::Online { .. })
                }) {
                    return;
                }
                self.remove_logged(zone, "grace period ended").await;
            }
        }
    }

    async fn zone_deleted(&self, zone: &str, lease: Option<&ZoneLeaseSpec>) {
        self.cancel(zone);
        if lease.is_some_and(|l| matches!(lease::liveness(l, Utc::now()), Liveness::Online { .. }))
        {
            tracing::warn!(%zone, "Zone resource deleted while the zone is connected; revoke its token to keep it out");
        }
        self.remove_logged(zone, "Zone resource deleted").await;
        // Its lease record goes too (the node holding a connection still open writes it again).
        match self.store.delete(&lease::lease_key(zone), None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => tracing::warn!(%zone, error = %e, "could not delete the zone's lease record"),
        }
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
    use crate::lease::{LeaseKeeper, LeaseTiming};
    use crate::status::ZoneStatusRegistry;
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

    /// A janitor over `store`, running until the returned sender is used (or dropped).
    fn run_janitor(
        store: &Arc<dyn ResourceStore>,
        grace: Duration,
    ) -> (
        ZoneJanitor,
        tokio::sync::oneshot::Sender<()>,
        JoinHandle<Result<(), JanitorError>>,
    ) {
        let janitor = ZoneJanitor::new(store.clone(), grace);
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
        (janitor, tx, task)
    }

    struct Setup {
        store: Arc<dyn ResourceStore>,
        status: ZoneStatusRegistry,
        janitor: ZoneJanitor,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<Result<(), JanitorError>>,
        keeper_stop: Option<tokio::sync::oneshot::Sender<()>>,
        keeper: JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    /// Long enough that no lease runs out or is renewed within a test, paused clock included:
    /// a zone is online exactly while its stream is open.
    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    /// Waits until the lease record of `zone` says `connected`.
    async fn lease_says(store: &Arc<dyn ResourceStore>, zone: &str, connected: bool) {
        test_support::eventually("the zone's lease", Duration::from_secs(10), || async {
            let r = store.get(&lease::lease_key(zone)).await.expect("get")?;
            (lease::lease_spec(&r)?.connected == connected).then_some(())
        })
        .await
        .expect("lease");
    }

    /// A sled store holding a Dataplane of each of `zones` and a Mesh; `online` zones have a
    /// stream open (their lease written by a keeper, as the node holding them does); then the
    /// janitor starts.
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
        let (keeper_stop, keeper_stopped) = tokio::sync::oneshot::channel::<()>();
        let keeper = tokio::spawn({
            let keeper = LeaseKeeper::new(store.clone(), status.clone(), 1, LeaseTiming::new(YEAR));
            async move {
                keeper
                    .run(async {
                        let _ = keeper_stopped.await;
                    })
                    .await
            }
        });
        for zone in online {
            status.entry(zone).stream_opened();
            lease_says(&store, zone, true).await;
        }
        let (janitor, tx, task) = run_janitor(&store, grace);
        Setup {
            store,
            status,
            janitor,
            stop: Some(tx),
            task,
            keeper_stop: Some(keeper_stop),
            keeper,
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
            if let Some(tx) = self.keeper_stop.take() {
                let _ = tx.send(());
            }
            (&mut self.keeper).await.expect("joins");
        }
    }

    fn disconnected_lease(zone: &str, at: DateTime<Utc>) -> Resource {
        let spec = ZoneLeaseSpec {
            global_node: 2,
            last_disconnected: Some(at),
            ..ZoneLeaseSpec::default()
        };
        Resource::new(zone, None, mesh_api::Spec::ZoneLease(spec))
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

    #[tokio::test]
    async fn a_zone_held_by_a_node_that_died_goes_when_its_lease_runs_out() {
        let grace = Duration::from_millis(200);
        let s = setup(&["zone-1"], &[], grace).await;
        // Another node of the global holds zone-1's stream, with a short lease.
        let other = ZoneStatusRegistry::new();
        let keeper = LeaseKeeper::new(
            s.store.clone(),
            other.clone(),
            2,
            LeaseTiming::new(Duration::from_millis(400)),
        );
        let (dead_tx, dead) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn(async move {
            keeper
                .run(async {
                    let _ = dead.await;
                })
                .await
        });
        other.entry("zone-1").stream_opened();
        lease_says(&s.store, "zone-1", true).await;
        s.scheduled_becomes(&[]).await;
        // The holder dies: nothing more is written, the lease runs out, then the grace.
        let _ = dead_tx.send(());
        holder.await.expect("joins");
        let record = s
            .store
            .get(&lease::lease_key("zone-1"))
            .await
            .expect("get")
            .expect("lease");
        let expires = lease::lease_spec(&record)
            .and_then(|l| l.lease_expires)
            .expect("connected");
        s.gone("zone-1").await;
        let grace_ends = expires + chrono::TimeDelta::from_std(grace).expect("small");
        assert!(
            Utc::now() >= grace_ends,
            "removed before the lease ran out and the grace passed"
        );
        s.scheduled_becomes(&[]).await;
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_counts_from_when_the_zone_went_offline() {
        let grace = Duration::from_secs(3600);
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn ResourceStore> = Arc::new(SledStore::open(dir.path()).expect("opens"));
        let mut docs = mesh_api::parse_documents("type: Mesh\nname: default\n");
        store
            .create(docs.remove(0).expect("parses").resource)
            .await
            .expect("mesh");
        // zone-1 left two hours ago, zone-2 half an hour ago (as a new leader's janitor finds).
        let now = Utc::now();
        for (zone, ago) in [("zone-1", 7200), ("zone-2", 1800)] {
            store.create(dataplane(zone)).await.expect("dataplane");
            let at = now - chrono::TimeDelta::seconds(ago);
            store
                .create(disconnected_lease(zone, at))
                .await
                .expect("lease");
        }
        let (janitor, tx, task) = run_janitor(&store, grace);
        let present = |zone: &'static str| {
            let store = store.clone();
            async move { store.get(&dp_key(zone)).await.expect("get").is_some() }
        };
        // zone-1's grace ended before the janitor started: removed at once.
        test_support::eventually(
            "zone-1's inventory to go",
            Duration::from_secs(10),
            || async { (!present("zone-1").await).then_some(()) },
        )
        .await
        .expect("removed");
        // zone-2 has the rest of its grace, not a new one.
        assert_eq!(janitor.scheduled(), vec!["zone-2".to_owned()]);
        tokio::time::advance(Duration::from_secs(1700)).await;
        assert!(present("zone-2").await);
        tokio::time::advance(Duration::from_secs(200)).await;
        test_support::eventually(
            "zone-2's inventory to go",
            Duration::from_secs(10),
            || async { (!present("zone-2").await).then_some(()) },
        )
        .await
        .expect("removed");
        let _ = tx.send(());
        task.await.expect("joins").expect("runs");
    }
}
