//! Serial devices at run time: one task per port that opens it, speaks its protocol
//! (line-delimited JSON or Firmata), turns what the device says into entity [`Update`]s and
//! commands into frames, and survives unplugging: when the port fails, the device is marked
//! unavailable, and the port is reopened with capped, doubling backoff until it is back.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::codec::Malformed;
use crate::device::{DeviceError, Update};
use crate::entity::{parse_command, Command, Kind, State};
use crate::firmata::{self, mode, FromBoard, ToBoard};
use crate::jsonl::{self, DeviceMessage, NodeMessage, Value};

/// Reopening a port: the first wait, and the cap it doubles up to.
const REOPEN_MIN: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// How long a write may wait for the device to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a Firmata board samples its analog inputs (StandardFirmata's default is 19 ms).
const SAMPLING: Duration = Duration::from_millis(500);
/// How many times one link asks a board that reset on open for its setup again.
const SETUP_ASKS: u8 = 3;

/// The protocol a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Line-delimited JSON ([`jsonl`]).
    JsonLines,
    /// Firmata ([`firmata`]).
    Firmata,
}

/// One entity of a serial device.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialEntity {
    /// Its id, unique in the device; the channel name in line-delimited JSON.
    pub id: String,
    /// What it is.
    pub kind: Kind,
    /// Firmata: the board's pin (for a sensor, an analog pin such as 14 for A0 on an Uno).
    pub pin: u8,
    /// Buttons: how long a press holds the output on.
    pub pulse: Duration,
}

/// One serial device.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialSpec {
    /// Its id, unique on the node.
    pub id: String,
    /// The port's path (`/dev/ttyACM0`, or a stable `/dev/serial/by-id/...` link).
    pub port: String,
    /// Baud rate.
    pub baud: u32,
    /// What it speaks.
    pub protocol: Protocol,
    /// Its entities.
    pub entities: Vec<SerialEntity>,
}

/// What the serial side reports besides entity states.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An entity's state.
    State(Update),
    /// The device's port opened (`true`) or failed (`false`).
    Available {
        /// The device.
        device: String,
        /// Whether it can be reached now.
        online: bool,
    },
    /// Input the codec could not read, skipped (the node logs and counts it).
    Malformed {
        /// The device.
        device: String,
        /// What was wrong.
        error: Malformed,
    },
}

/// Opens a real serial port at `baud`, 8N1 with no flow control (what both protocols'
/// boards use); the opener [`SerialDevice::start`] takes on a node.
pub fn open_port(path: &str, baud: u32) -> std::io::Result<tokio_serial::SerialStream> {
    let builder = tokio_serial::new(path, baud);
    Ok(tokio_serial::SerialStream::open(&builder)?)
}

/// A handle on one serial device's task; cheap to clone.
#[derive(Clone)]
pub struct SerialDevice {
    spec: std::sync::Arc<SerialSpec>,
    commands: mpsc::Sender<(String, Command)>,
}

impl SerialDevice {
    /// Starts the device's task on the current tokio runtime ([`DeviceError::NoRuntime`]
    /// without one); it runs until `token` is cancelled, opening `spec.port` with `open` (a
    /// real port, or a test's pseudo-terminal).
    pub fn start<P, O>(
        spec: SerialSpec,
        open: O,
        events: mpsc::UnboundedSender<Event>,
        token: CancellationToken,
    ) -> Result<SerialDevice, DeviceError>
    where
        P: AsyncRead + AsyncWrite + Send + 'static,
        O: Fn(&str, u32) -> std::io::Result<P> + Send + 'static,
    {
        let runtime = crate::device::runtime()?;
        let (tx, rx) = mpsc::channel(64);
        let spec = std::sync::Arc::new(spec);
        runtime.spawn(run(spec.clone(), open, events, rx, token));
        Ok(SerialDevice { spec, commands: tx })
    }

