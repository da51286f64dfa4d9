//! Upstream HTTP: connections pooled per endpoint (on the endpoint's [`Host`], so a pool lives
//! as long as the endpoint stays in its cluster), made with the cluster's TCP/TLS connect from
//! [`crate::upstream`]. A change of the cluster's TLS or protocol settings empties the pool.
//!
//! HTTP/1.1 connections ([`super::h1`]) are used one request at a time, from the request's
//! own task, and come back to the pool when the response body is finished (one dropped
//! half-read is closed). HTTP/2 (the cluster says so, or the TLS peer chose `h2` by ALPN)
//! shares one hyper connection per endpoint, which runs in a task of its own.
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
//! the next proxy, draining) is not left holding them. Each connection holds its endpoint,
//! which holds the pool, so without closing they would live as long as the upstream kept them
//! open.
//!
//! Dropping an HTTP/1.1 connection takes its pool's lock (to count it out, see
//! [`OpenConnection`]), so no connection is dropped while that lock is held: what the pool
//! lets go of under the lock is kept in a local declared before the guard, and dropped after
//! it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::oneshot;

use super::h1::{self, H1Error};
use crate::config::{EndpointAddress, UpstreamProtocol};
use crate::upstream::{ConnectError, Host, UpstreamCluster, UpstreamConn};

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

/// An HTTP/1.1 upstream connection, counted in its pool's `open` while it lives.
pub struct H1Conn {
    conn: h1::Connection<UpstreamConn>,
    open: OpenConnection,
}

