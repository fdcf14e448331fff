//! Roost's network edge: the public MQTT listener and one task per client connection. The
//! edge enforces the connection limit, the CONNECT deadline and the packet size limit, and
//! runs each client's MQTT session itself (`session.rs`): CONNECT and takeover, keep-alive,
//! the QoS 1/2 handshakes both ways, subscriptions with their MQTT 5 options, retained
//! delivery on subscribe, wills and session expiry. Messages go through rumqttd's router
//! (`intake.rs`, `ingress.rs`) and come back to the sessions through the dispatcher
//! (`fanout.rs`).
//!
//! Bad input costs the sender its connection, with a log line and a metric; the node and every
//! other client carry on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedMutexGuard, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{Authorizer, ClientInfo};
use crate::codec::{self, InPublish, Inbound, SubRequest};
use crate::embed::INTERNAL_ID_PREFIX;
use crate::envelope::{now_ms, Origin, Publication};
use crate::fanout::Subscribers;
use crate::frame::{self, filter_properties, Connect, FrameError, Protocol, Will};
use crate::intake::Intake;
use crate::metrics::BrokerMetrics;
use crate::session::{Flow, Limits, Peer, PendingWill, Registry, Session, Subscription};
use crate::settings::BrokerSettings;

/// Initial read buffer per connection; grows to the largest packet seen.
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
/// Topic aliases an MQTT 5 client may use toward the broker (CONNACK Topic Alias Maximum).
const TOPIC_ALIAS_MAXIMUM: u16 = 64;
/// Session Expiry Interval meaning "never" (MQTT 5 §3.1.2.11.2).
const NEVER: u32 = u32::MAX;

/// Everything a connection task needs, shared by all of them.
pub(crate) struct Edge {
    /// Limits and timeouts from the config.
    pub settings: BrokerSettings,
    /// Counts connections, packets, bytes and drops.
    pub metrics: BrokerMetrics,
    /// Where messages enter: the retained set and the router.
    pub intake: Arc<Intake>,
    /// Every session, by client id.
    pub sessions: Registry,
    /// The sessions and in-process subscriptions the dispatcher offers messages to.
    pub subscribers: Arc<Subscribers>,
    /// Publishers wait here while a subscriber is congested.
    pub flow: Flow,
    /// Queue and window sizes.
    pub limits: Limits,
    /// Decides what each client may publish and subscribe to.
    pub authorizer: Arc<dyn Authorizer>,
    /// The cluster mesh: connections that open with its preamble are peer links.
    pub mesh: Arc<crate::mesh::Mesh>,
    /// Runs delayed wills and expiry timers beside the connections.
    pub tracker: TaskTracker,
    /// The node's shutdown.
    pub shutdown: CancellationToken,
}

/// Why a connection ended, for the log, the metrics and the will.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT; MQTT 5 reason 0x04 still asks for the will.
    Disconnect { with_will: bool },
    /// The client closed the connection without DISCONNECT.
    Vanished,
    /// Nothing arrived within 1.5 times the keep-alive.
    KeepAlive,
    /// A new connection took the session over.
    TakenOver,
    /// The node is shutting down.
    Shutdown,
    /// The client broke the protocol.
    Protocol(FrameError),
    /// The client stopped reading: a write waited longer than `send_timeout`.
    SlowConsumer,
    /// An MQTT 5 client sent a QoS 2 PUBLISH with the broker's Receive Maximum of QoS 2
    /// publishes already unreleased (MQTT-3.3.4-9).
    ReceiveMaximum,
    /// The router could not take a message (the node is stopping).
    Broker,
    /// A socket failed.
    Io(std::io::Error),
    /// Not an MQTT client: a cluster peer's link (it opens with the mesh's preamble).
    PeerLink,
}

impl End {
    /// Whether the will is published (MQTT-3.1.2-8): every end but a normal DISCONNECT.
    /// A node shutting down publishes none: its clients reconnect and say so themselves.
    fn publishes_will(&self) -> bool {
        match self {
            End::Disconnect { with_will } => *with_will,
            End::Shutdown => false,
            _ => true,
        }
    }

