//! Raft storage on sled: [`LogStore`] and [`StateMachine`], in two databases under one data
//! directory (`<dir>/log`, `<dir>/state`).
//!
//! - `log` holds the tree `entries` (key: log index, u64 big-endian; value: the entry as JSON),
//!   the tree `raft` (the vote, the committed log id, the last purged log id) and the tree
//!   `snapshot` (the current snapshot's metadata and data, written in one batch). Appends,
//!   votes, truncation and purges are flushed before openraft is told they are done.
//! - `state` is a [`SledStore`]: the resources, their change log (which serves `watch`) and the
//!   revision, plus the applied state (last applied log id and membership) in its `meta` tree,
//!   written in the same transaction as each change, so that after a crash the state and the
//!   point it reached agree and openraft re-applies the rest from the log.
//!
//! Applying is deterministic: the time comes from the command, versions and revisions from the
//! state, a refused command (conflict, not found, exists) is a no-op whose refusal is the
//! outcome. A snapshot is every resource with the revision and last applied log id; installing
//! one replaces the state in one transaction (watchers from before get `Compacted`).

// openraft's storage traits return its `StorageError` (224 bytes); the helpers here return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{CommandOutcome, CommandRejection, NodeId, TypeConfig};
use crate::sled_store::open_sled;
use crate::{SledStore, SledStoreOptions, StoreError};

type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const ENTRIES_TREE: &str = "entries";
const RAFT_TREE: &str = "raft";
const SNAPSHOT_TREE: &str = "snapshot";
const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";
const SNAPSHOT_META_KEY: &[u8] = b"meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"data";
/// The applied state's key in the state store's `meta` tree.
const APPLIED_KEY: &[u8] = b"raft.applied";
/// The snapshot data format this code writes and reads.
const SNAPSHOT_FORMAT: u32 = 1;

/// Opens (or creates) the Raft storage of one node in `dir`: the log store and the state
/// machine. `options` tunes the state store (change-log retention, watch buffers).
pub fn open_storage(
    dir: impl AsRef<Path>,
    options: SledStoreOptions,
) -> Result<(LogStore, StateMachine), StoreError> {
    let dir = dir.as_ref();
    let log_dir = dir.join("log");
    let bad = |reason: String| StoreError::BadDataDir {
        path: log_dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(&log_dir).map_err(|e| bad(format!("cannot be created: {e}")))?;
    let db = open_sled(&log_dir, options.cache_capacity, "a Raft log")?;
    let tree = |name: &str| {
        db.open_tree(name)
            .map_err(|e| bad(format!("cannot open tree {name}: {e}")))
    };
    let (open, _) = tokio::sync::watch::channel(());
    let open = Arc::new(open);
    let log = LogStore {
        open: open.clone(),
        db: db.clone(),
        entries: tree(ENTRIES_TREE)?,
        raft: tree(RAFT_TREE)?,
    };
    let state = SledStore::open_with(dir.join("state"), options)?;
    let applied = match state.get_meta(APPLIED_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            key: "raft.applied".into(),
            reason: e.to_string(),
        })?,
        None => AppliedState::default(),
    };
    let snapshot = tree(SNAPSHOT_TREE)?;
    let sm = StateMachine {
        _open: open,
        state,
        log_db: db,
        snapshot,
        snapshot_lock: Arc::default(),
        applied,
    };
    Ok((log, sm))
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn decode<T: for<'de> Deserialize<'de>>(
    subject: ErrorSubject<NodeId>,
    bytes: &[u8],
) -> StorageResult<T> {
    serde_json::from_slice(bytes).map_err(|e| io_error(subject, ErrorVerb::Read, e))
}

fn encode<T: Serialize>(subject: ErrorSubject<NodeId>, value: &T) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| io_error(subject, ErrorVerb::Write, e))
}

/// The Raft log, the vote and the committed log id. Cloning shares the database (the log reader
/// openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    /// Shared by every clone of the log store and state machine: dropped with the last one.
    open: Arc<tokio::sync::watch::Sender<()>>,
    db: sled::Db,
    entries: sled::Tree,
    raft: sled::Tree,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

/// Resolves once every handle to a node's log store and state machine is gone (openraft's
/// tasks end a little after `Raft::shutdown` returns), so the directory can be opened again.
#[derive(Debug)]
pub struct StorageReleased(tokio::sync::watch::Receiver<()>);

