//! The Raft network over gRPC: the peer service `meridian.raft.v1.RaftPeer` (server side,
//! [`peer_service`]) and the client openraft replicates and votes through ([`NetworkFactory`]).
//!
//! openraft's messages travel as JSON inside protobuf bytes (see `proto.rs`). Append-entries
//! requests go as openraft batches them (up to `max_payload_entries` per request); a vote is one
//! call; a snapshot is one client-streaming call: a header (vote and metadata), then the data in
//! chunks of [`NetworkFactory::snapshot_chunk_bytes`], reassembled by the receiver and installed
//! with `Raft::install_full_snapshot`. Peers authenticate each other with mutual TLS against the
//! cluster's CA ([`PeerTls`]).

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftNetwork, RaftNetworkFactory, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::{Request, Response, Status, Streaming};

use super::proto::raft_peer::raft_peer_client::RaftPeerClient;
use super::proto::raft_peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use super::proto::{RaftPayload, SnapshotChunk};
use super::types::Command;
use super::types::{CommandOutcome, NodeId, TypeConfig};

/// The largest message a peer accepts (an append-entries batch of large resources).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The default size of a snapshot chunk.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Mutual TLS between peers: every node presents a certificate issued by the cluster's CA, and
/// accepts only peers presenting one. `server_name` is the name every node's certificate carries
/// (a SAN) and that clients check, so certificates need not name each node's address.
#[derive(Clone)]
pub struct PeerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub server_name: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.server_name.clone())
    }
}

/// The first message of a snapshot stream.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
}

fn to_payload<T: Serialize>(value: &T) -> Result<RaftPayload, Status> {
    serde_json::to_vec(value)
        .map(|json| RaftPayload { json })
        .map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))
}

fn from_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("{what} does not decode: {e}")))
}

/// The server side: hands each RPC to the local Raft.
struct PeerServer {
    raft: Raft<TypeConfig>,
}

#[tonic::async_trait]
impl RaftPeer for PeerServer {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            from_json("the append-entries request", &request.into_inner().json)?;
        let result = self.raft.append_entries(rpc).await;
        to_payload(&result).map(Response::new)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = from_json("the vote request", &request.into_inner().json)?;
        let result = self.raft.vote(rpc).await;
        to_payload(&result).map(Response::new)
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let forwarded: Forwarded = from_json("the forwarded request", &request.into_inner().json)?;
        let result = super::node::execute(&self.raft, forwarded).await;
        to_payload(&result).map(Response::new)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the snapshot stream is empty"))?;
        let header: SnapshotHeader = from_json("the snapshot header", &first.header)?;
        let mut data = first.data;
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
        }
        tracing::info!(
            snapshot = %header.meta.snapshot_id,
            bytes = data.len(),
            "received a snapshot"
        );
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: Box::new(data),
        };
        let result = self.raft.install_full_snapshot(header.vote, snapshot).await;
        to_payload(&result).map(Response::new)
    }
}

/// The peer service of `raft`, to serve on the node's peer listener (with [`PeerTls`]).
pub fn peer_service(raft: Raft<TypeConfig>) -> RaftPeerServer<impl RaftPeer> {
    RaftPeerServer::new(PeerServer { raft })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Makes a client per peer (openraft asks for one per replication stream and per election).
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    tls: PeerTls,
    /// The data bytes per snapshot message.
    pub snapshot_chunk_bytes: usize,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// Where this node dials a peer instead of the address the membership gives it.
    pub routes: Routes,
}

impl NetworkFactory {
    pub fn new(tls: PeerTls) -> NetworkFactory {
        NetworkFactory {
            tls,
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
            connect_timeout: Duration::from_secs(1),
            routes: Routes::default(),
        }
    }
}

/// This node's own routes to some peers: node id -> the address (`host:port`) it dials that
/// node at instead of the one in the membership (which every node shares). For a node that
/// reaches a peer through a proxy or a tunnel; tests route each link through its own fault
/// relay this way, so that one node can be cut off in both directions whichever node's
/// bootstrap wrote the membership. A peer without a route is dialled at its member address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes(pub std::collections::BTreeMap<NodeId, String>);

