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
    let options = MqttOptions::new(id, "127.0.0.1", port);
    let (client, mut events) = AsyncClient::new(options, 100);
    let (tx, mut rx) = mpsc::unbounded_channel::<Packet>();
    let driver = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("reader connection: {e}"),
            }
        }
    });
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
    driver.abort();
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
        assert_eq!(served(node.port(), "reader-1").await, expected);
    });

    // A clean restart.
    assert!(node.terminate(Duration::from_secs(5)).unwrap().success());
    let mut node = Node::builder("keeper").data_dir(data.path()).start();
    runtime.block_on(async {
        assert_eq!(served(node.port(), "reader-2").await, expected);
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
        assert_eq!(served(node.port(), "reader-3").await, expected);
    });
    assert_eq!(node.metric("roost_mqtt_retained_persist_errors_total"), 0.0);
}
