//! The HTTP connection manager: HTTP/1.1 served by [`h1::server`], HTTP/2 (by ALPN or its
//! preface) by hyper, on one listener; each request through RBAC (403), the local rate limit
//! (429), fault injection, route matching ([`route`]) and forwarding to a cluster with
//! timeouts, retries (conditions, per-try timeout, exponential backoff with jitter, the
//! cluster's `max_retries` budget) and circuit breaking, over pooled upstream connections
//! ([`client`]). One JSON access log line per request.

pub mod client;
pub mod filters;
pub mod h1;
pub mod redirect;
pub mod route;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::sync::watch;

use crate::access_log::{timestamp, AccessLogSink, AccessLogs};
use crate::config::{
    Forward, HttpManager, LbPolicy, PathMatch, RetryPolicy, RouteAction, RouteSource,
    UpstreamProtocol,
};
use crate::dataplane::DrainState;
use crate::downstream::rbac::{RbacEngine, Verdict};
use crate::downstream::{ConnContext, IoObj};
use crate::matcher::PatternError;
use crate::runtime::Runtime;
use crate::stats::{HttpStats, Stats};
use crate::upstream::cluster::{ms_at, now_ms};
use crate::upstream::lb::{request_hash, PickContext};
use crate::upstream::outlier::Outcome;
use crate::upstream::{ConnectError, Host, UpstreamCluster};

use self::client::SendError;
pub use self::client::{Body, BoxError};
use self::filters::TokenBucket;
pub use self::route::RouteTableRuntime;

/// Why an HTTP connection manager could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    #[error("rbac: {0}")]
    Rbac(PatternError),
    #[error("routes: {0}")]
    Routes(#[from] route::RouteError),
    #[error("fault filter [{index}]: {source}")]
    Fault { index: usize, source: PatternError },
}

/// A compiled [`HttpManager`].
#[derive(Debug)]
pub struct HttpHandler {
    pub config: HttpManager,
    stats: Arc<HttpStats>,
    rbac: Option<RbacEngine>,
    inline_routes: Option<Arc<RouteTableRuntime>>,
    rate_limit: Option<TokenBucket>,
    faults: Vec<filters::FaultFilter>,
    access_logs: Vec<AccessLogSink>,
}

impl HttpHandler {
    pub fn build(
        config: &HttpManager,
        stats: &Stats,
        logs: &AccessLogs,
    ) -> Result<HttpHandler, HttpConfigError> {
        Ok(HttpHandler {
            config: config.clone(),
            stats: stats.http(&config.stat_prefix),
            rbac: config
                .rbac
                .as_ref()
                .map(RbacEngine::compile)
                .transpose()
                .map_err(HttpConfigError::Rbac)?,
            inline_routes: match &config.routes {
                RouteSource::Inline(table) => {
                    Some(Arc::new(RouteTableRuntime::compile(table.clone())?))
                }
                RouteSource::Rds(_) => None,
            },
            rate_limit: config.local_rate_limit.as_ref().map(TokenBucket::new),
            faults: config
                .faults
                .iter()
                .enumerate()
                .map(|(index, f)| {
                    filters::FaultFilter::compile(f)
                        .map_err(|source| HttpConfigError::Fault { index, source })
                })
                .collect::<Result<_, _>>()?,
            access_logs: config
                .access_logs
                .iter()
                .map(|l| logs.sink(&l.path))
                .collect(),
        })
    }
}

/// When a connection was last busy, for the connection manager's idle timeout.
#[derive(Default)]
struct ConnActivity {
    active: AtomicU32,
    last_ms: AtomicU64,
}