    /// Checks `payload` as a command for `entity` and queues it for the device. Fails when the
    /// entity is unknown, the payload does not fit, or the device is not keeping up (64
    /// commands queued). A device that is unplugged drops it
    /// with a log line (its state stays what the device last said); it is not replayed when
    /// the device comes back.
    pub fn command(&self, entity: &str, payload: &[u8]) -> Result<(), DeviceError> {
        let Some(spec) = self.spec.entities.iter().find(|e| e.id == entity) else {
            return Err(DeviceError::UnknownEntity {
                device: self.spec.id.clone(),
                entity: entity.to_owned(),
            });
        };
        let command = parse_command(spec.kind, payload)?;
        self.commands
            .try_send((entity.to_owned(), command))
            .map_err(|_| DeviceError::Busy(self.spec.id.clone()))
    }
}

/// Opens, serves and reopens the port until `token` is cancelled.
async fn run<P, O>(
    spec: std::sync::Arc<SerialSpec>,
    open: O,
    events: mpsc::UnboundedSender<Event>,
    mut commands: mpsc::Receiver<(String, Command)>,
    token: CancellationToken,
) where
    P: AsyncRead + AsyncWrite + Send + 'static,
    O: Fn(&str, u32) -> std::io::Result<P>,
{
    let mut wait = REOPEN_MIN;
    let mut last_error = String::new();
    loop {
        match open(&spec.port, spec.baud) {
            Ok(port) => {
                last_error.clear();
                tracing::info!(device = %spec.id, port = %spec.port, "serial device connected");
                let _ = events.send(Event::Available {
                    device: spec.id.clone(),
                    online: true,
                });
                let (ended, heard) = tokio::select! {
                    () = token.cancelled() => return,
                    ended = serve(&spec, port, &events, &mut commands) => ended,
                };
                // Only a link that carried a frame resets the backoff: a port that opens and
                // fails at once (a device stuck in its bootloader) must not flap every 100 ms.
                if heard {
                    wait = REOPEN_MIN;
                }
                tracing::warn!(device = %spec.id, port = %spec.port, reason = %ended, "serial device lost; reopening");
                let _ = events.send(Event::Available {
                    device: spec.id.clone(),
                    online: false,
                });
            }
            Err(e) => {
                let error = e.to_string();
                if error != last_error {
                    tracing::warn!(device = %spec.id, port = %spec.port, %error, "cannot open serial port; retrying with backoff");
                    last_error = error;
                }
            }
        }
        let retry = tokio::time::sleep(wait);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = &mut retry => break,
                // Commands for a device that is away are dropped, not replayed when it is back
                // (a door opener pressed five times while unplugged must not fire five times).
                command = commands.recv() => match command {
                    Some((entity, _)) => tracing::info!(device = %spec.id, %entity, "command dropped: the device is unavailable"),
                    None => return,
                },
            }
        }
        wait = (wait * 2).min(REOPEN_MAX);
    }
}

/// Writes `bytes` to the device within [`WRITE_TIMEOUT`].
async fn send<W: AsyncWrite + Unpin>(write: &mut W, bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the device stopped reading".into()),
    }
}

