//! The diagnostics server (port 5680): `/healthy` (the process is up), `/ready` (start-up is
//! complete and the store answers) and `/metrics` (Prometheus text format).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the diagnostics endpoints report on.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub metrics: Arc<Metrics>,
    /// Set once start-up (store opened, defaults created, listeners serving) is complete.
    pub ready: Arc<AtomicBool>,
}

impl Diagnostics {
    pub fn new(metrics: Arc<Metrics>) -> Diagnostics {
        Diagnostics {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

pub fn router(diagnostics: Diagnostics) -> Router {
    Router::new()
        .route("/healthy", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(diagnostics)
}

async fn ready(State(d): State<Diagnostics>) -> impl IntoResponse {
    if d.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(d): State<Diagnostics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.render(),
    )
}

/// Serves the diagnostics endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    diagnostics: Diagnostics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(diagnostics))
        .with_graceful_shutdown(shutdown)
        .await
}
