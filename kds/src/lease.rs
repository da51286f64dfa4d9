//! Zone leases: which node of the global holds each zone's KDS stream, kept as `ZoneLease`
//! resources (one per zone, named after it) in the global's store, which in a multi-node global
//! is the Raft-replicated one. So every node knows every zone's connection state, and the zone
//! janitor ([`crate::janitor`], run by the Raft leader) can tell a zone that left from one
//! connected to another node. The type's sync direction is `Local`: KDS never sends it to zones.
//!
//! [`LeaseKeeper`] runs on every node of the global. It follows this node's
//! [`ZoneStatusRegistry`] and, for each zone connected here:
//!
//! - claims the zone's record when a connection opens: this node's id, a new connection id,
//!   connected since, and a lease until now + [`LeaseTiming::lease`];
//! - renews the lease every [`LeaseTiming::renew_every`] (a third of the lease, so two renewals
//!   can be late or lost before it runs out) while the connection stays open: one small write
//!   per zone per renewal, none per KDS message;
//! - releases the record when the connection closes (`connected: false`, `lastDisconnected`).
//!
//! Every write is conditional on the version this node last wrote. A zone that reconnects to
//! another node before the old lease ran out is claimed there: the newest connection wins, and
//! the old holder, whose next renewal finds another connection id in the record, stops renewing
//! and never releases what it no longer holds. A record deleted while its connection is open
//! (its Zone resource was deleted) is written again at the next renewal. A refused handshake is
//! recorded too (`refused`, once per reason). A node that stops writes nothing: its zones redial
//! another node, which claims them, or their leases run out, which is also what happens when a
//! node dies.
//!
//! [`liveness`] says what a record means at a given time: online while connected and its lease
//! has not run out. Leases compare wall-clock times written by one node with another node's
//! clock, so node clocks must agree to well within the lease minus the renewal interval (10 s
//! by default).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use mesh_api::core::zone_lease::ZoneLeaseSpec;
use mesh_api::{Resource, ResourceKey, ResourceType, Spec};
use mesh_store::{ResourceStore, StoreError};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::status::{ZoneStatus, ZoneStatusRegistry};

/// The lease a node writes for a zone connected to it, unless configured otherwise: as long as
/// KDS's watchdog, so a node that dies is taken for gone about when its zones, having noticed,
/// redial another node.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// How long to wait before writing again after the store refused a write (no leader yet).
const RETRY: Duration = Duration::from_secs(1);

/// How many times a write is tried again when another writer changed the record between this
/// node's read and its write.
const RACE_TRIES: u32 = 5;

/// How long a lease lasts and how often its holder renews it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub lease: Duration,
    pub renew_every: Duration,
}

impl LeaseTiming {
    /// A lease of `lease`, renewed every third of it.
    pub fn new(lease: Duration) -> LeaseTiming {
        LeaseTiming {
            lease,
            renew_every: lease / 3,
        }
    }
}

impl Default for LeaseTiming {
    fn default() -> LeaseTiming {
        LeaseTiming::new(DEFAULT_LEASE)
    }
}

/// The key of a zone's lease record.
pub fn lease_key(zone: &str) -> ResourceKey {
    ResourceKey::new(ResourceType::ZoneLease, None, zone)
}

/// The lease a resource holds, if it is a ZoneLease.
pub fn lease_spec(resource: &Resource) -> Option<&ZoneLeaseSpec> {
    match &resource.spec {
        Spec::ZoneLease(spec) => Some(spec),
        _ => None,
    }
}

/// What a lease record says about its zone at some time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Connected to global node `node`, counted so until `until` unless renewed.
    Online { node: u64, until: DateTime<Utc> },
    /// Not connected since `since` (when its holder released it, or its lease ran out; `None`
    /// when the record does not say).
    Offline { since: Option<DateTime<Utc>> },
}

