//! Roost's peer protocol on the wire (docs/cluster.md). A link opens with an 8-byte preamble
//! that no MQTT client can send (its first byte, 0, is no MQTT packet type), so it shares the
//! MQTT port; then both sides exchange frames: `length (u32, of what follows) | kind (u8) |
//! body`. Integers are big-endian; a short string is a length byte and UTF-8, a long one a
//! 16-bit length and bytes.
//!
//! | kind | frame | body | sent by |
//! |---|---|---|---|
//! | 1 | hello | version u8, cluster s8, from s8, to s8, incarnation u64 | the dialer |
//! | 2 | welcome | node s8, incarnation u64, resume after u64 | the acceptor |
//! | 3 | refuse | reason s8, detail s16 | the acceptor |
//! | 4 | publish | sequence u64, topic s16, envelope (`envelope.rs`) | the dialer |
//! | 5 | retained | topic s16, entry (`retained.rs` value) | the dialer |
//! | 6 | ack | sequence u64 | the acceptor |
//! | 7 | ping | — | the dialer |
//! | 8 | bye | — | the dialer |
//! | 9 | synced | — | the dialer, once, right after the last retained entry of the link |

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use crate::retained::Entry;

/// What a peer link opens with.
pub(crate) const MAGIC: &[u8; 8] = b"\0ROOST/1";
/// The protocol version a hello carries.
pub(crate) const VERSION: u8 = 1;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REFUSE: u8 = 3;
const PUBLISH: u8 = 4;
const RETAINED: u8 = 5;
const ACK: u8 = 6;
const PING: u8 = 7;
const BYE: u8 = 8;
const SYNCED: u8 = 9;

/// Refusal reasons a peer may send, as metric labels; anything else counts as `other`.
const REASONS: [&str; 7] = [
    "protocol",
    "version",
    "wrong_cluster",
    "self",
    "duplicate_node",
    "wrong_node",
    "unknown_node",
];

/// The metric label for a refusal reason a peer sent.
pub(crate) fn known_reason(reason: &str) -> &'static str {
    REASONS
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("other")
}

/// One frame, read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Hello {
        version: u8,
        cluster: String,
        from: String,
        to: String,
        incarnation: u64,
    },
    Welcome {
        node: String,
        incarnation: u64,
        resume_after: u64,
    },
    Refuse {
        reason: String,
        detail: String,
    },
    Publish {
        seq: u64,
        topic: Bytes,
        envelope: Bytes,
    },
    Retained {
        topic: Bytes,
        entry: Entry,
    },
    Ack {
        seq: u64,
    },
    Ping,
    Bye,
    Synced,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The connection does not open with the preamble.
    #[error("not a Roost peer link")]
    Preamble,
    /// A frame longer than allowed.
    #[error("a frame of {0} bytes is too large")]
    TooLarge(usize),
    /// A frame that does not parse.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
}

/// Reads frames from one side of a link; `next` is cancel-safe (what was read stays
/// buffered).
pub(crate) struct FrameReader {
    read: OwnedReadHalf,
    buf: BytesMut,
    max_frame: usize,
    /// Bytes read since `take_read` was last called.
    read_count: u64,
}

impl FrameReader {
    /// A reader over `read`, starting with what was already read of it.
    pub(crate) fn new(read: OwnedReadHalf, buffered: BytesMut, max_frame: usize) -> FrameReader {
        FrameReader {
            read_count: buffered.len() as u64,
            read,
            buf: buffered,
            max_frame,
        }
    }

    /// Reads more into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool, WireError> {
        let n = self.read.read_buf(&mut self.buf).await?;
        self.read_count += n as u64;
        Ok(n > 0)
    }

    /// Consumes the preamble.
    pub(crate) async fn preamble(&mut self) -> Result<(), WireError> {
        while self.buf.len() < MAGIC.len() {
            if !MAGIC.starts_with(&self.buf) {
                return Err(WireError::Preamble);
            }
            if !self.fill().await? {
                return Err(WireError::Preamble);
            }
        }
        if &self.buf[..MAGIC.len()] != MAGIC {
            return Err(WireError::Preamble);
        }
        self.buf.advance(MAGIC.len());
        Ok(())
    }

    /// The next frame; `None` at a clean end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }

    /// The next frame if it is wholly buffered already.
    pub(crate) fn buffered(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(len) = self
            .buf
            .first_chunk::<4>()
            .map(|b| u32::from_be_bytes(*b) as usize)
        else {
            return Ok(None);
        };
        if len > self.max_frame || len == 0 {
            return Err(WireError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len).freeze();
        decode(body).map(Some)
    }

    /// Bytes read since the last call.
    pub(crate) fn take_read(&mut self) -> u64 {
        std::mem::take(&mut self.read_count)
    }
}