impl StorageReleased {
    pub async fn wait(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

impl LogStore {
    /// Watches for the release of this storage (take it before handing the storage to Raft).
    pub fn released(&self) -> StorageReleased {
        StorageReleased(self.open.subscribe())
    }

    fn read_raft<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<Option<T>> {
        match self
            .raft
            .get(key)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?
        {
            Some(bytes) => decode(subject, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.db
            .flush_async()
            .await
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        match self
            .entries
            .last()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?
        {
            Some((_, bytes)) => {
                let entry: Entry<TypeConfig> = decode(ErrorSubject::Logs, &bytes)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

fn index_bound(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let range = (
            index_bound(range.start_bound()),
            index_bound(range.end_bound()),
        );
        let mut out = Vec::new();
        for item in self.entries.range(range) {
            let (_, bytes) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(decode(ErrorSubject::Logs, &bytes)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.read_raft(LAST_PURGED_KEY, ErrorSubject::Logs)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let bytes = encode(ErrorSubject::Vote, vote)?;
        self.raft
            .insert(VOTE_KEY, bytes)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        // A vote must survive a crash before it is sent (else a node could vote twice in a term).
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_raft(VOTE_KEY, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: losing it only means re-learning the commit point from the leader.
        let bytes = encode(ErrorSubject::Store, &committed)?;
        self.raft
            .insert(COMMITTED_KEY, bytes)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_raft::<Option<LogId<NodeId>>>(COMMITTED_KEY, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(ErrorSubject::Log(entry.log_id), &entry)?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // openraft counts an entry towards the quorum only once the callback says it is durable.
        let flushed = self
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for key in self.entries.range(log_id.index.to_be_bytes()..).keys() {
            batch.remove(key.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: a crash midway leaves entries below it, which are ignored.
        let bytes = encode(ErrorSubject::Logs, &log_id)?;
        self.raft
            .insert(LAST_PURGED_KEY, bytes)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        self.flush(ErrorSubject::Logs).await?;
        let mut batch = sled::Batch::default();
        for key in self.entries.range(..=log_id.index.to_be_bytes()).keys() {
            batch.remove(key.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }
}

/// How far the state machine got: stored with every change, read back at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

/// The data of a snapshot (JSON).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotData {
    format: u32,
    revision: u64,
    last_applied: Option<LogId<NodeId>>,
    /// Every resource in key order, `{"version", "resource"}`.
    resources: Vec<Value>,
}

/// The replicated state: a [`SledStore`] that commands are applied to, and the current snapshot.
/// Cloning shares it; the snapshot builder is a clone.
#[derive(Clone)]
pub struct StateMachine {
    /// Held only to mark the storage in use (see [`LogStore::released`]).
    _open: Arc<tokio::sync::watch::Sender<()>>,
    state: SledStore,
    log_db: sled::Db,
    snapshot: sled::Tree,
    /// Serialises replacing the current snapshot across clones.
    snapshot_lock: Arc<std::sync::Mutex<()>>,
    applied: AppliedState,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("state", &self.state)
            .field("last_applied", &self.applied.last_applied)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The store the state machine applies to: what `RaftStore` reads and watches.
    pub fn store(&self) -> SledStore {
        self.state.clone()
    }

    fn sm_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
        io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e)
    }

    fn applied_bytes(&self) -> StorageResult<Vec<u8>> {
        encode(ErrorSubject::StateMachine, &self.applied)
    }

    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: &[u8],
    ) -> StorageResult<()> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        // A build (on a clone, in its own task) may finish after a newer snapshot was installed:
        // the current snapshot never goes back.
        let _guard = self
            .snapshot_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let stored = self
            .snapshot
            .get(SNAPSHOT_META_KEY)
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        if let Some(stored) = stored {
            let stored: SnapshotMeta<NodeId, openraft::BasicNode> = decode(subject(), &stored)?;
            if stored.last_log_id > meta.last_log_id {
                return Ok(());
            }
        }
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META_KEY, encode(subject(), meta)?);
        batch.insert(SNAPSHOT_DATA_KEY, data);
        self.snapshot
            .apply_batch(batch)
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        self.log_db
            .flush()
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let export = self
            .state
            .export(APPLIED_KEY)
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let applied: AppliedState = match export.meta {
            Some(bytes) => decode(ErrorSubject::StateMachine, &bytes)?,
            None => AppliedState::default(),
        };
        // The snapshot is only as durable as the state it was read from: flush that first, since
        // the log before it may be purged once the snapshot exists.
        self.state
            .flush()
            .await
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        let data = SnapshotData {
            format: SNAPSHOT_FORMAT,
            revision: export.revision,
            last_applied: applied.last_applied,
            resources: export.resources,
        };
        let bytes = encode(ErrorSubject::Snapshot(None), &data)?;
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-r{}", id.leader_id, id.index, export.revision),
            None => format!("empty-r{}", export.revision),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, &bytes)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        let mut last_revision = None;
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(membership) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
                EntryPayload::Normal(command) => {
                    let applied = self.applied_bytes()?;
                    let result = match command.to_write() {
                        Ok(op) => self
                            .state
                            .apply(op, command.time, Some((APPLIED_KEY, &applied)))
                            .map_err(|e| CommandRejection::from_store_error(&e).ok_or(e)),
                        Err(rejection) => Err(Ok(rejection)),
                    };
                    match result {
                        Ok(event) => {
                            last_revision = Some(event.revision);
                            Some(CommandOutcome::Applied {
                                revision: event.revision,
                                kind: event.kind.into(),
                                version: event.resource.meta.version,
                                resource: mesh_api::to_universal(&event.resource),
                            })
                        }
                        Err(Ok(rejection)) => Some(CommandOutcome::Rejected { rejection }),
                        // Not a refusal but a failing disk: stop rather than diverge.
                        Err(Err(e)) => {
                            return Err(StorageIOError::apply(
                                entry.log_id,
                                AnyError::error(e.to_string()),
                            )
                            .into())
                        }
                    }
                }
            };
            let outcome = match outcome {
                Some(CommandOutcome::Applied { .. }) => outcome,
                other => {
                    // Nothing changed: record the applied point alone.
                    self.state
                        .put_meta(APPLIED_KEY, &self.applied_bytes()?)
                        .map_err(Self::sm_error)?;
                    other
                }
            };
            outcomes.push(outcome.unwrap_or(CommandOutcome::None));
        }
        // One flush for the batch: the writers see their outcome once watchers can see it too.
        if let Some(revision) = last_revision {
            self.state
                .wait_durable(revision)
                .await
                .map_err(Self::sm_error)?;
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Vec<u8>>> {
        Ok(Box::new(Vec::new()))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Vec<u8>>,
    ) -> StorageResult<()> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data: SnapshotData = decode(subject(), &snapshot)?;
        if data.format != SNAPSHOT_FORMAT {
            return Err(io_error(
                subject(),
                ErrorVerb::Read,
                format!(
                    "snapshot format {} is not supported (expected {SNAPSHOT_FORMAT})",
                    data.format
                ),
            ));
        }
        if data.last_applied != meta.last_log_id {
            return Err(io_error(
                subject(),
                ErrorVerb::Read,
                format!(
                    "the data was taken at {:?}, the metadata says {:?}",
                    data.last_applied, meta.last_log_id
                ),
            ));
        }
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let applied_bytes = encode(ErrorSubject::StateMachine, &applied)?;
        self.state
            .replace_all(
                data.revision,
                &data.resources,
                (APPLIED_KEY, &applied_bytes),
            )
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        self.applied = applied;
        self.save_snapshot(meta, &snapshot)
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let read = |key: &[u8]| {
            self.snapshot
                .get(key)
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
        };
        let (Some(meta), Some(data)) = (read(SNAPSHOT_META_KEY)?, read(SNAPSHOT_DATA_KEY)?) else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: decode(ErrorSubject::Snapshot(None), &meta)?,
            snapshot: Box::new(data.to_vec()),
        }))
    }
}

/// What [`backup`] writes: the snapshot data format (`format`, `revision`, `lastApplied`,
/// `resources`), so a backup is what a node would stream to a peer.
pub const BACKUP_FORMAT: u32 = SNAPSHOT_FORMAT;

/// The replicated state of `state` (a node's state store) at one point, as JSON: every resource
/// as stored (versions and times kept), the revision and the last applied log id. Taken under
/// the store's writer lock, so no write is half in it.
pub fn backup(state: &SledStore) -> Result<Vec<u8>, StoreError> {
    let export = state.export(APPLIED_KEY)?;
    let applied: AppliedState = match export.meta {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            key: "raft.applied".into(),
            reason: e.to_string(),
        })?,
        None => AppliedState::default(),
    };
    let data = SnapshotData {
        format: SNAPSHOT_FORMAT,
        revision: export.revision,
        last_applied: applied.last_applied,
        resources: export.resources,
    };
    serde_json::to_vec(&data).map_err(|e| StoreError::Io(format!("cannot encode the backup: {e}")))
}

/// What [`restore`] put in a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub resources: usize,
    pub revision: u64,
}

/// Seeds a new node's Raft data directory `dir` (which must not hold a Raft state yet) with a
/// [`backup`]: the state store holds its resources and revision, and the log starts as if it
/// had been purged behind a snapshot of them whose membership is this one node (`id` at peer
/// address `addr`). The node started on it is a one-member cluster with that state that elects
/// itself; members added later receive the state as a snapshot (the log before it is gone).
pub fn restore(dir: &Path, backup: &[u8], id: NodeId, addr: &str) -> Result<Restored, StoreError> {
    let bad = |reason: String| StoreError::BadDataDir {
        path: dir.display().to_string(),
        reason,
    };
    for held in ["log", "state"] {
        let path = dir.join(held);
        let used = std::fs::read_dir(&path)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        if used {
            return Err(bad(format!(
                "{} already holds a Raft state; restore into a new directory",
                path.display()
            )));
        }
    }
    let data: SnapshotData = serde_json::from_slice(backup).map_err(|e| StoreError::Corrupt {
        key: "the backup".into(),
        reason: format!("not a global backup: {e}"),
    })?;
    if data.format != SNAPSHOT_FORMAT {
        return Err(StoreError::Corrupt {
            key: "the backup".into(),
            reason: format!(
                "format {} is not supported (expected {SNAPSHOT_FORMAT})",
                data.format
            ),
        });
    }
    let (log, sm) = open_storage(dir, SledStoreOptions::default())?;
    // The point a fresh bootstrap would write its membership at (term 0, index 0): the node's
    // first election then starts term 1 above it.
    let log_id = LogId::new(openraft::CommittedLeaderId::new(0, id), 0);
    let nodes = std::collections::BTreeMap::from([(
        id,
        openraft::BasicNode {
            addr: addr.to_owned(),
        },
    )]);
    let membership = openraft::Membership::new(vec![[id].into()], nodes);
    let applied = AppliedState {
        last_applied: Some(log_id),
        membership: StoredMembership::new(Some(log_id), membership),
    };
    let applied_bytes = serde_json::to_vec(&applied)
        .map_err(|e| StoreError::Io(format!("cannot encode the applied state: {e}")))?;
    sm.state.replace_all(
        data.revision,
        &data.resources,
        (APPLIED_KEY, &applied_bytes),
    )?;
    let snapshot = SnapshotData {
        last_applied: Some(log_id),
        ..data
    };
    let bytes = serde_json::to_vec(&snapshot)
        .map_err(|e| StoreError::Io(format!("cannot encode the snapshot: {e}")))?;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: applied.membership.clone(),
        snapshot_id: format!("restored-r{}", snapshot.revision),
    };
    let io = |e: StorageError<NodeId>| StoreError::Io(e.to_string());
    sm.save_snapshot(&meta, &bytes).map_err(io)?;
    let mut batch = sled::Batch::default();
    batch.insert(
        LAST_PURGED_KEY,
        encode(ErrorSubject::Logs, &log_id).map_err(io)?,
    );
    batch.insert(
        COMMITTED_KEY,
        encode(ErrorSubject::Store, &Some(log_id)).map_err(io)?,
    );
    log.raft
        .apply_batch(batch)
        .map_err(|e| StoreError::Io(e.to_string()))?;
    log.db.flush().map_err(|e| StoreError::Io(e.to_string()))?;
    Ok(Restored {
        resources: snapshot.resources.len(),
        revision: snapshot.revision,
    })
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use mesh_api::{ResourceKey, ResourceType};
    use openraft::{CommittedLeaderId, Membership as RaftMembership};

