//! Devices through a running `roost`: serial devices emulated on real pseudo-terminals (one
//! per protocol), from a reading on the wire to the retained MQTT state and from an MQTT
//! command to the wire, unplugged and plugged back in without a restart of the node; GPIO
//! devices on the simulated backend driven through the simulation hook, with debouncing,
//! refused commands, and safe states at the stop.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use roost_firmware_bridge::firmata::{FromBoard, ToBoard};
use roost_firmware_bridge::jsonl::{DeviceMessage, NodeMessage, Value};
use roost_tests::serial::{firmata_board, firmata_bytes, json_device, json_line};
use roost_tests::state::Http;
use roost_tests::{mosquitto_pub, MosquittoSub, Node};

fn serial_device(id: &str, port: &Path, protocol: &str, entities: &str) -> String {
    format!(
        "[[devices]]\nid = \"{id}\"\nserial = {{ port = \"{}\", protocol = \"{protocol}\" }}\nentities = [\n{entities}\n]\n",
        port.display()
    )
}

/// Starts node `node` with one serial device on `port`, subscribes to the device's topics,
/// and waits for it to come online; returns the node, the device's topic root and the
/// subscription.
fn start_with_serial(
    node: &str,
    device: &str,
    port: &Path,
    protocol: &str,
    entities: &str,
) -> (Node, String, MosquittoSub) {
    let node = Node::builder(node)
        .config(&serial_device(device, port, protocol, entities))
        .start();
    let base = format!("roost/home/devices/{}/{device}", node.id);
    let mut sub = MosquittoSub::start(&node, &["-t", &format!("{base}/#"), "-q", "1"]);
    sub.expect_message(&format!("{base}/availability"), "online");
    (node, base, sub)
}

fn set(node: &Node, topic: &str, payload: &str) {
    mosquitto_pub(node, &["-t", topic, "-m", payload, "-q", "1"]);
}

