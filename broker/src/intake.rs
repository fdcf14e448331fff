//! Where every message enters the broker: network clients' publishes, wills, and the node's
//! own messages all become a [`Publication`] and pass [`Intake::route`], which keeps the
//! retained set (durable before the message moves on) and hands the message to the router,
//! within a byte budget that keeps rumqttd from ever dropping what it carries.
//! This is the seam the cluster builds on: one typed event, with its retain flag, origin and
//! properties, for every message that enters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::envelope::{self, Origin, Publication};
use crate::error::Result;
use crate::frame::PublishParts;
use crate::ingress::Ingress;
use crate::mesh::Forwarder;
use crate::retained::{Change, Retained, Stored, Version, Wait};
use crate::session::Outbound;

/// Bytes of router topic and envelope allowed inside rumqttd's router at once: half of what
/// its log is certain to keep for the reader (`embed::LOG_KEPT`), so the dispatcher can
/// never fall far enough behind for the router to drop a message unread.
const BUDGET: u64 = crate::embed::LOG_KEPT / 2;

/// The entry point shared by the edge and the in-process client.
pub(crate) struct Intake {
    /// The way into the router.
    pub ingress: Ingress,
    /// The durable retained set.
    pub retained: Retained,
    /// Messages routed so far: the sequence number of the latest (`Publication::sequence`).
    routed: AtomicU64,
    /// What is inside the router, kept under `BUDGET`.
    budget: Budget,
    /// The last key handed out (0 is the node's own origin).
    key: AtomicU64,
    /// The cluster mesh's sending side, set once when the mesh is made: every message
    /// routed here is handed to it, which forwards those that entered at this node.
    forwarder: OnceLock<Arc<Forwarder>>,
}

impl Intake {
    /// An intake over the router and the retained set.
    pub(crate) fn new(ingress: Ingress, retained: Retained) -> Intake {
        Intake {
            ingress,
            retained,
            routed: AtomicU64::new(0),
            budget: Budget::new(BUDGET),
            key: AtomicU64::new(0),
            forwarder: OnceLock::new(),
        }
    }

    /// Hands every message routed from now on to the mesh (`Mesh::new`; once).
    pub(crate) fn set_forwarder(&self, forwarder: Arc<Forwarder>) {
        if self.forwarder.set(forwarder).is_err() {
            tracing::error!("a second cluster mesh for one node: it forwards nothing");
        }
    }

