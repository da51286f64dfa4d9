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
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState, SnapshotPolicy};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::network::{
    peer_service, ForwardAnswer, ForwardRefusal, Forwarded, Forwarder, NetworkFactory, PeerTls,
    Routes, DEFAULT_SNAPSHOT_CHUNK_BYTES,
};
use super::storage::{open_storage, StorageReleased};
use super::types::{Command, CommandOp, CommandOutcome, NodeId, TypeConfig};
use crate::sled_store::normalize_key;
use crate::{ListPage, ListQuery, ResourceStore, SledStore, SledStoreOptions, StoreError, Watch};

/// How long a write or a linearizable read keeps trying to reach a leader (through elections).
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// How long one forwarded write or read index may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long adding a member may wait for it to catch up before it is made a voter (default of
/// [`RaftNodeConfig::catch_up_timeout`]).
pub const DEFAULT_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a membership change may take at the leader beyond the catch-up wait.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// How long a member added through this node may take to catch up with the leader's log
    /// before it is removed again and the addition refused.
    pub catch_up_timeout: Duration,
    /// Peers this node dials at another address than their member address (see [`Routes`]).
    pub routes: Routes,
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
            catch_up_timeout: DEFAULT_CATCH_UP_TIMEOUT,
            routes: Routes::default(),
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
    /// A membership change that cannot be made as asked (the caller's mistake).
    #[error("raft node {id}: membership change refused: {reason}")]
    Membership { id: NodeId, reason: String },
    /// A member to add did not catch up in time and was removed again.
    #[error("raft node {id}: member not added: {reason}")]
    NotCaughtUp { id: NodeId, reason: String },
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
        network.routes = config.routes.clone();
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
                forwarder: Forwarder::new(config.tls.clone(), config.routes.clone()),
                catch_up_timeout: config.catch_up_timeout,
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

