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
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (state.stats)(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    #[tokio::test]
    async fn ready_only_once_complete_and_stats_from_the_data_path() {
        let (tx, rx) = watch::channel(Arc::new(Accepted::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AdminState {
            accepted: rx,
            stats: Arc::new(|| "downstream_cx_total 7\n".to_owned()),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));
        assert_eq!(get(addr, "/ready").await.0, 503);
        tx.send_replace(Arc::new(Accepted {
            complete: true,
            ..Accepted::default()
        }));
        assert_eq!(get(addr, "/ready").await, (200, "LIVE\n".to_owned()));
        assert_eq!(get(addr, "/stats").await.1, "downstream_cx_total 7\n");
        let (status, dump) = get(addr, "/config_dump").await;
        assert_eq!(status, 200);
        let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
        assert_eq!(dump["listeners"], serde_json::json!([]));
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
