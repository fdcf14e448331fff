//! The line-delimited JSON protocol for custom firmware (docs/serial.md): one JSON object per
//! line, `\n`-terminated (a `\r` before it is ignored), in both directions. This file owns the
//! message types and the codec; it does no I/O. A malformed line is reported in-band as
//! [`Malformed`] and skipped, so one bad line never ends the stream.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::Malformed;

/// The longest line either side may send, newline excluded. A longer one is skipped whole.
pub const MAX_LINE: usize = 1024;

/// What a device says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceMessage {
    /// Sent at start and on `query`: who the firmware is.
    Hello {
        /// The firmware's name and version, free text.
        firmware: String,
    },
    /// A channel's current state: `true`/`false` for switches and binary sensors, a number
    /// for sensors and brightness.
    State {
        /// The channel id, as in the node's config.
        channel: String,
        /// Its value.
        value: Value,
    },
    /// Something went wrong on the device; logged by the node.
    Error {
        /// What.
        message: String,
    },
}

/// What the node tells a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeMessage {
    /// Asks for `hello` and every channel's `state`.
    Query,
    /// Sets a channel: on/off, or a level (brightness 0-255).
    Set {
        /// The channel id.
        channel: String,
        /// The value to set.
        value: Value,
    },
    /// Pulses a momentary output for `ms` milliseconds.
    Press {
        /// The channel id.
        channel: String,
        /// How long.
        ms: u32,
    },
}

/// A channel value: on/off or a number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// On or off.
    Bool(bool),
    /// A reading or a level.
    Number(f64),
}

/// One line-delimited JSON stream; `In` is what it reads, `Out` what it writes. The node
/// uses [`NodeSide`], a device emulator [`DeviceSide`].
#[derive(Debug)]
pub struct JsonLines<In, Out> {
    /// Bytes of the current line already scanned for a newline.
    scanned: usize,
    /// Set while the rest of an over-long line is being skipped.
    skipping: bool,
    _kinds: std::marker::PhantomData<fn(Out) -> In>,
}

/// The node's end: reads [`DeviceMessage`]s, writes [`NodeMessage`]s.
pub type NodeSide = JsonLines<DeviceMessage, NodeMessage>;
/// A device's end: reads [`NodeMessage`]s, writes [`DeviceMessage`]s.
pub type DeviceSide = JsonLines<NodeMessage, DeviceMessage>;

impl<In, Out> Default for JsonLines<In, Out> {
    fn default() -> Self {
        JsonLines {
            scanned: 0,
            skipping: false,
            _kinds: std::marker::PhantomData,
        }
    }
}

impl<In: serde::de::DeserializeOwned, Out> Decoder for JsonLines<In, Out> {
    type Item = Result<In, Malformed>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        loop {
            let Some(offset) = buf[self.scanned..].iter().position(|b| *b == b'\n') else {
                self.scanned = buf.len();
                if buf.len() > MAX_LINE {
                    // Too long already: drop what is here and the rest of the line after.
                    let skipped = buf.len();
                    buf.clear();
                    self.scanned = 0;
                    let first = !std::mem::replace(&mut self.skipping, true);
                    if first {
                        return Ok(Some(Err(Malformed::TooLong { skipped })));
                    }
                }
                return Ok(None);
            };
            let end = self.scanned + offset;
            let line = buf.split_to(end + 1);
            self.scanned = 0;
            if std::mem::take(&mut self.skipping) {
                // The tail of a line already reported as too long.
                continue;
            }
            let mut text = &line[..end];
            if let [rest @ .., b'\r'] = text {
                text = rest;
            }
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if text.len() > MAX_LINE {
                return Ok(Some(Err(Malformed::TooLong {
                    skipped: line.len(),
                })));
            }
            return Ok(Some(serde_json::from_slice(text).map_err(|e| {
                Malformed::BadJson {
                    reason: e.to_string(),
                }
            })));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        match self.decode(buf)? {
            Some(item) => Ok(Some(item)),
            None => {
                // An unterminated last line is dropped: a port closing mid-line.
                buf.advance(buf.len());
                self.scanned = 0;
                self.skipping = false;
                Ok(None)
            }
        }
    }
}

impl<In, Out: Serialize> Encoder<&Out> for JsonLines<In, Out> {
    type Error = std::io::Error;

    fn encode(&mut self, item: &Out, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let line = serde_json::to_vec(item).map_err(std::io::Error::other)?;
        dst.reserve(line.len() + 1);
        dst.put_slice(&line);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut NodeSide, bytes: &[u8]) -> Vec<Result<DeviceMessage, Malformed>> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn lines_in_pieces_and_bad_lines_in_between() {
        let mut codec = NodeSide::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(br#"{"type":"state","channel":"relay","va"#);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(
            b"lue\":true}\r\n\nnot json\n{\"type\":\"hello\",\"firmware\":\"x 1\"}\n",
        );
        let first = codec.decode(&mut buf).unwrap().unwrap().unwrap();
        assert_eq!(
            first,
            DeviceMessage::State {
                channel: "relay".into(),
                value: Value::Bool(true)
            }
        );
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Err(Malformed::BadJson { .. }))
        ));
        assert_eq!(
            codec.decode(&mut buf).unwrap().unwrap().unwrap(),
            DeviceMessage::Hello {
                firmware: "x 1".into()
            }
        );
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_skipped() {
        let mut codec = NodeSide::default();
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.extend_from_slice(b"yyy\n{\"type\":\"error\",\"message\":\"m\"}\n");
        let items = decode_all(&mut codec, &long);
        assert!(matches!(items[0], Err(Malformed::TooLong { .. })));
        assert_eq!(
            items[1],
            Ok(DeviceMessage::Error {
                message: "m".into()
            })
        );
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn both_sides_round_trip() {
        let mut device = DeviceSide::default();
        let mut node = NodeSide::default();
        let mut wire = BytesMut::new();
        let said = DeviceMessage::State {
            channel: "temp".into(),
            value: Value::Number(21.5),
        };
        device.encode(&said, &mut wire).unwrap();
        assert_eq!(node.decode(&mut wire).unwrap().unwrap().unwrap(), said);
        let told = NodeMessage::Press {
            channel: "bell".into(),
            ms: 200,
        };
        node.encode(&told, &mut wire).unwrap();
        assert_eq!(
            &wire[..],
            b"{\"type\":\"press\",\"channel\":\"bell\",\"ms\":200}\n"
        );
        assert_eq!(device.decode(&mut wire).unwrap().unwrap().unwrap(), told);
    }
}
