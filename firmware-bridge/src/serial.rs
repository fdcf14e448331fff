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
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::codec::Malformed;
use crate::device::{DeviceError, Update};
use crate::entity::{parse_command, Command, Kind, State};
use crate::firmata::{self, mode, FromBoard, ToBoard};
use crate::jsonl::{self, DeviceMessage, NodeMessage, Value};

/// Reopening a port: the first wait, and the cap it doubles up to.
const REOPEN_MIN: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(5);

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

/// A handle on one serial device's task; cheap to clone.
#[derive(Clone)]
pub struct SerialDevice {
    spec: std::sync::Arc<SerialSpec>,
    commands: mpsc::Sender<(String, Command)>,
}

impl SerialDevice {
    /// Starts the device's task on the current tokio runtime; it runs until `token` is
    /// cancelled, opening `spec.port` with `open` (a real port, or a test's pseudo-terminal).
    pub fn start<P, O>(
        spec: SerialSpec,
        open: O,
        events: mpsc::UnboundedSender<Event>,
        token: CancellationToken,
    ) -> SerialDevice
    where
        P: AsyncRead + AsyncWrite + Send + 'static,
        O: Fn(&str, u32) -> std::io::Result<P> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(64);
        let spec = std::sync::Arc::new(spec);
        tokio::spawn(run(spec.clone(), open, events, rx, token));
        SerialDevice { spec, commands: tx }
    }

    /// Checks `payload` as a command for `entity` and queues it for the device. Fails when the
    /// entity is unknown or the payload does not fit; a device that is unplugged drops it
    /// (its state stays what the device last said).
    pub fn command(&self, entity: &str, payload: &[u8]) -> Result<(), DeviceError> {
        let Some(spec) = self.spec.entities.iter().find(|e| e.id == entity) else {
            return Err(DeviceError::UnknownEntity {
                device: self.spec.id.clone(),
                entity: entity.to_owned(),
            });
        };
        let command = parse_command(spec.kind, payload)?;
        // A full queue means the device is not keeping up; the command is dropped like one
        // sent while it is unplugged.
        let _ = self.commands.try_send((entity.to_owned(), command));
        Ok(())
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
                wait = REOPEN_MIN;
                last_error.clear();
                tracing::info!(device = %spec.id, port = %spec.port, "serial device connected");
                let _ = events.send(Event::Available {
                    device: spec.id.clone(),
                    online: true,
                });
                let ended = tokio::select! {
                    () = token.cancelled() => return,
                    ended = serve(&spec, port, &events, &mut commands) => ended,
                };
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
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(REOPEN_MAX);
    }
}

/// Talks to an open port until it fails; returns why.
async fn serve<P: AsyncRead + AsyncWrite>(
    spec: &SerialSpec,
    port: P,
    events: &mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::Receiver<(String, Command)>,
) -> String {
    let (read, mut write) = tokio::io::split(port);
    let mut link = Link::new(spec);
    let hello = link.hello();
    if let Err(e) = write.write_all(&hello).await {
        return e.to_string();
    }
    match spec.protocol {
        Protocol::JsonLines => {
            let mut frames = FramedRead::new(read, jsonl::NodeSide::default());
            loop {
                tokio::select! {
                    frame = frames.next() => match frame {
                        Some(Ok(Ok(message))) => link.on_json(message, events),
                        Some(Ok(Err(error))) => link.malformed(error, events),
                        Some(Err(e)) => return e.to_string(),
                        None => return "the port closed".into(),
                    },
                    command = commands.recv() => {
                        let Some((entity, command)) = command else { return "stopped".into() };
                        let bytes = link.command_bytes(&entity, command, events);
                        if let Err(e) = write.write_all(&bytes).await {
                            return e.to_string();
                        }
                    }
                }
            }
        }
        Protocol::Firmata => {
            let mut frames = FramedRead::new(read, firmata::HostSide::default());
            // Buttons pressed and when their pulse ends (a board has no timer of its own).
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
                        let due: Vec<String> = releases
                            .iter()
                            .filter(|(_, at)| *at <= now)
                            .map(|(entity, _)| entity.clone())
                            .collect();
                        releases.retain(|(_, at)| *at > now);
                        let mut out = BytesMut::new();
                        for entity in due {
                            out.extend_from_slice(&link.command_bytes(&entity, Command::Set(false), events));
                        }
                        out
                    }
                    frame = frames.next() => match frame {
                        Some(Ok(Ok(message))) => link.on_board(message, events),
                        Some(Ok(Err(error))) => {
                            link.malformed(error, events);
                            BytesMut::new()
                        }
                        Some(Err(e)) => return e.to_string(),
                        None => return "the port closed".into(),
                    },
                    command = commands.recv() => {
                        let Some((entity, command)) = command else { return "stopped".into() };
                        if let (Command::Press, Some(spec)) = (command, link.entity(&entity)) {
                            releases.push((entity.clone(), tokio::time::Instant::now() + spec.pulse));
                        }
                        link.command_bytes(&entity, command, events)
                    }
                };
                if !reply.is_empty() {
                    if let Err(e) = write.write_all(&reply).await {
                        return e.to_string();
                    }
                }
            }
        }
    }
}

