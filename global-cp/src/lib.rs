//! The global control plane: owns policy for the whole federation. It serves the REST API and
//! diagnostics (shared with the zone control plane, in the `control-plane` crate) over its own
//! store, creates the `default` mesh at first start, and holds the KDS listener on which zones
//! will connect (KDS itself arrives with issue [2]; until then the port is bound but not served).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use control_plane::server::{Listeners, Server, ServerConfig};
use control_plane::{process, CpMode};
use tokio::net::TcpListener;

/// Everything the global control plane is configured with (flags and `MERIDIAN_*` variables).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "global-cp", version, about = "Meridian's global control plane")]
pub struct Config {
    /// Where the store and the admin token live.
    #[arg(
        long,
        env = "MERIDIAN_DATA_DIR",
        default_value = "/var/lib/meridian/global"
    )]
    pub data_dir: PathBuf,
    /// REST API address.
    #[arg(long, env = "MERIDIAN_API_ADDR", default_value = "0.0.0.0:5681")]
    pub api_addr: SocketAddr,
    /// Diagnostics address (/healthy, /ready, /metrics).
    #[arg(
        long,
        env = "MERIDIAN_DIAGNOSTICS_ADDR",
        default_value = "0.0.0.0:5680"
    )]
    pub diagnostics_addr: SocketAddr,
    /// KDS address (zones connect here).
    #[arg(long, env = "MERIDIAN_KDS_ADDR", default_value = "0.0.0.0:5685")]
    pub kds_addr: SocketAddr,
    /// After binding, write the bound addresses here as JSON (for supervisors such as `meshctl up`).
    #[arg(long, env = "MERIDIAN_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

/// The global control plane's bound listeners.
#[derive(Debug)]
pub struct GlobalListeners {
    pub api: TcpListener,
    pub diagnostics: TcpListener,
    pub kds: TcpListener,
}

impl GlobalListeners {
    pub async fn bind(config: &Config) -> anyhow::Result<GlobalListeners> {
        Ok(GlobalListeners {
            api: process::bind("--api-addr", config.api_addr).await?,
            diagnostics: process::bind("--diagnostics-addr", config.diagnostics_addr).await?,
            kds: process::bind("--kds-addr", config.kds_addr).await?,
        })
    }

    /// The addresses as the ready file reports them.
    pub fn describe(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::json!({
            "api": process::http_url(self.api.local_addr()?),
            "diagnostics": process::http_url(self.diagnostics.local_addr()?),
            "kds": self.kds.local_addr()?.to_string(),
        }))
    }
}

/// Runs the global control plane on bound listeners until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: GlobalListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = Server::open(ServerConfig {
        data_dir: config.data_dir.clone(),
        mode: CpMode::Global,
    })
    .await?;
    // Held, not served, until KDS lands: the port stays reserved for the zones.
    let _kds = listeners.kds;
    server
        .serve(
            Listeners {
                api: listeners.api,
                diagnostics: listeners.diagnostics,
            },
            shutdown,
        )
        .await
}
