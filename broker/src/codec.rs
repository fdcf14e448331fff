//! MQTT 3.1.1 and 5 packets after CONNECT, as a session sees them: [`decode`] turns one framed
//! packet from a client (cut by `frame::parse_header`) into an [`Inbound`], and the encoders
//! below build what the edge sends back. Validation that needs no session state (reserved
//! flags, QoS 3, malformed properties, bad filters) happens here, so a session only ever
//! handles well-formed packets.

use bytes::{Buf, Bytes};

use crate::frame::{self, kind, property_block_len, walk_properties, FrameError, Header};

/// A publish as a client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InPublish {
    /// DUP flag.
    pub dup: bool,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name as sent (empty when an MQTT 5 client names it by alias only).
    pub topic: Bytes,
    /// Packet id (0 at QoS 0).
    pub pkid: u16,
    /// The MQTT 5 property block, length included; `[0]` for 3.1.1.
    pub properties: Bytes,
    /// Topic Alias (MQTT 5 property 0x23), if set.
    pub topic_alias: Option<u16>,
    /// Message Expiry Interval in seconds (0x02), if set.
    pub expiry: Option<u32>,
    /// The payload.
    pub payload: Bytes,
}

/// One filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubRequest {
    /// The topic filter (shared subscriptions keep their `$share/<group>/` prefix).
    pub filter: String,
    /// Maximum QoS asked for.
    pub qos: u8,
    /// MQTT 5 No Local.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5 Retain Handling: 0 always, 1 if new, 2 never.
    pub retain_handling: u8,
}

/// A packet from a client, after CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// PUBLISH.
    Publish(InPublish),
    /// PUBACK for a QoS 1 delivery.
    PubAck(u16),
    /// PUBREC for a QoS 2 delivery, with its reason code (0 for 3.1.1).
    PubRec(u16, u8),
    /// PUBREL for a QoS 2 publish the client sent.
    PubRel(u16),
    /// PUBCOMP for a QoS 2 delivery.
    PubComp(u16),
    /// SUBSCRIBE.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// MQTT 5 Subscription Identifier.
        id: Option<u32>,
        /// The filters, in order.
        filters: Vec<SubRequest>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        pkid: u16,
        /// The filters, in order.
        filters: Vec<String>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT with its MQTT 5 reason code (0 for 3.1.1) and Session Expiry Interval.
    Disconnect {
        /// Reason code; 0x04 asks for the will to be published.
        reason: u8,
        /// A new Session Expiry Interval, if the client set one.
        session_expiry: Option<u32>,
    },
    /// AUTH (MQTT 5), which Roost does not support.
    Auth,
}

/// Decodes one whole packet (fixed header included).
pub(crate) fn decode(packet: Bytes, header: &Header, v5: bool) -> Result<Inbound, FrameError> {
    let flags = header.byte1 & 0x0f;
    let mut body = packet.slice(header.header_len..header.total_len());
    let expect_flags = |want: u8, what: &'static str| {
        if flags == want {
            Ok(())
        } else {
            Err(FrameError::Malformed(what))
        }
    };
    match header.kind() {
        kind::PUBLISH => publish(body, header.byte1, v5).map(Inbound::Publish),
        kind::PUBACK => {
            expect_flags(0, "PUBACK")?;
            ack_id(&body, "PUBACK").map(Inbound::PubAck)
        }
        kind::PUBREC => {
            expect_flags(0, "PUBREC")?;
            let pkid = ack_id(&body, "PUBREC")?;
            Ok(Inbound::PubRec(pkid, body.get(2).copied().unwrap_or(0)))
        }
        kind::PUBREL => {
            expect_flags(2, "PUBREL")?;
            ack_id(&body, "PUBREL").map(Inbound::PubRel)
        }
        kind::PUBCOMP => {
            expect_flags(0, "PUBCOMP")?;
            ack_id(&body, "PUBCOMP").map(Inbound::PubComp)
        }
        kind::SUBSCRIBE => {
            expect_flags(2, "SUBSCRIBE")?;
            subscribe(&mut body, v5)
        }
        kind::UNSUBSCRIBE => {
            expect_flags(2, "UNSUBSCRIBE")?;
            unsubscribe(&mut body, v5)
        }
        kind::PINGREQ => {
            expect_flags(0, "PINGREQ")?;
            Ok(Inbound::PingReq)
        }
        kind::DISCONNECT => {
            expect_flags(0, "DISCONNECT")?;
            disconnect(&body, v5)
        }
        kind::AUTH if v5 => Ok(Inbound::Auth),
        other => Err(FrameError::Unexpected(other)),
    }
}

