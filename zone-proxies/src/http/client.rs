//! Upstream HTTP: connections pooled per endpoint (on the endpoint's [`Host`], so a pool lives
//! as long as the endpoint stays in its cluster), made with the cluster's TCP/TLS connect from
//! [`crate::upstream`] and hyper's connection API. A change of the cluster's TLS or protocol
//! settings empties the pool.
//!
//! HTTP/1.1 connections are used one request at a time and come back to the pool when the
//! response body is finished (one dropped half-read is closed); HTTP/2 (the cluster says so,
//! or the TLS peer chose `h2` by ALPN) shares one connection per endpoint. Each connection
//! runs in a task of its own: driving an HTTP/1.1 connection from the request's task instead
//! (no task per connection) was measured slower, 0.84 to 0.93 x the requests/s
//! (docs/benchmarks.md).
//!
//! When no idle connection is at hand the request joins the endpoint's pending queue (over the
//! cluster's `max_pending_requests` it is refused: 503, `upstream_rq_pending_overflow`) and the
//! pool connects, at most [`MAX_CONNECTING_PER_HOST`] connects at a time per endpoint, in tasks
//! of its own so a connect always finishes (and a failure is always counted for outlier
//! detection) even when the request that wanted it has gone. Connections, new or given back,
//! go to the oldest waiting request. A failed connect fails the oldest waiting request (as if
//! each request had made its own connect), and an outlier ejection of the endpoint sends every
//! waiting request back to load balancing ([`SendError::Ejected`]) instead of leaving it to
//! wait for a dead host. At the cluster's `max_connections` waiting requests stay queued until
//! one of the endpoint's connections comes back or closes (see [`start_connects`]).
//!
//! A pool is closed ([`EndpointPool::close`]) when its endpoint leaves the cluster and when
//! the proxy stops: its connections close as soon as they are idle, so the upstream (often
//! the next proxy, draining) is not left holding them. Each connection's task holds its
//! endpoint, which holds the pool, so without closing they would live as long as the upstream
//! kept them open.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::oneshot;

use crate::config::{EndpointAddress, UpstreamProtocol};
use crate::upstream::{ConnectError, Host, UpstreamCluster};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Connects in progress at once per endpoint: a burst of requests towards an endpoint that
/// does not answer (a blackholed link) waits in the pending queue instead of opening one
/// connection each.
pub const MAX_CONNECTING_PER_HOST: usize = 8;

/// How long an idle connection is kept when the cluster sets no idle timeout (Envoy: 1 h).
const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

/// How long a connection may stay idle in the pool.
fn idle_limit(cluster: &UpstreamCluster) -> Duration {
    cluster
        .config
        .idle_timeout
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_IDLE)
}

/// An endpoint's address as an HTTP authority.
pub fn authority(address: &EndpointAddress) -> String {
    match address {
        EndpointAddress::Socket(a) => a.to_string(),
        EndpointAddress::Host(name, port) => format!("{name}:{port}"),
    }
}

/// An HTTP/1.1 upstream connection: the request side of it (the connection runs in a task of
/// its own).
pub struct H1Conn {
    sender: http1::SendRequest<Body>,
}

impl H1Conn {
    /// Ready for a request, or `None` when the connection is unusable (closed while idle).
    async fn ready(mut self) -> Option<H1Conn> {
        self.sender.ready().await.ok().map(|()| self)
    }
}

/// A connection handed to a waiting request, or why none will come.
enum Handoff {
    Conn(Checkout),
    Failed(SendError),
    Ejected,
}

#[derive(Default)]
struct PoolState {
    /// The cluster settings the pooled connections were made with.
    settings: u64,
    idle: Vec<(Instant, H1Conn)>,
    h2: Option<http2::SendRequest<Body>>,
    /// Connects in progress (pool tasks).
    connecting: usize,
    /// Requests waiting for a connection, oldest first (dropped receivers are skipped).
    waiters: VecDeque<oneshot::Sender<Handoff>>,
    /// This endpoint's connections alive (idle, leased or HTTP/2), whatever their settings.
    open: usize,
    /// A connect found the cluster at `max_connections`: waiting requests wait for one of
    /// this pool's connections to come back or close instead of connecting again.
    at_limit: bool,
    /// The endpoint left its cluster or the proxy stopped: nothing is pooled any more.
    closed: bool,
}

