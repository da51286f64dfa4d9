//! The Raft-replicated [`ResourceStore`](crate::ResourceStore) of the global control plane
//! (feature `raft`; docs/raft.md): openraft with its log and its state machine on sled, and a
//! gRPC network over tonic with mutual TLS between peers.
//!
//! - [`types`]: the type configuration, the replicated [`Command`] and its [`CommandOutcome`].
//! - [`storage`]: [`LogStore`] (entries, vote, committed, purge and truncate) and [`StateMachine`]
//!   (a [`SledStore`](crate::SledStore) applying commands deterministically, snapshots), in two
//!   sled databases of one data directory.
//! - [`network`]: the peer service (`meridian.raft.v1.RaftPeer`: append entries, vote, snapshot
//!   streamed in chunks) and its client, [`PeerTls`].
//! - [`node`]: [`RaftNode`] (storage + Raft + peer listener) and [`RaftStore`], the
//!   `ResourceStore` over a Raft handle.

/// The openraft this module is built on (its `testing` suite, metrics, errors).
pub use openraft;

pub mod network;
pub mod node;
pub(crate) mod proto;
pub mod storage;
pub mod types;

pub use network::{NetworkFactory, PeerTls, Routes};
pub use node::{ClusterStatus, Member, RaftNode, RaftNodeConfig, RaftNodeError, RaftStore};
pub use storage::{
    backup, open_storage, restore, LogStore, Restored, StateMachine, StorageReleased,
};
pub use types::{
    Command, CommandOp, CommandOutcome, CommandRejection, NodeId, TypeConfig, WireKey,
};