/// Talks to an open port until it fails; returns why, and whether any frame arrived.
async fn serve<P: AsyncRead + AsyncWrite>(
    spec: &SerialSpec,
    port: P,
    events: &mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::Receiver<(String, Command)>,
) -> (String, bool) {
    let (read, mut write) = tokio::io::split(port);
    let mut link = Link::new(spec);
    if let Err(e) = send(&mut write, &link.hello()).await {
        return (e, false);
    }
    let mut heard = false;
    let codec = match spec.protocol {
        Protocol::JsonLines => NodeCodec::Json(jsonl::NodeSide::default()),
        Protocol::Firmata => NodeCodec::Board(firmata::HostSide::default()),
    };
    let mut frames = FramedRead::new(read, codec);
    // Buttons pressed on a Firmata board and when their pulse ends (a board has no timer).
    let mut releases: Vec<(String, tokio::time::Instant)> = Vec::new();
    loop {
        let next_release = releases.iter().map(|(_, at)| *at).min();
        let release = async {
            match next_release {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let reply = tokio::select! {
            () = release => {
                let now = tokio::time::Instant::now();
                let mut out = BytesMut::new();
                let (due, later): (Vec<_>, Vec<_>) = releases.drain(..).partition(|(_, at)| *at <= now);
                releases = later;
                for (entity, _) in due {
                    out.extend_from_slice(&link.command_bytes(&entity, Command::Set(false), events));
                }
                out
            }
            frame = frames.next() => match frame {
                Some(Ok(Ok(Frame::Json(message)))) => {
                    heard = true;
                    link.on_json(message, events)
                }
                Some(Ok(Ok(Frame::Board(message)))) => {
                    heard = true;
                    link.on_board(message, events)
                }
                Some(Ok(Err(error))) => {
                    link.malformed(error, events);
                    BytesMut::new()
                }
                Some(Err(e)) => return (e.to_string(), heard),
                None => return ("the port closed".into(), heard),
            },
            command = commands.recv() => {
                let Some((entity, command)) = command else { return ("stopped".into(), heard) };
                if let (Command::Press, Protocol::Firmata, Some(spec)) = (command, spec.protocol, link.entity(&entity)) {
                    // A new press restarts the pulse rather than ending early on the old timer.
                    releases.retain(|(e, _)| *e != entity);
                    releases.push((entity.clone(), tokio::time::Instant::now() + spec.pulse));
                }
                link.command_bytes(&entity, command, events)
            }
        };
        if let Err(e) = send(&mut write, &reply).await {
            return (e, heard);
        }
    }
}

/// A decoded frame of either protocol.
enum Frame {
    Json(DeviceMessage),
    Board(FromBoard),
}

/// The node's side of either protocol, as one decoder.
enum NodeCodec {
    Json(jsonl::NodeSide),
    Board(firmata::HostSide),
}

impl Decoder for NodeCodec {
    type Item = Result<Frame, Malformed>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        Ok(match self {
            NodeCodec::Json(codec) => codec.decode(buf)?.map(|item| item.map(Frame::Json)),
            NodeCodec::Board(codec) => codec.decode(buf)?.map(|item| item.map(Frame::Board)),
        })
    }
}

/// What one open link knows: the entities' last states, and (Firmata) the board's pins.
struct Link<'a> {
    spec: &'a SerialSpec,
    /// Last state per entity, for toggles and lights.
    states: HashMap<String, State>,
    /// Lights: the last brightness above 0, what `ON` turns a light back on at.
    levels: HashMap<String, u8>,
    /// JSON: whether the device was asked again after a `hello` that came before any state.
    asked_again: bool,
    /// Firmata: whether the capabilities arrived and the pins are set up.
    set_up: bool,
    /// Firmata: how many times this link asked for the setup.
    asks: u8,
    /// Firmata: the entities whose pin was set up, with a PWM pin's full-scale value.
    ready: HashMap<String, u32>,
    /// Firmata: analog channel -> pin, from the board's mapping.
    analog_pins: HashMap<u8, u8>,
    /// Firmata: the last level of each digital port's pins.
    ports: HashMap<u8, u8>,
}

