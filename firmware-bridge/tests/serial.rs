//! Serial devices over real pseudo-terminals (`tokio_serial::SerialStream::pair`): the node's
//! side runs `SerialDevice` on one end, a device emulator speaks the protocol on the other.
//! Unplugging drops the emulator's end; replugging hands the opener a new pair, as a
//! reappearing `/dev/ttyACM0` would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use roost_firmware_bridge::device::Update;
use roost_firmware_bridge::entity::{Kind, State};
use roost_firmware_bridge::firmata::{self, mode, FromBoard, ToBoard};
use roost_firmware_bridge::jsonl::{self, DeviceMessage, NodeMessage, Value};
use roost_firmware_bridge::serial::{Event, Protocol, SerialDevice, SerialEntity, SerialSpec};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_serial::SerialStream;
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// Ports the node may open: each open takes the next plugged-in one, or fails as an
/// unplugged device does.
#[derive(Clone, Default)]
struct Plug(Arc<Mutex<Vec<SerialStream>>>);

impl Plug {
    /// Plugs a new device in; returns the emulator's end.
    fn plug(&self) -> SerialStream {
        let (emulator, node) = SerialStream::pair().expect("a pseudo-terminal pair");
        self.0.lock().expect("plug").push(node);
        emulator
    }

    fn opener(&self) -> impl Fn(&str, u32) -> std::io::Result<SerialStream> + Send + 'static {
        let ports = self.0.clone();
        move |_, _| {
            ports
                .lock()
                .expect("plug")
                .pop()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "unplugged"))
        }
    }
}

fn entity(id: &str, kind: Kind, pin: u8) -> SerialEntity {
    SerialEntity {
        id: id.into(),
        kind,
        pin,
        pulse: Duration::from_millis(30),
    }
}

/// Starts a device on the plug's ports with `entities`; returns it, its events and the token
/// that stops it.
fn start(
    plug: &Plug,
    protocol: Protocol,
    entities: Vec<SerialEntity>,
) -> (
    SerialDevice,
    mpsc::UnboundedReceiver<Event>,
    CancellationToken,
) {
    let (tx, events) = mpsc::unbounded_channel();
    let token = CancellationToken::new();
    let device = SerialDevice::start(
        SerialSpec {
            id: "board".into(),
            port: "/dev/ttyACM0".into(),
            baud: 115_200,
            protocol,
            entities,
        },
        plug.opener(),
        tx,
        token.clone(),
    )
    .expect("started on the test's runtime");
    (device, events, token)
}

/// The next event matching `want`, skipping others.
async fn next(events: &mut mpsc::UnboundedReceiver<Event>, want: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("the device task runs");
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("the event arrives in time")
}

fn state_of(event: &Event, entity: &str) -> Option<State> {
    match event {
        Event::State(Update {
            entity: e, state, ..
        }) if e == entity => Some(*state),
        _ => None,
    }
}

fn availability(event: &Event) -> Option<bool> {
    match event {
        Event::Available { online, .. } => Some(*online),
        _ => None,
    }
}

struct JsonEmulator {
    frames: FramedRead<ReadHalf<SerialStream>, jsonl::DeviceSide>,
    write: WriteHalf<SerialStream>,
}

impl JsonEmulator {
    fn new(port: SerialStream) -> JsonEmulator {
        let (read, write) = tokio::io::split(port);
        JsonEmulator {
            frames: FramedRead::new(read, jsonl::DeviceSide::default()),
            write,
        }
    }

    async fn read(&mut self) -> NodeMessage {
        tokio::time::timeout(WAIT, self.frames.next())
            .await
            .expect("the node writes in time")
            .expect("the port is open")
            .expect("no I/O error")
            .expect("the node writes well-formed lines")
    }

    async fn say(&mut self, message: DeviceMessage) {
        let mut out = BytesMut::new();
        jsonl::DeviceSide::default()
            .encode(&message, &mut out)
            .expect("encodes");
        self.write.write_all(&out).await.expect("written");
    }
}

