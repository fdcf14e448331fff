//! The single writer: a dedicated thread that owns every write transaction of the store.
//! [`Store`](super::Store) handles send it [`Msg`]s; it drains what is queued (up to
//! [`MAX_BATCH`] ops), applies them in order in one transaction, commits durably, then
//! broadcasts each [`Change`] and acknowledges each op in that same order (group commit). It
//! must never panic and never block on a caller: a failed batch is logged and failed, and the
//! loop goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, trace, warn};

use super::metrics::Metrics;
use super::{record, Change, Error, Key};

/// The one table: `"ns/path"` → JSON record. See the module docs of `state` for why one table.
pub(crate) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// Most ops applied in one write transaction. A burst larger than this is split into several
/// commits so that the first callers are not held back behind an unbounded batch.
pub(crate) const MAX_BATCH: usize = 256;

/// Depth of the queue in front of the writer; a full queue makes `put` and `delete` wait,
/// which is the store's backpressure.
pub(crate) const QUEUE_DEPTH: usize = 1024;

/// A message to the writer.
pub(crate) enum Msg {
    /// A put or delete to apply.
    Write(WriteOp),
    /// Commit everything queued before this, release the database, reply, and stop.
    Close {
        /// Answered once the writer has let go of the database.
        reply: oneshot::Sender<()>,
    },
}

/// One put or delete, with where to send its outcome.
pub(crate) enum WriteOp {
    /// Store `value` under `key` with the next version.
    Put {
        /// The (validated) key.
        key: Key,
        /// The value, already turned into JSON by the caller.
        value: serde_json::Value,
        /// When the caller queued it, for `roost_state_write_seconds`.
        sent: Instant,
        /// Receives the new version once it is durable.
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// Remove `key`.
    Delete {
        /// The (validated) key.
        key: Key,
        /// When the caller queued it, for `roost_state_write_seconds`.
        sent: Instant,
        /// Receives whether the key existed, once the removal is durable.
        reply: oneshot::Sender<Result<bool, Error>>,
    },
}

/// What applying one op inside the transaction produced.
enum Applied {
    /// Stored at this version.
    Put(u64),
    /// Removed; `Some(version)` of the removed entry, `None` if there was nothing to remove.
    Delete(Option<u64>),
    /// The op failed on its own (its value could not be encoded); the rest of the batch stands.
    Failed(Error),
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
    /// Number of keys, shared with [`Store::len`](super::Store::len).
    pub(crate) len: Arc<AtomicU64>,
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
            Ok((applied, key_delta)) => {
                let len = self
                    .len
                    .load(Ordering::Relaxed)
                    .saturating_add_signed(key_delta);
                self.len.store(len, Ordering::Relaxed);
                self.metrics
                    .keys
                    .set(i64::try_from(len).unwrap_or(i64::MAX));
                self.metrics.batch_size.observe(n as f64);
                trace!(ops = n, keys = len, "state batch committed");
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

    /// Runs `writes` in one write transaction and commits it with `Durability::Immediate`.
    /// Returns each op's outcome (in order) and the change in the number of keys.
    fn apply(&self, writes: &[WriteOp], now_ms: u64) -> Result<(Vec<Applied>, i64), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut applied = Vec::with_capacity(writes.len());
        let mut key_delta: i64 = 0;
        {
            let mut table = txn.open_table(TABLE)?;
            for op in writes {
                match op {
                    WriteOp::Put { key, value, .. } => {
                        let raw = key.encode();
                        let previous = table.get(raw.as_str())?.map(|old| {
                            record::version(old.value()).unwrap_or_else(|err| {
                                // Only this writer stores records, so this means damage
                                // from outside; overwriting heals the key.
                                warn!(key = %key, error = %err, "unreadable stored record; overwriting");
                                0
                            })
                        });
                        let version = match previous {
                            Some(v) => v.saturating_add(1),
                            None => {
                                key_delta += 1;
                                1
                            }
                        };
                        match record::encode(version, now_ms, value) {
                            Ok(bytes) => {
                                table.insert(raw.as_str(), bytes.as_slice())?;
                                applied.push(Applied::Put(version));
                            }
                            Err(source) => {
                                if previous.is_none() {
                                    key_delta -= 1;
                                }
                                applied.push(Applied::Failed(Error::Encode {
                                    key: key.clone(),
                                    source,
                                }));
                            }
                        }
                    }
                    WriteOp::Delete { key, .. } => {
                        let removed = table
                            .remove(key.encode().as_str())?
                            .map(|old| record::version(old.value()).unwrap_or(0));
                        if removed.is_some() {
                            key_delta -= 1;
                        }
                        applied.push(Applied::Delete(removed));
                    }
                }
            }
        }
        txn.commit()?;
        Ok((applied, key_delta))
    }

    /// Announces one committed op to subscribers, then answers its caller, so that a caller
    /// whose write resolved can count on subscribers having been handed the change.
    fn acknowledge(&self, op: WriteOp, outcome: Applied) {
        match (op, outcome) {
            (
                WriteOp::Put {
                    key,
                    value,
                    sent,
                    reply,
                },
                Applied::Put(version),
            ) => {
                self.metrics.writes.inc();
                let _ = self.changes.send(Change {
                    key,
                    version,
                    value: Some(value),
                });
                self.metrics
                    .write_seconds
                    .observe(sent.elapsed().as_secs_f64());
                let _ = reply.send(Ok(version));
            }
            (WriteOp::Delete { key, sent, reply }, Applied::Delete(removed)) => {
                self.metrics.writes.inc();
                if let Some(version) = removed {
                    let _ = self.changes.send(Change {
                        key,
                        version,
                        value: None,
                    });
                }
                self.metrics
                    .write_seconds
                    .observe(sent.elapsed().as_secs_f64());
                let _ = reply.send(Ok(removed.is_some()));
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

impl WriteOp {
    /// Answers the op's caller with `err`.
    fn fail(self, err: Error) {
        match self {
            WriteOp::Put { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            WriteOp::Delete { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970 (a Pi without RTC before
/// NTP can be, but not that far back).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
