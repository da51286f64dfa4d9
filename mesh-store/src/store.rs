//! The storage contract.

use std::collections::BTreeMap;

use async_trait::async_trait;
use mesh_api::{Resource, ResourceKey, ResourceType};

/// What can go wrong talking to a store. Every variant names the resource or path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(ResourceKey),
    #[error("{0} already exists")]
    AlreadyExists(ResourceKey),
    #[error(
        "{key} was changed concurrently: expected version {expected}, stored version {actual}"
    )]
    Conflict {
        key: ResourceKey,
        expected: u64,
        actual: u64,
    },
    /// A watch asked for a revision older than the retained change log; the caller must list again.
    #[error("revision {requested} is no longer available (oldest retained is {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    /// The data directory is not a Meridian store, belongs to another format version, or is damaged.
    #[error("data directory {path}: {reason}")]
    BadDataDir { path: String, reason: String },
    /// A watcher fell further behind the live changes than the store buffers; it received every
    /// event up to `last_delivered` and must watch again from there (or list again).
    #[error("watcher fell behind the change stream after revision {last_delivered}; watch again from it")]
    Lagged { last_delivered: u64 },
    /// The key cannot be stored as given (empty name, a mesh-scoped type without a mesh, ...).
    #[error("{key} is not a valid key: {reason}")]
    InvalidKey { key: ResourceKey, reason: String },
    /// A stored record could not be decoded (corruption); names the record.
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// A replicated store's node that is not the leader cannot take writes: send them to
    /// the leader (`None` while an election is under way).
    #[error("this node is not the Raft leader; the leader is {}", describe_leader(*.leader_id, .leader_addr.as_deref()))]
    ForwardToLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// A replicated store could not reach a leader able to commit (an election that did not
    /// end in time, or this node leads but has lost its quorum); nothing was sent, so retrying
    /// later is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O error: {0}")]
    Io(String),
}

fn describe_leader(id: Option<u64>, addr: Option<&str>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        _ => "not known yet (an election is under way)".to_owned(),
    }
}

/// A list request. Empty filters match everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub rtype: ResourceType,
    /// Only resources of this mesh (ignored for global-scoped types; `None` = every mesh).
    pub mesh: Option<String>,
    /// Only names starting with this.
    pub name_prefix: Option<String>,
    /// Only resources carrying every one of these labels with these values.
    pub labels: BTreeMap<String, String>,
    /// Skip this many matching items (in key order: mesh, then name).
    pub offset: usize,
    /// At most this many items; `None` = all.
    pub limit: Option<usize>,
}

impl ListQuery {
    /// Every resource of a type.
    pub fn all(rtype: ResourceType) -> ListQuery {
        ListQuery {
            rtype,
            mesh: None,
            name_prefix: None,
            labels: BTreeMap::new(),
            offset: 0,
            limit: None,
        }
    }

    /// Every resource of a type in one mesh.
    pub fn in_mesh(rtype: ResourceType, mesh: &str) -> ListQuery {
        ListQuery {
            mesh: Some(mesh.to_owned()),
            ..ListQuery::all(rtype)
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    pub items: Vec<Resource>,
    /// How many resources matched the filters in all (before offset/limit).
    pub total: usize,
    /// The offset of the next page, when there is one.
    pub next_offset: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

/// One committed change. Revisions are assigned by the store, strictly increasing, gap-free.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub revision: u64,
    pub kind: ChangeKind,
    /// The resource after the change (for `Deleted`: as it was when deleted).
    pub resource: Resource,
}

/// An ordered stream of change events.
pub struct Watch {
    pub(crate) receiver: tokio::sync::mpsc::Receiver<Result<ChangeEvent, StoreError>>,
}

impl Watch {
    /// Wraps a channel fed by a store implementation.
    pub fn from_receiver(
        receiver: tokio::sync::mpsc::Receiver<Result<ChangeEvent, StoreError>>,
    ) -> Watch {
        Watch { receiver }
    }

    /// The next event, in revision order; `None` when the store was closed. An `Err` ends the
    /// stream (e.g. the watcher fell too far behind and must list again).
    pub async fn next(&mut self) -> Option<Result<ChangeEvent, StoreError>> {
        self.receiver.recv().await
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// A store of resources.
///
/// Contract (checked for every implementation by the conformance suite, `mesh_store::testing`,
/// behind the `testing` feature):
/// - Keys: a global-scoped type is keyed by name alone (a mesh given with it is dropped, as
///   [`ResourceKey::new`] does); a mesh-scoped type needs a non-empty mesh, and every name must be
///   non-empty, else `InvalidKey`.
/// - `create` fails with `AlreadyExists` when the key exists; it assigns version 1 (whatever the
///   input carries) and sets the creation and modification times, and returns the stored resource.
/// - `update` succeeds only when `resource.meta.version` equals the stored version (else
///   `Conflict`, or `NotFound`); it bumps the version by 1, keeps the creation time, sets the
///   modification time, and returns the stored resource.
/// - `delete` with `Some(version)` fails with `Conflict` unless it matches; returns what was deleted.
/// - A failed write changes nothing and takes no revision.
/// - When a write returns `Ok`, it is durable: it survives a crash of the process.
/// - `get` returns exactly what the last write returned. Reads may already see a write whose
///   call has not returned yet (it is committed, its flush is in flight).
/// - `list` returns items in key order (mesh, then name) with `total` counting every match.
/// - `revision()` is the last revision that is durable and published to watchers.
/// - `watch(from)` yields every change with revision > `from`, in order, gap-free and without
///   duplicates, then live changes; a change is published only once durable. `Compacted` when
///   `from` is older than the retained change log; a watcher that falls too far behind gets one
///   `Lagged` error and its stream ends; the stream ends (`None`) when the store is closed.
/// - Concurrent writers never lose an update: of two updates from the same version, one fails.
#[async_trait]
pub trait ResourceStore: Send + Sync + 'static {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError>;
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError>;
    async fn create(&self, resource: Resource) -> Result<Resource, StoreError>;
    async fn update(&self, resource: Resource) -> Result<Resource, StoreError>;
    async fn delete(
        &self,
        key: &ResourceKey,
        expected_version: Option<u64>,
    ) -> Result<Resource, StoreError>;
    /// The revision of the last committed change (0 for an empty store).
    fn revision(&self) -> u64;
    /// Events with revision > `from_revision`, then live events. Must be called within a tokio
    /// runtime (the stream is fed by a task).
    fn watch(&self, from_revision: u64) -> Result<Watch, StoreError>;
}
