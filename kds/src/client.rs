//! The zone side of KDS. [`run`] dials the global (one of its addresses, over TLS when
//! configured, with a zone token re-read at each dial), opens both streams, applies what comes
//! down into the zone's store (labelled `kuma.io/origin: global`; refused resources are NACKed
//! with the reason), reports the zone's own inventory up from its store's watch, and when
//! anything breaks (an error, the peer's end, the watchdog) tears both streams down and redials
//! with capped, jittered exponential backoff, until shutdown. The zone keeps serving from its
//! store while the global is away, and catches up by differences when it returns.
//! [`ClientStatus`] tells the zone's diagnostics whether it is connected and what failed last.
//!
//! Versions: the zone states [`KdsClientConfig::version`] in the `x-meridian-version` metadata of
//! both streams (and in its node); the global answers with its own, which the zone logs and keeps
//! in [`ClientStatus`]. A global that refuses the zone's version ([`crate::version`]: a zone newer
//! than the global, or more than one minor version behind) is logged as an error and recorded in
//! [`ClientStatusSnapshot::refused`], and the zone keeps redialling with backoff, so a global
//! upgraded meanwhile lets it in.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use mesh_api::{Resource, ResourceKey, ResourceType};
use mesh_store::{ListQuery, ResourceStore, StoreError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::pb::kds_sync::kds_sync_client::KdsSyncClient;
use crate::server::{down_types, ZONE_METADATA};
use crate::sync::{
    self, ApplyError, Backoff, KdsTuning, Outbound, Sink, Source, SyncError, SyncObserver,
};
use crate::version::{REFUSAL_PREFIX, VERSION_METADATA};
use crate::wire;

/// Where the zone token comes from; read again at each dial so that a rotated token is used.
#[derive(Clone, Default)]
pub enum TokenSource {
    /// No token (mTLS client certificates, or tests).
    #[default]
    None,
    Static(String),
    /// A file holding the token (surrounding whitespace is ignored).
    File(PathBuf),
    /// A function returning the current token.
    Dynamic(Arc<dyn Fn() -> Result<String, String> + Send + Sync>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::None => f.write_str("None"),
            TokenSource::Static(_) => f.write_str("Static(..)"),
            TokenSource::File(p) => write!(f, "File({})", p.display()),
            TokenSource::Dynamic(_) => f.write_str("Dynamic(..)"),
        }
    }
}

impl TokenSource {
    fn token(&self) -> Result<Option<String>, ClientError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.clone())),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| ClientError::Token(format!("{}: {e}", path.display()))),
            TokenSource::Dynamic(f) => f().map(Some).map_err(ClientError::Token),
        }
    }
}

/// What can go wrong on the zone side. Only configuration errors end [`run`]; the others are
/// recorded in [`ClientStatus`] and followed by a redial.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not a valid zone name (an RFC 1123 label)")]
    InvalidZone(String),
    #[error("no global address configured")]
    NoAddress,
    #[error("global address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("zone token: {0}")]
    Token(String),
    #[error("connecting to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("opening a stream: {0}")]
    Open(String),
    /// The global refused the zone's version; `message` names both versions and the rule.
    #[error("{message}")]
    Refused {
        zone_version: String,
        global_version: Option<String>,
        message: String,
    },
    #[error("zone version {0:?} cannot be sent as metadata (not header text)")]
    InvalidVersion(String),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// How a zone connects to the global.
#[derive(Clone)]
pub struct KdsClientConfig {
    pub zone: String,
    /// `https://host:5685` (or `http://` without TLS); several for an HA global, tried in turn.
    pub global_addresses: Vec<String>,
    pub tls: Option<ClientTlsConfig>,
    pub token: TokenSource,
    /// The zone's store: what comes down is written here, what goes up is read from here.
    pub store: Arc<dyn ResourceStore>,
    /// Delays between dials.
    pub backoff: Backoff,
    pub tuning: KdsTuning,
    /// The version reported to the global (`x-meridian-version` metadata and node
    /// `user_agent_version`); this build's by default. Tests of version skew set another.
    pub version: String,
    pub connect_timeout: Duration,
    /// Updated by [`run`]; clone it before handing the config over.
    pub status: ClientStatus,
}

