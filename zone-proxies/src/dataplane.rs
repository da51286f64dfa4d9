//! The running data plane: follows the configuration channel, keeps one accept loop per
//! listener (bound when it appears, kept while its address stays, stopped when it goes or
//! moves), publishes each version's [`Runtime`] to connections, and drains on shutdown.
//!
//! A configuration update never touches established connections: a removed listener only
//! stops accepting, and its connections finish on the version they started with (HTTP requests
//! on a kept connection see new routes and clusters). Shutdown stops every accept loop, asks
//! HTTP connections to finish their in-flight requests and close, closes the upstream
//! connection pools (each connection as soon as it is idle), and after the drain deadline
//! closes whatever is left.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::access_log::AccessLogs;
use crate::config::ProxyConfig;
use crate::runtime::Runtime;
use crate::stats::Stats;
use crate::woken_only::WokenOnly;
use crate::workers::Workers;

/// Where the data plane is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainState {
    Serving,
    /// Finish in-flight requests, take no new ones, close.
    Draining,
    /// The drain deadline passed: close now.
    Closed,
}

/// Errors that end [`run`].
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the configuration channel closed before any configuration arrived")]
    NoConfiguration,
}

/// Options of [`run_with`].
#[derive(Debug)]
pub struct DataplaneOptions {
    /// How long in-flight work may take after shutdown begins.
    pub drain_timeout: Duration,
    /// Receives the bound address of every listener after each update (listeners configured on
    /// port 0 get an ephemeral one).
    pub bound: Option<watch::Sender<BTreeMap<String, SocketAddr>>>,
    /// Access log writers (shared with whoever else writes the same paths).
    pub access_logs: Arc<AccessLogs>,
    /// Worker threads that accept and serve the connections; without them, connections are
    /// served on the runtime that runs [`run_with`].
    pub workers: Option<Arc<Workers>>,
}

impl Default for DataplaneOptions {
    fn default() -> Self {
        DataplaneOptions {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            bound: None,
            access_logs: Arc::default(),
            workers: None,
        }
    }
}

/// Envoy's `--drain-time-s` default is 600 s; a mesh proxy stopped by its orchestrator has
/// far less, so Meridian uses Kubernetes' default grace period minus a margin.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Runs the data plane on `config` until `shutdown` completes, then drains.
pub async fn run(
    config: watch::Receiver<Arc<ProxyConfig>>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DataplaneError> {
    run_with(config, stats, shutdown, DataplaneOptions::default()).await
}

struct RunningListener {
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    /// The accept loops: one per worker.
    tasks: Vec<JoinHandle<()>>,
}

impl RunningListener {
    /// Stops accepting (established connections carry on).
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// [`run`] with explicit options.
pub async fn run_with(
    mut config: watch::Receiver<Arc<ProxyConfig>>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
    options: DataplaneOptions,
) -> Result<(), DataplaneError> {
    let first = config.borrow_and_update().clone();
    let runtime = Arc::new(Runtime::build(first, None, &stats, &options.access_logs));
    let (runtime_tx, runtime_rx) = watch::channel(runtime.clone());
    let (drain_tx, drain_rx) = watch::channel(DrainState::Serving);
    // Every connection holds a clone of `alive_tx`; when all are gone, `alive_rx` yields None.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut listeners: HashMap<String, RunningListener> = HashMap::new();
    let ctx = AcceptContext {
        runtime: runtime_rx,
        drain: drain_rx,
        alive: alive_tx,
    };
    // Not in the context every connection clones: the last holder drops the workers, which
    // must not be one of their own tasks.
    let workers = options.workers.as_deref();
    let initial = runtime_tx.borrow().clone();
    reconcile(
        &mut listeners,
        &initial,
        &ctx,
        workers,
        options.bound.as_ref(),
    )
    .await;
    drop(initial);

    tokio::pin!(shutdown);
    let mut config_open = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = config.changed(), if config_open => {
                if changed.is_err() {
                    // The source went away: keep serving the last configuration.
                    config_open = false;
                    continue;
                }
                let next = config.borrow_and_update().clone();
                let previous = runtime_tx.borrow().clone();
                let built = Arc::new(Runtime::build(next, Some(&previous), &stats, &options.access_logs));
                runtime_tx.send_replace(built.clone());
                built.clusters.close_departed(&previous.clusters);
                reconcile(&mut listeners, &built, &ctx, workers, options.bound.as_ref()).await;
            }
        }
    }

    tracing::info!(drain_timeout = ?options.drain_timeout, "draining");
    for (_, l) in listeners.drain() {
        l.stop().await;
    }
    drain_tx.send_replace(DrainState::Draining);
    // Pooled upstream connections close once idle (requests still draining get connections
    // of their own): the next hop, often a proxy draining too, is not left waiting on them.
    runtime_tx.borrow().clusters.close_pools();
    drop(ctx);
    if tokio::time::timeout(options.drain_timeout, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing the remaining connections");
        drain_tx.send_replace(DrainState::Closed);
        // Connections close as soon as they see `Closed`; wait for them to be gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), alive_rx.recv()).await;
    }
    Ok(())
}

