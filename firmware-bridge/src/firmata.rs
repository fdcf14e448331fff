//! Firmata, the protocol of the StandardFirmata sketch (protocol 2.x): MIDI-style messages
//! (a command byte with the high bit set, then 7-bit data bytes) and SysEx frames between
//! `0xF0` and `0xF7`. This file owns the message types of both directions and their codecs:
//! [`HostSide`] (the node: reads [`FromBoard`], writes [`ToBoard`]) and [`BoardSide`] (a board
//! emulator: the reverse). It does no I/O. Bytes that start no frame, frames cut short by the
//! next command byte, and over-long SysEx are reported as [`Malformed`] and skipped: the codec
//! resynchronises on the next command byte.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::Malformed;

const DIGITAL_MESSAGE: u8 = 0x90;
const ANALOG_MESSAGE: u8 = 0xE0;
const REPORT_ANALOG: u8 = 0xC0;
const REPORT_DIGITAL: u8 = 0xD0;
const SET_PIN_MODE: u8 = 0xF4;
const SET_DIGITAL_PIN_VALUE: u8 = 0xF5;
const PROTOCOL_VERSION: u8 = 0xF9;
const SYSTEM_RESET: u8 = 0xFF;
const START_SYSEX: u8 = 0xF0;
const END_SYSEX: u8 = 0xF7;

const ANALOG_MAPPING_QUERY: u8 = 0x69;
const ANALOG_MAPPING_RESPONSE: u8 = 0x6A;
const CAPABILITY_QUERY: u8 = 0x6B;
const CAPABILITY_RESPONSE: u8 = 0x6C;
const PIN_STATE_QUERY: u8 = 0x6D;
const PIN_STATE_RESPONSE: u8 = 0x6E;
const EXTENDED_ANALOG: u8 = 0x6F;
const STRING_DATA: u8 = 0x71;
const REPORT_FIRMWARE: u8 = 0x79;
const SAMPLING_INTERVAL: u8 = 0x7A;

/// Ends one pin's list in a capability response, and marks a pin without analog channel.
const NONE_7BIT: u8 = 0x7F;

/// The longest SysEx body accepted (a capability response of a 70-pin Mega is under 700).
pub const MAX_SYSEX: usize = 2048;

/// A pin mode, as Firmata numbers them.
pub mod mode {
    /// Digital input.
    pub const INPUT: u8 = 0x00;
    /// Digital output.
    pub const OUTPUT: u8 = 0x01;
    /// Analog input.
    pub const ANALOG: u8 = 0x02;
    /// PWM output.
    pub const PWM: u8 = 0x03;
    /// Digital input with the pull-up on.
    pub const INPUT_PULLUP: u8 = 0x0B;
}

/// What a board sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromBoard {
    /// The 8 pins of digital `port` (pins `8 * port ..`), one bit each.
    DigitalPort {
        /// Port 0-15.
        port: u8,
        /// Pin levels, bit 0 the port's first pin.
        pins: u8,
    },
    /// An analog channel's reading.
    Analog {
        /// Channel 0-15 (A0 is 0).
        channel: u8,
        /// The value, 14 bits at most (10 on an Uno).
        value: u16,
    },
    /// The protocol version.
    Version {
        /// Major.
        major: u8,
        /// Minor.
        minor: u8,
    },
    /// The firmware's name and version.
    Firmware {
        /// Major.
        major: u8,
        /// Minor.
        minor: u8,
        /// The sketch's name, e.g. `StandardFirmata.ino`.
        name: String,
    },
    /// Each pin's supported modes and their resolutions, by pin number.
    Capabilities(Vec<Vec<(u8, u8)>>),
    /// Each pin's analog channel (`None`: not analog), by pin number.
    AnalogMapping(Vec<Option<u8>>),
    /// A pin's mode and state.
    PinState {
        /// The pin.
        pin: u8,
        /// Its mode.
        mode: u8,
        /// Its state (output level, PWM duty, ...), up to 28 bits.
        state: u32,
    },
    /// A text message from the sketch.
    Text(String),
    /// A SysEx frame this codec does not read (its command and body length).
    OtherSysex {
        /// The SysEx command.
        command: u8,
        /// Body bytes after it.
        len: usize,
    },
}

