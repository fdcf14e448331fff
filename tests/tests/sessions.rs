//! MQTT session semantics, checked end to end against a real node: delivered QoS is the lower of
//! the publish and the subscription; persistent sessions (MQTT 3.1.1 `clean_session=0`, MQTT 5
//! Session Expiry) keep subscriptions and queue QoS 1/2 messages while their client is away, and
//! an expired MQTT 5 session is gone; the MQTT 5 subscription options No Local, Retain As
//! Published and Retain Handling; a client's Maximum Packet Size; QoS 2 exactly-once across a
//! dropped connection in both directions; the Receive Maximum; shared subscriptions; topic filter edge cases (`$` topics, empty levels,
//! `#` matching its parent); and a slow QoS 1 subscriber that must slow its publishers down
//! instead of losing messages or growing the node's memory.
//!
//! Most tests speak MQTT with [`Client`], a small blocking client written here that sends
//! exactly the bytes a test asks for and acknowledges only when told to, so a test controls
//! every step of a handshake. Absence is proven with a marker: a message published after the
//! one that must not arrive, which must then be the first to arrive.
//!
//! Each check is a function of the broker's port. The `#[test]`s run it against a Roost node;
//! the `#[ignore]`d `mosquitto_oracle_*` tests run the same function against Debian's
//! Mosquitto, which follows all of these rules but the memory bound under a flood, to show the
//! test logic itself is right (`cargo test -p roost-tests --test sessions -- --ignored`).

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::{HashSet, VecDeque};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roost_tests::{proc_status, ChildGuard, Mosquitto, Node, EVENT_TIMEOUT};

// ---------------------------------------------------------------------------------------------
// A blocking MQTT 3.1.1 / 5 client that does only what it is told.
// ---------------------------------------------------------------------------------------------

const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// SUBSCRIBE option bits (MQTT 5 §3.8.3.1), beside the maximum QoS in bits 0-1.
const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_IF_NEW: u8 = 0x10;
const RETAIN_HANDLING_NEVER: u8 = 0x20;

/// What a CONNECT asks for.
#[derive(Clone)]
struct Connect {
    id: String,
    v5: bool,
    clean: bool,
    session_expiry: Option<u32>,
    max_packet_size: Option<u32>,
}

impl Connect {
    /// MQTT 3.1.1 with a clean session.
    fn v311(id: &str) -> Self {
        Connect {
            id: id.to_owned(),
            v5: false,
            clean: true,
            session_expiry: None,
            max_packet_size: None,
        }
    }

    /// MQTT 5 with Clean Start and no session expiry.
    fn v5(id: &str) -> Self {
        Connect {
            v5: true,
            ..Connect::v311(id)
        }
    }

    /// `clean_session=0` (3.1.1) or Clean Start 0 (5).
    fn persistent(mut self) -> Self {
        self.clean = false;
        self
    }

    fn session_expiry(mut self, seconds: u32) -> Self {
        self.session_expiry = Some(seconds);
        self
    }

    fn max_packet_size(mut self, bytes: u32) -> Self {
        self.max_packet_size = Some(bytes);
        self
    }
}

/// A packet as read off the wire.
#[derive(Debug)]
struct Frame {
    first: u8,
    body: Vec<u8>,
}

impl Frame {
    fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// The packet identifier of an ack (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK).
    fn pkid(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// An MQTT 5 ack's reason code (absent means success).
    fn reason(&self) -> u8 {
        self.body.get(2).copied().unwrap_or(0)
    }
}

/// A received PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    dup: bool,
    pkid: u16,
}

impl Message {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

struct Client {
    id: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    v5: bool,
    /// Acknowledge incoming QoS 1/2 PUBLISHes and PUBRELs as they arrive.
    auto_ack: bool,
    last_pkid: u16,
    /// PUBLISHes read while waiting for something else.
    inbox: VecDeque<Message>,
}

fn put_varint(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn get_varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("malformed variable byte integer {bytes:02x?}")
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
    buf.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    put_varint(&mut p, body.len());
    p.extend_from_slice(body);
    p
}

fn connect_packet(c: &Connect) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(if c.v5 { 5 } else { 4 });
    body.push(if c.clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&60u16.to_be_bytes());
    if c.v5 {
        let mut props = Vec::new();
        if let Some(seconds) = c.session_expiry {
            props.push(0x11);
            props.extend_from_slice(&seconds.to_be_bytes());
        }
        if let Some(bytes) = c.max_packet_size {
            props.push(0x27);
            props.extend_from_slice(&bytes.to_be_bytes());
        }
        put_varint(&mut body, props.len());
        body.extend(props);
    }
    put_str(&mut body, c.id.as_bytes());
    packet(0x10, &body)
}

