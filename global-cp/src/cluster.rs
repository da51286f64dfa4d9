//! The global as a Raft cluster (docs/raft.md): `--peers` parsed and checked, the peers' TLS
//! material (one CA, a certificate per node; `global-cp raft-certs` makes them), starting the
//! node and bootstrapping the cluster, and the [`control_plane::cluster::Cluster`] view the REST
//! API shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use mesh_store::raft::openraft::error::{InitializeError, RaftError};
use mesh_store::raft::{NodeId, PeerTls, RaftNode, RaftNodeConfig, RaftStore, Routes};
use mesh_store::StoreError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;

/// The name every node's peer certificate carries and every peer checks, so certificates need
/// not name each node's address.
pub const PEER_SERVER_NAME: &str = "raft.global.meridian";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

fn node_cert(id: NodeId) -> String {
    format!("node-{id}.pem")
}
fn node_key(id: NodeId) -> String {
    format!("node-{id}-key.pem")
}

/// One `--peers` entry: `ID=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

/// Parses `ID=HOST:PORT` (clap's value parser for `--peers`).
pub fn parse_peer(text: &str) -> Result<Peer, String> {
    let (id, addr) = text
        .trim()
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected ID=HOST:PORT, e.g. 1=global-1:5683"))?;
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: the node id {id:?} is not a number"))?;
    let addr = addr.trim();
    let port = addr
        .rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty()).then_some(port))
        .ok_or_else(|| format!("{text:?}: the address {addr:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{text:?}: the port {port:?} is not a port number"))?;
    Ok(Peer {
        id,
        addr: addr.to_owned(),
    })
}

/// The cluster's members from `--peers`, checked: no id or address twice, and this node among
/// them.
pub fn members(node_id: NodeId, peers: &[Peer]) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut members = BTreeMap::new();
    for peer in peers {
        if let Some(addr) = members.insert(peer.id, peer.addr.clone()) {
            anyhow::bail!(
                "--peers: node id {} is given twice ({addr} and {})",
                peer.id,
                peer.addr
            );
        }
    }
    for (i, a) in peers.iter().enumerate() {
        if let Some(b) = peers[i + 1..].iter().find(|b| b.addr == a.addr) {
            anyhow::bail!(
                "--peers: nodes {} and {} have the same address {}",
                a.id,
                b.id,
                a.addr
            );
        }
    }
    if !members.contains_key(&node_id) {
        anyhow::bail!(
            "--node-id {node_id} is not in --peers (ids {}): list every member, this node included",
            members
                .keys()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(members)
}

/// This node's routes to peers from `--raft-route`, checked: no id twice, not this node.
pub fn routes(node_id: NodeId, routes: &[Peer]) -> anyhow::Result<Routes> {
    let mut map = BTreeMap::new();
    for route in routes {
        if route.id == node_id {
            anyhow::bail!(
                "--raft-route {}={}: that is this node (--node-id {node_id}); a route is how \
                 this node dials another",
                route.id,
                route.addr
            );
        }
        if let Some(addr) = map.insert(route.id, route.addr.clone()) {
            anyhow::bail!(
                "--raft-route: node id {} is given twice ({addr} and {})",
                route.id,
                route.addr
            );
        }
    }
    Ok(Routes(map))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Meridian global Raft CA");
    dn.push(DnType::OrganizationName, "Meridian");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

/// Makes the peers' TLS material in `dir`: the cluster's CA (`ca.pem`, `ca-key.pem`) if it is not
/// there yet, and for every id in `ids` without one a certificate and key (`node-<id>.pem`,
/// `node-<id>-key.pem`), for both ends of mutual TLS. Existing files are kept, so adding a node
/// later issues its certificate from the same CA. Copy `ca.pem` and the node's two files to
/// each node (the CA key stays where certificates are made).
pub fn ensure_certs(dir: &Path, ids: &[NodeId]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let key = if ca_cert.exists() {
        KeyPair::from_pem(&read(&ca_key)?).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (certificates are issued with the CA's key)",
                ca_key.display()
            )
        })?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key, &key.serialize_pem())?;
        write_private(&ca_cert, &cert.pem())?;
        key
    };
    let issuer = Issuer::new(ca_params()?, key);
    for &id in ids {
        let (cert_path, key_path) = (dir.join(node_cert(id)), dir.join(node_key(id)));
        if cert_path.exists() {
            continue;
        }
        let mut params = CertificateParams::new(vec![PEER_SERVER_NAME.to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Meridian global node {id}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let node_key = KeyPair::generate()?;
        let cert = params.signed_by(&node_key, &issuer)?;
        write_private(&key_path, &node_key.serialize_pem())?;
        write_private(&cert_path, &cert.pem())?;
    }
    Ok(())
}

/// Node `id`'s TLS material from `dir` (`ca.pem`, `node-<id>.pem`, `node-<id>-key.pem`).
pub fn load_peer_tls(dir: &Path, id: NodeId) -> anyhow::Result<PeerTls> {
    let missing: Vec<String> = [CA_CERT.to_owned(), node_cert(id), node_key(id)]
        .into_iter()
        .filter(|file| !dir.join(file).exists())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "--raft-tls-dir {}: missing {} (make the cluster's CA and node certificates with \
             `global-cp raft-certs --out DIR --ids 1,2,3`, then copy ca.pem, node-{id}.pem and \
             node-{id}-key.pem to node {id})",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(PeerTls {
        ca_pem: read(&dir.join(CA_CERT))?,
        cert_pem: read(&dir.join(node_cert(id)))?,
        key_pem: read(&dir.join(node_key(id)))?,
        server_name: PEER_SERVER_NAME.to_owned(),
    })
}

/// How to start this node.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub id: NodeId,
    /// `<data-dir>/raft`.
    pub raft_dir: PathBuf,
    /// `<data-dir>/store`: where the single-node store of earlier versions lived.
    pub legacy_store: PathBuf,
    pub tls: PeerTls,
    /// The members to bootstrap with (`--peers`), or `None` for a one-node cluster on the bound
    /// peer address.
    pub members: Option<BTreeMap<NodeId, String>>,
    /// Never bootstrap: a fresh node waits to be added by a member.
    pub join: bool,
    /// Start even if the stored membership is one node and `members` several, or the reverse.
    pub allow_membership_mismatch: bool,
    /// How long a member added through this node may take to catch up.
    pub catch_up_timeout: Duration,
    /// A snapshot every this many entries, keeping at most this many behind it.
    pub snapshot_every: u64,
    /// Peers this node dials at another address than their member address (`--raft-route`).
    pub routes: Routes,
}

