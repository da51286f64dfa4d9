//! A Raft node ([`RaftNode`]: storage, the openraft instance and the peer listener) and the
//! [`RaftStore`] it serves, the [`ResourceStore`] of a global control plane node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mesh_api::{Resource, ResourceKey};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::network::{peer_service, NetworkFactory, PeerTls, DEFAULT_SNAPSHOT_CHUNK_BYTES};
use super::storage::{open_storage, StorageReleased};
use super::types::{Command, CommandOutcome, NodeId, TypeConfig};
use crate::sled_store::normalize_key;
use crate::{ListPage, ListQuery, ResourceStore, SledStore, SledStoreOptions, StoreError, Watch};

/// How to run one node.
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    pub id: NodeId,
    /// Holds `log/` (the Raft log, vote, snapshot) and `state/` (the state machine's store).
    pub data_dir: PathBuf,
    pub tls: PeerTls,
    /// openraft's tunables; [`RaftNodeConfig::new`] sets Meridian's defaults.
    pub raft: openraft::Config,
    /// The state machine's store (its change log serves `watch`).
    pub store: SledStoreOptions,
    pub snapshot_chunk_bytes: usize,
}

impl RaftNodeConfig {
    /// Defaults: heartbeats every 50 ms, elections after 150-300 ms of silence (openraft's),
    /// a snapshot every 5,000 entries keeping 1,000 entries of log behind it, followers more
    /// than 10,000 entries behind caught up by snapshot.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, tls: PeerTls) -> RaftNodeConfig {
        RaftNodeConfig {
            id,
            data_dir: data_dir.into(),
            tls,
            raft: openraft::Config {
                cluster_name: "meridian-global".into(),
                heartbeat_interval: 50,
                election_timeout_min: 150,
                election_timeout_max: 300,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
                max_in_snapshot_log_to_keep: 1000,
                // openraft's guidance: above the snapshot interval, else a follower that far
                // behind is sent a snapshot that does not catch it up.
                replication_lag_threshold: 10_000,
                ..Default::default()
            },
            store: SledStoreOptions::default(),
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
        }
    }
}

/// Why a node could not start or do what was asked; names the node.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    #[error("raft node {id}: storage in {path}: {source}")]
    Storage {
        id: NodeId,
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("raft node {id}: invalid Raft configuration: {reason}")]
    Config { id: NodeId, reason: String },
    #[error("raft node {id}: peer listener: {reason}")]
    Listener { id: NodeId, reason: String },
    #[error("raft node {id}: {reason}")]
    Raft { id: NodeId, reason: String },
}

/// One running node: its storage, its openraft instance and its peer listener (gRPC with mutual
/// TLS). Stop it with [`RaftNode::shutdown`].
pub struct RaftNode {
    id: NodeId,
    tls: PeerTls,
    addr: SocketAddr,
    raft: Raft<TypeConfig>,
    store: RaftStore,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    released: Option<StorageReleased>,
}

/// How long a stopped node's Raft tasks may take to let go of its storage.
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Opens the node's storage, starts Raft and serves the peer service on `listener`. A node
    /// with an empty data directory waits to be initialised ([`RaftNode::initialize`]) or added
    /// by a leader; one with state resumes where it stopped.
    pub async fn start(
        config: RaftNodeConfig,
        listener: TcpListener,
    ) -> Result<RaftNode, RaftNodeError> {
        let id = config.id;
        let addr = listener.local_addr().map_err(|e| RaftNodeError::Listener {
            id,
            reason: e.to_string(),
        })?;
        let (log, sm) = open_storage(&config.data_dir, config.store.clone()).map_err(|source| {
            RaftNodeError::Storage {
                id,
                path: config.data_dir.display().to_string(),
                source,
            }
        })?;
        let state = sm.store();
        let released = log.released();
        let raft_config = config
            .raft
            .clone()
            .validate()
            .map_err(|e| RaftNodeError::Config {
                id,
                reason: e.to_string(),
            })?;
        let mut network = NetworkFactory::new(config.tls.clone());
        network.snapshot_chunk_bytes = config.snapshot_chunk_bytes;
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| RaftNodeError::Raft {
                id,
                reason: format!("cannot start: {e}"),
            })?;
        let server = tonic::transport::Server::builder()
            .tls_config(config.tls.server_config())
            .map_err(|e| RaftNodeError::Listener {
                id,
                reason: format!("TLS: {e}"),
            })?
            .tcp_nodelay(true)
            .add_service(peer_service(raft.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(server.serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.await;
        }));
        tracing::info!(node = id, %addr, "raft node started");
        Ok(RaftNode {
            id,
            tls: config.tls.clone(),
            addr,
            store: RaftStore {
                id,
                raft: raft.clone(),
                state,
            },
            raft,
            stop: Some(stop),
            server: Some(server),
            released: Some(released),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The TLS material the node serves and dials peers with.
    pub fn tls(&self) -> &PeerTls {
        &self.tls
    }

    /// The address the peer service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The node's `ResourceStore`.
    pub fn store(&self) -> RaftStore {
        self.store.clone()
    }

    /// Bootstraps a new cluster from this node with `members` (id -> peer address `host:port`,
    /// this node included). Done once, on one node; the others learn it from the leader.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), RaftNodeError> {
        if !members.contains_key(&self.id) {
            return Err(RaftNodeError::Config {
                id: self.id,
                reason: format!(
                    "the initial members {:?} do not include this node",
                    members.keys().collect::<Vec<_>>()
                ),
            });
        }
        let members: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| RaftNodeError::Raft {
                id: self.id,
                reason: format!("cannot initialise the cluster: {e}"),
            })
    }

    /// Stops serving peers, then stops Raft and waits until its tasks let go of the Raft log and
    /// state machine. The state store stays open while a [`RaftStore`] of this node is held.
    pub async fn shutdown(mut self) -> Result<(), RaftNodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let raft_result = self.raft.shutdown().await;
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(RaftNodeError::Listener {
                        id: self.id,
                        reason: e.to_string(),
                    })
                }
                Err(e) => {
                    return Err(RaftNodeError::Listener {
                        id: self.id,
                        reason: format!("the server task failed: {e}"),
                    })
                }
            }
        }
        raft_result.map_err(|e| RaftNodeError::Raft {
            id: self.id,
            reason: format!("shutting down: {e}"),
        })?;
        if let Some(released) = self.released.take() {
            tokio::time::timeout(RELEASE_DEADLINE, released.wait())
                .await
                .map_err(|_| RaftNodeError::Raft {
                    id: self.id,
                    reason: format!(
                        "its storage was still in use {RELEASE_DEADLINE:?} after shutdown"
                    ),
                })?;
        }
        Ok(())
    }
}