    /// A key for a new session or in-process subscription, unique on this node; for a
    /// session, the origin of its messages.
    pub(crate) fn next_key(&self) -> u64 {
        self.key.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Messages routed so far: a subscription made now is offered the messages with a
    /// higher sequence number.
    pub(crate) fn routed(&self) -> u64 {
        self.routed.load(Ordering::SeqCst)
    }

    /// Routes one message: a retained one (or a retained delete) is recorded first, so by
    /// the time a publisher is acknowledged its retained message is durable and every later
    /// subscriber is served it. Then it is numbered (after the record: a subscription that
    /// misses it live finds it in the retained set), handed to the mesh (which forwards it to
    /// the peers if it entered here: one hop, so the other nodes receive it without waiting
    /// for it to come back through this node's router), waits for room in the router's
    /// budget and is appended to the router's log.
    ///
    /// A retained change of this node gets a new version; a peer's keeps the version it
    /// carries, and changes the set only when it is newer than what is there (the message
    /// itself is delivered either way, as a live message).
    ///
    /// A peer's retained change is not waited on to reach this node's disk: the peer keeps it
    /// durable and sends its whole set again on every link, so waiting would only hold the
    /// link back by one fsync per message.
    pub(crate) async fn route(&self, message: Publication) -> Result<()> {
        let wait = Self::wait_for(&message);
        self.enter(message, false, wait).await.map(|_| ())
    }

    /// [`Intake::route`] for a node part that keeps the message durable in a store of its own
    /// and publishes it again after a crash: its retained change is not waited on either.
    pub(crate) async fn route_queued(&self, message: Publication) -> Result<()> {
        self.enter(message, false, Wait::Queued).await.map(|_| ())
    }

    /// Routes a retained entry a peer sent when its link opened (the peer's whole set), but
    /// only if it is newer than this node's entry for the topic: true when it was.
    pub(crate) async fn merge(&self, message: Publication) -> Result<bool> {
        let wait = Self::wait_for(&message);
        self.enter(message, true, wait).await
    }

    /// Durable for what entered at this node; only queued for a peer's.
    fn wait_for(message: &Publication) -> Wait {
        match message.origin {
            Origin::Peer(_) => Wait::Queued,
            _ => Wait::Durable,
        }
    }

    async fn enter(
        &self,
        mut message: Publication,
        only_if_newer: bool,
        wait: Wait,
    ) -> Result<bool> {
        if message.retain {
            let version = match (message.origin, &message.writer) {
                (Origin::Peer(_), Some(writer)) => Version {
                    stamp: message.stamp,
                    writer: writer.clone(),
                },
                _ => self.retained.next_version(),
            };
            message.stamp = version.stamp;
            let topic = String::from_utf8_lossy(&message.topic).into_owned();
            let newer = self
                .retained
                .record_with(&topic, change_of(&message, version), wait)
                .await;
            if !newer && only_if_newer {
                return Ok(false);
            }
        }
        message.sequence = self.routed.fetch_add(1, Ordering::SeqCst) + 1;
        let topic = envelope::router_topic(&message.topic);
        let envelope = message.envelope();
        if let Some(forwarder) = self.forwarder.get() {
            forwarder.forward(&message, &envelope);
        }
        let size = envelope::routed_size(&topic, &envelope);
        self.budget.reserve(size).await;
        let sent = self.ingress.publish(topic, envelope).await;
        if sent.is_err() {
            self.budget.release(size);
        }
        sent.map(|()| true)
    }

    /// The dispatcher read `size` bytes back from the router: room for more.
    pub(crate) fn consumed(&self, size: u64) {
        self.budget.release(size);
    }

    /// The retained messages matching a new subscription, ready to queue: delivered at the
    /// lower of their QoS and `qos`, with the retain flag set (MQTT-3.3.1-8), and with what is
    /// left of their Message Expiry Interval (MQTT-3.3.2-6).
    pub(crate) fn retained_for(&self, filter: &str, qos: u8, id: Option<u32>) -> Vec<Outbound> {
        self.retained
            .matching(filter)
            .into_iter()
            .filter_map(|(_, stored)| {
                let parts = stored.parts()?;
                let message = Publication {
                    topic: Bytes::copy_from_slice(parts.topic),
                    payload: Bytes::copy_from_slice(parts.payload),
                    properties: Bytes::copy_from_slice(parts.properties),
                    qos: stored.qos,
                    retain: true,
                    origin: Origin::Node,
                    sequence: 0,
                    expires_at: stored.expires_at,
                    stamp: 0,
                    writer: None,
                };
                Some(Outbound {
                    qos: stored.qos.min(qos),
                    retain: true,
                    subscription_ids: id.into_iter().collect(),
                    message,
                })
            })
            .collect()
    }
}

/// Bytes inside the router, kept under a limit: taken by `reserve` before a message is handed
/// over, given back by `release` once the dispatcher has read it.
struct Budget {
    /// The most bytes inside at once (a single larger message goes when nothing is inside).
    limit: u64,
    /// Bytes reserved so far.
    admitted: AtomicU64,
    /// Bytes released so far.
    consumed: AtomicU64,
    /// A route is waiting for room.
    waiting: AtomicBool,
    /// Woken when room was made.
    room: Notify,
}

impl Budget {
    fn new(limit: u64) -> Budget {
        Budget {
            limit,
            admitted: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            room: Notify::new(),
        }
    }