#[derive(Clone)]
struct AcceptContext {
    runtime: watch::Receiver<Arc<Runtime>>,
    drain: watch::Receiver<DrainState>,
    alive: mpsc::Sender<()>,
}

/// Starts accepting on `socket`: on every worker when there are workers (each registers a
/// duplicate of the socket in its own event loop; the kernel hands each connection to one of
/// them), else on the current runtime.
fn spawn_accept_loops(
    socket: TcpListener,
    name: &Arc<str>,
    stop: &watch::Receiver<bool>,
    ctx: &AcceptContext,
    workers: Option<&Workers>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let Some(workers) = workers else {
        return Ok(vec![tokio::spawn(accept_loop(
            name.clone(),
            socket,
            stop.clone(),
            ctx.clone(),
        ))]);
    };
    let shared = socket.into_std()?;
    let mut tasks = Vec::new();
    for worker in workers.handles() {
        let duplicate = shared.try_clone()?;
        let (name, stop, ctx) = (name.clone(), stop.clone(), ctx.clone());
        tasks.push(worker.spawn(async move {
            // Registered with the worker's own event loop (it runs this task).
            match TcpListener::from_std(duplicate) {
                Ok(socket) => accept_loop(name, socket, stop, ctx).await,
                Err(e) => tracing::error!(listener = %name, error = %e, "worker cannot accept"),
            }
        }));
    }
    Ok(tasks)
}

async fn reconcile(
    running: &mut HashMap<String, RunningListener>,
    runtime: &Runtime,
    ctx: &AcceptContext,
    workers: Option<&Workers>,
    bound: Option<&watch::Sender<BTreeMap<String, SocketAddr>>>,
) {
    // Stop listeners that went away or moved (their connections carry on).
    let gone: Vec<String> = running
        .iter()
        .filter(|(name, l)| {
            runtime
                .config
                .listeners
                .get(*name)
                .is_none_or(|c| c.address != l.configured)
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        if let Some(l) = running.remove(&name) {
            l.stop().await;
            tracing::info!(listener = %name, "listener stopped");
        }
    }
    for (name, listener) in &runtime.config.listeners {
        if running.contains_key(name) {
            continue;
        }
        let socket = match TcpListener::bind(listener.address).await {
            Ok(socket) => socket,
            Err(e) => {
                tracing::error!(listener = %name, address = %listener.address, error = %e, "cannot bind listener; retried on the next update");
                continue;
            }
        };
        let bound_addr = socket.local_addr().unwrap_or(listener.address);
        let (stop, stop_rx) = watch::channel(false);
        let name_arc: Arc<str> = name.as_str().into();
        let tasks = match spawn_accept_loops(socket, &name_arc, &stop_rx, ctx, workers) {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::error!(listener = %name, address = %bound_addr, error = %e, "cannot share the listening socket with the workers; retried on the next update");
                continue;
            }
        };
        tracing::info!(listener = %name, address = %bound_addr, "listening");
        running.insert(
            name.clone(),
            RunningListener {
                configured: listener.address,
                bound: bound_addr,
                stop,
                tasks,
            },
        );
    }
    if let Some(bound) = bound {
        bound.send_replace(running.iter().map(|(n, l)| (n.clone(), l.bound)).collect());
    }
}

async fn accept_loop(
    name: Arc<str>,
    socket: TcpListener,
    mut stop: watch::Receiver<bool>,
    ctx: AcceptContext,
) {
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = ctx.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        let _alive = ctx.alive;
                        let mut closed = ctx.drain.clone();
                        // Polled only when the drain state changes, not at every wake-up of
                        // the connection's task (several per request).
                        let closed = WokenOnly::new(async move {
                            let _ = closed.wait_for(|s| *s == DrainState::Closed).await;
                        });
                        tokio::select! {
                            biased;
                            _ = crate::downstream::serve_connection(name, stream, peer, ctx.runtime, ctx.drain) => {}
                            _ = closed => {}
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly rather than spin.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
