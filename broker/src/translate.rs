//! MQTT 3.1.1 ⇄ MQTT 5 translation at the edge. Every client talks to rumqttd's MQTT 5
//! server, whatever it speaks: a 3.1.1 client's packets gain empty property blocks on the way
//! in, and what comes back loses properties and v5-only fields on the way out.
//!
//! Why: rumqttd forwards one publish, properties included, to every subscriber, and its 3.1.1
//! encoder panics on properties (RUMQTTD.md, defect 5). Translating here means no 3.1.1
//! subscriber is ever handed a packet it cannot decode, and rumqttd's 3.1.1 server is not used.

use crate::frame::{self, kind, FrameError, Header};

/// Session Expiry Interval "never": what a 3.1.1 persistent session (clean session 0) means.
const SESSION_NEVER_EXPIRES: [u8; 5] = [0x11, 0xff, 0xff, 0xff, 0xff];

/// Rewrites one packet from a 3.1.1 client into its MQTT 5 form.
pub(crate) fn client_to_v5(packet: &[u8], header: &Header) -> Result<Vec<u8>, FrameError> {
    let body = body(packet, header)?;
    let out = match header.kind() {
        kind::CONNECT => connect_to_v5(body)?,
        kind::PUBLISH => return republish(packet, header, false, &[0]),
        // SUBSCRIBE and UNSUBSCRIBE: a property block after the packet id. The subscription
        // options byte of 3.1.1 (QoS, reserved bits zero) is a valid MQTT 5 options byte.
        kind::SUBSCRIBE | kind::UNSUBSCRIBE => {
            check_len(body, 2, "SUBSCRIBE")?;
            insert(body, 2, &[0])
        }
        // PUBACK, PUBREC, PUBREL, PUBCOMP of length 2, PINGREQ and DISCONNECT are already
        // valid MQTT 5 (reason code success, no properties). Anything else is rumqttd's to judge.
        _ => return Ok(packet.to_vec()),
    };
    Ok(frame::packet(header.byte1, &out))
}

/// Rewrites one packet from rumqttd's MQTT 5 server for a 3.1.1 client. `None` means the
/// packet has no 3.1.1 form and is dropped (a server DISCONNECT: the close that follows says it).
pub(crate) fn server_to_v311(
    packet: &[u8],
    header: &Header,
) -> Result<Option<Vec<u8>>, FrameError> {
    let body = body(packet, header)?;
    let out = match header.kind() {
        kind::CONNACK => {
            check_len(body, 2, "CONNACK")?;
            vec![body[0] & 0x01, connack_code(body[1])]
        }
        kind::PUBLISH => return republish(packet, header, true, &[]).map(Some),
        kind::SUBACK => {
            check_len(body, 2, "SUBACK")?;
            let props = props_len(&body[2..], "SUBACK")?;
            let codes = body[2 + props..]
                .iter()
                .map(|&c| if c <= 2 { c } else { 0x80 });
            body[..2].iter().copied().chain(codes).collect()
        }
        // Acknowledgements keep only their packet id in 3.1.1.
        kind::UNSUBACK | kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
            check_len(body, 2, "acknowledgement")?;
            body[..2].to_vec()
        }
        kind::DISCONNECT | kind::AUTH => return Ok(None),
        _ => return Ok(Some(packet.to_vec())),
    };
    Ok(Some(frame::packet(header.byte1, &out)))
}

/// A 3.1.1 CONNECT as MQTT 5: level 5, a property block after the keep-alive (with "never
/// expires" for a persistent session), and an empty will property block before the will.
fn connect_to_v5(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    // Protocol name "MQTT" (6 bytes), level, flags, keep-alive: 10 bytes.
    check_len(body, 12, "CONNECT")?;
    let flags = body[7];
    let client_id_len = usize::from(u16::from_be_bytes([body[10], body[11]]));
    let payload_rest = 12 + client_id_len;
    check_len(body, payload_rest, "CONNECT")?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&body[..6]);
    out.push(5);
    out.extend_from_slice(&body[7..10]);
    if flags & 0x02 == 0 {
        out.push(SESSION_NEVER_EXPIRES.len() as u8);
        out.extend_from_slice(&SESSION_NEVER_EXPIRES);
    } else {
        out.push(0);
    }
    out.extend_from_slice(&body[10..payload_rest]);
    if flags & 0x04 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&body[payload_rest..]);
    Ok(out)
}

/// MQTT 5 CONNACK reason code to the nearest 3.1.1 return code.
fn connack_code(reason: u8) -> u8 {
    match reason {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x86 => 4,
        0x87 | 0x8a => 5,
        _ => 3,
    }
}

/// A PUBLISH read as MQTT 5 (`v5`) or 3.1.1 and written back with `properties` instead.
fn republish(
    packet: &[u8],
    header: &Header,
    v5: bool,
    properties: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let parts =
        frame::PublishParts::split(packet, header, v5).ok_or(FrameError::Malformed("PUBLISH"))?;
    Ok(frame::PublishParts {
        properties,
        ..parts
    }
    .encode(header.byte1))
}

/// The size of the property block (length field included) at the start of `bytes`.
fn props_len(bytes: &[u8], what: &'static str) -> Result<usize, FrameError> {
    frame::property_block_len(bytes).ok_or(FrameError::Malformed(what))
}

fn body<'a>(packet: &'a [u8], header: &Header) -> Result<&'a [u8], FrameError> {
    packet
        .get(header.header_len..header.total_len())
        .ok_or(FrameError::Malformed("packet"))
}