impl H1Conn {
    /// Ready for a request, or `None` when the connection is unusable (closed while idle).
    fn ready(mut self) -> Option<H1Conn> {
        self.conn.is_usable().then_some(self)
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
    /// The waker of the task watching the idle connections ([`watch_idle`]), once it ran.
    idle_watcher: Option<Waker>,
    /// A [`watch_idle`] task runs.
    watching: bool,
}

impl PoolState {
    /// Empties the pool for new settings, keeping what outlives them; returns the idle
    /// connections, to be dropped once the lock is released.
    fn reset(&mut self, settings: u64) -> Vec<(Instant, H1Conn)> {
        let idle = std::mem::take(&mut self.idle);
        *self = PoolState {
            settings,
            open: self.open,
            closed: self.closed,
            idle_watcher: self.idle_watcher.take(),
            watching: self.watching,
            ..Default::default()
        };
        idle
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

    /// Keeps `conn` among the idle connections, watched for the upstream closing it (see
    /// [`watch_idle`]); gives it back, to be closed, when the pool is full or closed.
    fn keep_idle(&mut self, host: &Arc<Host>, mut conn: H1Conn, now: Instant) -> Option<H1Conn> {
        if self.idle.len() >= MAX_IDLE_PER_ENDPOINT || self.closed {
            return Some(conn);
        }
        match &self.idle_watcher {
            // The watcher is woken if the upstream closes it.
            Some(watcher) => {
                if conn.conn.poll_unusable(&mut Context::from_waker(watcher)) {
                    return Some(conn);
                }
            }
            // The watcher's first run looks at every idle connection, this one too.
            None if self.watching => {}
            None => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    self.watching = true;
                    runtime.spawn(watch_idle(host.clone()));
                }
            }
        }
        self.idle.push((now, conn));
        None
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
    fn give_back(&self, host: &Arc<Host>, settings: u64, idle_limit: Duration, conn: H1Conn) {
        // Dropped after the guard (see the module doc).
        let mut closing: Vec<H1Conn> = Vec::new();
        let mut state = self.lock();
        if state.settings != settings || state.closed {
            closing.push(conn);
            return;
        }
        let conn = match state.hand_to_waiter(Handoff::Conn(Checkout::H1(conn))) {
            Some(Handoff::Conn(Checkout::H1(conn))) => conn,
            _ => return,
        };
        // The newest idle connection is used first, so the oldest may sit past its idle
        // timeout: each give-back looks at the oldest one and closes it when its idle timeout
        // has passed.
        let now = Instant::now();
        if let Some((since, _)) = state.idle.first() {
            if now.saturating_duration_since(*since) > idle_limit {
                closing.push(state.idle.remove(0).1);
            }
        }
        closing.extend(state.keep_idle(host, conn, now));
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
        // Dropped after the guard (see the module doc).
        let mut closing = Vec::new();
        let mut state = self.lock();
        state.closed = true;
        std::mem::swap(&mut closing, &mut state.idle);
        if let Some(watcher) = state.idle_watcher.take() {
            watcher.wake();
        }
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

/// Watches `host`'s idle HTTP/1.1 connections: woken when one of them may have become
/// unusable (the upstream closed it, or sent something unasked), it closes those, so that a
/// connection the upstream closed is not kept open on this side (CLOSE_WAIT, counted in
/// `upstream_cx_active`) until the next request finds it. A connection taken for a request
/// is watched by that request instead. Ends when the pool is closed (or its runtime stops:
/// the next connection to go idle starts another).
async fn watch_idle(host: Arc<Host>) {
    /// Marks the pool unwatched when the watcher ends, however it ends.
    struct Watching(Arc<Host>);
    impl Drop for Watching {
        fn drop(&mut self) {
            let mut state = self.0.http_pool.lock();
            state.watching = false;
            state.idle_watcher = None;
        }
    }
    let watching = Watching(host);
    std::future::poll_fn(|cx| {
        // Dropped after the guard (see the module doc).
        let mut closing = Vec::new();
        let mut state = watching.0.http_pool.lock();
        if state.closed {
            return Poll::Ready(());
        }
        let mut i = 0;
        while i < state.idle.len() {
            if state.idle[i].1.conn.poll_unusable(cx) {
                closing.push(state.idle.remove(i).1);
            } else {
                i += 1;
            }
        }
        if !state
            .idle_watcher
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.idle_watcher = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

/// Why a request got no response from upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream request: {0}")]
    Http(#[from] hyper::Error),
    #[error("upstream request: {0}")]
    H1(#[from] H1Error),
    /// No response headers within the per-try timeout, counted from when the request was sent
    /// on a connection (as Envoy does: connecting is bounded by the connect timeout instead).
    #[error("upstream request: per-try timeout")]
    PerTryTimeout,
    /// The endpoint was ejected while the request waited for a connection to it.
    #[error("upstream endpoint ejected while the request waited for a connection")]
    Ejected,
}

/// `response` (a request already handed to a connection), waited for at most `per_try`. Made
/// of combinators, not an async fn or block: those hold a future they take by value twice (as
/// the value and as what they await), and every future this one is nested in, up to the
/// request's, would be that much larger and copied whole when made.
fn within<T, E, F>(
    per_try: Option<Duration>,
    response: F,
) -> impl Future<Output = Result<T, SendError>>
where
    F: Future<Output = Result<T, E>>,
    SendError: From<E>,
{
    use futures::future::{Either, FutureExt};
    match per_try {
        Some(limit) => Either::Left(tokio::time::timeout(limit, response).map(|r| match r {
            Ok(r) => r.map_err(SendError::from),
            Err(_) => Err(SendError::PerTryTimeout),
        })),
        None => Either::Right(response.map(|r| r.map_err(SendError::from))),
    }
}

/// A connection to send one request on.
pub enum Checkout {
    H1(H1Conn),
    H2(http2::SendRequest<Body>),
}

/// A connection to `host`: an idle one, else one from the pending queue (see the module doc).
/// `now` is the request's start, taken once for its clock reads.
pub async fn checkout(
    cluster: &Arc<UpstreamCluster>,
    host: &Arc<Host>,
    now: Instant,
) -> Result<Checkout, SendError> {
    let settings = cluster.settings_version;
    let idle_limit = idle_limit(cluster);
    let mut pending: Option<PendingRequest<'_>> = None;
    loop {
        if host.http_pool.lock().closed {
            // Boxed: this rare path's future (a whole connect) would otherwise make every
            // checkout's future, and every future around it, as large as itself.
            return Box::pin(connect(cluster, host, false)).await;
        }
        // Dropped after the guard (see the module doc).
        let mut closing = Vec::new();
        let next = {
            let mut state = host.http_pool.lock();
            if state.settings != settings {
                closing = state.reset(settings);
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
        drop(closing);
        let waiting = match next {
            Ok((since, conn)) => {
                // One closed or past its idle timeout meanwhile is dropped and the next one
                // tried.
                if now.saturating_duration_since(since) <= idle_limit {
                    if let Some(conn) = conn.ready() {
                        return Ok(Checkout::H1(conn));
                    }
                }
                continue;
            }
            Err(waiting) => waiting,
        };
        match waiting.await {
            Ok(Handoff::Conn(Checkout::H1(conn))) => {
                if let Some(conn) = conn.ready() {
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
            // Dropped after the guard (see the module doc).
            let mut closing = Vec::new();
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
                        closing.extend(state.keep_idle(&host, conn, Instant::now()));
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
        Ok(Checkout::H1(H1Conn {
            conn: h1::Connection::new(conn),
            open,
        }))
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

/// An HTTP/2 response body holding the caller's `guard` until it is dropped.
struct H2Body<G> {
    body: Incoming,
    _guard: G,
}

impl<G: Unpin> hyper::body::Body for H2Body<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An HTTP/1.1 response body read from its connection, holding the caller's `guard` until it
/// is dropped. The connection goes back to the pool as soon as the body has ended (also when
/// a body that has none is dropped unread); a body dropped half-read closes it.
struct H1Body<G> {
    /// `None` once the connection went back to the pool.
    reading: Option<(h1::ResponseBody<UpstreamConn>, OpenConnection)>,
    host: Arc<Host>,
    settings: u64,
    idle_limit: Duration,
    _guard: G,
}

impl<G> H1Body<G> {
    fn give_back(&mut self) {
        if let Some((body, open)) = self.reading.take() {
            if let Some(conn) = body.into_reusable() {
                self.host.http_pool.give_back(
                    &self.host,
                    self.settings,
                    self.idle_limit,
                    H1Conn { conn, open },
                );
            }
        }
    }
}

impl<G: Unpin> hyper::body::Body for H1Body<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some((body, _)) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        match std::task::ready!(body.poll_data(cx)) {
            Some(Ok(data)) => {
                if body.is_end() {
                    this.give_back();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => {
                // The connection is not reused after a broken body.
                this.reading = None;
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.give_back();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading.as_ref().is_none_or(|(body, _)| body.is_end())
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading.as_ref() {
            None => SizeHint::with_exact(0),
            Some((body, _)) => body
                .remaining()
                .map(SizeHint::with_exact)
                .unwrap_or_default(),
        }
    }
}

impl<G> Drop for H1Body<G> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Sends `request` (origin-form URI, `Host` header set) on `conn`, a connection to `host`
/// from [`checkout`], waiting at most `per_try` for the response head once it is sent. The
/// response body holds `guard` until it is finished or dropped (one boxed body, no wrapper).
///
/// Not async: the request and the connection are taken apart here, so the returned future
/// holds only what its protocol's exchange needs, not the arguments besides (an async fn
/// keeps its arguments for its whole life; the future is nested in each of the request's
/// futures, which are copied whole when made, docs/data-path.md).
pub fn send<G: Send + Unpin + 'static>(
    conn: Checkout,
    cluster: &UpstreamCluster,
    host: &Arc<Host>,
    mut request: Request<Body>,
    per_try: Option<Duration>,
    guard: G,
) -> impl Future<Output = Result<Upstream, SendError>> {
    use futures::future::{Either, FutureExt};
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
            let sending = sender.send_request(request);
            Either::Left(within(per_try, sending).map(move |response| {
                // The connection's handle is held until the response head, as before.
                drop(sender);
                Ok(response?.map(move |body| {
                    H2Body {
                        body,
                        _guard: guard,
                    }
                    .boxed_unsync()
                }))
            }))
        }
        Checkout::H1(H1Conn { conn, open }) => {
            let settings = cluster.settings_version;
            let idle_limit = idle_limit(cluster);
            let host = host.clone();
            let exchange = conn.send(request);
            Either::Right(within(per_try, exchange).map(move |exchanged| {
                let (parts, body) = exchanged?;
                let body = H1Body {
                    reading: Some((body, open)),
                    host,
                    settings,
                    idle_limit,
                    _guard: guard,
                };
                Ok(Response::from_parts(parts, body.boxed_unsync()))
            }))
        }
    }
}