/// Decodes one frame (kind and body).
fn decode(mut body: Bytes) -> Result<Frame, WireError> {
    let kind = body.get_u8();
    let frame = match kind {
        HELLO => Frame::Hello {
            version: take_u8(&mut body, "hello")?,
            cluster: take_str8(&mut body, "hello")?,
            from: take_str8(&mut body, "hello")?,
            to: take_str8(&mut body, "hello")?,
            incarnation: take_u64(&mut body, "hello")?,
        },
        WELCOME => Frame::Welcome {
            node: take_str8(&mut body, "welcome")?,
            incarnation: take_u64(&mut body, "welcome")?,
            resume_after: take_u64(&mut body, "welcome")?,
        },
        REFUSE => {
            let reason = take_str8(&mut body, "refuse")?;
            let detail = take_bytes16(&mut body, "refuse")?;
            Frame::Refuse {
                reason,
                detail: String::from_utf8_lossy(&detail).into_owned(),
            }
        }
        PUBLISH => Frame::Publish {
            seq: take_u64(&mut body, "publish")?,
            topic: take_bytes16(&mut body, "publish")?,
            envelope: body.split_off(0),
        },
        RETAINED => {
            let topic = take_bytes16(&mut body, "retained")?;
            let entry = Entry::from_value(&body).ok_or(WireError::Malformed("retained"))?;
            body.clear();
            Frame::Retained { topic, entry }
        }
        ACK => Frame::Ack {
            seq: take_u64(&mut body, "ack")?,
        },
        PING => Frame::Ping,
        BYE => Frame::Bye,
        SYNCED => Frame::Synced,
        other => return Err(WireError::Kind(other)),
    };
    if !body.is_empty() {
        return Err(WireError::Malformed("trailing bytes in a"));
    }
    Ok(frame)
}

fn take_u8(body: &mut Bytes, what: &'static str) -> Result<u8, WireError> {
    if body.is_empty() {
        return Err(WireError::Malformed(what));
    }
    Ok(body.get_u8())
}

fn take_u64(body: &mut Bytes, what: &'static str) -> Result<u64, WireError> {
    if body.len() < 8 {
        return Err(WireError::Malformed(what));
    }
    Ok(body.get_u64())
}

fn take_str8(body: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    let len = usize::from(take_u8(body, what)?);
    if body.len() < len {
        return Err(WireError::Malformed(what));
    }
    String::from_utf8(body.split_to(len).to_vec()).map_err(|_| WireError::Malformed(what))
}

fn take_bytes16(body: &mut Bytes, what: &'static str) -> Result<Bytes, WireError> {
    if body.len() < 2 {
        return Err(WireError::Malformed(what));
    }
    let len = usize::from(body.get_u16());
    if body.len() < len {
        return Err(WireError::Malformed(what));
    }
    Ok(body.split_to(len))
}

/// A frame of `kind` whose body `fill` writes.
fn frame(kind: u8, capacity: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + capacity);
    out.put_u32(0);
    out.put_u8(kind);
    fill(&mut out);
    let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

fn put_str8(out: &mut BytesMut, s: &str) {
    // Node ids and cluster names are at most 32 bytes (config.rs).
    let s = &s.as_bytes()[..s.len().min(255)];
    out.put_u8(s.len() as u8);
    out.put_slice(s);
}