/// What the host sends a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToBoard {
    /// Asks for the protocol version.
    QueryVersion,
    /// Asks for the firmware's name and version.
    QueryFirmware,
    /// Asks for every pin's capabilities.
    QueryCapabilities,
    /// Asks which pins are analog channels.
    QueryAnalogMapping,
    /// Asks for a pin's mode and state.
    QueryPinState {
        /// The pin.
        pin: u8,
    },
    /// Sets a pin's mode.
    SetPinMode {
        /// The pin.
        pin: u8,
        /// The mode ([`mode`]).
        mode: u8,
    },
    /// Sets one digital output pin.
    SetDigital {
        /// The pin.
        pin: u8,
        /// High or low.
        high: bool,
    },
    /// Writes a PWM duty (or servo angle) to a pin.
    AnalogWrite {
        /// The pin.
        pin: u8,
        /// The value, 14 bits at most for pins 0-15, 28 bits beyond.
        value: u32,
    },
    /// Turns the reporting of an analog channel on or off.
    ReportAnalog {
        /// Channel 0-15.
        channel: u8,
        /// On or off.
        enable: bool,
    },
    /// Turns the reporting of a digital port on or off.
    ReportDigital {
        /// Port 0-15.
        port: u8,
        /// On or off.
        enable: bool,
    },
    /// How often the board samples analog inputs.
    SamplingInterval {
        /// Milliseconds, 14 bits.
        ms: u16,
    },
    /// Resets the board to its start state.
    Reset,
}

/// One frame off the wire, before its meaning is read.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A command byte and its 7-bit data bytes.
    Short(u8, Vec<u8>),
    /// A SysEx command and its body.
    Sysex(u8, Vec<u8>),
}

/// Splits a byte stream into frames. `version_data` is how many data bytes follow
/// `PROTOCOL_VERSION` in the direction read: 2 from a board, 0 from a host.
#[derive(Debug, Default)]
struct Framer {
    /// Set while the rest of an over-long SysEx is dropped.
    skipping: bool,
}

impl Framer {
    fn data_len(command: u8, version_data: usize) -> Option<usize> {
        match command {
            0x90..=0x9F | 0xE0..=0xEF | SET_PIN_MODE | SET_DIGITAL_PIN_VALUE => Some(2),
            0xC0..=0xDF => Some(1),
            PROTOCOL_VERSION => Some(version_data),
            SYSTEM_RESET => Some(0),
            _ => None,
        }
    }

    fn next(
        &mut self,
        buf: &mut BytesMut,
        version_data: usize,
    ) -> Option<Result<Frame, Malformed>> {
        loop {
            let &first = buf.first()?;
            if self.skipping {
                // Drop the rest of an over-long SysEx: data bytes, and its end.
                let data = buf.iter().take_while(|b| **b < 0x80).count();
                buf.advance(data);
                match buf.first() {
                    None => return None,
                    Some(&END_SYSEX) => buf.advance(1),
                    Some(_) => {}
                }
                self.skipping = false;
                continue;
            }
            if first < 0x80 {
                let skipped = buf.iter().take_while(|b| **b < 0x80).count();
                buf.advance(skipped);
                return Some(Err(Malformed::Stray { skipped }));
            }
            if first == START_SYSEX {
                let body = &buf[1..];
                match body.iter().position(|b| *b >= 0x80) {
                    Some(0) if body[0] == END_SYSEX => {
                        buf.advance(2);
                        return Some(Err(Malformed::Broken {
                            reason: "an empty SysEx",
                        }));
                    }
                    Some(end) if body[end] == END_SYSEX => {
                        // `F0 command body.. F7`: `end` is the index of `F7` in `body`.
                        let frame = buf.split_to(end + 2);
                        return Some(Ok(Frame::Sysex(frame[1], frame[2..end + 1].to_vec())));
                    }
                    Some(end) => {
                        buf.advance(end + 1);
                        return Some(Err(Malformed::Broken {
                            reason: "a SysEx cut short by a command byte",
                        }));
                    }
                    None if body.len() > MAX_SYSEX => {
                        let skipped = buf.len();
                        buf.clear();
                        self.skipping = true;
                        return Some(Err(Malformed::TooLong { skipped }));
                    }
                    None => return None,
                }
            }
            let Some(len) = Self::data_len(first, version_data) else {
                buf.advance(1);
                return Some(Err(Malformed::Stray { skipped: 1 }));
            };
            let data = &buf[1..buf.len().min(1 + len)];
            if let Some(cut) = data.iter().position(|b| *b >= 0x80) {
                buf.advance(1 + cut);
                return Some(Err(Malformed::Broken {
                    reason: "a message cut short by a command byte",
                }));
            }
            if data.len() < len {
                return None;
            }
            let frame = buf.split_to(1 + len);
            return Some(Ok(Frame::Short(first, frame[1..].to_vec())));
        }
    }
}

