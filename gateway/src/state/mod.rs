//! The node's local state store: a typed key-value API over one redb file, `<data_dir>/state.redb`.
//! The app opens one [`Store`] at start and hands clones to every subsystem; replication will
//! subscribe to its [`Change`]s and apply peers' writes through the same [`Store::put`]. All
//! writes go through one writer thread (`writer.rs`); nothing else may open a write transaction
//! on the file, and nothing here may block a tokio worker thread.
//!
//! # Layout
//! One redb table, `state`, maps `"ns/path"` strings to JSON records
//! `{"version","updated_ms","value"}` (see `record.rs`). One table rather than one per
//! namespace because namespace names contain no `/`, so each namespace is already a contiguous,
//! path-ordered range; one table keeps every write transaction to a single open, makes
//! [`Store::len`] a single count, and lets replication walk everything in one ordered pass. The
//! record is JSON, not a redb tuple, so it can gain fields (say, the origin node of a replicated
//! write) without a table migration.
//!
//! # Writes: group commit
//! [`Store::put`] and [`Store::delete`] queue an op (bounded queue: backpressure) and wait for
//! its answer. The writer drains up to 256 queued ops, applies them in order in one write
//! transaction, commits with `Durability::Immediate` (fsync), then for each op in order
//! broadcasts its [`Change`] and answers its caller. A burst therefore costs a few fsyncs, not
//! one per write, and the order of acknowledgements is the order of commits: after a crash the
//! file holds every acknowledged write and possibly some later ones, never a gap.
//!
//! # Reads
//! [`Store::get`] and [`Store::scan_prefix`] run a redb read transaction on tokio's blocking
//! pool (`spawn_blocking`). redb reads are MVCC snapshots, so they never wait for the writer and
//! see only committed data; the blocking pool keeps a page fault on a slow SD card off the
//! async workers.

mod error;
mod key;
mod metrics;
mod record;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

pub use error::Error;
pub use key::{Key, Namespace, MAX_PATH_LEN};
pub use record::{Header, Record, RecordError};

use metrics::Metrics;
pub(crate) use writer::unix_ms;
use writer::{Msg, WriteOp, Writer, QUEUE_DEPTH, TABLE};

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "state.redb";

/// redb's page cache. Its default (1 GiB) is meant for servers; the state of a house fits in a
/// few MiB, and a Pi Zero 2 W has 512 MiB in all.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// How many committed changes a slow subscriber may fall behind before it gets
/// [`broadcast::error::RecvError::Lagged`].
const CHANGES_CAPACITY: usize = 4096;

/// How long [`Store::close`] waits for reads still running before it leaves the file to be
/// closed by the last of them.
const CLOSE_READ_GRACE: Duration = Duration::from_secs(5);

/// One stored value with its bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    /// Per-key version: 1 for the first write (one above the version floor once the store
    /// has forgotten records), +1 on every write after it (a delete too, in the replicated
    /// namespaces, where it leaves a tombstone for a while).
    pub version: u64,
    /// The lease term of the write, for keys the leader owns; 0 for other keys.
    pub term: u64,
    /// The node that wrote this version (empty for the `node` namespace's old records).
    pub origin: String,
    /// When this version was committed by its origin, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// The value.
    pub value: T,
}

/// One committed write, as seen by [`Store::subscribe`]rs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The key written.
    pub key: Key,
    /// What the key holds now; its `value` is `None` when the key was deleted (a tombstone
    /// in the replicated namespaces) or forgotten.
    pub record: Record,
    /// Whether the change came from a peer (applied or forgotten by replication) rather
    /// than from a write of this node.
    pub remote: bool,
}

/// What became of one peer's record given to [`Store::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It superseded what the key held and is stored; `conflict` when both had the same
    /// term and version (two writers where one was expected) and the tie-break chose it.
    Applied {
        /// Whether a record of the same term and version was replaced.
        conflict: bool,
    },
    /// The key already holds exactly this record.
    Duplicate,
    /// The key holds a record that supersedes it; nothing changed.
    Stale {
        /// What the key holds.
        stored: Record,
    },
    /// A tombstone older than the horizon, for a key with no record: not stored.
    Expired,
}

