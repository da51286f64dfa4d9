//! The global control plane: owns policy for the whole federation. It serves the REST API and
//! diagnostics (shared with the zone control plane, in the `control-plane` crate) over its own
//! store, creates the `default` mesh at first start, and serves KDS over TLS to the zones
//! (`kds::server`): zones authenticate with tokens it signs ([`zones`]: `POST /tokens/zone`), and
//! `GET /zones/_overview` shows each zone's connection. The node holding a zone's KDS stream
//! keeps a lease record of it in the replicated store (`kds::lease`, `--zone-lease`), so every
//! node sees every zone's state. A zone's inventory outlives its disconnection by
//! `--zone-grace-period` (or until its Zone resource is deleted), then the `kds::janitor`, run by
//! the Raft leader from those records, removes it. For every mesh whose enabled mTLS backend is
//! `builtin` it creates the mesh's CA as two Secrets ([`control_plane::ca`]), which KDS syncs to
//! the zones.
//!
//! Its store is a node of a Raft cluster ([`cluster`], docs/raft.md): one node bootstrapped on
//! first start by default, or `--node-id` and `--peers` for several. Any node takes writes (a
//! follower forwards them to the leader), serves reads from its replicated state (linearizable
//! with `?consistent=true`) and serves KDS; `/global/members` ([`members`]) changes membership.

pub mod cluster;
pub mod members;
pub mod zones;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::collections::BTreeMap;
use std::time::Duration;

use control_plane::server::{Listeners, Server, ServerConfig};
use control_plane::{process, CpMode};
use mesh_store::raft::{NodeId, RaftStore};
use mesh_store::ResourceStore;
use tokio::net::TcpListener;

/// Everything the global control plane is configured with (flags and `MERIDIAN_*` variables).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "global-cp",
    version,
    about = "Meridian's global control plane",
    args_conflicts_with_subcommands = true
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
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
    /// How long the lease lasts that the node holding a zone's KDS stream keeps in the
    /// replicated store (renewed every third of it while the stream is open): a zone whose node
    /// dies counts as offline on every node once its lease runs out. Node clocks must agree to
    /// well within two thirds of it.
    #[arg(
        long,
        env = "MERIDIAN_ZONE_LEASE",
        default_value = "15s",
        value_parser = parse_lease
    )]
    pub zone_lease: std::time::Duration,
    /// This node's id in the global cluster.
    #[arg(long, env = "MERIDIAN_NODE_ID", default_value_t = 1)]
    pub node_id: NodeId,
    /// The global cluster's members, `ID=HOST:PORT` of each node's peer listener, this node
    /// included (comma-separated or repeated): `1=global-1:5683,2=global-2:5683,3=global-3:5683`.
    /// Without it the global is a one-node cluster.
    #[arg(
        long,
        env = "MERIDIAN_PEERS",
        value_delimiter = ',',
        value_parser = cluster::parse_peer
    )]
    pub peers: Vec<cluster::Peer>,
    /// The peer (Raft) listener. Default: `0.0.0.0:<this node's port in --peers>` in a cluster,
    /// `127.0.0.1:0` for a single node (nothing dials it).
    #[arg(long, env = "MERIDIAN_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// The peers' TLS material: `ca.pem`, `node-<id>.pem`, `node-<id>-key.pem` (made by
    /// `global-cp raft-certs`). Required with --peers; a single node generates its own under
    /// `<data-dir>/raft-tls` by default.
    #[arg(long, env = "MERIDIAN_RAFT_TLS_DIR")]
    pub raft_tls_dir: Option<PathBuf>,
    /// This node joins a running cluster: a fresh node does not bootstrap one but waits until
    /// a member adds it (`POST /global/members`). Also for a node whose data was lost, after
    /// it was removed from the cluster.
    #[arg(long, env = "MERIDIAN_JOIN")]
    pub join: bool,
    /// How long a member added through this node (`POST /global/members`) may take to catch up
    /// with the leader's log before it is removed again and the addition refused: `30s`, `5m`.
    #[arg(
        long,
        env = "MERIDIAN_MEMBER_CATCH_UP_TIMEOUT",
        default_value = "60s",
        value_parser = parse_grace_period
    )]
    pub member_catch_up_timeout: std::time::Duration,
    /// Start even though the data dir's stored membership is a single node and --peers names
    /// several, or the reverse: the stored membership is used (change it at runtime with
    /// `/global/members`). Without it such a start is refused.
    #[arg(long, env = "MERIDIAN_ALLOW_MEMBERSHIP_MISMATCH")]
    pub allow_membership_mismatch: bool,
    /// Dial a peer at another address than its member address, `ID=HOST:PORT` (comma-separated
    /// or repeated): this node's own route to that node (a proxy, a tunnel; tests put a fault
    /// relay on each link this way). The membership, which every node shares, keeps the member
    /// addresses; other peers are dialled at those.
    #[arg(
        long = "raft-route",
        env = "MERIDIAN_RAFT_ROUTES",
        value_delimiter = ',',
        value_parser = cluster::parse_peer
    )]
    pub raft_routes: Vec<cluster::Peer>,
    /// Build a Raft snapshot every this many log entries, and keep at most this many entries
    /// behind it (tests use a small value to make members catch up from a snapshot).
    #[arg(
        long,
        env = "MERIDIAN_RAFT_SNAPSHOT_EVERY",
        default_value_t = 5000,
        hide = true
    )]
    pub raft_snapshot_every: u64,
}

