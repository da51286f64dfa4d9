//! The global side of KDS. [`KdsServer`] implements `meridian.kds.v1.KdsSync` over the global's
//! [`ResourceStore`]: on `GlobalToZoneSync` it sends each zone every global-to-zone resource and
//! the ZoneIngresses of every other zone; on `ZoneToGlobalSync` it stores what the zone reports,
//! renamed `<name>.<zone>` and labelled with the zone, and only ever touches resources labelled
//! with the zone that stream authenticated as. Zones are authenticated by a [`ZoneAuthenticator`]
//! (the zone claims its name in the `x-meridian-zone` metadata and in `node.id`); per-zone link
//! state is in a [`ZoneStatusRegistry`]. A zone whose version is outside the skew rule
//! ([`crate::version`]: the global's minor version or one behind) is refused when it opens a
//! stream (its `x-meridian-version` metadata) or, for a zone that sends no such metadata, at its
//! first request (its node's `user_agent_version`); the global states its own version in the
//! response metadata, refusals included. [`serve`] runs it on a bound listener with HTTP/2
//! keepalives until a shutdown future resolves.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use mesh_api::{Resource, ResourceKey, ResourceType, SyncDirection};
use mesh_store::{ListQuery, ResourceStore, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::kds_sync::kds_sync_server::{KdsSync, KdsSyncServer};
use crate::pb::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use crate::status::{ZoneEntry, ZoneStatusRegistry};
use crate::sync::{self, ApplyError, KdsTuning, Outbound, Sink, Source, SyncError, SyncObserver};
use crate::version::{self, ParseError, SkewError, Version, VERSION_METADATA};
use crate::wire;

/// The metadata key in which a zone claims its name.
pub const ZONE_METADATA: &str = "x-meridian-zone";

/// Decides whether a stream may act as the zone it claims. Called once per stream, before
/// anything is read or written; the claimed name is already checked to be a valid zone name.
/// Implementations check a credential in `metadata` (a zone token in `authorization`, or the peer
/// certificate) against `claimed_zone`, and return `unauthenticated`/`permission_denied`.
#[async_trait::async_trait]
pub trait ZoneAuthenticator: Send + Sync + 'static {
    async fn authenticate(&self, metadata: &MetadataMap, claimed_zone: &str) -> Result<(), Status>;
}

/// Accepts every zone's claim. For tests only: it trusts the zone's self-declared name.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAllZonesForTests;

#[async_trait::async_trait]
impl ZoneAuthenticator for AllowAllZonesForTests {
    async fn authenticate(&self, _: &MetadataMap, _: &str) -> Result<(), Status> {
        Ok(())
    }
}

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("KDS server TLS configuration: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("KDS server: {0}")]
    Transport(#[source] tonic::transport::Error),
}

struct Inner {
    store: Arc<dyn ResourceStore>,
    auth: Arc<dyn ZoneAuthenticator>,
    status: ZoneStatusRegistry,
    tuning: KdsTuning,
    identifier: String,
    /// The global's own version, against which zones are checked.
    version: Version,
    shutdown: watch::Sender<bool>,
}

/// The KDS service of the global control plane. Cloning shares it. Serve it once (with
/// [`serve`]); a new server is made for each start.
#[derive(Clone)]
pub struct KdsServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdsServer")
            .field("identifier", &self.inner.identifier)
            .field("version", &self.inner.version.as_str())
            .finish_non_exhaustive()
    }
}

impl KdsServer {
    /// A server over the global's store, authenticating zones with `auth`, with default tuning.
    pub fn new(store: Arc<dyn ResourceStore>, auth: Arc<dyn ZoneAuthenticator>) -> KdsServer {
        KdsServer::with_tuning(store, auth, KdsTuning::default(), ZoneStatusRegistry::new())
    }

    /// A server with explicit tuning and status registry (share the registry with diagnostics).
    pub fn with_tuning(
        store: Arc<dyn ResourceStore>,
        auth: Arc<dyn ZoneAuthenticator>,
        tuning: KdsTuning,
        status: ZoneStatusRegistry,
    ) -> KdsServer {
        KdsServer {
            inner: Arc::new(Inner {
                store,
                auth,
                status,
                tuning,
                identifier: "meridian-global".to_owned(),
                version: version::CURRENT
                    .parse()
                    .expect("the crate's own version is a version"),
                shutdown: watch::channel(false).0,
            }),
        }
    }

