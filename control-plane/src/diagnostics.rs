//! The diagnostics server (port 5680): `/healthy` (the process is up), `/ready` (start-up is
//! complete and the store answers), `/metrics` (Prometheus text format) and, on a node of a
//! cluster (the global), `/cluster` (node id, role, term, leader, members as JSON).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::cluster::Cluster;
use crate::metrics::Metrics;

/// What the diagnostics endpoints report on.
#[derive(Clone)]
pub struct Diagnostics {
    pub metrics: Arc<Metrics>,
    /// Set once start-up (store opened, defaults created, listeners serving) is complete.
    pub ready: Arc<AtomicBool>,
    /// The node's view when the store is one node of a cluster.
    pub cluster: Option<Arc<dyn Cluster>>,
}

impl std::fmt::Debug for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diagnostics")
            .field("ready", &self.ready)
            .field("cluster", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

impl Diagnostics {
    pub fn new(metrics: Arc<Metrics>) -> Diagnostics {
        Diagnostics {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            cluster: None,
        }
    }
}

pub fn router(diagnostics: Diagnostics) -> Router {
    Router::new()
        .route("/healthy", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .with_state(diagnostics)
}

async fn cluster(State(d): State<Diagnostics>) -> axum::response::Response {
    match &d.cluster {
        Some(cluster) => axum::Json(cluster.status()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "not a node of a cluster: this control plane has a single store\n",
        )
            .into_response(),
    }
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
