//! The sled implementation of [`crate::ResourceStore`]: one database directory with three trees
//! (resources, change log, metadata), every write one transaction across them, acknowledged only
//! once flushed to disk by a shared group-commit flusher.
//!
//! Layout:
//! - `resources`: key = type name, `0x00`, escaped mesh, `0x00 0x01`, escaped name (a `0x00` byte
//!   inside a mesh or name is written `0x00 0xFF`), so that one type, one type and mesh, or one
//!   type, mesh and name prefix is a range scan, ordered by mesh then name. Global-scoped types use
//!   an empty mesh. Value = JSON `{"version": n, "resource": <universal form>}`.
//! - `changes`: key = revision (u64 big-endian), value = JSON `{"kind", "version", "resource"}`.
//!   The last [`SledStoreOptions::log_retention`] revisions are kept.
//! - `meta`: the format marker, the format version and the current revision.
//!
//! Durability and ordering: writes are serialised by a mutex around the (in-memory) sled
//! transaction, which assigns the next revision. The writer then waits until the flusher thread has
//! flushed past its revision; one flush covers every write committed before it started (group
//! commit), so concurrent writers share fsyncs. Change events are published to watchers only once
//! durable, in revision order, so a watcher never sees a change that a crash could undo.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mesh_api::{Resource, ResourceKey, ResourceType, Scope};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{IVec, Transactional, Tree};
use tokio::sync::{broadcast, mpsc, watch};

use crate::store::{
    ChangeEvent, ChangeKind, ListPage, ListQuery, ResourceStore, StoreError, Watch,
};

/// The marker stored under [`MARKER_KEY`] in the `meta` tree of every Meridian store.
const MARKER: &[u8] = b"meridian-resource-store";
const MARKER_KEY: &[u8] = b"format";
const FORMAT_VERSION_KEY: &[u8] = b"format_version";
const REVISION_KEY: &[u8] = b"revision";
/// The on-disk format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const RESOURCES_TREE: &[u8] = b"resources";
const CHANGES_TREE: &[u8] = b"changes";
const META_TREE: &[u8] = b"meta";

/// The names sled creates in its directory, and our high-water-mark file; anything else makes the
/// directory foreign.
const KNOWN_FILES: &[&str] = &["conf", "db", "blobs", "snap", HWM_FILE];

/// A file beside the database recording the last revision known durable. sled recovers a damaged
/// log by truncating it at the damage, silently; this catches that loss of acknowledged writes. It
/// is rewritten (without fsync, off the write path) after each flush, so it can lag the database
/// but never lead it.
const HWM_FILE: &str = "meridian-hwm";

/// How many change-log entries a watcher replay reads per batch.
const REPLAY_BATCH: usize = 256;

/// Tunables of a [`SledStore`].
#[derive(Debug, Clone)]
pub struct SledStoreOptions {
    /// How many of the latest revisions the change log keeps; a watch from an older revision
    /// fails with [`StoreError::Compacted`]. At least 1.
    pub log_retention: u64,
    /// How many live events a watcher may fall behind before it gets [`StoreError::Lagged`].
    pub broadcast_capacity: usize,
    /// The buffer between a watcher's feeding task and [`Watch::next`].
    pub watch_buffer: usize,
    /// sled's page cache size in bytes.
    pub cache_capacity: u64,
}

impl Default for SledStoreOptions {
    fn default() -> SledStoreOptions {
        SledStoreOptions {
            log_retention: 100_000,
            broadcast_capacity: 4096,
            watch_buffer: 256,
            cache_capacity: 256 * 1024 * 1024,
        }
    }
}

/// A [`crate::ResourceStore`] on an embedded sled database. Cloning is cheap and shares the store.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    resources: Tree,
    changes: Tree,
    meta: Tree,
    options: SledStoreOptions,
    /// Serialises writers; holds the last committed (not necessarily durable) revision.
    writer: Mutex<u64>,
    durability: Arc<Durability>,
    flusher: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.durability.state).shutdown = true;
        self.durability.wake.notify_all();
        if let Some(handle) = self.flusher.take() {
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "store flusher thread panicked");
            }
        }
    }
}

/// State shared between writers, the flusher thread and watchers.
struct Durability {
    db: sled::Db,
    dir: PathBuf,
    state: Mutex<FlushState>,
    wake: Condvar,
    /// The last durable revision, which is also the last published one.
    published: AtomicU64,
    events: broadcast::Sender<Feed>,
    durable: watch::Sender<DurableState>,
}

