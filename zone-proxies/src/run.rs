//! Running a zone proxy: its configuration source (the ADS client, or a static file), the admin
//! server, and the data path, all stopped by one shutdown. The binary is a thin shell over
//! [`run`]; tests call the same function in-process.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState, StatsSource};
use crate::config::ProxyConfig;
use crate::dataplane::DataplaneOptions;
use crate::registration::{DefinitionArgs, DefinitionError};
use crate::workers::Workers;
use crate::xds::client::{AdsClient, ClientOptions, Publisher, Refused, Subscriptions};
use crate::xds::static_file::{self, StaticError};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The zone CP, over ADS.
    Ads(ClientOptions),
    /// A config dump file, read once.
    Static(PathBuf),
}

/// Why the proxy stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Static(#[from] StaticError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("data path: {0}")]
    DataPath(String),
}

/// A shutdown future that can be handed to several tasks.
pub type Shutdown = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

fn shutdown_of(rx: &watch::Receiver<bool>) -> Shutdown {
    use futures::FutureExt as _;
    let mut rx = rx.clone();
    async move {
        // An error means the sender is gone: stop then too.
        let _ = rx.wait_for(|stop| *stop).await;
    }
    .boxed()
    .shared()
}

/// Runs the proxy until `shutdown` completes: the configuration source publishes to a watch,
/// the admin server serves on `admin_listener`, and `data_path` is called once with the
/// configuration watch and a shutdown future, and runs the traffic ([`run_proxy`] passes
/// [`crate::dataplane::run`]). Returns when all of them have stopped.
pub async fn run<D, F, E>(
    source: ConfigSource,
    admin_listener: TcpListener,
    stats: StatsSource,
    data_path: D,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError>
where
    D: FnOnce(watch::Receiver<Arc<ProxyConfig>>, Shutdown) -> F,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (publisher, subscriptions) = Publisher::new();
    let Subscriptions { config, accepted } = subscriptions;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    match source {
        ConfigSource::Static(path) => {
            let resources = static_file::load(&path)?;
            let version = [("static".to_owned(), path.display().to_string())];
            publisher.publish(&resources, version.into_iter().collect());
            tracing::info!(file = %path.display(), "static configuration loaded");
            // The publisher lives until shutdown, so the watch stays open for the data path.
            let stop = shutdown_of(&stop_rx);
            tasks.spawn(async move {
                stop.await;
                drop(publisher);
                Ok(())
            });
        }
        ConfigSource::Ads(options) => {
            let client = AdsClient::new(options, publisher);
            let stop = shutdown_of(&stop_rx);
            tasks.spawn(async move { client.run(stop).await.map_err(RunError::from) });
        }
    }
    let state = AdminState { accepted, stats };
    let stop = shutdown_of(&stop_rx);
    tasks.spawn(async move {
        admin::serve(admin_listener, state, stop)
            .await
            .map_err(RunError::from)
    });
    let data = data_path(config, shutdown_of(&stop_rx));
    tasks.spawn(async move { data.await.map_err(|e| RunError::DataPath(e.to_string())) });

    // Everything stops on `shutdown`, or when any part ends on its own (an error, or a data
    // path that gave up).
    tokio::pin!(shutdown);
    let mut result = Ok(());
    tokio::select! {
        () = &mut shutdown => {}
        ended = tasks.join_next() => {
            if let Some(Ok(Err(e))) = ended {
                result = Err(e);
            }
        }
    }
    let _ = stop_tx.send(true);
    while let Some(ended) = tasks.join_next().await {
        if let (Ok(Err(e)), Ok(())) = (ended, &result) {
            result = Err(e);
        }
    }
    result
}

/// Runs a zone proxy with Meridian's data path ([`crate::dataplane::run_with`]) and its
/// statistics on the admin server: what `zone-proxy run` does, callable in-process. Connections
/// are served on `workers` when given, else on the calling runtime.
pub async fn run_proxy(
    source: ConfigSource,
    admin_listener: TcpListener,
    workers: Option<Arc<Workers>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let stats = crate::stats::Stats::new();
    let rendered = stats.clone();
    let options = DataplaneOptions {
        workers,
        ..DataplaneOptions::default()
    };
    run(
        source,
        admin_listener,
        Arc::new(move || rendered.render()),
        move |config, stop| crate::dataplane::run_with(config, stats, stop, options),
        shutdown,
    )
    .await
}

/// `zone-proxy run`'s flags (each also an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// What the proxy runs as.
    #[arg(long, env = "MERIDIAN_PROXY_MODE", value_enum)]
    pub mode: crate::ProxyMode,
    /// The zone CP's xDS URL (`http://host:5678`); not needed with --static.
    #[arg(
        long,
        env = "MERIDIAN_CP_ADDRESS",
        required_unless_present = "static_file"
    )]
    pub cp: Option<String>,
    /// File holding the dataplane token the zone CP issued (`POST /tokens/dataplane`).
    #[arg(long, env = "MERIDIAN_DATAPLANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The Dataplane (sidecar), ZoneIngress or ZoneEgress name (with --dataplane-file, the
    /// file's).
    #[arg(
        long,
        env = "MERIDIAN_PROXY_NAME",
        required_unless_present_any = ["static_file", "dataplane_file"]
    )]
    pub name: Option<String>,
    /// The sidecar's mesh.
    #[arg(long, env = "MERIDIAN_MESH", default_value = "default")]
    pub mesh: String,
    /// The admin server's address.
    #[arg(long, env = "MERIDIAN_ADMIN_ADDRESS", default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::ADMIN_PORT)))]
    pub admin: std::net::SocketAddr,
    /// Run from this config dump (JSON, as `GET /meshes/{m}/dataplanes/{n}/xds` serves it, with
    /// private keys filled in) instead of the zone CP.
    #[arg(long = "static", env = "MERIDIAN_STATIC_CONFIG")]
    pub static_file: Option<PathBuf>,
    /// Worker threads of the data path (Envoy's `--concurrency`); default: one per CPU.
    #[arg(long, env = "MERIDIAN_PROXY_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,
    /// The resource the proxy registers with the zone CP (without it, it must exist there).
    #[command(flatten)]
    pub definition: DefinitionArgs,
}

impl RunArgs {
    /// The runtime of the control side (xDS, SDS, the admin server, health checks): one thread;
    /// the traffic runs on [`RunArgs::workers`].
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }

    /// The data path's workers: `--concurrency` of them, else one per CPU.
    pub fn workers(&self) -> std::io::Result<Workers> {
        Workers::start(
            self.concurrency
                .map_or_else(Workers::default_count, usize::from),
        )
    }

    /// The configuration source these flags describe; the proxy's definition, if they give one,
    /// is read and validated now, before anything connects.
    pub fn source(&self) -> Result<ConfigSource, DefinitionError> {
        if let Some(path) = &self.static_file {
            return Ok(ConfigSource::Static(path.clone()));
        }
        // clap requires --cp, and --name unless a file names the proxy.
        let server = self.cp.clone().unwrap_or_default();
        let definition = crate::registration::definition(
            self.mode,
            self.name.as_deref(),
            &self.mesh,
            &self.definition,
        )?;
        let node_id = match &definition {
            Some(d) => self.mode.node_id(d.mesh(), d.name()),
            None => self
                .mode
                .node_id(&self.mesh, self.name.as_deref().unwrap_or_default()),
        };
        let mut options = ClientOptions::new(server, node_id);
        options.token_file = self.token_file.clone();
        options.definition = definition.map(|d| d.json);
        Ok(ConfigSource::Ads(options))
    }
}
