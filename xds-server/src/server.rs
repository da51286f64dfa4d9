//! The ADS service: both `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources`, for LDS, RDS, CDS, EDS and SDS. A stream is admitted on its first
//! request: the node id names the Dataplane (`<mesh>/<name>` or `<mesh>.<name>`), the
//! `authorization: Bearer` metadata carries its dataplane token (or, for clients that cannot set
//! stream metadata such as gRPC's proxyless xDS client, the first request's node metadata field
//! [`TOKEN_METADATA_FIELD`]), and the Dataplane must exist; otherwise the stream is refused with a
//! status saying why. A proxy may instead define its resource in the first request's node
//! metadata (see [`crate::registration`]): it is registered before the stream is admitted and
//! deregistered when the proxy goes away. Admitted streams get their proxy's snapshot and every new one the
//! [`SnapshotCache`] publishes; responses carry a nonce, and the next request with that nonce is
//! an ACK, or a NACK when it has `error_detail` (logged and recorded in [`ProxyStatusRegistry`]).
//!
//! Subscriptions: LDS and CDS may be wildcard (no names on the first request, or `*`); RDS, EDS
//! and SDS are always by name. A wildcard never selects named-only resources
//! ([`Snapshot::insert_named_only`]); a name always selects its resource when present.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::value::Kind;
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{DataplaneAuthenticator, ProxyId, ProxyKind};
use crate::cache::SnapshotCache;
use crate::registration::{self, Registrar, Registration};
use crate::snapshot::{wildcard_capable, Snapshot, SourceError, Subscription};
use crate::status::{Nack, ProxyStatusRegistry, StatusHandle};

/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `node.metadata` field (a string) that may carry the dataplane token when the stream has
/// no `authorization` metadata: gRPC's xDS bootstrap cannot add stream headers.
pub const TOKEN_METADATA_FIELD: &str = "meridian.io/dataplane-token";

/// The dataplane token in `node.metadata`, if the field is there.
fn node_metadata_token(node: Option<&Node>) -> Result<Option<&str>, tonic::Status> {
    let Some(value) = node
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(TOKEN_METADATA_FIELD))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(token)) => Ok(Some(token.as_str())),
        _ => Err(tonic::Status::unauthenticated(format!(
            "dataplane token refused: node.metadata[{TOKEN_METADATA_FIELD:?}] must be a string"
        ))),
    }
}

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
#[error("xDS server: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

/// The ADS server: cheap to clone.
#[derive(Clone, Debug)]
pub struct XdsServer {
    cache: Arc<SnapshotCache>,
    auth: DataplaneAuthenticator,
    status: ProxyStatusRegistry,
    /// Accepts self-registering proxies when set (the zone CP sets it; without it a definition
    /// in the node metadata is refused).
    registrar: Option<Registrar>,
}

/// A stream's registration and who undoes it.
type Registered = Option<(Registrar, Registration)>;

impl XdsServer {
    pub fn new(cache: Arc<SnapshotCache>, auth: DataplaneAuthenticator) -> Self {
        XdsServer {
            cache,
            auth,
            status: ProxyStatusRegistry::default(),
            registrar: None,
        }
    }

    /// Lets proxies register their own resource in `store` (see [`crate::registration`]).
    pub fn with_registration(mut self, store: Arc<dyn mesh_store::ResourceStore>) -> Self {
        self.registrar = Some(Registrar::new(store));
        self
    }