impl std::fmt::Debug for KdsClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdsClientConfig")
            .field("zone", &self.zone)
            .field("global_addresses", &self.global_addresses)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl KdsClientConfig {
    /// A config with defaults: no TLS, no token, default backoff and tuning.
    pub fn new(
        zone: impl Into<String>,
        global_address: impl Into<String>,
        store: Arc<dyn ResourceStore>,
    ) -> KdsClientConfig {
        KdsClientConfig {
            zone: zone.into(),
            global_addresses: vec![global_address.into()],
            tls: None,
            token: TokenSource::None,
            store,
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
                multiplier: 2.0,
                jitter: 0.2,
            },
            tuning: KdsTuning::default(),
            version: crate::version::CURRENT.to_owned(),
            connect_timeout: Duration::from_secs(5),
            status: ClientStatus::default(),
        }
    }
}

#[derive(Debug, Default)]
struct StatusInner {
    connected: AtomicBool,
    dials: AtomicU64,
    resources_received: AtomicU64,
    resources_sent: AtomicU64,
    nacks_sent: AtomicU64,
    nacks_received: AtomicU64,
    detail: Mutex<StatusDetail>,
}

#[derive(Debug, Default, Clone)]
struct StatusDetail {
    address: Option<String>,
    connected_since: Option<DateTime<Utc>>,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    global_version: Option<String>,
    refused: Option<String>,
}

/// The zone's view of its KDS link. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct ClientStatus {
    inner: Arc<StatusInner>,
}

/// A copy of [`ClientStatus`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatusSnapshot {
    pub connected: bool,
    pub address: Option<String>,
    pub connected_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The version the global stated at the latest handshake (also on a refusal).
    pub global_version: Option<String>,
    /// Why the global refused this zone's version at the latest handshake; `None` once a
    /// handshake succeeds.
    pub refused: Option<String>,
    pub dials: u64,
    pub resources_received: u64,
    pub resources_sent: u64,
    pub nacks_sent: u64,
    pub nacks_received: u64,
}

impl ClientStatus {
    fn detail(&self) -> std::sync::MutexGuard<'_, StatusDetail> {
        self.inner.detail.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> ClientStatusSnapshot {
        let d = self.detail().clone();
        let i = &self.inner;
        ClientStatusSnapshot {
            connected: i.connected.load(Ordering::SeqCst),
            address: d.address,
            connected_since: d.connected_since,
            last_error: d.last_error,
            last_error_at: d.last_error_at,
            global_version: d.global_version,
            refused: d.refused,
            dials: i.dials.load(Ordering::Relaxed),
            resources_received: i.resources_received.load(Ordering::Relaxed),
            resources_sent: i.resources_sent.load(Ordering::Relaxed),
            nacks_sent: i.nacks_sent.load(Ordering::Relaxed),
            nacks_received: i.nacks_received.load(Ordering::Relaxed),
        }
    }

    fn set_connected(&self, address: Option<&str>) {
        let mut d = self.detail();
        d.address = address.map(str::to_owned);
        d.connected_since = address.map(|_| Utc::now());
        self.inner
            .connected
            .store(address.is_some(), Ordering::SeqCst);
    }

    fn set_error(&self, message: String) {
        let mut d = self.detail();
        d.last_error = Some(message);
        d.last_error_at = Some(Utc::now());
    }

    fn set_global_version(&self, version: Option<String>) {
        if version.is_some() {
            self.detail().global_version = version;
        }
    }

    fn set_refused(&self, why: Option<String>) {
        self.detail().refused = why;
    }
}

impl SyncObserver for ClientStatus {
    fn sent(&self, resources: usize, _bytes: usize) {
        self.inner
            .resources_sent
            .fetch_add(resources as u64, Ordering::Relaxed);
    }
    fn received(&self, resources: usize) {
        self.inner
            .resources_received
            .fetch_add(resources as u64, Ordering::Relaxed);
    }
    fn nack_received(&self) {
        self.inner.nacks_received.fetch_add(1, Ordering::Relaxed);
    }
    fn nack_sent(&self) {
        self.inner.nacks_sent.fetch_add(1, Ordering::Relaxed);
    }
    fn error(&self, message: String) {
        self.set_error(message);
    }
}

/// What a zone reports up.
struct ToGlobal {
    zone: String,
}

impl Source for ToGlobal {
    fn types(&self) -> Vec<ResourceType> {
        crate::zone_to_global_types().collect()
    }
    fn select(&self, resource: &Resource) -> Option<Resource> {
        wire::zone_to_global_form(resource, &self.zone)
    }
}

/// Where a zone stores what comes down.
struct FromGlobal {
    zone: String,
    store: Arc<dyn ResourceStore>,
}

