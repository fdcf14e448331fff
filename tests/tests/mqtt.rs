//! MQTT through a real node with real clients: mosquitto_pub/sub at QoS 0, 1 and 2, retained
//! delivery to a later subscriber, a will fired by a killed client, and MQTT 5 with rumqttc.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use roost_tests::{mosquitto_pub, MosquittoSub, Node, EVENT_TIMEOUT};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

#[test]
fn round_trip_at_every_qos() {
    let node = Node::builder("mqtt-qos").start();
    for qos in ["0", "1", "2"] {
        let topic = format!("test/qos{qos}");
        let mut sub = MosquittoSub::start(&node, &["-t", &topic, "-q", qos, "-F", "%t %q %p"]);
        let payload = format!("hello at qos {qos}");
        mosquitto_pub(&node, &["-t", &topic, "-m", &payload, "-q", qos]);
        // `%q` is the QoS the message was delivered at.
        sub.expect_message(&topic, &format!("{qos} {payload}"));
    }
}

#[test]
fn retained_message_reaches_a_later_subscriber() {
    let node = Node::builder("mqtt-retained").start();
    mosquitto_pub(
        &node,
        &["-t", "test/kitchen/light", "-m", "ON", "-r", "-q", "1"],
    );
    let mut late = MosquittoSub::start(&node, &["-t", "test/kitchen/#"]);
    late.expect_message("test/kitchen/light", "ON");
    // A retained delete (empty payload) leaves nothing for the next subscriber: it sees only
    // the marker published after it subscribed.
    mosquitto_pub(&node, &["-t", "test/kitchen/light", "-n", "-r", "-q", "1"]);
    let mut later = MosquittoSub::start(&node, &["-t", "test/kitchen/#"]);
    mosquitto_pub(&node, &["-t", "test/kitchen/marker", "-m", "after"]);
    let first = later.wait_for(|l| l.starts_with("test/kitchen/"), "a kitchen message");
    assert_eq!(first, "test/kitchen/marker after");
}

#[test]
fn will_fires_when_a_client_is_killed() {
    let node = Node::builder("mqtt-will").start();
    let mut watcher = MosquittoSub::start(&node, &["-t", "test/devices/+/availability", "-q", "1"]);
    let mut device = MosquittoSub::start(
        &node,
        &[
            "-i",
            "esp-hall",
            "-t",
            "test/devices/esp-hall/set",
            "--will-topic",
            "test/devices/esp-hall/availability",
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
        ],
    );
    device.kill();
    watcher.expect_message("test/devices/esp-hall/availability", "offline");
}

#[test]
fn mqtt5_client_round_trip() {
    let node = Node::builder("mqtt-v5").start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = MqttOptions::new("v5-client", "127.0.0.1", node.port());
        options.set_keep_alive(Duration::from_secs(10));
        let (client, mut events) = AsyncClient::new(options, 10);
        client
            .subscribe("test/v5/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let got = tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                match events.poll().await.expect("v5 connection") {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let props = PublishProperties {
                            content_type: Some("text/plain".into()),
                            user_properties: vec![("origin".into(), "test".into())],
                            ..Default::default()
                        };
                        client
                            .publish_with_properties(
                                "test/v5/echo",
                                QoS::AtLeastOnce,
                                false,
                                "over five",
                                props,
                            )
                            .await
                            .unwrap();
                    }
                    Event::Incoming(Packet::Publish(p)) => return p,
                    _ => {}
                }
            }
        })
        .await
        .expect("the v5 message came back");
        assert_eq!(&got.topic[..], b"test/v5/echo");
        assert_eq!(&got.payload[..], b"over five");
        assert_eq!(got.qos, QoS::AtLeastOnce);
        let props = got.properties.expect("properties survive");
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            props.user_properties,
            vec![("origin".to_string(), "test".to_string())]
        );
    });
}

#[test]
fn v311_and_v5_clients_share_one_port() {
    let node = Node::builder("mqtt-mixed").start();
    let mut v5 = MosquittoSub::start(&node, &["-t", "test/mixed", "-V", "mqttv5"]);
    let mut v311 = MosquittoSub::start(&node, &["-t", "test/mixed", "-V", "mqttv311"]);
    mosquitto_pub(&node, &["-t", "test/mixed", "-m", "both", "-V", "mqttv311"]);
    v5.expect_message("test/mixed", "both");
    v311.expect_message("test/mixed", "both");
}

/// Publishes once from an MQTT 5 client with a content type and a user property, and waits
/// for the PUBACK.
fn publish_v5_with_properties(node: &Node, topic: &str, payload: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = MqttOptions::new("v5-publisher", "127.0.0.1", node.port());
        let (client, mut events) = AsyncClient::new(options, 10);
        let props = PublishProperties {
            content_type: Some("application/json".into()),
            user_properties: vec![("source".into(), "v5".into())],
            ..Default::default()
        };
        client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_owned(), props)
            .await
            .unwrap();
        tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                if let Event::Incoming(Packet::PubAck(_)) =
                    events.poll().await.expect("v5 connection")
                {
                    return;
                }
            }
        })
        .await
        .expect("PUBACK");
    });
}

