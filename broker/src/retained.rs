//! The retained set, owned by Roost: in memory for delivery, and durable in
//! `<data_dir>/retained.redb`. rumqttd keeps none: the edge clears the retain flag before a
//! publish reaches the router and delivers retained messages itself on every subscribe
//! (RUMQTTD.md defects 1, 2, 7 and rumqttd#1069). A node that restarts, is killed or loses
//! power serves the retained set it had, deletes included.
//!
//! Every change carries a [`Version`] (a hybrid logical clock stamp and the node that wrote
//! it), and a change applies only over an older version: the set is a last-writer-wins map,
//! so the cluster's nodes converge whatever order changes reach them in (docs/cluster.md).
//! A delete leaves a tombstone with its version for `TOMBSTONE_TTL`, so an older message
//! arriving later (from a node that was down) cannot bring the topic back.
//!
//! Writes go through one writer thread with group commit (one fsync for whatever is queued).
//! Callers: the intake (publishes from clients, wills, the node, peers), the edge (deliveries
//! on subscribe) and the mesh (the set sent to a peer when a link opens).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::frame::PublishParts;

/// topic → one flags byte: the message's QoS in bits 0-1, bit 5 set for a tombstone, bit 6
/// set when a version follows, bit 7 set when it expires; then, if it expires, when (unix
/// ms, 8 bytes big-endian); then, if versioned, the stamp (8 bytes) and the writer (1 byte
/// of length, then the node id); then, unless a tombstone, the message as an MQTT 5 PUBLISH
/// packet (QoS 0, retain set, properties kept, Message Expiry Interval left out). Files
/// written before versions or expiry were kept have those bits clear and read the same.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// The file in the data dir.
pub(crate) const FILE_NAME: &str = "retained.redb";
/// Writes queued before `record` waits.
const QUEUE: usize = 1024;
/// The most writes committed in one transaction.
const BATCH: usize = 256;
/// How often expired retained messages and old tombstones are purged.
const PURGE_EVERY: Duration = Duration::from_secs(30);
/// How long a delete is remembered: a node down for longer than this may bring back a
/// retained message deleted meanwhile (docs/cluster.md).
const TOMBSTONE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Flag bit: a tombstone (no packet follows).
const TOMBSTONE: u8 = 0x20;
/// Flag bit: a version follows.
const VERSIONED: u8 = 0x40;
/// Flag bit: an expiry time follows.
const EXPIRES: u8 = 0x80;
/// redb's page cache: the retained set is read once, at start.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Which write of a topic is the latest, the same on every node: the hybrid logical clock
/// stamp first, the writer's node id to break ties. Values written before versions existed
/// are the oldest of all (stamp 0, no writer).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Version {
    /// Hybrid logical clock: unix milliseconds in the high 48 bits, a counter in the low 16.
    pub stamp: u64,
    /// The node that wrote it.
    pub writer: Arc<str>,
}

impl Version {
    /// When it was written, in unix milliseconds (its stamp's physical part).
    fn written_ms(&self) -> u64 {
        self.stamp >> 16
    }
}

/// A hybrid logical clock: stamps that follow wall time, never go backwards, and are above
/// every stamp this node has seen, so a write made after seeing another is newer than it
/// even when the writers' clocks disagree.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    last: AtomicU64,
}

impl Clock {
    /// A new stamp, above every stamp made or seen so far.
    pub(crate) fn tick(&self) -> u64 {
        let physical = crate::envelope::now_ms() << 16;
        let mut last = self.last.load(Ordering::SeqCst);
        loop {
            let next = physical.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(now) => last = now,
            }
        }
    }

    /// Takes note of a stamp made elsewhere.
    pub(crate) fn observe(&self, stamp: u64) {
        self.last.fetch_max(stamp, Ordering::SeqCst);
    }
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The QoS it was published with; delivered at the lower of this and the subscription's.
    pub qos: u8,
    /// The message as an MQTT 5 PUBLISH: QoS 0, retain set, no packet id.
    pub packet: Arc<[u8]>,
    /// When it expires (MQTT 5 Message Expiry Interval), in unix milliseconds: from then on
    /// it is not delivered, and the next purge removes it.
    pub expires_at: Option<u64>,
    /// Which write it is.
    pub version: Version,
}

