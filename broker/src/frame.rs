//! MQTT wire framing: split a byte stream into packets (fixed header and remaining length),
//! read CONNECT (protocol level, client id, flags, will, credentials, MQTT 5 properties), split
//! and encode PUBLISH, walk MQTT 5 property blocks. The packets after CONNECT are decoded in
//! `codec.rs`.

/// MQTT control packet types the edge looks at (the high nibble of the first byte).
pub mod kind {
    /// CONNECT, the first packet of every connection.
    pub const CONNECT: u8 = 1;
    /// PUBLISH, in either direction.
    pub const PUBLISH: u8 = 3;
    /// PUBACK, QoS 1 acknowledgement.
    pub const PUBACK: u8 = 4;
    /// PUBREC, first QoS 2 acknowledgement.
    pub const PUBREC: u8 = 5;
    /// PUBREL, QoS 2 release.
    pub const PUBREL: u8 = 6;
    /// PUBCOMP, QoS 2 completion.
    pub const PUBCOMP: u8 = 7;
    /// SUBSCRIBE.
    pub const SUBSCRIBE: u8 = 8;
    /// UNSUBSCRIBE.
    pub const UNSUBSCRIBE: u8 = 10;
    /// PINGREQ.
    pub const PINGREQ: u8 = 12;
    /// DISCONNECT: from the client, a clean close (no will unless MQTT 5 reason 0x04).
    pub const DISCONNECT: u8 = 14;
    /// AUTH (MQTT 5 only).
    pub const AUTH: u8 = 15;
}

/// Why a byte stream is not MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The remaining-length field runs past four bytes.
    #[error("malformed remaining length")]
    MalformedLength,
    /// The packet is larger than the configured maximum.
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the whole packet.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The packet's variable header or payload is cut short or inconsistent.
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    /// The first packet of a connection was not CONNECT.
    #[error("first packet is type {0}, not CONNECT")]
    NotConnect(u8),
    /// CONNECT names a protocol other than MQTT.
    #[error("unknown protocol name")]
    UnknownProtocol,
    /// A packet type a client may not send after CONNECT (a second CONNECT, a CONNACK, ...).
    #[error("unexpected packet type {0}")]
    Unexpected(u8),
}

/// The header of one packet found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The first byte: packet type in the high nibble, flags in the low nibble.
    pub byte1: u8,
    /// Length of the fixed header (1 + the remaining-length bytes).
    pub header_len: usize,
    /// The remaining length: variable header plus payload.
    pub remaining: usize,
}

impl Header {
    /// The packet type (1..=15).
    pub fn kind(&self) -> u8 {
        self.byte1 >> 4
    }

    /// Length of the whole packet in bytes.
    pub fn total_len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Reads the fixed header at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed to know the header, and an error as soon as
/// the header is malformed or announces a packet over `limit` bytes, before its body arrives.
pub fn parse_header(buf: &[u8], limit: usize) -> Result<Option<Header>, FrameError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut shift = 0;
    for i in 1..=4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            let header = Header {
                byte1,
                header_len: i + 1,
                remaining,
            };
            if header.total_len() > limit {
                return Err(FrameError::TooLarge {
                    size: header.total_len(),
                    limit,
                });
            }
            return Ok(Some(header));
        }
        shift += 7;
    }
    Err(FrameError::MalformedLength)
}

/// The MQTT protocol generation a client asked for in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1 (level 3, "MQIsdp"): recognised so it can be refused properly.
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5 (level 5).
    V5,
    /// Any other level: refused with "unacceptable protocol version".
    Other(u8),
}