fn publish_packet(
    v5: bool,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    pkid: u16,
) -> Vec<u8> {
    let first = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if v5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP for `pkid` (reason code omitted: success).
fn ack_packet(kind: u8, pkid: u16) -> Vec<u8> {
    let flags = if kind == PUBREL { 0x02 } else { 0x00 };
    packet((kind << 4) | flags, &pkid.to_be_bytes())
}

impl Client {
    /// Connects and returns the client with CONNACK's Session Present flag; a refusal fails.
    fn connect(port: u16, c: &Connect) -> (Client, bool) {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Client {
            id: c.id.clone(),
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            v5: c.v5,
            auto_ack: true,
            last_pkid: 0,
            inbox: VecDeque::new(),
        };
        client.send(&connect_packet(c));
        let ack = client.read_frame("CONNACK");
        assert_eq!(ack.kind(), CONNACK, "{}: expected CONNACK: {ack:?}", c.id);
        assert_eq!(ack.body[1], 0, "{}: connection refused: {ack:?}", c.id);
        (client, ack.body[0] & 1 == 1)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.id));
    }

    fn next_pkid(&mut self) -> u16 {
        self.last_pkid = self.last_pkid % u16::MAX + 1;
        self.last_pkid
    }

    /// Reads one packet; a timeout or a closed connection fails the test naming `what`.
    fn read_frame(&mut self, what: &str) -> Frame {
        let id = self.id.clone();
        let mut read = |buf: &mut [u8]| {
            if let Err(e) = self.reader.read_exact(buf) {
                match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                        panic!("{id}: waited {EVENT_TIMEOUT:?} for {what} in vain")
                    }
                    ErrorKind::UnexpectedEof => {
                        panic!("{id}: the server closed the connection; waiting for {what}")
                    }
                    _ => panic!("{id}: waiting for {what}: {e}"),
                }
            }
        };
        let mut first = [0u8];
        read(&mut first);
        let mut len = 0usize;
        for shift in [0, 7, 14, 21] {
            let mut byte = [0u8];
            read(&mut byte);
            len |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        read(&mut body);
        Frame {
            first: first[0],
            body,
        }
    }

    fn parse_publish(&self, f: &Frame) -> Message {
        let qos = (f.first >> 1) & 0x03;
        let b = &f.body;
        let topic_len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = String::from_utf8(b[2..2 + topic_len].to_vec()).unwrap();
        let mut at = 2 + topic_len;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([b[at], b[at + 1]]);
            at += 2;
        }
        if self.v5 {
            let (props, used) = get_varint(&b[at..]);
            at += used + props;
        }
        Message {
            topic,
            payload: b[at..].to_vec(),
            qos,
            retain: f.first & 0x01 != 0,
            dup: f.first & 0x08 != 0,
            pkid,
        }
    }

    /// Keeps an incoming PUBLISH (and acknowledges it) or answers a PUBREL when acking
    /// automatically; returns any other packet.
    fn absorb(&mut self, f: Frame) -> Option<Frame> {
        match f.kind() {
            PUBLISH => {
                let m = self.parse_publish(&f);
                if self.auto_ack {
                    match m.qos {
                        1 => self.send(&ack_packet(PUBACK, m.pkid)),
                        2 => self.send(&ack_packet(PUBREC, m.pkid)),
                        _ => {}
                    }
                }
                self.inbox.push_back(m);
                None
            }
            PUBREL if self.auto_ack => {
                self.send(&ack_packet(PUBCOMP, f.pkid()));
                None
            }
            _ => Some(f),
        }
    }

    /// Reads until a packet of `kind` arrives; PUBLISHes on the way are kept for
    /// [`Client::next_message`]; anything else fails the test.
    fn expect(&mut self, kind: u8, what: &str) -> Frame {
        loop {
            let f = self.read_frame(what);
            if let Some(f) = self.absorb(f) {
                assert_eq!(f.kind(), kind, "{}: waiting for {what}: {f:?}", self.id);
                return f;
            }
        }
    }

    /// The next PUBLISH received.
    fn next_message(&mut self, what: &str) -> Message {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return m;
            }
            let f = self.read_frame(what);
            if let Some(f) = self.absorb(f) {
                panic!("{}: waiting for {what}: {f:?}", self.id);
            }
        }
    }

    /// Subscribes to one filter with `options` (QoS and MQTT 5 option bits) and returns the
    /// granted QoS; a refusal fails.
    fn subscribe(&mut self, filter: &str, options: u8) -> u8 {
        let pkid = self.next_pkid();
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        put_str(&mut body, filter.as_bytes());
        body.push(options);
        self.send(&packet(0x82, &body));
        let ack = self.expect(SUBACK, "SUBACK");
        assert_eq!(ack.pkid(), pkid);
        let code = *ack.body.last().unwrap();
        assert!(
            code < 0x80,
            "{}: SUBSCRIBE {filter} refused: {code:#04x}",
            self.id
        );
        code
    }

    /// Publishes and completes the QoS handshake.
    fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let pkid = if qos > 0 { self.next_pkid() } else { 0 };
        self.send(&publish_packet(
            self.v5, topic, payload, qos, retain, false, pkid,
        ));
        match qos {
            0 => {}
            1 => {
                let ack = self.expect(PUBACK, "PUBACK");
                assert_eq!((ack.pkid(), ack.reason() < 0x80), (pkid, true), "{ack:?}");
            }
            _ => {
                let rec = self.expect(PUBREC, "PUBREC");
                assert_eq!((rec.pkid(), rec.reason() < 0x80), (pkid, true), "{rec:?}");
                self.send(&ack_packet(PUBREL, pkid));
                let comp = self.expect(PUBCOMP, "PUBCOMP");
                assert_eq!(comp.pkid(), pkid);
            }
        }
    }

    /// PINGREQ, and waits for PINGRESP: the connection is alive.
    fn ping(&mut self) {
        self.send(&[0xc0, 0]);
        self.expect(PINGRESP, "PINGRESP");
    }

    /// Sends DISCONNECT (reason 0: the session, if any, stays) and waits until the server has
    /// closed the connection.
    fn disconnect(mut self) {
        self.send(&[0xe0, 0]);
        self.writer.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
    }

    /// Drops the network connection without DISCONNECT, like a device losing Wi-Fi.
    fn drop_connection(self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------------------------
// rumqttc helpers (for the tests that use a full client library).
// ---------------------------------------------------------------------------------------------

/// The next incoming packet on a rumqttc 3.1.1 connection.
fn next_v4(conn: &mut rumqttc::Connection, what: &str) -> rumqttc::Packet {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match conn.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(rumqttc::Event::Incoming(p))) => return p,
            Ok(Ok(rumqttc::Event::Outgoing(_))) => {}
            Ok(Err(e)) => panic!("waiting for {what}: connection error: {e}"),
            Err(e) => panic!("no {what}: {e:?}"),
        }
    }
}

