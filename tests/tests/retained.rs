//! Retained messages survive the node: 1,000 retained topics, some then deleted with an empty
//! retained payload, are served identically after a clean restart and after a `kill -9` right
//! after the publisher's acknowledgements (rumqttd alone keeps them only in memory: RUMQTTD.md,
//! defect 1).
//!
//! The served set is read back 20 topics at a time: each group's filter is subscribed, then a
//! marker is published under it; the marker arrives after the group's retained messages.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roost_tests::{Node, EVENT_TIMEOUT};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const GROUPS: usize = 50;
const PER_GROUP: usize = 20;
const MARKER: &str = "~marker";

type RetainedSet = BTreeMap<String, Vec<u8>>;

/// Asserts two retained sets are equal, naming the first differences instead of dumping both.
fn assert_same(got: &RetainedSet, expected: &RetainedSet, phase: &str) {
    let missing: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    let changed: Vec<(&String, String, String)> = expected
        .iter()
        .filter_map(|(k, v)| {
            let g = got.get(k)?;
            (g != v).then(|| {
                (
                    k,
                    String::from_utf8_lossy(g).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
        })
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && changed.is_empty(),
        "{phase}: {} missing {:?}, {} extra {:?}, {} changed (got, expected) {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
        changed.len(),
        &changed[..changed.len().min(5)]
    );
}

fn topic(group: usize, item: usize) -> String {
    format!("test/persist/g{group:02}/t{item:02}")
}

/// Publishes each (topic, payload) retained at QoS 1 and returns once every PUBACK is in.
async fn publish_retained(port: u16, id: &str, messages: &[(String, Vec<u8>)]) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 2000);
    let acked = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done) = mpsc::channel::<()>(1);
    let total = messages.len();
    let counter = acked.clone();
    let driver = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if counter.fetch_add(1, Ordering::Relaxed) + 1 == total {
                        let _ = done_tx.send(()).await;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("publisher connection: {e}"),
            }
        }
    });
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, true, payload.clone())
            .await
            .unwrap();
    }
    tokio::time::timeout(EVENT_TIMEOUT, done.recv())
        .await
        .expect("every PUBACK");
    driver.abort();
}

