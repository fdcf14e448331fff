//! The retained set, owned by Roost: in memory for delivery, and durable in
//! `<data_dir>/retained.redb`. rumqttd keeps none: the edge clears the retain flag before a
//! publish reaches the router and delivers retained messages itself on every subscribe
//! (RUMQTTD.md defects 1, 2, 7 and rumqttd#1069). A node that restarts, is killed or loses
//! power serves the retained set it had, deletes included.
//!
//! Writes go through one writer thread with group commit (one fsync for whatever is queued).
//! Callers: the edge (publishes from clients, fired wills, deliveries on subscribe) and the
//! in-process client.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::frame::PublishParts;

/// topic → one byte: the message's QoS in bits 0-1, bit 7 set when it expires; then, if it
/// expires, when (unix ms, 8 bytes big-endian); then the message as an MQTT 5 PUBLISH packet
/// (QoS 0, retain set, properties kept, Message Expiry Interval left out). Files written
/// before expiry was kept have bit 7 clear everywhere and read the same.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// The file in the data dir.
pub(crate) const FILE_NAME: &str = "retained.redb";
/// Writes queued before `record` waits.
const QUEUE: usize = 1024;
/// The most writes committed in one transaction.
const BATCH: usize = 256;
/// How often expired retained messages are purged.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Bit 7 of a value's first byte: an expiry time follows.
const EXPIRES: u8 = 0x80;
/// redb's page cache: the retained set is read once, at start.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

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
}

impl Stored {
    /// The value kept in the file (`TABLE`).
    fn to_value(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(self.packet.len() + 9);
        match self.expires_at {
            Some(at) => {
                value.push(self.qos | EXPIRES);
                value.extend_from_slice(&at.to_be_bytes());
            }
            None => value.push(self.qos),
        }
        value.extend_from_slice(&self.packet);
        value
    }

    /// Reads a value of the file back; `None` for one too short to be a value.
    fn from_value(value: &[u8]) -> Option<Stored> {
        let (&first, rest) = value.split_first()?;
        let (expires_at, packet) = if first & EXPIRES != 0 {
            let (at, packet) = rest.split_first_chunk::<8>()?;
            (Some(u64::from_be_bytes(*at)), packet)
        } else {
            (None, rest)
        };
        Some(Stored {
            qos: first & 0x03,
            packet: packet.into(),
            expires_at,
        })
    }

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

/// What a publish does to the retained set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Keep this message as the topic's retained message.
    Set(Stored),
    /// Remove the topic's retained message.
    Delete,
}

/// The retained set and its durable copy; cloning shares them.
#[derive(Clone)]
pub(crate) struct Retained {
    inner: Arc<Inner>,
}

struct Inner {
    /// topic → its retained message.
    messages: Mutex<BTreeMap<Box<str>, Stored>>,
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
    /// Apply one change; answer once it is durable.
    Write(Op),
    /// Release the database file, then answer.
    Close(oneshot::Sender<()>),
}

/// One write for the writer thread.
struct Op {
    topic: String,
    change: Change,
    done: oneshot::Sender<Result<(), String>>,
}