/// The next incoming packet on a rumqttc MQTT 5 connection.
fn next_v5(conn: &mut rumqttc::v5::Connection, what: &str) -> rumqttc::v5::mqttbytes::v5::Packet {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match conn.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(rumqttc::v5::Event::Incoming(p))) => return p,
            Ok(Ok(rumqttc::v5::Event::Outgoing(_))) => {}
            Ok(Err(e)) => panic!("waiting for {what}: connection error: {e}"),
            Err(e) => panic!("no {what}: {e:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks, each a function of the broker's MQTT port.
// ---------------------------------------------------------------------------------------------

/// MQTT-3.8.4-6 (3.1.1) / MQTT-3.8.4-8 (5): a message goes out at the minimum of its publish
/// QoS and the subscription's granted QoS.
fn check_qos_is_the_lower_of_publish_and_subscription(port: u16) {
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, SubscribeReasonCode as Granted5};
    use rumqttc::v5::mqttbytes::QoS as QoS5;

    let (v4, mut v4_conn) = rumqttc::Client::new(
        rumqttc::MqttOptions::new("qosmin-v4", "127.0.0.1", port),
        10,
    );
    v4.subscribe("qosmin/t", rumqttc::QoS::AtLeastOnce).unwrap();
    loop {
        if let rumqttc::Packet::SubAck(ack) = next_v4(&mut v4_conn, "3.1.1 SUBACK") {
            let granted = rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce);
            assert_eq!(ack.return_codes, [granted]);
            break;
        }
    }
    let (v5, mut v5_conn) = rumqttc::v5::Client::new(
        rumqttc::v5::MqttOptions::new("qosmin-v5", "127.0.0.1", port),
        10,
    );
    v5.subscribe("qosmin/t", QoS5::AtLeastOnce).unwrap();
    loop {
        if let Packet5::SubAck(ack) = next_v5(&mut v5_conn, "MQTT 5 SUBACK") {
            assert_eq!(ack.return_codes, [Granted5::Success(QoS5::AtLeastOnce)]);
            break;
        }
    }

    let (mut publisher, _) = Client::connect(port, &Connect::v311("qosmin-pub"));
    publisher.publish("qosmin/t", b"published-at-0", 0, false);
    publisher.publish("qosmin/t", b"published-at-2", 2, false);

    // Messages of different QoS may be reordered (MQTT-4.6.0-6 orders per topic and QoS), so
    // both are collected and matched by payload.
    let mut got_v4 = Vec::new();
    while got_v4.len() < 2 {
        if let rumqttc::Packet::Publish(p) = next_v4(&mut v4_conn, "3.1.1 PUBLISH") {
            got_v4.push((
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos as u8,
            ));
        }
    }
    got_v4.sort();
    assert_eq!(
        got_v4,
        [
            ("published-at-0".to_owned(), 0),
            ("published-at-2".to_owned(), 1)
        ],
        "3.1.1 subscriber at QoS 1: (payload, delivered QoS)"
    );
    let mut got_v5 = Vec::new();
    while got_v5.len() < 2 {
        if let Packet5::Publish(p) = next_v5(&mut v5_conn, "MQTT 5 PUBLISH") {
            got_v5.push((
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.qos as u8,
            ));
        }
    }
    got_v5.sort();
    assert_eq!(
        got_v5,
        [
            ("published-at-0".to_owned(), 0),
            ("published-at-2".to_owned(), 1)
        ],
        "MQTT 5 subscriber at QoS 1: (payload, delivered QoS)"
    );
}

/// MQTT-3.1.2-23: with a Session Expiry Interval > 0 the session outlives the connection and
/// a reconnect with Clean Start 0 resumes it (Session Present 1, MQTT-3.2.2-3) with what was
/// queued; once the interval has passed the session is gone (Session Present 0, nothing
/// queued).
fn check_session_expiry_outlives_a_disconnect_then_expires(port: u16) {
    let away = Connect::v5("expiry-sub").persistent().session_expiry(2);
    let (mut sub, present) = Client::connect(port, &away);
    assert!(!present, "no session exists yet for a new client id");
    sub.subscribe("expiry/t", 1);
    sub.disconnect();

    let (mut publisher, _) = Client::connect(port, &Connect::v5("expiry-pub"));
    publisher.publish("expiry/t", b"while-away", 1, false);

    let (mut sub, present) = Client::connect(port, &away);
    assert!(
        present,
        "reconnect within the expiry interval: Session Present must be 1"
    );
    let m = sub.next_message("the message queued while away");
    assert_eq!(
        (m.topic.as_str(), m.text().as_str(), m.qos),
        ("expiry/t", "while-away", 1)
    );

    // Away again (a network drop this time), with a message queued, past the interval.
    sub.drop_connection();
    publisher.publish("expiry/t", b"dies-with-the-session", 1, false);
    // Waiting out the 2 s expiry timer is the behaviour under test.
    std::thread::sleep(Duration::from_secs(3));

    let (mut sub, present) = Client::connect(port, &away);
    assert!(
        !present,
        "reconnect after the expiry interval: Session Present must be 0"
    );
    sub.subscribe("expiry/t", 1);
    publisher.publish("expiry/t", b"marker", 1, false);
    let m = sub.next_message("the marker");
    assert_eq!(
        m.text(),
        "marker",
        "a message queued for the expired session was delivered"
    );
}