/// What one open link knows: the entities' last states, and (Firmata) the board's pins.
struct Link<'a> {
    spec: &'a SerialSpec,
    /// Last state per entity, for toggles and lights.
    states: HashMap<String, State>,
    /// Firmata: analog channel → pin, from the board's mapping.
    analog_pins: HashMap<u8, u8>,
    /// Firmata: the last level of each digital port's pins.
    ports: HashMap<u8, u8>,
}

impl<'a> Link<'a> {
    fn new(spec: &'a SerialSpec) -> Link<'a> {
        Link {
            spec,
            states: HashMap::new(),
            analog_pins: HashMap::new(),
            ports: HashMap::new(),
        }
    }

    /// What the node says first: a query (JSON), or the firmware, capability and analog
    /// mapping queries (Firmata), whose answers set the pins up.
    fn hello(&self) -> BytesMut {
        let mut out = BytesMut::new();
        match self.spec.protocol {
            Protocol::JsonLines => {
                let _ = jsonl::NodeSide::default().encode(&NodeMessage::Query, &mut out);
            }
            Protocol::Firmata => {
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

    /// A message of a JSON device.
    fn on_json(&mut self, message: DeviceMessage, events: &mpsc::UnboundedSender<Event>) {
        match message {
            DeviceMessage::Hello { firmware } => {
                tracing::info!(device = %self.spec.id, %firmware, "serial device says hello");
            }
            DeviceMessage::Error { message } => {
                tracing::warn!(device = %self.spec.id, %message, "serial device reports an error");
            }
            DeviceMessage::State { channel, value } => {
                let Some(entity) = self.entity(&channel) else {
                    tracing::debug!(device = %self.spec.id, %channel, "state of a channel not in the config");
                    return;
                };
                let state = match (entity.kind, value) {
                    (Kind::Light, Value::Number(n)) => State::Light {
                        on: n > 0.0,
                        brightness: n.clamp(0.0, 255.0) as u8,
                    },
                    (Kind::Light, Value::Bool(on)) => State::Light {
                        on,
                        brightness: self.brightness(&entity.id),
                    },
                    (Kind::Sensor, Value::Number(n)) => State::Number(n),
                    (_, Value::Bool(on)) => State::OnOff(on),
                    (_, Value::Number(n)) => State::OnOff(n != 0.0),
                };
                self.send(&entity.id, state, events);
            }
        }
    }

    fn brightness(&self, entity: &str) -> u8 {
        match self.states.get(entity) {
            Some(State::Light { brightness, .. }) => *brightness,
            _ => u8::MAX,
        }
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
            }
            FromBoard::Capabilities(pins) => {
                for entity in &self.spec.entities {
                    let wanted = match entity.kind {
                        Kind::Switch | Kind::Button => mode::OUTPUT,
                        Kind::Light => mode::PWM,
                        Kind::BinarySensor => mode::INPUT,
                        Kind::Sensor => mode::ANALOG,
                    };
                    let supported = pins
                        .get(usize::from(entity.pin))
                        .is_some_and(|modes| modes.iter().any(|(m, _)| *m == wanted));
                    if !supported {
                        tracing::warn!(device = %self.spec.id, entity = %entity.id, pin = entity.pin, kind = entity.kind.as_str(), "the board's pin cannot do this; entity left unset");
                        continue;
                    }
                    let _ = codec.encode(
                        &ToBoard::SetPinMode {
                            pin: entity.pin,
                            mode: wanted,
                        },
                        &mut out,
                    );
                    if entity.kind == Kind::BinarySensor {
                        let _ = codec.encode(
                            &ToBoard::ReportDigital {
                                port: entity.pin / 8,
                                enable: true,
                            },
                            &mut out,
                        );
                    }
                }
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
                if let Some(entity) = self
                    .spec
                    .entities
                    .iter()
                    .find(|e| e.kind == Kind::Sensor && e.pin == pin)
                {
                    self.send(&entity.id, State::Number(f64::from(value)), events);
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

    /// A command as bytes for the device; outputs report their new state at once (Firmata
    /// boards do not echo outputs; JSON devices confirm with `state`, which follows).
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
            Command::Light { on, brightness } => {
                on.unwrap_or(brightness.is_some_and(|b| b > 0) || self.is_on(entity))
            }
            Command::Press => true,
        };
        let brightness = match command {
            Command::Light {
                brightness: Some(b),
                ..
            } => b,
            _ => self.brightness(entity),
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
                let mut codec = firmata::HostSide::default();
                let frame = match spec.kind {
                    Kind::Light => ToBoard::AnalogWrite {
                        pin: spec.pin,
                        value: if on { u32::from(brightness) } else { 0 },
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