/// Does a [`Forwarded`] request on this node, which must be the leader (else `NotLeader`, naming
/// the leader it knows). The peer service's `Forward` and a leader's own [`RaftStore`] call it.
pub(crate) async fn execute(
    raft: &Raft<TypeConfig>,
    request: Forwarded,
) -> Result<ForwardAnswer, ForwardRefusal> {
    let not_leader = |forward: ForwardToLeader<NodeId, BasicNode>| ForwardRefusal::NotLeader {
        leader_id: forward.leader_id,
        leader_addr: forward.leader_node.map(|n| n.addr),
    };
    let failed = |e: &dyn std::fmt::Display| ForwardRefusal::Failed {
        reason: e.to_string(),
    };
    let write_error = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader(forward),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardRefusal::Invalid {
                reason: e.to_string(),
            }
        }
        e => failed(&e),
    };
    match request {
        Forwarded::Write(command) => {
            let response = raft.client_write(command).await.map_err(write_error)?;
            Ok(ForwardAnswer::Written {
                index: response.log_id.index,
                outcome: response.data,
            })
        }
        Forwarded::ReadIndex => match raft.ensure_linearizable().await {
            Ok(read) => Ok(ForwardAnswer::ReadIndex {
                index: read.map(|log| log.index),
            }),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(not_leader(forward))
            }
            Err(e) => Err(failed(&e)),
        },
        Forwarded::AddMember {
            id,
            addr,
            catch_up_ms,
        } => {
            let members = raft.metrics().borrow().membership_config.clone();
            if members.voter_ids().any(|voter| voter == id) {
                return Err(ForwardRefusal::Invalid {
                    reason: format!("node {id} is already a voting member"),
                });
            }
            if let Some((_, node)) = members
                .nodes()
                .find(|(other, node)| **other != id && node.addr == addr)
            {
                return Err(ForwardRefusal::Invalid {
                    reason: format!("{} is already the address of another member", node.addr),
                });
            }
            let catch_up = catch_up_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_CATCH_UP_TIMEOUT);
            // As a learner first, until it has caught up, so that making it a voter does not
            // leave the cluster waiting for a node that cannot vote on new entries yet.
            // openraft's own blocking wait counts a learner within `replication_lag_threshold`
            // (10,000 entries) as caught up, even one that never answered: wait here instead.
            let added = raft
                .add_learner(id, BasicNode { addr: addr.clone() }, false)
                .await
                .map_err(write_error)?;
            if let Err(reason) = caught_up(raft, id, added.log_id.index, catch_up).await {
                let reason = format!("node {id} at {addr} {reason}");
                let removed = raft
                    .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                    .await;
                return Err(ForwardRefusal::NotCaughtUp {
                    reason: match removed {
                        Ok(_) => format!(
                            "{reason}; it was removed again (is it running with --join, \
                             reachable at that address, with a certificate of the cluster's CA?)"
                        ),
                        Err(e) => format!(
                            "{reason}; removing it again failed ({e}): it stays a learner, \
                             remove it"
                        ),
                    },
                });
            }
            let voters: std::collections::BTreeSet<NodeId> = [id].into();
            let changed = raft
                .change_membership(ChangeMembers::AddVoterIds(voters), false)
                .await
                .map_err(write_error)?;
            Ok(ForwardAnswer::MembershipChanged {
                index: changed.log_id.index,
            })
        }
        Forwarded::RemoveMember { id } => {
            let members = raft.metrics().borrow().membership_config.clone();
            let ids: std::collections::BTreeSet<NodeId> = [id].into();
            let change = if members.voter_ids().any(|voter| voter == id) {
                if members.voter_ids().count() == 1 {
                    return Err(ForwardRefusal::Invalid {
                        reason: format!("node {id} is the last voting member"),
                    });
                }
                ChangeMembers::RemoveVoters(ids)
            } else if members.nodes().any(|(node, _)| *node == id) {
                ChangeMembers::RemoveNodes(ids)
            } else {
                return Err(ForwardRefusal::Invalid {
                    reason: format!("node {id} is not a member"),
                });
            };
            let changed = raft
                .change_membership(change, false)
                .await
                .map_err(write_error)?;
            Ok(ForwardAnswer::MembershipChanged {
                index: changed.log_id.index,
            })
        }
    }
}

/// Waits until the leader has replicated to learner `id` at least up to log index `target`
/// (its own addition) and then up to the leader's last log index as it was then: the learner
/// holds everything written before it was added. `Err` says how far it got.
async fn caught_up(
    raft: &Raft<TypeConfig>,
    id: NodeId,
    target: u64,
    timeout: Duration,
) -> Result<(), String> {
    let target = target.max(raft.metrics().borrow().last_log_index.unwrap_or(0));
    let matched = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
        m.replication
            .as_ref()
            .map(|r| r.get(&id).cloned().flatten().map(|log| log.index))
    };
    let waited = raft
        .wait(Some(timeout))
        .metrics(
            |m| match matched(m) {
                // No longer the leader: nothing more to wait for here.
                None => true,
                Some(index) => index >= Some(target),
            },
            "the new learner to catch up",
        )
        .await;
    match waited {
        Ok(m) => match matched(&m) {
            Some(_) => Ok(()),
            None => Err("was being caught up when this node stopped leading".into()),
        },
        Err(_) => {
            let reached = matched(&raft.metrics().borrow()).flatten();
            Err(format!(
                "did not catch up within {timeout:?} (replicated up to log index {}, the leader \
                 was at {target})",
                reached.map_or("none".to_owned(), |i| i.to_string())
            ))
        }
    }
}

/// One node of the cluster as [`RaftStore::status`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: NodeId,
    /// Its peer address (`host:port`).
    pub addr: String,
    /// A voter, or a learner (replicated to, not counted in quorums).
    pub voter: bool,
}