/// MQTT-3.1.2-4, MQTT-3.1.2-5, MQTT-3.2.2-2: a 3.1.1 `clean_session=0` session keeps its
/// subscriptions, stores the QoS 1 and QoS 2 messages published while its client is away, and
/// delivers them, in order (MQTT-4.6.0-6), when the client comes back. QoS 0 messages published
/// meanwhile may or may not be queued (Mosquitto does not by default) and are ignored.
fn check_persistent_v311_session_receives_what_was_published_while_away(port: u16) {
    let away = Connect::v311("v311-away").persistent();
    let (mut sub, present) = Client::connect(port, &away);
    assert!(!present, "no session exists yet for a new client id");
    sub.subscribe("v311away/t", 1);
    sub.disconnect();

    let (mut publisher, _) = Client::connect(port, &Connect::v311("v311-away-pub"));
    let mut expected = Vec::new();
    for i in 0..12u8 {
        let qos = i % 3;
        let payload = format!("m{i:02}-q{qos}");
        publisher.publish("v311away/t", payload.as_bytes(), qos, false);
        if qos > 0 {
            expected.push(payload);
        }
    }

    let (mut sub, present) = Client::connect(port, &away);
    assert!(present, "a stored session: Session Present must be 1");
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let m = sub.next_message("the messages published while away");
        if !m.text().ends_with("-q0") {
            got.push(m.text());
        }
    }
    assert_eq!(got, expected, "QoS 1 and 2 messages published while away");
    // Nothing is delivered twice: the next one is a live marker.
    publisher.publish("v311away/t", b"marker", 1, false);
    loop {
        let m = sub.next_message("the marker");
        if !m.text().ends_with("-q0") {
            assert_eq!(m.text(), "marker", "a stored message was delivered twice");
            break;
        }
    }
}

/// MQTT-3.8.3-3: with No Local, a client's own messages are not sent back to it.
fn check_no_local_is_honoured(port: u16) {
    let (mut me, _) = Client::connect(port, &Connect::v5("nolocal-me"));
    me.subscribe("nolocal/t", 1 | NO_LOCAL);
    let (mut other, _) = Client::connect(port, &Connect::v5("nolocal-other"));
    me.publish("nolocal/t", b"own", 1, false);
    other.publish("nolocal/t", b"theirs", 1, false);
    let m = me.next_message("the other client's message");
    assert_eq!(
        m.text(),
        "theirs",
        "the client's own message came back despite No Local"
    );
}

/// MQTT-3.3.1-12 and MQTT-3.3.1-13: Retain As Published 0 clears the RETAIN flag of a live
/// message; 1 keeps it as published.
fn check_retain_as_published_is_honoured(port: u16) {
    let (mut sub, _) = Client::connect(port, &Connect::v5("rap-sub"));
    sub.subscribe("rap/as-published", 1 | RETAIN_AS_PUBLISHED);
    sub.subscribe("rap/cleared", 1);
    let (mut publisher, _) = Client::connect(port, &Connect::v5("rap-pub"));

    publisher.publish("rap/as-published", b"kept", 1, true);
    let m = sub.next_message("the message on the RAP=1 subscription");
    assert_eq!(m.text(), "kept");
    assert!(m.retain, "RAP=1: a retained live message keeps RETAIN=1");

    publisher.publish("rap/cleared", b"cleared", 1, true);
    let m = sub.next_message("the message on the RAP=0 subscription");
    assert_eq!(m.text(), "cleared");
    assert!(!m.retain, "RAP=0: a live message goes out with RETAIN=0");
}

/// MQTT-3.3.1-9, -10, -11: Retain Handling 0 sends the retained message on every SUBSCRIBE
/// (a repeated one replaces the subscription and re-sends, MQTT-3.8.4-3), 1 only when the
/// subscription did not exist yet, 2 never. Sent because of a SUBSCRIBE, it has RETAIN=1.
fn check_retain_handling_is_honoured(port: u16) {
    let (mut publisher, _) = Client::connect(port, &Connect::v5("rh-pub"));
    publisher.publish("rh/t", b"stored", 1, true);
    let assert_retained = |m: Message, what: &str| {
        assert_eq!(
            (m.text().as_str(), m.retain),
            ("stored", true),
            "{what}: the retained message, with RETAIN=1"
        );
    };

    let (mut every, _) = Client::connect(port, &Connect::v5("rh-every"));
    every.subscribe("rh/t", 1);
    assert_retained(every.next_message("retained (RH 0)"), "RH 0, new");
    every.subscribe("rh/t", 1);
    assert_retained(every.next_message("retained (RH 0)"), "RH 0, again");
    every.disconnect();

    let (mut if_new, _) = Client::connect(port, &Connect::v5("rh-if-new"));
    if_new.subscribe("rh/t", 1 | RETAIN_HANDLING_IF_NEW);
    assert_retained(if_new.next_message("retained (RH 1)"), "RH 1, new");
    if_new.subscribe("rh/t", 1 | RETAIN_HANDLING_IF_NEW);
    publisher.publish("rh/t", b"marker-1", 1, false);
    let m = if_new.next_message("the marker (RH 1)");
    assert_eq!(
        m.text(),
        "marker-1",
        "RH 1: the retained message was sent for an existing subscription"
    );

    let (mut never, _) = Client::connect(port, &Connect::v5("rh-never"));
    never.subscribe("rh/t", 1 | RETAIN_HANDLING_NEVER);
    publisher.publish("rh/t", b"marker-2", 1, false);
    let m = never.next_message("the marker (RH 2)");
    assert_eq!(m.text(), "marker-2", "RH 2: the retained message was sent");
}

/// MQTT-3.1.2-24, MQTT-3.1.2-25: the server never sends a client a packet over the Maximum
/// Packet Size it asked for; it discards that message for that client only, as if sent, and
/// the connection carries on.
fn check_client_maximum_packet_size_is_honoured(port: u16) {
    let (mut limited, _) = Client::connect(port, &Connect::v5("mps-limited").max_packet_size(1024));
    limited.subscribe("mps/t", 1);
    let (mut unlimited, _) = Client::connect(port, &Connect::v5("mps-unlimited"));
    unlimited.subscribe("mps/t", 1);
    let (mut publisher, _) = Client::connect(port, &Connect::v5("mps-pub"));
    publisher.publish("mps/t", &[b'x'; 4096], 1, false);
    publisher.publish("mps/t", b"small", 1, false);

    let m = unlimited.next_message("the 4 KB message");
    assert_eq!(m.payload.len(), 4096, "a client without a limit gets it");
    assert_eq!(unlimited.next_message("the small message").text(), "small");

    let m = limited.next_message("the small message");
    assert!(
        m.payload.len() < 1000,
        "a {}-byte message went to a client whose Maximum Packet Size is 1024",
        m.payload.len()
    );
    assert_eq!(m.text(), "small");
    limited.ping();
}