    /// The same server stating (and checking zones against) `version` instead of this build's
    /// (tests of version skew). Call it before cloning or serving the server.
    pub fn with_version(self, version: &str) -> Result<KdsServer, ParseError> {
        let version: Version = version.parse()?;
        let inner = &self.inner;
        Ok(KdsServer {
            inner: Arc::new(Inner {
                store: inner.store.clone(),
                auth: inner.auth.clone(),
                status: inner.status.clone(),
                tuning: inner.tuning.clone(),
                identifier: inner.identifier.clone(),
                version,
                shutdown: watch::channel(false).0,
            }),
        })
    }

    /// The version the global states and checks zones against.
    pub fn version(&self) -> &str {
        self.inner.version.as_str()
    }

    /// The per-zone link status.
    pub fn status(&self) -> ZoneStatusRegistry {
        self.inner.status.clone()
    }

    pub fn tuning(&self) -> &KdsTuning {
        &self.inner.tuning
    }

    /// Ends every open stream (done by [`serve`] when its shutdown future resolves).
    pub fn shut_down(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// The tonic service, to mount on a router of one's own (prefer [`serve`]).
    pub fn into_service(self) -> KdsSyncServer<KdsServer> {
        let max = self.inner.tuning.max_received_message;
        KdsSyncServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX)
    }

    async fn authenticate(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let zone = metadata
            .get(ZONE_METADATA)
            .ok_or_else(|| Status::unauthenticated(format!("missing {ZONE_METADATA} metadata")))?
            .to_str()
            .map_err(|_| Status::invalid_argument(format!("{ZONE_METADATA} is not text")))?
            .to_owned();
        if !wire::valid_zone_name(&zone) {
            return Err(Status::invalid_argument(format!(
                "{zone:?} is not a valid zone name (an RFC 1123 label)"
            )));
        }
        self.inner.auth.authenticate(metadata, &zone).await?;
        Ok(zone)
    }

    /// The global's version as metadata, for responses and refusals.
    fn version_metadata(&self) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Ok(value) = self.inner.version.as_str().parse() {
            metadata.insert(VERSION_METADATA, value);
        }
        metadata
    }

    /// The skew rule at a stream's open, on the zone's `x-meridian-version` metadata. `Ok(true)`:
    /// accepted; `Ok(false)`: no such metadata (a zone older than the rule), its node's version is
    /// checked at its first request instead.
    fn check_version(&self, metadata: &MetadataMap, zone: &str) -> Result<bool, Status> {
        let Some(value) = metadata.get(VERSION_METADATA) else {
            return Ok(false);
        };
        let reported = value.to_str().map(str::to_owned);
        let result = match &reported {
            Ok(v) => version::check_zone(&self.inner.version, Some(v)).map(|_| ()),
            Err(_) => Err(SkewError::Unparseable(ParseError {
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                reason: "it is not text".into(),
            })),
        };
        let entry = self.inner.status.entry(zone);
        match result {
            Ok(()) => {
                entry.accepted(reported.as_deref().unwrap_or_default());
                Ok(true)
            }
            Err(e) => Err(self.refuse(&entry, reported.ok().as_deref(), e)),
        }
    }

    /// Records and logs a refusal; the status to answer with, carrying the global's version.
    fn refuse(&self, entry: &ZoneEntry, reported: Option<&str>, e: SkewError) -> Status {
        tracing::warn!(zone = %entry.name(), global_version = %self.inner.version, error = %e, "KDS: zone refused");
        let status = e.to_status();
        entry.refused(reported, status.message().to_owned());
        Status::with_metadata(status.code(), status.message(), self.version_metadata())
    }

    /// A response stream, with the global's version in its metadata.
    fn respond<T>(&self, rx: T) -> Response<T> {
        let mut response = Response::new(rx);
        *response.metadata_mut() = self.version_metadata();
        response
    }

    /// Runs `work` as one stream of `zone`: online while it runs, offline (with the error) when it
    /// ends; ends it at shutdown.
    fn spawn_stream<T, F>(
        &self,
        zone: String,
        tx: mpsc::Sender<Result<T, Status>>,
        work: impl FnOnce(Arc<ZoneEntry>) -> F + Send + 'static,
    ) where
        T: Send + 'static,
        F: Future<Output = Result<(), SyncError>> + Send + 'static,
    {
        let entry = self.inner.status.entry(&zone);
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            entry.stream_opened();
            let result = tokio::select! {
                r = work(entry.clone()) => r,
                _ = shutdown.wait_for(|s| *s) => Err(SyncError::Transport {
                    code: tonic::Code::Unavailable,
                    message: "the global is shutting down".into(),
                }),
            };
            if let Err(e) = result {
                tracing::info!(%zone, error = %e, "KDS stream ended");
                // A refusal was recorded where it was decided.
                if !matches!(e, SyncError::Closed | SyncError::Refused(_)) {
                    entry.error(e.to_string());
                }
                let _ = tx.try_send(Err(e.to_status()));
            }
            entry.stream_closed();
        });
    }
}