fn ack_id(body: &[u8], what: &'static str) -> Result<u16, FrameError> {
    match body {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(FrameError::Malformed(what)),
    }
}

fn take_u16(body: &mut Bytes, what: &'static str) -> Result<u16, FrameError> {
    if body.len() < 2 {
        return Err(FrameError::Malformed(what));
    }
    Ok(body.get_u16())
}

fn take_string(body: &mut Bytes, what: &'static str) -> Result<String, FrameError> {
    let len = usize::from(take_u16(body, what)?);
    if body.len() < len {
        return Err(FrameError::Malformed(what));
    }
    let raw = body.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|_| FrameError::Malformed(what))
}

fn take_properties(body: &mut Bytes, what: &'static str) -> Result<Bytes, FrameError> {
    let len = property_block_len(body).ok_or(FrameError::Malformed(what))?;
    Ok(body.split_to(len))
}

fn be(raw: &[u8]) -> u32 {
    raw.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
}

fn publish(mut body: Bytes, byte1: u8, v5: bool) -> Result<InPublish, FrameError> {
    let malformed = FrameError::Malformed("PUBLISH");
    let qos = (byte1 >> 1) & 0x03;
    let dup = byte1 & 0x08 != 0;
    // QoS 3 is malformed; so is DUP on a QoS 0 publish (MQTT-3.3.1-2).
    if qos == 3 || (qos == 0 && dup) {
        return Err(malformed);
    }
    let topic_len = usize::from(take_u16(&mut body, "PUBLISH")?);
    if body.len() < topic_len {
        return Err(malformed);
    }
    let topic = body.split_to(topic_len);
    if std::str::from_utf8(&topic).is_err() {
        return Err(malformed);
    }
    let pkid = if qos > 0 {
        let id = take_u16(&mut body, "PUBLISH")?;
        if id == 0 {
            return Err(malformed);
        }
        id
    } else {
        0
    };
    let (properties, topic_alias, expiry) = if v5 {
        let block = take_properties(&mut body, "PUBLISH")?;
        let (mut alias, mut expiry, mut valid) = (None, None, true);
        walk_properties(&block, |id, raw| match id {
            0x23 => alias = Some(be(&raw[1..]) as u16),
            0x02 => expiry = Some(be(&raw[1..])),
            // Subscription Identifier is server-to-client only (MQTT-3.3.4-6).
            0x0b => valid = false,
            0x01 | 0x03 | 0x08 | 0x09 | 0x26 => {}
            _ => valid = false,
        })
        .ok_or(FrameError::Malformed("PUBLISH properties"))?;
        if !valid || alias == Some(0) {
            return Err(FrameError::Malformed("PUBLISH properties"));
        }
        (block, alias, expiry)
    } else {
        (Bytes::from_static(&[0]), None, None)
    };
    Ok(InPublish {
        dup,
        qos,
        retain: byte1 & 0x01 != 0,
        topic,
        pkid,
        properties,
        topic_alias,
        expiry,
        payload: body,
    })
}

