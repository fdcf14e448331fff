//! Benchmark of device latency through a real `roost` process on loopback: from an input
//! changing to its retained state message reaching an MQTT subscriber (rumqttc, TCP_NODELAY)
//! on the node.
//!
//! - GPIO: a binary sensor on the simulated backend with debounce 0, its pin driven through
//!   the simulation hook (`PUT /api/sim/..`, keep-alive HTTP/1.1). The time runs from the
//!   start of the request, so it includes the HTTP hop into the node; the hook's own round
//!   trip (`GET /api/sim/..`) is reported alongside for scale.
//! - serial: a sensor on a JSON-lines device and an analog pin of a Firmata board, each
//!   emulated on a real pseudo-terminal; the time runs from the emulator writing the frame.
//!
//! One change in flight at a time; p50/p99/max of each. Prints its figures; asserts nothing.
//! Run: `cargo build --release --workspace --bins && target/release/device_bench [N]`

use std::sync::mpsc;
use std::time::{Duration, Instant};

use roost_firmware_bridge::firmata::{FromBoard, ToBoard};
use roost_firmware_bridge::jsonl::{DeviceMessage, NodeMessage, Value};
use roost_tests::bench::{self, pct};
use roost_tests::serial::{firmata_board, firmata_bytes, json_device, json_line};
use roost_tests::state::Http;
use roost_tests::{Node, EVENT_TIMEOUT};

const NODE: &str = "bench";

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(2_000, |a| a.parse().expect("N"));
    let dir = tempfile::tempdir().expect("a temp dir");
    let (json_port, firmata_port) = (dir.path().join("ttyJSON"), dir.path().join("ttyUNO"));
    let json = json_device(&json_port);
    let board = firmata_board(&firmata_port);
    let node = Node::builder(NODE)
        .config(&format!(
            r#"[log]
level = "warn"

[gpio]
backend = "simulated"

[[devices]]
id = "panel"
entities = [{{ id = "button", kind = "binary_sensor", pin = 5, debounce = "0ms" }}]

[[devices]]
id = "probe"
serial = {{ port = "{}", protocol = "json_lines" }}
entities = [{{ id = "reading", kind = "sensor" }}]

[[devices]]
id = "uno"
serial = {{ port = "{}", protocol = "firmata" }}
entities = [{{ id = "light_level", kind = "sensor", pin = 14 }}]
"#,
            json_port.display(),
            firmata_port.display()
        ))
        .start();
    json.expect(|m| *m == NodeMessage::Query, "the node's query");
    board.expect(
        |f| {
            *f == ToBoard::ReportAnalog {
                channel: 0,
                enable: true,
            }
        },
        "the board's setup",
    );

    let runtime = bench::runtime();
    let topic =
        |device: &str, entity: &str| format!("roost/home/devices/{NODE}/{device}/{entity}/state");
    println!("roost device latency benchmark (loopback, {n} changes each, one at a time)\n");
    println!(
        "{:<44} {:>8} {:>8} {:>8}",
        "path", "p50 ms", "p99 ms", "max ms"
    );

    let mut http = Http::connect(node.http).expect("the node answers HTTP");
    let mut hook = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (code, _) = http
            .request("GET", "/api/sim/panel/button", None)
            .expect("GET /api/sim");
        assert_eq!(code, 200);
        hook.push(started.elapsed());
    }
    report("simulation hook round trip (for scale)", hook);

    let gpio = measure(&runtime, &node, &topic("panel", "button"), n, |i| {
        // The pin starts low (no pull): odd changes raise it.
        let high = i % 2 == 0;
        let started = Instant::now();
        let (code, body) = http
            .request(
                "PUT",
                "/api/sim/panel/button",
                Some(&serde_json::json!({ "level": high })),
            )
            .expect("PUT /api/sim");
        assert_eq!(code, 204, "{body}");
        (started, if high { "ON" } else { "OFF" }.to_owned())
    });
    report("GPIO edge (via the hook) -> MQTT state", gpio);

    let serial_json = measure(&runtime, &node, &topic("probe", "reading"), n, |i| {
        let started = Instant::now();
        json.say(json_line(&DeviceMessage::State {
            channel: "reading".into(),
            value: Value::Number(i as f64),
        }));
        (started, i.to_string())
    });
    report("JSON-lines frame -> MQTT state", serial_json);

    let serial_firmata = measure(&runtime, &node, &topic("uno", "light_level"), n, |i| {
        // Readings are published on change; consecutive values differ.
        let value = (i % 1000) as u16 + 1;
        let started = Instant::now();
        board.say(firmata_bytes(&FromBoard::Analog { channel: 0, value }));
        (started, value.to_string())
    });
    report("Firmata analog frame -> MQTT state", serial_firmata);
}

/// Subscribes to `topic`, then `n` times: `change(i)` makes a change and returns when it
/// started and the payload it must produce; the time until that payload arrives is a sample.
fn measure(
    runtime: &tokio::runtime::Runtime,
    node: &Node,
    topic: &str,
    n: usize,
    mut change: impl FnMut(usize) -> (Instant, String),
) -> Vec<Duration> {
    let (tx, rx) = mpsc::channel::<(Vec<u8>, Instant)>();
    let _guard = runtime.enter();
    let (client, subscribed) = bench::client(
        node.mqtt,
        &format!("bench-{}", topic.replace('/', "-")),
        true,
        move |payload, at| {
            let _ = tx.send((payload.to_vec(), at));
        },
    );
    runtime.block_on(async {
        client
            .subscribe(topic, rumqttc::QoS::AtMostOnce)
            .await
            .expect("subscribe");
        subscribed.await.expect("SUBACK");
    });
    // The retained state arrives first.
    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let (started, want) = change(i);
        loop {
            let (payload, at) = rx
                .recv_timeout(EVENT_TIMEOUT)
                .unwrap_or_else(|_| panic!("no {want:?} on {topic}"));
            if payload == want.as_bytes() {
                samples.push(at.duration_since(started));
                break;
            }
        }
    }
    runtime.block_on(async {
        let _ = client.disconnect().await;
    });
    samples
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let max = samples.last().copied().unwrap_or_default();
    println!(
        "{what:<44} {:>8.3} {:>8.3} {:>8.3}",
        pct(&samples, 0.50),
        pct(&samples, 0.99),
        max.as_secs_f64() * 1000.0
    );
}