impl SyncObserver for ZoneEntry {
    fn sent(&self, resources: usize, bytes: usize) {
        ZoneEntry::sent(self, resources, bytes);
    }
    fn received(&self, resources: usize) {
        ZoneEntry::received(self, resources);
    }
    fn nack_received(&self) {
        ZoneEntry::nack_received(self);
    }
    fn nack_sent(&self) {
        ZoneEntry::nack_sent(self);
    }
    fn error(&self, message: String) {
        ZoneEntry::error(self, message);
    }
}

/// What the global sends to one zone.
struct ToZone {
    zone: String,
}

impl Source for ToZone {
    fn types(&self) -> Vec<ResourceType> {
        down_types()
    }
    fn select(&self, resource: &Resource) -> Option<Resource> {
        wire::global_to_zone_form(resource, &self.zone)
    }
}

/// Types on the global-to-zone stream: global-to-zone types and relayed zone types.
pub(crate) fn down_types() -> Vec<ResourceType> {
    ResourceType::ALL
        .iter()
        .copied()
        .filter(|t| t.sync_direction() == SyncDirection::GlobalToZone || t.relayed_across_zones())
        .collect()
}

/// Where the global stores one zone's inventory.
struct FromZone {
    zone: String,
    store: Arc<dyn ResourceStore>,
}

impl FromZone {
    fn guard(&self) -> impl Fn(&Resource) -> Result<(), ApplyError> + '_ {
        move |existing: &Resource| {
            if wire::owning_zone(existing) == Some(self.zone.as_str()) {
                Ok(())
            } else {
                Err(ApplyError::Forbidden(format!(
                    "{} is not a resource of zone {}",
                    existing.key(),
                    self.zone
                )))
            }
        }
    }
}

#[async_trait]
impl Sink for FromZone {
    fn types(&self) -> Vec<ResourceType> {
        crate::zone_to_global_types().collect()
    }

    async fn held(&self, rtype: ResourceType) -> Result<HashMap<String, String>, StoreError> {
        let mut query = ListQuery::all(rtype);
        query.labels.insert(
            mesh_api::ORIGIN_LABEL.to_owned(),
            wire::ORIGIN_ZONE.to_owned(),
        );
        query
            .labels
            .insert(mesh_api::ZONE_LABEL.to_owned(), self.zone.clone());
        let page = self.store.list(&query).await?;
        Ok(page
            .items
            .iter()
            .filter_map(|r| wire::reported_by_zone(r, &self.zone))
            .map(|r| (wire::wire_name(&r.key()), wire::version(&r)))
            .collect())
    }

    async fn upsert(&self, resource: Resource) -> Result<(), ApplyError> {
        let stored = wire::stored_at_global(resource, &self.zone);
        mesh_api::validate_resource(&stored).map_err(|e| ApplyError::Invalid(e.to_string()))?;
        sync::write_guarded(self.store.as_ref(), stored, self.guard()).await
    }