/// Refuses a data dir whose stored membership is one node when `--peers` names several, or the
/// reverse (a data dir moved between a single-node global and a cluster by mistake); names the
/// data dir and the stored members. A node that joins (`--join`) is not checked.
pub fn check_membership(
    raft_dir: &Path,
    stored: &BTreeMap<NodeId, String>,
    wanted: Option<&BTreeMap<NodeId, String>>,
) -> anyhow::Result<()> {
    // No membership stored yet: a fresh member that has only granted a vote (another member's
    // bootstrap reached it first) holds no cluster to be mistaken about.
    if stored.is_empty() {
        return Ok(());
    }
    let wanted_cluster = wanted.is_some_and(|w| w.len() > 1);
    let stored_cluster = stored.len() > 1;
    if wanted_cluster == stored_cluster {
        return Ok(());
    }
    let listed = stored
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let asked = match wanted {
        Some(w) if w.len() > 1 => format!("--peers names {} members", w.len()),
        _ => "no --peers (a single node)".to_owned(),
    };
    anyhow::bail!(
        "{} holds the state of a {} (stored membership: {listed}), but this start has {asked}. \
         A single-node data dir does not become a cluster by restarting it with --peers, nor a \
         member of a cluster a single node without them: start it as it was and change the \
         membership at runtime (POST /global/members with --join nodes), or pass \
         --allow-membership-mismatch to start with the stored membership anyway",
        raft_dir.display(),
        if stored_cluster {
            format!("{}-member cluster", stored.len())
        } else {
            "single-node global".to_owned()
        },
    )
}