impl Retained {
    /// Opens (or creates) the durable retained set in `data_dir`, loads it, and starts its
    /// writer. Returns how many messages were loaded.
    pub(crate) fn open(
        data_dir: &Path,
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
        let mut messages = BTreeMap::new();
        {
            let read = db.begin_read().map_err(|e| store_error(e.into()))?;
            match read.open_table(TABLE) {
                Ok(table) => {
                    for entry in table.iter().map_err(|e| store_error(e.into()))? {
                        let (topic, value) = entry.map_err(|e| store_error(e.into()))?;
                        if let Some(stored) = Stored::from_value(value.value()) {
                            messages.insert(Box::<str>::from(topic.value()), stored);
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(store_error(e.into())),
            }
        }
        let loaded = messages.len();
        gauge.set(i64::try_from(loaded).unwrap_or(i64::MAX));
        let total: usize = messages.values().map(|m: &Stored| m.packet.len()).sum();
        bytes.set(i64::try_from(total).unwrap_or(i64::MAX));
        let (writes, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("roost-retained".into())
            .spawn(move || writer(db, queue))
            .map_err(|e| Error::Startup(format!("spawning the retained writer: {e}")))?;
        Ok((
            Retained {
                inner: Arc::new(Inner {
                    messages: Mutex::new(messages),
                    gauge,
                    bytes,
                    errors,
                    writes,
                }),
            },
            loaded,
        ))
    }

    /// The retained messages whose topics match `filter`, in topic order, expired ones left
    /// out. Shared subscriptions get none.
    pub(crate) fn matching(&self, filter: &str) -> Vec<(String, Stored)> {
        if crate::topic::is_shared(filter) {
            return Vec::new();
        }
        let prefix = crate::topic::literal_prefix(filter);
        let now = crate::envelope::now_ms();
        let messages = self.lock();
        messages
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(topic, _)| topic.starts_with(prefix))
            .filter(|(topic, stored)| !stored.expired(now) && crate::topic::matches(filter, topic))
            .map(|(topic, stored)| (topic.to_string(), stored.clone()))
            .collect()
    }

    /// Removes the messages that have expired, from memory and from the file (MQTT 5: a
    /// retained message lives no longer than its Message Expiry Interval). Returns how many.
    pub(crate) async fn purge_expired(&self) -> usize {
        let now = crate::envelope::now_ms();
        let expired: Vec<Box<str>> = self
            .lock()
            .iter()
            .filter(|(_, stored)| stored.expired(now))
            .map(|(topic, _)| topic.clone())
            .collect();
        let mut purged = 0;
        for topic in expired {
            // Checked again under the lock: the topic may have been set anew meanwhile.
            if self
                .change_if(&topic, Change::Delete, |s| {
                    s.is_some_and(|s| s.expired(now))
                })
                .await
            {
                purged += 1;
            }
        }
        purged
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Box<str>, Stored>> {
        // A poisoned lock only means another thread panicked mid-update; the map is still a
        // valid map, so keep using it.
        self.inner
            .messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to `topic` and returns once it is durable. A failed write is logged
    /// and counted; the message still flows (the live set matters more than its copy).
    pub(crate) async fn record(&self, topic: &str, change: Change) {
        self.change_if(topic, change, |_| true).await;
    }

    /// Applies `change` to `topic` if `when` holds for the topic's message now (checked under
    /// the lock), and returns once it is durable; false when it did not hold.
    async fn change_if(
        &self,
        topic: &str,
        change: Change,
        when: impl FnOnce(Option<&Stored>) -> bool,
    ) -> bool {
        let (done, wait) = oneshot::channel();
        let result = match self.inner.writes.reserve().await {
            Ok(permit) => {
                // The memory update and the queueing happen under one lock, so the file sees
                // changes to a topic in the order memory does.
                {
                    let mut messages = self.lock();
                    if !when(messages.get(topic)) {
                        return false;
                    }
                    let delta = apply(&mut messages, topic, &change);
                    self.inner
                        .gauge
                        .set(i64::try_from(messages.len()).unwrap_or(i64::MAX));
                    self.inner.bytes.add(delta);
                    permit.send(Msg::Write(Op {
                        topic: topic.to_owned(),
                        change,
                        done,
                    }));
                }
                wait.await.unwrap_or_else(|_| Err("writer stopped".into()))
            }
            Err(_) => {
                let mut messages = self.lock();
                if !when(messages.get(topic)) {
                    return false;
                }
                let delta = apply(&mut messages, topic, &change);
                self.inner.bytes.add(delta);
                Err("writer stopped".into())
            }
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

/// Applies a change to the in-memory set; returns how many stored bytes it added (negative
/// when it freed some).
fn apply(messages: &mut BTreeMap<Box<str>, Stored>, topic: &str, change: &Change) -> i64 {
    let size = |m: Option<Stored>| m.map_or(0, |m| i64::try_from(m.packet.len()).unwrap_or(0));
    match change {
        Change::Delete => -size(messages.remove(topic)),
        Change::Set(stored) => {
            size(Some(stored.clone())) - size(messages.insert(topic.into(), stored.clone()))
        }
    }
}

/// Commits queued writes in batches until asked to close or every sender is gone.
fn writer(db: Database, mut queue: mpsc::Receiver<Msg>) {
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
            for op in batch {
                let _ = op.done.send(result.clone());
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
            match &op.change {
                Change::Set(stored) => {
                    table.insert(op.topic.as_str(), stored.to_value().as_slice())?;
                }
                Change::Delete => {
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

    fn set(topic: &str, payload: &[u8]) -> Change {
        Change::Set(Stored {
            qos: 1,
            packet: publish_packet(topic, payload).into(),
            expires_at: None,
        })
    }

    #[test]
    fn values_round_trip_with_and_without_expiry() {
        let packet: Arc<[u8]> = publish_packet("a", b"v").into();
        for expires_at in [None, Some(1_700_000_000_123)] {
            let stored = Stored {
                qos: 2,
                packet: packet.clone(),
                expires_at,
            };
            assert_eq!(Stored::from_value(&stored.to_value()), Some(stored));
        }
        // A value written before expiry was kept: the QoS byte, then the packet.
        let mut old = vec![1];
        old.extend_from_slice(&packet);
        let read = Stored::from_value(&old).unwrap();
        assert_eq!((read.qos, read.expires_at), (1, None));
        assert_eq!(Stored::from_value(&[EXPIRES | 1, 0, 0]), None);
    }

    #[tokio::test]
    async fn expired_messages_are_not_served_and_are_purged_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let (g, b, e) = metrics();
        let (retained, _) = Retained::open(dir.path(), g.clone(), b, e).unwrap();
        let now = crate::envelope::now_ms();
        for (topic, expires_at) in [
            ("t/past", Some(now - 1)),
            ("t/later", Some(now + 600_000)),
            ("t/never", None),
        ] {
            let Change::Set(mut stored) = set(topic, b"v") else {
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
        let (reopened, loaded) = Retained::open(dir.path(), g2, b2, e2).unwrap();
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
        let (retained, _) = Retained::open(dir.path(), g, b, e).unwrap();
        for topic in ["home", "home/a", "home/b/c", "homey", "$SYS/x", "other"] {
            retained.record(topic, set(topic, b"v")).await;
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
        let (retained, loaded) = Retained::open(dir.path(), g.clone(), b.clone(), e).unwrap();
        assert_eq!(loaded, 0);
        for i in 0..20 {
            let topic = format!("home/{i:02}");
            retained.record(&topic, set(&topic, b"v")).await;
        }
        for i in 0..5 {
            retained
                .record(&format!("home/{i:02}"), Change::Delete)
                .await;
        }
        assert_eq!(g.get(), 15);
        let one = i64::try_from(publish_packet("home/00", b"v").len()).unwrap();
        assert_eq!(b.get(), 15 * one);
        retained.close().await;
        let (g2, b2, e2) = metrics();
        let (reopened, loaded) = Retained::open(dir.path(), g2.clone(), b2.clone(), e2).unwrap();
        assert_eq!(b2.get(), 15 * one);
        assert_eq!(loaded, 15);
        let first = &reopened.matching("home/#")[0];
        assert_eq!(first.0, "home/05");
        assert_eq!(first.1.qos, 1);
        assert_eq!(&first.1.packet[..], &publish_packet("home/05", b"v")[..]);
        assert_eq!(g2.get(), 15);
    }
}