impl<'a> Link<'a> {
    fn new(spec: &'a SerialSpec) -> Link<'a> {
        Link {
            spec,
            states: HashMap::new(),
            levels: HashMap::new(),
            asked_again: false,
            set_up: false,
            asks: 0,
            ready: HashMap::new(),
            analog_pins: HashMap::new(),
            ports: HashMap::new(),
        }
    }

    /// What the node says first: a query (JSON), or the firmware, capability and analog
    /// mapping queries (Firmata), whose answers set the pins up.
    fn hello(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        match self.spec.protocol {
            Protocol::JsonLines => {
                let _ = jsonl::NodeSide::default().encode(&NodeMessage::Query, &mut out);
            }
            Protocol::Firmata => {
                self.asks += 1;
                let mut codec = firmata::HostSide::default();
                for query in [
                    ToBoard::QueryFirmware,
                    ToBoard::QueryCapabilities,
                    ToBoard::QueryAnalogMapping,
                ] {
                    let _ = codec.encode(&query, &mut out);
                }
            }
        }
        out
    }

    fn entity(&self, id: &str) -> Option<&'a SerialEntity> {
        self.spec.entities.iter().find(|e| e.id == id)
    }

    fn send(&mut self, entity: &str, state: State, events: &mpsc::UnboundedSender<Event>) {
        if let State::Light { brightness, .. } = state {
            if brightness > 0 {
                self.levels.insert(entity.to_owned(), brightness);
            }
        }
        self.states.insert(entity.to_owned(), state);
        let _ = events.send(Event::State(Update {
            device: self.spec.id.clone(),
            entity: entity.to_owned(),
            state,
        }));
    }

    fn malformed(&self, error: Malformed, events: &mpsc::UnboundedSender<Event>) {
        let _ = events.send(Event::Malformed {
            device: self.spec.id.clone(),
            error,
        });
    }

    /// A message of a JSON device; returns what to send back.
    fn on_json(
        &mut self,
        message: DeviceMessage,
        events: &mpsc::UnboundedSender<Event>,
    ) -> BytesMut {
        match message {
            DeviceMessage::Hello { firmware } => {
                tracing::info!(device = %self.spec.id, %firmware, "serial device says hello");
                // A board that resets when its port opens misses the first query; a hello
                // before any state is that reset: ask once more.
                if self.states.is_empty() && !std::mem::replace(&mut self.asked_again, true) {
                    return self.hello();
                }
            }
            DeviceMessage::Error { message } => {
                tracing::warn!(device = %self.spec.id, %message, "serial device reports an error");
            }
            DeviceMessage::State { channel, value } => {
                let Some(entity) = self.entity(&channel) else {
                    tracing::debug!(device = %self.spec.id, %channel, "state of a channel not in the config");
                    return BytesMut::new();
                };
                let state = match (entity.kind, value) {
                    (Kind::Light, Value::Number(n)) if n > 0.0 => State::Light {
                        on: true,
                        brightness: n.clamp(1.0, 255.0) as u8,
                    },
                    (Kind::Light, Value::Number(_)) => State::Light {
                        on: false,
                        brightness: self.level(&entity.id),
                    },
                    (Kind::Light, Value::Bool(on)) => State::Light {
                        on,
                        brightness: self.level(&entity.id),
                    },
                    (Kind::Sensor, Value::Number(n)) => State::Number(n),
                    (_, Value::Bool(on)) => State::OnOff(on),
                    (_, Value::Number(n)) => State::OnOff(n != 0.0),
                };
                self.send(&entity.id, state, events);
            }
        }
        BytesMut::new()
    }

    /// A light's level to turn on at: its last above 0, or full.
    fn level(&self, entity: &str) -> u8 {
        self.levels.get(entity).copied().unwrap_or(u8::MAX)
    }

    fn is_on(&self, entity: &str) -> bool {
        matches!(
            self.states.get(entity),
            Some(State::OnOff(true) | State::Light { on: true, .. })
        )
    }

