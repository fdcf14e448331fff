//! Roost's network edge: the public MQTT listener. Every client connection enters here; the
//! edge enforces the connection limit, the CONNECT deadline and the packet size limit, routes
//! MQTT 3.1.1 and MQTT 5 clients (one port) to rumqttd's matching internal server, and watches
//! every packet go by for metrics and the retained index.
//!
//! It frames packets but never rewrites them. Bad input costs the sender its connection, with
//! a log line and a metric; the node and every other client carry on.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::frame::{self, kind, Connect, FrameError, Header, Protocol};
use crate::metrics::BrokerMetrics;
use crate::retained::RetainedIndex;
use crate::settings::BrokerSettings;

/// Initial buffer per direction per connection; grows to the largest packet seen.
const BUFFER: usize = 2048;

/// Everything a connection task needs, shared by all of them.
pub(crate) struct Edge {
    /// Limits and timeouts from the config.
    pub settings: BrokerSettings,
    /// rumqttd's internal MQTT 3.1.1 server.
    pub v4: SocketAddr,
    /// rumqttd's internal MQTT 5 server.
    pub v5: SocketAddr,
    /// Counts connections, packets and bytes.
    pub metrics: BrokerMetrics,
    /// Retained topics, fed from every publish and fired will.
    pub retained: RetainedIndex,
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
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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

impl Edge {
    /// Runs one client connection to its end.
    async fn serve(&self, mut client: TcpStream, token: CancellationToken) {
        self.metrics.connections_accepted.inc();
        self.metrics.connections.inc();
        let _ = client.set_nodelay(true);
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
            End::Io(e) => tracing::debug!(error = %e, "MQTT connection closed: socket error"),
            other => tracing::debug!(end = ?other, "MQTT connection closed"),
        }
        self.metrics.connections.dec();
    }

    /// Reads the first packet, which must be a CONNECT of a protocol level rumqttd serves.
    /// Refuses other levels with the CONNACK the client's generation understands.
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
        if let Protocol::V31 | Protocol::Other(_) = connect.protocol {
            self.reject("unsupported_protocol", "MQTT 3.1.1 and 5 only");
            let refusal = frame::connack_refusal(connect.protocol, 1);
            let _ = client.write_all(&refusal).await;
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
        let upstream_addr = if connect.protocol == Protocol::V5 {
            self.v5
        } else {
            self.v4
        };
        let mut upstream = match TcpStream::connect(upstream_addr).await {
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
        // The CONNECT goes first, as read; anything pipelined behind it is handled below.
        if let Err(e) = upstream.write_all(&inbound[..header.total_len()]).await {
            return End::Io(e);
        }
        inbound.advance(header.total_len());

        let mut clean = false;
        let end = {
            let (client_rx, mut client_tx) = client.split();
            let (broker_rx, broker_tx) = upstream.split();
            let to_broker =
                self.client_to_broker(client_rx, broker_tx, inbound, connect.protocol, &mut clean);
            let to_client = self.broker_to_client(broker_rx, &mut client_tx);
            let end = tokio::select! {
                end = to_broker => end,
                end = to_client => end,
                () = token.cancelled() => End::Shutdown,
            };
            if let (End::Protocol(FrameError::TooLarge { .. }), Protocol::V5) =
                (&end, connect.protocol)
            {
                // MQTT 5 lets the server say why: DISCONNECT with 0x95 "packet too large".
                let _ = client_tx.write_all(&[0xe0, 0x01, 0x95]).await;
            }
            end
        };
        // rumqttd publishes the will when the upstream socket closes without DISCONNECT;
        // keep the retained index in step with that.
        if let (false, Some(will)) = (clean, &connect.will) {
            self.retained.observe(&will.topic, will.retain, will.empty);
        }
        end
    }

    /// Client to broker: frames every packet, enforces the size limit, watches publishes.
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
        loop {
            // Walk the complete packets at the front of the buffer.
            let mut ready = 0;
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
                match header.kind() {
                    kind::PUBLISH => match frame::parse_publish(packet, &header, protocol) {
                        Ok(info) => {
                            published.inc();
                            self.retained.observe(&info.topic, info.retain, info.empty);
                        }
                        Err(e) => return self.protocol_error(e),
                    },
                    kind::DISCONNECT => *clean = true,
                    kind::CONNECT => {
                        return self.protocol_error(FrameError::Malformed("second CONNECT"))
                    }
                    _ => {}
                }
                ready += header.total_len();
            }
            if ready > 0 {
                if let Err(e) = tx.write_all(&buf[..ready]).await {
                    return End::Io(e);
                }
                buf.advance(ready);
            }
            match rx.read_buf(&mut buf).await {
                Ok(0) => return End::Client,
                Ok(n) => self.metrics.bytes_received.inc_by(n as u64),
                Err(e) => return End::Io(e),
            }
        }
    }

    /// Broker to client: forwards bytes as they come, counting the publishes delivered.
    async fn broker_to_client(&self, mut rx: ReadHalf<'_>, tx: &mut WriteHalf<'_>) -> End {
        let delivered = self.metrics.messages_sent.with_label_values(&["network"]);
        let mut buf = BytesMut::with_capacity(BUFFER);
        // Offset into the current packet stream, so packets split across reads count once.
        let mut pending = 0usize;
        loop {
            match rx.read_buf(&mut buf).await {
                Ok(0) => return End::Broker,
                Ok(_) => {}
                Err(e) => return End::Io(e),
            }
            let mut at = 0;
            while at < buf.len() {
                if pending > 0 {
                    let step = pending.min(buf.len() - at);
                    pending -= step;
                    at += step;
                    continue;
                }
                match frame::parse_header(&buf[at..], frame::MAX_REMAINING_LENGTH + 5) {
                    Ok(Some(h)) => {
                        if h.kind() == kind::PUBLISH {
                            delivered.inc();
                        }
                        let step = h.total_len().min(buf.len() - at);
                        pending = h.total_len() - step;
                        at += step;
                    }
                    Ok(None) => break,
                    Err(e) => return End::Protocol(e),
                }
            }
            if let Err(e) = tx.write_all(&buf[..at]).await {
                return End::Io(e);
            }
            self.metrics.bytes_sent.inc_by(at as u64);
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