/// QoS 2 exactly once across dropped connections, with 3.1.1 persistent sessions.
///
/// Inbound, MQTT-4.3.3-2: until the PUBREL, a PUBLISH with the same packet identifier (here
/// resent with DUP after a reconnect) is acknowledged with PUBREC and not delivered again.
/// Outbound, MQTT-4.4.0-1 and MQTT-3.3.1-1: an unacknowledged PUBLISH is resent on reconnect
/// with DUP=1 and its original packet identifier; MQTT-4.3.3-1: once PUBREC came, the PUBREL
/// is resent, never the PUBLISH.
fn check_qos2_exactly_once_when_the_client_drops_mid_handshake(port: u16) {
    // Inbound: the publisher drops between PUBREC and PUBREL.
    let (mut sub, _) = Client::connect(port, &Connect::v311("q2in-sub"));
    sub.subscribe("q2/in", 2);
    let sender = Connect::v311("q2in-pub").persistent();
    let (mut publisher, _) = Client::connect(port, &sender);
    publisher.send(&publish_packet(false, "q2/in", b"once", 2, false, false, 7));
    let rec = publisher.expect(PUBREC, "PUBREC");
    assert_eq!(rec.pkid(), 7);
    publisher.drop_connection();

    let (mut publisher, present) = Client::connect(port, &sender);
    assert!(
        present,
        "the publisher's session (pkid 7 awaiting PUBREL) is resumed"
    );
    publisher.send(&publish_packet(false, "q2/in", b"once", 2, false, true, 7));
    let rec = publisher.expect(PUBREC, "PUBREC for the resent PUBLISH");
    assert_eq!(rec.pkid(), 7);
    publisher.send(&ack_packet(PUBREL, 7));
    loop {
        let f = publisher.read_frame("PUBCOMP");
        match f.kind() {
            // A server may repeat its PUBREC for pkid 7; that is harmless.
            PUBREC if f.pkid() == 7 => {}
            PUBCOMP => {
                assert_eq!(f.pkid(), 7);
                break;
            }
            _ => panic!("waiting for PUBCOMP: {f:?}"),
        }
    }
    publisher.publish("q2/in", b"marker", 1, false);
    assert_eq!(sub.next_message("the QoS 2 message").text(), "once");
    assert_eq!(
        sub.next_message("the marker").text(),
        "marker",
        "the QoS 2 message was delivered again after its resent PUBLISH"
    );

    // Outbound: the subscriber drops before PUBREC, then again before PUBCOMP.
    let receiver = Connect::v311("q2out-sub").persistent();
    let (mut sub, _) = Client::connect(port, &receiver);
    sub.auto_ack = false;
    sub.subscribe("q2/out", 2);
    let (mut publisher, _) = Client::connect(port, &Connect::v311("q2out-pub"));
    publisher.publish("q2/out", b"exactly", 2, false);
    let first = sub.next_message("the QoS 2 message");
    assert_eq!((first.text().as_str(), first.qos), ("exactly", 2));
    sub.drop_connection();

    let (mut sub, present) = Client::connect(port, &receiver);
    sub.auto_ack = false;
    assert!(present, "the subscriber's session is resumed");
    let again = sub.next_message("the unacknowledged PUBLISH, resent");
    assert_eq!(again.text(), "exactly");
    assert!(again.dup, "a re-delivered PUBLISH has DUP=1: {again:?}");
    assert_eq!(
        again.pkid, first.pkid,
        "resent with its original packet identifier"
    );
    sub.send(&ack_packet(PUBREC, again.pkid));
    let rel = sub.expect(PUBREL, "PUBREL");
    assert_eq!(rel.pkid(), again.pkid);
    sub.drop_connection();

    let (mut sub, present) = Client::connect(port, &receiver);
    sub.auto_ack = false;
    assert!(present, "the subscriber's session is resumed");
    let f = sub.read_frame("the PUBREL, resent");
    assert_eq!(
        (f.kind(), f.pkid()),
        (PUBREL, again.pkid),
        "after PUBREC the server resends PUBREL, not the PUBLISH: {f:?}"
    );
    sub.send(&ack_packet(PUBCOMP, again.pkid));
    sub.auto_ack = true;
    publisher.publish("q2/out", b"marker", 2, false);
    assert_eq!(
        sub.next_message("the marker").text(),
        "marker",
        "the completed QoS 2 message was delivered again"
    );
}