impl Routes {
    /// The address to dial `target` at, whose member address is `member_addr`.
    pub fn dial<'a>(&'a self, target: NodeId, member_addr: &'a str) -> &'a str {
        self.0.get(&target).map_or(member_addr, String::as_str)
    }
}

/// A lazily connecting client of the peer service at `addr` (`host:port`).
fn peer_client(
    tls: &PeerTls,
    addr: &str,
    connect_timeout: Duration,
) -> Result<RaftPeerClient<Channel>, String> {
    let address = format!("https://{addr}");
    Endpoint::from_shared(address.clone())
        .and_then(|e| e.tls_config(tls.client_config()))
        .map(|endpoint| {
            let channel = endpoint
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .connect_lazy();
            RaftPeerClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        })
        .map_err(|e| format!("{address}: {e}"))
}

/// What a node asks the leader to do for one of its clients (`Forward`): a write, a read index
/// for a linearizable read, a membership change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    Write(Command),
    ReadIndex,
    /// `catch_up_ms`: how long the new member may take to catch up before it is removed again
    /// (the asking node's setting; none: the default).
    AddMember {
        id: NodeId,
        addr: String,
        #[serde(default)]
        catch_up_ms: Option<u64>,
    },
    RemoveMember {
        id: NodeId,
    },
}

/// The leader's answer to a [`Forwarded`] request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardAnswer {
    /// The write was committed at log index `index` and applied with `outcome` on the leader.
    Written { index: u64, outcome: CommandOutcome },
    /// Reads that apply everything up to `index` are linearizable.
    ReadIndex { index: Option<u64> },
    /// The new membership took effect at log index `index`.
    MembershipChanged { index: u64 },
}

/// Why the leader did not do a [`Forwarded`] request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardRefusal {
    /// The node asked is not (or no longer) the leader. A write it had appended before
    /// stepping down may still commit.
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The request itself is wrong (a membership change naming an unknown node, ...).
    Invalid { reason: String },
    /// Raft failed (stopping, no quorum, a storage error).
    Failed { reason: String },
    /// A member to add did not catch up in time (unreachable, not started, another cluster's
    /// certificate) and was removed again.
    NotCaughtUp { reason: String },
}

/// Clients of the peer service at leaders' addresses, reused across forwarded requests.
#[derive(Clone)]
pub(crate) struct Forwarder {
    tls: PeerTls,
    routes: Routes,
    clients: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, RaftPeerClient<Channel>>>,
    >,
}

