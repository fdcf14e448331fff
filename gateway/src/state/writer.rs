//! The single writer: a dedicated thread that owns every write transaction of the store.
//! [`Store`](super::Store) handles send it [`Msg`]s; it drains what is queued (up to
//! [`MAX_BATCH`] ops), applies them in order in one transaction, commits durably, then
//! broadcasts each [`Change`] and acknowledges each op in that same order (group commit). A
//! batch that changed nothing (peers' records this node already had) is not committed, so it
//! costs no fsync. It must never panic and never block on a caller: a failed batch is logged
//! and failed, and the loop goes on.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableTable, Table, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, trace, warn};

use super::metrics::Metrics;
use super::record::{self, Record};
use super::{Change, Error, Key, Outcome};

/// The one table: `"ns/path"` → JSON record. See the module docs of `state` for why one table.
pub(crate) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// Where the version floor is kept (`Writer::floor`): `node/state/version_floor`.
pub(crate) const FLOOR_KEY: &str = "node/state/version_floor";

/// Most ops applied in one write transaction. A burst larger than this is split into several
/// commits so that the first callers are not held back behind an unbounded batch.
pub(crate) const MAX_BATCH: usize = 256;

/// Depth of the queue in front of the writer; a full queue makes writes wait, which is the
/// store's backpressure.
pub(crate) const QUEUE_DEPTH: usize = 1024;

/// A message to the writer.
pub(crate) enum Msg {
    /// A write to apply.
    Write(WriteOp),
    /// Commit everything queued before this, release the database, reply, and stop.
    Close {
        /// Answered once the writer has let go of the database.
        reply: oneshot::Sender<()>,
    },
}