/// MQTT-4.7.2-1: filters starting with a wildcard do not match topics starting with `$`; a
/// filter spelling the `$` level out does. §4.7.1.2: `#` also matches the parent level (`a/#`
/// matches `a`). §4.7.1.3 and §4.7.3: `+` matches exactly one level, which may be empty
/// (`a/+/b` matches `a//b`, `+/+` matches `/x` and `sport/`, `sport/+` does not match
/// `sport`).
fn check_topic_filter_edge_cases(port: u16) {
    let topics = [
        "$roost-test/x",
        "a//b",
        "a",
        "a/b",
        "/x",
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1",
    ];
    // Each filter, and the topics of `topics` it matches.
    let cases: [(&str, &[&str]); 9] = [
        (
            "#",
            &[
                "a//b",
                "a",
                "a/b",
                "/x",
                "sport",
                "sport/",
                "sport/tennis",
                "sport/tennis/player1",
            ],
        ),
        ("$roost-test/#", &["$roost-test/x"]),
        ("+/x", &["/x"]),
        ("+", &["a", "sport"]),
        ("+/+", &["a/b", "/x", "sport/", "sport/tennis"]),
        ("a/+/b", &["a//b"]),
        ("a/#", &["a//b", "a", "a/b"]),
        ("sport/+", &["sport/", "sport/tennis"]),
        ("sport/tennis/#", &["sport/tennis", "sport/tennis/player1"]),
    ];
    // Between them these match every filter; each subscriber stops at its first marker.
    let markers = [
        "marker",
        "marker/x",
        "$roost-test/marker",
        "a/marker/b",
        "sport/marker",
        "sport/tennis/marker",
    ];
    let mut subscribers: Vec<Client> = cases
        .iter()
        .enumerate()
        .map(|(i, (filter, _))| {
            let (mut sub, _) = Client::connect(port, &Connect::v311(&format!("filter-{i}")));
            sub.subscribe(filter, 1);
            sub
        })
        .collect();
    // `$SYS/` is the broker's own: it may drop a client's publish there or close that client,
    // so a separate connection sends it (QoS 0) and waits until the server has closed it.
    let (mut sys, _) = Client::connect(port, &Connect::v311("filter-sys-pub"));
    sys.send(&publish_packet(
        false, "$SYS/x", b"probe", 0, false, false, 0,
    ));
    sys.disconnect();
    let (mut publisher, _) = Client::connect(port, &Connect::v311("filter-pub"));
    for topic in topics {
        publisher.publish(topic, b"probe", 1, false);
    }
    for topic in markers {
        publisher.publish(topic, b"marker", 1, false);
    }
    for ((filter, expected), sub) in cases.iter().zip(&mut subscribers) {
        let mut got = Vec::new();
        loop {
            let m = sub.next_message(&format!("a marker on {filter}"));
            match m.text().as_str() {
                "marker" => break,
                "probe" => got.push(m.topic),
                // Not this test's: the node's own status (retained, under `roost/`) on `#`.
                _ => {}
            }
        }
        got.sort();
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        assert_eq!(got, expected, "topics delivered to filter {filter:?}");
    }
}

/// MQTT 5 §4.8.2: a shared subscription (`$share/<group>/<filter>`) delivers each message to
/// one session of the group, and the group shares the load; a plain subscription to the same
/// filter still gets every message; a member that leaves gets nothing more, the others take
/// its share. Retained messages are sent for new non-shared subscriptions only (OASIS MQTT-234,
/// which added shared subscriptions to MQTT 5); Mosquitto 2.0.11 sends them to shared ones too,
/// which `shared_gets_retained` allows for its oracle run.
fn check_shared_subscription_delivers_each_message_once_per_group(
    port: u16,
    shared_gets_retained: bool,
) {
    let (mut publisher, _) = Client::connect(port, &Connect::v5("share-pub"));
    publisher.publish("share/t", b"retained", 1, true);
    let mut members: Vec<Client> = ["share-a", "share-b"]
        .iter()
        .map(|id| {
            let (mut member, _) = Client::connect(port, &Connect::v5(id));
            member.subscribe("$share/g/share/t", 1);
            member.subscribe(&format!("share/done/{id}"), 1);
            member
        })
        .collect();
    let (mut plain, _) = Client::connect(port, &Connect::v5("share-plain"));
    plain.subscribe("share/t", 1);
    assert_eq!(
        plain.next_message("the retained message (plain)").text(),
        "retained"
    );

    // Reads a member's messages up to its own marker; the retained message must not be there.
    let drain = |member: &mut Client, id: &str| -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let m = member.next_message(&format!("{id}'s messages and marker"));
            if m.topic.starts_with("share/done/") {
                return got;
            }
            if m.text() == "retained" {
                assert!(
                    shared_gets_retained && m.retain,
                    "{id}: a shared subscription got a retained message: {m:?}"
                );
                continue;
            }
            assert_eq!((m.topic.as_str(), m.qos), ("share/t", 1), "{id}: {m:?}");
            got.push(m.text());
        }
    };
    let sent: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for text in &sent {
        publisher.publish("share/t", text.as_bytes(), 1, false);
    }
    for id in ["share-a", "share-b"] {
        publisher.publish(&format!("share/done/{id}"), b"done", 1, false);
    }
    let got_a = drain(&mut members[0], "share-a");
    let got_b = drain(&mut members[1], "share-b");
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "the group shares the load: a got {got_a:?}, b got {got_b:?}"
    );
    let mut both: Vec<String> = got_a.iter().chain(&got_b).cloned().collect();
    both.sort_by_key(|t| t[1..].parse::<u32>().unwrap());
    assert_eq!(both, sent, "each message once to the group");
    for text in &sent {
        assert_eq!(&plain.next_message("every message (plain)").text(), text);
    }

    // b leaves (its session ends with the connection): a takes every message.
    members.pop().unwrap().disconnect();
    let later: Vec<String> = (10..14).map(|i| format!("m{i}")).collect();
    for text in &later {
        publisher.publish("share/t", text.as_bytes(), 1, false);
    }
    publisher.publish("share/done/share-a", b"done", 1, false);
    assert_eq!(
        drain(&mut members[0], "share-a"),
        later,
        "a alone gets them all"
    );
    publisher.publish("share/t", b"", 1, true);
}

/// The Receive Maximum Roost announces in its CONNACK (docs/broker.md).
const ROOST_RECEIVE_MAXIMUM: u16 = 100;