/// The [`ResourceStore`] of a Raft node. Writes go through `client_write` and return once the
/// entry is committed and applied on this node; on a follower they fail with
/// [`StoreError::ForwardToLeader`]. Reads and watches are served from this node's state machine,
/// so a follower may lag the leader by what is not yet applied there.
#[derive(Clone)]
pub struct RaftStore {
    id: NodeId,
    raft: Raft<TypeConfig>,
    state: SledStore,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("node", &self.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl RaftStore {
    /// The state machine's store on this node (what reads and watches are served from).
    pub fn local(&self) -> &SledStore {
        &self.state
    }

    /// Makes the next local read linearizable: confirms with a quorum that this node still
    /// leads, then waits until it has applied everything committed before the call. On a
    /// follower: [`StoreError::ForwardToLeader`]; without a quorum: an error naming the node.
    pub async fn linearizable(&self) -> Result<(), StoreError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(StoreError::ForwardToLeader {
                    leader_id: forward.leader_id,
                    leader_addr: forward.leader_node.map(|n| n.addr),
                })
            }
            Err(e) => Err(StoreError::Io(format!(
                "raft node {}: cannot confirm its leadership: {e}",
                self.id
            ))),
        }
    }

    async fn write(&self, command: Command) -> Result<Resource, StoreError> {
        let response = match self.raft.client_write(command).await {
            Ok(response) => response,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                return Err(StoreError::ForwardToLeader {
                    leader_id: forward.leader_id,
                    leader_addr: forward.leader_node.map(|n| n.addr),
                })
            }
            Err(e) => return Err(StoreError::Io(format!("raft node {}: {e}", self.id))),
        };
        let index = response.log_id.index;
        match response.data {
            CommandOutcome::Applied {
                version, resource, ..
            } => {
                let record = format!("raft log entry {index}");
                let mut resource = mesh_api::parse_resource(resource)
                    .map_err(|e| StoreError::Corrupt {
                        key: record,
                        reason: e.to_string(),
                    })?
                    .resource;
                resource.meta.version = version;
                Ok(resource)
            }
            CommandOutcome::Rejected { rejection } => Err(rejection.into_store_error(index)),
            CommandOutcome::None => Err(StoreError::Corrupt {
                key: format!("raft log entry {index}"),
                reason: "a resource write was applied as an entry without a command".into(),
            }),
        }
    }
}

#[async_trait]
impl ResourceStore for RaftStore {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        self.state.get(key).await
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.state.list(query).await
    }

    async fn create(&self, resource: Resource) -> Result<Resource, StoreError> {
        // Refused keys never reach the log.
        normalize_key(resource.key())?;
        self.write(Command::create(&resource, Utc::now())).await
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        normalize_key(resource.key())?;
        self.write(Command::update(&resource, Utc::now())).await
    }

    async fn delete(
        &self,
        key: &ResourceKey,
        expected_version: Option<u64>,
    ) -> Result<Resource, StoreError> {
        normalize_key(key.clone())?;
        self.write(Command::delete(key, expected_version, Utc::now()))
            .await
    }

    fn revision(&self) -> u64 {
        self.state.revision()
    }

    fn watch(&self, from_revision: u64) -> Result<Watch, StoreError> {
        self.state.watch(from_revision)
    }
}