/// What the edge needs to know about a CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol level asked for.
    pub protocol: Protocol,
    /// The client identifier (may be empty).
    pub client_id: String,
    /// Clean Start (MQTT 5) or Clean Session (3.1.1): the client wants a new session.
    pub clean_start: bool,
    /// The will, if the client set one.
    pub will: Option<Will>,
    /// Keep Alive in seconds (0: none).
    pub keep_alive: u16,
    /// The user name, if given.
    pub username: Option<String>,
    /// The password, if given.
    pub password: Option<Vec<u8>>,
    /// MQTT 5 properties of the CONNECT that the session needs.
    pub properties: ConnectProperties,
}

/// The MQTT 5 CONNECT properties the edge acts on (MQTT 5 §3.1.2.11); defaults for 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval in seconds (0x11); 0 when absent.
    pub session_expiry: u32,
    /// Receive Maximum (0x21): QoS 1/2 publishes the client takes unacknowledged.
    pub receive_maximum: u16,
    /// Maximum Packet Size (0x27) the client accepts.
    pub maximum_packet_size: u32,
    /// Topic Alias Maximum (0x22) the client accepts; the edge sends no aliases.
    pub topic_alias_maximum: u16,
    /// Whether an Authentication Method (0x15) was given; Roost supports none.
    pub auth_method: bool,
}

impl Default for ConnectProperties {
    fn default() -> Self {
        ConnectProperties {
            session_expiry: 0,
            receive_maximum: u16::MAX,
            maximum_packet_size: u32::MAX,
            topic_alias_maximum: 0,
            auth_method: false,
        }
    }
}

impl ConnectProperties {
    /// Reads a CONNECT's property block (its length field included).
    fn parse(block: &[u8]) -> Result<Self, FrameError> {
        let mut props = ConnectProperties::default();
        let mut valid = true;
        let be = |raw: &[u8]| raw.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        walk_properties(block, |id, raw| {
            let value = &raw[1..];
            match id {
                0x11 => props.session_expiry = be(value),
                0x21 => {
                    props.receive_maximum = be(value) as u16;
                    valid &= props.receive_maximum != 0;
                }
                0x27 => {
                    props.maximum_packet_size = be(value);
                    valid &= props.maximum_packet_size != 0;
                }
                0x22 => props.topic_alias_maximum = be(value) as u16,
                0x15 => props.auth_method = true,
                0x16 | 0x17 | 0x19 | 0x26 => {}
                _ => valid = false,
            }
        })
        .ok_or(FrameError::Malformed("CONNECT properties"))?;
        if valid {
            Ok(props)
        } else {
            Err(FrameError::Malformed("CONNECT properties"))
        }
    }
}

/// The parts of a will the edge tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Where the will is published.
    pub topic: String,
    /// Whether the will is retained.
    pub retain: bool,
    /// The will's QoS.
    pub qos: u8,
    /// The will's payload (empty deletes a retained message).
    pub payload: Vec<u8>,
    /// The MQTT 5 will property block, its length field included (`[0]` for 3.1.1).
    pub properties: Vec<u8>,
}

