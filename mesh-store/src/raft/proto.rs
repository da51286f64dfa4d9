//! The wire messages of `meridian.raft.v1.RaftPeer`, hand-written prost types (no protoc).
//! openraft's own request and response types travel as JSON inside them: they are serde types,
//! and keeping them opaque here means a new openraft field needs no schema change.

/// One openraft request or response (`Result<_, RaftError>` for responses) as JSON.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftPayload {
    #[prost(bytes = "vec", tag = "1")]
    pub json: Vec<u8>,
}

/// One message of a streamed snapshot: the first carries `header` (the leader's vote and the
/// snapshot's metadata as JSON) and no data; every later one carries a piece of the data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotChunk {
    #[prost(bytes = "vec", tag = "1")]
    pub header: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// The generated client and server of `meridian.raft.v1.RaftPeer`.
#[allow(clippy::all, missing_docs)]
pub mod raft_peer {
    include!(concat!(env!("OUT_DIR"), "/meridian.raft.v1.RaftPeer.rs"));
}
