//! Process start-up shared by the control-plane binaries: logging, binding listeners with an
//! error that names the flag, the ready file that tells a supervisor (`meshctl up`) which ports
//! were bound, and the shutdown signal.

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;

/// Starts logging to stderr, filtered by `RUST_LOG` (default `info`), as JSON when
/// `MERIDIAN_LOG_FORMAT=json`.
pub fn init_tracing() {
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

/// Binds `addr`, naming the flag that configured it when that fails.
pub async fn bind(flag: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{flag} {addr}: cannot listen: {e}"))
}

/// Writes `value` as JSON to `path` atomically (a temporary file, then a rename), so a reader
/// never sees half a file.
pub fn write_ready_file(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .map_err(|e| anyhow::anyhow!("{}: cannot write the ready file: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("{}: cannot write the ready file: {e}", path.display()))?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// `http://ADDR` for a bound listener.
pub fn http_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
