//! The zone control plane: runs beside the workloads of one zone. It serves the REST API and
//! diagnostics (shared with the global, in the `control-plane` crate) over its own store, and
//! serves ADS to its proxies on the xDS listener (`xds_server`; dataplane tokens come from
//! [`dataplane_tokens`]; [`inspect`] serves each dataplane's configuration, policies and xDS
//! status). In `zone` mode it belongs to a federation: it dials the global
//! over KDS (`kds::client`, TLS verified with `--kds-ca-file`, authenticated with the zone token),
//! stores what the global sends, reports its inventory up, and refuses local writes of what the
//! global owns, and [`global_link`] shows its side of that link; in `standalone` mode it owns
//! everything.
//! In both it keeps its ZoneIngresses' `availableServices` current from its Dataplanes
//! ([`available_services`]) and its own summary, the ZoneInsight ([`insight`]).

pub mod available_services;
pub mod dataplane_tokens;
pub mod global_link;
pub mod insight;
pub mod inspect;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The store-watch-driven loop, shared with the global (it lives in `control-plane`).
pub use control_plane::reconciler;
use control_plane::server::{Listeners, Server, ServerConfig};
use control_plane::{process, CpMode};
use tokio::net::TcpListener;

/// Whether the zone control plane is part of a federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ZoneMode {
    /// Part of a federation: policy comes from the global control plane.
    Zone,
    /// On its own: policy is applied to it directly.
    Standalone,
}

/// Everything the zone control plane is configured with (flags and `MERIDIAN_*` variables).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "zone-cp", version, about = "Meridian's zone control plane")]
pub struct Config {
    /// The zone's name (RFC 1123 label).
    #[arg(long, env = "MERIDIAN_ZONE")]
    pub zone: String,
    #[arg(long, env = "MERIDIAN_MODE", value_enum, default_value = "standalone")]
    pub mode: ZoneMode,
    /// Where the store and the admin token live.
    #[arg(
        long,
        env = "MERIDIAN_DATA_DIR",
        default_value = "/var/lib/meridian/zone"
    )]
    pub data_dir: PathBuf,
    #[arg(long, env = "MERIDIAN_API_ADDR", default_value = "0.0.0.0:5681")]
    pub api_addr: SocketAddr,
    #[arg(
        long,
        env = "MERIDIAN_DIAGNOSTICS_ADDR",
        default_value = "0.0.0.0:5680"
    )]
    pub diagnostics_addr: SocketAddr,
    /// xDS (ADS) address (proxies connect here).
    #[arg(long, env = "MERIDIAN_XDS_ADDR", default_value = "0.0.0.0:5678")]
    pub xds_addr: SocketAddr,
    /// After binding, write the bound addresses here as JSON (for supervisors such as `meshctl up`).
    #[arg(long, env = "MERIDIAN_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// The global's KDS address (`https://host:5685`); required in zone mode. Repeatable or
    /// comma-separated for a global of several nodes.
    #[arg(long, env = "MERIDIAN_GLOBAL_KDS_ADDRESS", value_delimiter = ',')]
    pub global_kds_address: Vec<String>,
    /// The CA certificate (PEM) that signed the global's KDS certificate.
    #[arg(long, env = "MERIDIAN_KDS_CA_FILE")]
    pub kds_ca_file: Option<PathBuf>,
    /// The file holding this zone's token (`meshctl generate zone-token`); read at every dial, so a
    /// replaced token is picked up without a restart.
    #[arg(long, env = "MERIDIAN_ZONE_TOKEN_FILE")]
    pub zone_token_file: Option<PathBuf>,
    /// Test only (hidden): the version this zone states to the global in the KDS handshake instead
    /// of its own, to try the version-skew rule (docs/rollout.md, "Upgrading with version skew")
    /// without building another release. Nothing else about the zone changes. No environment
    /// variable, on purpose.
    #[arg(long, hide = true, value_name = "VERSION")]
    pub kds_report_version: Option<String>,
}

