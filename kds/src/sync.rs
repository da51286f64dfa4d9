//! The two halves of a KDS stream, shared by both directions. The *sender* holds the source of
//! truth (the global for policy, a zone for its inventory): it loads what its peer should have,
//! waits for the peer's subscription per type (carrying `initial_resource_versions`), sends only
//! the differences, then follows the store's ordered `watch`, coalescing bursts over a few
//! milliseconds, and retries NACKed resources with backoff. The *receiver* subscribes with the
//! versions it holds, applies each response into its store and ACKs it, or NACKs it naming the
//! resources it refused. Both ends send and expect liveness traffic: the sender heartbeats, the
//! receiver answers, and a watchdog on each end tears a stream down when nothing arrives within
//! a deadline or the peer stops taking messages, so a stream is never silently dead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, Stream, StreamExt};
use mesh_api::{Resource, ResourceKey, ResourceType};
use mesh_store::{ChangeKind, ListQuery, ResourceStore, StoreError, Watch};
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::delta::{self, Delta, DEFAULT_MESSAGE_BUDGET};
use crate::pb::{
    Any, DeltaDiscoveryRequest, DeltaDiscoveryResponse, EnvoyResource, ResourceError, RpcStatus,
    RESOURCE_ERROR_TYPE_URL,
};
use crate::wire::{self, HEARTBEAT_TYPE_URL};

/// Exponential backoff, capped and jittered.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Each attempt waits this many times longer than the previous one.
    pub multiplier: f64,
    /// Up to this fraction of the delay is added or removed at random (0.0 to 1.0).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based): `initial * multiplier^attempt`, capped at
    /// `max`, then jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base =
            self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            rand::thread_rng().gen_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

/// Tunables shared by both ends of KDS.
#[derive(Debug, Clone)]
pub struct KdsTuning {
    /// No encoded response exceeds this many bytes (4 MiB by default).
    pub message_budget: usize,
    /// The largest message accepted from the peer.
    pub max_received_message: usize,
    /// At most one flush of changes per window: a change after a quiet window goes out at once,
    /// changes following it within the window travel together at its end.
    pub coalesce: Duration,
    /// How often the sender of a stream sends a heartbeat the receiver answers.
    pub heartbeat_interval: Duration,
    /// A stream on which nothing arrived for this long, or whose peer took no message for this
    /// long, is torn down.
    pub watchdog_timeout: Duration,
    /// HTTP/2 PING interval on the connection (both ends).
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    pub keepalive_timeout: Duration,
    /// Retry delays of NACKed resources.
    pub nack_backoff: Backoff,
}

impl Default for KdsTuning {
    fn default() -> KdsTuning {
        KdsTuning {
            message_budget: DEFAULT_MESSAGE_BUDGET,
            max_received_message: 16 * 1024 * 1024,
            coalesce: Duration::from_millis(5),
            heartbeat_interval: Duration::from_secs(5),
            watchdog_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            nack_backoff: Backoff::default(),
        }
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("stream failed: {code:?}: {message}")]
    Transport { code: tonic::Code, message: String },
    #[error("nothing received from the peer for {0:?} (watchdog)")]
    Watchdog(Duration),
    #[error("the peer took no message for {0:?} (stalled)")]
    Stalled(Duration),
    #[error("the peer closed the stream")]
    Closed,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the store was closed")]
    StoreClosed,
    #[error("peer identity: {0}")]
    Identity(String),
    #[error("version skew refused: {0}")]
    Refused(crate::version::SkewError),
}