    /// The MQTT 5 DISCONNECT reason the server sends for this end, if it sends one.
    fn reason_code(&self) -> Option<u8> {
        match self {
            End::KeepAlive => Some(0x8d),
            End::ReceiveMaximum => Some(0x93),
            End::TakenOver => Some(0x8e),
            End::Shutdown => Some(0x8b),
            End::Protocol(FrameError::TooLarge { .. }) => Some(0x95),
            End::Protocol(FrameError::Malformed(_) | FrameError::MalformedLength) => Some(0x81),
            End::Protocol(_) => Some(0x82),
            _ => None,
        }
    }
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
        let span = tracing::debug_span!("mqtt", %peer, client_id = tracing::field::Empty);
        tracker.spawn(
            async move {
                edge.serve(stream).await;
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

/// One attached connection: its socket, buffers and what it agreed with the client.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet handled.
    inbound: BytesMut,
    /// Bytes to write.
    out: Vec<u8>,
    /// The protocol and the client's limits.
    peer: Peer,
    /// Topic aliases the client set (MQTT 5).
    aliases: HashMap<u16, Bytes>,
    /// The session.
    session: Arc<Session>,
    /// The user name from CONNECT, for the authorizer.
    username: Option<String>,
    /// The Session Expiry Interval the client asked for in CONNECT (MQTT 5: a DISCONNECT may
    /// not raise it from 0).
    connect_expiry: u32,
    /// The Session Expiry Interval in force.
    expiry: u32,
}

impl Edge {
    /// Runs one client connection to its end.
    async fn serve(self: Arc<Self>, mut stream: TcpStream) {
        self.metrics.connections_accepted.inc();
        self.metrics.connections.inc();
        tune(&stream);
        let mut inbound = BytesMut::with_capacity(BUFFER);
        let connect = tokio::select! {
            () = self.shutdown.cancelled() => Err(End::Shutdown),
            read = tokio::time::timeout(self.settings.connect_timeout, self.read_connect(&mut stream, &mut inbound)) => {
                read.unwrap_or_else(|_| {
                    self.reject("connect_timeout", "no CONNECT in time");
                    Err(End::Vanished)
                })
            }
        };
        let end = match connect {
            Ok(connect) => {
                tracing::Span::current().record("client_id", connect.client_id.as_str());
                self.connection(stream, inbound, connect).await
            }
            Err(End::PeerLink) => {
                // Not an MQTT client connection: the mesh counts its links itself.
                self.metrics.connections.dec();
                self.mesh.clone().accept(stream, inbound).await;
                return;
            }
            Err(end) => end,
        };
        match &end {
            End::Protocol(e) => {
                tracing::warn!(error = %e, "MQTT connection closed: protocol error")
            }
            End::ReceiveMaximum => tracing::warn!(
                limit = self.limits.max_inflight,
                "MQTT connection closed: more unreleased QoS 2 publishes than the Receive Maximum"
            ),
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
    ) -> Result<Connect, End> {
        let header = loop {
            // A CONNECT's first byte is always 0x10; anything else (an HTTP request, TLS to
            // the plain port, noise) is refused at once instead of waiting out the timeout.
            if let Some(&first) = buf.first() {
                if first == crate::mesh::MAGIC[0] {
                    return Err(End::PeerLink);
                }
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
                Ok(0) => return Err(End::Vanished),
                Ok(n) => self.metrics.bytes_received.inc_by(n as u64),
                Err(e) => return Err(End::Io(e)),
            }
        };
        let connect = frame::parse_connect(buf, &header).map_err(|e| self.protocol_error(e))?;
        buf.advance(header.total_len());
        if let Some(will) = &connect.will {
            // A will is published like any message: a valid topic name, and only the
            // properties a will may carry (MQTT 5 §3.1.3.2).
            if crate::client::validate_topic(&will.topic).is_err() {
                return Err(self.protocol_error(FrameError::Malformed("will topic")));
            }
            if !will.properties_allowed() {
                return Err(self.protocol_error(FrameError::Malformed("will properties")));
            }
        }
        let v5 = connect.protocol == Protocol::V5;
        let refusal = match connect.protocol {
            Protocol::V31 | Protocol::Other(_) => {
                Some((1, "unsupported_protocol", "MQTT 3.1.1 and 5 only"))
            }
            _ if connect.client_id.starts_with(INTERNAL_ID_PREFIX) => Some((
                2,
                "reserved_client_id",
                "client ids starting with roost-internal- are the node's own",
            )),
            // A 3.1.1 client without an id must ask for a clean session (MQTT-3.1.3-8).
            _ if connect.client_id.is_empty() && !v5 && !connect.clean_start => Some((
                2,
                "identifier_rejected",
                "an empty client id needs a clean session",
            )),
            _ if !self.will_allowed(&connect) => Some((
                5,
                "will_not_authorized",
                "the authorization hook refused the will's topic",
            )),
            _ if connect.properties.auth_method => Some((
                0x8c,
                "bad_auth_method",
                "no authentication method is supported",
            )),
            _ => None,
        };
        if let Some((code, reason, detail)) = refusal {
            self.reject(reason, detail);
            let packet = if code == 0x8c {
                codec::connack(true, false, code, &[])
            } else {
                frame::connack_refusal(connect.protocol, code)
            };
            let _ = client.write_all(&packet).await;
            return Err(End::Vanished);
        }
        Ok(connect)
    }

    /// Attaches the connection to its session, runs it, and detaches it.
    async fn connection(
        self: &Arc<Self>,
        stream: TcpStream,
        inbound: BytesMut,
        connect: Connect,
    ) -> End {
        let v5 = connect.protocol == Protocol::V5;
        let mut client_id = connect.client_id.clone();
        let assigned = client_id.is_empty();
        if assigned {
            client_id = format!("roost-{:x}-{:x}", now_ms(), self.intake.next_key());
        }
        let cap = u32::try_from(self.settings.max_session_expiry.as_secs()).unwrap_or(NEVER);
        let asked = if v5 {
            connect.properties.session_expiry
        } else if connect.clean_start {
            0
        } else {
            NEVER
        };
        let expiry = asked.min(cap);
        let kick = CancellationToken::new();
        let Some((session, present, guard)) = self
            .attach(&client_id, connect.clean_start, expiry, kick.clone())
            .await
        else {
            return End::Shutdown;
        };
        let mut conn = Conn {
            stream,
            inbound,
            out: Vec::with_capacity(BUFFER),
            peer: Peer {
                v5,
                window: usize::from(
                    connect
                        .properties
                        .receive_maximum
                        .min(self.limits.max_inflight),
                ),
                max_packet: usize::try_from(connect.properties.maximum_packet_size)
                    .unwrap_or(usize::MAX),
            },
            aliases: HashMap::new(),
            session,
            username: connect.username.clone(),
            connect_expiry: asked,
            expiry,
        };
        let mut properties = Vec::new();
        if v5 {
            properties.push(0x21);
            properties.extend_from_slice(&self.limits.max_inflight.to_be_bytes());
            properties.push(0x22);
            properties.extend_from_slice(&TOPIC_ALIAS_MAXIMUM.to_be_bytes());
            properties.push(0x27);
            let max = u32::try_from(self.settings.max_packet_size).unwrap_or(u32::MAX);
            properties.extend_from_slice(&max.to_be_bytes());
            if expiry != asked {
                properties.push(0x11);
                properties.extend_from_slice(&expiry.to_be_bytes());
            }
            if assigned {
                properties.push(0x12);
                properties.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
                properties.extend_from_slice(client_id.as_bytes());
            }
        }
        conn.out
            .extend_from_slice(&codec::connack(v5, present, 0, &properties));
        if present {
            conn.session.resend(&mut conn.out, v5);
        }
        let end = self.drive(&mut conn, connect.keep_alive, &kick).await;
        if let Some(reason) = end.reason_code().filter(|_| v5) {
            conn.out.clear();
            conn.out.extend_from_slice(&codec::disconnect_v5(reason));
            let _ = self.flush(&mut conn).await;
        }
        self.detach(&conn, &end, connect.will).await;
        drop(guard);
        end
    }

    /// Finds or makes the session of `client_id` and attaches to it, taking it over from a
    /// connection still attached (MQTT-3.1.4-3). Returns the session, whether it was resumed
    /// (CONNACK Session Present) and the attachment guard; `None` at shutdown.
    async fn attach(
        self: &Arc<Self>,
        client_id: &str,
        clean_start: bool,
        expiry: u32,
        kick: CancellationToken,
    ) -> Option<(Arc<Session>, bool, OwnedMutexGuard<()>)> {
        loop {
            if let Some(existing) = self.sessions.get(client_id) {
                let old = existing.lock().kick.take();
                if let Some(old) = old {
                    old.cancel();
                    self.metrics
                        .connections_rejected
                        .with_label_values(&["taken_over"])
                        .inc();
                }
                let guard = tokio::select! {
                    guard = existing.attach.clone().lock_owned() => guard,
                    () = self.shutdown.cancelled() => return None,
                };
                if existing.ended.is_cancelled() {
                    continue;
                }
                if clean_start {
                    self.end_session(&existing).await;
                    continue;
                }
                let pending = {
                    let mut state = existing.lock();
                    state.online = true;
                    state.kick = Some(kick);
                    state.expiry = expiry;
                    state.connection += 1;
                    state.pending_will.take()
                };
                if let Some(pending) = pending {
                    // Back within the Will Delay Interval: the will is not sent (MQTT 5 §3.1.3.2.2).
                    pending.settled.cancel();
                    self.metrics.wills.with_label_values(&["cancelled"]).inc();
                }
                return Some((existing, true, guard));
            }
            let key = self.intake.next_key();
            let session = Arc::new(Session::new(key, client_id.to_owned(), expiry));
            let Ok(guard) = session.attach.clone().try_lock_owned() else {
                continue;
            };
            {
                let mut state = session.lock();
                state.online = true;
                state.kick = Some(kick.clone());
            }
            if self.sessions.insert_new(session.clone()) {
                self.metrics.sessions.set(self.sessions.len() as i64);
                return Some((session, false, guard));
            }
        }
    }

    /// Ends a session: forgets it, stops its tasks, and publishes a
    /// will still waiting out its delay (MQTT 5 §3.1.2.5: the will is sent when the session
    /// ends, whichever comes first).
    async fn end_session(&self, session: &Arc<Session>) {
        self.sessions.remove(session);
        self.subscribers.remove_session(session.key);
        session.ended.cancel();
        self.flow.hold(session, false);
        let pending = session.lock().pending_will.take();
        if let Some(pending) = pending {
            pending.settled.cancel();
            self.publish_will(session.key, &pending.will).await;
        }
        self.metrics.sessions.set(self.sessions.len() as i64);
    }

    /// The connection ended: the session stays (with its expiry) or ends, and the will is
    /// published, delayed or dropped. Runs before the connection lets go of the session, so
    /// a connection taking it over finds all of this settled.
    async fn detach(self: &Arc<Self>, conn: &Conn, end: &End, will: Option<Will>) {
        let session = conn.session.clone();
        let expiry = conn.expiry;
        let connection = {
            let mut state = session.lock();
            state.online = false;
            state.kick = None;
            state.expiry = expiry;
            state.connection
        };
        self.flow.hold(&session, false);
        if matches!(end, End::Shutdown) {
            return;
        }
        let will = will.filter(|_| end.publishes_will());
        let delay = will
            .as_ref()
            .map_or(0, |w| if conn.peer.v5 { w.delay_seconds() } else { 0 });
        if let Some(will) = will {
            if delay == 0 || expiry == 0 {
                self.publish_will(session.key, &will).await;
            } else {
                self.delay_will(&session, will, delay.min(expiry));
            }
        }
        if expiry == 0 {
            self.end_session(&session).await;
        } else if expiry != NEVER {
            let edge = self.clone();
            self.tracker.spawn(async move {
                let lifetime = Duration::from_secs(u64::from(expiry));
                tokio::select! {
                    () = tokio::time::sleep(lifetime) => {}
                    () = session.ended.cancelled() => return,
                    () = edge.shutdown.cancelled() => return,
                }
                let expired = {
                    let state = session.lock();
                    !state.online && state.connection == connection
                };
                if expired {
                    edge.metrics.sessions_expired.inc();
                    edge.end_session(&session).await;
                }
            });
        }
    }

    /// Keeps a will until its delay runs out, the session resumes, or the session ends.
    fn delay_will(self: &Arc<Self>, session: &Arc<Session>, will: Will, delay: u32) {
        let settled = CancellationToken::new();
        session.lock().pending_will = Some(PendingWill {
            will,
            settled: settled.clone(),
        });
        self.metrics.wills.with_label_values(&["delayed"]).inc();
        let (edge, session) = (self.clone(), session.clone());
        self.tracker.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                () = settled.cancelled() => return,
                () = edge.shutdown.cancelled() => return,
            }
            let due = {
                let mut state = session.lock();
                match &state.pending_will {
                    Some(p) if !p.settled.is_cancelled() => state.pending_will.take(),
                    _ => None,
                }
            };
            if let Some(pending) = due {
                edge.publish_will(session.key, &pending.will).await;
            }
        });
    }