impl Config {
    /// Checks what clap cannot: the zone name's shape.
    pub fn validate(&self) -> anyhow::Result<()> {
        let z = &self.zone;
        let ok = !z.is_empty()
            && z.len() <= 63
            && z.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !z.starts_with('-')
            && !z.ends_with('-');
        anyhow::ensure!(
            ok,
            "--zone {z:?}: must be an RFC 1123 label (lowercase letters, digits and '-', at most 63 characters)"
        );
        if self.mode == ZoneMode::Zone {
            anyhow::ensure!(
                !self.global_kds_address.is_empty(),
                "--mode zone needs --global-kds-address (the global's KDS address, e.g. https://global:5685)"
            );
            for address in &self.global_kds_address {
                let tls = address.starts_with("https://");
                anyhow::ensure!(
                    tls || address.starts_with("http://"),
                    "--global-kds-address {address:?}: must start with https:// (or http:// without TLS)"
                );
                anyhow::ensure!(
                    !tls || self.kds_ca_file.is_some(),
                    "--global-kds-address {address:?} uses TLS: give --kds-ca-file to verify the global's certificate"
                );
            }
            anyhow::ensure!(
                self.zone_token_file.is_some(),
                "--mode zone needs --zone-token-file (issue one with `meshctl generate zone-token --zone {z}`)"
            );
        }
        Ok(())
    }
}

/// The zone control plane's bound listeners.
#[derive(Debug)]
pub struct ZoneListeners {
    pub api: TcpListener,
    pub diagnostics: TcpListener,
    pub xds: TcpListener,
}

impl ZoneListeners {
    pub async fn bind(config: &Config) -> anyhow::Result<ZoneListeners> {
        Ok(ZoneListeners {
            api: process::bind("--api-addr", config.api_addr).await?,
            diagnostics: process::bind("--diagnostics-addr", config.diagnostics_addr).await?,
            xds: process::bind("--xds-addr", config.xds_addr).await?,
        })
    }

    /// The addresses as the ready file reports them.
    pub fn describe(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::json!({
            "api": process::http_url(self.api.local_addr()?),
            "diagnostics": process::http_url(self.diagnostics.local_addr()?),
            "xds": self.xds.local_addr()?.to_string(),
        }))
    }
}

/// The KDS client of a zone in zone mode: TLS from `--kds-ca-file` (the server name is the
/// address's host), the token re-read from `--zone-token-file` at every dial.
fn kds_client_config(
    config: &Config,
    store: std::sync::Arc<dyn mesh_store::ResourceStore>,
) -> anyhow::Result<kds::client::KdsClientConfig> {
    let first = config
        .global_kds_address
        .first()
        .ok_or_else(|| anyhow::anyhow!("--global-kds-address is required in zone mode"))?;
    let mut client = kds::client::KdsClientConfig::new(&config.zone, first.clone(), store);
    client.global_addresses = config.global_kds_address.clone();
    if let Some(ca_file) = &config.kds_ca_file {
        let ca = kds::tls::load_ca_file(ca_file)?;
        let host = first
            .split("://")
            .nth(1)
            .and_then(|rest| rest.rsplit_once(':').map(|(host, _)| host).or(Some(rest)))
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or("localhost");
        client.tls = Some(kds::tls::client_tls_config(&ca, host));
    }
    if let Some(token_file) = &config.zone_token_file {
        client.token = kds::client::TokenSource::File(token_file.clone());
    }
    if let Some(version) = &config.kds_report_version {
        tracing::warn!(%version, "--kds-report-version (test only): stating this version to the global instead of {}", kds::version::CURRENT);
        client.version = version.clone();
    }
    // A global that restarts should see its zones back within seconds, not half a minute.
    client.backoff.max = std::time::Duration::from_secs(5);
    Ok(client)
}