    /// A message of a Firmata board; returns what to send back (pin setup).
    fn on_board(&mut self, message: FromBoard, events: &mpsc::UnboundedSender<Event>) -> BytesMut {
        let mut out = BytesMut::new();
        let mut codec = firmata::HostSide::default();
        match message {
            FromBoard::Firmware { name, major, minor } => {
                tracing::info!(device = %self.spec.id, firmware = %name, major, minor, "Firmata board says hello");
                // StandardFirmata announces itself after a reset, and a reset on open eats
                // the queries sent before it: ask for the setup again (not for the firmware,
                // which would answer with this report once more).
                if !self.set_up && self.asks < SETUP_ASKS {
                    self.asks += 1;
                    for query in [ToBoard::QueryCapabilities, ToBoard::QueryAnalogMapping] {
                        let _ = codec.encode(&query, &mut out);
                    }
                }
            }
            FromBoard::Capabilities(pins) if !self.set_up => self.set_up(&pins, &mut out, events),
            FromBoard::Capabilities(_) => {
                tracing::debug!(device = %self.spec.id, "capabilities again; the pins are already set up");
            }
            FromBoard::AnalogMapping(pins) => {
                self.analog_pins = pins
                    .iter()
                    .enumerate()
                    .filter_map(|(pin, channel)| Some(((*channel)?, u8::try_from(pin).ok()?)))
                    .collect();
                for entity in self.spec.entities.iter().filter(|e| e.kind == Kind::Sensor) {
                    if let Some((&channel, _)) =
                        self.analog_pins.iter().find(|(_, p)| **p == entity.pin)
                    {
                        let _ = codec.encode(
                            &ToBoard::ReportAnalog {
                                channel,
                                enable: true,
                            },
                            &mut out,
                        );
                    }
                }
            }
            FromBoard::DigitalPort { port, pins } => {
                let before = self.ports.insert(port, pins);
                let inputs: Vec<&SerialEntity> = self
                    .spec
                    .entities
                    .iter()
                    .filter(|e| e.kind == Kind::BinarySensor && e.pin / 8 == port)
                    .collect();
                for entity in inputs {
                    let bit = 1 << (entity.pin % 8);
                    if before.is_none_or(|b| (b ^ pins) & bit != 0) {
                        self.send(&entity.id, State::OnOff(pins & bit != 0), events);
                    }
                }
            }
            FromBoard::Analog { channel, value } => {
                let Some(&pin) = self.analog_pins.get(&channel) else {
                    return out;
                };
                let Some(entity) = self
                    .spec
                    .entities
                    .iter()
                    .find(|e| e.kind == Kind::Sensor && e.pin == pin)
                else {
                    return out;
                };
                // A board reports every sample; only a new value is news.
                let state = State::Number(f64::from(value));
                if self.states.get(&entity.id) != Some(&state) {
                    self.send(&entity.id, state, events);
                }
            }
            FromBoard::Text(text) => {
                tracing::info!(device = %self.spec.id, %text, "Firmata board says");
            }
            FromBoard::Version { .. }
            | FromBoard::PinState { .. }
            | FromBoard::OtherSysex { .. } => {}
        }
        out
    }