/// rumqttd's 3.1.1 encoder panics on MQTT 5 properties (RUMQTTD.md, defect 5). The edge
/// translates for 3.1.1 clients, so such a subscriber gets the message and stays connected.
#[test]
fn v5_properties_never_break_a_v311_subscriber() {
    let node = Node::builder("mqtt-props").start();
    let mut v311 = MosquittoSub::start(
        &node,
        &[
            "-t",
            "test/props/#",
            "-q",
            "1",
            "-V",
            "mqttv311",
            "-i",
            "ha-like",
        ],
    );
    publish_v5_with_properties(&node, "test/props/a", "{\"on\":true}");
    v311.expect_message("test/props/a", "{\"on\":true}");
    publish_v5_with_properties(&node, "test/props/b", "again");
    v311.expect_message("test/props/b", "again");
    mosquitto_pub(&node, &["-t", "test/props/c", "-m", "from 3.1.1"]);
    v311.expect_message("test/props/c", "from 3.1.1");
    assert_eq!(node.health().0, 200);
}

/// The node's own links use client ids under `roost-internal-`; a network client claiming one
/// would take them over, so it is refused.
#[test]
fn reserved_client_ids_are_refused() {
    let node = Node::builder("mqtt-reserved").start();
    for (version, refusal) in [
        ("mqttv311", "identifier rejected"),
        ("mqttv5", "Client Identifier not valid"),
    ] {
        let out = roost_tests::mosquitto_pub_command(&node)
            .args([
                "-V",
                version,
                "-i",
                "roost-internal-4242-publisher",
                "-t",
                "test/x",
                "-m",
                "hijack",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(refusal), "{version}: {stderr}");
    }
    assert_eq!(
        node.metric("roost_mqtt_connections_rejected_total{reason=\"reserved_client_id\"}"),
        2.0
    );
}

/// rumqttd lets the old connection of a client id consume the new connection's will, so the
/// next real drop publishes nothing (RUMQTTD.md, defect 6). The edge fires wills itself: the
/// old connection's will at takeover, the new one's when it dies.
#[test]
fn will_fires_after_a_client_id_takeover() {
    let node = Node::builder("mqtt-takeover").start();
    let mut watcher = MosquittoSub::start(&node, &["-t", "test/esp/#", "-q", "1"]);
    let will = |payload: &'static str| {
        [
            "-i",
            "esp-porch",
            "-t",
            "test/esp/porch/cmd",
            "--will-topic",
            "test/esp/porch/availability",
            "--will-payload",
            payload,
            "--will-qos",
            "1",
        ]
    };
    let _first = MosquittoSub::start(&node, &will("offline-1"));
    // The same client id again, as an ESP board does after a Wi-Fi blip.
    let mut second = MosquittoSub::start(&node, &will("offline-2"));
    watcher.expect_message("test/esp/porch/availability", "offline-1");
    second.kill();
    watcher.expect_message("test/esp/porch/availability", "offline-2");
}

/// An MQTT 5 will with a Will Delay Interval waits. A reconnect that resumes the session
/// (Clean Start 0) cancels it; a reconnect that starts afresh (Clean Start 1) ends the old
/// session, so its will goes at once; a short delay that runs out sends it; a session that ends
/// with its connection sends it at once (MQTT 5 §3.1.2.5, §3.1.3.2.2: whichever comes first).
#[test]
fn delayed_wills_follow_the_session() {
    let node = Node::builder("mqtt-will-delay").start();
    let mut watcher = MosquittoSub::start(&node, &["-t", "test/delay/#", "-q", "1"]);
    // `resume`: Clean Start 0. Every session but `now`'s outlives its connection by an hour.
    let client = |id: &'static str, payload: &'static str, delay: &'static str, resume: bool| {
        let mut args = vec![
            "-V",
            "mqttv5",
            "-i",
            id,
            "-t",
            "test/delay/cmd",
            "--will-topic",
            "test/delay/availability",
            "--will-payload",
            payload,
            "-D",
            "will",
            "will-delay-interval",
            delay,
        ];
        if resume {
            args.push("-c");
        }
        if id != "now" {
            args.extend(["-x", "3600"]);
        }
        MosquittoSub::start(&node, &args)
    };
    let wills =
        |outcome: &str| node.metric(&format!("roost_mqtt_wills_total{{outcome=\"{outcome}\"}}"));
    let wait_for = |outcome: &str, count: f64| {
        let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
        while wills(outcome) < count {
            assert!(std::time::Instant::now() < deadline, "no {outcome} will");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // Resumed within the hour: never sent.
    client("sleepy", "sleepy-gone", "3600", true).kill();
    wait_for("delayed", 1.0);
    let _resumed = client("sleepy", "sleepy-again", "3600", true);
    assert_eq!(wills("cancelled"), 1.0);

    // Back with a fresh session: the old session is over and its will goes now.
    client("fresh", "fresh-old", "3600", false).kill();
    wait_for("delayed", 2.0);
    let _fresh = client("fresh", "fresh-new", "3600", false);
    watcher.expect_message("test/delay/availability", "fresh-old");

    // A one-second delay runs out.
    client("brief", "brief-gone", "1", false).kill();
    watcher.expect_message("test/delay/availability", "brief-gone");

    // A session that ends with its connection (expiry 0) sends its will at once, delay or not.
    client("now", "now-gone", "3600", false).kill();
    watcher.expect_message("test/delay/availability", "now-gone");
    assert_eq!(wills("published"), 3.0);
    assert_eq!(wills("delayed"), 3.0);
    assert_eq!(wills("cancelled"), 1.0);
}