/// A topic's entry: its message, or the tombstone its delete left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The retained message.
    Message(Stored),
    /// Deleted by the write `Version`.
    Tombstone(Version),
}

impl Entry {
    /// Which write it is.
    pub(crate) fn version(&self) -> &Version {
        match self {
            Entry::Message(stored) => &stored.version,
            Entry::Tombstone(version) => version,
        }
    }

    /// The value kept in the file (`TABLE`), also what a peer link carries.
    pub(crate) fn to_value(&self) -> Vec<u8> {
        let (flags, expires_at, version, packet): (u8, _, _, &[u8]) = match self {
            Entry::Message(s) => (s.qos, s.expires_at, &s.version, &s.packet),
            Entry::Tombstone(v) => (TOMBSTONE, None, v, &[]),
        };
        let mut value = Vec::with_capacity(packet.len() + 18 + version.writer.len());
        value.push(flags | VERSIONED | if expires_at.is_some() { EXPIRES } else { 0 });
        if let Some(at) = expires_at {
            value.extend_from_slice(&at.to_be_bytes());
        }
        value.extend_from_slice(&version.stamp.to_be_bytes());
        // Node ids are at most 32 bytes (config.rs); longer would not fit the length byte.
        let writer = &version.writer.as_bytes()[..version.writer.len().min(255)];
        value.push(writer.len() as u8);
        value.extend_from_slice(writer);
        value.extend_from_slice(packet);
        value
    }

    /// Reads a value back; `None` for one that is not a value.
    pub(crate) fn from_value(value: &[u8]) -> Option<Entry> {
        let (&flags, mut rest) = value.split_first()?;
        let expires_at = if flags & EXPIRES != 0 {
            let (at, after) = rest.split_first_chunk::<8>()?;
            rest = after;
            Some(u64::from_be_bytes(*at))
        } else {
            None
        };
        let version = if flags & VERSIONED != 0 {
            let (stamp, after) = rest.split_first_chunk::<8>()?;
            let (&len, after) = after.split_first()?;
            let writer = after.get(..usize::from(len))?;
            rest = &after[usize::from(len)..];
            Version {
                stamp: u64::from_be_bytes(*stamp),
                writer: std::str::from_utf8(writer).ok()?.into(),
            }
        } else {
            Version::default()
        };
        if flags & TOMBSTONE != 0 {
            return Some(Entry::Tombstone(version));
        }
        let stored = Stored {
            qos: flags & 0x03,
            packet: rest.into(),
            expires_at,
            version,
        };
        // A message must at least be a packet.
        stored.parts()?;
        Some(Entry::Message(stored))
    }
}

impl Stored {
    /// Whether it has expired at `now_ms`.
    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_ms)
    }

    /// The stored packet's parts.
    pub(crate) fn parts(&self) -> Option<PublishParts<'_>> {
        let header = crate::frame::parse_header(&self.packet, usize::MAX).ok()??;
        PublishParts::split(&self.packet, &header, true)
    }
}

/// What a retained write waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The commit that makes it durable.
    Durable,
    /// Only its place in the writer's queue (the file still sees writes in order).
    Queued,
}

/// What a publish does to the retained set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Keep this message as the topic's retained message.
    Set(Stored),
    /// Remove the topic's retained message, leaving a tombstone of this version.
    Delete(Version),
}

impl Change {
    fn version(&self) -> &Version {
        match self {
            Change::Set(stored) => &stored.version,
            Change::Delete(version) => version,
        }
    }
}

/// The retained set and its durable copy; cloning shares them.
#[derive(Clone)]
pub(crate) struct Retained {
    inner: Arc<Inner>,
}