    /// Sets every entity's pin up from the board's capabilities: its mode, reporting for
    /// inputs, and outputs driven off (and reported off: setting a pin's mode drives it low).
    fn set_up(
        &mut self,
        pins: &[Vec<(u8, u8)>],
        out: &mut BytesMut,
        events: &mpsc::UnboundedSender<Event>,
    ) {
        let mut codec = firmata::HostSide::default();
        self.set_up = true;
        self.ready.clear();
        let _ = codec.encode(
            &ToBoard::SamplingInterval {
                ms: u16::try_from(SAMPLING.as_millis()).unwrap_or(u16::MAX),
            },
            out,
        );
        for entity in &self.spec.entities {
            let wanted = match entity.kind {
                Kind::Switch | Kind::Button => mode::OUTPUT,
                Kind::Light => mode::PWM,
                Kind::BinarySensor => mode::INPUT,
                Kind::Sensor => mode::ANALOG,
            };
            let resolution = pins
                .get(usize::from(entity.pin))
                .and_then(|modes| modes.iter().find(|(m, _)| *m == wanted))
                .map(|(_, resolution)| *resolution);
            let Some(resolution) = resolution else {
                tracing::warn!(device = %self.spec.id, entity = %entity.id, pin = entity.pin, kind = entity.kind.as_str(), "the board's pin cannot do this; the entity is left out");
                continue;
            };
            let full_scale = (1u32 << resolution.clamp(1, 16)) - 1;
            self.ready.insert(entity.id.clone(), full_scale);
            let _ = codec.encode(
                &ToBoard::SetPinMode {
                    pin: entity.pin,
                    mode: wanted,
                },
                out,
            );
            match entity.kind {
                Kind::BinarySensor => {
                    let _ = codec.encode(
                        &ToBoard::ReportDigital {
                            port: entity.pin / 8,
                            enable: true,
                        },
                        out,
                    );
                }
                Kind::Switch | Kind::Button => {
                    let _ = codec.encode(
                        &ToBoard::SetDigital {
                            pin: entity.pin,
                            high: false,
                        },
                        out,
                    );
                    self.send(&entity.id, State::OnOff(false), events);
                }
                Kind::Light => {
                    let _ = codec.encode(
                        &ToBoard::AnalogWrite {
                            pin: entity.pin,
                            value: 0,
                        },
                        out,
                    );
                    let brightness = self.level(&entity.id);
                    self.send(
                        &entity.id,
                        State::Light {
                            on: false,
                            brightness,
                        },
                        events,
                    );
                }
                Kind::Sensor => {}
            }
        }
    }

    /// A command as bytes for the device; Firmata outputs report their new state at once
    /// (a board does not echo outputs; a JSON device confirms with `state`, which follows).
    fn command_bytes(
        &mut self,
        entity: &str,
        command: Command,
        events: &mpsc::UnboundedSender<Event>,
    ) -> BytesMut {
        let mut out = BytesMut::new();
        let Some(spec) = self.entity(entity) else {
            return out;
        };
        let on = match command {
            Command::Set(on) => on,
            Command::Toggle => !self.is_on(entity),
            Command::Light {
                brightness: Some(0),
                ..
            } => false,
            Command::Light { on, brightness } => {
                on.unwrap_or(brightness.is_some() || self.is_on(entity))
            }
            Command::Press => true,
        };
        let brightness = match command {
            Command::Light {
                brightness: Some(b),
                ..
            } if b > 0 => b,
            _ => self.level(entity),
        };
        match self.spec.protocol {
            Protocol::JsonLines => {
                let message = match (spec.kind, command) {
                    (Kind::Button, _) => NodeMessage::Press {
                        channel: spec.id.clone(),
                        ms: u32::try_from(spec.pulse.as_millis()).unwrap_or(u32::MAX),
                    },
                    (Kind::Light, _) => NodeMessage::Set {
                        channel: spec.id.clone(),
                        value: Value::Number(if on { f64::from(brightness) } else { 0.0 }),
                    },
                    _ => NodeMessage::Set {
                        channel: spec.id.clone(),
                        value: Value::Bool(on),
                    },
                };
                let _ = jsonl::NodeSide::default().encode(&message, &mut out);
            }
            Protocol::Firmata => {
                let Some(&full_scale) = self.ready.get(entity) else {
                    tracing::warn!(device = %self.spec.id, %entity, "command dropped: the entity's pin is not set up on the board");
                    return out;
                };
                let mut codec = firmata::HostSide::default();
                let frame = match spec.kind {
                    Kind::Light => ToBoard::AnalogWrite {
                        pin: spec.pin,
                        value: if on {
                            u32::from(brightness) * full_scale / 255
                        } else {
                            0
                        },
                    },
                    _ => ToBoard::SetDigital {
                        pin: spec.pin,
                        high: on,
                    },
                };
                let _ = codec.encode(&frame, &mut out);
                let state = match spec.kind {
                    Kind::Light => State::Light { on, brightness },
                    _ => State::OnOff(on),
                };
                self.send(entity, state, events);
            }
        }
        out
    }
}
