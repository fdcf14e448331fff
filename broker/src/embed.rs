//! rumqttd inside Roost: its router thread, its MQTT 5 server on an internal loopback port,
//! and a factory for in-process links. Only this file and `client.rs` touch
//! rumqttd's API, so the next step of the edge (sessions on links instead of internal
//! sockets, docs/broker.md) changes the crate's inside and nothing outside it.
//!
//! Why not `rumqttd::Broker`: its `start()` blocks, runs one thread and runtime per listener,
//! and allows new links only before it is called. Roost owns the `Router` instead, runs the
//! server on one small thread of its own, and can open links at any time.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use rumqttd::{
    ConnectionSettings, LinkType, Notification, Router, RouterConfig, Server, ServerSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::frame;
use crate::settings::BrokerSettings;

/// Builds an in-process link to the router. Blocking: it waits for the router's answer, so
/// call it from `spawn_blocking` or a thread of its own.
pub(crate) type LinkFactory = Arc<dyn Fn(&str) -> Result<(LinkTx, LinkRx)> + Send + Sync>;

/// Client ids of the node's own links and probes. The edge refuses network clients that
/// claim one: rumqttd would otherwise let them take over (and silence) the node's links.
pub(crate) const INTERNAL_ID_PREFIX: &str = "roost-internal-";

/// Bytes of topic and payload per segment of each filter's commitlog. rumqttd keeps
/// `SEGMENT_SIZE * SEGMENT_COUNT` per filter for subscribers that lag: sized for a Pi.
const SEGMENT_SIZE: usize = 256 * 1024;
/// Segments kept per filter.
const SEGMENT_COUNT: usize = 4;
/// Bytes MQTT 3.1.1 → 5 translation may add to a packet (a CONNECT gains up to 7).
const TRANSLATION_HEADROOM: usize = 16;
/// Router slots kept beyond the network connections, for the node's own links.
const INTERNAL_LINKS: usize = 256;
/// How long the internal server gets to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at finding a free internal port when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// The running rumqttd pieces.
pub(crate) struct Embedded {
    /// Where the internal MQTT 5 server listens (loopback only). Every client reaches it
    /// through the edge, which translates for MQTT 3.1.1 clients (`translate.rs`).
    pub v5: SocketAddr,
    /// Creates in-process links.
    pub links: LinkFactory,
}

/// One internal server for the rumqttd thread to run.
struct ServerRequest {
    settings: ServerSettings,
    /// Told why the server stopped (in practice: it could not bind).
    stopped: oneshot::Sender<String>,
}

/// Starts the router and the internal server, and proves the server is ours before
/// returning: a probe client publishes through it and an in-process link must see the message.
/// That guards against another process taking a port between our pick and rumqttd's bind.
pub(crate) async fn start(settings: &BrokerSettings) -> Result<Embedded> {
    let router_config = RouterConfig {
        max_connections: settings.max_connections + INTERNAL_LINKS,
        max_outgoing_packet_count: 200,
        max_segment_size: SEGMENT_SIZE,
        max_segment_count: SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, router_config).spawn();

    // The servers run on a current-thread runtime of their own: rumqttd's links can block on
    // a full router channel, which must never stall the node's workers. rumqttd has no way to
    // stop a server, so the thread lives until the process exits.
    let (requests, mut incoming) = mpsc::unbounded_channel::<ServerRequest>();
    let server_router = router_tx.clone();
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the rumqttd runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                while let Some(request) = incoming.recv().await {
                    let router = server_router.clone();
                    tokio::task::spawn_local(async move {
                        let ServerRequest { settings, stopped } = request;
                        let result = Server::new(settings, router, V5)
                            .start(LinkType::Remote)
                            .await;
                        let reason = match result {
                            Ok(()) => "stopped".to_owned(),
                            Err(e) => e.to_string(),
                        };
                        let _ = stopped.send(reason);
                    });
                }
                std::future::pending::<()>().await;
            });
        })
        .map_err(|e| Error::Startup(format!("spawning the rumqttd thread: {e}")))?;

    let links: LinkFactory = Arc::new(move |client_id: &str| {
        LinkBuilder::new(client_id, router_tx.clone())
            .build()
            .map(|(tx, rx, _ack)| (tx, rx))
            .map_err(|e| link_error(client_id, e))
    });

    let connections = ConnectionSettings {
        connection_timeout_ms: u16::try_from(settings.connect_timeout.as_millis())
            .unwrap_or(u16::MAX),
        // The edge enforces the configured limit on whole packets; rumqttd checks what reaches
        // it, which translation can grow by a few bytes (translate.rs), so it gets headroom.
        max_payload_size: settings.max_packet_size + TRANSLATION_HEADROOM,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let nonce = format!("{}-{}", std::process::id(), unix_nanos());
    let probe_id = format!("{INTERNAL_ID_PREFIX}probe-{nonce}");
    let (mut probe_tx, mut probe_rx) = {
        let links = links.clone();
        let filter = format!("roost-internal/probe/{nonce}/#");
        let id = probe_id.clone();
        blocking(move || {
            let (mut tx, rx) = links(&id)?;
            tx.subscribe(filter).map_err(|e| link_error(&id, e))?;
            Ok((tx, rx))
        })
        .await?
    };

    let topic = format!("roost-internal/probe/{nonce}/v5");
    let client_id = format!("{probe_id}-v5");
    let mut attempt = 0;
    let v5 = loop {
        attempt += 1;
        let addr = free_loopback_port()?;
        let (stopped, stopped_rx) = oneshot::channel();
        let request = ServerRequest {
            settings: ServerSettings {
                name: "internal-v5".into(),
                listen: addr,
                tls: None,
                next_connection_delay_ms: 0,
                connections: connections.clone(),
            },
            stopped,
        };
        requests
            .send(request)
            .map_err(|_| Error::Startup("the rumqttd thread has stopped".into()))?;
        match verify(addr, &client_id, &topic, &mut probe_rx, stopped_rx).await {
            Ok(()) => break addr,
            Err(e) if attempt < PORT_ATTEMPTS => {
                tracing::debug!(%addr, error = %e, "internal listener not usable, retrying");
            }
            Err(e) => return Err(e),
        }
    };

    // The probe link is done: a DISCONNECT frees its router slot.
    let id = probe_id.clone();
    blocking(move || send_blocking(&id, &mut probe_tx, disconnect())).await?;
    drop(probe_rx);

    Ok(Embedded { v5, links })
}