impl Will {
    /// The MQTT 5 Will Delay Interval in seconds (property 0x18), 0 when absent.
    pub fn delay_seconds(&self) -> u32 {
        self.property(0x18).map_or(0, |v| {
            v.get(..4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        })
    }

    /// Whether the will's properties are well formed and all allowed in a will (MQTT 5
    /// §3.1.3.2). Anything else could make rumqttd drop the node's own publisher link when the
    /// will is published, so such a CONNECT is refused.
    pub fn properties_allowed(&self) -> bool {
        let mut allowed = true;
        let walked = walk_properties(&self.properties, |id, _| {
            allowed &= matches!(id, 0x01 | 0x02 | 0x03 | 0x08 | 0x09 | 0x18 | 0x26);
        });
        walked.is_some() && allowed
    }

    fn property(&self, wanted: u8) -> Option<Vec<u8>> {
        let mut found = None;
        walk_properties(&self.properties, |id, raw| {
            if id == wanted && found.is_none() {
                found = Some(raw[1..].to_vec());
            }
        })?;
        found
    }
}

/// Walks an MQTT 5 property block (its length field included), calling `f(id, the property's
/// bytes, id included)` for each property; `None` when the block is malformed.
pub fn walk_properties(block: &[u8], mut f: impl FnMut(u8, &[u8])) -> Option<()> {
    let total = property_block_len(block)?;
    let start = block.len() - skip_varint(block)?.len();
    let body = block.get(start..total)?;
    let mut i = 0;
    while i < body.len() {
        let id = body[i];
        let end = i + 1 + property_value_len(id, body.get(i + 1..)?)?;
        f(id, body.get(i..end)?);
        i = end;
    }
    Some(())
}

/// A property block (length field included) keeping only the properties `keep` accepts.
pub fn filter_properties(block: &[u8], keep: impl Fn(u8) -> bool) -> Option<Vec<u8>> {
    let mut kept = Vec::new();
    walk_properties(block, |id, raw| {
        if keep(id) {
            kept.extend_from_slice(raw);
        }
    })?;
    let mut out = Vec::with_capacity(kept.len() + 4);
    push_varint(&mut out, kept.len());
    out.extend_from_slice(&kept);
    Some(out)
}

/// The bytes after a variable byte integer at the start of `bytes`.
fn skip_varint(bytes: &[u8]) -> Option<&[u8]> {
    let n = bytes.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    bytes.get(n..)
}

/// Appends `value` as an MQTT variable byte integer.
pub fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut b = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            b |= 0x80;
        }
        out.push(b);
        if value == 0 {
            break;
        }
    }
}

/// The length of a property's value (after its id byte) per MQTT 5 §2.2.2.2.
fn property_value_len(id: u8, value: &[u8]) -> Option<usize> {
    let two = |v: &[u8]| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([*v.first()?, *v.get(1)?])))
    };
    match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => Some(1),
        0x13 | 0x21 | 0x22 | 0x23 => Some(2),
        0x02 | 0x11 | 0x18 | 0x27 => Some(4),
        0x0b => Some(value.iter().take(4).position(|b| b & 0x80 == 0)? + 1),
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => Some(2 + two(value)?),
        0x26 => {
            let k = two(value)?;
            let v = two(value.get(2 + k..)?)?;
            Some(4 + k + v)
        }
        _ => None,
    }
}

/// A cursor over a packet body that fails with the packet's name instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Malformed(self.what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn binary(&mut self) -> Result<&'a [u8], FrameError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    fn string(&mut self) -> Result<String, FrameError> {
        let what = self.what;
        let bytes = self.binary()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| FrameError::Malformed(what))
    }
}

/// Reads a CONNECT packet (the whole packet, fixed header included).
pub fn parse_connect(packet: &[u8], header: &Header) -> Result<Connect, FrameError> {
    if header.kind() != kind::CONNECT {
        return Err(FrameError::NotConnect(header.kind()));
    }
    let mut r = Reader {
        buf: packet
            .get(header.header_len..header.total_len())
            .ok_or(FrameError::Malformed("CONNECT"))?,
        what: "CONNECT",
    };
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (name, level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT" | b"MQIsdp", other) => Protocol::Other(other),
        _ => return Err(FrameError::UnknownProtocol),
    };
    let mut connect = Connect {
        protocol,
        client_id: String::new(),
        clean_start: true,
        will: None,
        keep_alive: 0,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    if matches!(protocol, Protocol::V31 | Protocol::Other(_)) {
        return Ok(connect);
    }
    let flags = r.u8()?;
    // Bit 0 is reserved (MQTT-3.1.2-3); a will QoS of 3 or will flags without a will are
    // malformed (MQTT-3.1.2-11, -13, -14, -15).
    let will_flags_without_will = flags & 0x04 == 0 && flags & 0x38 != 0;
    if flags & 0x01 != 0 || (flags >> 3) & 0x03 == 3 || will_flags_without_will {
        return Err(FrameError::Malformed("CONNECT flags"));
    }
    connect.keep_alive = r.u16()?;
    if protocol == Protocol::V5 {
        let len = property_block_len(r.buf).ok_or(FrameError::Malformed("CONNECT"))?;
        connect.properties = ConnectProperties::parse(r.take(len)?)?;
    }
    let client_id = r.string()?;
    let will = if flags & 0x04 != 0 {
        let properties = if protocol == Protocol::V5 {
            let len = property_block_len(r.buf).ok_or(FrameError::Malformed("CONNECT"))?;
            r.take(len)?.to_vec()
        } else {
            vec![0]
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            retain: flags & 0x20 != 0,
            qos: (flags >> 3) & 0x03,
            payload: payload.to_vec(),
            properties,
        })
    } else {
        None
    };
    if flags & 0x80 != 0 {
        connect.username = Some(r.string()?);
    }
    if flags & 0x40 != 0 {
        connect.password = Some(r.binary()?.to_vec());
    }
    connect.client_id = client_id;
    connect.clean_start = flags & 0x02 != 0;
    connect.will = will;
    Ok(connect)
}

