//! Upstream HTTP: connections pooled per endpoint (on the endpoint's [`Host`], so a pool lives
//! as long as the endpoint stays in its cluster), made with the cluster's TCP/TLS connect from
//! [`crate::upstream`] and hyper's connection API. HTTP/1.1 connections are used one request at
//! a time and come back to the pool when the response body is finished or dropped; HTTP/2 (the
//! cluster says so, or the TLS peer chose `h2` by ALPN) shares one connection per endpoint.
//! A change of the cluster's TLS or protocol settings empties the pool.
//!
//! While a new connection is being made the request is pending: over the cluster's
//! `max_pending_requests` it is refused (503, `upstream_rq_pending_overflow`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::{EndpointAddress, UpstreamProtocol};
use crate::upstream::{ConnectError, Host, UpstreamCluster};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// How long an idle connection is kept when the cluster sets no idle timeout (Envoy: 1 h).
const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

/// An endpoint's address as an HTTP authority.
pub fn authority(address: &EndpointAddress) -> String {
    match address {
        EndpointAddress::Socket(a) => a.to_string(),
        EndpointAddress::Host(name, port) => format!("{name}:{port}"),
    }
}

#[derive(Default)]
struct PoolState {
    /// The cluster settings the pooled connections were made with.
    settings: u64,
    idle: Vec<(Instant, http1::SendRequest<Body>)>,
    h2: Option<http2::SendRequest<Body>>,
}

/// One endpoint's pooled upstream HTTP connections.
#[derive(Default)]
pub struct EndpointPool {
    state: Mutex<PoolState>,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointPool")
    }
}

impl EndpointPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, settings: u64, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut state = self.lock();
        if state.settings == settings && state.idle.len() < MAX_IDLE_PER_ENDPOINT {
            state.idle.push((Instant::now(), sender));
        }
    }
}

/// Why a request got no response from upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream request: {0}")]
    Http(#[from] hyper::Error),
    /// No response headers within the per-try timeout, counted from when the request was sent
    /// on a connection (as Envoy does: connecting is bounded by the connect timeout instead).
    #[error("upstream request: per-try timeout")]
    PerTryTimeout,
}

/// Waits for `response` (a request already handed to a connection) for at most `per_try`.
async fn within<T>(
    per_try: Option<Duration>,
    response: impl std::future::Future<Output = Result<T, hyper::Error>>,
) -> Result<T, SendError> {
    match per_try {
        Some(limit) => tokio::time::timeout(limit, response)
            .await
            .map_err(|_| SendError::PerTryTimeout)?
            .map_err(SendError::from),
        None => response.await.map_err(SendError::from),
    }
}

/// A pooled HTTP/1.1 connection in use; back to its pool when dropped.
struct Lease {
    host: Arc<Host>,
    settings: u64,
    sender: Option<http1::SendRequest<Body>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.host.http_pool.give_back(self.settings, sender);
        }
    }
}

enum Checkout {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

async fn checkout(cluster: &UpstreamCluster, host: &Arc<Host>) -> Result<Checkout, SendError> {
    let settings = cluster.settings_version;
    let idle_limit = cluster
        .config
        .idle_timeout
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_IDLE);
    loop {
        let candidate = {
            let mut state = host.http_pool.lock();
            if state.settings != settings {
                *state = PoolState {
                    settings,
                    ..Default::default()
                };
            }
            if let Some(h2) = state.h2.as_ref().filter(|s| !s.is_closed()) {
                return Ok(Checkout::H2(h2.clone()));
            }
            state.h2 = None;
            state.idle.pop()
        };
        let Some((since, mut sender)) = candidate else {
            break;
        };
        if since.elapsed() > idle_limit {
            continue;
        }
        // A connection given back as its response ended may need a moment to be ready again;
        // one that failed meanwhile is dropped and the next one tried.
        if sender.ready().await.is_ok() {
            return Ok(Checkout::H1(sender));
        }
    }
    connect(cluster, host).await
}

async fn connect(cluster: &UpstreamCluster, host: &Arc<Host>) -> Result<Checkout, SendError> {
    let shared = &cluster.shared;
    let max_pending = cluster.config.circuit_breakers.max_pending_requests;
    let Some(pending) = PendingRequest::enter(shared, max_pending) else {
        shared
            .stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        return Err(ConnectError::Overflow(cluster.name().to_string()).into());
    };
    let result = cluster.connect_host(host).await;
    drop(pending);
    let conn = result?;
    let h2 =
        cluster.config.protocol == UpstreamProtocol::Http2 || conn.alpn.as_deref() == Some(b"h2");
    let name = cluster.name().to_string();
    if h2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(conn))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(cluster = %name, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let mut state = host.http_pool.lock();
        state.h2 = Some(sender.clone());
        Ok(Checkout::H2(sender))
    } else {
        let (sender, connection) = http1::handshake(TokioIo::new(conn)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(cluster = %name, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Checkout::H1(sender))
    }
}

/// A request waiting for a new connection, counted in `pending` and `upstream_rq_pending_active`
/// until dropped: also when the wait is abandoned (per-try timeout, client gone), which a
/// decrement after the `await` would miss.
struct PendingRequest<'a>(&'a crate::upstream::cluster::ClusterShared);

impl<'a> PendingRequest<'a> {
    fn enter(
        shared: &'a crate::upstream::cluster::ClusterShared,
        max: u32,
    ) -> Option<PendingRequest<'a>> {
        if shared.pending.fetch_add(1, Ordering::Relaxed) >= max {
            shared.pending.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        shared
            .stats
            .upstream_rq_pending_active
            .fetch_add(1, Ordering::Relaxed);
        Some(PendingRequest(shared))
    }
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
        self.0
            .stats
            .upstream_rq_pending_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response whose body keeps its connection leased until finished or dropped.
pub type Upstream = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// Sends `request` (origin-form URI, `Host` header set) to `host` over a pooled connection,
/// waiting at most `per_try` for the response once it is sent.
pub async fn send(
    cluster: &UpstreamCluster,
    host: &Arc<Host>,
    mut request: Request<Body>,
    per_try: Option<Duration>,
) -> Result<Upstream, SendError> {
    use http_body_util::BodyExt;
    match checkout(cluster, host).await? {
        Checkout::H2(mut sender) => {
            // HTTP/2 needs an absolute URI: the original authority, else the endpoint's.
            let authority = request
                .headers_mut()
                .remove(http::header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or_else(|| authority(&host.address));
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            *request.uri_mut() = format!("http://{authority}{path}")
                .parse()
                .unwrap_or_default();
            *request.version_mut() = http::Version::HTTP_2;
            let response = within(per_try, sender.send_request(request)).await?;
            Ok(response.map(|b: Incoming| b.map_err(BoxError::from).boxed_unsync()))
        }
        Checkout::H1(mut sender) => {
            *request.version_mut() = http::Version::HTTP_11;
            let response = within(per_try, sender.send_request(request)).await?;
            let lease = Lease {
                host: host.clone(),
                settings: cluster.settings_version,
                sender: Some(sender),
            };
            Ok(response.map(|b: Incoming| {
                b.map_err(BoxError::from)
                    .map_frame(move |frame| {
                        let _held = &lease;
                        frame
                    })
                    .boxed_unsync()
            }))
        }
    }
}
