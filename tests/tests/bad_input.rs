//! Bad input does not take the node down: garbage bytes, an oversized payload and 1,000
//! connections at once each cost only the offender, with a metric, while /health answers.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roost_tests::{mosquitto_pub, mosquitto_pub_command, MosquittoSub, Node};

/// Asserts the node still does its job: health answers and a message goes round.
fn assert_serving(node: &Node) {
    assert_eq!(node.health().0, 200);
    let mut sub = MosquittoSub::start(node, &["-t", "test/alive"]);
    mosquitto_pub(node, &["-t", "test/alive", "-m", "yes"]);
    sub.expect_message("test/alive", "yes");
}

/// A minimal MQTT 3.1.1 CONNECT with a clean session.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

/// Reads until the peer closes the connection (or the read times out, which fails).
fn assert_closed_by_peer(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the node did not close the connection: {e}"),
        }
    }
}

#[test]
fn garbage_bytes_cost_only_that_connection() {
    let node = Node::builder("bad-garbage").start();
    let errors = |reason: &str| {
        node.metric(&format!(
            "roost_mqtt_protocol_errors_total{{reason=\"{reason}\"}}"
        ))
    };

    let mut http_on_mqtt = TcpStream::connect(node.mqtt).unwrap();
    http_on_mqtt
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_closed_by_peer(&mut http_on_mqtt);
    assert_eq!(errors("expected_connect"), 1.0);

    // A valid CONNECT, then a packet whose length field never ends.
    let mut noisy = TcpStream::connect(node.mqtt).unwrap();
    noisy.write_all(&connect_packet("noisy")).unwrap();
    noisy
        .write_all(&[0x30, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert_closed_by_peer(&mut noisy);
    assert_eq!(errors("malformed_length"), 1.0);

    // Random bytes.
    let mut random = TcpStream::connect(node.mqtt).unwrap();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = random.write_all(&noise);
    assert_closed_by_peer(&mut random);

    assert_serving(&node);
}

#[test]
fn oversized_payload_is_refused_and_counted() {
    let node = Node::builder("bad-oversized")
        .config("[mqtt]\nlisten = \"127.0.0.1:0\"\nmax_packet_size = 65536")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 200_000]).unwrap();
    let out = mosquitto_pub_command(&node)
        .args(["-t", "test/big", "-q", "1", "-f"])
        .arg(&big)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a 200 kB publish must be refused");
    assert_eq!(
        node.metric("roost_mqtt_protocol_errors_total{reason=\"packet_too_large\"}"),
        1.0
    );
    // A publish just under the limit still goes through.
    let fits = dir.path().join("fits.bin");
    std::fs::write(&fits, vec![b'y'; 60_000]).unwrap();
    let mut sub = MosquittoSub::start(&node, &["-t", "test/fits", "-q", "1", "-F", "%t %l"]);
    mosquitto_pub(
        &node,
        &["-t", "test/fits", "-q", "1", "-f", fits.to_str().unwrap()],
    );
    sub.expect_message("test/fits", "60000");
    assert_serving(&node);
}

#[test]
fn a_thousand_connections_at_once() {
    // 1,000 sockets on this side too, beside the other tests of this binary: a soft limit of
    // 1024 descriptors would fail the test, not the node.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let node = Arc::new(Node::builder("bad-storm").start());
    // Health is polled from another thread for the whole storm and must always answer.
    let storming = Arc::new(AtomicBool::new(true));
    let health_checks = Arc::new(AtomicUsize::new(0));
    let poller = {
        let node = node.clone();
        let storming = storming.clone();
        let checks = health_checks.clone();
        std::thread::spawn(move || {
            while storming.load(Ordering::Relaxed) {
                assert_eq!(node.health().0, 200, "health failed during the storm");
                checks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let connack_ok = [0x20, 0x02, 0x00, 0x00];
    let mut clients = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut s = TcpStream::connect(node.mqtt).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(&connect_packet(&format!("storm-{i}"))).unwrap();
        clients.push(s);
    }
    for (i, s) in clients.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack)
            .unwrap_or_else(|e| panic!("CONNACK for client {i}: {e}"));
        assert_eq!(ack, connack_ok, "client {i}");
    }
    assert_eq!(node.metric("roost_mqtt_connections"), 1000.0);
    drop(clients);
    storming.store(false, Ordering::Relaxed);
    poller.join().expect("health answered throughout");
    assert!(health_checks.load(Ordering::Relaxed) > 0);
    assert_serving(&node);
}

#[test]
fn connections_over_the_limit_are_refused_not_fatal() {
    let node = Node::builder("bad-limit")
        .config("[mqtt]\nlisten = \"127.0.0.1:0\"\nmax_connections = 5")
        .start();
    let mut held = Vec::new();
    for i in 0..5 {
        let mut s = TcpStream::connect(node.mqtt).unwrap();
        s.write_all(&connect_packet(&format!("held-{i}"))).unwrap();
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).unwrap();
        held.push(s);
    }
    let mut extra = TcpStream::connect(node.mqtt).unwrap();
    assert_closed_by_peer(&mut extra);
    assert_eq!(
        node.metric("roost_mqtt_connections_rejected_total{reason=\"limit\"}"),
        1.0
    );
    drop(held);
    assert_eq!(node.health().0, 200);
}