/// Starts the node on `listener`. A fresh node bootstraps the cluster: every node of `--peers`
/// does it with the same members, which openraft allows (the first vote wins; the others find
/// the cluster initialised); a node with state resumes from its log. A node that joins (`join`)
/// never bootstraps: one that did would hold a membership entry of its own at the index where
/// the cluster has its first, and Raft would take the two for the same entry.
pub async fn start(setup: NodeSetup, listener: TcpListener) -> anyhow::Result<RaftNode> {
    if setup.legacy_store.exists() && !setup.raft_dir.exists() {
        anyhow::bail!(
            "{} holds a store of the single-node global (before the Raft store); this version \
             keeps its state in {} and does not read it. Start on a new --data-dir and apply \
             the policies again (`meshctl get ... -o yaml` from the old global, `meshctl apply` \
             to the new one), or move the old data dir away",
            setup.legacy_store.display(),
            setup.raft_dir.display()
        );
    }
    let mut config = RaftNodeConfig::new(setup.id, &setup.raft_dir, setup.tls.clone());
    config.catch_up_timeout = setup.catch_up_timeout;
    config.routes = setup.routes.clone();
    if setup.snapshot_every != 5000 {
        let every = setup.snapshot_every.max(1);
        config.raft.snapshot_policy =
            mesh_store::raft::openraft::SnapshotPolicy::LogsSinceLast(every);
        config.raft.max_in_snapshot_log_to_keep =
            config.raft.max_in_snapshot_log_to_keep.min(every);
        config.raft.purge_batch_size = config.raft.purge_batch_size.min(every);
    }
    let node = RaftNode::start(config, listener).await?;
    let members = setup
        .members
        .clone()
        .unwrap_or_else(|| BTreeMap::from([(setup.id, node.addr().to_string())]));
    let initialized = node
        .raft()
        .is_initialized()
        .await
        .map_err(|e| anyhow::anyhow!("raft node {}: {e}", setup.id))?;
    if !initialized && setup.join {
        tracing::info!(
            node = setup.id,
            addr = %node.addr(),
            "waiting to be added to the global cluster (POST /global/members on a member)"
        );
    } else if !initialized {
        tracing::info!(
            node = setup.id,
            ?members,
            "bootstrapping the global cluster"
        );
        let nodes = members
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    mesh_store::raft::openraft::BasicNode { addr: addr.clone() },
                )
            })
            .collect::<BTreeMap<_, _>>();
        match node.raft().initialize(nodes).await {
            Ok(()) => {}
            // Another member's bootstrap reached this node first.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => anyhow::bail!("raft node {}: cannot bootstrap the cluster: {e}", setup.id),
        }
    } else {
        let status = node.store().status();
        let stored: BTreeMap<NodeId, String> = status
            .members
            .iter()
            .map(|m| (m.id, m.addr.clone()))
            .collect();
        if !setup.join && !setup.allow_membership_mismatch {
            if let Err(e) = check_membership(&setup.raft_dir, &stored, setup.members.as_ref()) {
                let _ = node.shutdown().await;
                return Err(e);
            }
        }
        if setup
            .members
            .as_ref()
            .is_some_and(|wanted| &stored != wanted)
        {
            // The log's membership wins (members change at runtime); say so.
            tracing::warn!(
                node = setup.id,
                ?stored,
                peers = ?setup.members,
                "--peers differs from the membership in the log, which is used"
            );
        }
    }
    Ok(node)
}

/// `global-cp restore`: seeds `<data_dir>/raft` from the backup file `input` (see
/// [`mesh_store::raft::restore`]); the data dir must hold no Raft state. The admin token, the
/// KDS identity and the zone-token keys are not in a backup (they are files of the data dir).
pub fn restore(
    input: &Path,
    data_dir: &Path,
    id: NodeId,
    peer_address: &str,
) -> anyhow::Result<mesh_store::raft::Restored> {
    parse_peer(&format!("{id}={peer_address}"))
        .map_err(|e| anyhow::anyhow!("--peer-address: {e}"))?;
    let backup = std::fs::read(input)
        .map_err(|e| anyhow::anyhow!("--input {}: cannot read: {e}", input.display()))?;
    let raft_dir = data_dir.join("raft");
    mesh_store::raft::restore(&raft_dir, &backup, id, peer_address).map_err(|e| {
        anyhow::anyhow!(
            "restoring {} into {}: {e}",
            input.display(),
            raft_dir.display()
        )
    })
}