fn check_len(bytes: &[u8], at_least: usize, what: &'static str) -> Result<(), FrameError> {
    if bytes.len() < at_least {
        return Err(FrameError::Malformed(what));
    }
    Ok(())
}

fn insert(body: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    [&body[..at], bytes, &body[at..]].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse_connect, parse_header, parse_publish, Protocol};

    fn header(p: &[u8]) -> Header {
        parse_header(p, usize::MAX).unwrap().unwrap()
    }

    fn connect_v4(flags: u8, will: bool) -> Vec<u8> {
        let mut body = vec![
            0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 2, b'c', b'1',
        ];
        if will {
            body.extend_from_slice(&[0, 1, b'w', 0, 3, b'b', b'y', b'e']);
        }
        frame::packet(0x10, &body)
    }

    #[test]
    fn connect_gains_properties_and_keeps_its_will() {
        let p = connect_v4(0x02 | 0x04 | 0x20, true);
        let v5 = client_to_v5(&p, &header(&p)).unwrap();
        let c = parse_connect(&v5, &header(&v5)).unwrap();
        assert_eq!(c.protocol, Protocol::V5);
        assert_eq!(c.client_id, "c1");
        let will = c.will.unwrap();
        assert_eq!((will.topic.as_str(), will.retain), ("w", true));
        assert_eq!(will.payload, b"bye");
    }

    #[test]
    fn persistent_session_never_expires() {
        let p = connect_v4(0x00, false);
        let v5 = client_to_v5(&p, &header(&p)).unwrap();
        let h = header(&v5);
        let body = &v5[h.header_len..];
        assert_eq!(body[10], 5);
        assert_eq!(&body[11..16], &SESSION_NEVER_EXPIRES);
        assert_eq!(parse_connect(&v5, &h).unwrap().client_id, "c1");
    }

    #[test]
    fn publish_round_trip_drops_properties() {
        // QoS 1 publish "a/b", packet id 9, payload "hi".
        let p = frame::packet(0x32, &[0, 3, b'a', b'/', b'b', 0, 9, b'h', b'i']);
        let v5 = client_to_v5(&p, &header(&p)).unwrap();
        assert_eq!(
            parse_publish(&v5, &header(&v5), Protocol::V5)
                .unwrap()
                .topic,
            "a/b"
        );
        // The server's version carries a content type property (0x03).
        let with_props = frame::packet(
            0x32,
            &[
                0, 3, b'a', b'/', b'b', 0, 9, 5, 0x03, 0, 2, b't', b'x', b'h', b'i',
            ],
        );
        let v4 = server_to_v311(&with_props, &header(&with_props))
            .unwrap()
            .unwrap();
        assert_eq!(v4, p);
    }

    #[test]
    fn acknowledgements_and_connack_shrink() {
        let connack = frame::packet(0x20, &[0x01, 0x00, 3, 0x21, 0, 10]);
        assert_eq!(
            server_to_v311(&connack, &header(&connack))
                .unwrap()
                .unwrap(),
            vec![0x20, 2, 1, 0]
        );
        let refused = frame::packet(0x20, &[0x00, 0x87, 0]);
        assert_eq!(
            server_to_v311(&refused, &header(&refused))
                .unwrap()
                .unwrap(),
            vec![0x20, 2, 0, 5]
        );
        let suback = frame::packet(0x90, &[0, 7, 0, 0x01, 0x97, 0x02]);
        assert_eq!(
            server_to_v311(&suback, &header(&suback)).unwrap().unwrap(),
            vec![0x90, 5, 0, 7, 0x01, 0x80, 0x02]
        );
        let unsuback = frame::packet(0xb0, &[0, 7, 0, 0x00]);
        assert_eq!(
            server_to_v311(&unsuback, &header(&unsuback))
                .unwrap()
                .unwrap(),
            vec![0xb0, 2, 0, 7]
        );
        let puback = frame::packet(0x40, &[0, 7, 0x10, 0]);
        assert_eq!(
            server_to_v311(&puback, &header(&puback)).unwrap().unwrap(),
            vec![0x40, 2, 0, 7]
        );
        let disconnect = frame::packet(0xe0, &[0x8e, 0]);
        assert_eq!(
            server_to_v311(&disconnect, &header(&disconnect)).unwrap(),
            None
        );
    }

    #[test]
    fn subscribe_gains_a_property_block() {
        let sub = frame::packet(0x82, &[0, 5, 0, 1, b'#', 0x01]);
        let v5 = client_to_v5(&sub, &header(&sub)).unwrap();
        assert_eq!(v5, vec![0x82, 7, 0, 5, 0, 0, 1, b'#', 0x01]);
    }

    #[test]
    fn truncated_packets_are_errors_not_panics() {
        for p in [
            frame::packet(0x10, &[0, 4, b'M']),
            frame::packet(0x32, &[0, 9, b'a']),
            frame::packet(0x82, &[0]),
        ] {
            assert!(client_to_v5(&p, &header(&p)).is_err(), "{p:02x?}");
        }
        for p in [
            frame::packet(0x20, &[0]),
            frame::packet(0x30, &[0, 1, b'a', 0x85]),
            frame::packet(0x90, &[0, 1, 9]),
        ] {
            assert!(server_to_v311(&p, &header(&p)).is_err(), "{p:02x?}");
        }
    }
}
