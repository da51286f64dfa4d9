//! The proxy's admin HTTP server (port [`crate::ADMIN_PORT`] by default), Envoy's paths:
//! - `GET /ready`: 200 `LIVE` once a complete configuration has been received, 503 before;
//! - `GET /config_dump`: the xDS resources last accepted, as Envoy JSON (config-dump's form,
//!   private keys redacted);
//! - `GET /stats/prometheus` and `GET /stats`: whatever the data path's [`StatsSource`] renders
//!   (Prometheus text).
//!
//! The server takes a bound listener and a shutdown future, as every Meridian server does.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::xds::Accepted;

/// Renders the data path's statistics in Prometheus text format.
pub type StatsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// What the admin server shows.
#[derive(Clone)]
pub struct AdminState {
    pub accepted: watch::Receiver<Arc<Accepted>>,
    pub stats: StatsSource,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// Why the admin server stopped.
#[derive(Debug, thiserror::Error)]
#[error("admin server: {0}")]
pub struct AdminError(#[from] std::io::Error);

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/config_dump", get(config_dump))
        .route("/stats/prometheus", get(stats))
        .route("/stats", get(stats))
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn ready(State(state): State<AdminState>) -> Response {
    if state.accepted.borrow().complete {
        (StatusCode::OK, "LIVE\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "PRE_INITIALIZING: no complete configuration received yet\n",
        )
            .into_response()
    }
}

async fn config_dump(State(state): State<AdminState>) -> Response {
    let accepted = state.accepted.borrow().clone();
    match accepted.dump() {
        Ok(dump) => axum::Json(dump).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the configuration: {e}\n"),
        )
            .into_response(),
    }
}

async fn stats(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        (state.stats)(),
    )
        .into_response()
}