/// Reads the retained messages under `test/persist/`, group by group.
async fn served(port: u16, id: &str) -> RetainedSet {
    let (client, mut rx) = reader(port, id);
    let mut set = RetainedSet::new();
    for group in 0..GROUPS {
        let filter = format!("test/persist/g{group:02}/+");
        client.subscribe(&filter, QoS::AtMostOnce).await.unwrap();
        let marker = format!("test/persist/g{group:02}/{MARKER}");
        let mut marker_sent = false;
        let collect = async {
            while let Some(packet) = rx.recv().await {
                match packet {
                    Packet::SubAck(_) if !marker_sent => {
                        client
                            .publish(&marker, QoS::AtMostOnce, false, "end")
                            .await
                            .unwrap();
                        marker_sent = true;
                    }
                    Packet::Publish(p) if p.topic == marker => return,
                    Packet::Publish(p) => {
                        assert!(p.retain, "{} arrived without the retain flag", p.topic);
                        set.insert(p.topic.clone(), p.payload.to_vec());
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(EVENT_TIMEOUT, collect)
            .await
            .unwrap_or_else(|_| panic!("group {group} did not complete"));
        client.unsubscribe(&filter).await.unwrap();
    }
    set
}

#[test]
fn retained_set_survives_restart_and_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut expected = RetainedSet::new();
    let mut all = Vec::new();
    for group in 0..GROUPS {
        for item in 0..PER_GROUP {
            let payload = format!("{{\"group\":{group},\"item\":{item}}}").into_bytes();
            expected.insert(topic(group, item), payload.clone());
            all.push((topic(group, item), payload));
        }
    }
    // Every seventh topic is deleted again with an empty retained payload.
    let deletes: Vec<(String, Vec<u8>)> = (0..GROUPS * PER_GROUP)
        .step_by(7)
        .map(|i| (topic(i / PER_GROUP, i % PER_GROUP), Vec::new()))
        .collect();
    for (t, _) in &deletes {
        expected.remove(t);
    }

    let mut node = Node::builder("keeper").data_dir(data.path()).start();
    runtime.block_on(async {
        publish_retained(node.port(), "writer-1", &all).await;
        publish_retained(node.port(), "writer-2", &deletes).await;
        assert_same(
            &served(node.port(), "reader-1").await,
            &expected,
            "before restart",
        );
    });

    // A clean restart.
    assert!(node.terminate(Duration::from_secs(5)).unwrap().success());
    let mut node = Node::builder("keeper").data_dir(data.path()).start();
    runtime.block_on(async {
        assert_same(
            &served(node.port(), "reader-2").await,
            &expected,
            "after a clean restart",
        );
    });

    // Changes acknowledged just before a kill -9 are kept too.
    let late: Vec<(String, Vec<u8>)> = (0..PER_GROUP)
        .map(|item| (topic(0, item), format!("late {item}").into_bytes()))
        .chain(std::iter::once((topic(1, 1), Vec::new())))
        .collect();
    for (t, payload) in &late {
        if payload.is_empty() {
            expected.remove(t);
        } else {
            expected.insert(t.clone(), payload.clone());
        }
    }
    runtime.block_on(publish_retained(node.port(), "writer-3", &late));
    node.kill();
    let node = Node::builder("keeper").data_dir(data.path()).start();
    runtime.block_on(async {
        assert_same(
            &served(node.port(), "reader-3").await,
            &expected,
            "after kill -9",
        );
    });
    assert_eq!(node.metric("roost_mqtt_retained_persist_errors_total"), 0.0);
}

/// Subscribes `filter` at `qos` on `client` and collects retained deliveries until `expect`
/// distinct topics arrived; then checks nothing more is pending by publishing a marker that
/// must be the next message. Returns the delivered (topic → QoS) map.
async fn collect_retained(
    client: &AsyncClient,
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    filter: &str,
    qos: QoS,
    expect: usize,
    marker: &str,
) -> BTreeMap<String, QoS> {
    client.subscribe(filter, qos).await.unwrap();
    let mut got = BTreeMap::new();
    let collect = async {
        while got.len() < expect {
            match rx.recv().await.expect("connection open") {
                Packet::Publish(p) => {
                    assert!(p.retain, "{} arrived without the retain flag", p.topic);
                    let first = got.insert(p.topic.clone(), p.qos).is_none();
                    assert!(first, "{} delivered twice", p.topic);
                }
                _ => continue,
            }
        }
        client
            .publish(marker, QoS::AtMostOnce, false, "end")
            .await
            .unwrap();
        loop {
            if let Packet::Publish(p) = rx.recv().await.expect("connection open") {
                assert_eq!(p.topic, marker, "an extra message after every retained one");
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .unwrap_or_else(|_| panic!("only {} of {expect} retained messages arrived", got.len()));
    got
}

fn reader(port: u16, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let options = MqttOptions::new(id, "127.0.0.1", port);
    let (client, mut events) = AsyncClient::new(options, 100);
    let (tx, rx) = mpsc::unbounded_channel::<Packet>();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (client, rx)
}

/// rumqttd delivers at most 100 (QoS 1) or 200 (QoS 0) retained messages to a new subscriber
/// and none to a filter the connection already has (RUMQTTD.md defect 2, rumqttd#1069). The
/// edge delivers them all, on every subscribe, at the lower of the two QoS.
#[test]
fn ten_thousand_retained_reach_a_new_subscriber_at_qos_0_and_1_and_again() {
    let node = Node::builder("many-retained").start();
    let base = node.metric("roost_mqtt_retained_messages");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = 10_000;
    let messages: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("test/many/{:02}/{i:05}", i % 97),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    runtime.block_on(async {
        publish_retained(node.port(), "many-writer", &messages).await;
        let (client, mut rx) = reader(node.port(), "many-reader");
        let at0 = collect_retained(
            &client,
            &mut rx,
            "test/many/#",
            QoS::AtMostOnce,
            n,
            "test/many/m0",
        )
        .await;
        assert!(at0.values().all(|q| *q == QoS::AtMostOnce));
        // The same filter again on the same connection: delivered again, now at QoS 1.
        let at1 = collect_retained(
            &client,
            &mut rx,
            "test/many/#",
            QoS::AtLeastOnce,
            n,
            "test/many/m1",
        )
        .await;
        assert!(at1.values().all(|q| *q == QoS::AtLeastOnce));
        // A second, overlapping wildcard filter gets its own matching set.
        let some = collect_retained(
            &client,
            &mut rx,
            "test/many/07/+",
            QoS::AtLeastOnce,
            n / 97 + 1,
            "test/many/07/m2",
        )
        .await;
        assert!(some.keys().all(|t| t.starts_with("test/many/07/")));
    });
    assert_eq!(node.metric("roost_mqtt_retained_messages") - base, n as f64);
}

/// rumqttd deletes a retained message when an empty payload is published without the retain
/// flag (RUMQTTD.md defect 7); MQTT says only a retained empty payload deletes.
#[test]
fn empty_non_retained_publish_keeps_the_retained_message() {
    let node = Node::builder("keep-retained").start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kept = vec![("test/keep/lamp".to_owned(), b"ON".to_vec())];
        publish_retained(node.port(), "keep-writer", &kept).await;
        roost_tests::mosquitto_pub(&node, &["-t", "test/keep/lamp", "-n", "-q", "1"]);
        let (client, mut rx) = reader(node.port(), "keep-reader");
        let got = collect_retained(
            &client,
            &mut rx,
            "test/keep/#",
            QoS::AtLeastOnce,
            1,
            "test/keep/marker",
        )
        .await;
        assert!(got.contains_key("test/keep/lamp"));
    });
}