/// The in-memory set: messages and the tombstones of deletes.
#[derive(Default)]
struct Sets {
    /// topic → its retained message.
    messages: BTreeMap<Box<str>, Stored>,
    /// topic → the delete that removed its message, kept `TOMBSTONE_TTL`.
    tombstones: BTreeMap<Box<str>, Version>,
}

impl Sets {
    /// The version of the topic's entry, if it has one.
    fn version(&self, topic: &str) -> Option<&Version> {
        self.messages
            .get(topic)
            .map(|s| &s.version)
            .or_else(|| self.tombstones.get(topic))
    }
}

struct Inner {
    /// The set.
    sets: Mutex<Sets>,
    /// Stamps for this node's changes.
    clock: Clock,
    /// This node's id, the writer of its changes.
    writer: Arc<str>,
    /// `roost_mqtt_retained_messages`.
    gauge: IntGauge,
    /// `roost_mqtt_retained_bytes`, and the total it shows.
    bytes: IntGauge,
    /// `roost_mqtt_retained_persist_errors_total`.
    errors: IntCounter,
    /// Feeds the writer thread.
    writes: mpsc::Sender<Msg>,
}

/// What the writer thread is asked to do.
enum Msg {
    /// Apply one write; answer once it is durable.
    Write(Op),
    /// Release the database file, then answer.
    Close(oneshot::Sender<()>),
}

/// One write for the writer thread: the topic's new entry, or `None` to forget the topic.
struct Op {
    topic: String,
    entry: Option<Entry>,
    done: oneshot::Sender<Result<(), String>>,
}

