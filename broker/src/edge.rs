//! Roost's network edge: the public MQTT listener. Every client connection enters here. The
//! edge enforces the connection limit, the CONNECT deadline and the packet size limit, hands
//! every client to rumqttd's internal MQTT 5 server (translating for MQTT 3.1.1 clients, see
//! `translate.rs`), and watches every packet go by for metrics and the retained index.
//!
//! Bad input costs the sender its connection, with a log line and a metric; the node and every
//! other client carry on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::embed::INTERNAL_ID_PREFIX;
use crate::frame::{self, kind, Connect, FrameError, Header, Protocol};
use crate::metrics::BrokerMetrics;
use crate::retained::{self, Change, Retained};
use crate::settings::BrokerSettings;
use crate::translate;

/// Initial buffer per direction per connection; grows to the largest packet seen.
const BUFFER: usize = 2048;
/// TCP keepalive: an idle client that vanished (power cut, Wi-Fi gone) is found within about
/// `KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES` and its slot freed.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the connection is dropped.
const KEEPALIVE_RETRIES: u32 = 3;
/// Keepalive probes are not sent while written data is unacknowledged; a client that vanished
/// with messages on their way to it is dropped after this long instead of Linux's ~15 minutes.
const USER_TIMEOUT: Duration = Duration::from_secs(90);

/// Everything a connection task needs, shared by all of them.
pub(crate) struct Edge {
    /// Limits and timeouts from the config.
    pub settings: BrokerSettings,
    /// rumqttd's internal MQTT 5 server.
    pub upstream: SocketAddr,
    /// Counts connections, packets and bytes.
    pub metrics: BrokerMetrics,
    /// The durable retained set, fed from every publish and fired will.
    pub retained: Retained,
}

/// Why a connection ended, for the log and the metrics.
#[derive(Debug)]
enum End {
    /// The client closed the connection or sent DISCONNECT.
    Client,
    /// rumqttd closed it (keep-alive expiry, its own checks, takeover).
    Broker,
    /// The node is shutting down.
    Shutdown,
    /// The client broke the protocol.
    Protocol(FrameError),
    /// rumqttd sent something the edge cannot frame or translate (a bug on our side of the
    /// edge, not the client's fault).
    Upstream(FrameError),
    /// A socket failed.
    Io(std::io::Error),
}

/// Accepts connections until `token` is cancelled.
pub(crate) async fn run(
    edge: Arc<Edge>,
    listener: TcpListener,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(edge.settings.max_connections));
    loop {
        let accepted = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors or similar: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accepting an MQTT connection failed");
                edge.metrics
                    .connections_rejected
                    .with_label_values(&["accept_error"])
                    .inc();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = edge.settings.max_connections, "MQTT connection refused: connection limit reached");
            edge.metrics
                .connections_rejected
                .with_label_values(&["limit"])
                .inc();
            continue;
        };
        let edge = edge.clone();
        let token = token.clone();
        let span = tracing::debug_span!("mqtt", %peer, client_id = tracing::field::Empty);
        tracker.spawn(
            async move {
                edge.serve(stream, token).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Sets the socket options every client socket gets.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let socket = SockRef::from(stream);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
    if let Err(e) = socket.set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        tracing::debug!(error = %e, "cannot set TCP user timeout");
    }
}

impl Edge {
    /// Runs one client connection to its end.
    async fn serve(&self, mut client: TcpStream, token: CancellationToken) {
        self.metrics.connections_accepted.inc();
        self.metrics.connections.inc();
        tune(&client);
        let mut inbound = BytesMut::with_capacity(BUFFER);
        let connect = tokio::select! {
            () = token.cancelled() => Err(End::Shutdown),
            read = tokio::time::timeout(self.settings.connect_timeout, self.read_connect(&mut client, &mut inbound)) => {
                read.unwrap_or_else(|_| {
                    self.reject("connect_timeout", "no CONNECT in time");
                    Err(End::Client)
                })
            }
        };
        let end = match connect {
            Ok((connect, header)) => {
                tracing::Span::current().record("client_id", connect.client_id.as_str());
                self.relay(client, inbound, connect, header, &token).await
            }
            Err(end) => end,
        };
        match &end {
            End::Protocol(e) => {
                tracing::warn!(error = %e, "MQTT connection closed: protocol error")
            }
            End::Upstream(e) => {
                tracing::error!(error = %e, "MQTT connection closed: the internal broker sent a packet the edge cannot relay")
            }
            End::Io(e) => tracing::debug!(error = %e, "MQTT connection closed: socket error"),
            other => tracing::debug!(end = ?other, "MQTT connection closed"),
        }
        self.metrics.connections.dec();
    }