    /// Waits until `size` more bytes fit in the budget, and takes them. A message
    /// larger than the whole budget goes when the router is empty.
    async fn reserve(&self, size: u64) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_reserve(size) {
                return;
            }
            self.waiting.store(true, Ordering::SeqCst);
            // Checked again with the flag up: the dispatcher may have made room in between.
            if self.try_reserve(size) {
                return;
            }
            notified.await;
        }
    }

    fn try_reserve(&self, size: u64) -> bool {
        let mut admitted = self.admitted.load(Ordering::SeqCst);
        loop {
            let inside = admitted.saturating_sub(self.consumed.load(Ordering::SeqCst));
            if inside != 0 && inside + size > self.limit {
                return false;
            }
            match self.admitted.compare_exchange_weak(
                admitted,
                admitted + size,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => admitted = now,
            }
        }
    }

    /// `size` bytes left the router: room for more. Routes waiting are woken once at most
    /// half the budget is in use.
    fn release(&self, size: u64) {
        let consumed = self.consumed.fetch_add(size, Ordering::SeqCst) + size;
        if self.waiting.load(Ordering::SeqCst)
            && self
                .admitted
                .load(Ordering::SeqCst)
                .saturating_sub(consumed)
                <= self.limit / 2
        {
            self.waiting.store(false, Ordering::SeqCst);
            self.room.notify_waiters();
        }
    }
}

/// What a retained message does to the retained set (MQTT-3.3.1-5, -6, -7): sets the topic's
/// message, or deletes it when the payload is empty. Only a message with the retain flag
/// changes the set; an empty message without it is just a message (rumqttd deletes on it:
/// defect 7).
fn change_of(message: &Publication, version: Version) -> Change {
    if message.payload.is_empty() {
        Change::Delete(version)
    } else {
        Change::Set(stored_form(message, version))
    }
}

/// How a retained message is kept (retained.rs): an MQTT 5 PUBLISH at QoS 0 with the retain
/// flag and the publisher's properties, the QoS it was published with, when it expires, and
/// its version.
fn stored_form(message: &Publication, version: Version) -> Stored {
    let packet = PublishParts {
        topic: &message.topic,
        packet_id: None,
        properties: &message.properties,
        payload: &message.payload,
    }
    .encode(0x31);
    Stored {
        qos: message.qos,
        packet: packet.into(),
        expires_at: message.expires_at,
        version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(retain: bool, payload: &'static [u8]) -> Publication {
        Publication {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(payload),
            properties: Bytes::from_static(&[2, 0x01, 1]),
            qos: 1,
            retain,
            origin: Origin::Session(3),
            sequence: 1,
            expires_at: None,
            stamp: 0,
            writer: None,
        }
    }

    #[tokio::test]
    async fn the_budget_holds_routes_until_the_dispatcher_reads() {
        let budget = std::sync::Arc::new(Budget::new(100));
        // A message larger than the whole budget goes when nothing is inside.
        budget.reserve(150).await;
        assert!(!budget.try_reserve(1), "nothing more while it is inside");
        budget.release(150);
        budget.reserve(60).await;
        budget.reserve(40).await;
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(31).await })
        };
        // 70 of 100 still inside, no room for 31: the waiter sleeps until half is free.
        budget.release(30);
        assert!(!waiter.is_finished());
        budget.release(30);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken once at most half the budget is in use")
            .unwrap();
    }

    #[test]
    fn a_retained_message_sets_and_an_empty_one_deletes() {
        let version = Version {
            stamp: 5,
            writer: "node-a".into(),
        };
        assert_eq!(
            change_of(&message(true, b""), version.clone()),
            Change::Delete(version.clone())
        );
        let Change::Set(stored) = change_of(&message(true, b"on"), version.clone()) else {
            panic!("a retained message sets");
        };
        // Kept as an MQTT 5 PUBLISH at QoS 0 with the retain flag, properties included, and
        // the QoS it was published with and its version beside it.
        assert_eq!((stored.qos, stored.version), (1, version));
        assert_eq!(
            &stored.packet[..],
            &crate::frame::packet(0x31, &[0, 3, b'a', b'/', b'b', 2, 0x01, 1, b'o', b'n'])[..]
        );
    }
}