/// Commands besides running the global.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Makes the global cluster's peer TLS material in --out: a CA (kept if present) and a
    /// certificate and key for every node id without one. Copy `ca.pem`, `node-<id>.pem` and
    /// `node-<id>-key.pem` to node <id> and start it with --raft-tls-dir.
    RaftCerts {
        #[arg(long)]
        out: PathBuf,
        /// The node ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<NodeId>,
    },
    /// Seeds a new node's data dir from a backup (`GET /global/backup`, `meshctl global
    /// backup`): `global-cp --data-dir DIR` then starts as a one-node cluster holding that
    /// state (grow it with --join nodes and `/global/members`). Offline; DIR must hold no Raft
    /// state.
    Restore {
        /// The backup file.
        #[arg(long)]
        input: PathBuf,
        /// The new node's --data-dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id.
        #[arg(long, default_value_t = 1)]
        node_id: NodeId,
        /// The new node's peer address as other members will dial it (recorded in the
        /// membership; unused while it runs alone).
        #[arg(long, default_value = "127.0.0.1:5683")]
        peer_address: String,
    },
}

/// A duration as Kuma writes them (`<n><unit>`, unit one of `ms`, `s`, `m`, `h`, `d`, `w`, `y`).
fn parse_grace_period(text: &str) -> Result<std::time::Duration, String> {
    mesh_api::core::common::parse_kuma_duration(text.trim())
        .ok_or_else(|| format!("{text:?} is not a duration such as 300ms, 10m, 1h or 2d"))
}

/// A zone lease: a duration of at least 300ms (renewed every third of it).
fn parse_lease(text: &str) -> Result<std::time::Duration, String> {
    let lease = parse_grace_period(text)?;
    if lease < Duration::from_millis(300) {
        return Err(format!(
            "{text:?} is too short for a zone lease (at least 300ms)"
        ));
    }
    Ok(lease)
}

impl Config {
    /// The members from --peers, checked, or `None` for a single node.
    pub fn members(&self) -> anyhow::Result<Option<BTreeMap<NodeId, String>>> {
        if self.peers.is_empty() {
            return Ok(None);
        }
        cluster::members(self.node_id, &self.peers).map(Some)
    }