impl From<tonic::Status> for SyncError {
    fn from(status: tonic::Status) -> SyncError {
        SyncError::Transport {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

impl SyncError {
    /// The status to end a server stream with.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            SyncError::Identity(m) => tonic::Status::permission_denied(m.clone()),
            SyncError::Refused(e) => e.to_status(),
            SyncError::Watchdog(_) | SyncError::Stalled(_) => {
                tonic::Status::deadline_exceeded(self.to_string())
            }
            _ => tonic::Status::unavailable(self.to_string()),
        }
    }
}

/// Receives counts of what travels on a stream (the global's per-zone status, the zone's own).
pub trait SyncObserver: Send + Sync {
    fn sent(&self, _resources: usize, _bytes: usize) {}
    fn received(&self, _resources: usize) {}
    fn nack_received(&self) {}
    fn nack_sent(&self) {}
    fn error(&self, _message: String) {}
}

/// No counting.
#[derive(Debug, Default)]
pub struct NoObserver;
impl SyncObserver for NoObserver {}

/// The sending half of a stream: messages go to the transport through a bounded channel, and a
/// peer that takes nothing for the watchdog deadline is a stalled stream.
pub(crate) struct Outbound<T> {
    pub(crate) tx: mpsc::Sender<Result<T, tonic::Status>>,
    pub(crate) stall: Duration,
}

impl<T> Outbound<T> {
    async fn send(&self, message: T) -> Result<(), SyncError> {
        match tokio::time::timeout(self.stall, self.tx.send(Ok(message))).await {
            Err(_) => Err(SyncError::Stalled(self.stall)),
            Ok(Err(_)) => Err(SyncError::Closed),
            Ok(Ok(())) => Ok(()),
        }
    }
}

pub(crate) type Inbound<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// What a sender sends: which types, and the wire form of each stored resource (`None`: this
/// peer does not get it).
pub(crate) trait Source: Send + Sync {
    fn types(&self) -> Vec<ResourceType>;
    fn select(&self, resource: &Resource) -> Option<Resource>;
}

/// Why a receiver refused one resource.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Where a receiver applies what arrives.
#[async_trait]
pub(crate) trait Sink: Send + Sync {
    fn types(&self) -> Vec<ResourceType>;
    /// Wire name -> version of what this end holds of `rtype` from the peer.
    async fn held(&self, rtype: ResourceType) -> Result<HashMap<String, String>, StoreError>;
    async fn upsert(&self, resource: Resource) -> Result<(), ApplyError>;
    async fn remove(&self, key: ResourceKey) -> Result<(), ApplyError>;
}

/// How many resources of one response a receiver applies at once (the store shares flushes
/// between concurrent writers).
const APPLY_CONCURRENCY: usize = 64;
/// At most this many unanswered responses are remembered per stream.
const MAX_INFLIGHT: usize = 4096;
/// A NACK's message lists at most this many refused resources (all are in its details).
const NACK_MESSAGE_ITEMS: usize = 5;

struct SenderState<'a> {
    source: &'a dyn Source,
    types: HashSet<ResourceType>,
    desired: HashMap<ResourceType, BTreeMap<String, Arc<EnvoyResource>>>,
    /// What the peer holds (as far as this end knows), per subscribed type. A NACKed resource is
    /// recorded with an empty version, so that it is resent or removed.
    peer: HashMap<ResourceType, HashMap<String, String>>,
    /// Responses not yet answered, by nonce (fixed-width, so in send order); bounded.
    inflight: BTreeMap<String, (ResourceType, Vec<String>)>,
    nack_attempts: HashMap<ResourceType, u32>,
    retry_at: HashMap<ResourceType, Instant>,
    nonces: u64,
}

