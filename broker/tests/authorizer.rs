//! The authorization hook, through a real broker on loopback: a denied publish is
//! acknowledged with "not authorized" and reaches no one, a denied filter gets a failure code
//! in the SUBACK, a will on a denied topic refuses the CONNECT, and each is counted;
//! everything else flows as usual.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use roost_broker::{Authorizer, Broker, BrokerSettings, ClientInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Nobody publishes under `secret/`; only user "admin" subscribes under `private/`.
struct Rules;

impl Authorizer for Rules {
    fn may_publish(&self, _: &ClientInfo<'_>, topic: &str) -> bool {
        !topic.starts_with("secret/")
    }

    fn may_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool {
        !filter.starts_with("private/") || client.username == Some("admin")
    }
}

fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut p = vec![byte1, body.len() as u8];
    p.extend_from_slice(body);
    p
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An MQTT 5 client speaking raw packets.
struct Client(TcpStream);

impl Client {
    async fn connect(port: u16, id: &str, user: Option<&str>) -> Client {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5];
        body.push(if user.is_some() { 0x82 } else { 0x02 });
        body.extend_from_slice(&[0, 60, 0]);
        string(&mut body, id);
        if let Some(user) = user {
            string(&mut body, user);
        }
        stream.write_all(&packet(0x10, &body)).await.unwrap();
        let mut client = Client(stream);
        let connack = client.read().await;
        assert_eq!((connack[0], connack[3]), (0x20, 0), "CONNACK success");
        client
    }

    /// The next packet, whole.
    async fn read(&mut self) -> Vec<u8> {
        let mut head = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), self.0.read_exact(&mut head))
            .await
            .expect("a packet within 10 s")
            .unwrap();
        assert!(head[1] < 128, "short packets only in this test");
        let mut body = vec![0u8; usize::from(head[1])];
        self.0.read_exact(&mut body).await.unwrap();
        let mut whole = head.to_vec();
        whole.extend(body);
        whole
    }

    async fn subscribe(&mut self, pkid: u16, filter: &str) -> u8 {
        let mut body = pkid.to_be_bytes().to_vec();
        body.push(0);
        string(&mut body, filter);
        body.push(1);
        self.0.write_all(&packet(0x82, &body)).await.unwrap();
        let suback = self.read().await;
        assert_eq!(suback[0], 0x90);
        suback[5]
    }

    /// Publishes at QoS 1 and returns the PUBACK's reason code.
    async fn publish(&mut self, pkid: u16, topic: &str, payload: &[u8]) -> u8 {
        let mut body = Vec::new();
        string(&mut body, topic);
        body.extend_from_slice(&pkid.to_be_bytes());
        body.push(0);
        body.extend_from_slice(payload);
        self.0.write_all(&packet(0x32, &body)).await.unwrap();
        let puback = self.read().await;
        assert_eq!(puback[0], 0x40);
        puback.get(4).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_publishes_and_subscriptions_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let settings = BrokerSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 16,
        max_packet_size: 64 * 1024,
        connect_timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(5),
        max_session_expiry: Duration::from_secs(60),
        max_queued_messages: 100,
        data_dir: dir.path().to_owned(),
        node: "node-a".into(),
        mesh: roost_broker::MeshSettings::default(),
    };
    let (token, tracker) = (CancellationToken::new(), TaskTracker::new());
    let registry = prometheus::Registry::new();
    let broker = Broker::start_with(
        settings,
        Arc::new(Rules),
        &registry,
        token.clone(),
        &tracker,
    )
    .await
    .unwrap();
    let port = broker.local_addr().port();

    let mut reader = Client::connect(port, "reader", None).await;
    assert_eq!(
        reader.subscribe(1, "private/#").await,
        0x87,
        "denied filter"
    );
    assert_eq!(reader.subscribe(2, "#").await, 1, "allowed filter");
    let mut admin = Client::connect(port, "admin-reader", Some("admin")).await;
    assert_eq!(
        admin.subscribe(1, "private/#").await,
        1,
        "allowed for admin"
    );

    let mut writer = Client::connect(port, "writer", None).await;
    assert_eq!(writer.publish(1, "secret/x", b"no").await, 0x87);
    assert_eq!(writer.publish(2, "open/y", b"yes").await, 0);
    // The reader's first message is the allowed one: the denied publish reached no one.
    let delivered = reader.read().await;
    assert_eq!(delivered[0] & 0xf0, 0x30);
    assert!(delivered.ends_with(b"yes"), "{delivered:02x?}");
    assert!(delivered.windows(6).any(|w| w == b"open/y"));
    let metrics = broker.metrics();
    assert_eq!(
        metrics.dropped.with_label_values(&["not_authorized"]).get(),
        1
    );
    let refused = metrics
        .subscriptions_refused
        .with_label_values(&["not_authorized"]);
    assert_eq!(refused.get(), 1);

    // A will is a publish: one on a denied topic is refused when the client connects.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 60, 0];
    string(&mut body, "sneaky");
    body.push(0);
    string(&mut body, "secret/will");
    string(&mut body, "gone");
    stream.write_all(&packet(0x10, &body)).await.unwrap();
    let mut connack = Client(stream).read().await;
    connack.truncate(4);
    assert_eq!(connack, [0x20, 3, 0, 0x87], "CONNACK not authorized");
    let rejected = metrics
        .connections_rejected
        .with_label_values(&["will_not_authorized"])
        .get();
    assert_eq!(rejected, 1);

    token.cancel();
    tracker.close();
    tracker.wait().await;
    broker.close().await;
}