    use super::*;
    use crate::raft::types::Command;
    use crate::testing::{key, resource};
    use crate::{ListQuery, ResourceStore};

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn normal(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn open(dir: &tempfile::TempDir) -> StateMachine {
        open_storage(dir.path(), SledStoreOptions::default())
            .expect("open")
            .1
    }

    /// A log with writes that apply and writes that are refused.
    fn log() -> Vec<Entry<TypeConfig>> {
        let t = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        let mut updated = resource("a", "default", &[("v", "2")]);
        updated.meta.version = 1;
        let mut stale = resource("a", "default", &[("v", "3")]);
        stale.meta.version = 1;
        let members = RaftMembership::new(vec![[1u64].into()], None);
        vec![
            Entry {
                log_id: log_id(1),
                payload: EntryPayload::Membership(members),
            },
            normal(2, Command::create(&resource("a", "default", &[]), t(1))),
            normal(3, Command::create(&resource("a", "default", &[]), t(2))),
            normal(4, Command::update(&updated, t(3))),
            normal(5, Command::update(&stale, t(4))),
            normal(6, Command::delete(&key("missing", "default"), None, t(5))),
            Entry {
                log_id: log_id(7),
                payload: EntryPayload::Blank,
            },
            normal(8, Command::create(&resource("b", "default", &[]), t(6))),
            normal(9, Command::delete(&key("b", "default"), Some(1), t(7))),
        ]
    }

    #[tokio::test]
    async fn every_node_applying_the_same_log_ends_byte_identical() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, mut b) = (open(&dir_a), open(&dir_b));
        let outcomes = a.apply(log()).await.expect("apply on a");
        // The same log in other batches, later on another clock: the same result.
        let mut rest = log();
        let tail = rest.split_off(4);
        b.apply(rest).await.expect("apply on b");
        b.apply(tail).await.expect("apply on b");