/// MQTT-3.3.4-9: an MQTT 5 client may have at most the server's Receive Maximum of QoS 2
/// publishes unreleased; one more and the server disconnects it with reason 0x93 (Receive
/// Maximum exceeded). A resent PUBLISH of an unreleased id is not a new one. Other clients
/// carry on. Roost only: Mosquitto announces a different maximum (20) and lets this pass.
fn check_receive_maximum_is_enforced(port: u16) {
    let (mut greedy, _) = Client::connect(port, &Connect::v5("rm-greedy"));
    for pkid in 1..=ROOST_RECEIVE_MAXIMUM {
        greedy.send(&publish_packet(true, "rm/t", b"x", 2, false, false, pkid));
        let rec = greedy.expect(PUBREC, "PUBREC");
        assert_eq!((rec.pkid(), rec.reason()), (pkid, 0));
    }
    // A resend of an unreleased publish is answered, not counted.
    greedy.send(&publish_packet(true, "rm/t", b"x", 2, false, true, 1));
    assert_eq!(greedy.expect(PUBREC, "PUBREC of the resend").pkid(), 1);
    greedy.send(&publish_packet(
        true,
        "rm/t",
        b"x",
        2,
        false,
        false,
        ROOST_RECEIVE_MAXIMUM + 1,
    ));
    let disconnect = greedy.expect(DISCONNECT, "DISCONNECT");
    assert_eq!(disconnect.body.first(), Some(&0x93), "{disconnect:?}");

    let (mut other, _) = Client::connect(port, &Connect::v5("rm-other"));
    other.subscribe("rm/other", 1);
    other.publish("rm/other", b"still here", 1, false);
    assert_eq!(other.next_message("a message").text(), "still here");
}

const FLOOD_PUBLISHERS: usize = 4;
const FLOOD_PER_PUBLISHER: usize = 5_000;
const FLOOD_PAYLOAD: usize = 4096;
/// The node's resident memory bound while it holds the flood back.
const FLOOD_RSS_LIMIT_KB: u64 = 64 * 1024;

/// A flood message's payload: publisher, sequence number, padding to [`FLOOD_PAYLOAD`] bytes.
fn flood_payload(publisher: usize, seq: usize) -> Vec<u8> {
    let mut payload = format!("{publisher}-{seq:05}-").into_bytes();
    payload.resize(FLOOD_PAYLOAD, b'.');
    payload
}

