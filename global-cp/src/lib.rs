//! The global control plane: owns policy for the whole federation. It serves the REST API and
//! diagnostics (shared with the zone control plane, in the `control-plane` crate) over its own
//! store, creates the `default` mesh at first start, and serves KDS over TLS to the zones
//! (`kds::server`): zones authenticate with tokens it signs ([`zones`]: `POST /tokens/zone`), and
//! `GET /zones/_overview` shows each zone's connection. A zone's inventory outlives its
//! disconnection by `--zone-grace-period` (or until its Zone resource is deleted), then the
//! `kds::janitor` removes it. For every mesh whose enabled mTLS backend is `builtin` it creates
//! the mesh's CA as two Secrets ([`control_plane::ca`]), which KDS syncs to the zones.

pub mod zones;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Where KDS's TLS material (CA, server certificate) and zone-token signing keys live; the CA
    /// and certificate are generated here at first start. Default: `<data-dir>/kds`.
    #[arg(long, env = "MERIDIAN_KDS_TLS_DIR")]
    pub kds_tls_dir: Option<PathBuf>,
    /// A KDS server certificate (PEM) to use instead of the generated one (with --kds-tls-key).
    #[arg(long, env = "MERIDIAN_KDS_TLS_CERT", requires = "kds_tls_key")]
    pub kds_tls_cert: Option<PathBuf>,
    #[arg(long, env = "MERIDIAN_KDS_TLS_KEY", requires = "kds_tls_cert")]
    pub kds_tls_key: Option<PathBuf>,
    /// Extra names (DNS or IP) the generated KDS certificate covers, besides localhost, 127.0.0.1
    /// and this host's name. Repeatable.
    #[arg(
        long = "kds-hostname",
        env = "MERIDIAN_KDS_HOSTNAMES",
        value_delimiter = ','
    )]
    pub kds_hostnames: Vec<String>,
    /// How long a disconnected zone's inventory (dataplanes, ingresses, ...) stays at the global,
    /// so other zones keep routing to it, before it is removed: `300ms`, `10m`, `1h`, `2d`.
    /// Deleting the zone's Zone resource removes it at once.
    #[arg(
        long,
        env = "MERIDIAN_ZONE_GRACE_PERIOD",
        default_value = "1h",
        value_parser = parse_grace_period
    )]
    pub zone_grace_period: std::time::Duration,
}

/// A duration as Kuma writes them (`<n><unit>`, unit one of `ms`, `s`, `m`, `h`, `d`, `w`, `y`).
fn parse_grace_period(text: &str) -> Result<std::time::Duration, String> {
    mesh_api::core::common::parse_kuma_duration(text.trim())
        .ok_or_else(|| format!("{text:?} is not a duration such as 300ms, 10m, 1h or 2d"))
}

impl Config {
    fn kds_dir(&self) -> PathBuf {
        self.kds_tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("kds"))
    }
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

/// Runs the global control plane on bound listeners until `shutdown` completes. Once its state
/// is open (store, TLS material, signing keys) it writes the ready file, if configured: the bound
/// addresses plus `kdsCa`, the CA file zones verify KDS with.
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
    let kds_dir = config.kds_dir();
    let tls = match (&config.kds_tls_cert, &config.kds_tls_key) {
        (Some(cert), Some(key)) => kds::tls::KdsServerTls::from_files(cert, key)?,
        _ => kds::tls::KdsServerTls::load_or_generate(&kds_dir, &config.kds_hostnames)?,
    };
    let issuer = Arc::new(kds::auth::ZoneTokenIssuer::open(
        kds_dir.join("signing-keys"),
    )?);
    let kds_server = kds::server::KdsServer::new(
        server.store.clone(),
        Arc::new(kds::auth::TokenAuthenticator::new(issuer.clone())),
    );
    let janitor = kds::janitor::ZoneJanitor::new(
        server.store.clone(),
        kds_server.status(),
        config.zone_grace_period,
    );
    let zones_api = zones::router(zones::ZonesApi {
        issuer,
        status: kds_server.status(),
        store: server.store.clone(),
        admin: server.token.clone(),
    });
    let zone_status = kds_server.status();

    if let Some(path) = &config.ready_file {
        let mut addresses = listeners.describe()?;
        if let Some(ca) = tls.ca_path() {
            addresses["kdsCa"] = serde_json::Value::String(ca.display().to_string());
        }
        process::write_ready_file(path, &addresses)?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut kds = tokio::spawn(kds::server::serve(
        listeners.kds,
        Some(tls.server_tls_config()),
        kds_server,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(zones::register_connected_zones(
        zone_status,
        server.store.clone(),
        stopped(stop_rx.clone()),
    ));
    let (ca_store, ca_stop) = (server.store.clone(), stop_rx.clone());
    tokio::spawn(async move {
        if let Err(e) = control_plane::ca::run(ca_store, ca_stop).await {
            tracing::error!(error = %e, "the builtin CA reconciler stopped: new meshes get no CA");
        }
    });
    let janitor_stop = stopped(stop_rx.clone());
    tokio::spawn(async move {
        if let Err(e) = janitor.run(janitor_stop).await {
            tracing::error!(error = %e, "the zone janitor stopped: inventory of departed zones stays");
        }
    });
    let on_signal = stop_tx.clone();
    let api = server.serve_with(
        Listeners {
            api: listeners.api,
            diagnostics: listeners.diagnostics,
        },
        zones_api,
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stopped(stop_rx) => {}
            }
            let _ = on_signal.send(true);
        },
    );
    tokio::pin!(api);
    tokio::select! {
        served = &mut api => {
            let _ = stop_tx.send(true);
            // KDS ends its streams on shutdown; a zone that stopped reading cannot hold the exit.
            match tokio::time::timeout(std::time::Duration::from_secs(5), kds).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "KDS server failed"),
                Ok(Err(e)) => tracing::error!(error = %e, "KDS server panicked"),
                Err(_) => tracing::warn!("KDS server did not stop within 5 s; exiting anyway"),
            }
            served
        }
        ended = &mut kds => {
            let stopping = *stop_tx.borrow();
            let _ = stop_tx.send(true);
            let served = api.await;
            if stopping {
                return served;
            }
            // KDS is not optional on a global: stop everything and say why.
            match ended {
                Ok(Ok(())) => anyhow::bail!("the KDS server stopped unexpectedly"),
                Ok(Err(e)) => Err(anyhow::anyhow!("the KDS server failed: {e}")),
                Err(e) => Err(anyhow::anyhow!("the KDS server panicked: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[test]
    fn the_grace_period_defaults_to_an_hour_and_takes_humane_durations() {
        let config = Config::parse_from(["global-cp"]);
        assert_eq!(config.zone_grace_period, Duration::from_secs(3600));
        for (text, want) in [
            ("10m", Duration::from_secs(600)),
            ("300ms", Duration::from_millis(300)),
            ("2d", Duration::from_secs(2 * 86_400)),
        ] {
            let config = Config::parse_from(["global-cp", "--zone-grace-period", text]);
            assert_eq!(config.zone_grace_period, want, "{text}");
        }
        assert!(Config::try_parse_from(["global-cp", "--zone-grace-period", "soon"]).is_err());
    }
}