/// A cheap, cloneable handle on the node's state store. Every clone talks to the same writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What every [`Store`] clone shares.
struct Inner {
    /// The `state.redb` file, for logs.
    path: PathBuf,
    /// The database, for reads. `None` once [`Store::close`] has taken it back.
    db: RwLock<Option<Arc<Database>>>,
    /// The writer's queue.
    ops: mpsc::Sender<Msg>,
    /// The change channel; the writer holds the only strong sender, so it closes with the writer.
    changes: broadcast::WeakSender<Change>,
    /// Number of records (tombstones included), maintained by the writer after each commit.
    len: Arc<AtomicU64>,
    /// Number of tombstones, maintained by the writer.
    tombstones: Arc<AtomicU64>,
    /// Set by the first [`Store::close`]; later calls fail fast with [`Error::Closed`].
    closed: AtomicBool,
    /// The store's metrics (the writer has its own clone).
    metrics: Metrics,
}

// === impl Store ===

impl Store {
    /// Opens (or creates) `<data_dir>/state.redb`, creating `data_dir` if it is missing, registers
    /// the `roost_state_*` metrics on `registry`, and starts the writer thread.
    ///
    /// Blocking: the open may have to repair the file after a crash. Call it before starting
    /// the async work, or from `spawn_blocking`. Only one process may have the file open; a
    /// second open fails with [`Error::Open`].
    pub fn open(data_dir: &Path, registry: &prometheus::Registry) -> Result<Store, Error> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let opened = Instant::now();
        let (db, len, tombstones, floor) = open_db(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        let metrics = Metrics::register(registry)?;
        metrics.keys.set(i64::try_from(len).unwrap_or(i64::MAX));
        metrics
            .tombstones
            .set(i64::try_from(tombstones).unwrap_or(i64::MAX));

        let db = Arc::new(db);
        let len = Arc::new(AtomicU64::new(len));
        let tombstones = Arc::new(AtomicU64::new(tombstones));
        let (ops_tx, ops_rx) = mpsc::channel(QUEUE_DEPTH);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let weak_changes = changes.downgrade();
        let writer = Writer {
            db: Arc::clone(&db),
            ops: ops_rx,
            changes,
            len: Arc::clone(&len),
            tombstones: Arc::clone(&tombstones),
            floor: std::cell::Cell::new(floor),
            metrics: metrics.clone(),
        };
        let span = tracing::info_span!("state_writer", path = %path.display());
        std::thread::Builder::new()
            .name("roost-state".into())
            .spawn(move || span.in_scope(|| writer.run()))
            .map_err(|source| Error::Spawn { source })?;

        info!(
            path = %path.display(),
            keys = len.load(Ordering::Relaxed),
            elapsed_ms = opened.elapsed().as_millis() as u64,
            "state store open"
        );
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                db: RwLock::new(Some(db)),
                ops: ops_tx,
                changes: weak_changes,
                len,
                tombstones,
                closed: AtomicBool::new(false),
                metrics,
            }),
        })
    }

    /// Stores `value` under `key` and returns its new version. For keys of the replicated
    /// namespaces use the replication layer (`crate::replication`), which checks who may
    /// write them and publishes the write; this writes the local copy only.
    ///
    /// Resolves only once the write is durably committed (fsync'd) together with its batch.
    /// If the future is dropped after the op was queued, the write may still commit.
    pub async fn put<T: Serialize + ?Sized>(&self, key: &Key, value: &T) -> Result<u64, Error> {
        self.put_as(key, value, 0, &Arc::from("")).await
    }

    /// [`Store::put`] recording `origin` as the writer and `term` as its lease term. Fails
    /// with [`Error::StaleTerm`] if the key holds a record of a later term.
    pub async fn put_as<T: Serialize + ?Sized>(
        &self,
        key: &Key,
        value: &T,
        term: u64,
        origin: &Arc<str>,
    ) -> Result<u64, Error> {
        self.check_open()?;
        key.validate()?;
        let value = serde_json::to_value(value).map_err(|source| {
            self.inner.metrics.write_errors.inc();
            Error::Encode {
                key: key.clone(),
                source,
            }
        })?;
        let (reply, answer) = oneshot::channel();
        self.queue(WriteOp::Put {
            key: key.clone(),
            value,
            term,
            origin: Arc::clone(origin),
            sent: Instant::now(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Deletes `key`; returns whether it had a value. In a replicated namespace the key keeps
    /// a tombstone (the next version, without a value) until replication clears it; in
    /// `node` it is removed. Durable once it resolves, like [`Store::put`].
    pub async fn delete(&self, key: &Key) -> Result<bool, Error> {
        self.delete_as(key, 0, &Arc::from("")).await
    }

    /// [`Store::delete`] recording `origin` and `term` as [`Store::put_as`] does.
    pub async fn delete_as(&self, key: &Key, term: u64, origin: &Arc<str>) -> Result<bool, Error> {
        self.check_open()?;
        key.validate()?;
        let (reply, answer) = oneshot::channel();
        self.queue(WriteOp::Delete {
            key: key.clone(),
            term,
            origin: Arc::clone(origin),
            sent: Instant::now(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Stores each of peers' `records` whose key holds nothing newer ([`Record::order`]), in
    /// one durable batch, and returns what became of each. A tombstone written before
    /// `horizon_ms` is not stored for a key without a record.
    pub async fn apply(
        &self,
        records: Vec<(Key, Record)>,
        horizon_ms: u64,
    ) -> Result<Vec<Outcome>, Error> {
        self.check_open()?;
        for (key, _) in &records {
            key.validate()?;
        }
        let (reply, answer) = oneshot::channel();
        self.queue(WriteOp::Apply {
            records,
            horizon_ms,
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Removes `key` entirely (no tombstone) if it still holds `version`; returns whether it
    /// did. For tombstones that have done their work, and for keys whose replicated copy was
    /// cleared.
    pub async fn forget(&self, key: &Key, version: u64) -> Result<bool, Error> {
        self.check_open()?;
        key.validate()?;
        let (reply, answer) = oneshot::channel();
        self.queue(WriteOp::Forget {
            key: key.clone(),
            version,
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The entry stored under `key`, decoded as `T`, or `None` if there is none (or only a
    /// tombstone).
    ///
    /// Sees every write that was acknowledged before the call.
    pub async fn get<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<Entry<T>>, Error> {
        match self.record(key).await? {
            Some(record) => record.into_entry(key),
            None => Ok(None),
        }
    }

    /// The record stored under `key`, tombstones included.
    pub async fn record(&self, key: &Key) -> Result<Option<Record>, Error> {
        key.validate()?;
        let db = self.db()?;
        let raw_key = key.encode();
        let raw = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, redb::Error> {
            let txn = db.begin_read()?;
            let table = txn.open_table(TABLE)?;
            let found = table.get(raw_key.as_str())?;
            Ok(found.map(|guard| guard.value().to_vec()))
        })
        .await
        .map_err(|source| Error::Task { source })?
        .map_err(|source| Error::Read { source })?;
        raw.map(|bytes| record::decode(key, &bytes)).transpose()
    }

    /// Every entry of `ns` whose path starts with `prefix`, ordered by path (byte order);
    /// tombstones are left out.
    ///
    /// An empty prefix lists the whole namespace; keys of other namespaces never appear. The
    /// result is one consistent snapshot.
    pub async fn scan_prefix(
        &self,
        ns: Namespace,
        prefix: &str,
    ) -> Result<Vec<(Key, Entry<serde_json::Value>)>, Error> {
        let records = self.records(ns, prefix).await?;
        let mut out = Vec::with_capacity(records.len());
        for (key, record) in records {
            if let Some(entry) = record.into_entry(&key)? {
                out.push((key, entry));
            }
        }
        Ok(out)
    }

    /// The header of every record of `ns` whose path starts with `prefix`, tombstones
    /// included, ordered by path; one consistent snapshot, without building the values.
    pub async fn headers(&self, ns: Namespace, prefix: &str) -> Result<Vec<(Key, Header)>, Error> {
        self.walk(ns, prefix, |key, bytes| {
            Header::from_bytes(bytes).map_err(|source| Error::Corrupt {
                key: key.clone(),
                source,
            })
        })
        .await
    }

    /// Every record of `ns` whose path starts with `prefix`, tombstones included, ordered by
    /// path; one consistent snapshot.
    pub async fn records(&self, ns: Namespace, prefix: &str) -> Result<Vec<(Key, Record)>, Error> {
        self.walk(ns, prefix, record::decode).await
    }

    /// Every record of `ns` under `prefix`, each read by `read`, in one snapshot.
    async fn walk<T: Send + 'static>(
        &self,
        ns: Namespace,
        prefix: &str,
        read: fn(&Key, &[u8]) -> Result<T, Error>,
    ) -> Result<Vec<(Key, T)>, Error> {
        if prefix.len() > MAX_PATH_LEN || prefix.contains('\0') {
            return Err(Error::InvalidKey {
                ns,
                path: prefix.to_owned(),
                reason: "prefix is longer than 256 bytes or contains NUL",
            });
        }
        let db = self.db()?;
        let start = key::encode(ns, prefix);
        tokio::task::spawn_blocking(move || scan(&db, ns, &start, read))
            .await
            .map_err(|source| Error::Task { source })?
    }

    /// Number of records in the store (tombstones included), as of the last commit.
    pub fn len(&self) -> u64 {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Number of tombstones in the store, as of the last commit.
    pub fn tombstones(&self) -> u64 {
        self.inner.tombstones.load(Ordering::Relaxed)
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every change committed after this call, in commit order.
    ///
    /// A change is sent before the write that made it is acknowledged. A receiver that falls
    /// more than 4096 changes behind gets `RecvError::Lagged` and should rescan what it needs.
    /// Deleting a missing key sends nothing. The channel reports `Closed` once the store is
    /// closed.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        match self.inner.changes.upgrade() {
            Some(sender) => sender.subscribe(),
            None => {
                // The writer has stopped: hand out a receiver that is already closed.
                let (_, receiver) = broadcast::channel(1);
                receiver
            }
        }
    }

    /// Commits every write queued before this call, stops the writer and closes the file.
    ///
    /// Afterwards every call on any clone, `close` included, returns [`Error::Closed`], and the
    /// file can be opened again. Reads still running when it is called finish first (for up to
    /// 5 s; after that the file is closed when the last of them ends).
    pub async fn close(&self) -> Result<(), Error> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let (reply, closed) = oneshot::channel();
        if self.inner.ops.send(Msg::Close { reply }).await.is_ok() {
            // An error here means the writer had already stopped; either way it is gone.
            let _ = closed.await;
        }
        let db = self
            .inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(db) = db else {
            return Ok(());
        };
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || close_db(db, &path))
            .await
            .map_err(|source| Error::Task { source })?
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::Relaxed) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The database for a read, or [`Error::Closed`].
    fn db(&self) -> Result<Arc<Database>, Error> {
        self.check_open()?;
        self.inner
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::Closed)
    }

    async fn queue(&self, op: WriteOp) -> Result<(), Error> {
        // A send fails only once the writer has dropped its queue, i.e. after a close.
        self.inner
            .ops
            .send(Msg::Write(op))
            .await
            .map_err(|_| Error::Closed)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("len", &self.len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Opens or creates the file, makes sure the table exists (so reads never meet a missing
/// table), counts the records and the tombstones among them, and reads the version floor.
fn open_db(path: &Path) -> Result<(Database, u64, u64, u64), redb::Error> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?;
    let txn = db.begin_write()?;
    let len = txn.open_table(TABLE)?.len()?;
    txn.commit()?;
    let txn = db.begin_read()?;
    let table = txn.open_table(TABLE)?;
    let mut tombstones = 0;
    for item in table.iter()? {
        let (_, value) = item?;
        if record::is_tombstone(value.value()) {
            tombstones += 1;
        }
    }
    let floor = table
        .get(writer::FLOOR_KEY)?
        .and_then(|v| Record::from_bytes(v.value()).ok())
        .and_then(|r| r.value.and_then(|v| v.as_u64()))
        .unwrap_or(0);
    drop(table);
    drop(txn);
    Ok((db, len, tombstones, floor))
}

/// The records of `ns` whose encoded key starts with `start` (`ns/prefix`), each read by
/// `read`.
fn scan<T>(
    db: &Database,
    ns: Namespace,
    start: &str,
    read: fn(&Key, &[u8]) -> Result<T, Error>,
) -> Result<Vec<(Key, T)>, Error> {
    let read_err = |source: redb::Error| Error::Read { source };
    let txn = db.begin_read().map_err(|e| read_err(e.into()))?;
    let table = txn.open_table(TABLE).map_err(|e| read_err(e.into()))?;
    let mut out = Vec::new();
    for item in table.range(start..).map_err(|e| read_err(e.into()))? {
        let (raw_key, raw_value) = item.map_err(|e| read_err(e.into()))?;
        let raw_key = raw_key.value();
        if !raw_key.starts_with(start) {
            break;
        }
        let key = Key::decode_in(ns, raw_key);
        match read(&key, raw_value.value()) {
            Ok(value) => out.push((key, value)),
            // A record damaged from outside is left out of the walk rather than stopping
            // it; the writer treats it as absent, and the next write heals it.
            Err(Error::Corrupt { key, source }) => {
                warn!(%key, error = %source, "skipping a damaged state record");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Closes the database once no read holds it any more, waiting up to [`CLOSE_READ_GRACE`].
fn close_db(mut db: Arc<Database>, path: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + CLOSE_READ_GRACE;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => {
                db.close().map_err(|source| Error::Close {
                    source: source.into(),
                })?;
                debug!(path = %path.display(), "state store closed");
                return Ok(());
            }
            Err(shared) if Instant::now() < deadline => {
                db = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => {
                warn!(
                    path = %path.display(),
                    "reads still running after close; the file closes when they end"
                );
                return Ok(());
            }
        }
    }
}
