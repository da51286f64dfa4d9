//! The ADS client (state of the world, one gRPC stream for every type), behaving as Envoy does
//! towards our zone CP:
//!
//! - the first request carries the node id (`<mesh>/<name>`, `ingress:<name>`, `egress:<name>`),
//!   the proxy's own resource when it registers itself (node metadata
//!   [`crate::registration::RESOURCE_METADATA_FIELD`]), and the dataplane token as
//!   `authorization: Bearer` metadata (re-read from its file on every connect, so a rotated token
//!   is picked up);
//! - a stream refused as INVALID_ARGUMENT (a definition the zone CP rejects) before any
//!   configuration arrived ends [`AdsClient::run`] with the zone CP's message: retrying cannot
//!   help; later, the configuration in use stays and the client retries as for any other end;
//! - CDS and LDS are subscribed by wildcard; EDS, RDS and SDS by the names the accepted clusters
//!   and listeners refer to, re-stated whenever those change;
//! - a response is translated as a whole ([`Resources::replace`]): all of it is ACKed, or it is
//!   NACKed (`error_detail` carries the translation error, `version_info` the last version
//!   accepted) and the previous resources of that type stay;
//! - when the stream ends (the zone CP restarting), the last good configuration stays published
//!   and the client reconnects with jittered exponential backoff, stating the versions it holds.
//!
//! **Publication.** The data path gets a new [`ProxyConfig`] only when it is consistent: after
//! an accepted response, once every RDS, EDS and SDS subscription has been answered since it last
//! changed (so a listener never appears before the routes it names have been asked for and
//! delivered, nor a cluster before its endpoints). A name the zone CP answered without (no such
//! resource) does not hold publication back: like Envoy after its initial fetch timeout, the proxy
//! runs without it, and the data path treats a missing route table as 503 and missing endpoints
//! as none. Everything is driven by stream events; nothing polls.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use rand::Rng as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::resources::{Resources, UpdateError};
use super::{Accepted, CLUSTER_TYPE, LISTENER_TYPE};
use crate::config::ProxyConfig;