/// Connects a probe client to `addr`, publishes on `topic`, and waits for the probe link to
/// receive it. Fails fast if the server reports that it stopped (a port taken under us).
async fn verify(
    addr: SocketAddr,
    client_id: &str,
    topic: &str,
    probe: &mut LinkRx,
    mut stopped: oneshot::Receiver<String>,
) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let fail = |what: String| Error::Startup(format!("internal listener {addr}: {what}"));
    let run = async {
        // rumqttd binds on its own thread; until it has, connecting is refused.
        let mut stream = loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        };
        let io = |e: std::io::Error| fail(e.to_string());
        stream
            .write_all(&probe_connect(client_id))
            .await
            .map_err(io)?;
        let mut buf = Vec::with_capacity(64);
        let connack = loop {
            if let Some(header) =
                frame::parse_header(&buf, 1024).map_err(|e| fail(e.to_string()))?
            {
                if buf.len() >= header.total_len() {
                    break header;
                }
            }
            let mut chunk = [0u8; 64];
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(fail("closed before CONNACK".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if connack.kind() != 2 || buf.get(connack.header_len + 1) != Some(&0) {
            return Err(fail(format!("refused the probe: {buf:02x?}")));
        }
        stream.write_all(&probe_publish(topic)).await.map_err(io)?;
        loop {
            match probe.next().await {
                Ok(Some(Notification::Forward(f))) if f.publish.topic == topic.as_bytes() => {
                    return Ok(());
                }
                Ok(Some(Notification::Unschedule)) => {
                    probe.wake().await.map_err(|e| fail(e.to_string()))?;
                }
                Ok(_) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    };
    tokio::select! {
        result = run => result,
        reason = &mut stopped => Err(fail(reason.unwrap_or_else(|_| "server thread gone".into()))),
        () = tokio::time::sleep_until(deadline) => Err(fail("timed out".into())),
    }
}

/// An MQTT 5 CONNECT for the probe client, clean start, no will.
fn probe_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0];
    push_str(&mut body, client_id);
    frame::packet(0x10, &body)
}

/// An MQTT 5 QoS 0 PUBLISH of a short payload on `topic`.
fn probe_publish(topic: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + 8);
    push_str(&mut body, topic);
    body.push(0);
    body.extend_from_slice(b"probe");
    frame::packet(0x30, &body)
}

fn push_str(buf: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// A loopback port that was free a moment ago.
fn free_loopback_port() -> Result<SocketAddr> {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Startup(format!("finding a free loopback port: {e}")))
}

/// Sends a packet on a link, from a thread that may block.
///
/// In rumqttd 0.20 `LinkTx::send` is async in name only: it never awaits, and it may block on
/// the router's bounded channel. One poll therefore completes it; should a rumqttd upgrade make
/// it really wait, this reports an error instead of blocking a runtime.
pub(crate) fn send_blocking(client_id: &str, link: &mut LinkTx, packet: Packet) -> Result<()> {
    match futures_util::FutureExt::now_or_never(link.send(packet)) {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(link_error(client_id, e)),
        None => Err(Error::LinkWouldWait {
            client_id: client_id.to_owned(),
        }),
    }
}

/// A normal DISCONNECT, which makes the router drop a link without firing a will.
pub(crate) fn disconnect() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// Runs blocking rumqttd calls off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Startup(format!("blocking task failed: {e}")))?
}

pub(crate) fn link_error(client_id: &str, e: LinkError) -> Error {
    Error::Link {
        client_id: client_id.to_owned(),
        source: Box::new(e),
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Protocol;

    #[test]
    fn probe_packets_parse_as_mqtt5() {
        let c = probe_connect("probe-1");
        let h = frame::parse_header(&c, 1024).unwrap().unwrap();
        let parsed = frame::parse_connect(&c, &h).unwrap();
        assert_eq!(parsed.protocol, Protocol::V5);
        assert_eq!(parsed.client_id, "probe-1");
        let p = probe_publish("x/y");
        let h = frame::parse_header(&p, 1024).unwrap().unwrap();
        assert_eq!(
            frame::parse_publish(&p, &h, Protocol::V5).unwrap().topic,
            "x/y"
        );
    }
}