fn only_global(existing: &Resource) -> Result<(), ApplyError> {
    if wire::is_from_global(existing) {
        Ok(())
    } else {
        Err(ApplyError::Forbidden(format!(
            "{} exists in this zone and did not come from the global",
            existing.key()
        )))
    }
}

#[async_trait]
impl Sink for FromGlobal {
    fn types(&self) -> Vec<ResourceType> {
        down_types()
    }

    async fn held(&self, rtype: ResourceType) -> Result<HashMap<String, String>, StoreError> {
        let mut query = ListQuery::all(rtype);
        query.labels.insert(
            mesh_api::ORIGIN_LABEL.to_owned(),
            wire::ORIGIN_GLOBAL.to_owned(),
        );
        let page = self.store.list(&query).await?;
        Ok(page
            .items
            .iter()
            .map(|r| (wire::wire_name(&r.key()), wire::version(r)))
            .collect())
    }

    async fn upsert(&self, resource: Resource) -> Result<(), ApplyError> {
        if !wire::is_from_global(&resource) {
            return Err(ApplyError::Invalid(format!(
                "{} is not labelled {}: {}",
                resource.key(),
                mesh_api::ORIGIN_LABEL,
                wire::ORIGIN_GLOBAL
            )));
        }
        if resource.resource_type().relayed_across_zones()
            && wire::owning_zone(&resource).is_none()
            && resource
                .meta
                .labels
                .get(mesh_api::ZONE_LABEL)
                .map(String::as_str)
                == Some(self.zone.as_str())
        {
            return Err(ApplyError::Invalid(format!(
                "{} is this zone's own resource",
                resource.key()
            )));
        }
        mesh_api::validate_resource(&resource).map_err(|e| ApplyError::Invalid(e.to_string()))?;
        sync::write_guarded(self.store.as_ref(), resource, only_global).await
    }

    async fn remove(&self, key: ResourceKey) -> Result<(), ApplyError> {
        sync::delete_guarded(self.store.as_ref(), &key, only_global).await
    }
}