impl SenderState<'_> {
    async fn load(&mut self, store: &dyn ResourceStore) -> Result<Watch, SyncError> {
        let revision = store.revision();
        let mut desired = HashMap::new();
        for &rtype in &self.types {
            let page = store.list(&ListQuery::all(rtype)).await?;
            let entry: &mut BTreeMap<String, Arc<EnvoyResource>> =
                desired.entry(rtype).or_default();
            for r in page.items {
                if let Some(w) = self.source.select(&r) {
                    entry.insert(wire::wire_name(&w.key()), Arc::new(wire::to_envoy(&w)));
                }
            }
        }
        self.desired = desired;
        Ok(store.watch(revision)?)
    }

    fn apply_event(
        &mut self,
        kind: ChangeKind,
        resource: &Resource,
        changed: &mut HashMap<ResourceType, HashSet<String>>,
    ) {
        let rtype = resource.resource_type();
        if !self.types.contains(&rtype) {
            return;
        }
        let name = wire::wire_name(&resource.key());
        let set = self.desired.entry(rtype).or_default();
        let selected = match kind {
            ChangeKind::Deleted => None,
            ChangeKind::Created | ChangeKind::Updated => self.source.select(resource),
        };
        match selected {
            Some(w) => {
                set.insert(name.clone(), Arc::new(wire::to_envoy(&w)));
            }
            None => {
                set.remove(&name);
            }
        }
        changed.entry(rtype).or_default().insert(name);
    }

    fn full_diff(&mut self, rtype: ResourceType) -> Delta {
        let empty = BTreeMap::new();
        let current = self.desired.get(&rtype).unwrap_or(&empty);
        match self.peer.get_mut(&rtype) {
            Some(peer) => delta::diff_all(peer, current),
            None => Delta::default(),
        }
    }

    async fn send(
        &mut self,
        rtype: ResourceType,
        delta: Delta,
        out: &Outbound<DeltaDiscoveryResponse>,
        tuning: &KdsTuning,
        observer: &dyn SyncObserver,
    ) -> Result<(), SyncError> {
        if delta.is_empty() {
            return Ok(());
        }
        let chunked = delta::chunk(&wire::type_url(rtype), &delta, tuning.message_budget);
        for o in chunked.oversized {
            tracing::error!(%rtype, error = %o, "KDS: resource not sent");
            observer.error(o.to_string());
        }
        for mut response in chunked.responses {
            self.nonces += 1;
            response.nonce = delta::nonce(self.nonces);
            let names = response.resources.iter().map(|r| r.name.clone()).collect();
            self.inflight.insert(response.nonce.clone(), (rtype, names));
            if self.inflight.len() > MAX_INFLIGHT {
                // A peer that never answers must not grow this without bound.
                self.inflight.pop_first();
            }
            let count = response.resources.len() + response.removed_resources.len();
            let bytes = response.encoded_len();
            out.send(response).await?;
            observer.sent(count, bytes);
        }
        Ok(())
    }

    fn on_ack(
        &mut self,
        request: &DeltaDiscoveryRequest,
        rtype: ResourceType,
        tuning: &KdsTuning,
        observer: &dyn SyncObserver,
    ) {
        let Some((sent_type, names)) = self.inflight.remove(&request.response_nonce) else {
            return;
        };
        if sent_type != rtype {
            return;
        }
        match &request.error_detail {
            None => {
                if !self.retry_at.contains_key(&rtype) {
                    self.nack_attempts.remove(&rtype);
                }
            }
            Some(status) => {
                observer.nack_received();
                let sent: HashSet<&String> = names.iter().collect();
                let mut failed: Vec<String> = status
                    .details
                    .iter()
                    .filter(|d| d.type_url == RESOURCE_ERROR_TYPE_URL)
                    .filter_map(|d| ResourceError::decode(d.value.as_slice()).ok())
                    .map(|e| e.name)
                    .filter(|name| sent.contains(name))
                    .collect();
                drop(sent);
                if failed.is_empty() {
                    failed = names;
                }
                tracing::warn!(%rtype, message = %status.message, refused = failed.len(), "KDS: peer NACKed");
                if let Some(peer) = self.peer.get_mut(&rtype) {
                    for name in failed {
                        peer.insert(name, String::new());
                    }
                }
                let attempt = self.nack_attempts.entry(rtype).or_insert(0);
                let delay = tuning.nack_backoff.delay(*attempt);
                *attempt = attempt.saturating_add(1);
                let due = Instant::now() + delay;
                self.retry_at
                    .entry(rtype)
                    .and_modify(|d| *d = (*d).min(due))
                    .or_insert(due);
            }
        }
    }
}