/// A node's view of the cluster: what `GET /` and `GET /global/members` show.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub leader_addr: Option<String>,
    /// The index of the last entry in this node's log (applied or not).
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// The last log index this node's current snapshot holds.
    pub snapshot_index: Option<u64>,
    /// The log index up to which this node's log was purged (behind a snapshot).
    pub purged_index: Option<u64>,
    /// On the leader: how long ago a quorum last acknowledged it (openraft's metrics, refreshed
    /// at least every tick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis_since_quorum_ack: Option<u64>,
    /// On the leader: no quorum has acknowledged it for longer than the leader lease
    /// (`election_timeout_max`), so the majority may have elected another leader. openraft 0.9
    /// does not step such a leader down; until it hears the new term it still calls itself
    /// leader, and this node refuses to take writes it could not commit.
    pub quorum_lost: bool,
    pub members: Vec<Member>,
}

/// How one attempt to reach the leader went, when it did not answer.
enum Attempt {
    /// No leader is known (an election is under way).
    NoLeader,
    /// This node leads but has heard from no quorum for longer than the leader lease: the
    /// request was not submitted (it could not commit here). Why, for the final error.
    NoQuorum(String),
    /// The request may have reached a leader that did not answer (stepped down, died, timed
    /// out): a write may still commit.
    Unanswered(String),
    /// Retrying cannot help.
    Refused(ForwardRefusal),
}

/// The [`ResourceStore`] of a Raft node. Writes go to the leader: through `client_write` on the
/// leader itself, forwarded over the peer service (`Forward`) from any other node, and return
/// once the entry is committed and applied on the leader and, for a forwarded one, on this node
/// too (so a client reads its own writes on the node it wrote through). Through an election they
/// wait for the next leader (up to 10 s). Reads and watches are served from this node's state
/// machine, so a follower may lag the leader by what is not yet applied there;
/// [`RaftStore::linearizable`] before a read makes it linearizable.
#[derive(Clone)]
pub struct RaftStore {
    id: NodeId,
    raft: Raft<TypeConfig>,
    state: SledStore,
    forwarder: Forwarder,
    catch_up_timeout: Duration,
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

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address this node dials node `id` at, whose member address is `member_addr`: its
    /// route to it, if it has one (see [`Routes`]).
    pub fn dial_addr<'a>(&'a self, id: NodeId, member_addr: &'a str) -> &'a str {
        self.forwarder.routes().dial(id, member_addr)
    }