/// What `lease` says about its zone at `now`.
pub fn liveness(lease: &ZoneLeaseSpec, now: DateTime<Utc>) -> Liveness {
    match (lease.connected, lease.lease_expires) {
        (true, Some(until)) if until > now => Liveness::Online {
            node: lease.global_node,
            until,
        },
        (true, Some(until)) => Liveness::Offline { since: Some(until) },
        // Not written by a keeper (validation refuses it); no lease, so not online.
        (true, None) => Liveness::Offline {
            since: lease.renewed.or(lease.connected_since),
        },
        (false, _) => Liveness::Offline {
            since: lease.last_disconnected,
        },
    }
}

/// `t + d`, saturating.
fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn lease_resource(zone: &str, spec: ZoneLeaseSpec, version: u64) -> Resource {
    let mut resource = Resource::new(zone, None, Spec::ZoneLease(spec));
    resource.meta.version = version;
    resource
}

/// Keeps the lease records of the zones connected to this node of the global. Cloning shares
/// it; run it once with [`LeaseKeeper::run`].
#[derive(Clone)]
pub struct LeaseKeeper {
    inner: Arc<Keeper>,
}

struct Keeper {
    store: Arc<dyn ResourceStore>,
    status: ZoneStatusRegistry,
    node: u64,
    timing: LeaseTiming,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("node", &self.inner.node)
            .field("timing", &self.inner.timing)
            .finish_non_exhaustive()
    }
}

/// What the registry says of a zone on this node, as far as its lease is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Wanted {
    online: bool,
    /// The registry's connection count: a new value is a new connection.
    connection: u64,
    since: Option<DateTime<Utc>>,
    disconnected: Option<DateTime<Utc>>,
    refused: Option<String>,
}

impl Wanted {
    fn of(status: &ZoneStatus) -> Wanted {
        Wanted {
            online: status.online,
            connection: status.connections,
            since: status.connected_since,
            disconnected: status.last_disconnected,
            refused: status.refused.clone(),
        }
    }
}

/// The record this node holds for one of its connections.
#[derive(Debug, Clone)]
struct Held {
    /// Which connection (the registry's count).
    connection: u64,
    /// The record as this node last wrote it.
    spec: ZoneLeaseSpec,
    version: u64,
    renew_at: Instant,
}

/// What a zone's keeper does next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Claim,
    Renew,
    Release,
    RecordRefusal(String),
    Idle,
}

/// The next step for a zone: claim a new connection's record (unless that connection already
/// lost it to a newer one elsewhere), renew the one held, release it once the zone is gone from
/// this node, record a refusal not yet recorded.
fn next_step(
    wanted: &Wanted,
    held: Option<&Held>,
    lost: Option<u64>,
    recorded: Option<&str>,
) -> Step {
    if wanted.online {
        match held {
            Some(h) if h.connection == wanted.connection => Step::Renew,
            _ if lost == Some(wanted.connection) => Step::Idle,
            _ => Step::Claim,
        }
    } else if held.is_some() {
        Step::Release
    } else {
        match &wanted.refused {
            Some(why) if recorded != Some(why.as_str()) => Step::RecordRefusal(why.clone()),
            _ => Step::Idle,
        }
    }
}

/// How a renewal went.
#[derive(Debug)]
enum Renewal {
    Renewed(Held),
    /// Another connection (of global node `node`) holds the record now.
    Lost {
        node: u64,
    },
}

fn is_race(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Conflict { .. } | StoreError::AlreadyExists(_) | StoreError::NotFound(_)
    )
}

impl LeaseKeeper {
    /// A keeper writing `node`'s leases into `store` for the zones `status` says are connected.
    pub fn new(
        store: Arc<dyn ResourceStore>,
        status: ZoneStatusRegistry,
        node: u64,
        timing: LeaseTiming,
    ) -> LeaseKeeper {
        LeaseKeeper {
            inner: Arc::new(Keeper {
                store,
                status,
                node,
                timing,
            }),
        }
    }