        let (ea, eb) = (
            a.state.export(APPLIED_KEY).unwrap(),
            b.state.export(APPLIED_KEY).unwrap(),
        );
        assert_eq!(ea.revision, 4, "create, update, create, delete");
        assert_eq!(
            (ea.revision, &ea.resources, &ea.meta),
            (eb.revision, &eb.resources, &eb.meta)
        );

        let refusal = |i: usize| match &outcomes[i] {
            CommandOutcome::Rejected { rejection } => rejection.clone().into_store_error(0),
            other => panic!("entry {i}: expected a refusal, got {other:?}"),
        };
        assert!(matches!(outcomes[0], CommandOutcome::None));
        assert!(matches!(
            outcomes[1],
            CommandOutcome::Applied { revision: 1, .. }
        ));
        assert!(matches!(refusal(2), StoreError::AlreadyExists(_)));
        assert!(matches!(
            outcomes[3],
            CommandOutcome::Applied {
                revision: 2,
                version: 2,
                ..
            }
        ));
        assert!(matches!(
            refusal(4),
            StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ));
        assert!(matches!(refusal(5), StoreError::NotFound(_)));
        assert!(matches!(outcomes[6], CommandOutcome::None));

        let stored = a.state.get(&key("a", "default")).await.unwrap().expect("a");
        assert_eq!(stored.meta.version, 2);
        assert_eq!(
            stored.meta.creation_time,
            Some(Utc.timestamp_opt(1_700_000_001, 0).unwrap())
        );
        assert_eq!(
            stored.meta.modification_time,
            Some(Utc.timestamp_opt(1_700_000_003, 0).unwrap())
        );
        let (applied, membership) = a.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(9)));
        assert_eq!(membership.log_id(), &Some(log_id(1)));
    }

    #[tokio::test]
    async fn applied_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(&dir);
        sm.apply(log()).await.unwrap();
        drop(sm);
        let mut sm = open(&dir);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(9)));
        assert_eq!(sm.state.revision(), 4);
    }

    #[tokio::test]
    async fn installing_a_snapshot_replaces_the_state_and_ends_older_watchers() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, mut b) = (open(&dir_a), open(&dir_b));
        a.apply(log()).await.unwrap();
        let snapshot = a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(9)));

        // b holds something else, and has a watcher in the middle of its stream.
        let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        b.apply(vec![normal(
            1,
            Command::create(&resource("other", "default", &[]), t),
        )])
        .await
        .unwrap();
        let mut live = b.state.watch(0).unwrap();
        assert_eq!(live.next().await.unwrap().unwrap().revision, 1);

        b.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        let all = ListQuery::all(ResourceType::MeshTimeout);
        assert_eq!(
            b.state.list(&all).await.unwrap(),
            a.state.list(&all).await.unwrap()
        );
        assert_eq!(b.state.revision(), 4);
        assert_eq!(b.applied_state().await.unwrap().0, Some(log_id(9)));
        let current = b
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("current snapshot");
        assert_eq!(current.meta, snapshot.meta);
        match live.next().await {
            Some(Err(StoreError::Compacted {
                requested: 1,
                oldest: 5,
            })) => {}
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(matches!(
            b.state.watch(1),
            Err(StoreError::Compacted { .. })
        ));
        // Writes continue from the snapshot's revision.
        let next = b
            .apply(vec![normal(
                10,
                Command::delete(
                    &ResourceKey::new(ResourceType::MeshTimeout, Some("default"), "a"),
                    None,
                    t,
                ),
            )])
            .await
            .unwrap();
        assert!(matches!(
            next[0],
            CommandOutcome::Applied { revision: 5, .. }
        ));
    }
}
