//! Runs what every control plane runs: the store, the admin token, the defaults, the REST API and
//! the diagnostics server, until a shutdown future completes.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mesh_store::{ResourceStore, SledStore};
use tokio::net::TcpListener;

use crate::api::{self, ApiState};
use crate::auth::AdminToken;
use crate::cluster::Cluster;
use crate::diagnostics::{self, Diagnostics};
use crate::metrics::{MeteredStore, Metrics};
use crate::{defaults, CpMode};

/// Where a control plane keeps its state and what role it plays.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub mode: CpMode,
}

/// The listeners every control plane serves, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub diagnostics: TcpListener,
}

/// A control plane's opened state, before it starts serving. Binaries add their own servers
/// (KDS, xDS) beside the common ones with [`Server::serve`].
pub struct Server {
    pub store: Arc<dyn ResourceStore>,
    pub metrics: Arc<Metrics>,
    pub token: AdminToken,
    pub mode: CpMode,
    /// Set when the store is one node of a cluster ([`Server::open_on`]).
    pub cluster: Option<Arc<dyn Cluster>>,
    diagnostics: Diagnostics,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the store under `data_dir/store`, loads or creates the admin token, and creates the
    /// default mesh on a fresh global or standalone control plane.
    pub async fn open(config: ServerConfig) -> anyhow::Result<Server> {
        create_data_dir(&config)?;
        let sled = SledStore::open(config.data_dir.join("store"))?;
        let server = Server::open_on(config, Arc::new(sled), None)?;
        // A zone's meshes come from the global; only a global or standalone one creates its own.
        if !matches!(server.mode, CpMode::Zone { .. }) {
            defaults::ensure_default_mesh(server.store.as_ref()).await?;
        }
        Ok(server)
    }

    /// A control plane on a store opened by the caller (a node of a cluster, with its view in
    /// `cluster`): loads or creates the admin token in `data_dir`. The default mesh is the
    /// caller's to create (`defaults::ensure_default_mesh`), once the store takes writes.
    pub fn open_on(
        config: ServerConfig,
        store: Arc<dyn ResourceStore>,
        cluster: Option<Arc<dyn Cluster>>,
    ) -> anyhow::Result<Server> {
        create_data_dir(&config)?;
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn ResourceStore> = Arc::new(MeteredStore::new(store, metrics.clone()));
        let token = AdminToken::load_or_create(&config.data_dir)?;
        let mut diagnostics = Diagnostics::new(metrics.clone());
        diagnostics.cluster = cluster.clone();
        Ok(Server {
            store,
            metrics,
            token,
            mode: config.mode,
            cluster,
            diagnostics,
        })
    }

    /// Serves the REST API and diagnostics until `shutdown` completes; reports ready once both
    /// are serving.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.serve_with(listeners, axum::Router::new(), shutdown)
            .await
    }

    /// [`Server::serve`] with `extra` REST routes (see [`api::router`]).
    pub async fn serve_with(
        self,
        listeners: Listeners,
        extra: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let state = Arc::new(ApiState {
            store: self.store.clone(),
            mode: self.mode.clone(),
            token: self.token.clone(),
            metrics: self.metrics.clone(),
            cluster: self.cluster.clone(),
        });
        let api = api::serve(listeners.api, state, extra, stopped(stop_rx.clone()));
        let diag = diagnostics::serve(
            listeners.diagnostics,
            self.diagnostics.clone(),
            stopped(stop_rx),
        );
        self.diagnostics.ready.store(true, Ordering::Release);
        tracing::info!(mode = self.mode.name(), "control plane ready");
        tokio::try_join!(api, diag)?;
        Ok(())
    }
}

fn create_data_dir(config: &ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "--data-dir {}: cannot create: {e}",
            config.data_dir.display()
        )
    })
}