    /// Reads the first packet, which must be a CONNECT of MQTT 3.1.1 or 5 from a client id
    /// that is not reserved. Refuses the others with the CONNACK their generation understands.
    async fn read_connect(
        &self,
        client: &mut TcpStream,
        buf: &mut BytesMut,
    ) -> Result<(Connect, Header), End> {
        let header = loop {
            // A CONNECT's first byte is always 0x10; anything else (an HTTP request, TLS to
            // the plain port, noise) is refused at once instead of waiting out the timeout.
            if let Some(&first) = buf.first() {
                if first != 0x10 {
                    return Err(self.protocol_error(FrameError::NotConnect(first >> 4)));
                }
            }
            match frame::parse_header(buf, self.settings.max_packet_size) {
                Ok(Some(h)) if buf.len() >= h.total_len() => break h,
                Ok(Some(h)) => buf.reserve(h.total_len() - buf.len()),
                Ok(None) => {}
                Err(e) => return Err(self.protocol_error(e)),
            }
            match client.read_buf(buf).await {
                Ok(0) => return Err(End::Client),
                Ok(n) => self.metrics.bytes_received.inc_by(n as u64),
                Err(e) => return Err(End::Io(e)),
            }
        };
        let connect = frame::parse_connect(buf, &header).map_err(|e| self.protocol_error(e))?;
        let refusal = match connect.protocol {
            Protocol::V31 | Protocol::Other(_) => {
                Some((1, "unsupported_protocol", "MQTT 3.1.1 and 5 only"))
            }
            _ if connect.client_id.starts_with(INTERNAL_ID_PREFIX) => Some((
                2,
                "reserved_client_id",
                "client ids starting with roost-internal- are the node's own",
            )),
            _ => None,
        };
        if let Some((code, reason, detail)) = refusal {
            self.reject(reason, detail);
            let _ = client
                .write_all(&frame::connack_refusal(connect.protocol, code))
                .await;
            return Err(End::Client);
        }
        Ok((connect, header))
    }

    /// Connects the client to rumqttd and moves packets both ways until either side ends.
    async fn relay(
        &self,
        mut client: TcpStream,
        mut inbound: BytesMut,
        connect: Connect,
        header: Header,
        token: &CancellationToken,
    ) -> End {
        let mut upstream = match TcpStream::connect(self.upstream).await {
            Ok(stream) => stream,
            Err(e) => {
                self.reject("broker_unavailable", "internal broker unreachable");
                let _ = client
                    .write_all(&frame::connack_refusal(connect.protocol, 3))
                    .await;
                return End::Io(e);
            }
        };
        let _ = upstream.set_nodelay(true);
        let v311 = connect.protocol == Protocol::V311;
        // The CONNECT goes first, as read; anything pipelined behind it is handled below.
        let first = &inbound[..header.total_len()];
        let first = if v311 {
            match translate::client_to_v5(first, &header) {
                Ok(v5) => v5,
                Err(e) => return self.protocol_error(e),
            }
        } else {
            first.to_vec()
        };
        if let Err(e) = upstream.write_all(&first).await {
            return End::Io(e);
        }
        inbound.advance(header.total_len());

        let mut accepted = false;
        let mut clean = false;
        let end = {
            let (client_rx, mut client_tx) = client.split();
            let (broker_rx, broker_tx) = upstream.split();
            let to_broker =
                self.client_to_broker(client_rx, broker_tx, inbound, connect.protocol, &mut clean);
            let to_client = self.broker_to_client(broker_rx, &mut client_tx, v311, &mut accepted);
            tokio::select! {
                end = to_broker => end,
                end = to_client => end,
                () = token.cancelled() => End::Shutdown,
            }
        };
        // rumqttd publishes the will of an accepted session that ends without a clean
        // DISCONNECT; keep the retained set in step with that.
        if let (true, false, Some(will)) = (accepted, clean, &connect.will) {
            if will.payload.is_empty() {
                self.retained.record(&will.topic, Change::Delete).await;
            } else if will.retain {
                let packet = retained::publish_packet(&will.topic, &will.payload);
                self.retained.record(&will.topic, Change::Set(packet)).await;
            }
        }
        end
    }