    pub fn timing(&self) -> LeaseTiming {
        self.inner.timing
    }

    /// Follows the registry until `shutdown` resolves, then stops every zone's keeper without
    /// writing anything more (a stopping node leaves its leases to run out, or to be claimed by
    /// the node its zones redial).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut transitions = self.inner.status.subscribe();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut zones: HashMap<String, watch::Sender<Wanted>> = HashMap::new();
        let mut refresh = |zone: &str, tasks: &mut JoinSet<()>| {
            let Some(status) = self.inner.status.zone(zone) else {
                return;
            };
            let wanted = Wanted::of(&status);
            match zones.get(zone) {
                Some(tx) => {
                    tx.send_if_modified(|w| {
                        let changed = *w != wanted;
                        *w = wanted;
                        changed
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(wanted);
                    zones.insert(zone.to_owned(), tx);
                    tasks.spawn(keep_zone(
                        self.inner.clone(),
                        zone.to_owned(),
                        rx,
                        stop_rx.clone(),
                    ));
                }
            }
        };
        for status in self.inner.status.snapshot() {
            refresh(&status.zone, &mut tasks);
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                t = transitions.recv() => match t {
                    Ok(t) => refresh(&t.zone, &mut tasks),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for status in self.inner.status.snapshot() {
                            refresh(&status.zone, &mut tasks);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        stop_tx.send_replace(true);
        tasks.shutdown().await;
    }
}

/// Keeps one zone's record as the registry's view of it changes, until `stop`.
async fn keep_zone(
    keeper: Arc<Keeper>,
    zone: String,
    mut wanted: watch::Receiver<Wanted>,
    mut stop: watch::Receiver<bool>,
) {
    let mut held: Option<Held> = None;
    // The connection whose record a newer connection elsewhere took.
    let mut lost: Option<u64> = None;
    // The refusal this node last recorded.
    let mut recorded: Option<String> = None;
    let mut retry_at: Option<Instant> = None;
    let renew_retry = RETRY.min(keeper.timing.renew_every);
    loop {
        let want = wanted.borrow_and_update().clone();
        let step = next_step(&want, held.as_ref(), lost, recorded.as_deref());
        let due = match (&step, &held) {
            (Step::Idle, _) => None,
            (Step::Renew, Some(h)) => Some(retry_at.unwrap_or(h.renew_at)),
            _ => Some(retry_at.unwrap_or_else(Instant::now)),
        };
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            changed = wanted.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = sleep_until_opt(due) => {}
        }
        if *stop.borrow() {
            return;
        }
        retry_at = None;
        match step {
            Step::Idle => {}
            Step::Claim => match keeper.claim(&zone, &want).await {
                Ok(h) => {
                    tracing::info!(%zone, node = keeper.node, connection = %h.spec.connection, "zone lease claimed");
                    held = Some(h);
                    lost = None;
                    recorded = None;
                }
                Err(e) => {
                    tracing::warn!(%zone, error = %e, "cannot claim the zone's lease; retrying");
                    retry_at = Some(Instant::now() + RETRY);
                }
            },
            Step::Renew => {
                let Some(h) = held.take() else { continue };
                match keeper.renew(&zone, &h).await {
                    Ok(Renewal::Renewed(h)) => held = Some(h),
                    Ok(Renewal::Lost { node }) => {
                        tracing::info!(%zone, node = keeper.node, holder = node, "the zone's lease was taken by a newer connection; no longer renewing it");
                        lost = Some(h.connection);
                    }
                    Err(e) => {
                        tracing::warn!(%zone, error = %e, "cannot renew the zone's lease; retrying");
                        held = Some(h);
                        retry_at = Some(Instant::now() + renew_retry);
                    }
                }
            }
            Step::Release => {
                let Some(h) = held.take() else { continue };
                match keeper.release(&zone, &h, want.disconnected).await {
                    Ok(()) => tracing::info!(%zone, node = keeper.node, "zone lease released"),
                    Err(e) => {
                        tracing::warn!(%zone, error = %e, "cannot release the zone's lease; retrying");
                        held = Some(h);
                        retry_at = Some(Instant::now() + RETRY);
                    }
                }
            }
            Step::RecordRefusal(why) => match keeper.record_refusal(&zone, &why).await {
                Ok(()) => recorded = Some(why),
                Err(e) => {
                    tracing::warn!(%zone, error = %e, "cannot record the zone's refusal; retrying");
                    retry_at = Some(Instant::now() + RETRY);
                }
            },
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Keeper {
    fn renewed(&self, connection: u64, spec: ZoneLeaseSpec, stored: &Resource) -> Held {
        Held {
            connection,
            spec,
            version: stored.meta.version,
            renew_at: Instant::now() + self.timing.renew_every,
        }
    }

    /// Writes `spec` over whatever the record holds (version 0: it does not exist).
    async fn put(
        &self,
        zone: &str,
        spec: ZoneLeaseSpec,
        version: u64,
    ) -> Result<Resource, StoreError> {
        let resource = lease_resource(zone, spec, version);
        if version == 0 {
            self.store.create(resource).await
        } else {
            self.store.update(resource).await
        }
    }

    /// The record's version and lease (version 0: none).
    async fn read(&self, zone: &str) -> Result<(u64, Option<ZoneLeaseSpec>), StoreError> {
        Ok(match self.store.get(&lease_key(zone)).await? {
            Some(r) => (r.meta.version, lease_spec(&r).cloned()),
            None => (0, None),
        })
    }

    /// Takes the record for a new connection of this node, whoever held it.
    async fn claim(&self, zone: &str, wanted: &Wanted) -> Result<Held, StoreError> {
        let connection = format!("{}-{:016x}", self.node, rand::random::<u64>());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (version, previous) = self.read(zone).await?;
            let now = Utc::now();
            let since = wanted.since.unwrap_or(now);
            let spec = ZoneLeaseSpec {
                global_node: self.node,
                connection: connection.clone(),
                connected: true,
                connected_since: Some(since),
                last_connected: Some(since),
                last_disconnected: previous.and_then(|p| p.last_disconnected),
                renewed: Some(now),
                lease_expires: Some(later(now, self.timing.lease)),
                refused: None,
            };
            match self.put(zone, spec.clone(), version).await {
                Ok(stored) => return Ok(self.renewed(wanted.connection, spec, &stored)),
                Err(e) if is_race(&e) && attempt < RACE_TRIES => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Extends the held lease, unless another connection holds the record now.
    async fn renew(&self, zone: &str, held: &Held) -> Result<Renewal, StoreError> {
        let mut version = held.version;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = Utc::now();
            let mut spec = held.spec.clone();
            spec.renewed = Some(now);
            spec.lease_expires = Some(later(now, self.timing.lease));
            match self.put(zone, spec.clone(), version).await {
                Ok(stored) => {
                    return Ok(Renewal::Renewed(self.renewed(
                        held.connection,
                        spec,
                        &stored,
                    )))
                }
                Err(e) if is_race(&e) && attempt < RACE_TRIES => match self.read(zone).await? {
                    // Deleted (with its Zone resource) while connected here: written again.
                    (_, None) => version = 0,
                    // Still ours (another field was written meanwhile, e.g. a refusal).
                    (v, Some(s)) if s.connection == held.spec.connection => version = v,
                    (_, Some(s)) => {
                        return Ok(Renewal::Lost {
                            node: s.global_node,
                        })
                    }
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Marks the held record disconnected, unless another connection holds it now.
    async fn release(
        &self,
        zone: &str,
        held: &Held,
        disconnected: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let mut spec = held.spec.clone();
        spec.connected = false;
        spec.connected_since = None;
        spec.lease_expires = None;
        spec.last_disconnected = Some(disconnected.unwrap_or_else(Utc::now));
        let mut version = held.version;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.put(zone, spec.clone(), version).await {
                Ok(_) | Err(StoreError::NotFound(_)) => return Ok(()),
                Err(e) if is_race(&e) && attempt < RACE_TRIES => match self.read(zone).await? {
                    (v, Some(s)) if s.connection == held.spec.connection => version = v,
                    // Gone, or held by a newer connection: nothing of ours to release.
                    _ => return Ok(()),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Records why this node refused the zone's handshake, leaving the rest of the record.
    async fn record_refusal(&self, zone: &str, why: &str) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (version, spec) = match self.read(zone).await? {
                (_, Some(s)) if s.refused.as_deref() == Some(why) => return Ok(()),
                (v, Some(s)) => (v, s),
                (_, None) => (
                    0,
                    ZoneLeaseSpec {
                        global_node: self.node,
                        ..ZoneLeaseSpec::default()
                    },
                ),
            };
            let spec = ZoneLeaseSpec {
                refused: Some(why.to_owned()),
                ..spec
            };
            match self.put(zone, spec, version).await {
                Ok(_) => return Ok(()),
                Err(e) if is_race(&e) && attempt < RACE_TRIES => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_store::SledStore;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_lease_is_online_while_connected_and_unexpired() {
        let now = t("2026-01-01T00:00:10Z");
        let mut lease = ZoneLeaseSpec {
            global_node: 2,
            connected: true,
            lease_expires: Some(t("2026-01-01T00:00:15Z")),
            last_disconnected: Some(t("2025-12-31T00:00:00Z")),
            ..ZoneLeaseSpec::default()
        };
        assert_eq!(
            liveness(&lease, now),
            Liveness::Online {
                node: 2,
                until: t("2026-01-01T00:00:15Z")
            }
        );
        // Run out (its holder died): offline from the expiry.
        assert_eq!(
            liveness(&lease, t("2026-01-01T00:00:15Z")),
            Liveness::Offline {
                since: Some(t("2026-01-01T00:00:15Z"))
            }
        );
        // Released: offline from the disconnection, whatever the lease said.
        lease.connected = false;
        assert_eq!(
            liveness(&lease, now),
            Liveness::Offline {
                since: Some(t("2025-12-31T00:00:00Z"))
            }
        );
        // Connected without a lease: not online.
        let odd = ZoneLeaseSpec {
            connected: true,
            ..ZoneLeaseSpec::default()
        };
        assert_eq!(liveness(&odd, now), Liveness::Offline { since: None });
    }

    #[test]
    fn renewals_come_three_times_per_lease() {
        let timing = LeaseTiming::default();
        assert_eq!(timing.lease, Duration::from_secs(15));
        assert_eq!(timing.renew_every, Duration::from_secs(5));
        assert_eq!(
            later(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)),
            DateTime::<Utc>::MAX_UTC
        );
    }

    fn held(connection: u64) -> Held {
        Held {
            connection,
            spec: ZoneLeaseSpec::default(),
            version: 1,
            renew_at: Instant::now(),
        }
    }

    #[test]
    fn the_next_step_follows_the_connection() {
        let online = |connection| Wanted {
            online: true,
            connection,
            ..Wanted::default()
        };
        let offline = |refused: Option<&str>| Wanted {
            refused: refused.map(str::to_owned),
            ..Wanted::default()
        };
        // A new connection is claimed; the held one renewed; a newer one of ours claimed again.
        assert_eq!(next_step(&online(1), None, None, None), Step::Claim);
        assert_eq!(
            next_step(&online(1), Some(&held(1)), None, None),
            Step::Renew
        );
        assert_eq!(
            next_step(&online(2), Some(&held(1)), None, None),
            Step::Claim
        );
        // A connection whose record a newer one took is left alone; the next one claims.
        assert_eq!(next_step(&online(1), None, Some(1), None), Step::Idle);
        assert_eq!(next_step(&online(2), None, Some(1), None), Step::Claim);
        // Gone: released if held, else nothing (also after losing it).
        assert_eq!(
            next_step(&offline(None), Some(&held(1)), None, None),
            Step::Release
        );
        assert_eq!(next_step(&offline(None), None, Some(1), None), Step::Idle);
        // A refusal is recorded once.
        assert_eq!(
            next_step(&offline(Some("too new")), None, None, None),
            Step::RecordRefusal("too new".into())
        );
        assert_eq!(
            next_step(&offline(Some("too new")), None, None, Some("too new")),
            Step::Idle
        );
    }

    struct Node {
        status: ZoneStatusRegistry,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Node {
        fn start(store: &Arc<dyn ResourceStore>, id: u64, timing: LeaseTiming) -> Node {
            let status = ZoneStatusRegistry::new();
            let keeper = LeaseKeeper::new(store.clone(), status.clone(), id, timing);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                keeper
                    .run(async {
                        let _ = rx.await;
                    })
                    .await
            });
            Node {
                status,
                stop: Some(tx),
                task,
            }
        }

        async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            (&mut self.task).await.unwrap();
        }
    }

    async fn lease(store: &Arc<dyn ResourceStore>, zone: &str) -> Option<(u64, ZoneLeaseSpec)> {
        let r = store.get(&lease_key(zone)).await.unwrap()?;
        Some((r.meta.version, lease_spec(&r).cloned().unwrap()))
    }

    async fn lease_becomes(
        store: &Arc<dyn ResourceStore>,
        what: &str,
        check: impl Fn(&ZoneLeaseSpec) -> bool,
    ) -> (u64, ZoneLeaseSpec) {
        test_support::eventually(what, Duration::from_secs(10), || async {
            lease(store, "zone-1").await.filter(|(_, s)| check(s))
        })
        .await
        .unwrap()
    }

    fn sled() -> (tempfile::TempDir, Arc<dyn ResourceStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ResourceStore> = Arc::new(SledStore::open(dir.path()).unwrap());
        (dir, store)
    }

    #[tokio::test]
    async fn a_connection_is_claimed_renewed_and_released() {
        let (_dir, store) = sled();
        let timing = LeaseTiming::new(Duration::from_millis(600));
        let node = Node::start(&store, 1, timing);
        let entry = node.status.entry("zone-1");
        entry.stream_opened();
        entry.stream_opened();
        let (v1, claimed) = lease_becomes(&store, "claimed", |s| s.connected).await;
        assert_eq!(claimed.global_node, 1);
        assert!(claimed.connection.starts_with("1-"));
        assert!(claimed.connected_since.is_some() && claimed.refused.is_none());
        // Renewed (a new expiry, same connection) while the connection stays open.
        let (_, renewed) = lease_becomes(&store, "renewed", |s| {
            s.lease_expires > claimed.lease_expires
        })
        .await;
        assert_eq!(renewed.connection, claimed.connection);
        assert!(matches!(
            liveness(&renewed, Utc::now()),
            Liveness::Online { node: 1, .. }
        ));
        // One stream of two ends: still connected. The last ends: released.
        entry.stream_closed();
        entry.stream_closed();
        let (v2, released) = lease_becomes(&store, "released", |s| !s.connected).await;
        assert!(v2 > v1);
        assert!(released.last_disconnected.is_some() && released.lease_expires.is_none());
        assert_eq!(released.last_connected, claimed.last_connected);
        assert!(matches!(
            liveness(&released, Utc::now()),
            Liveness::Offline { since: Some(_) }
        ));
        node.stop().await;
    }

    #[tokio::test]
    async fn the_newest_connection_wins_and_the_old_holder_stops_renewing() {
        let (_dir, store) = sled();
        let timing = LeaseTiming::new(Duration::from_millis(300));
        let (a, b) = (
            Node::start(&store, 1, timing),
            Node::start(&store, 2, timing),
        );
        a.status.entry("zone-1").stream_opened();
        let (_, first) = lease_becomes(&store, "held by node 1", |s| s.global_node == 1).await;
        // The zone reconnects to node 2 while node 1's stream lingers (not yet noticed dead).
        b.status.entry("zone-1").stream_opened();
        let (_, second) = lease_becomes(&store, "held by node 2", |s| s.global_node == 2).await;
        assert_ne!(second.connection, first.connection);
        // Node 2 keeps renewing; node 1 never writes again (not a renewal, not a release when
        // its stale stream ends).
        let (_, later_) = lease_becomes(&store, "node 2 renewing", |s| {
            s.renewed > second.renewed && s.global_node == 2
        })
        .await;
        a.status.entry("zone-1").stream_closed();
        // A full renewal period after that: had node 1 released the record, node 2 would have
        // found another connection in it and stopped renewing.
        let after = later(Utc::now(), timing.renew_every);
        let (_, still) = lease_becomes(&store, "node 2 renewing again", |s| {
            s.renewed > Some(after) && s.renewed > later_.renewed
        })
        .await;
        assert_eq!(still.connection, second.connection);
        assert!(still.connected);
        // The zone leaves node 2: released by it.
        b.status.entry("zone-1").stream_closed();
        lease_becomes(&store, "released by node 2", |s| {
            !s.connected && s.global_node == 2
        })
        .await;
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test]
    async fn a_stopping_node_writes_nothing_and_its_lease_runs_out() {
        let (_dir, store) = sled();
        let timing = LeaseTiming::new(Duration::from_millis(300));
        let node = Node::start(&store, 1, timing);
        let entry = node.status.entry("zone-1");
        entry.stream_opened();
        lease_becomes(&store, "claimed", |s| s.connected).await;
        node.stop().await;
        // The stream ends after the node stopped (as KDS's do at shutdown): no release.
        entry.stream_closed();
        let (_, left) = lease(&store, "zone-1").await.unwrap();
        assert!(left.connected);
        let expires = left.lease_expires.unwrap();
        test_support::eventually("the lease to run out", Duration::from_secs(10), || async {
            (Utc::now() > expires).then_some(())
        })
        .await
        .unwrap();
        assert_eq!(
            liveness(&lease(&store, "zone-1").await.unwrap().1, Utc::now()),
            Liveness::Offline {
                since: Some(expires)
            }
        );
    }

    #[tokio::test]
    async fn a_deleted_record_is_written_again_and_refusals_are_recorded() {
        let (_dir, store) = sled();
        let timing = LeaseTiming::new(Duration::from_millis(300));
        let node = Node::start(&store, 3, timing);
        // Refused: recorded once, with no connection.
        node.status
            .entry("zone-1")
            .refused(Some("9.9.0"), "too new".into());
        let (_, refused) = lease_becomes(&store, "the refusal", |s| s.refused.is_some()).await;
        assert_eq!(refused.refused.as_deref(), Some("too new"));
        assert!(!refused.connected);
        node.status
            .entry("zone-1")
            .refused(Some("9.9.0"), "too new".into());
        // Accepted and connected: the claim clears the refusal.
        let entry = node.status.entry("zone-1");
        entry.accepted("0.1.0");
        entry.stream_opened();
        let (_, claimed) = lease_becomes(&store, "claimed", |s| s.connected).await;
        assert!(claimed.refused.is_none());
        // The record deleted (its Zone was) while connected here: written again.
        store.delete(&lease_key("zone-1"), None).await.unwrap();
        let (_, again) = lease_becomes(&store, "written again", |s| s.connected).await;
        assert_eq!(again.connection, claimed.connection);
        node.stop().await;
    }
}