/// The configuration a connection's requests use: the runtime and the chain's handler as of
/// the last request, refreshed only when a new version was published (an atomic version check
/// per request instead of reading the shared `watch` slot and looking the handler up by name).
struct ConnView {
    rx: watch::Receiver<Arc<Runtime>>,
    runtime: Arc<Runtime>,
    handler: Arc<HttpHandler>,
    /// The route timeout timer of the connection's last request, kept registered for the next
    /// one (see [`ConnShared::within_route_timeout`]).
    route_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What every request of one downstream connection shares (one `Arc` clone per request).
struct ConnShared {
    ctx: Arc<ConnContext>,
    /// The handler the connection started with, used when its chain is gone from an update.
    initial: Arc<HttpHandler>,
    view: Mutex<ConnView>,
    activity: ConnActivity,
}

impl ConnShared {
    /// The current runtime and this chain's current handler: a configuration update applies
    /// to kept-alive connections too. The lock is this connection's own (uncontended).
    fn current(&self) -> (Arc<Runtime>, Arc<HttpHandler>) {
        let mut view = self.lock_view();
        if view.rx.has_changed().unwrap_or(false) {
            let runtime = view.rx.borrow_and_update().clone();
            view.handler = runtime
                .listeners
                .get(&*self.ctx.listener)
                .and_then(|l| l.http_handler(&self.ctx.chain))
                .unwrap_or_else(|| self.initial.clone());
            view.runtime = runtime;
        }
        (view.runtime.clone(), view.handler.clone())
    }