    /// Client to broker: frames every packet, enforces the size limit, watches publishes,
    /// translates 3.1.1 packets to MQTT 5, and makes each retained change durable before the
    /// publish that carries it goes on (so a PUBACK means the retained message is on disk).
    async fn client_to_broker(
        &self,
        mut rx: ReadHalf<'_>,
        mut tx: WriteHalf<'_>,
        mut buf: BytesMut,
        protocol: Protocol,
        clean: &mut bool,
    ) -> End {
        let published = self
            .metrics
            .messages_received
            .with_label_values(&["network"]);
        let v311 = protocol == Protocol::V311;
        let mut out = Vec::new();
        // Whether the packet at the front of `buf` already had its retained change recorded.
        let mut front_recorded = false;
        loop {
            // Walk the complete packets at the front of the buffer, up to the first one whose
            // retained change must be made durable before it is forwarded.
            let mut ready = 0;
            let mut durable_first = None;
            loop {
                let header = match frame::parse_header(&buf[ready..], self.settings.max_packet_size)
                {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return self.protocol_error(e),
                };
                let available = buf.len() - ready;
                if available < header.total_len() {
                    buf.reserve(header.total_len() - available);
                    break;
                }
                let packet = &buf[ready..ready + header.total_len()];
                let v5 = if v311 {
                    match translate::client_to_v5(packet, &header) {
                        Ok(v5) => Some(v5),
                        Err(e) => return self.protocol_error(e),
                    }
                } else {
                    None
                };
                let v5_packet = v5.as_deref().unwrap_or(packet);
                match header.kind() {
                    kind::PUBLISH => {
                        let info = match frame::parse_publish(packet, &header, protocol) {
                            Ok(info) => info,
                            Err(e) => return self.protocol_error(e),
                        };
                        let recorded = ready == 0 && front_recorded;
                        if !recorded {
                            let v5_header = if v311 {
                                match frame::parse_header(v5_packet, usize::MAX) {
                                    Ok(Some(h)) => h,
                                    _ => {
                                        return self
                                            .protocol_error(FrameError::Malformed("PUBLISH"))
                                    }
                                }
                            } else {
                                header
                            };
                            if let Some(change) = retained::change_of(&info, v5_packet, &v5_header)
                            {
                                durable_first = Some((info.topic, change));
                                break;
                            }
                        }
                        published.inc();
                    }
                    // rumqttd drops the will on any DISCONNECT, MQTT 5 reason 0x04 ("publish
                    // the will anyway") included; the retained set mirrors what rumqttd does.
                    kind::DISCONNECT => *clean = true,
                    kind::CONNECT => {
                        return self.protocol_error(FrameError::Malformed("second CONNECT"))
                    }
                    _ => {}
                }
                out.extend_from_slice(v5_packet);
                ready += header.total_len();
            }
            if ready > 0 {
                if let Err(e) = tx.write_all(&out).await {
                    return End::Io(e);
                }
                out.clear();
                buf.advance(ready);
                front_recorded = false;
            }
            if let Some((topic, change)) = durable_first {
                // Everything before it is forwarded; now make it durable, then walk again
                // (without reading) so it is forwarded in its place.
                self.retained.record(&topic, change).await;
                front_recorded = true;
                continue;
            }
            match rx.read_buf(&mut buf).await {
                Ok(0) => return End::Client,
                Ok(n) => self.metrics.bytes_received.inc_by(n as u64),
                Err(e) => return End::Io(e),
            }
            // Many device clients leave Nagle on; at QoS 0 nothing flows back to carry our ACK,
            // so a delayed ACK would hold their next publish. ACK at once (re-armed per read).
            let _ = SockRef::from(rx.as_ref()).set_tcp_quickack(true);
        }
    }