impl Retained {
    /// Opens (or creates) the durable retained set in `data_dir`, loads it, and starts its
    /// writer; `writer` is this node's id, which its changes carry. Returns how many messages
    /// were loaded.
    pub(crate) fn open(
        data_dir: &Path,
        writer: &str,
        gauge: IntGauge,
        bytes: IntGauge,
        errors: IntCounter,
    ) -> Result<(Retained, usize)> {
        let path = data_dir.join(FILE_NAME);
        let store_error = |e: redb::Error| Error::Retained {
            path: path.clone(),
            source: Box::new(e),
        };
        std::fs::create_dir_all(data_dir).map_err(|e| store_error(e.into()))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| store_error(e.into()))?;
        let mut sets = Sets::default();
        let clock = Clock::default();
        {
            let read = db.begin_read().map_err(|e| store_error(e.into()))?;
            match read.open_table(TABLE) {
                Ok(table) => {
                    for entry in table.iter().map_err(|e| store_error(e.into()))? {
                        let (topic, value) = entry.map_err(|e| store_error(e.into()))?;
                        let topic = Box::<str>::from(topic.value());
                        match Entry::from_value(value.value()) {
                            Some(Entry::Message(stored)) => {
                                clock.observe(stored.version.stamp);
                                sets.messages.insert(topic, stored);
                            }
                            Some(Entry::Tombstone(version)) => {
                                clock.observe(version.stamp);
                                sets.tombstones.insert(topic, version);
                            }
                            None => {}
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(store_error(e.into())),
            }
        }
        let loaded = sets.messages.len();
        gauge.set(i64::try_from(loaded).unwrap_or(i64::MAX));
        let total: usize = sets.messages.values().map(|m| m.packet.len()).sum();
        bytes.set(i64::try_from(total).unwrap_or(i64::MAX));
        let (writes, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("roost-retained".into())
            .spawn(move || write_loop(db, queue))
            .map_err(|e| Error::Startup(format!("spawning the retained writer: {e}")))?;
        Ok((
            Retained {
                inner: Arc::new(Inner {
                    sets: Mutex::new(sets),
                    clock,
                    writer: writer.into(),
                    gauge,
                    bytes,
                    errors,
                    writes,
                }),
            },
            loaded,
        ))
    }

    /// A version for a change this node makes now: newer than every version it has seen.
    pub(crate) fn next_version(&self) -> Version {
        Version {
            stamp: self.inner.clock.tick(),
            writer: self.inner.writer.clone(),
        }
    }

    /// The retained messages whose topics match `filter`, in topic order, expired ones left
    /// out. Shared subscriptions get none.
    pub(crate) fn matching(&self, filter: &str) -> Vec<(String, Stored)> {
        if crate::topic::is_shared(filter) {
            return Vec::new();
        }
        let prefix = crate::topic::literal_prefix(filter);
        let now = crate::envelope::now_ms();
        let sets = self.lock();
        sets.messages
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(topic, _)| topic.starts_with(prefix))
            .filter(|(topic, stored)| !stored.expired(now) && crate::topic::matches(filter, topic))
            .map(|(topic, stored)| (topic.to_string(), stored.clone()))
            .collect()
    }

    /// Every entry, messages and tombstones, in topic order: what a peer is sent when a link
    /// to it opens.
    pub(crate) fn entries(&self) -> Vec<(String, Entry)> {
        let sets = self.lock();
        let mut all: Vec<(String, Entry)> = sets
            .messages
            .iter()
            .map(|(t, s)| (t.to_string(), Entry::Message(s.clone())))
            .chain(
                sets.tombstones
                    .iter()
                    .map(|(t, v)| (t.to_string(), Entry::Tombstone(v.clone()))),
            )
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes the messages that have expired (MQTT 5: a retained message lives no longer
    /// than its Message Expiry Interval) and the tombstones older than `TOMBSTONE_TTL`, from
    /// memory and from the file. Returns how many messages expired.
    pub(crate) async fn purge_expired(&self) -> usize {
        let now = crate::envelope::now_ms();
        let forget_before = now.saturating_sub(TOMBSTONE_TTL.as_millis() as u64);
        let (expired, old): (Vec<Box<str>>, Vec<Box<str>>) = {
            let sets = self.lock();
            (
                sets.messages
                    .iter()
                    .filter(|(_, stored)| stored.expired(now))
                    .map(|(topic, _)| topic.clone())
                    .collect(),
                sets.tombstones
                    .iter()
                    .filter(|(_, v)| v.written_ms() < forget_before)
                    .map(|(topic, _)| topic.clone())
                    .collect(),
            )
        };
        let mut purged = 0;
        for topic in expired {
            // Checked again under the lock: the topic may have been set anew meanwhile.
            if self
                .write_if(
                    &topic,
                    None,
                    |sets| sets.messages.get(&*topic).is_some_and(|s| s.expired(now)),
                    Wait::Durable,
                )
                .await
            {
                purged += 1;
            }
        }
        for topic in old {
            self.write_if(
                &topic,
                None,
                |sets| {
                    !sets.messages.contains_key(&*topic)
                        && sets
                            .tombstones
                            .get(&*topic)
                            .is_some_and(|v| v.written_ms() < forget_before)
                },
                Wait::Durable,
            )
            .await;
        }
        purged
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sets> {
        // A poisoned lock only means another thread panicked mid-update; the set is still a
        // valid set, so keep using it.
        self.inner.sets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to `topic` if it is newer than the topic's entry (last writer wins)
    /// and returns once it is durable; false when an entry as new or newer was there. A
    /// failed write is logged and counted; the message still flows (the live set matters more
    /// than its copy).
    #[cfg(test)]
    pub(crate) async fn record(&self, topic: &str, change: Change) -> bool {
        self.record_with(topic, change, Wait::Durable).await
    }

    /// [`Retained::record`], returning once memory holds the change when `wait` is
    /// [`Wait::Queued`]: for changes another copy keeps durable (a peer's, or a node part
    /// that republishes from its own store), so a crash here loses nothing the next link or
    /// start does not bring back. The file still sees every change in order.
    pub(crate) async fn record_with(&self, topic: &str, change: Change, wait: Wait) -> bool {
        self.inner.clock.observe(change.version().stamp);
        let entry = match change {
            Change::Set(stored) => Entry::Message(stored),
            Change::Delete(version) => Entry::Tombstone(version),
        };
        let version = entry.version().clone();
        self.write_if(
            topic,
            Some(entry),
            |sets| sets.version(topic).is_none_or(|v| *v < version),
            wait,
        )
        .await
    }

    /// Makes `entry` the topic's entry (`None`: forgets the topic) if `when` holds for the set
    /// now (checked under the lock), and returns once it is durable (or only queued, as `wait`
    /// says); false when it did not hold.
    async fn write_if(
        &self,
        topic: &str,
        entry: Option<Entry>,
        when: impl FnOnce(&Sets) -> bool,
        wait: Wait,
    ) -> bool {
        let (done, done_rx) = oneshot::channel();
        let permit = self.inner.writes.reserve().await.ok();
        let result = {
            // The memory update and the queueing happen under one lock, so the file sees
            // changes to a topic in the order memory does.
            let mut sets = self.lock();
            if !when(&sets) {
                return false;
            }
            let delta = apply(&mut sets, topic, entry.clone());
            self.inner
                .gauge
                .set(i64::try_from(sets.messages.len()).unwrap_or(i64::MAX));
            self.inner.bytes.add(delta);
            match permit {
                Some(permit) => {
                    permit.send(Msg::Write(Op {
                        topic: topic.to_owned(),
                        entry,
                        done,
                    }));
                    None
                }
                None => Some(Err("writer stopped".to_owned())),
            }
        };
        let result = match (result, wait) {
            (Some(failed), _) => failed,
            // The writer logs a failed commit nobody waits for.
            (None, Wait::Queued) => return true,
            (None, Wait::Durable) => done_rx
                .await
                .unwrap_or_else(|_| Err("writer stopped".into())),
        };
        if let Err(e) = result {
            tracing::error!(topic, error = %e, "could not persist a retained message");
            self.inner.errors.inc();
        }
        true
    }

    /// Purges expired messages every `PURGE_EVERY` until `token` is cancelled.
    pub(crate) async fn purge_until(self, token: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(PURGE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = every.tick() => {}
            }
            let purged = self.purge_expired().await;
            if purged > 0 {
                tracing::debug!(purged, "expired retained messages removed");
            }
        }
    }

    /// Commits what is queued, releases the database file and stops the writer. Later
    /// `record` calls still update the count but are not persisted (and are counted as errors).
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.inner.writes.send(Msg::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// Makes `entry` the topic's entry in memory (`None` forgets the topic); returns how many
/// stored message bytes it added (negative when it freed some).
fn apply(sets: &mut Sets, topic: &str, entry: Option<Entry>) -> i64 {
    let size = |m: Option<Stored>| m.map_or(0, |m| i64::try_from(m.packet.len()).unwrap_or(0));
    let removed = size(sets.messages.remove(topic));
    sets.tombstones.remove(topic);
    match entry {
        None => -removed,
        Some(Entry::Tombstone(version)) => {
            sets.tombstones.insert(topic.into(), version);
            -removed
        }
        Some(Entry::Message(stored)) => {
            let added = size(Some(stored.clone()));
            sets.messages.insert(topic.into(), stored);
            added - removed
        }
    }
}

/// Commits queued writes in batches until asked to close or every sender is gone.
fn write_loop(db: Database, mut queue: mpsc::Receiver<Msg>) {
    let mut close = None;
    while let Some(first) = queue.blocking_recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(op) => batch.push(op),
                Msg::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if batch.len() < BATCH {
                next = queue.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let result = commit(&db, &batch).map_err(|e| e.to_string());
            let mut unheard = false;
            for op in batch {
                unheard |= op.done.send(result.clone()).is_err();
            }
            if let (Err(e), true) = (&result, unheard) {
                tracing::error!(error = %e, "could not persist retained messages nobody waited for");
            }
        }
        if close.is_some() {
            break;
        }
    }
    drop(db);
    if let Some(done) = close {
        let _ = done.send(());
    }
}

fn commit(db: &Database, batch: &[Op]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(TABLE)?;
        for op in batch {
            match &op.entry {
                Some(entry) => {
                    table.insert(op.topic.as_str(), entry.to_value().as_slice())?;
                }
                None => {
                    table.remove(op.topic.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MQTT 5 PUBLISH (QoS 0, retained, no properties) of `payload` on `topic`.
    fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
        PublishParts {
            topic: topic.as_bytes(),
            packet_id: None,
            properties: &[0],
            payload,
        }
        .encode(0x31)
    }

    fn metrics() -> (IntGauge, IntGauge, IntCounter) {
        (
            IntGauge::new("r", "r").unwrap(),
            IntGauge::new("b", "b").unwrap(),
            IntCounter::new("e", "e").unwrap(),
        )
    }

    fn version(stamp: u64, writer: &str) -> Version {
        Version {
            stamp,
            writer: writer.into(),
        }
    }

    fn stored(topic: &str, payload: &[u8], version: Version) -> Stored {
        Stored {
            qos: 1,
            packet: publish_packet(topic, payload).into(),
            expires_at: None,
            version,
        }
    }

    fn set(retained: &Retained, topic: &str, payload: &[u8]) -> Change {
        Change::Set(stored(topic, payload, retained.next_version()))
    }

    #[test]
    fn values_round_trip_with_and_without_expiry() {
        let packet: Arc<[u8]> = publish_packet("a", b"v").into();
        for expires_at in [None, Some(1_700_000_000_123)] {
            let entry = Entry::Message(Stored {
                qos: 2,
                packet: packet.clone(),
                expires_at,
                version: version(42 << 16, "node-b"),
            });
            assert_eq!(Entry::from_value(&entry.to_value()), Some(entry));
        }
        let tombstone = Entry::Tombstone(version(7, "node-c"));
        assert_eq!(Entry::from_value(&tombstone.to_value()), Some(tombstone));
        // A value written before expiry and versions were kept: the QoS byte, then the packet.
        let mut old = vec![1];
        old.extend_from_slice(&packet);
        let Some(Entry::Message(read)) = Entry::from_value(&old) else {
            panic!("an old value reads as a message");
        };
        assert_eq!((read.qos, read.expires_at), (1, None));
        assert_eq!(read.version, Version::default());
        assert_eq!(Entry::from_value(&[EXPIRES | 1, 0, 0]), None);
    }

    #[tokio::test]
    async fn the_latest_write_wins_whatever_order_writes_arrive_in() {
        let dir = tempfile::tempdir().unwrap();
        let (g, b, e) = metrics();
        let (retained, _) = Retained::open(dir.path(), "node-a", g, b, e).unwrap();
        let payload = |r: &Retained| -> Vec<u8> {
            r.matching("t")
                .first()
                .and_then(|(_, s)| s.parts().map(|p| p.payload.to_vec()))
                .unwrap_or_default()
        };
        let newer = Change::Set(stored("t", b"new", version(20, "node-b")));
        let older = Change::Set(stored("t", b"old", version(10, "node-c")));
        assert!(retained.record("t", newer).await);
        assert!(
            !retained.record("t", older).await,
            "an older write is refused"
        );
        assert_eq!(payload(&retained), b"new");
        // Same stamp: the writer's id breaks the tie, the same way on every node.
        let tie = Change::Set(stored("t", b"tie", version(20, "node-c")));
        assert!(retained.record("t", tie).await);
        assert_eq!(payload(&retained), b"tie");
        // A delete leaves a tombstone that an older message cannot get past.
        assert!(
            retained
                .record("t", Change::Delete(version(30, "node-a")))
                .await
        );
        let late = Change::Set(stored("t", b"late", version(25, "node-b")));
        assert!(!retained.record("t", late).await);
        assert!(retained.matching("t").is_empty());
        assert!(
            matches!(&retained.entries()[..], [(t, Entry::Tombstone(v))] if t == "t" && v.stamp == 30)
        );
        // This node's next change is newer than anything it has seen.
        assert!(retained.next_version().stamp > 30);
    }

    #[tokio::test]
    async fn expired_messages_are_not_served_and_are_purged_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let (g, b, e) = metrics();
        let (retained, _) = Retained::open(dir.path(), "node-a", g.clone(), b, e).unwrap();
        let now = crate::envelope::now_ms();
        for (topic, expires_at) in [
            ("t/past", Some(now - 1)),
            ("t/later", Some(now + 600_000)),
            ("t/never", None),
        ] {
            let Change::Set(mut stored) = set(&retained, topic, b"v") else {
                unreachable!("set makes a Set")
            };
            stored.expires_at = expires_at;
            retained.record(topic, Change::Set(stored)).await;
        }
        let topics = |r: &Retained| -> Vec<String> {
            r.matching("t/#").into_iter().map(|(t, _)| t).collect()
        };
        assert_eq!(topics(&retained), ["t/later", "t/never"]);
        assert_eq!(g.get(), 3);
        assert_eq!(retained.purge_expired().await, 1);
        assert_eq!(g.get(), 2);
        retained.close().await;
        let (g2, b2, e2) = metrics();
        let (reopened, loaded) = Retained::open(dir.path(), "node-a", g2, b2, e2).unwrap();
        assert_eq!(loaded, 2);
        assert_eq!(topics(&reopened), ["t/later", "t/never"]);
        assert_eq!(
            reopened.matching("t/later")[0].1.expires_at,
            Some(now + 600_000)
        );
    }

    #[tokio::test]
    async fn matching_follows_filters() {
        let dir = tempfile::tempdir().unwrap();
        let (g, b, e) = metrics();
        let (retained, _) = Retained::open(dir.path(), "node-a", g, b, e).unwrap();
        for topic in ["home", "home/a", "home/b/c", "homey", "$SYS/x", "other"] {
            retained.record(topic, set(&retained, topic, b"v")).await;
        }
        let topics = |filter: &str| -> Vec<String> {
            retained
                .matching(filter)
                .into_iter()
                .map(|(t, _)| t)
                .collect()
        };
        assert_eq!(topics("home/#"), ["home", "home/a", "home/b/c"]);
        assert_eq!(topics("home/+"), ["home/a"]);
        assert_eq!(
            topics("#"),
            ["home", "home/a", "home/b/c", "homey", "other"]
        );
        assert_eq!(topics("$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics("homey"), ["homey"]);
        assert!(topics("$share/g/home/#").is_empty());
    }

    #[tokio::test]
    async fn survives_reopen_with_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let (g, b, e) = metrics();
        let (retained, loaded) =
            Retained::open(dir.path(), "node-a", g.clone(), b.clone(), e).unwrap();
        assert_eq!(loaded, 0);
        for i in 0..20 {
            let topic = format!("home/{i:02}");
            retained.record(&topic, set(&retained, &topic, b"v")).await;
        }
        for i in 0..5 {
            retained
                .record(
                    &format!("home/{i:02}"),
                    Change::Delete(retained.next_version()),
                )
                .await;
        }
        assert_eq!(g.get(), 15);
        let one = i64::try_from(publish_packet("home/00", b"v").len()).unwrap();
        assert_eq!(b.get(), 15 * one);
        retained.close().await;
        let (g2, b2, e2) = metrics();
        let (reopened, loaded) =
            Retained::open(dir.path(), "node-a", g2.clone(), b2.clone(), e2).unwrap();
        assert_eq!(b2.get(), 15 * one);
        assert_eq!(loaded, 15);
        let first = &reopened.matching("home/#")[0];
        assert_eq!(first.0, "home/05");
        assert_eq!(first.1.qos, 1);
        assert_eq!(&first.1.packet[..], &publish_packet("home/05", b"v")[..]);
        assert_eq!(g2.get(), 15);
    }
}