/// Runs the zone control plane on bound listeners until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: ZoneListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let mode = match config.mode {
        ZoneMode::Zone => CpMode::Zone {
            zone: config.zone.clone(),
        },
        ZoneMode::Standalone => CpMode::Standalone {
            zone: Some(config.zone.clone()),
        },
    };
    let server = Server::open(ServerConfig {
        data_dir: config.data_dir.clone(),
        mode,
    })
    .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Dataplane-token keys live in the store: in a federation they come from the global over KDS
    // (so a zone CP that lost its data gets them back), a standalone zone makes its own. Keys of
    // the directory older versions kept still verify the tokens they signed.
    let ownership = match config.mode {
        ZoneMode::Zone => kds::token_keys::KeyOwnership::Synced,
        ZoneMode::Standalone => kds::token_keys::KeyOwnership::Owned,
    };
    let legacy_keys = config.data_dir.join("xds").join("signing-keys");
    let legacy_keys = kds::auth::load_key_dir(&legacy_keys)
        .map_err(|e| anyhow::anyhow!("old dataplane-token signing keys: {e}"))?;
    let dataplane_auth = xds_server::DataplaneAuthenticator::new(
        kds::token_keys::StoreKeys::new(server.store.clone(), ownership).with_legacy(legacy_keys),
    );
    let cache = std::sync::Arc::new(xds_server::SnapshotCache::new(std::sync::Arc::new(
        xds_server::generator::Generator::new(server.store.clone(), Some(config.zone.clone())),
    )));
    let snapshots = tokio::spawn(cache.clone().run(server.store.clone(), stop_rx.clone()));
    let ads = xds_server::XdsServer::new(cache.clone(), dataplane_auth.clone())
        .with_registration(server.store.clone());
    let inspect_api = inspect::router(inspect::InspectApi {
        store: server.store.clone(),
        snapshots: cache,
        status: ads.status(),
        admin: server.token.clone(),
    });
    let mut xds = tokio::spawn(xds_server::serve(listeners.xds, ads, {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }));
    let tokens_api = dataplane_tokens::router(dataplane_tokens::DataplaneTokensApi {
        auth: dataplane_auth,
        admin: server.token.clone(),
    });
    let ingress = tokio::spawn(available_services::run(
        server.store.clone(),
        stop_rx.clone(),
    ));
    let insight = tokio::spawn(insight::run(
        server.store.clone(),
        config.zone.clone(),
        stop_rx.clone(),
    ));
    if config.mode == ZoneMode::Standalone {
        // No global makes the meshes' CAs: a standalone zone owns its Meshes, so it does.
        let (ca_store, ca_stop) = (server.store.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = control_plane::ca::run(ca_store, ca_stop).await {
                tracing::error!(error = %e, "the builtin CA reconciler stopped: new meshes get no CA");
            }
        });
    }
    let kds_client = match &config.mode {
        ZoneMode::Zone => Some(kds_client_config(&config, server.store.clone())?),
        ZoneMode::Standalone => None,
    };
    let link_api = global_link::router(global_link::GlobalLinkApi {
        zone: config.zone.clone(),
        mode: config.mode,
        version: kds_client.as_ref().map_or_else(
            || kds::version::CURRENT.to_owned(),
            |client| client.version.clone(),
        ),
        status: kds_client.as_ref().map(|client| client.status.clone()),
    });
    let kds = kds_client.map(|client| {
        let mut rx = stop_rx.clone();
        tokio::spawn(kds::client::run(client, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    });
    let served = server
        .serve_with(
            Listeners {
                api: listeners.api,
                diagnostics: listeners.diagnostics,
            },
            tokens_api.merge(inspect_api).merge(link_api),
            async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            },
        )
        .await;
    if let Some(kds) = kds {
        match kds.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "KDS client failed"),
            Err(e) => tracing::error!(error = %e, "KDS client panicked"),
        }
    }
    // Open proxy streams do not end by themselves: the server stops accepting at shutdown and
    // is given a few seconds to close them, like KDS on the global.
    match tokio::time::timeout(std::time::Duration::from_secs(5), &mut xds).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "xDS server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "xDS server panicked"),
        Err(_) => {
            tracing::warn!("xDS server did not stop within 5s; dropping its streams");
            xds.abort();
        }
    }
    match snapshots.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "xDS snapshot cache failed"),
        Err(e) => tracing::error!(error = %e, "xDS snapshot cache panicked"),
    }
    for (what, task) in [
        ("availableServices reconciler", ingress),
        ("ZoneInsight reconciler", insight),
    ] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "{what} failed"),
            Err(e) => tracing::error!(error = %e, "{what} panicked"),
        }
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_reported_kds_version_is_a_hidden_test_flag_that_reaches_the_client() {
        let config = Config::parse_from([
            "zone-cp",
            "--zone",
            "zone-1",
            "--mode",
            "zone",
            "--global-kds-address",
            "http://127.0.0.1:5685",
            "--zone-token-file",
            "/nonexistent/zone.token",
            "--kds-report-version",
            "0.0.9",
        ]);
        config.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn mesh_store::ResourceStore> =
            std::sync::Arc::new(mesh_store::SledStore::open(dir.path()).unwrap());
        assert_eq!(kds_client_config(&config, store).unwrap().version, "0.0.9");
        let plain = Config::parse_from(["zone-cp", "--zone", "zone-1"]);
        assert_eq!(plain.kds_report_version, None);
        assert!(!Config::command()
            .render_long_help()
            .to_string()
            .contains("kds-report-version"));
    }
}