/// Waits up to `timeout` for a leader; if there is none, the error names the members this node
/// cannot reach.
pub async fn wait_for_leader(store: &RaftStore, timeout: Duration) -> anyhow::Result<NodeId> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = store.status();
        if let Some(leader) = status.leader_id {
            return Ok(leader);
        }
        if tokio::time::Instant::now() >= deadline {
            let mut unreachable = Vec::new();
            for member in status.members.iter().filter(|m| m.id != status.node_id) {
                // Where this node dials it (its --raft-route, or the member address).
                let addr = store.dial_addr(member.id, &member.addr);
                let connect = tokio::net::TcpStream::connect(addr);
                match tokio::time::timeout(Duration::from_secs(1), connect).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => unreachable.push(format!("node {} at {addr}: {e}", member.id)),
                    Err(_) => unreachable
                        .push(format!("node {} at {addr}: no answer within 1s", member.id)),
                }
            }
            let members = status.members.len();
            anyhow::bail!(
                "raft node {}: no leader after {timeout:?} ({members} members, a majority of them \
                 must run){}",
                status.node_id,
                if unreachable.is_empty() {
                    String::new()
                } else {
                    format!("; unreachable: {}", unreachable.join("; "))
                }
            );
        }
        let mut metrics = store.raft().metrics();
        let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
    }
}

/// The REST API's view of this node.
pub struct RaftCluster(pub RaftStore);

#[async_trait]
impl control_plane::cluster::Cluster for RaftCluster {
    fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.0.status()).unwrap_or_default()
    }

    async fn linearizable(&self) -> Result<(), StoreError> {
        self.0.linearizable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(text: &str) -> Vec<Peer> {
        text.split(',').map(|p| parse_peer(p).unwrap()).collect()
    }

    #[test]
    fn membership_mismatch_is_refused_but_not_a_member_with_no_membership_yet() {
        let dir = Path::new("/data/raft");
        let one: BTreeMap<NodeId, String> = [(1, "a:5683".to_owned())].into();
        let three: BTreeMap<NodeId, String> = [
            (1, "a:5683".to_owned()),
            (2, "b:5683".to_owned()),
            (3, "c:5683".to_owned()),
        ]
        .into();
        assert!(check_membership(dir, &one, Some(&three)).is_err());
        assert!(check_membership(dir, &three, None).is_err());
        assert!(check_membership(dir, &three, Some(&three)).is_ok());
        // A fresh member that granted a vote before its own start finished: nothing stored.
        assert!(check_membership(dir, &BTreeMap::new(), Some(&three)).is_ok());
    }

    #[test]
    fn peers_parse_and_are_checked() {
        assert_eq!(
            parse_peer("2=global-2:5683").unwrap(),
            Peer {
                id: 2,
                addr: "global-2:5683".into()
            }
        );
        for bad in [
            "global:5683",
            "x=global:5683",
            "1=global",
            "1=:5683",
            "1=h:99999",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
        let three = peers("1=a:5683,2=b:5683,3=c:5683");
        assert_eq!(members(2, &three).unwrap().len(), 3);
        let error = members(4, &three).unwrap_err().to_string();
        assert!(error.contains("--node-id 4 is not in --peers"), "{error}");
        let error = members(1, &peers("1=a:5683,1=b:5683"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("node id 1 is given twice"), "{error}");
        let error = members(1, &peers("1=a:5683,2=a:5683"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("same address a:5683"), "{error}");
        let table = routes(1, &peers("2=r:1,3=r:2")).unwrap();
        assert_eq!(table.dial(2, "b:5683"), "r:1");
        assert_eq!(table.dial(4, "d:5683"), "d:5683");
        let error = routes(1, &peers("1=r:1")).unwrap_err().to_string();
        assert!(error.contains("that is this node"), "{error}");
        let error = routes(1, &peers("2=r:1,2=r:2")).unwrap_err().to_string();
        assert!(error.contains("node id 2 is given twice"), "{error}");
    }

    #[test]
    fn certificates_are_made_once_and_loaded_per_node() {
        let dir = tempfile::tempdir().unwrap();
        ensure_certs(dir.path(), &[1, 2]).unwrap();
        let one = load_peer_tls(dir.path(), 1).unwrap();
        // A node added later gets a certificate from the same CA; existing ones are kept.
        ensure_certs(dir.path(), &[1, 2, 3]).unwrap();
        let again = load_peer_tls(dir.path(), 1).unwrap();
        assert_eq!(one.cert_pem, again.cert_pem);
        assert_eq!(one.ca_pem, load_peer_tls(dir.path(), 3).unwrap().ca_pem);
        let error = load_peer_tls(dir.path(), 4).unwrap_err().to_string();
        assert!(
            error.contains("missing node-4.pem, node-4-key.pem"),
            "{error}"
        );
    }
}