    fn raft_listen(&self) -> anyhow::Result<SocketAddr> {
        if let Some(addr) = self.raft_listen {
            return Ok(addr);
        }
        let Some(members) = self.members()? else {
            if self.join {
                return Ok(SocketAddr::from(([0, 0, 0, 0], 5683)));
            }
            return Ok(SocketAddr::from(([127, 0, 0, 1], 0)));
        };
        let own = &members[&self.node_id];
        let port = own
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .ok_or_else(|| anyhow::anyhow!("--peers: {own} has no port"))?;
        Ok(SocketAddr::from(([0, 0, 0, 0], port)))
    }

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
    /// The peer (Raft) listener.
    pub raft: TcpListener,
}

impl GlobalListeners {
    pub async fn bind(config: &Config) -> anyhow::Result<GlobalListeners> {
        Ok(GlobalListeners {
            api: process::bind("--api-addr", config.api_addr).await?,
            diagnostics: process::bind("--diagnostics-addr", config.diagnostics_addr).await?,
            kds: process::bind("--kds-addr", config.kds_addr).await?,
            raft: process::bind("--raft-listen", config.raft_listen()?).await?,
        })
    }

    /// The addresses as the ready file reports them.
    pub fn describe(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::json!({
            "api": process::http_url(self.api.local_addr()?),
            "diagnostics": process::http_url(self.diagnostics.local_addr()?),
            "kds": self.kds.local_addr()?.to_string(),
            "raft": self.raft.local_addr()?.to_string(),
        }))
    }
}