#[tokio::test]
async fn a_json_device_reports_obeys_and_survives_unplugging() {
    let plug = Plug::default();
    let first = plug.plug();
    let (device, mut events, token) = start(
        &plug,
        Protocol::JsonLines,
        vec![
            entity("pump", Kind::Switch, 0),
            entity("soil", Kind::Sensor, 0),
            entity("lamp", Kind::Light, 0),
        ],
    );
    let mut emu = JsonEmulator::new(first);
    assert_eq!(
        availability(&next(&mut events, |e| availability(e).is_some()).await),
        Some(true)
    );
    assert_eq!(emu.read().await, NodeMessage::Query);
    // A hello before any state is a board that reset when its port opened, and missed the
    // query: it is asked again.
    emu.say(DeviceMessage::Hello {
        firmware: "garden 1".into(),
    })
    .await;
    assert_eq!(emu.read().await, NodeMessage::Query);
    emu.say(DeviceMessage::State {
        channel: "soil".into(),
        value: Value::Number(41.5),
    })
    .await;
    let soil = next(&mut events, |e| state_of(e, "soil").is_some()).await;
    assert_eq!(state_of(&soil, "soil"), Some(State::Number(41.5)));

    // Garbage from the device is reported and skipped; the link goes on.
    emu.write.write_all(b"{broken\n").await.expect("written");
    assert!(matches!(
        next(&mut events, |e| matches!(e, Event::Malformed { .. })).await,
        Event::Malformed { .. }
    ));

    device.command("pump", b"ON").expect("a valid command");
    assert_eq!(
        emu.read().await,
        NodeMessage::Set {
            channel: "pump".into(),
            value: Value::Bool(true)
        }
    );
    emu.say(DeviceMessage::State {
        channel: "pump".into(),
        value: Value::Bool(true),
    })
    .await;
    assert_eq!(
        state_of(
            &next(&mut events, |e| state_of(e, "pump").is_some()).await,
            "pump"
        ),
        Some(State::OnOff(true))
    );
    device
        .command("lamp", br#"{"state":"ON","brightness":64}"#)
        .expect("a valid command");
    assert_eq!(
        emu.read().await,
        NodeMessage::Set {
            channel: "lamp".into(),
            value: Value::Number(64.0)
        }
    );
    let refused = device
        .command("lamp", br#"{"brightness":999}"#)
        .unwrap_err();
    assert_eq!(refused.label(), "out_of_range");
    assert_eq!(
        device.command("fan", b"ON").unwrap_err().label(),
        "unknown_entity"
    );

    // Unplugged: unavailable. Plugged back in: available again, and asked for its state.
    drop(emu);
    assert_eq!(
        availability(&next(&mut events, |e| availability(e).is_some()).await),
        Some(false)
    );
    // A command while it is away is dropped, not replayed when it is back.
    device.command("pump", b"OFF").expect("a valid command");
    let second = plug.plug();
    assert_eq!(
        availability(&next(&mut events, |e| availability(e).is_some()).await),
        Some(true)
    );
    let mut emu = JsonEmulator::new(second);
    assert_eq!(emu.read().await, NodeMessage::Query);
    device.command("pump", b"ON").expect("a valid command");
    assert_eq!(
        emu.read().await,
        NodeMessage::Set {
            channel: "pump".into(),
            value: Value::Bool(true)
        }
    );
    token.cancel();
}

/// What a board says, as bytes.
fn board_says(message: FromBoard) -> BytesMut {
    let mut out = BytesMut::new();
    firmata::BoardSide::default()
        .encode(&message, &mut out)
        .expect("encodes");
    out
}

/// The next frame the node sends the board.
async fn read_frame(
    frames: &mut FramedRead<ReadHalf<SerialStream>, firmata::BoardSide>,
) -> ToBoard {
    tokio::time::timeout(WAIT, frames.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("no I/O error")
        .expect("well-formed")
}

#[tokio::test]
async fn a_firmata_board_is_set_up_from_its_capabilities_and_driven() {
    let plug = Plug::default();
    let port = plug.plug();
    let (device, mut events, token) = start(
        &plug,
        Protocol::Firmata,
        vec![
            entity("relay", Kind::Switch, 13),
            entity("door", Kind::BinarySensor, 2),
            entity("dimmer", Kind::Light, 9),
            entity("light_level", Kind::Sensor, 14),
            entity("bell", Kind::Button, 7),
            // Pin 3 cannot do PWM on this board: left unset, with a log line.
            entity("bad", Kind::Light, 3),
        ],
    );
    let (read, mut write) = tokio::io::split(port);
    let mut frames = FramedRead::new(read, firmata::BoardSide::default());
    assert_eq!(read_frame(&mut frames).await, ToBoard::QueryFirmware);
    assert_eq!(read_frame(&mut frames).await, ToBoard::QueryCapabilities);
    assert_eq!(read_frame(&mut frames).await, ToBoard::QueryAnalogMapping);
    // An Uno-like board: pins 0-19; 3 digital only here; 9 PWM; 14 analog (A0).
    let capabilities: Vec<Vec<(u8, u8)>> = (0..20u8)
        .map(|pin| match pin {
            9 => vec![(mode::INPUT, 1), (mode::OUTPUT, 1), (mode::PWM, 8)],
            14 => vec![(mode::INPUT, 1), (mode::OUTPUT, 1), (mode::ANALOG, 10)],
            _ => vec![(mode::INPUT, 1), (mode::OUTPUT, 1)],
        })
        .collect();
    let mapping: Vec<Option<u8>> = (0..20u8).map(|pin| (pin >= 14).then(|| pin - 14)).collect();
    let mut hello = board_says(FromBoard::Firmware {
        major: 2,
        minor: 5,
        name: "StandardFirmata.ino".into(),
    });
    hello.extend_from_slice(&board_says(FromBoard::Capabilities(capabilities)));
    hello.extend_from_slice(&board_says(FromBoard::AnalogMapping(mapping)));
    write.write_all(&hello).await.expect("written");

    // The firmware report (also what a board sends by itself after a reset on open) makes
    // the node ask for the setup once more; then the pins are set up from the capabilities.
    let mut setup = Vec::new();
    for _ in 0..13 {
        setup.push(read_frame(&mut frames).await);
    }
    assert_eq!(
        setup,
        vec![
            ToBoard::QueryCapabilities,
            ToBoard::QueryAnalogMapping,
            ToBoard::SamplingInterval { ms: 500 },
            ToBoard::SetPinMode {
                pin: 13,
                mode: mode::OUTPUT
            },
            ToBoard::SetDigital {
                pin: 13,
                high: false
            },
            ToBoard::SetPinMode {
                pin: 2,
                mode: mode::INPUT
            },
            ToBoard::ReportDigital {
                port: 0,
                enable: true
            },
            ToBoard::SetPinMode {
                pin: 9,
                mode: mode::PWM
            },
            ToBoard::AnalogWrite { pin: 9, value: 0 },
            ToBoard::SetPinMode {
                pin: 14,
                mode: mode::ANALOG
            },
            ToBoard::SetPinMode {
                pin: 7,
                mode: mode::OUTPUT
            },
            ToBoard::SetDigital {
                pin: 7,
                high: false
            },
            ToBoard::ReportAnalog {
                channel: 0,
                enable: true
            },
        ]
    );
    // Outputs are reported off once set up (setting a pin's mode drives it low).
    assert_eq!(
        state_of(
            &next(&mut events, |e| state_of(e, "relay").is_some()).await,
            "relay"
        ),
        Some(State::OnOff(false))
    );

    let mut readings = board_says(FromBoard::DigitalPort {
        port: 0,
        pins: 0b0000_0100,
    });
    readings.extend_from_slice(&board_says(FromBoard::Analog {
        channel: 0,
        value: 612,
    }));
    write.write_all(&readings).await.expect("written");
    assert_eq!(
        state_of(
            &next(&mut events, |e| state_of(e, "door").is_some()).await,
            "door"
        ),
        Some(State::OnOff(true))
    );
    assert_eq!(
        state_of(
            &next(&mut events, |e| state_of(e, "light_level").is_some()).await,
            "light_level"
        ),
        Some(State::Number(612.0))
    );

    device.command("relay", b"ON").expect("valid");
    assert_eq!(
        read_frame(&mut frames).await,
        ToBoard::SetDigital {
            pin: 13,
            high: true
        }
    );
    device
        .command("dimmer", br#"{"brightness":128}"#)
        .expect("valid");
    assert_eq!(
        read_frame(&mut frames).await,
        ToBoard::AnalogWrite { pin: 9, value: 128 }
    );
    device.command("bell", b"PRESS").expect("valid");
    assert_eq!(
        read_frame(&mut frames).await,
        ToBoard::SetDigital { pin: 7, high: true }
    );
    assert_eq!(
        read_frame(&mut frames).await,
        ToBoard::SetDigital {
            pin: 7,
            high: false
        }
    );
    let bell = next(&mut events, |e| {
        state_of(e, "bell") == Some(State::OnOff(false))
    })
    .await;
    assert_eq!(state_of(&bell, "bell"), Some(State::OnOff(false)));
    // The entity whose pin could not be set up gets nothing: the next frame is the relay's.
    device.command("bad", b"ON").expect("a valid command");
    device.command("relay", b"OFF").expect("valid");
    assert_eq!(
        read_frame(&mut frames).await,
        ToBoard::SetDigital {
            pin: 13,
            high: false
        }
    );
    token.cancel();
}
