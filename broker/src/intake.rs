//! Where every message enters the broker: network clients' publishes, wills, and the node's
//! own messages all become a [`Publication`] and pass [`Intake::route`], which keeps the
//! retained set (durable before the message moves on) and hands the message to the router.
//! This is the seam the cluster builds on: one typed event, with its retain flag, origin and
//! properties, for every message that enters.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::envelope::{self, Origin, Publication};
use crate::error::Result;
use crate::frame::PublishParts;
use crate::ingress::Ingress;
use crate::retained::{Change, Retained, Stored};
use crate::session::Outbound;

/// The entry point shared by the edge and the in-process client.
pub(crate) struct Intake {
    /// The way into the router.
    pub ingress: Ingress,
    /// The durable retained set.
    pub retained: Retained,
    /// Bytes of envelope and topic routed since start: the sequence number of a message is
    /// this count once it is routed, so sequence numbers are unique and the distance between
    /// two of them is the router data in between (what `Edge::drain` measures lag in).
    routed: AtomicU64,
    /// The last link key handed out (0 is the node's publisher link and its origin).
    key: AtomicU64,
}

impl Intake {
    /// An intake over the router and the retained set.
    pub(crate) fn new(ingress: Ingress, retained: Retained) -> Intake {
        Intake {
            ingress,
            retained,
            routed: AtomicU64::new(0),
            key: AtomicU64::new(0),
        }
    }

    /// A key for a new session or in-process subscription, unique on this node: it names the
    /// router link and, for a session, is the origin of its messages.
    pub(crate) fn next_key(&self) -> u64 {
        self.key.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Bytes routed so far (the sequence number of the latest message).
    pub(crate) fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    /// Routes one message, giving it its sequence number: a retained one (or a retained
    /// delete) is recorded first, so by the time a publisher is acknowledged its retained
    /// message is durable and every later subscriber is served it.
    pub(crate) async fn route(&self, mut message: Publication) -> Result<()> {
        let size = (message.topic.len() + envelope::size(&message)) as u64;
        message.sequence = self.routed.fetch_add(size, Ordering::Relaxed) + size;
        if let Some(change) = change_of(&message) {
            let topic = String::from_utf8_lossy(&message.topic).into_owned();
            self.retained.record(&topic, change).await;
        }
        self.ingress
            .publish(envelope::router_topic(&message.topic), message.envelope())
            .await
    }

    /// The retained messages matching a new subscription, ready to queue: delivered at the
    /// lower of their QoS and `qos`, with the retain flag set (MQTT-3.3.1-8).
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
                    expires_at: None,
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

/// What a message does to the retained set (MQTT-3.3.1-5, -6, -7): only one with the retain
/// flag changes it, setting the topic's message, or deleting it when the payload is empty. An
/// empty message without the flag is just a message (rumqttd deletes on it: defect 7).
fn change_of(message: &Publication) -> Option<Change> {
    match (message.retain, message.payload.is_empty()) {
        (false, _) => None,
        (true, true) => Some(Change::Delete),
        (true, false) => Some(Change::Set(stored_form(message))),
    }
}

/// How a retained message is kept (retained.rs): an MQTT 5 PUBLISH at QoS 0 with the retain
/// flag and the publisher's properties, and the QoS it was published with.
fn stored_form(message: &Publication) -> Stored {
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
        }
    }

    #[test]
    fn only_retained_messages_change_the_set() {
        assert_eq!(change_of(&message(false, b"")), None);
        assert_eq!(change_of(&message(false, b"on")), None);
        assert_eq!(change_of(&message(true, b"")), Some(Change::Delete));
        let Some(Change::Set(stored)) = change_of(&message(true, b"on")) else {
            panic!("a retained message sets");
        };
        // Kept as an MQTT 5 PUBLISH at QoS 0 with the retain flag, properties included, and
        // the QoS it was published with beside it.
        assert_eq!(stored.qos, 1);
        assert_eq!(
            &stored.packet[..],
            &crate::frame::packet(0x31, &[0, 3, b'a', b'/', b'b', 2, 0x01, 1, b'o', b'n'])[..]
        );
    }
}