fn subscribe(body: &mut Bytes, v5: bool) -> Result<Inbound, FrameError> {
    let what = "SUBSCRIBE";
    let pkid = take_u16(body, what)?;
    let mut id = None;
    if v5 {
        let block = take_properties(body, what)?;
        let mut valid = true;
        walk_properties(&block, |pid, raw| match pid {
            0x0b => id = Some(varint(&raw[1..])),
            0x26 => {}
            _ => valid = false,
        })
        .ok_or(FrameError::Malformed(what))?;
        if !valid || id == Some(Some(0)) {
            return Err(FrameError::Malformed(what));
        }
    }
    let id = id.flatten();
    let mut filters = Vec::new();
    while !body.is_empty() {
        let filter = take_string(body, what)?;
        if body.is_empty() {
            return Err(FrameError::Malformed(what));
        }
        let options = body.get_u8();
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if options & reserved != 0 || options & 0x03 == 3 || (options >> 4) & 0x03 == 3 {
            return Err(FrameError::Malformed(what));
        }
        filters.push(SubRequest {
            filter,
            qos: options & 0x03,
            no_local: options & 0x04 != 0,
            retain_as_published: options & 0x08 != 0,
            retain_handling: (options >> 4) & 0x03,
        });
    }
    // A SUBSCRIBE with no filter is a protocol violation (MQTT-3.8.3-3).
    if filters.is_empty() {
        return Err(FrameError::Malformed(what));
    }
    Ok(Inbound::Subscribe { pkid, id, filters })
}

fn unsubscribe(body: &mut Bytes, v5: bool) -> Result<Inbound, FrameError> {
    let what = "UNSUBSCRIBE";
    let pkid = take_u16(body, what)?;
    if v5 {
        take_properties(body, what)?;
    }
    let mut filters = Vec::new();
    while !body.is_empty() {
        filters.push(take_string(body, what)?);
    }
    if filters.is_empty() {
        return Err(FrameError::Malformed(what));
    }
    Ok(Inbound::Unsubscribe { pkid, filters })
}

fn disconnect(body: &[u8], v5: bool) -> Result<Inbound, FrameError> {
    let reason = if v5 {
        body.first().copied().unwrap_or(0)
    } else {
        0
    };
    let mut session_expiry = None;
    if v5 && body.len() > 1 {
        walk_properties(&body[1..], |id, raw| {
            if id == 0x11 {
                session_expiry = Some(be(&raw[1..]));
            }
        })
        .ok_or(FrameError::Malformed("DISCONNECT"))?;
    }
    Ok(Inbound::Disconnect {
        reason,
        session_expiry,
    })
}

/// Reads a variable byte integer from the start of `raw`.
fn varint(raw: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for (i, &b) in raw.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

// === Encoding ===

/// CONNACK: `code` is the 3.1.1 return code or MQTT 5 reason code; `properties` is an MQTT 5
/// property list without its length (ignored for 3.1.1).
pub(crate) fn connack(v5: bool, session_present: bool, code: u8, properties: &[u8]) -> Vec<u8> {
    let mut body = vec![u8::from(session_present), code];
    if v5 {
        frame::push_varint(&mut body, properties.len());
        body.extend_from_slice(properties);
    }
    frame::packet(0x20, &body)
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (`byte1` 0x40, 0x50, 0x62, 0x70). MQTT 5 reason codes
/// other than success are written out; 3.1.1 has none.
pub(crate) fn ack(byte1: u8, pkid: u16, reason: u8, v5: bool) -> Vec<u8> {
    let [a, b] = pkid.to_be_bytes();
    if v5 && reason != 0 {
        frame::packet(byte1, &[a, b, reason])
    } else {
        frame::packet(byte1, &[a, b])
    }
}

/// SUBACK with one code per filter.
pub(crate) fn suback(pkid: u16, codes: &[u8], v5: bool) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(codes);
    frame::packet(0x90, &body)
}

/// UNSUBACK; MQTT 5 carries one reason code per filter, 3.1.1 none.
pub(crate) fn unsuback(pkid: u16, codes: &[u8], v5: bool) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
        body.extend_from_slice(codes);
    }
    frame::packet(0xb0, &body)
}