#[test]
fn a_json_lines_device_reports_obeys_and_survives_unplugging() {
    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("ttyGARDEN");
    let emulator = json_device(&port);
    let (node, base, mut sub) = start_with_serial(
        "shed",
        "garden",
        &port,
        "json_lines",
        r#"{ id = "pump", kind = "switch" }, { id = "soil", kind = "sensor", unit = "%" }"#,
    );
    let (availability, pump, soil) = (
        format!("{base}/availability"),
        format!("{base}/pump/state"),
        format!("{base}/soil/state"),
    );
    emulator.expect(|m| *m == NodeMessage::Query, "the node's query");

    // A reading on the wire becomes the retained state.
    emulator.say(json_line(&DeviceMessage::State {
        channel: "soil".into(),
        value: Value::Number(41.5),
    }));
    sub.expect_message(&soil, "41.5");
    MosquittoSub::start(&node, &["-t", &soil]).expect_message(&soil, "41.5");

    // A command from MQTT reaches the wire; the device's confirmation is the state.
    set(&node, &format!("{base}/pump/set"), "ON");
    assert_eq!(
        emulator.expect(|m| matches!(m, NodeMessage::Set { .. }), "a set"),
        NodeMessage::Set {
            channel: "pump".into(),
            value: Value::Bool(true)
        }
    );
    emulator.say(json_line(&DeviceMessage::State {
        channel: "pump".into(),
        value: Value::Bool(true),
    }));
    sub.expect_message(&pump, "ON");

    // A bad payload is refused and never reaches the wire: the next set the device hears is
    // the valid one sent after it.
    set(&node, &format!("{base}/pump/set"), "maybe");
    set(&node, &format!("{base}/pump/set"), "OFF");
    assert_eq!(
        emulator.expect(|m| matches!(m, NodeMessage::Set { .. }), "a set"),
        NodeMessage::Set {
            channel: "pump".into(),
            value: Value::Bool(false)
        }
    );
    assert_eq!(
        node.metric(r#"roost_device_command_errors_total{reason="bad_payload"}"#),
        1.0
    );

    // Garbage from the device is skipped and counted; the link goes on.
    emulator.say(b"{broken\n".to_vec());
    emulator.say(json_line(&DeviceMessage::State {
        channel: "soil".into(),
        value: Value::Number(40.0),
    }));
    sub.expect_message(&soil, "40");
    assert_eq!(
        node.metric(r#"roost_serial_malformed_total{device="garden",reason="bad_json"}"#),
        1.0
    );

    // Unplugged: unavailable, and commands are refused as such (a bad one for what it is).
    let pid = node.pid();
    drop(emulator);
    sub.expect_message(&availability, "offline");
    set(&node, &format!("{base}/pump/set"), "ON");
    set(&node, &format!("{base}/pump/set"), "maybe");

    // Plugged back in: available again by itself, asked for its state, and obeying.
    let emulator = json_device(&port);
    sub.expect_message(&availability, "online");
    emulator.expect(
        |m| *m == NodeMessage::Query,
        "the node's query after the replug",
    );
    set(&node, &format!("{base}/pump/set"), "ON");
    assert_eq!(
        emulator.expect(|m| matches!(m, NodeMessage::Set { .. }), "a set"),
        NodeMessage::Set {
            channel: "pump".into(),
            value: Value::Bool(true)
        },
        "the command sent while unplugged is not replayed"
    );
    assert_eq!(node.pid(), pid, "the node was not restarted");
    assert_eq!(
        node.metric(r#"roost_device_command_errors_total{reason="unavailable"}"#),
        1.0
    );
    assert_eq!(
        node.metric(r#"roost_device_command_errors_total{reason="bad_payload"}"#),
        2.0
    );
    assert_eq!(
        node.metric(r#"roost_serial_disconnects_total{device="garden"}"#),
        1.0
    );
}

#[test]
fn a_firmata_board_is_set_up_reports_obeys_and_survives_unplugging() {
    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("ttyUNO");
    let board = firmata_board(&port);
    let (node, base, mut sub) = start_with_serial(
        "bench",
        "uno",
        &port,
        "firmata",
        r#"{ id = "relay", kind = "switch", pin = 13 },
  { id = "door", kind = "binary_sensor", pin = 2 },
  { id = "dimmer", kind = "light", pin = 9 },
  { id = "light_level", kind = "sensor", pin = 14 },
  { id = "bell", kind = "button", pin = 7, pulse = "100ms" },"#,
    );
    let topic = |entity: &str| format!("{base}/{entity}/state");
    let set_up = |board: &roost_tests::serial::Emulator<ToBoard>| {
        board.expect(|f| *f == ToBoard::QueryFirmware, "the firmware query");
        board.expect(
            |f| {
                *f == ToBoard::ReportAnalog {
                    channel: 0,
                    enable: true,
                }
            },
            "A0 reported, the last step of the setup",
        );
    };
    set_up(&board);
    sub.expect_message(&topic("relay"), "OFF");

    board.say(firmata_bytes(&FromBoard::DigitalPort {
        port: 0,
        pins: 0b0000_0100,
    }));
    board.say(firmata_bytes(&FromBoard::Analog {
        channel: 0,
        value: 612,
    }));
    sub.expect_message(&topic("door"), "ON");
    sub.expect_message(&topic("light_level"), "612");

    set(&node, &format!("{base}/relay/set"), "ON");
    board.expect(
        |f| {
            *f == ToBoard::SetDigital {
                pin: 13,
                high: true,
            }
        },
        "the relay's pin set",
    );
    sub.expect_message(&topic("relay"), "ON");
    set(
        &node,
        &format!("{base}/dimmer/set"),
        r#"{"state":"ON","brightness":128}"#,
    );
    board.expect(
        |f| *f == ToBoard::AnalogWrite { pin: 9, value: 128 },
        "the dimmer's PWM",
    );
    sub.expect_message(&topic("dimmer"), r#"{"state":"ON","brightness":128}"#);
    set(
        &node,
        &format!("{base}/dimmer/set"),
        r#"{"brightness":300}"#,
    );
    set(&node, &format!("{base}/bell/set"), "PRESS");
    assert_eq!(
        board.expect(
            |f| matches!(f, ToBoard::SetDigital { .. } | ToBoard::AnalogWrite { .. }),
            "the next output write"
        ),
        ToBoard::SetDigital { pin: 7, high: true },
        "the out-of-range brightness never reached the board"
    );
    board.expect(
        |f| {
            *f == ToBoard::SetDigital {
                pin: 7,
                high: false,
            }
        },
        "the end of the bell's pulse",
    );
    sub.expect_message(&topic("bell"), "ON");
    sub.expect_message(&topic("bell"), "OFF");
    assert_eq!(
        node.metric(r#"roost_device_command_errors_total{reason="out_of_range"}"#),
        1.0
    );

    drop(board);
    sub.expect_message(&format!("{base}/availability"), "offline");
    let board = firmata_board(&port);
    sub.expect_message(&format!("{base}/availability"), "online");
    set_up(&board);
    set(&node, &format!("{base}/relay/set"), "ON");
    board.expect(
        |f| {
            *f == ToBoard::SetDigital {
                pin: 13,
                high: true,
            }
        },
        "the relay's pin set after the replug",
    );
}

const HALL: &str = r#"[gpio]
backend = "simulated"

[[devices]]
id = "hall"
entities = [
  { id = "relay", kind = "switch", pin = 17, invert = true },
  { id = "dimmer", kind = "light", pin = 18 },
  { id = "door", kind = "binary_sensor", pin = 27, pull = "up", invert = true, debounce = "200ms" },
]
"#;

fn sim_pin(http: &mut Http, entity: &str) -> serde_json::Value {
    let (code, pin) = http
        .request("GET", &format!("/api/sim/hall/{entity}"), None)
        .unwrap();
    assert_eq!(code, 200, "{pin}");
    pin
}

#[test]
fn gpio_devices_follow_commands_refuse_bad_ones_and_stop_safe() {
    let mut node = Node::builder("hallway").config(HALL).start();
    let mut http = Http::connect(node.http).unwrap();
    let base = "roost/home/devices/hallway/hall";
    let mut sub = MosquittoSub::start(&node, &["-t", &format!("{base}/#"), "-q", "1"]);
    sub.expect_message(&format!("{base}/availability"), "online");
    // The relay starts in its safe state, off: its inverted pin is high.
    sub.expect_message(&format!("{base}/relay/state"), "OFF");
    assert_eq!(sim_pin(&mut http, "relay")["level"], true);

    set(&node, &format!("{base}/relay/set"), "ON");
    sub.expect_message(&format!("{base}/relay/state"), "ON");
    assert_eq!(sim_pin(&mut http, "relay")["level"], false);
    set(&node, &format!("{base}/dimmer/set"), r#"{"brightness":51}"#);
    sub.expect_message(
        &format!("{base}/dimmer/state"),
        r#"{"state":"ON","brightness":51}"#,
    );
    assert_eq!(sim_pin(&mut http, "dimmer")["duty"], 0.2);

    // Refused, each with its reason; none changes anything.
    let refusals = [
        ("dimmer", r#"{"brightness":256}"#, "out_of_range"),
        ("relay", "maybe", "bad_payload"),
        ("door", "ON", "not_commandable"),
        ("fan", "ON", "unknown_entity"),
    ];
    for (entity, payload, _) in refusals {
        set(&node, &format!("{base}/{entity}/set"), payload);
    }
    set(&node, "roost/home/devices/hallway/garage/relay/set", "ON");
    // A valid command after them: once its state is out, they were all handled.
    set(&node, &format!("{base}/relay/set"), "TOGGLE");
    sub.expect_message(&format!("{base}/relay/state"), "OFF");
    for (_, _, reason) in refusals.iter().chain(&[("", "", "unknown_device")]) {
        assert_eq!(
            node.metric(&format!(
                r#"roost_device_command_errors_total{{reason="{reason}"}}"#
            )),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(sim_pin(&mut http, "dimmer")["duty"], 0.2);
    let (code, body) = http
        .request(
            "PUT",
            "/api/sim/hall/relay",
            Some(&serde_json::json!({ "level": true })),
        )
        .unwrap();
    assert_eq!(code, 400, "an output is not driven by the hook: {body}");

    // At the stop, outputs go to their safe state and the device offline.
    set(&node, &format!("{base}/relay/set"), "ON");
    sub.expect_message(&format!("{base}/relay/state"), "ON");
    assert!(node
        .terminate(Duration::from_secs(5))
        .expect("stopped within 5 s")
        .success());
    // In device and entity order.
    sub.expect_message(
        &format!("{base}/dimmer/state"),
        r#"{"state":"OFF","brightness":51}"#,
    );
    sub.expect_message(&format!("{base}/relay/state"), "OFF");
    sub.expect_message(&format!("{base}/availability"), "offline");
}

#[test]
fn a_bouncing_input_makes_one_state_change() {
    let node = Node::builder("porch").config(HALL).start();
    let mut http = Http::connect(node.http).unwrap();
    let base = "roost/home/devices/porch/hall";
    let door = format!("{base}/door/state");
    let relay = format!("{base}/relay/state");
    let mut sub = MosquittoSub::start(&node, &["-t", &door, "-t", &relay, "-q", "1"]);
    // Pulled up and inverted: high is off. The two first states come in either order
    // (retained ones in topic order, live ones in entity order).
    let (door_off, relay_off) = (format!("{door} OFF"), format!("{relay} OFF"));
    let first = sub.wait_for(|l| l == door_off || l == relay_off, "a first state");
    let other = if first == door_off {
        &relay_off
    } else {
        &door_off
    };
    sub.wait_for(|l| l == other, other);
    // The contact bounces: six edges, far closer together than the 200 ms debounce, settling
    // low (closed, on).
    for level in [false, true, false, true, false, true, false] {
        let (code, body) = http
            .request(
                "PUT",
                "/api/sim/hall/door",
                Some(&serde_json::json!({ "level": level })),
            )
            .unwrap();
        assert_eq!(code, 204, "{body}");
    }
    sub.expect_message(&door, "ON");
    // A settled debouncer changes again only on a new edge; a relay command after the
    // change is the marker that every door message is in.
    set(&node, &format!("{base}/relay/set"), "ON");
    let line = sub.wait_for(
        |l| l.starts_with(&door) || l == format!("{relay} ON"),
        "the marker",
    );
    assert_eq!(
        line,
        format!("{relay} ON"),
        "a second door change after the bounce"
    );
    assert_eq!(sim_pin(&mut http, "door")["level"], false);
}