/// Runs the sending half of a stream until it fails (`Ok` never: a stream only ends in error or
/// by being dropped). `require_node`: every request carrying a node must name this id, and the
/// first request must carry one (the global checks the zone's claimed name). `on_node` sees every
/// node the peer sends; an error from it ends the stream.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_sender(
    store: &dyn ResourceStore,
    source: &dyn Source,
    mut inbound: Inbound<DeltaDiscoveryRequest>,
    out: Outbound<DeltaDiscoveryResponse>,
    tuning: &KdsTuning,
    observer: &dyn SyncObserver,
    require_node: Option<&str>,
    on_node: &(dyn Fn(&envoy_types::pb::envoy::config::core::v3::Node) -> Result<(), SyncError>
          + Send
          + Sync),
) -> Result<(), SyncError> {
    let mut state = SenderState {
        source,
        types: source.types().into_iter().collect(),
        desired: HashMap::new(),
        peer: HashMap::new(),
        inflight: BTreeMap::new(),
        nack_attempts: HashMap::new(),
        retry_at: HashMap::new(),
        nonces: 0,
    };
    let mut watch = state.load(store).await?;
    let mut deadline = Instant::now() + tuning.watchdog_timeout;
    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + tuning.heartbeat_interval,
        tuning.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut last_flush = Instant::now()
        .checked_sub(tuning.coalesce)
        .unwrap_or_else(Instant::now);
    loop {
        let next_retry = state.retry_at.values().min().copied();
        tokio::select! {
            message = inbound.next() => {
                let request = match message {
                    None => return Err(SyncError::Closed),
                    Some(Err(status)) => return Err(status.into()),
                    Some(Ok(request)) => request,
                };
                deadline = Instant::now() + tuning.watchdog_timeout;
                if let Some(expected) = require_node {
                    match &request.node {
                        Some(node) if node.id != expected => {
                            return Err(SyncError::Identity(format!(
                                "node id {:?} does not match the authenticated zone {expected:?}",
                                node.id
                            )));
                        }
                        None if first => {
                            return Err(SyncError::Identity("the first request carries no node".into()));
                        }
                        _ => {}
                    }
                }
                if let Some(node) = &request.node {
                    on_node(node)?;
                }
                first = false;
                if request.type_url == HEARTBEAT_TYPE_URL {
                    continue;
                }
                let rtype = match wire::type_from_url(&request.type_url) {
                    Ok(t) if state.types.contains(&t) => t,
                    _ => {
                        tracing::warn!(type_url = %request.type_url, "KDS: request for a type this stream does not carry");
                        observer.error(format!("request for unknown type {:?}", request.type_url));
                        continue;
                    }
                };
                if request.response_nonce.is_empty() {
                    // A subscription: the peer says what it holds; send the differences.
                    state.peer.insert(rtype, request.initial_resource_versions.clone().into_iter().collect());
                    let d = state.full_diff(rtype);
                    state.send(rtype, d, &out, tuning, observer).await?;
                } else {
                    state.on_ack(&request, rtype, tuning, observer);
                }
            }
            event = watch.next() => {
                let mut changed: HashMap<ResourceType, HashSet<String>> = HashMap::new();
                let mut resync = false;
                match event {
                    None => return Err(SyncError::StoreClosed),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "KDS: store watch interrupted; reloading");
                        resync = true;
                    }
                    Some(Ok(ev)) => {
                        state.apply_event(ev.kind, &ev.resource, &mut changed);
                        // Coalesce: take what is already queued; then, unless the stream was
                        // quiet for a whole window (a lone change goes out at once), keep
                        // collecting until the window since the last flush ends.
                        loop {
                            match watch.next().now_or_never() {
                                None => break,
                                Some(None) => return Err(SyncError::StoreClosed),
                                Some(Some(Err(e))) => {
                                    tracing::warn!(error = %e, "KDS: store watch interrupted; reloading");
                                    resync = true;
                                    break;
                                }
                                Some(Some(Ok(ev))) => state.apply_event(ev.kind, &ev.resource, &mut changed),
                            }
                        }
                        let window = last_flush + tuning.coalesce;
                        while !resync {
                            match tokio::time::timeout_at(window, watch.next()).await {
                                Err(_) => break,
                                Ok(None) => return Err(SyncError::StoreClosed),
                                Ok(Some(Err(e))) => {
                                    tracing::warn!(error = %e, "KDS: store watch interrupted; reloading");
                                    resync = true;
                                }
                                Ok(Some(Ok(ev))) => state.apply_event(ev.kind, &ev.resource, &mut changed),
                            }
                        }
                    }
                }
                if resync {
                    watch = state.load(store).await?;
                    let subscribed: Vec<ResourceType> = state.peer.keys().copied().collect();
                    for rtype in subscribed {
                        let d = state.full_diff(rtype);
                        state.send(rtype, d, &out, tuning, observer).await?;
                    }
                } else {
                    for (rtype, names) in changed {
                        let empty = BTreeMap::new();
                        let current = state.desired.get(&rtype).unwrap_or(&empty);
                        let d = match state.peer.get_mut(&rtype) {
                            Some(peer) => delta::diff_names(peer, current, &names),
                            None => continue,
                        };
                        state.send(rtype, d, &out, tuning, observer).await?;
                    }
                }
                last_flush = Instant::now();
            }
            _ = sleep_until_opt(next_retry) => {
                let now = Instant::now();
                let due: Vec<ResourceType> = state.retry_at.iter().filter(|(_, at)| **at <= now).map(|(t, _)| *t).collect();
                for rtype in due {
                    state.retry_at.remove(&rtype);
                    let d = state.full_diff(rtype);
                    state.send(rtype, d, &out, tuning, observer).await?;
                }
            }
            _ = heartbeat.tick() => {
                state.nonces += 1;
                out.send(DeltaDiscoveryResponse {
                    type_url: HEARTBEAT_TYPE_URL.to_owned(),
                    nonce: delta::nonce(state.nonces),
                    ..DeltaDiscoveryResponse::default()
                }).await?;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(SyncError::Watchdog(tuning.watchdog_timeout));
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the receiving half of a stream until it fails. `node` goes on every subscription;
/// `expect_identifier`: responses naming a control plane must name this one (the global checks
/// the zone's claimed name on the inventory stream).
pub(crate) async fn run_receiver(
    sink: &dyn Sink,
    node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    mut inbound: Inbound<DeltaDiscoveryResponse>,
    out: Outbound<DeltaDiscoveryRequest>,
    tuning: &KdsTuning,
    observer: &dyn SyncObserver,
    expect_identifier: Option<&str>,
) -> Result<(), SyncError> {
    let types: HashSet<ResourceType> = sink.types().into_iter().collect();
    for rtype in sink.types() {
        let held = sink.held(rtype).await?;
        out.send(DeltaDiscoveryRequest {
            node: node.clone(),
            type_url: wire::type_url(rtype),
            initial_resource_versions: held.into_iter().collect(),
            ..DeltaDiscoveryRequest::default()
        })
        .await?;
    }
    let mut deadline = Instant::now() + tuning.watchdog_timeout;
    loop {
        let mut response = tokio::select! {
            message = inbound.next() => match message {
                None => return Err(SyncError::Closed),
                Some(Err(status)) => return Err(status.into()),
                Some(Ok(response)) => response,
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(SyncError::Watchdog(tuning.watchdog_timeout));
            }
        };
        deadline = Instant::now() + tuning.watchdog_timeout;
        if let (Some(expected), Some(cp)) = (expect_identifier, &response.control_plane) {
            if !cp.identifier.is_empty() && cp.identifier != expected {
                return Err(SyncError::Identity(format!(
                    "control plane {:?} does not match the authenticated zone {expected:?}",
                    cp.identifier
                )));
            }
        }
        let mut ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: std::mem::take(&mut response.nonce),
            ..DeltaDiscoveryRequest::default()
        };
        if response.type_url != HEARTBEAT_TYPE_URL {
            let errors = match wire::type_from_url(&response.type_url) {
                Ok(rtype) if types.contains(&rtype) => {
                    apply(
                        sink,
                        rtype,
                        response.removed_resources,
                        response.resources,
                        observer,
                    )
                    .await
                }
                _ => vec![ResourceError {
                    name: String::new(),
                    message: format!("this stream does not carry type {:?}", response.type_url),
                }],
            };
            if !errors.is_empty() {
                observer.nack_sent();
                let mut message = format!("{} resource(s) refused:", errors.len());
                for e in errors.iter().take(NACK_MESSAGE_ITEMS) {
                    message.push_str(&format!(" {}: {};", e.name, e.message));
                }
                tracing::warn!(type_url = %response.type_url, %message, "KDS: NACK");
                ack.error_detail = Some(RpcStatus {
                    code: tonic::Code::InvalidArgument as i32,
                    message,
                    details: errors
                        .iter()
                        .map(|e| Any {
                            type_url: RESOURCE_ERROR_TYPE_URL.to_owned(),
                            value: e.encode_to_vec(),
                        })
                        .collect(),
                });
            }
        }
        out.send(ack).await?;
    }
}

type Job<'a> = Pin<Box<dyn Future<Output = (String, Result<(), ApplyError>)> + Send + 'a>>;

/// Applies one response; returns the resources refused.
async fn apply(
    sink: &dyn Sink,
    rtype: ResourceType,
    removed: Vec<String>,
    resources: Vec<EnvoyResource>,
    observer: &dyn SyncObserver,
) -> Vec<ResourceError> {
    let mut jobs: Vec<Job<'_>> = Vec::with_capacity(removed.len() + resources.len());
    for name in removed {
        jobs.push(Box::pin(async move {
            let result = match wire::key_from_wire_name(rtype, &name) {
                Ok(key) => sink.remove(key).await,
                Err(e) => Err(e.into()),
            };
            (name, result)
        }));
    }
    for r in resources {
        jobs.push(Box::pin(async move {
            let result = match wire::from_envoy(rtype, &r) {
                Ok(resource) => sink.upsert(resource).await,
                Err(e) => Err(e.into()),
            };
            (r.name, result)
        }));
    }
    let results: Vec<(String, Result<(), ApplyError>)> = futures::stream::iter(jobs)
        .buffer_unordered(APPLY_CONCURRENCY)
        .collect()
        .await;
    let mut errors = Vec::new();
    let mut applied = 0;
    for (name, result) in results {
        match result {
            Ok(()) => applied += 1,
            Err(e) => errors.push(ResourceError {
                name,
                message: e.to_string(),
            }),
        }
    }
    observer.received(applied);
    errors
}

/// Writes `resource` (create, or update when its content changed), after `guard` accepted what is
/// stored under its key. Retries a concurrent-write conflict a few times.
pub(crate) async fn write_guarded(
    store: &dyn ResourceStore,
    mut resource: Resource,
    guard: impl Fn(&Resource) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
    let key = resource.key();
    let mut last = None;
    for _ in 0..5 {
        let result = match store.get(&key).await? {
            None => store.create(resource.clone()).await.map(|_| ()),
            Some(existing) => {
                guard(&existing)?;
                if wire::same_content(&existing, &resource) {
                    return Ok(());
                }
                resource.meta.version = existing.meta.version;
                store.update(resource.clone()).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(
                e @ (StoreError::Conflict { .. }
                | StoreError::AlreadyExists(_)
                | StoreError::NotFound(_)),
            ) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(ApplyError::from)
        .unwrap_or_else(|| ApplyError::Invalid("write kept conflicting".into())))
}

/// Deletes what is stored under `key`, after `guard` accepted it; absent is success.
pub(crate) async fn delete_guarded(
    store: &dyn ResourceStore,
    key: &ResourceKey,
    guard: impl Fn(&Resource) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
    let mut last = None;
    for _ in 0..5 {
        let Some(existing) = store.get(key).await? else {
            return Ok(());
        };
        guard(&existing)?;
        match store.delete(key, Some(existing.meta.version)).await {
            Ok(_) | Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e @ StoreError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(ApplyError::from)
        .unwrap_or_else(|| ApplyError::Invalid("delete kept conflicting".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Everything;
    impl Source for Everything {
        fn types(&self) -> Vec<ResourceType> {
            vec![ResourceType::MeshTimeout]
        }
        fn select(&self, resource: &Resource) -> Option<Resource> {
            Some(resource.clone())
        }
    }

    fn state(source: &dyn Source) -> SenderState<'_> {
        SenderState {
            source,
            types: source.types().into_iter().collect(),
            desired: HashMap::new(),
            peer: HashMap::new(),
            inflight: BTreeMap::new(),
            nack_attempts: HashMap::new(),
            retry_at: HashMap::new(),
            nonces: 0,
        }
    }

    #[tokio::test]
    async fn a_nack_marks_only_the_refused_resources_for_retry() {
        let tuning = KdsTuning::default();
        let source = Everything;
        let mut st = state(&source);
        let t = ResourceType::MeshTimeout;
        let mut changed = HashMap::new();
        for name in ["a", "b", "c"] {
            let r = Resource::new(name, Some("m"), mesh_api::Spec::empty(t));
            st.apply_event(ChangeKind::Created, &r, &mut changed);
        }
        st.peer.insert(t, HashMap::new());
        let (tx, mut rx) = mpsc::channel(8);
        let out = Outbound {
            tx,
            stall: Duration::from_secs(1),
        };
        let d = st.full_diff(t);
        assert_eq!(d.upserts.len(), 3);
        st.send(t, d, &out, &tuning, &NoObserver).await.unwrap();
        let sent = rx.recv().await.unwrap().unwrap();
        assert_eq!(sent.resources.len(), 3);
        // Nothing left to send until something changes.
        assert!(st.full_diff(t).is_empty());
        let refused = ResourceError {
            name: "m/b".into(),
            message: "no".into(),
        };
        let nack = DeltaDiscoveryRequest {
            type_url: wire::type_url(t),
            response_nonce: sent.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "refused".into(),
                details: vec![Any {
                    type_url: RESOURCE_ERROR_TYPE_URL.into(),
                    value: refused.encode_to_vec(),
                }],
            }),
            ..DeltaDiscoveryRequest::default()
        };
        st.on_ack(&nack, t, &tuning, &NoObserver);
        assert!(st.retry_at.contains_key(&t));
        assert_eq!(st.nack_attempts.get(&t), Some(&1));
        let retry = st.full_diff(t);
        let names: Vec<_> = retry.upserts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["m/b"]);
        assert!(st.inflight.is_empty());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(400));
        assert_eq!(b.delay(10), Duration::from_secs(1));
        let j = Backoff { jitter: 0.5, ..b };
        for _ in 0..100 {
            let d = j.delay(1);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(300));
        }
    }
}