impl PoolState {
    /// Empties the pool for new settings, keeping what outlives them.
    fn reset(&mut self, settings: u64) {
        *self = PoolState {
            settings,
            open: self.open,
            closed: self.closed,
            ..Default::default()
        };
    }
}

impl PoolState {
    /// Hands `handoff` to the oldest request still waiting; gives it back when none is.
    fn hand_to_waiter(&mut self, mut handoff: Handoff) -> Option<Handoff> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(handoff) {
                Ok(()) => return None,
                Err(back) => handoff = back,
            }
        }
        Some(handoff)
    }

    fn live_waiters(&mut self) -> usize {
        self.waiters.retain(|w| !w.is_closed());
        self.waiters.len()
    }
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

    /// A connection whose response is finished: to the oldest waiting request, else idle.
    fn give_back(&self, settings: u64, idle_limit: Duration, conn: H1Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut state = self.lock();
        if state.settings != settings || state.closed {
            return;
        }
        let conn = match state.hand_to_waiter(Handoff::Conn(Checkout::H1(conn))) {
            Some(Handoff::Conn(Checkout::H1(conn))) => conn,
            _ => return,
        };
        // The newest idle connection is used first, so the oldest may sit past its idle
        // timeout: each give-back looks at the oldest one and closes it when its idle timeout
        // has passed or its connection has ended.
        if let Some((since, oldest)) = state.idle.first() {
            if since.elapsed() > idle_limit || oldest.sender.is_closed() {
                state.idle.remove(0);
            }
        }
        if state.idle.len() < MAX_IDLE_PER_ENDPOINT {
            state.idle.push((Instant::now(), conn));
        }
    }

    /// The endpoint was ejected by outlier detection: requests waiting for a connection to it
    /// go back to load balancing rather than wait out a connect to a host judged dead.
    pub fn ejected(&self) {
        let mut state = self.lock();
        while state.hand_to_waiter(Handoff::Ejected).is_none() {}
    }

    /// Closes the pool: the endpoint left its cluster, or the proxy stopped. Idle connections
    /// close now, leased ones when their response ends (the upstream is not left holding
    /// connections nobody will use until its idle timeout); a request still using this
    /// endpoint gets a connection of its own.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.idle.clear();
        state.h2 = None;
        while state.hand_to_waiter(Handoff::Ejected).is_none() {}
    }

    /// One of this endpoint's connections ended: its place under `max_connections` is free,
    /// so requests waiting at the limit may connect.
    fn connection_ended(&self, cluster: &Arc<UpstreamCluster>, host: &Arc<Host>) {
        let mut state = self.lock();
        state.open = state.open.saturating_sub(1);
        state.at_limit = false;
        if state.settings == cluster.settings_version && !state.closed {
            start_connects(&mut state, cluster, host);
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
    /// The endpoint was ejected while the request waited for a connection to it.
    #[error("upstream endpoint ejected while the request waited for a connection")]
    Ejected,
}

/// Waits for `response` (a request already handed to a connection) for at most `per_try`.
async fn within<T>(
    per_try: Option<Duration>,
    response: impl Future<Output = Result<T, hyper::Error>>,
) -> Result<T, SendError> {
    match per_try {
        Some(limit) => tokio::time::timeout(limit, response)
            .await
            .map_err(|_| SendError::PerTryTimeout)?
            .map_err(SendError::from),
        None => response.await.map_err(SendError::from),
    }
}

/// A connection to send one request on.
pub enum Checkout {
    H1(H1Conn),
    H2(http2::SendRequest<Body>),
}

/// A connection to `host`: an idle one, else one from the pending queue (see the module doc).
pub async fn checkout(
    cluster: &Arc<UpstreamCluster>,
    host: &Arc<Host>,
) -> Result<Checkout, SendError> {
    let settings = cluster.settings_version;
    let idle_limit = idle_limit(cluster);
    let mut pending: Option<PendingRequest<'_>> = None;
    loop {
        if host.http_pool.lock().closed {
            return connect(cluster, host, false).await;
        }
        let next = {
            let mut state = host.http_pool.lock();
            if state.settings != settings {
                state.reset(settings);
            }
            if let Some(h2) = state.h2.as_ref().filter(|s| !s.is_closed()) {
                return Ok(Checkout::H2(h2.clone()));
            }
            state.h2 = None;
            match state.idle.pop() {
                Some(idle) => Ok(idle),
                None => {
                    if pending.is_none() {
                        let max = cluster.config.circuit_breakers.max_pending_requests;
                        let Some(entered) = PendingRequest::enter(&cluster.shared, max) else {
                            cluster
                                .stats()
                                .upstream_rq_pending_overflow
                                .fetch_add(1, Ordering::Relaxed);
                            return Err(ConnectError::Overflow(cluster.name().to_string()).into());
                        };
                        pending = Some(entered);
                    }
                    let (tx, rx) = oneshot::channel();
                    state.waiters.push_back(tx);
                    start_connects(&mut state, cluster, host);
                    Err(rx)
                }
            }
        };
        let waiting = match next {
            Ok((since, conn)) => {
                // A connection given back as its response ended may need a moment to be
                // ready again; one closed meanwhile is dropped and the next one tried.
                if since.elapsed() <= idle_limit {
                    if let Some(conn) = conn.ready().await {
                        return Ok(Checkout::H1(conn));
                    }
                }
                continue;
            }
            Err(waiting) => waiting,
        };
        match waiting.await {
            Ok(Handoff::Conn(Checkout::H1(conn))) => {
                if let Some(conn) = conn.ready().await {
                    return Ok(Checkout::H1(conn));
                }
            }
            Ok(Handoff::Conn(h2)) => return Ok(h2),
            Ok(Handoff::Failed(e)) => return Err(e),
            Ok(Handoff::Ejected) => return Err(SendError::Ejected),
            // The pool was emptied by a settings change: start over on the new settings.
            Err(_) => {}
        }
    }
}

/// Starts connects for waiting requests the connects in progress will not serve, up to
/// [`MAX_CONNECTING_PER_HOST`].
///
/// At the cluster's `max_connections` the waiting requests stay queued (bounded by
/// `max_pending_requests`) until one of this endpoint's connections comes back or closes, as
/// Envoy's pending requests do; an endpoint with no connection at all gets one even over the
/// limit (counted in `upstream_cx_overflow`), as in Envoy, or its requests would wait for
/// connections that other endpoints hold.
fn start_connects(state: &mut PoolState, cluster: &Arc<UpstreamCluster>, host: &Arc<Host>) {
    if state.at_limit && state.open == 0 && state.connecting == 0 {
        state.at_limit = false;
    }
    if state.at_limit || state.closed {
        return;
    }
    let wanted = state.live_waiters().min(MAX_CONNECTING_PER_HOST);
    while state.connecting < wanted {
        let over_limit_ok = state.open == 0 && state.connecting == 0;
        state.connecting += 1;
        let (cluster, host) = (cluster.clone(), host.clone());
        tokio::spawn(async move {
            let result = connect(&cluster, &host, over_limit_ok).await;
            let mut state = host.http_pool.lock();
            if state.settings != cluster.settings_version {
                return;
            }
            state.connecting -= 1;
            if let Err(SendError::Connect(ConnectError::Overflow(_))) = &result {
                // The waiting requests keep their place in the queue.
                state.at_limit = true;
                start_connects(&mut state, &cluster, &host);
                return;
            }
            match result {
                Ok(checkout) => {
                    if let Some(Handoff::Conn(Checkout::H1(conn))) =
                        state.hand_to_waiter(Handoff::Conn(checkout))
                    {
                        if state.idle.len() < MAX_IDLE_PER_ENDPOINT && !state.closed {
                            state.idle.push((Instant::now(), conn));
                        }
                    }
                    // HTTP/2: one connection serves every waiting request.
                    if let Some(h2) = state.h2.clone() {
                        while state
                            .hand_to_waiter(Handoff::Conn(Checkout::H2(h2.clone())))
                            .is_none()
                        {}
                    }
                }
                Err(e) => {
                    // One failed connect fails one request, the oldest waiting (with retries
                    // it goes to another endpoint): as if each request had made its own
                    // connect, without the storm. The others keep waiting for the connects in
                    // progress or a new one below; an ejection moves them all at once.
                    let _ = state.hand_to_waiter(Handoff::Failed(e));
                }
            }
            // Requests still waiting beyond the connects in progress get theirs.
            start_connects(&mut state, &cluster, &host);
        });
    }
}

/// Makes a connection to `host`, over the cluster's `max_connections` when `over_limit_ok`.
async fn connect(
    cluster: &Arc<UpstreamCluster>,
    host: &Arc<Host>,
    over_limit_ok: bool,
) -> Result<Checkout, SendError> {
    let conn = cluster.connect_host_with(host, over_limit_ok).await?;
    let open = OpenConnection::new(cluster, host);
    let h2 =
        cluster.config.protocol == UpstreamProtocol::Http2 || conn.alpn.as_deref() == Some(b"h2");
    if h2 {
        let name = cluster.name().to_string();
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(conn))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(cluster = %name, error = %e, "upstream HTTP/2 connection ended");
            }
            drop(open);
        });
        let mut state = host.http_pool.lock();
        if state.settings == cluster.settings_version && !state.closed {
            state.h2 = Some(sender.clone());
        }
        Ok(Checkout::H2(sender))
    } else {
        // One `write` per request from one buffer, as on the downstream side (see `http::serve`).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(conn))
            .await?;
        let name = cluster.name().to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(cluster = %name, error = %e, "upstream HTTP/1.1 connection ended");
            }
            drop(open);
        });
        Ok(Checkout::H1(H1Conn { sender }))
    }
}