/// The parts of a PUBLISH packet, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishParts<'a> {
    /// The topic name, as bytes (empty when an MQTT 5 client uses a topic alias instead).
    pub topic: &'a [u8],
    /// The packet id, present at QoS 1 and 2.
    pub packet_id: Option<u16>,
    /// The MQTT 5 property block, its length field included; empty for MQTT 3.1.1.
    pub properties: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> PublishParts<'a> {
    /// Splits a PUBLISH (the whole packet) of MQTT 5 (`v5`) or 3.1.1; `None` when it is cut
    /// short or inconsistent.
    pub fn split(packet: &'a [u8], header: &Header, v5: bool) -> Option<Self> {
        let body = packet.get(header.header_len..header.total_len())?;
        let topic_end = 2 + usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let topic = body.get(2..topic_end)?;
        let (packet_id, props_at) = if (header.byte1 >> 1) & 0x03 > 0 {
            let id = body.get(topic_end..topic_end + 2)?;
            (Some(u16::from_be_bytes([id[0], id[1]])), topic_end + 2)
        } else {
            (None, topic_end)
        };
        let props_len = if v5 {
            property_block_len(body.get(props_at..)?)?
        } else {
            0
        };
        Some(PublishParts {
            topic,
            packet_id,
            properties: body.get(props_at..props_at + props_len)?,
            payload: body.get(props_at + props_len..)?,
        })
    }

    /// Encodes these parts as a PUBLISH with first byte `byte1` (type, DUP, QoS, RETAIN); the
    /// packet id is written when present, the property block as given (empty for 3.1.1).
    pub fn encode(&self, byte1: u8) -> Vec<u8> {
        let topic = &self.topic[..self.topic.len().min(usize::from(u16::MAX))];
        let mut body =
            Vec::with_capacity(topic.len() + self.properties.len() + self.payload.len() + 4);
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic);
        if let Some(id) = self.packet_id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(self.properties);
        body.extend_from_slice(self.payload);
        packet(byte1, &body)
    }
}

/// Encodes a CONNACK refusing the connection, in the client's protocol generation.
///
/// `code` is the MQTT 3.1.1 return code (1: unacceptable protocol version, 2: identifier
/// rejected, 3: server unavailable, 5: not authorized); for MQTT 5 the matching reason code
/// is used.
pub fn connack_refusal(protocol: Protocol, code: u8) -> Vec<u8> {
    match protocol {
        Protocol::V5 => {
            let reason = match code {
                1 => 0x84,
                2 => 0x85,
                5 => 0x87,
                _ => 0x88,
            };
            packet(0x20, &[0x00, reason, 0x00])
        }
        _ => packet(0x20, &[0x00, code]),
    }
}