    /// The per-proxy status registry.
    pub fn status(&self) -> ProxyStatusRegistry {
        self.status.clone()
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// Verifies the dataplane token for `proxy`: the `authorization` metadata when present,
    /// otherwise the node metadata's [`TOKEN_METADATA_FIELD`]; the same checks either way.
    async fn verify_token(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        node: Option<&Node>,
        proxy: &ProxyId,
    ) -> Result<(), tonic::Status> {
        let node_token = node_metadata_token(node)?;
        match node_token {
            Some(token) if !metadata.contains_key("authorization") => {
                // Presented exactly as the header would be, so every check and refusal is shared.
                let value = format!("Bearer {token}").parse().map_err(|_| {
                    tonic::Status::unauthenticated(format!(
                        "dataplane token refused: node.metadata[{TOKEN_METADATA_FIELD:?}] is not \
                         printable ASCII"
                    ))
                })?;
                let mut header = tonic::metadata::MetadataMap::new();
                header.insert("authorization", value);
                Ok(self.auth.verify_metadata(&header, proxy).await?)
            }
            Some(_) => Ok(self.auth.verify_metadata(metadata, proxy).await?),
            None => self
                .auth
                .verify_metadata(metadata, proxy)
                .await
                .map_err(|e| {
                    let status = tonic::Status::from(e);
                    if metadata.contains_key("authorization") {
                        return status;
                    }
                    tonic::Status::new(
                        status.code(),
                        format!(
                            "{} (or, for clients that cannot set stream metadata, the string \
                         node.metadata[{TOKEN_METADATA_FIELD:?}])",
                            status.message()
                        ),
                    )
                }),
        }
    }

    /// Checks the first request's node id, the token (stream metadata, else node metadata),
    /// registers the resource the node metadata defines, if any, and checks the resource exists;
    /// subscribes the proxy.
    async fn admit(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        node: Option<&Node>,
    ) -> Result<
        (
            ProxyId,
            watch::Receiver<Arc<Snapshot>>,
            StatusHandle,
            Registered,
        ),
        tonic::Status,
    > {
        let node_id = node.map(|n| n.id.as_str());
        let node_id = node_id.filter(|id| !id.is_empty()).ok_or_else(|| {
            tonic::Status::invalid_argument("the first request must carry node.id")
        })?;
        let proxy = ProxyId::parse(node_id).ok_or_else(|| {
            tonic::Status::invalid_argument(format!(
                "node id {:?} is not `<mesh>/<name>` or `<mesh>.<name>`",
                node_id.chars().take(128).collect::<String>()
            ))
        })?;
        if let Err(status) = self.verify_token(metadata, node, &proxy).await {
            tracing::warn!(%proxy, reason = %status.message(), "xDS stream refused");
            return Err(status);
        }
        let registered = self.register(node, &proxy).await?;
        let snapshots = match self.cache.subscribe(&proxy).await {
            Ok(snapshots) => snapshots,
            Err(e) => {
                if let Some((registrar, registration)) = registered {
                    registrar.deregister(registration).await;
                }
                return Err(match e {
                    SourceError::UnknownDataplane(_) => {
                        tonic::Status::permission_denied(e.to_string())
                    }
                    SourceError::Store(_) => {
                        tonic::Status::unavailable("configuration unavailable")
                    }
                });
            }
        };
        let status = self.status.connected(&proxy);
        tracing::info!(%proxy, registered = registered.is_some(), "xDS stream admitted");
        Ok((proxy, snapshots, status, registered))
    }

    /// Registers the resource `node`'s metadata defines, when it defines one.
    async fn register(
        &self,
        node: Option<&Node>,
        proxy: &ProxyId,
    ) -> Result<Registered, tonic::Status> {
        let refused = |e: registration::RegistrationError| {
            let status = tonic::Status::from(e);
            tracing::warn!(%proxy, reason = %status.message(), "xDS registration refused");
            status
        };
        let Some(resource) = registration::definition(node, proxy).map_err(refused)? else {
            return Ok(None);
        };
        let Some(registrar) = &self.registrar else {
            return Err(tonic::Status::failed_precondition(format!(
                "this xDS server does not accept registrations: create {proxy}'s resource \
                 through the API instead of sending node.metadata[{:?}]",
                registration::RESOURCE_METADATA_FIELD
            )));
        };
        let registration = registrar.register(proxy, resource).await.map_err(refused)?;
        if registration.wrote {
            // The store watch tells the cache too, but maybe only after this stream subscribes:
            // its shared views must not answer from before the write.
            match proxy.kind {
                ProxyKind::Dataplane => {
                    let mesh = BTreeSet::from([proxy.mesh.clone()]);
                    self.cache.source_changed(Some(&mesh), false);
                }
                ProxyKind::ZoneIngress | ProxyKind::ZoneEgress => {
                    self.cache.source_changed(None, false)
                }
            }
        }
        Ok(Some((registrar.clone(), registration)))
    }
}

fn nack_message(detail: &Option<envoy_types::pb::google::rpc::Status>) -> Option<String> {
    detail.as_ref().map(|s| s.message.clone())
}

/// The state-of-the-world state of one type URL on one stream.
#[derive(Default)]
struct SotwType {
    subscription: Subscription,
    /// Whether the stream ever named resources of this type: from then on an empty list means
    /// "none", not the legacy wildcard.
    named_before: bool,
    sent_version: Option<String>,
    nonce: String,
}

impl SotwType {
    /// The subscription a state-of-the-world request states (its names replace the previous).
    fn subscription(&mut self, type_url: &str, resource_names: &[String]) -> Subscription {
        let mut names: BTreeSet<String> = resource_names.iter().cloned().collect();
        let explicit_wildcard = names.remove("*");
        let wildcard = wildcard_capable(type_url)
            && (explicit_wildcard || (resource_names.is_empty() && !self.named_before));
        self.named_before |= !resource_names.is_empty();
        Subscription { wildcard, names }
    }
}

/// The delta state of one type URL on one stream.
#[derive(Default)]
struct DeltaType {
    subscription: Subscription,
    /// What the proxy holds: name -> version.
    known: HashMap<String, String>,
    nonce: String,
    sent_version: String,
}

struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

fn sotw_response(
    snapshot: &Snapshot,
    type_url: &str,
    state: &mut SotwType,
    nonces: &mut Nonces,
) -> DiscoveryResponse {
    let resources = snapshot
        .selected(type_url, &state.subscription)
        .map(|(_, r)| r.resource.clone())
        .collect();
    let version = snapshot.selection_version(type_url, &state.subscription);
    state.sent_version = Some(version.clone());
    state.nonce = nonces.next();
    DiscoveryResponse {
        version_info: version,
        resources,
        type_url: type_url.to_string(),
        nonce: state.nonce.clone(),
        ..DiscoveryResponse::default()
    }
}

/// The changes `state`'s proxy lacks, or `None` when it is up to date.
fn delta_response(
    snapshot: &Snapshot,
    type_url: &str,
    state: &mut DeltaType,
    nonces: &mut Nonces,
    force: bool,
) -> Option<DeltaDiscoveryResponse> {
    let mut resources = Vec::new();
    let mut selected = BTreeSet::new();
    for (name, r) in snapshot.selected(type_url, &state.subscription) {
        selected.insert(name);
        if state.known.get(name) != Some(&r.version) {
            resources.push(Resource {
                name: name.clone(),
                version: r.version.clone(),
                resource: Some(r.resource.clone()),
                ..Resource::default()
            });
        }
    }
    // Whatever the proxy holds that is gone, or no longer selected for it.
    let mut removed: Vec<String> = state
        .known
        .keys()
        .filter(|n| !selected.contains(n))
        .cloned()
        .collect();
    removed.sort();
    if resources.is_empty() && removed.is_empty() && !force {
        return None;
    }
    for r in &resources {
        state.known.insert(r.name.clone(), r.version.clone());
    }
    for name in &removed {
        state.known.remove(name);
    }
    state.nonce = nonces.next();
    state.sent_version = snapshot.version.clone();
    Some(DeltaDiscoveryResponse {
        system_version_info: snapshot.version.clone(),
        resources,
        type_url: type_url.to_string(),
        removed_resources: removed,
        nonce: state.nonce.clone(),
        ..DeltaDiscoveryResponse::default()
    })
}

fn record_reply(
    proxy: &ProxyId,
    status: &StatusHandle,
    type_url: &str,
    version: &str,
    nonce: &str,
    error: Option<String>,
) {
    match error {
        Some(message) => {
            tracing::warn!(%proxy, type_url, version, error_detail = %message, "xDS NACK");
            status.nack(
                type_url,
                Nack {
                    version: version.to_string(),
                    nonce: nonce.to_string(),
                    message,
                    at: chrono::Utc::now(),
                },
            );
        }
        None => status.ack(type_url, version),
    }
}

async fn run_sotw(
    proxy: ProxyId,
    first: DiscoveryRequest,
    mut requests: tonic::Streaming<DiscoveryRequest>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    status: StatusHandle,
    registered: Registered,
    out: mpsc::Sender<Result<DiscoveryResponse, tonic::Status>>,
) {
    let mut types: HashMap<String, SotwType> = HashMap::new();
    let mut nonces = Nonces(0);
    let mut next = Some(first);
    loop {
        if let Some(request) = next.take() {
            let snapshot = snapshots.borrow().clone();
            let type_url = request.type_url.clone();
            if type_url.is_empty() {
                continue;
            }
            let state = types.entry(type_url.clone()).or_default();
            let subscription = state.subscription(&type_url, &request.resource_names);
            let respond = if request.response_nonce.is_empty() {
                true
            } else if request.response_nonce != state.nonce {
                false // stale: a reply to a response already superseded
            } else {
                record_reply(
                    &proxy,
                    &status,
                    &type_url,
                    &request.version_info,
                    &request.response_nonce,
                    nack_message(&request.error_detail),
                );
                subscription != state.subscription
            };
            if respond {
                state.subscription = subscription;
                let response = sotw_response(&snapshot, &type_url, state, &mut nonces);
                if out.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            continue;
        }
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => next = Some(request),
                Some(Err(e)) => {
                    tracing::debug!(%proxy, error = %e, "xDS stream ended");
                    break;
                }
                None => break,
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    let _ = out.send(Err(tonic::Status::not_found(format!("dataplane {proxy} was deleted")))).await;
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                for (type_url, state) in types.iter_mut() {
                    let version = snapshot.selection_version(type_url, &state.subscription);
                    if state.sent_version.as_deref() != Some(&version) {
                        let response = sotw_response(&snapshot, type_url, state, &mut nonces);
                        if out.send(Ok(response)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            _ = out.closed() => break,
        }
    }
    status.disconnected();
    tracing::info!(%proxy, "xDS stream closed");
    if let Some((registrar, registration)) = registered {
        registrar.deregister(registration).await;
    }
}

async fn run_delta(
    proxy: ProxyId,
    first: DeltaDiscoveryRequest,
    mut requests: tonic::Streaming<DeltaDiscoveryRequest>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    status: StatusHandle,
    registered: Registered,
    out: mpsc::Sender<Result<DeltaDiscoveryResponse, tonic::Status>>,
) {
    let mut types: HashMap<String, DeltaType> = HashMap::new();
    let mut nonces = Nonces(0);
    let mut next = Some(first);
    loop {
        if let Some(request) = next.take() {
            let snapshot = snapshots.borrow().clone();
            let type_url = request.type_url.clone();
            if type_url.is_empty() {
                continue;
            }
            let fresh = !types.contains_key(&type_url);
            let state = types.entry(type_url.clone()).or_default();
            if !request.response_nonce.is_empty() {
                if request.response_nonce != state.nonce {
                    continue; // stale
                }
                let version = state.sent_version.clone();
                record_reply(
                    &proxy,
                    &status,
                    &type_url,
                    &version,
                    &request.response_nonce,
                    nack_message(&request.error_detail),
                );
            }
            let wildcard_ok = wildcard_capable(&type_url);
            if fresh {
                // Legacy wildcard: a first request naming nothing.
                state.subscription.wildcard =
                    wildcard_ok && request.resource_names_subscribe.is_empty();
                state.known = request
                    .initial_resource_versions
                    .clone()
                    .into_iter()
                    .collect();
            }
            for name in &request.resource_names_subscribe {
                if name == "*" {
                    state.subscription.wildcard = wildcard_ok;
                } else {
                    state.subscription.names.insert(name.clone());
                }
            }
            for name in &request.resource_names_unsubscribe {
                if name == "*" {
                    state.subscription.wildcard = false;
                } else {
                    state.subscription.names.remove(name);
                    state.known.remove(name);
                }
            }
            if let Some(response) = delta_response(&snapshot, &type_url, state, &mut nonces, fresh)
            {
                if out.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            continue;
        }
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => next = Some(request),
                Some(Err(e)) => {
                    tracing::debug!(%proxy, error = %e, "xDS delta stream ended");
                    break;
                }
                None => break,
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    let _ = out.send(Err(tonic::Status::not_found(format!("dataplane {proxy} was deleted")))).await;
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                for (type_url, state) in types.iter_mut() {
                    if let Some(response) = delta_response(&snapshot, type_url, state, &mut nonces, false) {
                        if out.send(Ok(response)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            _ = out.closed() => break,
        }
    }
    status.disconnected();
    tracing::info!(%proxy, "xDS delta stream closed");
    if let Some((registrar, registration)) = registered {
        registrar.deregister(registration).await;
    }
}

async fn first_request<T>(requests: &mut tonic::Streaming<T>) -> Result<T, tonic::Status> {
    match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.next()).await {
        Ok(Some(Ok(request))) => Ok(request),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) => Err(tonic::Status::cancelled(
            "stream closed before its first request",
        )),
        Err(_) => Err(tonic::Status::deadline_exceeded("no first request")),
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, tonic::Status>>;
    type DeltaAggregatedResourcesStream =
        ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let (metadata, _, mut requests) = request.into_parts();
        let first = first_request(&mut requests).await?;
        let node = first.node.as_ref();
        let (proxy, snapshots, status, registered) = self.admit(&metadata, node).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_sotw(
            proxy, first, requests, snapshots, status, registered, tx,
        ));
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let (metadata, _, mut requests) = request.into_parts();
        let first = first_request(&mut requests).await?;
        let node = first.node.as_ref();
        let (proxy, snapshots, status, registered) = self.admit(&metadata, node).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_delta(
            proxy, first, requests, snapshots, status, registered, tx,
        ));
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves ADS on a bound listener until `shutdown` completes. From then on, streams that end
/// keep their registered resources (the proxies did not leave; the zone CP is stopping).
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: XdsServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let registrar = server.registrar.clone();
    let shutdown = async move {
        shutdown.await;
        if let Some(registrar) = registrar {
            registrar.shutting_down();
        }
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