/// Runs the zone's KDS client until `shutdown` resolves: dial, sync both ways, redial on any
/// failure with backoff. Returns an error only for a configuration that can never work.
pub async fn run(
    config: KdsClientConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    if !wire::valid_zone_name(&config.zone) {
        return Err(ClientError::InvalidZone(config.zone.clone()));
    }
    if config.global_addresses.is_empty() {
        return Err(ClientError::NoAddress);
    }
    for address in &config.global_addresses {
        Endpoint::from_shared(address.clone()).map_err(|e| ClientError::Address {
            address: address.clone(),
            reason: e.to_string(),
        })?;
    }
    let config = Arc::new(config);
    tokio::pin!(shutdown);
    let mut attempt: u32 = 0;
    let mut dial: usize = 0;
    loop {
        let address = config.global_addresses[dial % config.global_addresses.len()].clone();
        dial += 1;
        let mut opened = false;
        let session = session(&config, &address, &mut opened);
        let result = tokio::select! {
            r = session => r,
            _ = &mut shutdown => {
                config.status.set_connected(None);
                return Ok(());
            }
        };
        config.status.set_connected(None);
        let refused = match &result {
            Err(e) => e.refusal(),
            Ok(()) => None,
        };
        let error = match result {
            Ok(()) => "the global ended the connection".to_owned(),
            Err(e) => e.to_string(),
        };
        if let Some(why) = refused {
            tracing::error!(zone = %config.zone, zone_version = %config.version, %address, error = %why,
                "KDS: the global refused this zone's version; retrying with backoff");
            config.status.set_refused(Some(why));
        } else {
            tracing::warn!(zone = %config.zone, %address, %error, "KDS: connection lost; redialling");
        }
        config.status.set_error(error);
        // A session that opened both streams resets the backoff.
        if opened {
            attempt = 0;
        }
        let delay = config.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

fn request<T>(
    config: &KdsClientConfig,
    token: Option<&str>,
    stream: T,
) -> Result<tonic::Request<T>, ClientError> {
    let mut request = tonic::Request::new(stream);
    let zone = MetadataValue::try_from(config.zone.as_str())
        .map_err(|_| ClientError::InvalidZone(config.zone.clone()))?;
    request.metadata_mut().insert(ZONE_METADATA, zone);
    let version = MetadataValue::try_from(config.version.as_str())
        .map_err(|_| ClientError::InvalidVersion(config.version.clone()))?;
    request.metadata_mut().insert(VERSION_METADATA, version);
    if let Some(token) = token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ClientError::Token("the token is not valid header text".into()))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// One connection: both streams until either fails.
async fn session(
    config: &KdsClientConfig,
    address: &str,
    opened: &mut bool,
) -> Result<(), ClientError> {
    config.status.inner.dials.fetch_add(1, Ordering::Relaxed);
    let token = config.token.token()?;
    let tuning = &config.tuning;
    let mut endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| ClientError::Address {
            address: address.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(tuning.keepalive_interval)
        .keep_alive_timeout(tuning.keepalive_timeout)
        .keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| ClientError::Address {
                address: address.to_owned(),
                reason: format!("TLS: {e}"),
            })?;
    }
    let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
        address: address.to_owned(),
        reason: error_chain(&e),
    })?;
    let mut client = KdsSyncClient::new(channel)
        .max_decoding_message_size(tuning.max_received_message)
        .max_encoding_message_size(usize::MAX);

    // Down: the zone subscribes and applies.
    let (down_tx, down_rx) = mpsc::channel(16);
    let down_req = request(
        config,
        token.as_deref(),
        ReceiverStream::new(down_rx)
            .filter_map(|r: Result<_, tonic::Status>| std::future::ready(r.ok())),
    )?;
    let down = client
        .global_to_zone_sync(down_req)
        .await
        .map_err(|s| open_error(config, "GlobalToZoneSync", s))?;
    let global_version = stated_version(down.metadata());
    config.status.set_global_version(global_version.clone());
    let down_in = down.into_inner();
    // Up: the zone serves its inventory.
    let (up_tx, up_rx) = mpsc::channel(16);
    let up_req = request(
        config,
        token.as_deref(),
        ReceiverStream::new(up_rx)
            .filter_map(|r: Result<_, tonic::Status>| std::future::ready(r.ok())),
    )?;
    let up_in = client
        .zone_to_global_sync(up_req)
        .await
        .map_err(|s| open_error(config, "ZoneToGlobalSync", s))?
        .into_inner();
    config.status.set_connected(Some(address));
    config.status.set_refused(None);
    *opened = true;
    tracing::info!(
        zone = %config.zone,
        %address,
        zone_version = %config.version,
        global_version = global_version.as_deref().unwrap_or("not stated (a global older than x-meridian-version)"),
        "KDS: connected to the global"
    );

    let node = envoy_types::pb::envoy::config::core::v3::Node {
        id: config.zone.clone(),
        user_agent_name: "meridian-zone-cp".to_owned(),
        user_agent_version_type: Some(
            envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                config.version.clone(),
            ),
        ),
        ..Default::default()
    };
    let sink = FromGlobal {
        zone: config.zone.clone(),
        store: config.store.clone(),
    };
    let source = ToGlobal {
        zone: config.zone.clone(),
    };
    let down = sync::run_receiver(
        &sink,
        Some(node.clone()),
        down_in.boxed(),
        Outbound {
            tx: down_tx,
            stall: tuning.watchdog_timeout,
        },
        tuning,
        &config.status,
        None,
    );
    let no_node = |_: &envoy_types::pb::envoy::config::core::v3::Node| Ok(());
    let up = sync::run_sender(
        config.store.as_ref(),
        &source,
        up_in.boxed(),
        Outbound {
            tx: up_tx,
            stall: tuning.watchdog_timeout,
        },
        tuning,
        &config.status,
        None,
        &no_node,
    );
    let result = tokio::select! {
        r = down => r,
        r = up => r,
    };
    result.map_err(ClientError::from)
}

/// The version a global states in its response (or refusal) metadata.
fn stated_version(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(VERSION_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A stream the global would not open: a version refusal, or any other failure.
fn open_error(config: &KdsClientConfig, stream: &str, status: tonic::Status) -> ClientError {
    if status.message().starts_with(REFUSAL_PREFIX) {
        let global_version = stated_version(status.metadata());
        config.status.set_global_version(global_version.clone());
        ClientError::Refused {
            zone_version: config.version.clone(),
            global_version,
            message: status.message().to_owned(),
        }
    } else {
        ClientError::Open(format!("{stream}: {}", status.message()))
    }
}

impl ClientError {
    /// Why the global refused this zone's version, when that is what this error is: a stream
    /// refused at its open, or ended at its first request (a global checking the node's version).
    pub fn refusal(&self) -> Option<String> {
        match self {
            ClientError::Refused { .. } => Some(self.to_string()),
            ClientError::Sync(SyncError::Transport { message, .. })
                if message.starts_with(REFUSAL_PREFIX) =>
            {
                Some(message.clone())
            }
            _ => None,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