/// Runs the global control plane on bound listeners until `shutdown` completes. Once its state
/// is open (Raft node, TLS material, signing keys) it writes the ready file, if configured: the
/// bound addresses (`raft` among them) plus `kdsCa`, the CA file zones verify KDS with, and
/// `nodeId`. A single node is ready once it leads and the default mesh exists; a node of a
/// cluster does not wait for a leader (the default mesh follows once there is one).
pub async fn run(
    config: Config,
    listeners: GlobalListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut addresses = listeners.describe()?;
    let members = config.members()?;
    let clustered = members.is_some() || config.join;
    let peer_tls = match (&config.raft_tls_dir, clustered) {
        (Some(dir), _) => cluster::load_peer_tls(dir, config.node_id)?,
        (None, true) => anyhow::bail!(
            "--peers and --join need --raft-tls-dir: every node presents a certificate of the cluster's CA \
             (make them with `global-cp raft-certs --out DIR --ids 1,2,3`)"
        ),
        (None, false) => {
            let dir = config.data_dir.join("raft-tls");
            cluster::ensure_certs(&dir, &[config.node_id])?;
            cluster::load_peer_tls(&dir, config.node_id)?
        }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "--data-dir {}: cannot create: {e}",
            config.data_dir.display()
        )
    })?;
    let node = cluster::start(
        cluster::NodeSetup {
            id: config.node_id,
            raft_dir: config.data_dir.join("raft"),
            legacy_store: config.data_dir.join("store"),
            tls: peer_tls,
            members,
            join: config.join,
            allow_membership_mismatch: config.allow_membership_mismatch,
            catch_up_timeout: config.member_catch_up_timeout,
            snapshot_every: config.raft_snapshot_every,
            routes: cluster::routes(config.node_id, &config.raft_routes)?,
        },
        listeners.raft,
    )
    .await?;
    let raft_store = node.store();
    let server = Server::open_on(
        ServerConfig {
            data_dir: config.data_dir.clone(),
            mode: CpMode::Global,
        },
        Arc::new(raft_store.clone()),
        Some(Arc::new(cluster::RaftCluster(raft_store.clone()))),
    )?;
    if !clustered {
        // A one-node cluster elects itself at once; the default mesh is there before ready.
        cluster::wait_for_leader(&raft_store, Duration::from_secs(10)).await?;
        control_plane::defaults::ensure_default_mesh(server.store.as_ref()).await?;
    }
    let kds_dir = config.kds_dir();
    let tls = match (&config.kds_tls_cert, &config.kds_tls_key) {
        (Some(cert), Some(key)) => kds::tls::KdsServerTls::from_files(cert, key)?,
        _ => kds::tls::KdsServerTls::load_or_generate(&kds_dir, &config.kds_hostnames)?,
    };
    // Token signing keys are GlobalSecrets/Secrets of the replicated store (kds::token_keys).
    // Zone-token keys of the directory older versions kept are imported first, keeping their ids,
    // so zone tokens issued before stay valid; no key is made until that import is done.
    let (imported_tx, imported_rx) = tokio::sync::watch::channel(false);
    let zone_keys =
        kds::token_keys::StoreKeys::new(server.store.clone(), kds::token_keys::KeyOwnership::Owned)
            .after_import(imported_rx);
    let kds_server = kds::server::KdsServer::new(
        server.store.clone(),
        Arc::new(kds::auth::TokenAuthenticator::new(zone_keys.clone())),
    );
    let janitor = kds::janitor::ZoneJanitor::new(server.store.clone(), config.zone_grace_period);
    let leases = kds::lease::LeaseKeeper::new(
        server.store.clone(),
        kds_server.status(),
        config.node_id,
        kds::lease::LeaseTiming::new(config.zone_lease),
    );
    let zones_api = zones::router(zones::ZonesApi {
        keys: zone_keys.clone(),
        status: kds_server.status(),
        store: server.store.clone(),
        admin: server.token.clone(),
        node: config.node_id,
    });
    let zone_status = kds_server.status();
    let members_api = members::router(members::MembersApi {
        store: raft_store.clone(),
        admin: server.token.clone(),
    });

    if let Some(path) = &config.ready_file {
        if let Some(ca) = tls.ca_path() {
            addresses["kdsCa"] = serde_json::Value::String(ca.display().to_string());
        }
        addresses["nodeId"] = serde_json::json!(config.node_id);
        process::write_ready_file(path, &addresses)?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Before KDS serves: every stream that opens gets its lease. At shutdown the keeper stops
    // before the streams end, so a stopping node releases nothing (its zones redial another
    // node, which claims them, or their leases run out).
    let leases_stop = stopped(stop_rx.clone());
    tokio::spawn(async move { leases.run(leases_stop).await });
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
    // The default mesh is created only in a store that has seen no write, so in a cluster this
    // node's own writers (token keys) wait until it is there (or found not wanted): the first
    // write of a new cluster is then always the default mesh, whichever node makes it. A
    // single node made it before it got here.
    let (defaults_tx, defaults_rx) = tokio::sync::watch::channel(!clustered);
    let defaults_done = move || {
        let mut done = defaults_rx.clone();
        async move {
            // Also when bootstrapping ended without it (stopping).
            let _ = done.wait_for(|done| *done).await;
        }
    };
    let (after_defaults, import_stop) = (defaults_done(), stopped(stop_rx.clone()));
    let import = import_zone_token_keys(
        kds_dir.join(OLD_ZONE_TOKEN_KEYS),
        zone_keys,
        imported_tx,
        import_stop,
    );
    tokio::spawn(async move {
        after_defaults.await;
        import.await
    });
    let (after_defaults, keys_store, keys_stop) =
        (defaults_done(), server.store.clone(), stop_rx.clone());
    tokio::spawn(async move {
        after_defaults.await;
        keep_proxy_token_keys(keys_store, keys_stop).await
    });
    let (ca_store, ca_stop) = (server.store.clone(), stop_rx.clone());
    tokio::spawn(async move {
        if let Err(e) = control_plane::ca::run(ca_store, ca_stop).await {
            tracing::error!(error = %e, "the builtin CA reconciler stopped: new meshes get no CA");
        }
    });
    if clustered {
        tokio::spawn(bootstrap_defaults(
            raft_store.clone(),
            server.store.clone(),
            defaults_tx,
            stopped(stop_rx.clone()),
        ));
    }
    // The janitor decides from the replicated lease records, on one node: the leader.
    tokio::spawn(janitor_while_leading(
        raft_store.clone(),
        janitor,
        stop_rx.clone(),
    ));
    let on_signal = stop_tx.clone();
    let api = server.serve_with(
        Listeners {
            api: listeners.api,
            diagnostics: listeners.diagnostics,
        },
        zones_api.merge(members_api),
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stopped(stop_rx) => {}
            }
            let _ = on_signal.send(true);
        },
    );
    tokio::pin!(api);
    let result = tokio::select! {
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
    };
    if let Err(e) = node.shutdown().await {
        tracing::error!(error = %e, "stopping the raft node");
    }
    result
}