    async fn remove(&self, key: ResourceKey) -> Result<(), ApplyError> {
        let key = ResourceKey {
            name: wire::global_name(&key.name, &self.zone),
            ..key
        };
        sync::delete_guarded(self.store.as_ref(), &key, self.guard()).await
    }
}

type Channel<T> = (
    mpsc::Sender<Result<T, Status>>,
    ReceiverStream<Result<T, Status>>,
);

fn channel<T>() -> Channel<T> {
    let (tx, rx) = mpsc::channel(16);
    (tx, ReceiverStream::new(rx))
}

#[async_trait]
impl KdsSync for KdsServer {
    type GlobalToZoneSyncStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type ZoneToGlobalSyncStream = ReceiverStream<Result<DeltaDiscoveryRequest, Status>>;

    async fn global_to_zone_sync(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::GlobalToZoneSyncStream>, Status> {
        let zone = self.authenticate(request.metadata()).await?;
        let stated = self.check_version(request.metadata(), &zone)?;
        let inbound = request.into_inner().boxed();
        let (tx, rx) = channel();
        let out = Outbound {
            tx: tx.clone(),
            stall: self.inner.tuning.watchdog_timeout,
        };
        let inner = self.inner.clone();
        let server = self.clone();
        self.spawn_stream(zone.clone(), tx, move |entry| async move {
            let source = ToZone { zone: zone.clone() };
            // The node's version obeys the rule too; it is the only one a zone older than the
            // metadata states.
            let on_node = |node: &envoy_types::pb::envoy::config::core::v3::Node| {
                use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
                let reported = match &node.user_agent_version_type {
                    Some(UserAgentVersionType::UserAgentVersion(v)) if !v.is_empty() => Some(v),
                    _ if stated => return Ok(()),
                    _ => None,
                };
                match version::check_zone(&inner.version, reported.map(String::as_str)) {
                    Ok(_) => {
                        entry.accepted(reported.map(String::as_str).unwrap_or_default());
                        Ok(())
                    }
                    Err(e) => {
                        server.refuse(&entry, reported.map(String::as_str), e.clone());
                        Err(SyncError::Refused(e))
                    }
                }
            };
            sync::run_sender(
                inner.store.as_ref(),
                &source,
                inbound,
                out,
                &inner.tuning,
                entry.as_ref(),
                Some(&zone),
                &on_node,
            )
            .await
        });
        Ok(self.respond(rx))
    }

    async fn zone_to_global_sync(
        &self,
        request: Request<Streaming<DeltaDiscoveryResponse>>,
    ) -> Result<Response<Self::ZoneToGlobalSyncStream>, Status> {
        let zone = self.authenticate(request.metadata()).await?;
        self.check_version(request.metadata(), &zone)?;
        let inbound = request.into_inner().boxed();
        let (tx, rx) = channel();
        let out = Outbound {
            tx: tx.clone(),
            stall: self.inner.tuning.watchdog_timeout,
        };
        let inner = self.inner.clone();
        self.spawn_stream(zone.clone(), tx, move |entry| async move {
            let sink = FromZone {
                zone: zone.clone(),
                store: inner.store.clone(),
            };
            let node = envoy_types::pb::envoy::config::core::v3::Node {
                id: inner.identifier.clone(),
                user_agent_name: "meridian-global-cp".to_owned(),
                user_agent_version_type: Some(
                    envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                        inner.version.to_string(),
                    ),
                ),
                ..Default::default()
            };
            sync::run_receiver(
                &sink,
                Some(node),
                inbound,
                out,
                &inner.tuning,
                entry.as_ref(),
                Some(&zone),
            )
            .await
        });
        Ok(self.respond(rx))
    }
}

/// Serves KDS on `listener` (TLS when `tls` is given) with HTTP/2 keepalives, until `shutdown`
/// resolves; then ends every stream and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    server: KdsServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let tuning = server.tuning().clone();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(tuning.keepalive_interval))
        .http2_keepalive_timeout(Some(tuning.keepalive_timeout))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(ServeError::Tls)?;
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let handle = server.clone();
    builder
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            handle.shut_down();
        })
        .await
        .map_err(ServeError::Transport)
}