/// One write of this node, or a batch of peers' records, with where to send its outcome.
pub(crate) enum WriteOp {
    /// Store `value` under `key` with the next version.
    Put {
        /// The (validated) key.
        key: Key,
        /// The value, already turned into JSON by the caller.
        value: serde_json::Value,
        /// The writer's lease term (0 for keys no leader owns); refused if the key holds a
        /// record of a later term.
        term: u64,
        /// The node making the write.
        origin: Arc<str>,
        /// When the caller queued it, for `roost_state_write_seconds`.
        sent: Instant,
        /// Receives the new version once it is durable.
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// Delete `key`: a tombstone in a replicated namespace, a removal in `node`.
    Delete {
        /// The (validated) key.
        key: Key,
        /// As for `Put`.
        term: u64,
        /// As for `Put`.
        origin: Arc<str>,
        /// When the caller queued it, for `roost_state_write_seconds`.
        sent: Instant,
        /// Receives whether the key had a value, once the delete is durable.
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    /// Peers' records: each is stored if it supersedes what the key holds.
    Apply {
        /// The (validated) keys and their records.
        records: Vec<(Key, Record)>,
        /// A tombstone written before this is not stored for a key that has no record:
        /// there is nothing for it to delete, and it would only be cleared again.
        horizon_ms: u64,
        /// Receives each record's outcome, in order, once the batch is durable.
        reply: oneshot::Sender<Result<Vec<Outcome>, Error>>,
    },
    /// Remove `key` entirely if it still holds `version`.
    Forget {
        /// The (validated) key.
        key: Key,
        /// The version that may be removed; a newer one stays.
        version: u64,
        /// Receives whether the record was removed.
        reply: oneshot::Sender<Result<bool, Error>>,
    },
}

/// What applying one op inside the transaction produced.
enum Applied {
    /// A write of this node; the change to announce, and whether the key had a live value
    /// before (the answer of a delete).
    Local(Option<Change>, bool),
    /// Peers' records: their outcomes and the changes to announce.
    Remote(Vec<Outcome>, Vec<Change>),
    /// A forget: the change to announce if a live value went, and whether anything went.
    Forgot(Option<Change>, bool),
    /// The op failed on its own; the rest of the batch stands.
    Failed(Error),
}

/// Counts kept while a transaction runs.
#[derive(Default)]
struct Delta {
    /// Change in the number of records.
    records: i64,
    /// Change in the number of tombstones.
    tombstones: i64,
    /// Whether anything was written.
    dirty: bool,
}

impl Delta {
    /// Accounts for `old` (what the key held) becoming `new` (`None`: removed).
    fn replace(&mut self, old: Option<&Record>, new: Option<&Record>) {
        let count = |r: Option<&Record>| {
            (
                i64::from(r.is_some()),
                i64::from(r.is_some_and(Record::is_tombstone)),
            )
        };
        let (old_records, old_tombs) = count(old);
        let (new_records, new_tombs) = count(new);
        self.records += new_records - old_records;
        self.tombstones += new_tombs - old_tombs;
        self.dirty = true;
    }
}

/// The state owned by the writer thread.
pub(crate) struct Writer {
    /// The database; the writer's clone is dropped before it acknowledges a close.
    pub(crate) db: Arc<Database>,
    /// Ops from every store handle, in the order they were queued.
    pub(crate) ops: mpsc::Receiver<Msg>,
    /// Where committed changes are announced; the only strong sender, so subscribers see the
    /// channel close when the writer stops.
    pub(crate) changes: broadcast::Sender<Change>,
    /// Number of records (tombstones included), shared with [`Store::len`](super::Store::len).
    pub(crate) len: Arc<AtomicU64>,
    /// Number of tombstones, shared with the store.
    pub(crate) tombstones: Arc<AtomicU64>,
    /// The highest version of any record removed for good ([`FLOOR_KEY`]): a key written
    /// anew starts above it, so a key's versions never go back, even past a forgotten
    /// tombstone, and a node that still holds an old version of it takes the new one.
    pub(crate) floor: Cell<u64>,
    /// The store's metrics.
    pub(crate) metrics: Metrics,
}

impl Writer {
    /// The writer loop; returns when asked to close or when every store handle is gone.
    pub(crate) fn run(mut self) {
        let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
        loop {
            batch.clear();
            if self.ops.blocking_recv_many(&mut batch, MAX_BATCH) == 0 {
                debug!("every store handle dropped; state writer stops");
                return;
            }
            let mut writes = Vec::with_capacity(batch.len());
            let mut close = None;
            for msg in batch.drain(..) {
                match msg {
                    // Ops queued after a close in the same drain are dropped unanswered here,
                    // which their callers see as `Error::Closed`.
                    Msg::Write(op) if close.is_none() => writes.push(op),
                    Msg::Write(_) => {}
                    Msg::Close { reply } => {
                        close.get_or_insert(reply);
                    }
                }
            }
            if !writes.is_empty() {
                self.commit(writes);
            }
            if let Some(reply) = close {
                self.ops.close();
                let Writer {
                    db, ops, changes, ..
                } = self;
                // Release everything before acknowledging: the closer takes the database back,
                // dropping `ops` fails whatever is still queued with `Closed`, and dropping
                // `changes` tells subscribers the stream has ended.
                drop(ops);
                drop(db);
                drop(changes);
                debug!("state writer closed");
                let _ = reply.send(());
                return;
            }
        }
    }

    /// Applies `writes` in one durable transaction, then announces and acknowledges each one.
    fn commit(&mut self, writes: Vec<WriteOp>) {
        let n = writes.len();
        let now_ms = unix_ms();
        match self.apply(&writes, now_ms) {
            Ok((applied, delta)) => {
                let len = self
                    .len
                    .load(Ordering::Relaxed)
                    .saturating_add_signed(delta.records);
                self.len.store(len, Ordering::Relaxed);
                let tombstones = self
                    .tombstones
                    .load(Ordering::Relaxed)
                    .saturating_add_signed(delta.tombstones);
                self.tombstones.store(tombstones, Ordering::Relaxed);
                self.metrics
                    .keys
                    .set(i64::try_from(len).unwrap_or(i64::MAX));
                self.metrics
                    .tombstones
                    .set(i64::try_from(tombstones).unwrap_or(i64::MAX));
                if delta.dirty {
                    self.metrics.batch_size.observe(n as f64);
                }
                trace!(
                    ops = n,
                    records = len,
                    dirty = delta.dirty,
                    "state batch done"
                );
                for (op, outcome) in writes.into_iter().zip(applied) {
                    self.acknowledge(op, outcome);
                }
            }
            Err(err) => {
                error!(error = %err, ops = n, "state commit failed; failing the batch");
                self.metrics.write_errors.inc_by(n as u64);
                let source = Arc::new(err);
                for op in writes {
                    op.fail(Error::Commit {
                        source: Arc::clone(&source),
                    });
                }
            }
        }
    }

    /// Runs `writes` in one write transaction and commits it with `Durability::Immediate` if
    /// anything changed. Returns each op's outcome (in order) and what changed in the counts.
    fn apply(&self, writes: &[WriteOp], now_ms: u64) -> Result<(Vec<Applied>, Delta), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut applied = Vec::with_capacity(writes.len());
        let mut delta = Delta::default();
        {
            let mut table = txn.open_table(TABLE)?;
            for op in writes {
                let outcome = match op {
                    WriteOp::Put {
                        key,
                        value,
                        term,
                        origin,
                        ..
                    } => write_local(
                        &mut table,
                        &mut delta,
                        &self.floor,
                        key,
                        Some(value),
                        *term,
                        origin,
                        now_ms,
                    )?,
                    WriteOp::Delete {
                        key, term, origin, ..
                    } => write_local(
                        &mut table,
                        &mut delta,
                        &self.floor,
                        key,
                        None,
                        *term,
                        origin,
                        now_ms,
                    )?,
                    WriteOp::Apply {
                        records,
                        horizon_ms,
                        ..
                    } => apply_remote(&mut table, &mut delta, records, *horizon_ms)?,
                    WriteOp::Forget { key, version, .. } => {
                        forget(&mut table, &mut delta, &self.floor, key, *version, now_ms)?
                    }
                };
                applied.push(outcome);
            }
        }
        if delta.dirty {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok((applied, delta))
    }

    /// Announces one op's changes to subscribers, then answers its caller, so that a caller
    /// whose write resolved can count on subscribers having been handed the change.
    fn acknowledge(&self, op: WriteOp, outcome: Applied) {
        let announce = |change: Change| {
            self.metrics.writes.inc();
            let _ = self.changes.send(change);
        };
        match (op, outcome) {
            (WriteOp::Put { sent, reply, .. }, Applied::Local(change, _)) => {
                let version = change.as_ref().map_or(0, |c| c.record.version);
                change.into_iter().for_each(announce);
                self.metrics
                    .write_seconds
                    .observe(sent.elapsed().as_secs_f64());
                let _ = reply.send(Ok(version));
            }
            (WriteOp::Delete { sent, reply, .. }, Applied::Local(change, existed)) => {
                change.into_iter().for_each(announce);
                self.metrics
                    .write_seconds
                    .observe(sent.elapsed().as_secs_f64());
                let _ = reply.send(Ok(existed));
            }
            (WriteOp::Apply { reply, .. }, Applied::Remote(outcomes, changes)) => {
                changes.into_iter().for_each(announce);
                let _ = reply.send(Ok(outcomes));
            }
            (WriteOp::Forget { reply, .. }, Applied::Forgot(change, removed)) => {
                change.into_iter().for_each(announce);
                let _ = reply.send(Ok(removed));
            }
            (op, Applied::Failed(err)) => {
                self.metrics.write_errors.inc();
                op.fail(err);
            }
            (op, _) => {
                // `apply` yields one outcome per op of the op's own kind, so this is a bug in
                // this file. Dropping the op answers its caller with `Closed`; the writer
                // itself must not panic.
                error!("state writer paired an op with an outcome of another kind");
                self.metrics.write_errors.inc();
                drop(op);
            }
        }
    }
}

/// The record `key` holds, if any. A record that cannot be read is treated as absent (and
/// logged): only this writer stores records, so it means damage from outside, and writing
/// over it heals the key.
fn stored(table: &Table<&str, &[u8]>, raw: &str, key: &Key) -> Result<Option<Record>, redb::Error> {
    Ok(table
        .get(raw)?
        .and_then(|old| match record::decode(key, old.value()) {
            Ok(r) => Some(r),
            Err(err) => {
                warn!(key = %key, error = %err, "unreadable stored record; it will be overwritten");
                None
            }
        }))
}

/// A put (`value` is `Some`) or delete of this node.
#[allow(clippy::too_many_arguments)]
fn write_local(
    table: &mut Table<&str, &[u8]>,
    delta: &mut Delta,
    floor: &Cell<u64>,
    key: &Key,
    value: Option<&serde_json::Value>,
    term: u64,
    origin: &Arc<str>,
    now_ms: u64,
) -> Result<Applied, redb::Error> {
    let raw = key.encode();
    let previous = stored(table, &raw, key)?;
    if let Some(prev) = &previous {
        if term < prev.term {
            return Ok(Applied::Failed(Error::StaleTerm {
                key: key.clone(),
                term,
                stored: prev.term,
            }));
        }
    }
    let had_value = previous.as_ref().is_some_and(|p| !p.is_tombstone());
    if value.is_none() && !had_value {
        // Deleting what is not there changes nothing.
        return Ok(Applied::Local(None, false));
    }
    if value.is_none() && !key.ns.is_replicated() {
        table.remove(raw.as_str())?;
        delta.replace(previous.as_ref(), None);
        let gone = previous.map(|p| Change {
            key: key.clone(),
            record: Record { value: None, ..p },
            remote: false,
        });
        return Ok(Applied::Local(gone, true));
    }
    let record = Record {
        version: previous
            .as_ref()
            .map_or(floor.get(), |p| p.version)
            .saturating_add(1),
        term,
        origin: origin.to_string(),
        updated_ms: now_ms,
        value: value.cloned(),
    };
    let bytes = match record.to_bytes() {
        Ok(bytes) => bytes,
        Err(source) => {
            return Ok(Applied::Failed(Error::Encode {
                key: key.clone(),
                source,
            }))
        }
    };
    table.insert(raw.as_str(), bytes.as_slice())?;
    delta.replace(previous.as_ref(), Some(&record));
    Ok(Applied::Local(
        Some(Change {
            key: key.clone(),
            record,
            remote: false,
        }),
        had_value,
    ))
}

/// Peers' records, each stored if it supersedes what its key holds.
fn apply_remote(
    table: &mut Table<&str, &[u8]>,
    delta: &mut Delta,
    records: &[(Key, Record)],
    horizon_ms: u64,
) -> Result<Applied, redb::Error> {
    let mut outcomes = Vec::with_capacity(records.len());
    let mut changes = Vec::new();
    for (key, incoming) in records {
        let raw = key.encode();
        let previous = stored(table, &raw, key)?;
        let outcome = match &previous {
            None if incoming.is_tombstone() && incoming.updated_ms < horizon_ms => Outcome::Expired,
            Some(prev) => match incoming.order(prev) {
                std::cmp::Ordering::Equal => Outcome::Duplicate,
                std::cmp::Ordering::Less => Outcome::Stale {
                    stored: prev.clone(),
                },
                std::cmp::Ordering::Greater => Outcome::Applied {
                    conflict: (incoming.term, incoming.version) == (prev.term, prev.version),
                },
            },
            None => Outcome::Applied { conflict: false },
        };
        if let Outcome::Applied { .. } = outcome {
            match incoming.to_bytes() {
                Ok(bytes) => {
                    table.insert(raw.as_str(), bytes.as_slice())?;
                    delta.replace(previous.as_ref(), Some(incoming));
                    changes.push(Change {
                        key: key.clone(),
                        record: incoming.clone(),
                        remote: true,
                    });
                }
                Err(source) => {
                    // A record that was decoded from JSON encodes again; if not, the key keeps
                    // what it had.
                    warn!(key = %key, error = %source, "cannot encode a peer's record");
                    outcomes.push(Outcome::Expired);
                    continue;
                }
            }
        }
        outcomes.push(outcome);
    }
    Ok(Applied::Remote(outcomes, changes))
}

/// Removes `key` if it holds `version`.
fn forget(
    table: &mut Table<&str, &[u8]>,
    delta: &mut Delta,
    floor: &Cell<u64>,
    key: &Key,
    version: u64,
    now_ms: u64,
) -> Result<Applied, redb::Error> {
    let raw = key.encode();
    let previous = stored(table, &raw, key)?;
    let Some(prev) = previous.filter(|p| p.version == version) else {
        return Ok(Applied::Forgot(None, false));
    };
    table.remove(raw.as_str())?;
    delta.replace(Some(&prev), None);
    if prev.version > floor.get() {
        floor.set(prev.version);
        let record = Record {
            version: 1,
            term: 0,
            origin: String::new(),
            updated_ms: now_ms,
            value: Some(serde_json::json!(prev.version)),
        };
        if let Ok(bytes) = record.to_bytes() {
            let had = table.insert(FLOOR_KEY, bytes.as_slice())?.is_some();
            if !had {
                delta.records += 1;
            }
        }
    }
    let change = (!prev.is_tombstone()).then(|| Change {
        key: key.clone(),
        record: Record {
            value: None,
            ..prev
        },
        remote: true,
    });
    Ok(Applied::Forgot(change, true))
}

impl WriteOp {
    /// Answers the op's caller with `err`.
    fn fail(self, err: Error) {
        match self {
            WriteOp::Put { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            WriteOp::Delete { reply, .. } | WriteOp::Forget { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            WriteOp::Apply { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970 (a Pi without RTC before
/// NTP can be, but not that far back).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