/// One connection counted in its pool's `open` from the connect until its task ends.
struct OpenConnection {
    cluster: Arc<UpstreamCluster>,
    host: Arc<Host>,
}

impl OpenConnection {
    fn new(cluster: &Arc<UpstreamCluster>, host: &Arc<Host>) -> OpenConnection {
        host.http_pool.lock().open += 1;
        OpenConnection {
            cluster: cluster.clone(),
            host: host.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.host
            .http_pool
            .connection_ended(&self.cluster, &self.host);
    }
}

/// A request waiting for a connection, counted in `pending` and `upstream_rq_pending_active`
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
pub type Upstream = Response<Body>;

/// An upstream response body holding the caller's `guard` until it is dropped; over HTTP/1.1 it
/// also gives its connection back to the pool when dropped after its end (a body dropped
/// half-read closes the connection).
struct UpstreamBody<G> {
    body: Incoming,
    /// The body was read to its end (a chunked body says so only by ending).
    done: bool,
    /// The HTTP/1.1 connection (`None` over HTTP/2).
    conn: Option<H1Conn>,
    host: Arc<Host>,
    settings: u64,
    idle_limit: Duration,
    _guard: G,
}

impl<G: Unpin> hyper::body::Body for UpstreamBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.done = true;
        }
        frame.map(|f| f.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<G> Drop for UpstreamBody<G> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.done || self.body.is_end_stream() {
                self.host
                    .http_pool
                    .give_back(self.settings, self.idle_limit, conn);
            }
        }
    }
}

