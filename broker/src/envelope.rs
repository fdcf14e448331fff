//! The typed form of every message that enters the broker, and the envelope that carries it
//! through rumqttd's router. Every publish (a network client's, a will, the node's own, later
//! a peer's) becomes a [`Publication`] where it enters; the router only carries it, so
//! everything the edge needs at delivery (QoS, retain flag, origin, MQTT 5
//! properties, expiry) travels in the payload the router carries, and no client ever sees it.
//!
//! Envelope layout (all integers big-endian):
//! `version (1) | flags (1: bits 0-1 QoS, bit 2 retain) | origin (8) | sequence (8) |
//! expires at, unix ms, 0 = never (8) | retained version stamp, 0 = none (8) |
//! MQTT 5 property block (length varint + properties) | payload`.
//! A peer link (`mesh.rs`) carries the same envelope between nodes.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame;

/// Marks a topic escaped for the router. rumqttd's `#` (the reader link's one filter) never
/// matches a topic starting with `$`, and it refuses `$` filters, so topics starting with `$`
/// (and, to stay unambiguous, with this mark) cross the router with the mark in front; `open`
/// removes it. Clients see no mark.
const ESCAPE: char = '\u{1}';

/// The topic a message has inside the router.
pub(crate) fn router_topic(topic: &Bytes) -> Bytes {
    if topic
        .first()
        .is_some_and(|&b| b == b'$' || b == ESCAPE as u8)
    {
        let mut escaped = BytesMut::with_capacity(topic.len() + 1);
        escaped.put_u8(ESCAPE as u8);
        escaped.put_slice(topic);
        escaped.freeze()
    } else {
        topic.clone()
    }
}

/// The envelope format's version byte.
const VERSION: u8 = 1;
/// Bytes before the property block.
const FIXED: usize = 34;
/// The origin's wire bit for a peer (the low bits are the peer's index).
const PEER: u64 = 1 << 63;

/// Where a message entered the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The node itself (the in-process client: presence, demo devices, later the cluster).
    Node,
    /// A client session, by its session key (what MQTT 5 No Local compares).
    Session(u64),
    /// Another node of the cluster, by its index in the mesh's peer list: published by one
    /// of that node's clients and forwarded here, never forwarded again (one hop).
    Peer(u32),
}

impl Origin {
    /// Whether it entered at this node (and goes to the peers).
    pub(crate) fn is_local(self) -> bool {
        !matches!(self, Origin::Peer(_))
    }

    fn to_wire(self) -> u64 {
        match self {
            Origin::Node => 0,
            Origin::Session(key) => key,
            Origin::Peer(index) => PEER | u64::from(index),
        }
    }

    fn from_wire(value: u64) -> Self {
        match value {
            0 => Origin::Node,
            peer if peer & PEER != 0 => Origin::Peer((peer & u64::from(u32::MAX)) as u32),
            key => Origin::Session(key),
        }
    }
}

/// One application message as it entered the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publication {
    /// The topic name (a topic alias already resolved).
    pub topic: Bytes,
    /// The payload.
    pub payload: Bytes,
    /// The MQTT 5 property block as published, its length field included, less the
    /// properties that belong to one connection or are rewritten per delivery (Topic Alias,
    /// Subscription Identifier, Message Expiry Interval); `[0]` when there are none.
    pub properties: Bytes,
    /// The QoS it was published with.
    pub qos: u8,
    /// The publisher's retain flag.
    pub retain: bool,
    /// Who published it.
    pub origin: Origin,
    /// The count of messages routed on this node, this one included, given when it is
    /// routed (`Intake::route`): a subscription made when the count was `n` is offered the
    /// messages numbered above `n` only, however late the dispatcher reads them.
    pub sequence: u64,
    /// When it expires (MQTT 5 Message Expiry Interval), in unix milliseconds.
    pub expires_at: Option<u64>,
    /// For a retained message (or delete), the stamp of its version (`retained.rs`): given
    /// by the intake for this node's messages, carried from the writer for a peer's; 0 for
    /// other messages.
    pub stamp: u64,
    /// For a peer's retained message, the node that wrote it (not in the envelope: a message
    /// read back from the router is either this node's own or is not forwarded).
    pub writer: Option<std::sync::Arc<str>>,
}

impl Publication {
    /// The router payload carrying this message.
    pub(crate) fn envelope(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(size(self));
        out.put_u8(VERSION);
        out.put_u8(self.qos & 0x03 | if self.retain { 0x04 } else { 0 });
        out.put_u64(self.origin.to_wire());
        out.put_u64(self.sequence);
        out.put_u64(self.expires_at.unwrap_or(0));
        out.put_u64(self.stamp);
        out.put_slice(&self.properties);
        out.put_slice(&self.payload);
        out.freeze()
    }