/// The size of the MQTT 5 property block at the start of `bytes`, its length field included;
/// `None` when the length field is malformed or the block runs past `bytes`.
pub fn property_block_len(bytes: &[u8]) -> Option<usize> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let total = i + 1 + value;
            return (total <= bytes.len()).then_some(total);
        }
    }
    None
}

/// Encodes a packet: the first byte, the remaining length, then `body`.
pub fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(byte1);
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(buf: &[u8]) -> Header {
        parse_header(buf, usize::MAX).unwrap().unwrap()
    }

    fn connect_v4(client_id: &str, will: Option<(&str, &[u8], bool)>) -> Vec<u8> {
        let mut body = vec![0, 4];
        body.extend_from_slice(b"MQTT");
        body.push(4);
        let mut flags = 0x02;
        if let Some((_, _, retain)) = will {
            flags |= 0x04 | if retain { 0x20 } else { 0 };
        }
        body.push(flags);
        body.extend_from_slice(&60u16.to_be_bytes());
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        if let Some((topic, payload, _)) = will {
            body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            body.extend_from_slice(topic.as_bytes());
            body.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            body.extend_from_slice(payload);
        }
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend(body);
        packet
    }

    #[test]
    fn will_delay_is_read_from_the_properties() {
        // Will properties: delay 30 s (0x18), content type "t" (0x03).
        let will = Will {
            topic: "dev/x/avail".into(),
            retain: true,
            qos: 1,
            payload: b"offline".to_vec(),
            properties: vec![9, 0x18, 0, 0, 0, 30, 0x03, 0, 1, b't'],
        };
        assert_eq!(will.delay_seconds(), 30);
        let plain = Will {
            properties: vec![0],
            ..will
        };
        assert_eq!(plain.delay_seconds(), 0);
    }

    #[test]
    fn will_property_checks() {
        let will = |properties: Vec<u8>| Will {
            topic: "t".into(),
            retain: false,
            qos: 0,
            payload: b"x".to_vec(),
            properties,
        };
        assert!(will(vec![0]).properties_allowed());
        assert!(will(vec![5, 0x18, 0, 0, 0, 9]).properties_allowed());
        // A Subscription Identifier or Topic Alias has no place in a will.
        assert!(!will(vec![2, 0x0b, 1]).properties_allowed());
        assert!(!will(vec![3, 0x23, 0, 1]).properties_allowed());
        // A value running past the block.
        assert!(!will(vec![3, 0x03, 0, 9]).properties_allowed());
    }

    #[test]
    fn filtering_properties() {
        let block = [8, 0x23, 0, 1, 0x03, 0, 1, b't', 0x01];
        // 0x01 has a one-byte value, which is missing: malformed.
        assert_eq!(filter_properties(&block, |_| true), None);
        let block = [9, 0x23, 0, 1, 0x03, 0, 1, b't', 0x01, 1];
        assert_eq!(
            filter_properties(&block, |id| id != 0x23),
            Some(vec![6, 0x03, 0, 1, b't', 0x01, 1])
        );
    }

    #[test]
    fn publish_parts_split_and_encode() {
        // MQTT 5, QoS 1, topic "a/b", packet id 7, one property (payload format), payload "on".
        let p = packet(
            0x33,
            &[0, 3, b'a', b'/', b'b', 0, 7, 2, 0x01, 1, b'o', b'n'],
        );
        let parts = PublishParts::split(&p, &header(&p), true).unwrap();
        assert_eq!(parts.topic, b"a/b");
        assert_eq!(parts.packet_id, Some(7));
        assert_eq!(parts.properties, &[2, 0x01, 1]);
        assert_eq!(parts.payload, b"on");
        assert_eq!(parts.encode(0x33), p);
        // The same bytes read as 3.1.1: no property block, the rest is payload.
        let v4 = PublishParts::split(&p, &header(&p), false).unwrap();
        assert_eq!(v4.payload, &[2, 0x01, 1, b'o', b'n']);
        assert!(PublishParts::split(
            &packet(0x30, &[0, 9, b'a']),
            &header(&packet(0x30, &[0, 9, b'a'])),
            true
        )
        .is_none());
    }

    #[test]
    fn packet_lengths() {
        assert_eq!(packet(0x30, &[0; 3])[..2], [0x30, 3]);
        assert_eq!(packet(0x30, &[0; 321])[..3], [0x30, 0xc1, 0x02]);
        let h = header(&packet(0x30, &[0; 20_000]));
        assert_eq!(h.remaining, 20_000);
    }

    #[test]
    fn header_needs_more_bytes() {
        assert_eq!(parse_header(&[], 100), Ok(None));
        assert_eq!(parse_header(&[0x30], 100), Ok(None));
        assert_eq!(parse_header(&[0x30, 0x80], 1000), Ok(None));
    }

    #[test]
    fn header_multi_byte_length() {
        let h = header(&[0x30, 0xc1, 0x02]);
        assert_eq!(h.remaining, 321);
        assert_eq!(h.header_len, 3);
        assert_eq!(h.kind(), kind::PUBLISH);
    }

    #[test]
    fn header_rejects_five_length_bytes() {
        assert_eq!(
            parse_header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
            Err(FrameError::MalformedLength)
        );
    }

    #[test]
    fn header_rejects_oversized_before_body() {
        assert_eq!(
            parse_header(&[0x30, 0xc1, 0x02], 100),
            Err(FrameError::TooLarge {
                size: 324,
                limit: 100
            })
        );
    }

    #[test]
    fn connect_v311_with_retained_will() {
        let p = connect_v4("sensor-1", Some(("home/s1/status", b"offline", true)));
        let c = parse_connect(&p, &header(&p)).unwrap();
        assert_eq!(c.protocol, Protocol::V311);
        assert_eq!(c.client_id, "sensor-1");
        assert_eq!(
            c.will,
            Some(Will {
                topic: "home/s1/status".into(),
                retain: true,
                qos: 0,
                payload: b"offline".to_vec(),
                properties: vec![0],
            })
        );
    }

    #[test]
    fn connect_v5_skips_properties() {
        let mut body = vec![0, 4];
        body.extend_from_slice(b"MQTT");
        body.extend_from_slice(&[5, 0x02, 0, 30]);
        body.extend_from_slice(&[5, 0x11, 0, 0, 0, 10]); // session expiry interval
        body.extend_from_slice(&[0, 2]);
        body.extend_from_slice(b"c5");
        let mut p = vec![0x10, body.len() as u8];
        p.extend(body);
        let c = parse_connect(&p, &header(&p)).unwrap();
        assert_eq!(c.protocol, Protocol::V5);
        assert_eq!(c.client_id, "c5");
        assert_eq!(c.will, None);
    }

    #[test]
    fn connect_old_and_unknown_levels() {
        let mut p = vec![0x10, 12, 0, 6];
        p.extend_from_slice(b"MQIsdp");
        p.extend_from_slice(&[3, 0x02, 0, 60]);
        assert_eq!(
            parse_connect(&p, &header(&p)).unwrap().protocol,
            Protocol::V31
        );
        let mut q = vec![0x10, 10, 0, 4];
        q.extend_from_slice(b"MQTT");
        q.extend_from_slice(&[9, 0x02, 0, 60]);
        assert_eq!(
            parse_connect(&q, &header(&q)).unwrap().protocol,
            Protocol::Other(9)
        );
    }

    #[test]
    fn connect_rejects_garbage() {
        let p = [0x10, 4, 0, 2, b'H', b'T'];
        assert_eq!(
            parse_connect(&p, &header(&p)),
            Err(FrameError::Malformed("CONNECT"))
        );
        let q = [0x47, 0x45, 0x54, 0x20];
        assert_eq!(
            parse_connect(&q, &header(&q)),
            Err(FrameError::NotConnect(4))
        );
    }
}