/// Sends `request` (origin-form URI, `Host` header set) on `conn`, a connection to `host`
/// from [`checkout`], waiting at most `per_try` for the response once it is sent. The
/// response body holds `guard` until it is finished or dropped (one boxed body, no wrapper).
pub async fn send<G: Send + Unpin + 'static>(
    conn: Checkout,
    cluster: &UpstreamCluster,
    host: &Arc<Host>,
    mut request: Request<Body>,
    per_try: Option<Duration>,
    guard: G,
) -> Result<Upstream, SendError> {
    use http_body_util::BodyExt;
    match conn {
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
            let settings = cluster.settings_version;
            let host = host.clone();
            Ok(response.map(move |body| {
                UpstreamBody {
                    body,
                    done: false,
                    conn: None,
                    host,
                    settings,
                    idle_limit: DEFAULT_IDLE,
                    _guard: guard,
                }
                .boxed_unsync()
            }))
        }
        Checkout::H1(mut conn) => {
            *request.version_mut() = http::Version::HTTP_11;
            let response = within(per_try, conn.sender.send_request(request)).await?;
            let settings = cluster.settings_version;
            let idle_limit = idle_limit(cluster);
            let host = host.clone();
            Ok(response.map(move |body| {
                UpstreamBody {
                    body,
                    done: false,
                    conn: Some(conn),
                    host,
                    settings,
                    idle_limit,
                    _guard: guard,
                }
                .boxed_unsync()
            }))
        }
    }
}
