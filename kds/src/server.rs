//! The global side of KDS. [`KdsServer`] implements `meridian.kds.v1.KdsSync` over the global's
//! [`ResourceStore`]: on `GlobalToZoneSync` it sends each zone every global-to-zone resource and
//! the ZoneIngresses of every other zone; on `ZoneToGlobalSync` it stores what the zone reports,
//! renamed `<name>.<zone>` and labelled with the zone, and only ever touches resources labelled
//! with the zone that stream authenticated as. Zones are authenticated by a [`ZoneAuthenticator`]
//! (the zone claims its name in the `x-meridian-zone` metadata and in `node.id`); per-zone link
//! state is in a [`ZoneStatusRegistry`]. [`serve`] runs it on a bound listener with HTTP/2
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
                shutdown: watch::channel(false).0,
            }),
        }
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
                if !matches!(e, SyncError::Closed) {
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
        let inbound = request.into_inner().boxed();
        let (tx, rx) = channel();
        let out = Outbound {
            tx: tx.clone(),
            stall: self.inner.tuning.watchdog_timeout,
        };
        let inner = self.inner.clone();
        self.spawn_stream(zone.clone(), tx, move |entry| async move {
            let source = ToZone { zone: zone.clone() };
            let on_node = |node: &envoy_types::pb::envoy::config::core::v3::Node| {
                use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
                if let Some(UserAgentVersionType::UserAgentVersion(v)) =
                    &node.user_agent_version_type
                {
                    entry.set_version(v.clone());
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
        Ok(Response::new(rx))
    }

    async fn zone_to_global_sync(
        &self,
        request: Request<Streaming<DeltaDiscoveryResponse>>,
    ) -> Result<Response<Self::ZoneToGlobalSyncStream>, Status> {
        let zone = self.authenticate(request.metadata()).await?;
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
        Ok(Response::new(rx))
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