/// The directory under the KDS directory where older versions kept the zone-token signing keys
/// and revocation list; renamed with [`IMPORTED_SUFFIX`] once imported into the store.
const OLD_ZONE_TOKEN_KEYS: &str = "signing-keys";
const IMPORTED_SUFFIX: &str = ".imported";

/// How long to wait before trying again to write keys when the store refused (no leader yet).
const KEY_RETRY: Duration = Duration::from_secs(1);

/// Imports the zone-token keys and revocations of `dir` (older versions' files) into the store,
/// once the store takes writes, then renames the directory so a key retired later is not
/// imported again; sets `imported` when done (at once when there is nothing to import).
async fn import_zone_token_keys(
    dir: PathBuf,
    keys: kds::token_keys::StoreKeys,
    imported: tokio::sync::watch::Sender<bool>,
    stop: impl Future<Output = ()>,
) {
    let family = kds::token_keys::KeyFamily::zone_tokens();
    let work = async {
        let old = match kds::auth::load_key_dir(&dir) {
            Ok(Some(old)) => old,
            Ok(None) => return,
            Err(e) => {
                // Nothing is imported and no key is made: an operator must look.
                tracing::error!(error = %e, "cannot read the old zone-token keys; zone tokens cannot be issued");
                std::future::pending::<()>().await;
                return;
            }
        };
        loop {
            match keys.import(&family, &old).await {
                Ok((imported, clashing)) => {
                    tracing::info!(dir = %dir.display(), ?imported, "imported the old zone-token signing keys into the store");
                    if !clashing.is_empty() {
                        tracing::warn!(dir = %dir.display(), ?clashing, "the store already holds different keys with these ids; zone tokens signed with this node's old copies no longer verify");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "importing the old zone-token signing keys; retrying");
                    tokio::time::sleep(KEY_RETRY).await;
                }
            }
        }
        let mut done = dir.clone().into_os_string();
        done.push(IMPORTED_SUFFIX);
        if let Err(e) = std::fs::rename(&dir, &done) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot rename the imported key directory; it will be imported again at the next start");
        }
    };
    tokio::select! {
        _ = work => { imported.send_replace(true); }
        _ = stop => {}
    }
}