    /// Reads a message back from the router (its router topic unescaped); `None` for anything
    /// that is not an envelope of this version (which only a bug could route).
    pub(crate) fn open(mut topic: Bytes, envelope: Bytes) -> Option<Publication> {
        if topic.first() == Some(&(ESCAPE as u8)) {
            topic = topic.slice(1..);
        }
        if envelope.len() < FIXED || envelope[0] != VERSION {
            return None;
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&envelope[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let flags = envelope[1];
        let origin = Origin::from_wire(word(2));
        let sequence = word(10);
        let expires_at = Some(word(18)).filter(|&at| at != 0);
        let stamp = word(26);
        let props_len = frame::property_block_len(&envelope[FIXED..])?;
        Some(Publication {
            topic,
            properties: envelope.slice(FIXED..FIXED + props_len),
            payload: envelope.slice(FIXED + props_len..),
            qos: flags & 0x03,
            retain: flags & 0x04 != 0,
            origin,
            sequence,
            expires_at,
            stamp,
            writer: None,
        })
    }

    /// Seconds left before it expires: `None` when it never does, `Some(0)` once it has.
    pub(crate) fn remaining_seconds(&self, now_ms: u64) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_sub(now_ms);
            u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }
}

/// The size of a message's envelope in bytes.
pub(crate) fn size(message: &Publication) -> usize {
    FIXED + message.properties.len() + message.payload.len()
}

/// The bytes a message takes in the router's log, as rumqttd counts them: its router topic
/// and its envelope. The router budget (`intake.rs`) is kept in these.
pub(crate) fn routed_size(router_topic: &[u8], envelope: &[u8]) -> u64 {
    (router_topic.len() + envelope.len()) as u64
}

/// Milliseconds since the unix epoch, the clock message expiry is kept in.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips() {
        let publication = Publication {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(b"hello"),
            properties: Bytes::from_static(&[3, 0x03, 0, 0]),
            qos: 2,
            retain: true,
            origin: Origin::Session(42),
            sequence: 7,
            expires_at: Some(1_000),
            stamp: 99 << 16,
            writer: None,
        };
        let opened = Publication::open(publication.topic.clone(), publication.envelope());
        assert_eq!(opened, Some(publication));
    }

    /// A QoS 0 message of the node on `topic`: no payload, properties or expiry.
    fn plain(topic: Bytes) -> Publication {
        Publication {
            topic,
            payload: Bytes::new(),
            properties: Bytes::from_static(&[0]),
            qos: 0,
            retain: false,
            origin: Origin::Node,
            sequence: 1,
            expires_at: None,
            stamp: 0,
            writer: None,
        }
    }

    #[test]
    fn node_origin_and_no_expiry_round_trip() {
        let publication = plain(Bytes::from_static(b"t"));
        let opened = Publication::open(publication.topic.clone(), publication.envelope());
        assert_eq!(opened, Some(publication));
    }

    #[test]
    fn peer_origins_round_trip() {
        let mut publication = plain(Bytes::from_static(b"t"));
        publication.origin = Origin::Peer(3);
        let opened = Publication::open(publication.topic.clone(), publication.envelope()).unwrap();
        assert_eq!(opened.origin, Origin::Peer(3));
        assert!(!opened.origin.is_local());
        assert!(Origin::Session(3).is_local() && Origin::Node.is_local());
    }

    #[test]
    fn dollar_topics_are_escaped_for_the_router_and_back() {
        let topic = Bytes::from_static(b"$SYS/x");
        let routed = router_topic(&topic);
        assert_eq!(&routed[..], b"\x01$SYS/x");
        let message = Publication::open(routed, plain(topic.clone()).envelope()).unwrap();
        assert_eq!(message.topic, topic);
        assert_eq!(router_topic(&Bytes::from_static(b"a/b")), "a/b");
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(
            Publication::open(Bytes::new(), Bytes::from_static(b"raw")),
            None
        );
    }

    #[test]
    fn remaining_seconds_round_up_and_reach_zero() {
        let mut p = Publication::open(Bytes::new(), plain(Bytes::new()).envelope()).unwrap();
        assert_eq!(p.remaining_seconds(5), None);
        p.expires_at = Some(10_500);
        assert_eq!(p.remaining_seconds(9_000), Some(2));
        assert_eq!(p.remaining_seconds(11_000), Some(0));
    }
}