/// What live watchers receive: committed changes in order, or a replacement of the whole state
/// (an installed Raft snapshot), after which a watcher cannot continue and gets `Compacted`.
// Events are the common case and are cloned per watcher anyway; boxing them would add an
// allocation to each.
#[allow(clippy::large_enum_variant)]
#[cfg_attr(not(feature = "raft"), allow(dead_code))]
#[derive(Debug, Clone)]
enum Feed {
    Event(ChangeEvent),
    Reset { revision: u64 },
}

struct FlushState {
    /// Last revision committed in memory.
    committed: u64,
    /// Last revision a flush was attempted for (successfully or not).
    attempted: u64,
    /// Events committed but not yet durable, in revision order.
    pending: VecDeque<ChangeEvent>,
    shutdown: bool,
}

#[derive(Debug, Clone, Default)]
struct DurableState {
    durable: u64,
    /// The highest revision whose flush failed, with the error.
    failed: Option<(u64, String)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (plain counters and queues).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Durability {
    fn run_flusher(self: Arc<Durability>) {
        loop {
            let target = {
                let mut state = lock(&self.state);
                while state.committed <= state.attempted && !state.shutdown {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if state.committed <= state.attempted {
                    return; // shut down with nothing left to flush
                }
                state.committed
            };
            match self.db.flush() {
                Ok(_) => {
                    let mut state = lock(&self.state);
                    state.attempted = state.attempted.max(target);
                    // Publish before waking writers, and set `published` before sending, so that
                    // a watcher subscribing concurrently either replays an event or receives it.
                    self.published.store(target, Ordering::SeqCst);
                    while state.pending.front().is_some_and(|e| e.revision <= target) {
                        if let Some(event) = state.pending.pop_front() {
                            // No receivers is fine: nobody is watching.
                            let _ = self.events.send(Feed::Event(event));
                        }
                    }
                    drop(state);
                    self.durable
                        .send_modify(|d| d.durable = d.durable.max(target));
                    if let Err(e) = write_hwm(&self.dir, target) {
                        tracing::warn!(error = %e, "cannot record the durable revision");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "flushing the store failed");
                    lock(&self.state).attempted = target;
                    self.durable
                        .send_modify(|d| d.failed = Some((target, e.to_string())));
                }
            }
        }
    }
}

fn bad_dir(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::BadDataDir {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Checks what is in the directory before sled touches it. Returns whether it is fresh (absent or
/// empty), in which case a new store is initialised.
fn inspect_dir(path: &Path) -> Result<bool, StoreError> {
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(bad_dir(path, format!("cannot be read: {e}"))),
    };
    if !metadata.is_dir() {
        return Err(bad_dir(path, "is not a directory"));
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| bad_dir(path, format!("cannot be listed: {e}")))?;
    let mut empty = true;
    for entry in entries {
        let entry = entry.map_err(|e| bad_dir(path, format!("cannot be listed: {e}")))?;
        empty = false;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let known = KNOWN_FILES
            .iter()
            .any(|f| name == *f || name.starts_with(&format!("{f}.")));
        if !known {
            return Err(bad_dir(
                path,
                format!("not a Meridian store: contains a foreign file {name:?}"),
            ));
        }
    }
    Ok(empty)
}

fn open_db(path: &Path, options: &SledStoreOptions) -> Result<sled::Db, StoreError> {
    open_sled(path, options.cache_capacity, "a store")
}

/// How long opening waits for a database's lock still held by this process: sled lets go of it
/// from background threads a moment after the last handle is dropped, so a store closed and
/// reopened in one process (a restarted Raft node) can find it held briefly.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a sled database, reporting damage (sled panics on some) and a lock held past
/// [`LOCK_WAIT`] (another process uses the directory) as [`StoreError::BadDataDir`].
pub(crate) fn open_sled(
    path: &Path,
    cache_capacity: u64,
    what: &str,
) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match opened {
            Ok(Ok(db)) => return Ok(db),
            // sled reports a held lock only in its message (kind `Other`).
            Ok(Err(sled::Error::Io(e))) if e.to_string().starts_with("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(bad_dir(
                        path,
                        format!("is in use: its lock was held for {LOCK_WAIT:?} ({e})"),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(Err(e)) => return Err(bad_dir(path, format!("cannot be opened as {what}: {e}"))),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown panic".to_owned());
                return Err(bad_dir(path, format!("damaged database: {message}")));
            }
        }
    }
}

fn write_hwm(dir: &Path, revision: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{HWM_FILE}.tmp"));
    std::fs::write(&tmp, format!("{revision}\n"))?;
    std::fs::rename(tmp, dir.join(HWM_FILE))
}

/// The recorded durable revision; `None` when absent or unreadable (it is only a safety net).
fn read_hwm(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(HWM_FILE)).ok()?;
    text.trim().parse().ok()
}

fn read_u64(path: &Path, what: &str, value: Option<IVec>) -> Result<u64, StoreError> {
    match value {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| bad_dir(path, format!("damaged {what}: {} bytes", v.len())))?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in directory `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StoreError> {
        SledStore::open_with(path, SledStoreOptions::default())
    }

    /// Opens (or creates) the store in directory `path`. A path that is not a directory, or a
    /// directory holding anything but a Meridian store of a supported format version, gives
    /// [`StoreError::BadDataDir`].
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SledStoreOptions,
    ) -> Result<SledStore, StoreError> {
        let path = path.as_ref();
        let options = SledStoreOptions {
            log_retention: options.log_retention.max(1),
            broadcast_capacity: options.broadcast_capacity.max(1),
            watch_buffer: options.watch_buffer.max(1),
            ..options
        };
        let fresh = inspect_dir(path)?;
        let db = open_db(path, &options)?;
        let open_tree = |name: &[u8]| {
            db.open_tree(name)
                .map_err(|e| bad_dir(path, format!("cannot open tree: {e}")))
        };
        let meta = open_tree(META_TREE)?;
        let marker = meta
            .get(MARKER_KEY)
            .map_err(|e| bad_dir(path, format!("cannot read the format marker: {e}")))?;
        match marker {
            Some(m) if m.as_ref() == MARKER => {
                let version = meta
                    .get(FORMAT_VERSION_KEY)
                    .map_err(|e| bad_dir(path, format!("cannot read the format version: {e}")))?;
                let version = match version.as_deref().map(<[u8; 4]>::try_from) {
                    Some(Ok(bytes)) => u32::from_be_bytes(bytes),
                    _ => return Err(bad_dir(path, "the format version is missing or damaged")),
                };
                if version > FORMAT_VERSION {
                    return Err(bad_dir(
                        path,
                        format!(
                            "format version {version} is newer than this build supports ({FORMAT_VERSION})"
                        ),
                    ));
                }
                if version < FORMAT_VERSION {
                    return Err(bad_dir(
                        path,
                        format!(
                            "format version {version} is not supported (expected {FORMAT_VERSION})"
                        ),
                    ));
                }
            }
            Some(_) => return Err(bad_dir(path, "not a Meridian store: another format marker")),
            None if fresh => {
                meta.insert(MARKER_KEY, MARKER).map_err(io)?;
                meta.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(io)?;
                meta.insert(REVISION_KEY, &0u64.to_be_bytes()).map_err(io)?;
                db.flush().map_err(io)?;
            }
            None if read_hwm(path).is_some() => {
                return Err(bad_dir(
                    path,
                    "damaged database: the Meridian format marker is gone",
                ))
            }
            None => {
                return Err(bad_dir(
                    path,
                    "not a Meridian store: a database without the Meridian format marker",
                ))
            }
        }
        let resources = open_tree(RESOURCES_TREE)?;
        let changes = open_tree(CHANGES_TREE)?;
        let revision = read_u64(
            path,
            "revision",
            meta.get(REVISION_KEY)
                .map_err(|e| bad_dir(path, format!("cannot read the revision: {e}")))?,
        )?;
        if let Some(hwm) = read_hwm(path) {
            if revision < hwm {
                return Err(bad_dir(
                    path,
                    format!(
                        "damaged database: it holds revision {revision}, but revision {hwm} was acknowledged as durable"
                    ),
                ));
            }
        }
        write_hwm(path, revision).map_err(|e| bad_dir(path, format!("cannot be written: {e}")))?;
        // Enforce the retention (it may have been lowered since the last run).
        if revision > options.log_retention {
            let keep_from = revision - options.log_retention + 1;
            let mut batch = sled::Batch::default();
            for key in changes.range(..keep_from.to_be_bytes()).keys() {
                batch.remove(key.map_err(|e| bad_dir(path, format!("cannot read the log: {e}")))?);
            }
            changes.apply_batch(batch).map_err(io)?;
            db.flush().map_err(io)?;
        }

        let (events, _) = broadcast::channel(options.broadcast_capacity);
        let (durable, _) = watch::channel(DurableState {
            durable: revision,
            failed: None,
        });
        let durability = Arc::new(Durability {
            db,
            dir: path.to_owned(),
            state: Mutex::new(FlushState {
                committed: revision,
                attempted: revision,
                pending: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            published: AtomicU64::new(revision),
            events,
            durable,
        });
        let flusher = {
            let durability = durability.clone();
            std::thread::Builder::new()
                .name("store-flusher".into())
                .spawn(move || durability.run_flusher())
                .map_err(io)?
        };
        Ok(SledStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                resources,
                changes,
                meta,
                options,
                writer: Mutex::new(revision),
                durability,
                flusher: Some(flusher),
            }),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The oldest revision a watch can still start after (minus one), i.e. the first retained
    /// change-log entry, or the next revision when the log is empty.
    pub fn oldest_retained(&self) -> Result<u64, StoreError> {
        let published = self.inner.durability.published.load(Ordering::SeqCst);
        match self.inner.changes.first().map_err(io)? {
            Some((key, _)) => decode_revision(&key),
            None => Ok(published + 1),
        }
    }

    /// The scan behind [`ResourceStore::list`]; blocking (it may touch the disk).
    fn list_blocking(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let rtype = query.rtype;
        let tprefix = type_prefix(rtype);
        let mesh = match rtype.scope() {
            Scope::Global => Some(""),
            Scope::Mesh => query.mesh.as_deref(),
        };
        let mut name_prefix = Vec::new();
        if let Some(p) = &query.name_prefix {
            push_escaped(&mut name_prefix, p);
        }
        // With the mesh known, the name prefix is part of the scanned range; otherwise each key's
        // name is checked.
        let (scan, check_name) = match mesh {
            Some(mesh) => {
                let mut scan = mesh_prefix(rtype, mesh);
                scan.extend_from_slice(&name_prefix);
                (scan, false)
            }
            None => (tprefix.clone(), !name_prefix.is_empty()),
        };
        let end = query
            .limit
            .map_or(usize::MAX, |l| query.offset.saturating_add(l));
        let mut total = 0usize;
        let mut items = Vec::new();
        for entry in self.inner.resources.scan_prefix(scan) {
            let (key, value) = entry.map_err(io)?;
            if check_name {
                let Some(name) = escaped_name(&key, tprefix.len()) else {
                    return Err(StoreError::Corrupt {
                        key: key_display(&key),
                        reason: "malformed key".into(),
                    });
                };
                if !name.starts_with(&name_prefix) {
                    continue;
                }
            }
            let in_window = total >= query.offset && total < end;
            if query.labels.is_empty() && !in_window {
                total += 1;
                continue;
            }
            let stored: StoredResource =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    key: key_display(&key),
                    reason: e.to_string(),
                })?;
            if !labels_match(&query.labels, &stored.resource) {
                continue;
            }
            if in_window {
                items.push(parse_stored(
                    &key_display(&key),
                    stored.version,
                    stored.resource,
                )?);
            }
            total += 1;
        }
        let next = query.offset.saturating_add(items.len());
        Ok(ListPage {
            items,
            total,
            next_offset: (next < total).then_some(next),
        })
    }

    /// Commits one change and waits until it is durable.
    async fn write(&self, op: WriteOp) -> Result<Resource, StoreError> {
        let event = self.apply(op, Utc::now(), None)?;
        self.wait_durable(event.revision).await?;
        Ok(event.resource)
    }

    /// Waits until every change up to `revision` is flushed (and published to watchers).
    pub(crate) async fn wait_durable(&self, revision: u64) -> Result<(), StoreError> {
        let mut durable = self.inner.durability.durable.subscribe();
        let state = durable
            .wait_for(|d| {
                d.durable >= revision || d.failed.as_ref().is_some_and(|f| f.0 >= revision)
            })
            .await
            .map_err(|_| StoreError::Io("the store was closed".into()))?
            .clone();
        if state.durable >= revision {
            Ok(())
        } else {
            let reason = state.failed.map(|f| f.1).unwrap_or_default();
            Err(StoreError::Io(format!(
                "revision {revision} could not be flushed: {reason}"
            )))
        }
    }

    /// The synchronous part of a write: one transaction across the three trees, at time `now`.
    /// `extra_meta` is written into the `meta` tree in the same transaction (the Raft state
    /// machine records its last applied log id with each change this way).
    pub(crate) fn apply(
        &self,
        op: WriteOp,
        now: DateTime<Utc>,
        extra_meta: Option<(&[u8], &[u8])>,
    ) -> Result<ChangeEvent, StoreError> {
        let inner = &*self.inner;
        let key = match &op {
            WriteOp::Create(r) | WriteOp::Update(r) => normalize_key(r.key())?,
            WriteOp::Delete(k, _) => normalize_key(k.clone())?,
        };
        let kbytes = encode_key(&key);
        let retention = inner.options.log_retention;

        let mut committed = lock(&inner.writer);
        let revision = *committed + 1;
        let result = (&inner.resources, &inner.changes, &inner.meta).transaction(
            |(resources, changes, meta)| {
                let abort = ConflictableTransactionError::Abort;
                let existing = match resources.get(&kbytes)? {
                    Some(bytes) => Some(decode_resource(&key, &bytes).map_err(abort)?),
                    None => None,
                };
                let (kind, resource) = match &op {
                    WriteOp::Create(input) => {
                        if existing.is_some() {
                            return Err(abort(StoreError::AlreadyExists(key.clone())));
                        }
                        let mut r = input.clone();
                        r.meta.mesh = key.mesh.clone();
                        r.meta.version = 1;
                        r.meta.creation_time = Some(now);
                        r.meta.modification_time = Some(now);
                        (ChangeKind::Created, r)
                    }
                    WriteOp::Update(input) => {
                        let Some(old) = existing else {
                            return Err(abort(StoreError::NotFound(key.clone())));
                        };
                        if old.meta.version != input.meta.version {
                            return Err(abort(StoreError::Conflict {
                                key: key.clone(),
                                expected: input.meta.version,
                                actual: old.meta.version,
                            }));
                        }
                        let mut r = input.clone();
                        r.meta.mesh = key.mesh.clone();
                        r.meta.version = old.meta.version + 1;
                        r.meta.creation_time = old.meta.creation_time.or(Some(now));
                        r.meta.modification_time = Some(now);
                        (ChangeKind::Updated, r)
                    }
                    WriteOp::Delete(_, expected) => {
                        let Some(old) = existing else {
                            return Err(abort(StoreError::NotFound(key.clone())));
                        };
                        if let Some(expected) = expected {
                            if *expected != old.meta.version {
                                return Err(abort(StoreError::Conflict {
                                    key: key.clone(),
                                    expected: *expected,
                                    actual: old.meta.version,
                                }));
                            }
                        }
                        (ChangeKind::Deleted, old)
                    }
                };
                match kind {
                    ChangeKind::Deleted => {
                        resources.remove(kbytes.as_slice())?;
                    }
                    _ => {
                        let bytes = encode_resource(&resource).map_err(abort)?;
                        resources.insert(kbytes.as_slice(), bytes)?;
                    }
                }
                let bytes = encode_event(kind, &resource).map_err(abort)?;
                changes.insert(&revision.to_be_bytes(), bytes)?;
                if revision > retention {
                    changes.remove(&(revision - retention).to_be_bytes())?;
                }
                meta.insert(REVISION_KEY, &revision.to_be_bytes())?;
                if let Some((k, v)) = extra_meta {
                    meta.insert(k, v)?;
                }
                Ok(ChangeEvent {
                    revision,
                    kind,
                    resource,
                })
            },
        );
        let event = match result {
            Ok(event) => event,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(io(e)),
        };
        *committed = revision;
        {
            let mut state = lock(&inner.durability.state);
            state.committed = revision;
            state.pending.push_back(event.clone());
        }
        drop(committed);
        inner.durability.wake.notify_one();
        Ok(event)
    }
}

/// A consistent copy of a store's whole state (what a Raft snapshot holds).
#[cfg(feature = "raft")]
pub(crate) struct Export {
    pub revision: u64,
    /// Every resource in key order, as stored (`{"version", "resource"}` JSON).
    pub resources: Vec<Value>,
    /// The value of the requested `meta` key at the same point.
    pub meta: Option<Vec<u8>>,
}

/// What the Raft state machine needs beyond the `ResourceStore` contract.
#[cfg(feature = "raft")]
impl SledStore {
    /// Writes one `meta` key outside any change (no revision taken), serialised with writers.
    pub(crate) fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let _writer = lock(&self.inner.writer);
        self.inner.meta.insert(key, value).map_err(io)?;
        Ok(())
    }

    pub(crate) fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.meta.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    /// Flushes everything written so far (including `put_meta`) to disk.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        self.inner.durability.db.flush_async().await.map_err(io)?;
        Ok(())
    }

    /// Reads the whole state and `meta_key` at one point: writers wait meanwhile.
    pub(crate) fn export(&self, meta_key: &[u8]) -> Result<Export, StoreError> {
        let writer = lock(&self.inner.writer);
        let revision = *writer;
        let mut resources = Vec::new();
        for entry in self.inner.resources.iter() {
            let (key, value) = entry.map_err(io)?;
            let stored: Value =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    key: key_display(&key),
                    reason: e.to_string(),
                })?;
            resources.push(stored);
        }
        let meta = self
            .inner
            .meta
            .get(meta_key)
            .map_err(io)?
            .map(|v| v.to_vec());
        drop(writer);
        Ok(Export {
            revision,
            resources,
            meta,
        })
    }

    /// Replaces the whole state in one transaction: the resources, the revision and `meta`; the
    /// change log is emptied (a watch from an older revision gets `Compacted`, and so do live
    /// watchers). Durable when it returns.
    pub(crate) fn replace_all(
        &self,
        revision: u64,
        resources: &[Value],
        meta: (&[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let mut records = Vec::with_capacity(resources.len());
        for (i, stored) in resources.iter().enumerate() {
            let record = format!("snapshot resource [{i}]");
            let stored: StoredResource =
                serde_json::from_value(stored.clone()).map_err(|e| StoreError::Corrupt {
                    key: record.clone(),
                    reason: e.to_string(),
                })?;
            let resource = parse_stored(&record, stored.version, stored.resource)?;
            let key = normalize_key(resource.key())?;
            records.push((encode_key(&key), encode_resource(&resource)?));
        }
        {
            let inner = &*self.inner;
            let mut committed = lock(&inner.writer);
            let old_resources: Vec<IVec> = inner
                .resources
                .iter()
                .keys()
                .collect::<Result<_, _>>()
                .map_err(io)?;
            let old_changes: Vec<IVec> = inner
                .changes
                .iter()
                .keys()
                .collect::<Result<_, _>>()
                .map_err(io)?;
            let result: Result<(), TransactionError<StoreError>> =
                (&inner.resources, &inner.changes, &inner.meta).transaction(
                    |(tx_resources, tx_changes, tx_meta)| {
                        for key in &old_resources {
                            tx_resources.remove(key.clone())?;
                        }
                        for key in &old_changes {
                            tx_changes.remove(key.clone())?;
                        }
                        for (key, value) in &records {
                            tx_resources.insert(key.as_slice(), value.as_slice())?;
                        }
                        tx_meta.insert(REVISION_KEY, &revision.to_be_bytes())?;
                        tx_meta.insert(meta.0, meta.1)?;
                        Ok(())
                    },
                );
            match result {
                Ok(()) => {}
                Err(TransactionError::Abort(e)) => return Err(e),
                Err(TransactionError::Storage(e)) => return Err(io(e)),
            }
            inner.durability.db.flush().map_err(io)?;
            *committed = revision;
            let mut state = lock(&inner.durability.state);
            // Nothing is pending (the caller waited for its writes), and anything that were is
            // superseded by the new state.
            state.pending.clear();
            state.committed = revision;
            state.attempted = revision;
            inner.durability.published.store(revision, Ordering::SeqCst);
            let _ = inner.durability.events.send(Feed::Reset { revision });
            drop(state);
            inner
                .durability
                .durable
                .send_modify(|d| d.durable = revision);
            if let Err(e) = write_hwm(&inner.durability.dir, revision) {
                tracing::warn!(error = %e, "cannot record the durable revision");
            }
            drop(committed);
        }
        Ok(())
    }
}

pub(crate) enum WriteOp {
    Create(Resource),
    Update(Resource),
    Delete(ResourceKey, Option<u64>),
}

/// Drops the mesh of global-scoped types and rejects keys that cannot be stored.
pub(crate) fn normalize_key(key: ResourceKey) -> Result<ResourceKey, StoreError> {
    let key = ResourceKey::new(key.rtype, key.mesh.as_deref(), key.name);
    let invalid = |reason: &str| StoreError::InvalidKey {
        key: key.clone(),
        reason: reason.to_owned(),
    };
    if key.name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if key.rtype.scope() == Scope::Mesh {
        match key.mesh.as_deref() {
            None => return Err(invalid("a mesh-scoped type needs a mesh")),
            Some("") => return Err(invalid("the mesh is empty")),
            Some(_) => {}
        }
    }
    Ok(key)
}

fn push_escaped(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

fn type_prefix(rtype: ResourceType) -> Vec<u8> {
    let mut out = rtype.name().as_bytes().to_vec();
    out.push(0);
    out
}

fn mesh_prefix(rtype: ResourceType, mesh: &str) -> Vec<u8> {
    let mut out = type_prefix(rtype);
    push_escaped(&mut out, mesh);
    out.extend_from_slice(&[0, 1]);
    out
}

fn encode_key(key: &ResourceKey) -> Vec<u8> {
    let mut out = mesh_prefix(key.rtype, key.mesh.as_deref().unwrap_or(""));
    push_escaped(&mut out, &key.name);
    out
}

/// The escaped name part of an encoded key (after the mesh terminator), or `None` if malformed.
fn escaped_name(key: &[u8], type_prefix_len: usize) -> Option<&[u8]> {
    let mut i = type_prefix_len;
    while i < key.len() {
        if key[i] == 0 {
            match key.get(i + 1) {
                Some(1) => return Some(&key[i + 2..]),
                Some(0xFF) => i += 2,
                _ => return None,
            }
        } else {
            i += 1;
        }
    }
    None
}

fn key_display(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}

#[derive(Serialize, Deserialize)]
struct StoredResource {
    version: u64,
    resource: Value,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
enum StoredKind {
    Created,
    Updated,
    Deleted,
}

#[derive(Serialize, Deserialize)]
struct StoredEvent {
    kind: StoredKind,
    version: u64,
    resource: Value,
}

fn encode_error(resource: &Resource, e: serde_json::Error) -> StoreError {
    StoreError::Io(format!("cannot encode {}: {e}", resource.key()))
}

fn encode_resource(resource: &Resource) -> Result<Vec<u8>, StoreError> {
    let stored = StoredResource {
        version: resource.meta.version,
        resource: mesh_api::to_universal(resource),
    };
    serde_json::to_vec(&stored).map_err(|e| encode_error(resource, e))
}

fn encode_event(kind: ChangeKind, resource: &Resource) -> Result<Vec<u8>, StoreError> {
    let kind = match kind {
        ChangeKind::Created => StoredKind::Created,
        ChangeKind::Updated => StoredKind::Updated,
        ChangeKind::Deleted => StoredKind::Deleted,
    };
    let stored = StoredEvent {
        kind,
        version: resource.meta.version,
        resource: mesh_api::to_universal(resource),
    };
    serde_json::to_vec(&stored).map_err(|e| encode_error(resource, e))
}

fn parse_stored(record: &str, version: u64, value: Value) -> Result<Resource, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: record.to_owned(),
        reason,
    };
    let mut resource = mesh_api::parse_resource(value)
        .map_err(|e| corrupt(e.to_string()))?
        .resource;
    resource.meta.version = version;
    Ok(resource)
}

fn decode_resource(key: &ResourceKey, bytes: &[u8]) -> Result<Resource, StoreError> {
    let stored: StoredResource =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
    let resource = parse_stored(&key.to_string(), stored.version, stored.resource)?;
    if resource.key() != *key {
        return Err(StoreError::Corrupt {
            key: key.to_string(),
            reason: format!("the record holds {}", resource.key()),
        });
    }
    Ok(resource)
}

fn decode_revision(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: format!("change log key {bytes:?}"),
        reason: "not an 8-byte revision".into(),
    })?;
    Ok(u64::from_be_bytes(array))
}

fn decode_event(revision: u64, bytes: &[u8]) -> Result<ChangeEvent, StoreError> {
    let record = format!("change log revision {revision}");
    let stored: StoredEvent = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: record.clone(),
        reason: e.to_string(),
    })?;
    let kind = match stored.kind {
        StoredKind::Created => ChangeKind::Created,
        StoredKind::Updated => ChangeKind::Updated,
        StoredKind::Deleted => ChangeKind::Deleted,
    };
    Ok(ChangeEvent {
        revision,
        kind,
        resource: parse_stored(&record, stored.version, stored.resource)?,
    })
}

fn labels_match(labels: &BTreeMap<String, String>, resource: &Value) -> bool {
    let stored = resource.get("labels");
    labels.iter().all(|(k, v)| {
        stored
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .is_some_and(|s| s == v)
    })
}

/// Reads up to [`REPLAY_BATCH`] change-log entries in `(after, up_to]`.
fn read_log_batch(changes: &Tree, after: u64, up_to: u64) -> Result<Vec<ChangeEvent>, StoreError> {
    let mut out = Vec::new();
    if after >= up_to {
        return Ok(out);
    }
    let range = (after + 1).to_be_bytes()..=up_to.to_be_bytes();
    for entry in changes.range(range).take(REPLAY_BATCH) {
        let (key, value) = entry.map_err(io)?;
        let revision = decode_revision(&key)?;
        out.push(decode_event(revision, &value)?);
    }
    Ok(out)
}

/// Feeds one watcher: the change log in `(from, published]`, then live events, deduplicated by
/// revision and checked for gaps. Ends when the watcher is dropped or the store is closed.
async fn feed_watcher(
    store: Weak<Inner>,
    mut live: broadcast::Receiver<Feed>,
    from: u64,
    published: u64,
    tx: mpsc::Sender<Result<ChangeEvent, StoreError>>,
) {
    let mut last = from;
    while last < published {
        // Hold the store only while reading, so that dropping it closes the database.
        let Some(inner) = store.upgrade() else {
            return;
        };
        let batch = read_log_batch(&inner.changes, last, published);
        drop(inner);
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if batch.first().is_none_or(|e| e.revision != last + 1) {
            // The log was compacted past us while we replayed.
            let oldest = batch.first().map_or(published + 1, |e| e.revision);
            let _ = tx
                .send(Err(StoreError::Compacted {
                    requested: from,
                    oldest,
                }))
                .await;
            return;
        }
        for event in batch {
            if event.revision != last + 1 {
                let _ = tx
                    .send(Err(StoreError::Compacted {
                        requested: from,
                        oldest: event.revision,
                    }))
                    .await;
                return;
            }
            last = event.revision;
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    }
    drop(store);
    loop {
        let received = tokio::select! {
            _ = tx.closed() => return,
            received = live.recv() => received,
        };
        match received {
            Ok(Feed::Event(event)) if event.revision <= last => {}
            Ok(Feed::Event(event)) if event.revision == last + 1 => {
                last = event.revision;
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            // The whole state was replaced (a Raft snapshot installed): the changes between
            // `last` and the new revision are not in any log.
            Ok(Feed::Reset { revision }) if revision <= last => {}
            Ok(Feed::Reset { revision }) => {
                let _ = tx
                    .send(Err(StoreError::Compacted {
                        requested: last,
                        oldest: revision + 1,
                    }))
                    .await;
                return;
            }
            // A gap cannot happen (events are published in order); report it rather than skip.
            Ok(Feed::Event(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                let _ = tx
                    .send(Err(StoreError::Lagged {
                        last_delivered: last,
                    }))
                    .await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[async_trait]
impl ResourceStore for SledStore {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let key = normalize_key(key.clone())?;
        match self.inner.resources.get(encode_key(&key)).map_err(io)? {
            Some(bytes) => decode_resource(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        // A list can scan many records: keep it off the async worker threads when on tokio.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let store = self.clone();
                let query = query.clone();
                runtime
                    .spawn_blocking(move || store.list_blocking(&query))
                    .await
                    .map_err(|e| StoreError::Io(format!("list task failed: {e}")))?
            }
            Err(_) => self.list_blocking(query),
        }
    }

    async fn create(&self, resource: Resource) -> Result<Resource, StoreError> {
        self.write(WriteOp::Create(resource)).await
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        self.write(WriteOp::Update(resource)).await
    }

    async fn delete(
        &self,
        key: &ResourceKey,
        expected_version: Option<u64>,
    ) -> Result<Resource, StoreError> {
        self.write(WriteOp::Delete(key.clone(), expected_version))
            .await
    }

    fn revision(&self) -> u64 {
        self.inner.durability.published.load(Ordering::SeqCst)
    }

    fn watch(&self, from_revision: u64) -> Result<Watch, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Io("watch must be called inside a tokio runtime".into()))?;
        // Subscribe first, then read how far the log is published: every later event arrives live.
        let live = self.inner.durability.events.subscribe();
        let published = self.inner.durability.published.load(Ordering::SeqCst);
        let oldest = self.oldest_retained()?;
        if from_revision.saturating_add(1) < oldest {
            return Err(StoreError::Compacted {
                requested: from_revision,
                oldest,
            });
        }
        let (tx, rx) = mpsc::channel(self.inner.options.watch_buffer);
        runtime.spawn(feed_watcher(
            Arc::downgrade(&self.inner),
            live,
            from_revision,
            published,
            tx,
        ));
        Ok(Watch::from_receiver(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_mesh_then_name() {
        let k = |mesh: &str, name: &str| {
            encode_key(&ResourceKey::new(
                ResourceType::MeshTimeout,
                Some(mesh),
                name,
            ))
        };
        let mut keys = [
            k("b", "a"),
            k("a", "b"),
            k("a\0", "a"),
            k("a", "a\0"),
            k("a", "a"),
            k("ab", "a"),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                k("a", "a"),
                k("a", "a\0"),
                k("a", "b"),
                k("a\0", "a"),
                k("ab", "a"),
                k("b", "a"),
            ]
        );
    }

    #[test]
    fn escaped_name_is_found_after_the_mesh() {
        let key = encode_key(&ResourceKey::new(
            ResourceType::MeshTimeout,
            Some("m\0x"),
            "n\0y",
        ));
        let tlen = type_prefix(ResourceType::MeshTimeout).len();
        assert_eq!(escaped_name(&key, tlen), Some(&b"n\0\xFFy"[..]));
    }
}