/// Two 7-bit bytes, LSB first, as one 14-bit value.
fn u14(lsb: u8, msb: u8) -> u16 {
    u16::from(lsb & 0x7F) | (u16::from(msb & 0x7F) << 7)
}

/// Text sent as 7-bit LSB/MSB pairs.
fn text_of(pairs: &[u8]) -> String {
    pairs
        .chunks(2)
        .map(|p| {
            let code = u14(p[0], p.get(1).copied().unwrap_or(0));
            char::from_u32(u32::from(code)).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect()
}

fn put_text(out: &mut BytesMut, text: &str) {
    for c in text.chars() {
        let code = u32::from(c) & 0x3FFF;
        out.put_u8((code & 0x7F) as u8);
        out.put_u8(((code >> 7) & 0x7F) as u8);
    }
}

/// `value` as 7-bit bytes, LSB first, `n` of them.
fn put_7bit(out: &mut BytesMut, value: u32, n: usize) {
    for i in 0..n {
        out.put_u8(((value >> (7 * i)) & 0x7F) as u8);
    }
}

impl FromBoard {
    fn read(frame: Frame) -> Result<FromBoard, Malformed> {
        let broken = |reason| Err(Malformed::Broken { reason });
        match frame {
            Frame::Short(command, data) => match (command & 0xF0, command, data.as_slice()) {
                (DIGITAL_MESSAGE, _, [lsb, msb]) => Ok(FromBoard::DigitalPort {
                    port: command & 0x0F,
                    pins: (lsb & 0x7F) | ((msb & 0x01) << 7),
                }),
                (ANALOG_MESSAGE, _, [lsb, msb]) => Ok(FromBoard::Analog {
                    channel: command & 0x0F,
                    value: u14(*lsb, *msb),
                }),
                (_, PROTOCOL_VERSION, [major, minor]) => Ok(FromBoard::Version {
                    major: *major,
                    minor: *minor,
                }),
                _ => broken("a host command from the board"),
            },
            Frame::Sysex(command, body) => match command {
                REPORT_FIRMWARE => match body.as_slice() {
                    [major, minor, name @ ..] => Ok(FromBoard::Firmware {
                        major: *major,
                        minor: *minor,
                        name: text_of(name),
                    }),
                    _ => broken("a firmware report without a version"),
                },
                CAPABILITY_RESPONSE => {
                    let mut pins = Vec::new();
                    let mut modes = Vec::new();
                    let mut rest = body.as_slice();
                    while let Some((&b, tail)) = rest.split_first() {
                        if b == NONE_7BIT {
                            pins.push(std::mem::take(&mut modes));
                            rest = tail;
                        } else if let Some((&resolution, tail)) = tail.split_first() {
                            modes.push((b, resolution));
                            rest = tail;
                        } else {
                            return broken("a capability response cut in a pair");
                        }
                    }
                    if !modes.is_empty() {
                        return broken("a capability response without its last pin's end");
                    }
                    Ok(FromBoard::Capabilities(pins))
                }
                ANALOG_MAPPING_RESPONSE => Ok(FromBoard::AnalogMapping(
                    body.iter()
                        .map(|&c| (c != NONE_7BIT).then_some(c))
                        .collect(),
                )),
                PIN_STATE_RESPONSE => match body.as_slice() {
                    [pin, mode, state @ ..] if state.len() <= 4 => Ok(FromBoard::PinState {
                        pin: *pin,
                        mode: *mode,
                        state: state
                            .iter()
                            .enumerate()
                            .map(|(i, b)| u32::from(*b) << (7 * i))
                            .sum(),
                    }),
                    _ => broken("a pin state response of the wrong length"),
                },
                STRING_DATA => Ok(FromBoard::Text(text_of(&body))),
                command => Ok(FromBoard::OtherSysex {
                    command,
                    len: body.len(),
                }),
            },
        }
    }

    fn write(&self, out: &mut BytesMut) {
        match self {
            FromBoard::DigitalPort { port, pins } => {
                out.put_slice(&[DIGITAL_MESSAGE | (port & 0x0F), pins & 0x7F, pins >> 7]);
            }
            FromBoard::Analog { channel, value } => {
                out.put_u8(ANALOG_MESSAGE | (channel & 0x0F));
                put_7bit(out, u32::from(*value), 2);
            }
            FromBoard::Version { major, minor } => {
                out.put_slice(&[PROTOCOL_VERSION, major & 0x7F, minor & 0x7F]);
            }
            FromBoard::Firmware { major, minor, name } => sysex(out, REPORT_FIRMWARE, |out| {
                out.put_slice(&[major & 0x7F, minor & 0x7F]);
                put_text(out, name);
            }),
            FromBoard::Capabilities(pins) => sysex(out, CAPABILITY_RESPONSE, |out| {
                for modes in pins {
                    for (mode, resolution) in modes {
                        out.put_slice(&[mode & 0x7F, resolution & 0x7F]);
                    }
                    out.put_u8(NONE_7BIT);
                }
            }),
            FromBoard::AnalogMapping(pins) => sysex(out, ANALOG_MAPPING_RESPONSE, |out| {
                for pin in pins {
                    out.put_u8(pin.map_or(NONE_7BIT, |c| c & 0x7F));
                }
            }),
            FromBoard::PinState { pin, mode, state } => sysex(out, PIN_STATE_RESPONSE, |out| {
                out.put_slice(&[pin & 0x7F, mode & 0x7F]);
                let n = (1..=4).find(|n| *state < 1 << (7 * n)).unwrap_or(4);
                put_7bit(out, *state, n);
            }),
            FromBoard::Text(text) => sysex(out, STRING_DATA, |out| put_text(out, text)),
            FromBoard::OtherSysex { command, len } => sysex(out, command & 0x7F, |out| {
                out.put_bytes(0, *len);
            }),
        }
    }
}

impl ToBoard {
    fn read(frame: Frame) -> Result<ToBoard, Malformed> {
        let broken = |reason| Err(Malformed::Broken { reason });
        match frame {
            Frame::Short(command, data) => match (command & 0xF0, command, data.as_slice()) {
                (ANALOG_MESSAGE, _, [lsb, msb]) => Ok(ToBoard::AnalogWrite {
                    pin: command & 0x0F,
                    value: u32::from(u14(*lsb, *msb)),
                }),
                (REPORT_ANALOG, _, [on]) => Ok(ToBoard::ReportAnalog {
                    channel: command & 0x0F,
                    enable: *on != 0,
                }),
                (REPORT_DIGITAL, _, [on]) => Ok(ToBoard::ReportDigital {
                    port: command & 0x0F,
                    enable: *on != 0,
                }),
                (_, SET_PIN_MODE, [pin, mode]) => Ok(ToBoard::SetPinMode {
                    pin: *pin,
                    mode: *mode,
                }),
                (_, SET_DIGITAL_PIN_VALUE, [pin, high]) => Ok(ToBoard::SetDigital {
                    pin: *pin,
                    high: *high != 0,
                }),
                (_, PROTOCOL_VERSION, []) => Ok(ToBoard::QueryVersion),
                (_, SYSTEM_RESET, []) => Ok(ToBoard::Reset),
                _ => broken("a message a host does not send"),
            },
            Frame::Sysex(command, body) => match (command, body.as_slice()) {
                (REPORT_FIRMWARE, []) => Ok(ToBoard::QueryFirmware),
                (CAPABILITY_QUERY, []) => Ok(ToBoard::QueryCapabilities),
                (ANALOG_MAPPING_QUERY, []) => Ok(ToBoard::QueryAnalogMapping),
                (PIN_STATE_QUERY, [pin]) => Ok(ToBoard::QueryPinState { pin: *pin }),
                (SAMPLING_INTERVAL, [lsb, msb]) => Ok(ToBoard::SamplingInterval {
                    ms: u14(*lsb, *msb),
                }),
                (EXTENDED_ANALOG, [pin, value @ ..]) if !value.is_empty() && value.len() <= 4 => {
                    Ok(ToBoard::AnalogWrite {
                        pin: *pin,
                        value: value
                            .iter()
                            .enumerate()
                            .map(|(i, b)| u32::from(*b) << (7 * i))
                            .sum(),
                    })
                }
                _ => broken("a SysEx a host does not send"),
            },
        }
    }

    fn write(&self, out: &mut BytesMut) {
        match self {
            ToBoard::QueryVersion => out.put_u8(PROTOCOL_VERSION),
            ToBoard::QueryFirmware => sysex(out, REPORT_FIRMWARE, |_| {}),
            ToBoard::QueryCapabilities => sysex(out, CAPABILITY_QUERY, |_| {}),
            ToBoard::QueryAnalogMapping => sysex(out, ANALOG_MAPPING_QUERY, |_| {}),
            ToBoard::QueryPinState { pin } => {
                sysex(out, PIN_STATE_QUERY, |out| out.put_u8(pin & 0x7F));
            }
            ToBoard::SetPinMode { pin, mode } => {
                out.put_slice(&[SET_PIN_MODE, pin & 0x7F, mode & 0x7F]);
            }
            ToBoard::SetDigital { pin, high } => {
                out.put_slice(&[SET_DIGITAL_PIN_VALUE, pin & 0x7F, u8::from(*high)]);
            }
            ToBoard::AnalogWrite { pin, value } if *pin < 16 && *value < 1 << 14 => {
                out.put_u8(ANALOG_MESSAGE | pin);
                put_7bit(out, *value, 2);
            }
            ToBoard::AnalogWrite { pin, value } => sysex(out, EXTENDED_ANALOG, |out| {
                out.put_u8(pin & 0x7F);
                let n = (1..=4).find(|n| *value < 1 << (7 * n)).unwrap_or(4);
                put_7bit(out, *value, n);
            }),
            ToBoard::ReportAnalog { channel, enable } => {
                out.put_slice(&[REPORT_ANALOG | (channel & 0x0F), u8::from(*enable)]);
            }
            ToBoard::ReportDigital { port, enable } => {
                out.put_slice(&[REPORT_DIGITAL | (port & 0x0F), u8::from(*enable)]);
            }
            ToBoard::SamplingInterval { ms } => sysex(out, SAMPLING_INTERVAL, |out| {
                put_7bit(out, u32::from(*ms), 2);
            }),
            ToBoard::Reset => out.put_u8(SYSTEM_RESET),
        }
    }
}

/// Writes a SysEx frame of `command` whose body `fill` writes.
fn sysex(out: &mut BytesMut, command: u8, fill: impl FnOnce(&mut BytesMut)) {
    out.put_slice(&[START_SYSEX, command]);
    fill(out);
    out.put_u8(END_SYSEX);
}

/// The node's end of a Firmata link: reads [`FromBoard`], writes [`ToBoard`].
#[derive(Debug, Default)]
pub struct HostSide {
    framer: Framer,
}

/// A board emulator's end: reads [`ToBoard`], writes [`FromBoard`].
#[derive(Debug, Default)]
pub struct BoardSide {
    framer: Framer,
}

impl Decoder for HostSide {
    type Item = Result<FromBoard, Malformed>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        Ok(self
            .framer
            .next(buf, 2)
            .map(|frame| frame.and_then(FromBoard::read)))
    }
}

impl Encoder<&ToBoard> for HostSide {
    type Error = std::io::Error;

    fn encode(&mut self, item: &ToBoard, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.write(dst);
        Ok(())
    }
}

impl Decoder for BoardSide {
    type Item = Result<ToBoard, Malformed>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        Ok(self
            .framer
            .next(buf, 0)
            .map(|frame| frame.and_then(ToBoard::read)))
    }
}