    /// Publishes a will as a message of the session that left it.
    async fn publish_will(&self, key: u64, will: &Will) {
        let mut expires_at = None;
        let properties = filter_properties(&will.properties, |id| id != 0x18 && id != 0x02)
            .unwrap_or_else(|| vec![0]);
        frame::walk_properties(&will.properties, |id, raw| {
            if id == 0x02 {
                let secs = raw[1..].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
                expires_at = Some(now_ms() + secs * 1000);
            }
        });
        let message = Publication {
            topic: Bytes::copy_from_slice(will.topic.as_bytes()),
            payload: Bytes::copy_from_slice(&will.payload),
            properties: properties.into(),
            qos: will.qos,
            retain: will.retain,
            origin: Origin::Session(key),
            sequence: 0,
            expires_at,
            stamp: 0,
            writer: None,
        };
        match self.intake.route(message).await {
            Ok(()) => self.metrics.wills.with_label_values(&["published"]).inc(),
            Err(e) => tracing::warn!(topic = %will.topic, error = %e, "could not publish a will"),
        }
    }

    /// The connection's loop: reads and handles packets, writes deliveries, watches the
    /// keep-alive, the takeover and the shutdown.
    async fn drive(
        self: &Arc<Self>,
        conn: &mut Conn,
        keep_alive: u16,
        kick: &CancellationToken,
    ) -> End {
        // The client must send something within 1.5 times its keep-alive (MQTT-3.1.2-24).
        let allowance =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = allowance.map(|a| Instant::now() + a);
        // Packets the client sent right behind its CONNECT are already buffered.
        if let Err(end) = self.handle_inbound(conn).await {
            return end;
        }
        loop {
            conn.session.fill(
                &mut conn.out,
                &conn.peer,
                &self.limits,
                &self.metrics,
                &self.flow,
            );
            if let Err(end) = self.flush(conn).await {
                return end;
            }
            let expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return End::Shutdown,
                () = kick.cancelled() => return End::TakenOver,
                read = conn.stream.read_buf(&mut conn.inbound) => match read {
                    Ok(0) => return End::Vanished,
                    Ok(n) => {
                        self.metrics.bytes_received.inc_by(n as u64);
                        // Linux turns quick ACKs off again by itself; a client with Nagle's
                        // algorithm on (most device clients) would otherwise wait for our
                        // delayed ACK (40 ms) before sending its next small publish.
                        let _ = SockRef::from(&conn.stream).set_tcp_quickack(true);
                        deadline = allowance.map(|a| Instant::now() + a);
                        if let Err(end) = self.handle_inbound(conn).await {
                            return end;
                        }
                    }
                    Err(e) => return End::Io(e),
                },
                () = conn.session.wake.notified() => {}
                () = expired => return End::KeepAlive,
            }
        }
    }

    /// Writes what is pending, within `send_timeout`.
    async fn flush(&self, conn: &mut Conn) -> Result<(), End> {
        if conn.out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.settings.send_timeout, conn.stream.write_all(&conn.out))
            .await
        {
            Err(_) => {
                self.reject("slow_consumer", "the client did not read in time");
                Err(End::SlowConsumer)
            }
            Ok(Err(e)) => Err(End::Io(e)),
            Ok(Ok(())) => {
                self.metrics.bytes_sent.inc_by(conn.out.len() as u64);
                conn.out.clear();
                Ok(())
            }
        }
    }

    /// Handles every whole packet in the read buffer.
    async fn handle_inbound(self: &Arc<Self>, conn: &mut Conn) -> Result<(), End> {
        loop {
            let header = match frame::parse_header(&conn.inbound, self.settings.max_packet_size) {
                Ok(Some(h)) if conn.inbound.len() >= h.total_len() => h,
                Ok(Some(h)) => {
                    conn.inbound.reserve(h.total_len() - conn.inbound.len());
                    return Ok(());
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.protocol_error(e)),
            };
            let packet = conn.inbound.split_to(header.total_len()).freeze();
            let inbound =
                codec::decode(packet, &header, conn.peer.v5).map_err(|e| self.protocol_error(e))?;
            self.handle(conn, inbound).await?;
        }
    }

    /// Handles one packet from the client.
    async fn handle(self: &Arc<Self>, conn: &mut Conn, packet: Inbound) -> Result<(), End> {
        let v5 = conn.peer.v5;
        match packet {
            Inbound::Publish(publish) => self.publish(conn, publish).await?,
            Inbound::PubAck(pkid) => conn.session.puback(pkid),
            Inbound::PubRec(pkid, reason) => {
                if reason < 0x80 {
                    let known = conn.session.pubrec(pkid, reason).is_some();
                    let code = if known { 0 } else { 0x92 };
                    conn.out
                        .extend_from_slice(&codec::ack(0x62, pkid, code, v5));
                } else {
                    conn.session.pubrec(pkid, reason);
                }
            }
            Inbound::PubRel(pkid) => {
                let known = conn.session.lock().incoming.remove(&pkid);
                let code = if known { 0 } else { 0x92 };
                conn.out
                    .extend_from_slice(&codec::ack(0x70, pkid, code, v5));
            }
            Inbound::PubComp(pkid) => conn.session.pubcomp(pkid),
            Inbound::Subscribe { pkid, id, filters } => {
                self.subscribe(conn, pkid, id, filters).await?
            }
            Inbound::Unsubscribe { pkid, filters } => self.unsubscribe(conn, pkid, filters),
            Inbound::PingReq => conn.out.extend_from_slice(&codec::PINGRESP),
            Inbound::Disconnect {
                reason,
                session_expiry,
            } => {
                if let Some(expiry) = session_expiry {
                    // A session that was to end with the connection may not be revived by
                    // DISCONNECT (MQTT-3.14.2-2).
                    if conn.connect_expiry == 0 && expiry != 0 {
                        return Err(self.protocol_error(FrameError::Malformed("DISCONNECT")));
                    }
                    let cap =
                        u32::try_from(self.settings.max_session_expiry.as_secs()).unwrap_or(NEVER);
                    conn.expiry = expiry.min(cap);
                }
                return Err(End::Disconnect {
                    with_will: reason == 0x04,
                });
            }
            Inbound::Auth => return Err(self.protocol_error(FrameError::Unexpected(15))),
        }
        Ok(())
    }

    /// A PUBLISH from the client: authorised, made a [`Publication`], routed, acknowledged.
    async fn publish(self: &Arc<Self>, conn: &mut Conn, publish: InPublish) -> Result<(), End> {
        let v5 = conn.peer.v5;
        let topic = match publish.topic_alias {
            Some(alias) if alias > TOPIC_ALIAS_MAXIMUM => {
                return Err(self.protocol_error(FrameError::Malformed("topic alias")))
            }
            Some(alias) if publish.topic.is_empty() => match conn.aliases.get(&alias) {
                Some(topic) => topic.clone(),
                None => return Err(self.protocol_error(FrameError::Malformed("topic alias"))),
            },
            Some(alias) => {
                conn.aliases.insert(alias, publish.topic.clone());
                publish.topic.clone()
            }
            None => publish.topic.clone(),
        };
        let name = std::str::from_utf8(&topic).unwrap_or("");
        if crate::client::validate_topic(name).is_err() {
            return Err(self.protocol_error(FrameError::Malformed("PUBLISH topic")));
        }
        self.metrics
            .count_received(publish.qos, publish.payload.len() + topic.len());
        let client = ClientInfo {
            client_id: &conn.session.client_id,
            username: conn.username.as_deref(),
        };
        let allowed = self.authorizer.may_publish(&client, name);
        let (duplicate, unreleased) = if publish.qos == 2 {
            let state = conn.session.lock();
            (state.incoming.contains(&publish.pkid), state.incoming.len())
        } else {
            (false, 0)
        };
        if v5 && !duplicate && unreleased >= usize::from(self.limits.max_inflight) {
            // The client ignored the Receive Maximum of the CONNACK.
            self.metrics
                .protocol_errors
                .with_label_values(&["receive_maximum_exceeded"])
                .inc();
            return Err(End::ReceiveMaximum);
        }
        if !allowed {
            tracing::debug!(topic = name, "publish not authorized");
            self.metrics
                .dropped
                .with_label_values(&["not_authorized"])
                .inc();
        } else if !duplicate {
            let properties = if v5 && (publish.topic_alias.is_some() || publish.expiry.is_some()) {
                filter_properties(&publish.properties, |id| id != 0x23 && id != 0x02)
                    .map_or_else(|| Bytes::from_static(&[0]), Bytes::from)
            } else {
                publish.properties.clone()
            };
            let message = Publication {
                topic,
                payload: publish.payload,
                properties,
                qos: publish.qos,
                retain: publish.retain,
                origin: Origin::Session(conn.session.key),
                sequence: 0,
                expires_at: publish.expiry.map(|secs| now_ms() + u64::from(secs) * 1000),
                stamp: 0,
                writer: None,
            };
            self.flow.admit(&conn.session).await;
            self.intake.route(message).await.map_err(|_| End::Broker)?;
        }
        let code = if allowed { 0 } else { 0x87 };
        match publish.qos {
            1 => conn
                .out
                .extend_from_slice(&codec::ack(0x40, publish.pkid, code, v5)),
            2 => {
                if allowed {
                    conn.session.lock().incoming.insert(publish.pkid);
                }
                conn.out
                    .extend_from_slice(&codec::ack(0x50, publish.pkid, code, v5));
            }
            _ => {}
        }
        Ok(())
    }

    /// A SUBSCRIBE: each filter checked, authorised and added; SUBACK; then the retained
    /// messages the new subscriptions match, as their Retain Handling asks.
    async fn subscribe(
        self: &Arc<Self>,
        conn: &mut Conn,
        pkid: u16,
        id: Option<u32>,
        filters: Vec<SubRequest>,
    ) -> Result<(), End> {
        let v5 = conn.peer.v5;
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for request in filters {
            let shared = crate::topic::is_shared(&request.filter);
            let pattern = Subscription::pattern_of(&request.filter).to_owned();
            let valid = crate::client::validate_filter(&request.filter).is_ok()
                && (!shared || shared_filter_ok(&request.filter));
            if shared && request.no_local && v5 {
                // No Local on a shared subscription is a protocol error (MQTT-3.8.3-4).
                return Err(self.protocol_error(FrameError::Malformed("SUBSCRIBE")));
            }
            if !valid {
                tracing::debug!(filter = %request.filter, "subscription refused: invalid filter");
                self.metrics
                    .subscriptions_refused
                    .with_label_values(&["invalid_filter"])
                    .inc();
                codes.push(if v5 { 0x8f } else { 0x80 });
                continue;
            }
            let client = ClientInfo {
                client_id: &conn.session.client_id,
                username: conn.username.as_deref(),
            };
            if !self.authorizer.may_subscribe(&client, &request.filter) {
                tracing::debug!(filter = %request.filter, "subscription not authorized");
                self.metrics
                    .subscriptions_refused
                    .with_label_values(&["not_authorized"])
                    .inc();
                codes.push(if v5 { 0x87 } else { 0x80 });
                continue;
            }
            // Listed first, then numbered under the session's lock: a message numbered after
            // `since` reaches the dispatcher after the listing and is matched after the
            // subscription is in place.
            let list = {
                let mut state = conn.session.lock();
                !std::mem::replace(&mut state.listed, true)
            };
            if list {
                self.subscribers.add_session(conn.session.clone());
            }
            let new = {
                let mut state = conn.session.lock();
                let mut subscription = Subscription {
                    filter: request.filter.clone(),
                    pattern,
                    qos: request.qos,
                    no_local: request.no_local,
                    retain_as_published: request.retain_as_published,
                    id,
                    since: self.intake.routed(),
                };
                match state
                    .subscriptions
                    .iter_mut()
                    .find(|s| s.filter == request.filter)
                {
                    Some(existing) => {
                        // A repeated SUBSCRIBE replaces the subscription without a gap in
                        // its messages (MQTT-3.8.4-3).
                        subscription.since = existing.since;
                        *existing = subscription;
                        false
                    }
                    None => {
                        state.subscriptions.push(subscription);
                        true
                    }
                }
            };
            codes.push(request.qos);
            let send_retained = match request.retain_handling {
                0 => true,
                1 => new,
                _ => false,
            };
            if send_retained && !shared {
                // Taken once the dispatcher offers the session live messages with this
                // subscription, so a retained message published meanwhile is either in this
                // snapshot or delivered live.
                retained.extend(self.intake.retained_for(&request.filter, request.qos, id));
            }
        }
        conn.out.extend_from_slice(&codec::suback(pkid, &codes, v5));
        conn.session.queue_retained(retained);
        Ok(())
    }

    /// An UNSUBSCRIBE: each filter removed; UNSUBACK.
    fn unsubscribe(&self, conn: &mut Conn, pkid: u16, filters: Vec<String>) {
        let mut codes = Vec::with_capacity(filters.len());
        for filter in filters {
            let removed = {
                let mut state = conn.session.lock();
                let before = state.subscriptions.len();
                state.subscriptions.retain(|s| s.filter != filter);
                state.subscriptions.len() != before
            };
            // MQTT 5: 0x11, No subscription existed.
            codes.push(if removed { 0 } else { 0x11 });
        }
        conn.out
            .extend_from_slice(&codec::unsuback(pkid, &codes, conn.peer.v5));
    }

    /// Whether the client may leave its will: a will is a publish, asked of the hook when the
    /// client connects so that a refusal reaches it in the CONNACK.
    fn will_allowed(&self, connect: &Connect) -> bool {
        let client = ClientInfo {
            client_id: &connect.client_id,
            username: connect.username.as_deref(),
        };
        connect
            .will
            .as_ref()
            .is_none_or(|will| self.authorizer.may_publish(&client, &will.topic))
    }

    fn reject(&self, reason: &'static str, detail: &str) {
        tracing::warn!(
            reason,
            detail,
            "MQTT connection refused or closed by the edge"
        );
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
            FrameError::Unexpected(_) => "unexpected_packet",
        };
        self.metrics
            .protocol_errors
            .with_label_values(&[reason])
            .inc();
        End::Protocol(e)
    }
}

/// A shared subscription names a group without wildcards and a filter after it
/// (`$share/<group>/<filter>`, MQTT-4.8.2-1, -2).
fn shared_filter_ok(filter: &str) -> bool {
    let mut parts = filter.splitn(3, '/');
    let (_, group, rest) = (parts.next(), parts.next(), parts.next());
    matches!((group, rest), (Some(g), Some(r)) if !g.is_empty() && !g.contains(['+', '#']) && !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filters_need_a_group_and_a_filter() {
        assert!(shared_filter_ok("$share/g/a/#"));
        assert!(!shared_filter_ok("$share/g"));
        assert!(!shared_filter_ok("$share//a"));
        assert!(!shared_filter_ok("$share/g+/a"));
    }

    #[test]
    fn only_a_normal_disconnect_keeps_the_will() {
        assert!(!End::Disconnect { with_will: false }.publishes_will());
        assert!(End::Disconnect { with_will: true }.publishes_will());
        assert!(End::Vanished.publishes_will());
        assert!(End::TakenOver.publishes_will());
        assert!(!End::Shutdown.publishes_will());
    }
}