/// rumqttd closes a connection whose CONNECT has keep-alive 0 without a CONNACK (RUMQTTD.md,
/// defect 11); MQTT allows it, and the edge lets such clients in, 3.1.1 and 5 alike.
#[test]
fn keep_alive_zero_is_accepted() {
    let node = Node::builder("keepalive-zero").start();
    let mut v311 = TcpStream::connect(node.mqtt).unwrap();
    let mut connect = connect_packet("no-keepalive");
    connect[10..12].copy_from_slice(&[0, 0]);
    v311.write_all(&connect).unwrap();
    v311.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut ack = [0u8; 4];
    v311.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    // MQTT 5: level 5, keep-alive 0, an empty property block.
    let mut v5 = TcpStream::connect(node.mqtt).unwrap();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 0, 0, 4];
    body.extend_from_slice(b"nk-5");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    v5.write_all(&packet).unwrap();
    v5.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 4];
    v5.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x20, "a CONNACK");
    assert_eq!(head[3], 0x00, "reason code success");
}

/// A client that subscribes and then never reads is disconnected once a write to it waited
/// `send_timeout`, with a metric, and everyone else carries on. Large messages fill the socket
/// buffers quickly (rumqttd gives up on a lagging link of small messages before that).
#[test]
fn a_client_that_never_reads_is_cut_off_alone() {
    let node = Node::builder("slow-consumer")
        .config("[mqtt]\nlisten = \"127.0.0.1:0\"\nsend_timeout = \"1s\"")
        .start();
    // The stuck client: CONNECT, SUBSCRIBE test/big/# at QoS 0, read the acks, then nothing.
    let mut stuck = TcpStream::connect(node.mqtt).unwrap();
    stuck.write_all(&connect_packet("stuck")).unwrap();
    let filter = b"test/big/#";
    let mut subscribe = vec![0x82, 0, 0, 1, 0, filter.len() as u8];
    subscribe.extend_from_slice(filter);
    subscribe.push(0);
    subscribe[1] = (subscribe.len() - 2) as u8;
    stuck.write_all(&subscribe).unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut acks = [0u8; 9];
    stuck.read_exact(&mut acks).unwrap();
    assert_eq!((acks[0], acks[4]), (0x20, 0x90), "CONNACK then SUBACK");

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 900_000]).unwrap();
    let slow = "roost_mqtt_connections_rejected_total{reason=\"slow_consumer\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Publish until the edge gives up on the stuck client (a few megabytes fill its buffers).
    while node.metric(slow) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck client was never cut off"
        );
        mosquitto_pub(
            &node,
            &["-t", "test/big/x", "-q", "1", "-f", big.to_str().unwrap()],
        );
    }
    assert_eq!(node.metric(slow), 1.0);
    assert_serving(&node);
}

/// Neither the edge nor rumqttd may accept a wildcard in a PUBLISH topic: a retained one would
/// be stored and served as a topic name. The sender is cut off; nothing is stored.
#[test]
fn wildcard_publish_topic_is_a_protocol_error() {
    let node = Node::builder("bad-wildcard").start();
    let before = node.metric("roost_mqtt_retained_messages");
    let mut client = TcpStream::connect(node.mqtt).unwrap();
    client.write_all(&connect_packet("wild")).unwrap();
    let mut ack = [0u8; 4];
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.read_exact(&mut ack).unwrap();
    // QoS 0, retained, topic "a/#", payload "x".
    client
        .write_all(&[0x31, 6, 0, 3, b'a', b'/', b'#', b'x'])
        .unwrap();
    assert_closed_by_peer(&mut client);
    assert_eq!(
        node.metric("roost_mqtt_protocol_errors_total{reason=\"malformed_packet\"}"),
        1.0
    );
    assert_eq!(node.metric("roost_mqtt_retained_messages"), before);
    assert_serving(&node);
}