impl Encoder<&FromBoard> for BoardSide {
    type Error = std::io::Error;

    fn encode(&mut self, item: &FromBoard, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.write(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board_says(messages: &[FromBoard]) -> BytesMut {
        let mut wire = BytesMut::new();
        let mut board = BoardSide::default();
        for m in messages {
            board.encode(m, &mut wire).unwrap();
        }
        wire
    }

    fn host_reads(wire: &mut BytesMut) -> Vec<Result<FromBoard, Malformed>> {
        let mut host = HostSide::default();
        let mut out = Vec::new();
        while let Some(item) = host.decode(wire).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn what_a_board_says_reads_back() {
        let said = vec![
            FromBoard::Version { major: 2, minor: 5 },
            FromBoard::Firmware {
                major: 2,
                minor: 5,
                name: "StandardFirmata.ino".into(),
            },
            FromBoard::Capabilities(vec![
                vec![],
                vec![(mode::INPUT, 1), (mode::OUTPUT, 1), (mode::PWM, 8)],
                vec![(mode::ANALOG, 10)],
            ]),
            FromBoard::AnalogMapping(vec![None, None, Some(0)]),
            FromBoard::DigitalPort {
                port: 1,
                pins: 0b1000_0101,
            },
            FromBoard::Analog {
                channel: 3,
                value: 1023,
            },
            FromBoard::PinState {
                pin: 9,
                mode: mode::PWM,
                state: 200,
            },
            FromBoard::Text("hello".into()),
        ];
        let mut wire = board_says(&said);
        let read: Vec<FromBoard> = host_reads(&mut wire)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, said);
        assert!(wire.is_empty());
    }

    #[test]
    fn what_a_host_says_reads_back() {
        let told = vec![
            ToBoard::QueryVersion,
            ToBoard::QueryFirmware,
            ToBoard::QueryCapabilities,
            ToBoard::QueryAnalogMapping,
            ToBoard::QueryPinState { pin: 4 },
            ToBoard::SetPinMode {
                pin: 13,
                mode: mode::OUTPUT,
            },
            ToBoard::SetDigital {
                pin: 13,
                high: true,
            },
            ToBoard::AnalogWrite { pin: 9, value: 128 },
            ToBoard::AnalogWrite {
                pin: 40,
                value: 70_000,
            },
            ToBoard::ReportAnalog {
                channel: 0,
                enable: true,
            },
            ToBoard::ReportDigital {
                port: 1,
                enable: false,
            },
            ToBoard::SamplingInterval { ms: 19 },
            ToBoard::Reset,
        ];
        let mut wire = BytesMut::new();
        let mut host = HostSide::default();
        for t in &told {
            host.encode(t, &mut wire).unwrap();
        }
        let mut board = BoardSide::default();
        let mut read = Vec::new();
        while let Some(item) = board.decode(&mut wire).unwrap() {
            read.push(item.unwrap());
        }
        assert_eq!(read, told);
    }

    #[test]
    fn garbage_is_skipped_and_the_stream_resynchronises() {
        let mut wire = BytesMut::from(&[0x01, 0x02, 0x90][..]);
        // A digital message cut short by an analog one, then a SysEx cut by a version report.
        wire.extend_from_slice(&[0xE1, 0x10, 0x01, 0xF0, 0x79, 0x02, 0xF9, 0x02, 0x05]);
        let read = host_reads(&mut wire);
        assert_eq!(
            read,
            vec![
                Err(Malformed::Stray { skipped: 2 }),
                Err(Malformed::Broken {
                    reason: "a message cut short by a command byte"
                }),
                Ok(FromBoard::Analog {
                    channel: 1,
                    value: 0x90
                }),
                Err(Malformed::Broken {
                    reason: "a SysEx cut short by a command byte"
                }),
                Ok(FromBoard::Version { major: 2, minor: 5 }),
            ]
        );
    }

    #[test]
    fn frames_split_anywhere_read_the_same() {
        let said = vec![
            FromBoard::Firmware {
                major: 2,
                minor: 5,
                name: "x".into(),
            },
            FromBoard::Analog {
                channel: 0,
                value: 512,
            },
        ];
        let whole = board_says(&said);
        for cut in 0..whole.len() {
            let mut host = HostSide::default();
            let mut wire = BytesMut::from(&whole[..cut]);
            let mut read = Vec::new();
            while let Some(item) = host.decode(&mut wire).unwrap() {
                read.push(item.unwrap());
            }
            wire.extend_from_slice(&whole[cut..]);
            while let Some(item) = host.decode(&mut wire).unwrap() {
                read.push(item.unwrap());
            }
            assert_eq!(read, said, "cut at {cut}");
        }
    }

    #[test]
    fn an_endless_sysex_is_dropped_whole() {
        let mut wire = BytesMut::from(&[START_SYSEX, STRING_DATA][..]);
        wire.extend_from_slice(&vec![0x41; MAX_SYSEX + 5]);
        let mut host = HostSide::default();
        assert!(matches!(
            host.decode(&mut wire).unwrap(),
            Some(Err(Malformed::TooLong { .. }))
        ));
        wire.extend_from_slice(&[0x41, 0x41, END_SYSEX, 0xE0, 0x01, 0x00]);
        assert_eq!(
            host.decode(&mut wire).unwrap(),
            Some(Ok(FromBoard::Analog {
                channel: 0,
                value: 1
            }))
        );
    }
}