    /// The node's openraft handle (metrics, waits).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// This node's role, term, leader and the members, from its metrics.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: Vec<Member> = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader_addr = metrics.current_leader.and_then(|leader| {
            members
                .iter()
                .find(|m| m.id == leader)
                .map(|m| m.addr.clone())
        });
        ClusterStatus {
            node_id: self.id,
            role: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_addr,
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|log| log.index),
            snapshot_index: metrics.snapshot.map(|log| log.index),
            purged_index: metrics.purged.map(|log| log.index),
            millis_since_quorum_ack: metrics
                .millis_since_quorum_ack
                .filter(|_| metrics.state == ServerState::Leader),
            quorum_lost: metrics.state == ServerState::Leader
                && metrics
                    .millis_since_quorum_ack
                    .is_some_and(|ms| ms > self.raft.config().election_timeout_max),
            members,
        }
    }

    /// Makes the next local read linearizable: the leader confirms with a quorum that it still
    /// leads and names the log index everything committed before the call reaches; this node
    /// then waits until it has applied that far. Waits through an election (up to 10 s).
    pub async fn linearizable(&self) -> Result<(), StoreError> {
        let index = match self
            .until_answered(Forwarded::ReadIndex, &mut false)
            .await?
        {
            ForwardAnswer::ReadIndex { index } => index,
            other => return Err(self.unexpected(&other)),
        };
        self.applied(index).await
    }

    /// Adds node `id` at peer address `addr`: as a learner until it has caught up with the
    /// leader's log, then as a voter. Done by the leader, forwarded to it from any node. A node
    /// that does not catch up within [`RaftNodeConfig::catch_up_timeout`] (unreachable, not
    /// started) is removed again and the addition refused ([`RaftNodeError::NotCaughtUp`],
    /// naming its address).
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), RaftNodeError> {
        let catch_up_ms = Some(self.catch_up_timeout.as_millis() as u64);
        self.change_members(Forwarded::AddMember {
            id,
            addr,
            catch_up_ms,
        })
        .await
    }

    /// The replicated state as a [`backup`](super::storage::backup) (JSON), consistent and
    /// linearizable: it holds every write acknowledged before the call, on any node.
    pub async fn backup(&self) -> Result<Vec<u8>, StoreError> {
        self.linearizable().await?;
        super::storage::backup(&self.state)
    }

    /// Removes node `id` (voter or learner) from the cluster.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), RaftNodeError> {
        self.change_members(Forwarded::RemoveMember { id }).await
    }

    async fn change_members(&self, request: Forwarded) -> Result<(), RaftNodeError> {
        // Not retried: a change that may have happened is reported, `status` tells the outcome.
        let timeout = self.catch_up_timeout + MEMBERSHIP_CHANGE_TIMEOUT;
        let answer = match self.attempt(&request, timeout).await {
            Ok(answer) => answer,
            Err(Attempt::NoLeader) => {
                return Err(RaftNodeError::Raft {
                    id: self.id,
                    reason: "no leader is known (an election is under way); try again".into(),
                })
            }
            Err(Attempt::NoQuorum(reason)) => {
                return Err(RaftNodeError::Raft {
                    id: self.id,
                    reason: format!("{reason}; the change was not made"),
                })
            }
            Err(Attempt::Unanswered(reason)) => {
                return Err(RaftNodeError::Raft {
                    id: self.id,
                    reason: format!(
                        "the leader did not answer ({reason}); the change may or may not have \
                         been made: list the members"
                    ),
                })
            }
            Err(Attempt::Refused(ForwardRefusal::Invalid { reason })) => {
                return Err(RaftNodeError::Membership {
                    id: self.id,
                    reason,
                })
            }
            Err(Attempt::Refused(ForwardRefusal::NotCaughtUp { reason })) => {
                return Err(RaftNodeError::NotCaughtUp {
                    id: self.id,
                    reason,
                })
            }
            Err(Attempt::Refused(refusal)) => {
                return Err(RaftNodeError::Raft {
                    id: self.id,
                    reason: describe_refusal(&refusal),
                })
            }
        };
        match answer {
            // This node's view shows the change once it applied it.
            ForwardAnswer::MembershipChanged { index } => {
                self.applied(Some(index))
                    .await
                    .map_err(|e| RaftNodeError::Raft {
                        id: self.id,
                        reason: format!("the membership changed at log index {index}: {e}"),
                    })
            }
            other => Err(RaftNodeError::Raft {
                id: self.id,
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }

    fn unexpected(&self, answer: &ForwardAnswer) -> StoreError {
        StoreError::Io(format!(
            "raft node {}: unexpected answer from the leader: {answer:?}",
            self.id
        ))
    }

    /// One try: on the leader itself, or forwarded to the leader this node knows.
    async fn attempt(
        &self,
        request: &Forwarded,
        timeout: Duration,
    ) -> Result<ForwardAnswer, Attempt> {
        let status = self.status();
        let Some(leader) = status.leader_id else {
            return Err(Attempt::NoLeader);
        };
        if leader == self.id && status.quorum_lost {
            return Err(Attempt::NoQuorum(format!(
                "this node leads term {} but no quorum has acknowledged it for {} ms (cut off \
                 from the majority?)",
                status.term,
                status.millis_since_quorum_ack.unwrap_or_default()
            )));
        }
        let result = if leader == self.id {
            // A leader cut off from the majority only just now does not know it yet; its write
            // would wait.
            match tokio::time::timeout(timeout, execute(&self.raft, request.clone())).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(Attempt::Unanswered(format!(
                        "this node (the leader) did not commit within {timeout:?}"
                    )))
                }
            }
        } else {
            let Some(addr) = status.leader_addr else {
                return Err(Attempt::NoLeader);
            };
            match self
                .forwarder
                .forward(leader, &addr, request, timeout)
                .await
            {
                Ok(result) => result,
                Err(e) => {
                    return Err(Attempt::Unanswered(format!(
                        "leader {leader} at {addr}: {e}"
                    )))
                }
            }
        };
        match result {
            Ok(answer) => Ok(answer),
            Err(ForwardRefusal::NotLeader { .. }) => Err(Attempt::Unanswered(format!(
                "node {leader} is no longer the leader"
            ))),
            // A leader shutting down answers that way: the next one may do it.
            Err(ForwardRefusal::Failed { reason }) if leader != self.id => {
                Err(Attempt::Unanswered(format!("leader {leader}: {reason}")))
            }
            Err(refusal) => Err(Attempt::Refused(refusal)),
        }
    }

    /// Tries until a leader answers (waiting through elections) or [`CLIENT_DEADLINE`] passes.
    /// Sets `unanswered` when a try may have reached a leader that did not answer.
    async fn until_answered(
        &self,
        request: Forwarded,
        unanswered: &mut bool,
    ) -> Result<ForwardAnswer, StoreError> {
        let deadline = tokio::time::Instant::now() + CLIENT_DEADLINE;
        let mut metrics = self.raft.metrics();
        let mut pause = Duration::from_millis(5);
        let mut last: String;
        loop {
            match self.attempt(&request, FORWARD_TIMEOUT).await {
                Ok(answer) => return Ok(answer),
                Err(Attempt::NoLeader) => last = "no leader is known".into(),
                Err(Attempt::NoQuorum(reason)) => last = reason,
                Err(Attempt::Unanswered(reason)) => {
                    *unanswered = true;
                    last = reason;
                }
                Err(Attempt::Refused(refusal)) => {
                    return Err(StoreError::Io(format!(
                        "raft node {}: {}",
                        self.id,
                        describe_refusal(&refusal)
                    )))
                }
            }
            if tokio::time::Instant::now() >= deadline {
                if !*unanswered {
                    // No leader was reached that could have taken it: safe to retry.
                    return Err(StoreError::Unavailable(format!(
                        "raft node {}: no leader answered within {CLIENT_DEADLINE:?} (last: \
                         {last}); nothing was submitted",
                        self.id
                    )));
                }
                let outcome = if matches!(request, Forwarded::Write(_)) {
                    "; the write may or may not have been applied"
                } else {
                    ""
                };
                return Err(StoreError::Io(format!(
                    "raft node {}: no leader answered within {CLIENT_DEADLINE:?} (last: \
                     {last}){outcome}",
                    self.id
                )));
            }
            // Until the metrics change (a new leader, a new term) or a short pause: a leader
            // that died is still named until the election timeout.
            metrics.mark_unchanged();
            let _ = tokio::time::timeout(pause, metrics.changed()).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Waits until this node has applied the log up to `index`.
    async fn applied(&self, index: Option<u64>) -> Result<(), StoreError> {
        self.raft
            .wait(Some(CLIENT_DEADLINE))
            .applied_index_at_least(index, "apply up to the leader's index")
            .await
            .map(|_| ())
            .map_err(|e| {
                StoreError::Io(format!(
                    "raft node {}: did not apply up to log index {index:?}: {e}",
                    self.id
                ))
            })
    }

    /// Proposes `command` through the leader. `before`: for a delete, the resource as this node
    /// last saw it.
    async fn write(
        &self,
        command: Command,
        before: Option<Resource>,
    ) -> Result<Resource, StoreError> {
        let mut unanswered = false;
        let answer = self
            .until_answered(Forwarded::Write(command.clone()), &mut unanswered)
            .await?;
        let ForwardAnswer::Written { index, outcome } = answer else {
            return Err(self.unexpected(&answer));
        };
        // Read-your-writes on this node, and what `settle` reads is at least this recent.
        self.applied(Some(index)).await.map_err(|e| {
            StoreError::Io(format!(
                "the write was committed at log index {index}, but this node did not apply it \
                 in time: {e}"
            ))
        })?;
        let record = || format!("raft log entry {index}");
        match outcome {
            CommandOutcome::Applied {
                version, resource, ..
            } => {
                let mut resource = mesh_api::parse_resource(resource)
                    .map_err(|e| StoreError::Corrupt {
                        key: record(),
                        reason: e.to_string(),
                    })?
                    .resource;
                resource.meta.version = version;
                Ok(resource)
            }
            CommandOutcome::Rejected { rejection } => {
                let refused = rejection.into_store_error(index);
                if unanswered {
                    if let Some(done) = self.settle(&command, &refused, before).await? {
                        return Ok(done);
                    }
                }
                Err(refused)
            }
            CommandOutcome::None => Err(StoreError::Corrupt {
                key: record(),
                reason: "a resource write was applied as an entry without a command".into(),
            }),
        }
    }

    /// An earlier try of this write went unanswered and the retry was refused: was it refused
    /// because the earlier try did commit? A create refused as existing when the stored
    /// resource is still version 1 with our spec and labels, an update refused as conflicting
    /// when the stored version is ours + 1 with our spec and labels, a delete refused as not
    /// found: each is taken as our write (a concurrent identical write is indistinguishable, and
    /// answering it as ours is harmless). Anything else is the refusal.
    async fn settle(
        &self,
        command: &Command,
        refused: &StoreError,
        before: Option<Resource>,
    ) -> Result<Option<Resource>, StoreError> {
        let ours = |value: &serde_json::Value| {
            mesh_api::parse_resource(value.clone())
                .ok()
                .map(|parsed| parsed.resource)
        };
        let same = |a: &Resource, b: &Resource| a.spec == b.spec && a.meta.labels == b.meta.labels;
        match (&command.op, refused) {
            (CommandOp::Create { resource }, StoreError::AlreadyExists(key)) => {
                let (Some(ours), Some(stored)) = (ours(resource), self.state.get(key).await?)
                else {
                    return Ok(None);
                };
                Ok((stored.meta.version == 1 && same(&ours, &stored)).then_some(stored))
            }
            (CommandOp::Update { version, resource }, StoreError::Conflict { key, .. }) => {
                let (Some(ours), Some(stored)) = (ours(resource), self.state.get(key).await?)
                else {
                    return Ok(None);
                };
                Ok((stored.meta.version == version + 1 && same(&ours, &stored)).then_some(stored))
            }
            (CommandOp::Delete { .. }, StoreError::NotFound(_)) => Ok(before),
            _ => Ok(None),
        }
    }
}

fn describe_refusal(refusal: &ForwardRefusal) -> String {
    match refusal {
        ForwardRefusal::NotLeader {
            leader_id,
            leader_addr,
        } => format!("not the leader (leader: {leader_id:?} at {leader_addr:?})"),
        ForwardRefusal::Invalid { reason }
        | ForwardRefusal::Failed { reason }
        | ForwardRefusal::NotCaughtUp { reason } => reason.clone(),
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
        self.write(Command::create(&resource, Utc::now()), None)
            .await
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        normalize_key(resource.key())?;
        self.write(Command::update(&resource, Utc::now()), None)
            .await
    }

    async fn delete(
        &self,
        key: &ResourceKey,
        expected_version: Option<u64>,
    ) -> Result<Resource, StoreError> {
        normalize_key(key.clone())?;
        // What is deleted, should the answer to the delete be lost (see `settle`).
        let before = self.state.get(key).await?;
        self.write(Command::delete(key, expected_version, Utc::now()), before)
            .await
    }

    fn revision(&self) -> u64 {
        self.state.revision()
    }

    fn watch(&self, from_revision: u64) -> Result<Watch, StoreError> {
        self.state.watch(from_revision)
    }
}