/// Publishes [`FLOOD_PER_PUBLISHER`] QoS 1 messages as fast as the broker acknowledges them
/// and returns when every PUBACK is in.
fn flood(port: u16, publisher: usize) {
    let mut options =
        rumqttc::MqttOptions::new(format!("flood-pub-{publisher}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = rumqttc::Client::new(options, 100);
    let sender = std::thread::spawn(move || {
        for seq in 0..FLOOD_PER_PUBLISHER {
            client
                .publish(
                    "flood/t",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    flood_payload(publisher, seq),
                )
                .unwrap();
        }
        // Kept alive: dropping the last handle would end the connection before the PUBACKs.
        client
    });
    let mut acked = 0;
    while acked < FLOOD_PER_PUBLISHER {
        if let rumqttc::Packet::PubAck(_) = next_v4(&mut conn, "PUBACK") {
            acked += 1;
        }
    }
    sender.join().unwrap();
}

/// MQTT §4.3.2 (QoS 1: at least once) with §4.9 flow control: a subscriber slower than its
/// publishers gets every QoS 1 message; the broker slows the publishers down (delays their
/// PUBACKs, stops reading them) instead of dropping messages or buffering without bound. A
/// message may come twice only when marked DUP. The flood is 80 MB of payload, so a broker that
/// buffered it instead of pushing back would pass any `rss_limit_kb` below that.
fn check_slow_qos1_subscriber_applies_backpressure_without_loss(
    port: u16,
    broker_pid: u32,
    rss_limit_kb: Option<u64>,
) {
    let mut options = rumqttc::MqttOptions::new("flood-sub", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    // A 3.1.1 client: no Receive Maximum, so how much the broker sends ahead of the PUBACKs is
    // up to the broker; the socket is what fills up.
    let (sub, mut conn) = rumqttc::Client::new(options, 10);
    sub.subscribe("flood/t", rumqttc::QoS::AtLeastOnce).unwrap();
    while !matches!(next_v4(&mut conn, "SUBACK"), rumqttc::Packet::SubAck(_)) {}

    let publishers: Vec<_> = (0..FLOOD_PUBLISHERS)
        .map(|n| std::thread::spawn(move || flood(port, n)))
        .collect();
    let total = FLOOD_PUBLISHERS * FLOOD_PER_PUBLISHER;
    let mut seen = HashSet::with_capacity(total);
    let mut received = 0usize;
    let mut peak_rss_kb = 0;
    while seen.len() < total {
        let what = format!("message {} of {total}", seen.len() + 1);
        let rumqttc::Packet::Publish(p) = next_v4(&mut conn, &what) else {
            continue;
        };
        let text = String::from_utf8_lossy(&p.payload[..16]).into_owned();
        let mut fields = text.split('-');
        let publisher: usize = fields.next().unwrap().parse().unwrap();
        let seq: usize = fields.next().unwrap().parse().unwrap();
        assert!(publisher < FLOOD_PUBLISHERS && seq < FLOOD_PER_PUBLISHER);
        assert_eq!(
            &p.payload[..],
            flood_payload(publisher, seq),
            "payload intact"
        );
        if !seen.insert((publisher, seq)) {
            assert!(p.dup, "message {publisher}-{seq} came twice without DUP");
        }
        received += 1;
        // The subscriber's own work: it reads steadily, but slower than four publishers write.
        // While it works nothing reads its socket, so the broker has to hold back.
        if received % 8 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if received % 500 == 0 {
            peak_rss_kb = peak_rss_kb.max(proc_status(broker_pid, "VmRSS:"));
        }
    }
    for p in publishers {
        p.join().expect("a publisher got all its PUBACKs");
    }
    if let Some(limit_kb) = rss_limit_kb {
        let hwm_kb = proc_status(broker_pid, "VmHWM:");
        assert!(
            peak_rss_kb.max(hwm_kb) < limit_kb,
            "broker RSS peaked at {hwm_kb} kB (highest sample {peak_rss_kb} kB), limit {limit_kb} kB"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Against Roost.
// ---------------------------------------------------------------------------------------------

#[test]
fn qos_is_the_lower_of_publish_and_subscription() {
    let node = Node::builder("sessions-qos-min").start();
    check_qos_is_the_lower_of_publish_and_subscription(node.port());
}

#[test]
fn session_expiry_outlives_a_disconnect_then_expires() {
    let node = Node::builder("sessions-expiry").start();
    check_session_expiry_outlives_a_disconnect_then_expires(node.port());
}

#[test]
fn persistent_v311_session_receives_what_was_published_while_away() {
    let node = Node::builder("sessions-v311-away").start();
    check_persistent_v311_session_receives_what_was_published_while_away(node.port());
}

#[test]
fn no_local_is_honoured() {
    let node = Node::builder("sessions-no-local").start();
    check_no_local_is_honoured(node.port());
}

#[test]
fn retain_as_published_is_honoured() {
    let node = Node::builder("sessions-rap").start();
    check_retain_as_published_is_honoured(node.port());
}

#[test]
fn retain_handling_is_honoured() {
    let node = Node::builder("sessions-retain-handling").start();
    check_retain_handling_is_honoured(node.port());
}

#[test]
fn client_maximum_packet_size_is_honoured() {
    let node = Node::builder("sessions-max-packet").start();
    check_client_maximum_packet_size_is_honoured(node.port());
}

#[test]
fn qos2_exactly_once_when_the_client_drops_mid_handshake() {
    let node = Node::builder("sessions-qos2").start();
    check_qos2_exactly_once_when_the_client_drops_mid_handshake(node.port());
}

#[test]
fn topic_filter_edge_cases() {
    let node = Node::builder("sessions-filters").start();
    check_topic_filter_edge_cases(node.port());
}

#[test]
fn shared_subscription_delivers_each_message_once_per_group() {
    let node = Node::builder("sessions-shared").start();
    check_shared_subscription_delivers_each_message_once_per_group(node.port(), false);
}

#[test]
fn receive_maximum_is_enforced() {
    let node = Node::builder("sessions-receive-maximum").start();
    check_receive_maximum_is_enforced(node.port());
    let (_, metrics) = node.get("/metrics");
    assert!(
        metrics.contains("roost_mqtt_protocol_errors_total{reason=\"receive_maximum_exceeded\"} 1"),
        "the refusal is counted"
    );
}

#[test]
fn a_slow_qos1_subscriber_applies_backpressure_without_loss() {
    let node = Node::builder("sessions-backpressure").start();
    check_slow_qos1_subscriber_applies_backpressure_without_loss(
        node.port(),
        node.pid(),
        Some(FLOOD_RSS_LIMIT_KB),
    );
}

// ---------------------------------------------------------------------------------------------
// Oracle checks: the same logic against Mosquitto.
// ---------------------------------------------------------------------------------------------

fn mosquitto() -> Mosquitto {
    Mosquitto::start().expect("mosquitto is installed (apt-get install mosquitto)")
}

/// Mosquitto with extra configuration lines: [`Mosquitto::start`] runs the defaults.
fn mosquitto_with(extra: &str) -> (ChildGuard, u16, tempfile::TempDir) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n"),
    )
    .unwrap();
    let process = ChildGuard(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)"),
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not open its port");
        // Mosquitto gives no readiness signal but its open port.
        std::thread::sleep(Duration::from_millis(10));
    }
    (process, port, dir)
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_shared_subscription_delivers_each_message_once_per_group() {
    let broker = mosquitto();
    check_shared_subscription_delivers_each_message_once_per_group(broker.port, true);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_qos_is_the_lower_of_publish_and_subscription() {
    let broker = mosquitto();
    check_qos_is_the_lower_of_publish_and_subscription(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_session_expiry_outlives_a_disconnect_then_expires() {
    let broker = mosquitto();
    check_session_expiry_outlives_a_disconnect_then_expires(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_persistent_v311_session_receives_what_was_published_while_away() {
    let broker = mosquitto();
    check_persistent_v311_session_receives_what_was_published_while_away(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_no_local_is_honoured() {
    let broker = mosquitto();
    check_no_local_is_honoured(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_retain_as_published_is_honoured() {
    let broker = mosquitto();
    check_retain_as_published_is_honoured(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_retain_handling_is_honoured() {
    let broker = mosquitto();
    check_retain_handling_is_honoured(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_client_maximum_packet_size_is_honoured() {
    let broker = mosquitto();
    check_client_maximum_packet_size_is_honoured(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_qos2_exactly_once_when_the_client_drops_mid_handshake() {
    let broker = mosquitto();
    check_qos2_exactly_once_when_the_client_drops_mid_handshake(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_topic_filter_edge_cases() {
    let broker = mosquitto();
    check_topic_filter_edge_cases(broker.port);
}

#[test]
#[ignore = "oracle: validates the test logic against Mosquitto"]
fn mosquitto_oracle_a_slow_qos1_subscriber_applies_backpressure_without_loss() {
    // Mosquitto does not push back on publishers: by default it queues at most 1,000 QoS 1
    // messages per client and drops the rest (`max_queued_messages`, a lost message fails this
    // check); unbounded, it delivers everything but holds the whole backlog (about 160 MB of
    // RSS here). So the oracle checks the delivery logic only, not the memory bound.
    let (process, port, _dir) = mosquitto_with("max_queued_messages 0");
    check_slow_qos1_subscriber_applies_backpressure_without_loss(port, process.0.id(), None);
}