    /// Broker to client: counts the publishes delivered, notes the CONNACK, and translates
    /// for 3.1.1 clients. MQTT 5 traffic is forwarded as it arrives, packet parts included.
    async fn broker_to_client(
        &self,
        mut rx: ReadHalf<'_>,
        tx: &mut WriteHalf<'_>,
        v311: bool,
        accepted: &mut bool,
    ) -> End {
        let delivered = self.metrics.messages_sent.with_label_values(&["network"]);
        let mut buf = BytesMut::with_capacity(BUFFER);
        let mut out = Vec::new();
        // Bytes of the current packet still to come, when a v5 packet spans reads.
        let mut pending = 0usize;
        let mut first = true;
        loop {
            match rx.read_buf(&mut buf).await {
                Ok(0) => return End::Broker,
                Ok(_) => {}
                Err(e) => return End::Io(e),
            }
            // rumqttd does not set TCP_NODELAY on the sockets it accepts, so Nagle holds each of
            // its small writes until our previous ACK; delayed ACKs made QoS 0 deliveries wait
            // milliseconds. Quick-ack mode is not sticky in Linux, so it is re-armed per read.
            let _ = SockRef::from(rx.as_ref()).set_tcp_quickack(true);
            let mut at = 0;
            while at < buf.len() {
                if pending > 0 {
                    let step = pending.min(buf.len() - at);
                    pending -= step;
                    at += step;
                    continue;
                }
                let header = match frame::parse_header(&buf[at..], usize::MAX) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return End::Upstream(e),
                };
                let complete = buf.len() - at >= header.total_len();
                if first && header.kind() == kind::CONNACK {
                    if !complete {
                        break;
                    }
                    // MQTT 5 CONNACK: flags, then the reason code.
                    *accepted = buf.get(at + header.header_len + 1) == Some(&0);
                    first = false;
                }
                if header.kind() == kind::PUBLISH && (complete || !v311) {
                    delivered.inc();
                }
                if v311 {
                    if !complete {
                        buf.reserve(header.total_len() - (buf.len() - at));
                        break;
                    }
                    let packet = &buf[at..at + header.total_len()];
                    match translate::server_to_v311(packet, &header) {
                        Ok(Some(v4)) => out.extend_from_slice(&v4),
                        Ok(None) => {}
                        Err(e) => return End::Upstream(e),
                    }
                    at += header.total_len();
                } else {
                    let step = header.total_len().min(buf.len() - at);
                    pending = header.total_len() - step;
                    at += step;
                }
            }
            let written = if v311 { &out[..] } else { &buf[..at] };
            if let Err(e) = tx.write_all(written).await {
                return End::Io(e);
            }
            self.metrics.bytes_sent.inc_by(written.len() as u64);
            out.clear();
            buf.advance(at);
        }
    }

    fn reject(&self, reason: &'static str, detail: &str) {
        tracing::warn!(reason, detail, "MQTT connection refused");
        self.metrics
            .connections_rejected
            .with_label_values(&[reason])
            .inc();
    }

    fn protocol_error(&self, e: FrameError) -> End {
        let reason = match &e {
            FrameError::MalformedLength => "malformed_length",
            FrameError::TooLarge { .. } => "packet_too_large",
            FrameError::Malformed(_) => "malformed_packet",
            FrameError::NotConnect(_) => "expected_connect",
            FrameError::UnknownProtocol => "unknown_protocol",
        };
        self.metrics
            .protocol_errors
            .with_label_values(&[reason])
            .inc();
        End::Protocol(e)
    }
}