    /// `work` within the route timeout `limit` (`None` when it expired first), on a timer the
    /// connection reuses from request to request: moving a registered tokio timer's deadline
    /// later is one atomic update, where a timer per request is registered in and removed from
    /// the timer wheel under the driver's lock every time. HTTP/2 requests running at once
    /// each get their own. A timer left registered after the last request wakes the idle
    /// connection once when it fires, to no effect.
    async fn within_route_timeout<F: Future>(&self, limit: Duration, work: F) -> Option<F::Output> {
        let deadline = tokio::time::Instant::now() + limit;
        let kept = self.lock_view().route_timer.take();
        let mut timer = match kept {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let out = tokio::select! {
            biased;
            out = work => Some(out),
            () = timer.as_mut() => None,
        };
        self.lock_view().route_timer = Some(timer);
        out
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, ConnView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves HTTP on `io` until the client closes, the idle timeout passes, or the dataplane
/// drains (in-flight requests finish first). HTTP/1.1 is served by [`h1::server`]; a
/// connection that negotiated `h2` by ALPN, or opens with HTTP/2's preface, by hyper.
pub async fn serve(
    io: Box<dyn IoObj>,
    ctx: Arc<ConnContext>,
    handler: Arc<HttpHandler>,
    mut runtime: watch::Receiver<Arc<Runtime>>,
    mut drain: watch::Receiver<DrainState>,
) {
    let idle = handler_idle(&handler);
    let current = runtime.borrow_and_update().clone();
    let h2_by_alpn = ctx.alpn.as_deref() == Some(b"h2".as_slice());
    let shared = Arc::new(ConnShared {
        ctx,
        initial: handler.clone(),
        view: Mutex::new(ConnView {
            rx: runtime,
            runtime: current,
            handler,
            route_timer: None,
        }),
        activity: ConnActivity {
            active: AtomicU32::new(0),
            last_ms: AtomicU64::new(now_ms()),
        },
    });
    // Polled only when the drain state changed, not at every wake-up of the connection.
    let mut drained = crate::woken_only::WokenOnly::new(async move {
        let _ = drain.wait_for(|s| *s != DrainState::Serving).await;
    });
    let io = if h2_by_alpn {
        io
    } else {
        let conn = &*shared;
        match h1::server::serve(io, |req| handle(req, conn), idle, &mut drained).await {
            h1::server::Served::Closed => return,
            h1::server::Served::Http2(io, read) => {
                Box::new(crate::downstream::Prefixed::new(read, io)) as Box<dyn IoObj>
            }
        }
    };
    serve_h2(io, shared, idle, drained).await;
}

/// Serves HTTP/2 on `io` with hyper.
async fn serve_h2<D: Future<Output = ()> + Unpin>(
    io: Box<dyn IoObj>,
    shared: Arc<ConnShared>,
    idle: Option<Duration>,
    mut drained: D,
) {
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move {
                let activity = &shared.activity;
                activity.active.fetch_add(1, Ordering::Relaxed);
                let req = req.map(|body| {
                    if hyper::body::Body::is_end_stream(&body) {
                        Body::default()
                    } else {
                        body.map_err(BoxError::from).boxed_unsync()
                    }
                });
                let response = handle(req, &shared).await;
                activity.active.fetch_sub(1, Ordering::Relaxed);
                activity.last_ms.store(now_ms(), Ordering::Relaxed);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let activity = &shared.activity;
    let mut draining = false;
    loop {
        let wake = match idle {
            Some(idle) if activity.active.load(Ordering::Relaxed) == 0 && !draining => {
                let due = activity.last_ms.load(Ordering::Relaxed) + idle.as_millis() as u64;
                let now = now_ms();
                if now >= due {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                    continue;
                }
                Duration::from_millis(due - now)
            }
            Some(idle) => idle,
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = &mut drained, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

fn handler_idle(handler: &HttpHandler) -> Option<Duration> {
    handler.config.idle_timeout.filter(|d| !d.is_zero())
}

fn local_reply(status: u16, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// What happened to a request, for its access log line (kept as references; formatted only
/// when a log line is written).
#[derive(Default)]
struct RequestLog {
    cluster: Option<Arc<UpstreamCluster>>,
    host: Option<Arc<Host>>,
    flags: &'static str,
    attempts: u32,
    /// A fault filter's response bandwidth limit, KiB/s.
    throttle_kbps: Option<u64>,
}

/// The request line as the access log shows it, captured only when a log is configured.
struct RequestLine {
    start_time: SystemTime,
    started: Instant,
    method: http::Method,
    path: Option<String>,
    authority: Option<String>,
    version: Version,
}

impl RequestLine {
    fn of(req: &Request<Body>) -> RequestLine {
        RequestLine {
            start_time: SystemTime::now(),
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path_and_query().map(|p| p.to_string()),
            authority: req.uri().authority().map(|a| a.to_string()).or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            }),
            version: req.version(),
        }
    }
}

/// Serves one request. The decisions (RBAC, rate limit, faults, the route and its action) are
/// plain functions and the forwarding is awaited here, so that a request's future nests
/// `forward_with_retries` directly: each async fn's future is copied whole into its caller's
/// when made, and two levels in between (4 KB each) cost more than their work.
async fn handle(req: Request<Body>, conn: &ConnShared) -> Response<Body> {
    let (rt, handler) = conn.current();
    let ctx = &*conn.ctx;
    let stats = &handler.stats;
    stats.downstream_rq_total.fetch_add(1, Ordering::Relaxed);
    stats.downstream_rq_active.fetch_add(1, Ordering::Relaxed);
    let line = (!handler.access_logs.is_empty()).then(|| RequestLine::of(&req));
    let mut log = RequestLog {
        flags: "-",
        ..Default::default()
    };
    let (parts, body) = req.into_parts();
    let (delay, refused) = admit(&parts, ctx, &handler, &mut log);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = match refused {
        Some(reply) => reply,
        None => match route(parts, body, ctx, &handler, &rt, &mut log) {
            Routed::Reply(reply) => reply,
            Routed::Forward {
                route,
                forward,
                cluster,
                mut request,
            } => {
                if forward.retry.as_ref().is_some_and(|r| r.num_retries > 0) {
                    request.buffer_for_retries().await;
                }
                let route_timeout = forward.timeout.filter(|t| !t.is_zero());
                let idle = forward.idle_timeout.filter(|t| !t.is_zero());
                let result = {
                    // Pinned where it is made, so the timeout layers around it hold a pointer
                    // instead of moving the large future into each of their own (memcpy).
                    let mut forwarding =
                        std::pin::pin!(forward_with_retries(request, &cluster, forward, &mut log));
                    let work = async {
                        match route_timeout {
                            None => Ok(forwarding.as_mut().await),
                            Some(t) => conn
                                .within_route_timeout(t, forwarding.as_mut())
                                .await
                                .ok_or(Expired::Route),
                        }
                    };
                    // Until response headers arrive nothing flows back: all of it is idle time.
                    match idle {
                        None => work.await,
                        Some(t) => tokio::time::timeout(t, work)
                            .await
                            .unwrap_or(Err(Expired::Idle)),
                    }
                };
                let mut response = match (result, idle) {
                    (Ok(response), None) => response,
                    (Ok(response), Some(idle)) => {
                        response.map(|body| IdleTimeoutBody::new(body, idle).boxed_unsync())
                    }
                    (Err(expired), _) => expired.reply(&cluster, stats, &mut log),
                };
                route.change_response_headers(response.headers_mut());
                response
            }
        },
    };
    if let Some(kbps) = log.throttle_kbps {
        response = response.map(|body| filters::Throttled::new(body, kbps).boxed_unsync());
    }
    stats.downstream_rq_active.fetch_sub(1, Ordering::Relaxed);
    if let Some(line) = line {
        let entry = serde_json::json!({
            "start_time": timestamp(line.start_time),
            "kind": "http",
            "listener": &*ctx.listener,
            "method": line.method.as_str(),
            "path": line.path,
            "authority": line.authority,
            "protocol": format!("{:?}", line.version),
            "response_code": response.status().as_u16(),
            "response_flags": log.flags,
            "duration_ms": line.started.elapsed().as_millis() as u64,
            "upstream_cluster": log.cluster.as_ref().map(|c| c.name()),
            "upstream_host": log.host.as_ref().map(|h| client::authority(&h.address)),
            "attempts": log.attempts,
            "downstream_remote_address": ctx.peer.to_string(),
            "downstream_peer_identity": ctx.identity.spiffe_id(),
        });
        for sink in &handler.access_logs {
            sink.log(entry.clone());
        }
    }
    response
}

/// Whether a request may go on: RBAC, the local rate limit, then the fault filters in order
/// (Envoy runs them one after the other: each that applies may delay, then abort). The delay
/// to wait first, then the reply that refuses it, if one does.
fn admit(
    parts: &http::request::Parts,
    ctx: &ConnContext,
    handler: &HttpHandler,
    log: &mut RequestLog,
) -> (Option<Duration>, Option<Response<Body>>) {
    let stats = &handler.stats;
    if let Some(rbac) = &handler.rbac {
        if let Verdict::Denied { .. } = rbac.check(&ctx.identity) {
            stats.rbac_denied.fetch_add(1, Ordering::Relaxed);
            log.flags = "RBAC";
            return (None, Some(local_reply(403, "RBAC: access denied")));
        }
    }
    if let Some(bucket) = &handler.rate_limit {
        if !bucket.try_acquire() {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            log.flags = "RL";
            return (
                None,
                Some(local_reply(bucket.status(), "local_rate_limited")),
            );
        }
    }
    let mut delay: Option<Duration> = None;
    for fault in handler.faults.iter().filter(|f| f.applies(parts, ctx)) {
        let faults = filters::decide(&fault.config);
        if let Some(kbps) = faults.bandwidth_kbps {
            log.throttle_kbps = Some(log.throttle_kbps.map_or(kbps, |k| k.min(kbps)));
        }
        if let Some(d) = faults.delay {
            stats.fault_delays.fetch_add(1, Ordering::Relaxed);
            log.flags = "DI";
            delay = Some(delay.unwrap_or_default() + d);
        }
        if let Some(status) = faults.abort {
            stats.fault_aborts.fetch_add(1, Ordering::Relaxed);
            log.flags = "FI";
            return (delay, Some(local_reply(status, "fault filter abort")));
        }
    }
    (delay, None)
}

/// What the matched route's action makes of a request.
enum Routed<'a> {
    /// Answered here: no route or cluster, a direct response, a redirect.
    Reply(Response<Body>),
    Forward {
        route: route::MatchedRoute<'a>,
        forward: &'a Forward,
        cluster: Arc<UpstreamCluster>,
        request: UpstreamRequest,
    },
}

/// Finds the request's route and carries out its action, up to forwarding.
fn route<'a>(
    parts: http::request::Parts,
    body: Body,
    ctx: &ConnContext,
    handler: &'a HttpHandler,
    rt: &'a Runtime,
    log: &mut RequestLog,
) -> Routed<'a> {
    let stats = &handler.stats;
    let table = match &handler.config.routes {
        RouteSource::Rds(name) => rt.routes.get(name),
        RouteSource::Inline(_) => handler.inline_routes.as_ref(),
    };
    let Some(route) = table.and_then(|t| t.find(&parts)) else {
        stats.no_route.fetch_add(1, Ordering::Relaxed);
        log.flags = "NR";
        return Routed::Reply(local_reply(404, ""));
    };
    let mut reply = match &route.route.action {
        RouteAction::DirectResponse { status, body } => {
            let mut response = local_reply(*status, "");
            *response.body_mut() = Full::new(Bytes::from(body.clone()))
                .map_err(|e| match e {})
                .boxed_unsync();
            response
        }
        RouteAction::Redirect(redirect) => {
            let target =
                redirect::location(redirect, &route.matcher.path, &parts, ctx.tls_terminated);
            let mut response = local_reply(redirect.status, "");
            if let Ok(value) = HeaderValue::from_str(&target) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        RouteAction::Forward(forward) => {
            let Some(cluster_name) = crate::upstream::pick_weighted(&forward.clusters) else {
                stats.no_cluster.fetch_add(1, Ordering::Relaxed);
                return Routed::Reply(local_reply(503, "no cluster"));
            };
            let Some(cluster) = rt.clusters.get(cluster_name).cloned() else {
                stats.no_cluster.fetch_add(1, Ordering::Relaxed);
                log.flags = "NC";
                return Routed::Reply(local_reply(503, "no cluster"));
            };
            log.cluster = Some(cluster.clone());
            let request = UpstreamRequest::new(parts, body, route, forward, &cluster);
            return Routed::Forward {
                route,
                forward,
                cluster,
                request,
            };
        }
    };
    route.change_response_headers(reply.headers_mut());
    Routed::Reply(reply)
}

/// Which timeout ended a request before its response headers.
enum Expired {
    /// The route's `timeout` (504).
    Route,
    /// The route's `idle_timeout` (Envoy's stream idle timeout: 408 before the response
    /// headers, a reset after).
    Idle,
}

impl Expired {
    /// The local reply for a request that timed out before its response headers.
    fn reply(
        self,
        cluster: &UpstreamCluster,
        stats: &HttpStats,
        log: &mut RequestLog,
    ) -> Response<Body> {
        match self {
            Expired::Route => {
                cluster
                    .stats()
                    .upstream_rq_timeout
                    .fetch_add(1, Ordering::Relaxed);
                log.flags = "UT";
                local_reply(504, "upstream request timeout")
            }
            Expired::Idle => {
                stats.stream_idle_timeout.fetch_add(1, Ordering::Relaxed);
                log.flags = "SI";
                local_reply(408, "stream timeout")
            }
        }
    }
}

/// A response body that ends with an error (the downstream stream is reset) when no frame
/// comes for `idle`: the route's `idle_timeout` once the response has started.
struct IdleTimeoutBody {
    inner: Body,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimeoutBody {
    fn new(inner: Body, idle: Duration) -> IdleTimeoutBody {
        IdleTimeoutBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl hyper::body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("stream idle timeout".into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Hop-by-hop headers, never forwarded.
const HOP_BY_HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::PROXY_AUTHORIZATION,
    header::HeaderName::from_static("keep-alive"),
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names present (compared, not hashed)
    // decides, instead of six hashed removals every time.
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// A request ready to send upstream, possibly several times.
struct UpstreamRequest {
    method: http::Method,
    /// Origin-form, rewritten if the route says so (parsed once, cloned per attempt).
    uri: http::Uri,
    version: Version,
    headers: HeaderMap,
    /// The request's place on a hash ring (ring hash clusters only, else random).
    hash: Option<u64>,
    /// `Ok` buffered (retries possible), `Err` streamed once.
    body: Result<Bytes, Option<Body>>,
}

/// Bodies are buffered for retries up to this size (Envoy's default buffer limit is 1 MiB).
const RETRY_BUFFER_LIMIT: usize = 1 << 20;

impl UpstreamRequest {
    /// Not async, so the (rare) body buffering's future is not part of every request's: it
    /// would be held, and copied, in each of the request's enclosing futures.
    fn new(
        parts: http::request::Parts,
        body: Body,
        route: route::MatchedRoute<'_>,
        forward: &Forward,
        cluster: &UpstreamCluster,
    ) -> UpstreamRequest {
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        let hash = matches!(cluster.config.lb_policy, LbPolicy::RingHash { .. }).then(|| {
            let authority = parts
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
                .unwrap_or("");
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            request_hash(authority, path)
        });
        if let Some(host) = &forward.host_rewrite {
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert(header::HOST, v);
            }
        } else if !headers.contains_key(header::HOST) {
            if let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(header::HOST, v);
            }
        }
        route.change_request_headers(&mut headers);
        let original = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let rewritten = match (&forward.prefix_rewrite, &route.matcher.path) {
            (Some(rewrite), PathMatch::Prefix(prefix)) => original
                .strip_prefix(prefix.as_str())
                .map(|rest| format!("{rewrite}{rest}")),
            _ => match (route.path_rewrite, &forward.regex_rewrite) {
                (Some(regex), Some(rewrite)) => {
                    let path = parts.uri.path();
                    let new = route::regex_replace(regex, path, &rewrite.substitution);
                    Some(match parts.uri.query() {
                        Some(q) => format!("{new}?{q}"),
                        None => new,
                    })
                }
                _ => None,
            },
        };
        let uri = match rewritten {
            Some(path) => path.parse().unwrap_or_default(),
            // Origin-form from the request's own path (shares its bytes, no parsing).
            None => match parts.uri.path_and_query() {
                Some(pq) => http::Uri::from(pq.clone()),
                None => http::Uri::from_static("/"),
            },
        };
        let version = match cluster.config.protocol {
            UpstreamProtocol::Http2 => Version::HTTP_2,
            UpstreamProtocol::Downstream => Version::HTTP_11,
        };
        UpstreamRequest {
            method: parts.method,
            uri,
            version,
            headers,
            hash,
            body: Err(Some(body)),
        }
    }

    /// Reads a body of at most [`RETRY_BUFFER_LIMIT`] bytes into memory so that the request
    /// can be sent again; a larger (or unknown-length) body stays streamed, sent once.
    async fn buffer_for_retries(&mut self) {
        let Err(Some(body)) = &self.body else {
            return;
        };
        let small = hyper::body::Body::size_hint(body)
            .upper()
            .is_some_and(|n| n as usize <= RETRY_BUFFER_LIMIT);
        if !small {
            return;
        }
        // A body that could not be read (the client reset mid-body) goes upstream empty.
        let Err(Some(body)) = std::mem::replace(&mut self.body, Ok(Bytes::new())) else {
            return;
        };
        if hyper::body::Body::is_end_stream(&body) {
            return;
        }
        if let Ok(collected) = body.collect().await {
            self.body = Ok(collected.to_bytes());
        }
    }

    fn can_retry(&self) -> bool {
        self.body.is_ok()
    }

    /// The request for one attempt, origin-form (the pool makes it absolute for HTTP/2). On
    /// the `last` attempt the headers are moved rather than copied.
    fn build(&mut self, last: bool) -> Request<Body> {
        let body: Body = match &mut self.body {
            Ok(bytes) => Full::new(bytes.clone())
                .map_err(|e| match e {})
                .boxed_unsync(),
            Err(streamed) => streamed.take().unwrap_or_default(),
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        request
    }
}

/// Undoes an in-flight count when the response body is finished or dropped.
struct InFlight {
    cluster: Arc<UpstreamCluster>,
    host: Arc<Host>,
}

impl InFlight {
    fn start(cluster: &Arc<UpstreamCluster>, host: &Arc<Host>) -> InFlight {
        host.active_requests.fetch_add(1, Ordering::Relaxed);
        cluster
            .stats()
            .upstream_rq_active
            .fetch_add(1, Ordering::Relaxed);
        InFlight {
            cluster: cluster.clone(),
            host: host.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.host.active_requests.fetch_sub(1, Ordering::Relaxed);
        self.cluster
            .stats()
            .upstream_rq_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Releases a circuit-breaker slot when dropped.
struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn retriable(policy: &RetryPolicy, outcome: Outcome) -> bool {
    let on = &policy.retry_on;
    match outcome {
        Outcome::Status(s) => {
            (on.five_xx && s >= 500)
                || (on.gateway_error && matches!(s, 502..=504))
                || (on.retriable_status_codes && policy.retriable_status_codes.contains(&s))
        }
        Outcome::ConnectFailure => on.connect_failure || on.five_xx || on.gateway_error || on.reset,
        Outcome::Reset => on.reset || on.five_xx || on.gateway_error || on.refused_stream,
        Outcome::Timeout => on.five_xx || on.gateway_error || on.reset,
    }
}

/// Exponential backoff with full jitter: a random wait up to `base * 2^(retry-1)`, capped.
fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let base = if policy.backoff_base.is_zero() {
        Duration::from_millis(25)
    } else {
        policy.backoff_base
    };
    let max = if policy.backoff_max.is_zero() {
        base * 10
    } else {
        policy.backoff_max
    };
    let ceiling = base.saturating_mul(1 << (retry - 1).min(16)).min(max);
    Duration::from_micros(rand::thread_rng().gen_range(0..=ceiling.as_micros() as u64))
}

async fn forward_with_retries(
    mut request: UpstreamRequest,
    cluster: &Arc<UpstreamCluster>,
    forward: &Forward,
    log: &mut RequestLog,
) -> Response<Body> {
    let shared = &cluster.shared;
    let stats = &shared.stats;
    let limits = cluster.config.circuit_breakers;
    if shared.requests.fetch_add(1, Ordering::Relaxed) >= limits.max_requests {
        shared.requests.fetch_sub(1, Ordering::Relaxed);
        stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        log.flags = "UO";
        let mut response = local_reply(503, "upstream overflow");
        response
            .headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        return response;
    }
    let _request_slot = Slot(&shared.requests);
    let policy = forward.retry.as_ref();
    let max_attempts = 1 + policy.map(|p| p.num_retries).unwrap_or(0);
    let mut tried: Vec<Arc<Host>> = Vec::new();
    let mut attempt = 0;
    let mut moved = 0;
    // The retry in progress holds one of the cluster's `max_retries` slots until it ends.
    let mut retry_slot: Option<Slot<'_>> = None;
    loop {
        attempt += 1;
        log.attempts = attempt;
        // One clock read for the pick's ejection checks, the pool's idle check and the timing.
        let started = Instant::now();
        let Some(host) = cluster.pick_at(
            PickContext {
                hash: request.hash,
                exclude: &tried,
            },
            ms_at(started),
        ) else {
            stats
                .upstream_cx_none_healthy
                .fetch_add(1, Ordering::Relaxed);
            log.flags = "UH";
            return local_reply(503, "no healthy upstream");
        };
        log.host = Some(host.clone());
        let in_flight = InFlight::start(cluster, &host);
        let checkout = client::checkout(cluster, &host, started).await;
        if let Err(SendError::Ejected) = checkout {
            // The host was ejected while this request waited for a connection to it: picked
            // again, elsewhere, without using up an attempt (each host once at most).
            if moved < cluster.hosts.len() {
                moved += 1;
                attempt -= 1;
                tried.push(host);
                continue;
            }
        }
        let last = attempt >= max_attempts || !request.can_retry();
        stats.upstream_rq_total.fetch_add(1, Ordering::Relaxed);
        let per_try = policy
            .and_then(|p| p.per_try_timeout)
            .filter(|t| !t.is_zero());
        let sent = match checkout {
            // The response body holds the in-flight count until it ends or is dropped.
            Ok(conn) => {
                let request = request.build(last);
                client::send(conn, cluster, &host, request, per_try, in_flight).await
            }
            Err(e) => Err(e),
        };
        let (outcome, response) = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                stats.record_status(status);
                stats.upstream_rq_time.record(started.elapsed());
                (Outcome::Status(status), Some(response))
            }
            Err(SendError::Connect(ConnectError::Overflow(_))) => {
                log.flags = "UO";
                let mut response = local_reply(503, "upstream overflow");
                response
                    .headers_mut()
                    .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                return response;
            }
            // Connect failures were recorded for outlier detection when they happened.
            Err(e @ (SendError::Connect(_) | SendError::Ejected)) => {
                tracing::debug!(cluster = %cluster.name(), error = %e, "upstream connect failed");
                (Outcome::ConnectFailure, None)
            }
            Err(e @ (SendError::Http(_) | SendError::H1(_))) => {
                tracing::debug!(cluster = %cluster.name(), error = %e, "upstream request failed");
                cluster.record_outcome(&host, Outcome::Reset);
                (Outcome::Reset, None)
            }
            Err(SendError::PerTryTimeout) => {
                stats
                    .upstream_rq_per_try_timeout
                    .fetch_add(1, Ordering::Relaxed);
                cluster.record_outcome(&host, Outcome::Timeout);
                (Outcome::Timeout, None)
            }
        };
        if let Outcome::Status(_) = outcome {
            cluster.record_outcome(&host, outcome);
        }
        let retry = policy
            .filter(|p| attempt < max_attempts && request.can_retry() && retriable(p, outcome));
        if let Some(policy) = retry {
            // This request's own slot is handed back first, so a chain of retries holds one.
            drop(retry_slot.take());
            if shared.retries.fetch_add(1, Ordering::Relaxed) < limits.max_retries {
                retry_slot = Some(Slot(&shared.retries));
                stats.upstream_rq_retry.fetch_add(1, Ordering::Relaxed);
                drop(response);
                tried.push(host);
                tokio::time::sleep(backoff(policy, attempt)).await;
                continue;
            }
            shared.retries.fetch_sub(1, Ordering::Relaxed);
            stats
                .upstream_rq_retry_overflow
                .fetch_add(1, Ordering::Relaxed);
        }
        return match (outcome, response) {
            (_, Some(response)) => {
                let mut response = response;
                strip_hop_by_hop(response.headers_mut());
                response
            }
            (Outcome::Timeout, None) => {
                log.flags = "UT";
                local_reply(504, "upstream request timeout")
            }
            (Outcome::ConnectFailure, None) => {
                log.flags = "UF";
                local_reply(503, "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
            }
            (_, None) => {
                log.flags = "UR";
                local_reply(503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryOn;

    #[test]
    fn retry_conditions_and_backoff() {
        let policy = RetryPolicy {
            retry_on: RetryOn {
                gateway_error: true,
                ..Default::default()
            },
            num_retries: 3,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(30),
            retriable_status_codes: vec![409],
        };
        assert!(retriable(&policy, Outcome::Status(503)));
        assert!(!retriable(&policy, Outcome::Status(500)));
        assert!(!retriable(&policy, Outcome::Status(409)));
        assert!(retriable(&policy, Outcome::ConnectFailure));
        for retry in 1..6 {
            assert!(backoff(&policy, retry) <= Duration::from_millis(30));
        }
    }
}