/// PINGRESP.
pub(crate) const PINGRESP: [u8; 2] = [0xd0, 0x00];

/// An MQTT 5 DISCONNECT from the server with `reason`.
pub(crate) fn disconnect_v5(reason: u8) -> Vec<u8> {
    frame::packet(0xe0, &[reason, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(packet: &[u8], v5: bool) -> Result<Inbound, FrameError> {
        let header = frame::parse_header(packet, usize::MAX).unwrap().unwrap();
        decode(Bytes::copy_from_slice(packet), &header, v5)
    }

    #[test]
    fn v311_publish_at_qos_1() {
        let packet = frame::packet(0x33, b"\x00\x03a/b\x00\x07hi");
        let Inbound::Publish(p) = decode_all(&packet, false).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!((p.qos, p.retain, p.pkid), (1, true, 7));
        assert_eq!((&p.topic[..], &p.payload[..]), (&b"a/b"[..], &b"hi"[..]));
        assert_eq!(&p.properties[..], &[0]);
    }

    #[test]
    fn v5_publish_reads_alias_and_expiry() {
        let packet = frame::packet(0x30, b"\x00\x00\x08\x23\x00\x02\x02\x00\x00\x00\x05x");
        let Inbound::Publish(p) = decode_all(&packet, true).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!((p.topic_alias, p.expiry), (Some(2), Some(5)));
        assert_eq!(&p.payload[..], b"x");
    }

    #[test]
    fn bad_publishes_are_malformed() {
        // QoS 3, DUP at QoS 0, packet id 0, subscription identifier from a client.
        for packet in [
            frame::packet(0x36, b"\x00\x01a\x00\x01"),
            frame::packet(0x38, b"\x00\x01a"),
            frame::packet(0x32, b"\x00\x01a\x00\x00"),
        ] {
            assert!(decode_all(&packet, false).is_err(), "{packet:02x?}");
        }
        let packet = frame::packet(0x30, b"\x00\x01a\x02\x0b\x01");
        assert!(decode_all(&packet, true).is_err());
    }

    #[test]
    fn subscribe_options() {
        let packet = frame::packet(0x82, b"\x00\x05\x02\x0b\x09\x00\x03a/#\x2d");
        let Inbound::Subscribe { pkid, id, filters } = decode_all(&packet, true).unwrap() else {
            panic!("not a subscribe");
        };
        assert_eq!((pkid, id), (5, Some(9)));
        let f = &filters[0];
        assert_eq!(f.filter, "a/#");
        assert_eq!(
            (f.qos, f.no_local, f.retain_as_published, f.retain_handling),
            (1, true, true, 2)
        );
    }

    #[test]
    fn v311_subscribe_with_reserved_bits_or_wrong_flags_is_malformed() {
        assert!(decode_all(&frame::packet(0x82, b"\x00\x01\x00\x01a\x04"), false).is_err());
        assert!(decode_all(&frame::packet(0x80, b"\x00\x01\x00\x01a\x01"), false).is_err());
        assert!(decode_all(&frame::packet(0x82, b"\x00\x01"), false).is_err());
    }

    #[test]
    fn disconnect_with_session_expiry() {
        let packet = frame::packet(0xe0, b"\x04\x05\x11\x00\x00\x00\x0a");
        assert_eq!(
            decode_all(&packet, true).unwrap(),
            Inbound::Disconnect {
                reason: 4,
                session_expiry: Some(10)
            }
        );
    }

    #[test]
    fn acks_are_short_on_success() {
        assert_eq!(ack(0x40, 0x0102, 0, true), vec![0x40, 2, 1, 2]);
        assert_eq!(ack(0x40, 0x0102, 0x10, true), vec![0x40, 3, 1, 2, 0x10]);
        assert_eq!(ack(0x62, 1, 0x92, false), vec![0x62, 2, 0, 1]);
    }
}
