//! `zone-proxy run ...`: a sidecar, zone ingress or zone egress. Parses the flags, starts
//! logging, a control runtime and `--concurrency` worker threads, binds the admin listener and
//! hands over to [`zone_proxies::run::run_proxy`]; SIGTERM or SIGINT stops it.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use zone_proxies::run::{run_proxy, RunArgs};
use zone_proxies::workers::Workers;

/// mimalloc instead of glibc's malloc: a request's allocations cost a fraction of the
/// instructions, and no arena lock is shared by the worker threads (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, clap::Parser)]
#[command(name = "zone-proxy", version, about = "Meridian's zone proxy")]
enum Command {
    /// Run the proxy.
    Run(RunArgs),
}

fn main() -> anyhow::Result<()> {
    let Command::Run(args) = Command::parse();
    init_tracing();
    let runtime = args.runtime().context("starting the runtime")?;
    let workers = args.workers().context("starting the worker threads")?;
    runtime.block_on(run(args, Arc::new(workers)))
}

async fn run(args: RunArgs, workers: Arc<Workers>) -> anyhow::Result<()> {
    // A definition that cannot register fails here, before anything listens or connects.
    let source = args.source()?;
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("--admin {}: cannot listen", args.admin))?;
    tracing::info!(admin = %admin.local_addr()?, mode = ?args.mode, workers = workers.handles().len(), "zone proxy starting");
    run_proxy(source, admin, Some(workers), shutdown_signal()).await?;
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as JSON when
/// `MERIDIAN_LOG_FORMAT=json` (as the control planes do).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("MERIDIAN_LOG_FORMAT").as_deref() == Ok("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