/// gRPC's INVALID_ARGUMENT, the code Envoy puts in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The zone CP's xDS URL (`http://host:5678`).
    pub server: String,
    /// The node id the zone CP admits the proxy by.
    pub node_id: String,
    /// The file holding the dataplane token, if the zone CP requires one.
    pub token_file: Option<PathBuf>,
    /// The proxy's resource as JSON, sent for the zone CP to register (`None`: it exists there).
    pub definition: Option<String>,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`, each delay jittered
    /// to between half and all of it.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    pub fn new(server: impl Into<String>, node_id: impl Into<String>) -> ClientOptions {
        ClientOptions {
            server: server.into(),
            node_id: node_id.into(),
            token_file: None,
            definition: None,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a stream ended (logged; the client always reconnects).
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connecting to {server}: {source}")]
    Connect {
        server: String,
        source: tonic::transport::Error,
    },
    #[error("invalid xDS server URL {0:?}")]
    Url(String),
    #[error("reading the token file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("the token in {0} is not valid header text")]
    TokenText(String),
    #[error("the zone CP refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("the stream failed: {0}")]
    Failed(tonic::Status),
    #[error("the zone CP closed the stream")]
    Closed,
}

/// The zone CP refused the proxy's definition before any configuration arrived.
#[derive(Debug, thiserror::Error)]
#[error("the zone CP {server} refused this proxy: {message}")]
pub struct Refused {
    pub server: String,
    pub message: String,
}

/// What one type URL stands at on the current stream.
#[derive(Debug, Default, Clone)]
struct TypeState {
    /// The version last accepted (kept across reconnects).
    version: String,
    /// The nonce of the last response on this stream.
    nonce: String,
    /// The names last requested (RDS, EDS, SDS).
    names: BTreeSet<String>,
    /// Whether a request was sent on this stream.
    requested: bool,
    /// Requested and not answered since the names last changed.
    pending: bool,
}

/// The receiving ends of what the client publishes.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    /// What the data path runs with (an empty configuration until the first complete one).
    pub config: watch::Receiver<Arc<ProxyConfig>>,
    /// What the admin server shows.
    pub accepted: watch::Receiver<Arc<Accepted>>,
}

/// The sending ends: what a configuration source (the ADS client, a static file) publishes to.
#[derive(Debug)]
pub struct Publisher {
    config: watch::Sender<Arc<ProxyConfig>>,
    accepted: watch::Sender<Arc<Accepted>>,
}

impl Publisher {
    /// A publisher and its receivers, starting empty and not ready.
    pub fn new() -> (Publisher, Subscriptions) {
        let (config, config_rx) = watch::channel(Arc::new(ProxyConfig::default()));
        let (accepted, accepted_rx) = watch::channel(Arc::new(Accepted::default()));
        (
            Publisher { config, accepted },
            Subscriptions {
                config: config_rx,
                accepted: accepted_rx,
            },
        )
    }

    /// Publishes `resources`; the data path hears of it only if the configuration changed.
    pub fn publish(&self, resources: &Resources, versions: BTreeMap<String, String>) {
        let config = Arc::new(resources.config());
        self.config.send_if_modified(|current| {
            if **current == *config {
                return false;
            }
            *current = config.clone();
            true
        });
        self.accepted.send_replace(Arc::new(Accepted {
            config,
            resources: resources.raw(),
            versions,
            complete: true,
        }));
    }
}

/// The ADS client. [`AdsClient::run`] runs until its shutdown future completes.
#[derive(Debug)]
pub struct AdsClient {
    options: ClientOptions,
    publisher: Publisher,
    resources: Resources,
    types: BTreeMap<String, TypeState>,
}

impl AdsClient {
    /// A client publishing to `publisher` (see [`Publisher::new`] for the receivers).
    pub fn new(options: ClientOptions, publisher: Publisher) -> AdsClient {
        AdsClient {
            options,
            publisher,
            resources: Resources::default(),
            types: BTreeMap::new(),
        }
    }

    /// Keeps the configuration current until `shutdown` completes: connects, follows the stream,
    /// and reconnects with backoff whenever it ends. Fails only when the zone CP refuses the
    /// proxy's definition before any configuration arrived.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Refused> {
        tokio::pin!(shutdown);
        let mut attempt: u32 = 0;
        let mut configured = false;
        loop {
            let outcome = tokio::select! {
                outcome = self.stream() => outcome,
                () = &mut shutdown => return Ok(()),
            };
            let (error, answered) = outcome;
            configured |= answered;
            if answered {
                attempt = 0;
            }
            if let StreamError::Refused(status) = &error {
                if status.code() == tonic::Code::InvalidArgument && !configured {
                    return Err(Refused {
                        server: self.options.server.clone(),
                        message: status.message().to_owned(),
                    });
                }
            }
            let delay = self.backoff(attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(
                server = %self.options.server,
                error = %error,
                retry_in = ?delay,
                "xDS stream ended; the last accepted configuration stays in use"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown => return Ok(()),
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.options.backoff_base.as_secs_f64();
        let ceiling = self.options.backoff_max.as_secs_f64();
        let full = (base * 2f64.powi(attempt.min(30) as i32)).min(ceiling);
        // Jitter: between half and all of the delay, so proxies restarted together spread out.
        Duration::from_secs_f64(full * rand::thread_rng().gen_range(0.5..=1.0))
    }

    fn token(
        &self,
    ) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, StreamError> {
        let Some(path) = &self.options.token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path).map_err(|source| StreamError::Token {
            path: path.display().to_string(),
            source,
        })?;
        format!("Bearer {}", token.trim())
            .parse()
            .map(Some)
            .map_err(|_| StreamError::TokenText(path.display().to_string()))
    }

    /// One stream, from connecting to its end: why it ended, and whether the server answered.
    async fn stream(&mut self) -> (StreamError, bool) {
        let mut answered = false;
        let error = match self.stream_inner(&mut answered).await {
            Ok(never) => match never {},
            Err(e) => e,
        };
        (error, answered)
    }

    async fn stream_inner(
        &mut self,
        answered: &mut bool,
    ) -> Result<std::convert::Infallible, StreamError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.options.server.clone())
            .map_err(|_| StreamError::Url(self.options.server.clone()))?
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            // A zone CP that vanished without closing the connection is noticed.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| StreamError::Connect {
                server: self.options.server.clone(),
                source,
            })?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (requests, rx) = mpsc::channel::<DiscoveryRequest>(16);
        // A new stream: nonces are per stream; versions and names are kept.
        for state in self.types.values_mut() {
            state.nonce.clear();
            state.requested = false;
            state.pending = false;
        }
        // Envoy's order: clusters (then their endpoints), listeners (then their routes).
        self.request(&requests, CLUSTER_TYPE, true);
        self.request(&requests, LISTENER_TYPE, false);
        self.follow_references(&requests);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = self.token()? {
            request.metadata_mut().insert("authorization", token);
        }
        let mut responses = client
            .stream_aggregated_resources(request)
            .await
            .map_err(StreamError::Refused)?
            .into_inner();
        tracing::info!(server = %self.options.server, node = %self.options.node_id, "xDS stream open");
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Err(StreamError::Closed),
                Err(status) => return Err(StreamError::Failed(status)),
            };
            *answered = true;
            self.on_response(&requests, response);
        }
    }

    /// Queues a request for `type_url` stating its version, the last nonce and the names wanted.
    /// The channel holds more than the five types can have outstanding at once, and the stream
    /// consumes it as gRPC sends, so `try_send` only fails when the stream is gone (then the
    /// response loop ends too).
    fn request(&mut self, requests: &mpsc::Sender<DiscoveryRequest>, type_url: &str, first: bool) {
        let state = self.types.entry(type_url.to_owned()).or_default();
        state.requested = true;
        let node = first.then(|| Node {
            id: self.options.node_id.clone(),
            user_agent_name: "meridian-zone-proxy".to_owned(),
            metadata: self.options.definition.as_ref().map(|json| Struct {
                fields: [(
                    crate::registration::RESOURCE_METADATA_FIELD.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(json.clone())),
                    },
                )]
                .into_iter()
                .collect(),
            }),
            ..Node::default()
        });
        let request = DiscoveryRequest {
            version_info: state.version.clone(),
            node,
            resource_names: state.names.iter().cloned().collect(),
            type_url: type_url.to_owned(),
            response_nonce: state.nonce.clone(),
            ..DiscoveryRequest::default()
        };
        tracing::debug!(
            type_url,
            version = %request.version_info,
            nonce = %request.response_nonce,
            names = ?request.resource_names,
            "xDS request"
        );
        if requests.try_send(request).is_err() {
            tracing::debug!(type_url, "xDS request not queued: the stream is closing");
        }
    }

    fn nack(
        &mut self,
        requests: &mpsc::Sender<DiscoveryRequest>,
        response: &DiscoveryResponse,
        error: &UpdateError,
    ) {
        let state = self.types.entry(response.type_url.clone()).or_default();
        let request = DiscoveryRequest {
            version_info: state.version.clone(),
            resource_names: state.names.iter().cloned().collect(),
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: INVALID_ARGUMENT,
                message: error.to_string(),
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        };
        if requests.try_send(request).is_err() {
            tracing::debug!("xDS NACK not queued: the stream is closing");
        }
    }

    fn on_response(
        &mut self,
        requests: &mpsc::Sender<DiscoveryRequest>,
        response: DiscoveryResponse,
    ) {
        let type_url = response.type_url.clone();
        let state = self.types.entry(type_url.clone()).or_default();
        state.nonce = response.nonce.clone();
        state.pending = false;
        match self.resources.replace(&type_url, &response.resources) {
            Ok(()) => {
                let state = self.types.entry(type_url.clone()).or_default();
                state.version = response.version_info.clone();
                tracing::debug!(
                    type_url,
                    version = %response.version_info,
                    resources = response.resources.len(),
                    "xDS ACK"
                );
                self.request(requests, &type_url, false);
                self.follow_references(requests);
                self.publish_if_consistent();
            }
            Err(error) => {
                tracing::warn!(type_url, version = %response.version_info, %error, "xDS NACK");
                self.nack(requests, &response, &error);
            }
        }
    }

    /// Re-states the RDS, EDS and SDS subscriptions whose names changed.
    fn follow_references(&mut self, requests: &mpsc::Sender<DiscoveryRequest>) {
        let references = self.resources.references();
        for type_url in Resources::TYPES {
            let Some(names) = references.of(type_url) else {
                continue;
            };
            let state = self.types.entry(type_url.to_owned()).or_default();
            let changed = state.names != *names;
            // Nothing asked for yet and nothing needed: no request (an empty name list would be
            // a valid "nothing", but saves the server the work).
            if !changed && (state.requested || names.is_empty()) {
                continue;
            }
            state.names = names.clone();
            state.pending = true;
            self.request(requests, type_url, false);
        }
    }

    fn publish_if_consistent(&mut self) {
        let answered = |t: &str| {
            self.types
                .get(t)
                .is_some_and(|s| s.requested && !s.pending && !s.version.is_empty())
        };
        if !answered(CLUSTER_TYPE) || !answered(LISTENER_TYPE) {
            return;
        }
        if self.types.values().any(|s| s.pending) {
            return;
        }
        let versions = self
            .types
            .iter()
            .filter(|(_, s)| !s.version.is_empty())
            .map(|(t, s)| (t.clone(), s.version.clone()))
            .collect();
        self.publisher.publish(&self.resources, versions);
    }
}