impl Forwarder {
    pub(crate) fn new(tls: PeerTls, routes: Routes) -> Forwarder {
        Forwarder {
            tls,
            routes,
            clients: Default::default(),
        }
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Sends `request` to node `id` at member address `addr` (or this node's route to it); `Err`
    /// is a transport failure (the request may or may not have reached the node).
    pub(crate) async fn forward(
        &self,
        id: NodeId,
        addr: &str,
        request: &Forwarded,
        timeout: Duration,
    ) -> Result<Result<ForwardAnswer, ForwardRefusal>, String> {
        let addr = self.routes.dial(id, addr);
        let client = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            match clients.get(addr) {
                Some(client) => client.clone(),
                None => {
                    let client = peer_client(&self.tls, addr, Duration::from_secs(1))?;
                    clients.insert(addr.to_owned(), client.clone());
                    client
                }
            }
        };
        let json = serde_json::to_vec(request).map_err(|e| format!("cannot encode: {e}"))?;
        let mut client = client;
        let answer = tokio::time::timeout(timeout, client.forward(RaftPayload { json }))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|status| format!("{}: {}", status.code(), status.message()))?
            .into_inner();
        serde_json::from_slice(&answer.json).map_err(|e| format!("the answer does not decode: {e}"))
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        // Connects lazily: an unreachable peer fails its calls (and openraft backs off), not this.
        let addr = self.routes.dial(target, &node.addr);
        let client = peer_client(&self.tls, addr, self.connect_timeout)
            .map_err(|e| format!("peer {target} at {e}"));
        PeerClient {
            target,
            client,
            snapshot_chunk_bytes: self.snapshot_chunk_bytes.max(1),
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: NodeId,
    client: Result<RaftPeerClient<Channel>, String>,
    snapshot_chunk_bytes: usize,
}

/// A transport failure, named after the peer.
#[derive(Debug, thiserror::Error)]
#[error("raft peer {target}: {reason}")]
pub struct PeerError {
    pub target: NodeId,
    pub reason: String,
}

impl PeerClient {
    fn error(&self, reason: impl Into<String>) -> PeerError {
        PeerError {
            target: self.target,
            reason: reason.into(),
        }
    }

    fn client(&self) -> Result<RaftPeerClient<Channel>, PeerError> {
        self.client.clone().map_err(|e| self.error(e))
    }

    /// A failed call: `Unreachable` (openraft backs off) when no connection could be made.
    fn transport_error<E>(&self, status: &Status) -> RPCError<NodeId, BasicNode, E>
    where
        E: std::error::Error,
    {
        let error = self.error(format!("{}: {}", status.code(), status.message()));
        if status.code() == tonic::Code::Unavailable {
            RPCError::Unreachable(Unreachable::new(&error))
        } else {
            RPCError::Network(NetworkError::new(&error))
        }
    }

    async fn unary<Req, Resp, F, Fut>(
        &mut self,
        what: &str,
        request: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId>>>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        F: FnOnce(RaftPeerClient<Channel>, RaftPayload) -> Fut,
        Fut: Future<Output = Result<Response<RaftPayload>, Status>>,
    {
        let network = |e: PeerError| RPCError::Network(NetworkError::new(&e));
        let client = self.client().map_err(network)?;
        let json = serde_json::to_vec(request)
            .map_err(|e| network(self.error(format!("cannot encode the {what}: {e}"))))?;
        let ttl = option.hard_ttl();
        let answer = match tokio::time::timeout(ttl, call(client, RaftPayload { json })).await {
            Err(_) => {
                return Err(network(
                    self.error(format!("no {what} answer within {ttl:?}")),
                ))
            }
            Ok(Err(status)) => return Err(self.transport_error(&status)),
            Ok(Ok(answer)) => answer.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId>> = serde_json::from_slice(&answer.json)
            .map_err(|e| network(self.error(format!("the {what} answer does not decode: {e}"))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.unary("append-entries", &rpc, &option, |mut c, p| async move {
            c.append_entries(p).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.unary(
            "vote",
            &rpc,
            &option,
            |mut c, p| async move { c.vote(p).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let network = |e: PeerError| StreamingError::Network(NetworkError::new(&e));
        let mut client = self.client().map_err(network)?;
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
        };
        let header = serde_json::to_vec(&header)
            .map_err(|e| network(self.error(format!("cannot encode the snapshot header: {e}"))))?;
        let data = *snapshot.snapshot;
        let chunk = self.snapshot_chunk_bytes;
        tracing::info!(
            target = self.target,
            bytes = data.len(),
            chunk,
            "sending a snapshot"
        );
        // The header, then the data a chunk at a time, copied only as each is sent.
        let chunks = futures::stream::unfold(Some(0usize), move |offset| {
            let message = offset.map(|offset| {
                let end = (offset + chunk).min(data.len());
                let message = SnapshotChunk {
                    header: if offset == 0 {
                        header.clone()
                    } else {
                        Vec::new()
                    },
                    data: data[offset..end].to_vec(),
                };
                (message, (end < data.len()).then_some(end))
            });
            async move { message }
        });
        // No deadline: a large snapshot takes what it takes; HTTP/2 keepalives detect a dead
        // peer, and openraft cancels the transfer when replication to this peer ends.
        let answer = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            answer = client.install_snapshot(chunks) => answer,
        };
        let answer = match answer {
            Ok(answer) => answer.into_inner(),
            Err(status) => {
                let error = self.error(format!("{}: {}", status.code(), status.message()));
                return Err(if status.code() == tonic::Code::Unavailable {
                    StreamingError::Unreachable(Unreachable::new(&error))
                } else {
                    StreamingError::Network(NetworkError::new(&error))
                });
            }
        };
        let result: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            serde_json::from_slice(&answer.json).map_err(|e| {
                network(self.error(format!("the snapshot answer does not decode: {e}")))
            })?;
        result.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}