/// Keeps a dataplane-token signing key for every mesh and a zone ingress/egress token key in the
/// store (KDS syncs them to the zones, which sign and verify their proxies' tokens with them):
/// once at start, then after every change to Meshes or Secrets; a failed write (no leader yet)
/// is tried again shortly.
async fn keep_proxy_token_keys(
    store: Arc<dyn ResourceStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use kds::token_keys::{KeyFamily, KeyOwnership, StoreKeys};
    use mesh_api::ResourceType;
    let keys = StoreKeys::new(store.clone(), KeyOwnership::Owned);
    let watched = [
        ResourceType::Mesh,
        ResourceType::Secret,
        ResourceType::GlobalSecret,
    ];
    loop {
        let keys = keys.clone();
        let result = control_plane::reconciler::run(store.clone(), stop.clone(), &watched, || {
            let keys = keys.clone();
            async move {
                let io = |e: kds::auth::AuthError| mesh_store::StoreError::Io(e.to_string());
                keys.ensure_key(&KeyFamily::zone_proxy_tokens())
                    .await
                    .map_err(io)?;
                let meshes = keys
                    .store()
                    .list(&mesh_store::ListQuery::all(ResourceType::Mesh))
                    .await?;
                for mesh in meshes.items {
                    match keys
                        .ensure_key(&KeyFamily::dataplane_tokens(&mesh.meta.name))
                        .await
                    {
                        Ok(_) => {}
                        // Deleted meanwhile: its keys go with it.
                        Err(kds::auth::AuthError::Store(mesh_store::StoreError::NotFound(_))) => {}
                        Err(e) => return Err(io(e)),
                    }
                }
                Ok(())
            }
        })
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "keeping the dataplane-token signing keys; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(KEY_RETRY) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Runs the zone janitor while this node leads the cluster: started when it becomes leader,
/// after a linearizable read (so that it starts from every lease record committed before),
/// stopped when it steps down (its role or term changes) or the node stops. Follows openraft's
/// metrics watch; no polling.
async fn janitor_while_leading(
    raft: RaftStore,
    janitor: kds::janitor::ZoneJanitor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut metrics = raft.raft().metrics();
    loop {
        let term = tokio::select! {
            led = metrics.wait_for(|m| m.state.is_leader()) => match led {
                Ok(m) => m.current_term,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut leading = metrics.clone();
        let stepped_down = async move {
            let _ = leading
                .wait_for(|m| !m.state.is_leader() || m.current_term != term)
                .await;
        };
        let mut stopping = stop.clone();
        let ended = async move {
            tokio::select! {
                _ = stepped_down => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        };
        let result = async {
            raft.linearizable().await?;
            tracing::info!(term, grace = ?janitor.grace_period(), "leading: the zone janitor runs on this node");
            janitor.run(ended).await.map_err(anyhow::Error::from)
        };
        let outcome = result.await;
        if *stop.borrow() {
            return;
        }
        let still_leading = {
            let m = metrics.borrow();
            m.state.is_leader() && m.current_term == term
        };
        match outcome {
            Ok(()) if !still_leading => {
                tracing::info!(
                    term,
                    "no longer leading: the zone janitor stopped on this node"
                )
            }
            Ok(()) => tracing::warn!(
                term,
                "the zone janitor's store watch ended; starting it again"
            ),
            Err(e) if !still_leading => {
                tracing::info!(error = %e, term, "no longer leading: the zone janitor stopped on this node")
            }
            Err(e) => {
                tracing::error!(error = %e, term, "the zone janitor failed; starting it again")
            }
        }
        if still_leading {
            tokio::select! {
                _ = tokio::time::sleep(KEY_RETRY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// In a cluster: once a leader is elected, creates the default mesh (every node tries; all but
/// one find it there), then sets `done`. Until then, says which members are unreachable.
async fn bootstrap_defaults(
    raft: RaftStore,
    store: Arc<dyn ResourceStore>,
    done: tokio::sync::watch::Sender<bool>,
    stop: impl Future<Output = ()>,
) {
    let work = async {
        loop {
            match cluster::wait_for_leader(&raft, Duration::from_secs(5)).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the global cluster has no leader");
                    continue;
                }
            }
            match control_plane::defaults::ensure_default_mesh(store.as_ref()).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "creating the default mesh; retrying"),
            }
        }
    };
    tokio::select! {
        _ = work => { done.send_replace(true); }
        _ = stop => {}
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

    #[test]
    fn the_zone_lease_defaults_to_fifteen_seconds_and_is_not_too_short() {
        let config = Config::parse_from(["global-cp"]);
        assert_eq!(config.zone_lease, Duration::from_secs(15));
        let config = Config::parse_from(["global-cp", "--zone-lease", "1500ms"]);
        assert_eq!(config.zone_lease, Duration::from_millis(1500));
        for short in ["100ms", "0s", "soon"] {
            assert!(
                Config::try_parse_from(["global-cp", "--zone-lease", short]).is_err(),
                "{short}"
            );
        }
    }
}