fn put_bytes16(out: &mut BytesMut, b: &[u8]) {
    // MQTT topics are at most 65535 bytes; a longer detail text is cut.
    let b = &b[..b.len().min(usize::from(u16::MAX))];
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// The dialer's hello.
pub(crate) fn hello(cluster: &str, from: &str, to: &str, incarnation: u64) -> Bytes {
    frame(HELLO, 80, |out| {
        out.put_u8(VERSION);
        put_str8(out, cluster);
        put_str8(out, from);
        put_str8(out, to);
        out.put_u64(incarnation);
    })
}

/// The acceptor's welcome.
pub(crate) fn welcome(node: &str, incarnation: u64, resume_after: u64) -> Bytes {
    frame(WELCOME, 50, |out| {
        put_str8(out, node);
        out.put_u64(incarnation);
        out.put_u64(resume_after);
    })
}

/// The acceptor's refusal.
pub(crate) fn refuse(reason: &str, detail: &str) -> Bytes {
    frame(REFUSE, 40 + detail.len(), |out| {
        put_str8(out, reason);
        put_bytes16(out, detail.as_bytes());
    })
}

/// A forwarded message.
pub(crate) fn publish(seq: u64, topic: &[u8], envelope: &[u8]) -> Bytes {
    frame(PUBLISH, 10 + topic.len() + envelope.len(), |out| {
        out.put_u64(seq);
        put_bytes16(out, topic);
        out.put_slice(envelope);
    })
}

/// One entry of the retained set.
pub(crate) fn retained(topic: &str, entry: &Entry) -> Bytes {
    let value = entry.to_value();
    frame(RETAINED, 2 + topic.len() + value.len(), |out| {
        put_bytes16(out, topic.as_bytes());
        out.put_slice(&value);
    })
}

/// The acceptor's acknowledgement of everything up to `seq`.
pub(crate) fn ack(seq: u64) -> Bytes {
    frame(ACK, 8, |out| out.put_u64(seq))
}

/// A ping.
pub(crate) fn ping() -> Bytes {
    frame(PING, 0, |_| {})
}

/// A clean goodbye.
pub(crate) fn bye() -> Bytes {
    frame(BYE, 0, |_| {})
}

/// The end of the retained set sent at the start of a link.
pub(crate) fn synced() -> Bytes {
    frame(SYNCED, 0, |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retained::Version;

    fn parse(bytes: &[u8]) -> Result<Frame, WireError> {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        decode(Bytes::copy_from_slice(&bytes[4..]))
    }

    #[test]
    fn frames_round_trip() {
        assert_eq!(
            parse(&hello("home", "node-a", "node-b", 7)).unwrap(),
            Frame::Hello {
                version: VERSION,
                cluster: "home".into(),
                from: "node-a".into(),
                to: "node-b".into(),
                incarnation: 7
            }
        );
        assert_eq!(
            parse(&welcome("node-b", 9, 41)).unwrap(),
            Frame::Welcome {
                node: "node-b".into(),
                incarnation: 9,
                resume_after: 41
            }
        );
        assert_eq!(
            parse(&refuse("self", "why")).unwrap(),
            Frame::Refuse {
                reason: "self".into(),
                detail: "why".into()
            }
        );
        assert_eq!(
            parse(&publish(3, b"a/b", b"env")).unwrap(),
            Frame::Publish {
                seq: 3,
                topic: Bytes::from_static(b"a/b"),
                envelope: Bytes::from_static(b"env")
            }
        );
        let entry = Entry::Tombstone(Version {
            stamp: 5,
            writer: "node-c".into(),
        });
        assert_eq!(
            parse(&retained("t", &entry)).unwrap(),
            Frame::Retained {
                topic: Bytes::from_static(b"t"),
                entry
            }
        );
        assert_eq!(parse(&ack(12)).unwrap(), Frame::Ack { seq: 12 });
        assert_eq!(parse(&ping()).unwrap(), Frame::Ping);
        assert_eq!(parse(&bye()).unwrap(), Frame::Bye);
        assert_eq!(parse(&synced()).unwrap(), Frame::Synced);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            decode(Bytes::from_static(&[99])),
            Err(WireError::Kind(99))
        ));
        assert!(matches!(
            decode(Bytes::from_static(&[HELLO, 1, 200])),
            Err(WireError::Malformed("hello"))
        ));
        assert!(matches!(
            decode(Bytes::from_static(&[ACK, 0, 0, 0, 0, 0, 0, 0, 1, 9])),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(known_reason("wrong_cluster"), "wrong_cluster");
        assert_eq!(known_reason("made-up"), "other");
    }
}
