//! Roost's network edge: the public MQTT listener. Every client connection enters here. The
//! edge enforces the connection limit, the CONNECT deadline and the packet size limit, hands
//! every client to rumqttd's internal MQTT 5 server (translating for MQTT 3.1.1 clients, see
//! `translate.rs`), watches every packet go by for metrics, keeps the retained set and
//! delivers it on subscribe (`retained.rs`), and fires wills itself.
//!
//! Bad input costs the sender its connection, with a log line and a metric; the node and every
//! other client carry on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client::BrokerClient;
use crate::embed::INTERNAL_ID_PREFIX;
use crate::frame::{self, kind, Connect, FrameError, Header, Protocol};
use crate::metrics::BrokerMetrics;
use crate::retained::{self, Change, Retained, Stored};
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
/// rumqttd numbers its outgoing QoS 1/2 publishes 1..=100 (`MAX_INFLIGHT` in its
/// `router/iobufs.rs`); the edge's own deliveries use the ids above, so their acknowledgements
/// are told apart and never reach rumqttd.
const FIRST_EDGE_PKID: u16 = 101;
/// Retained deliveries at QoS 1/2 in flight at once per connection. rumqttd's own (up to 100)
/// come on top, and the client's MQTT 5 Receive Maximum is not read yet: kept small.
const RETAINED_WINDOW: usize = 10;
/// Retained deliveries written per turn of the connection loop, so acks and live traffic are
/// served between batches.
const RETAINED_BATCH: usize = 64;
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
    /// Publishes the wills the edge fires.
    pub client: BrokerClient,
    /// The latest connection of each client id and the wills waiting out their delay.
    pub sessions: Arc<std::sync::Mutex<Sessions>>,
    /// Runs delayed wills beside the connections; they end at once on the shutdown token.
    pub tracker: TaskTracker,
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
    /// The client stopped reading: a write waited longer than `send_timeout`.
    SlowConsumer,
    /// rumqttd sent something the edge cannot frame or translate (a bug on our side of the
    /// edge, not the client's fault).
    Upstream(FrameError),
    /// A socket failed.
    Io(std::io::Error),
}

/// Per client id: the latest connection, and a will waiting out its MQTT 5 Will Delay.
#[derive(Default)]
pub(crate) struct Sessions {
    /// Numbers connections, so a connection can tell whether it was taken over.
    next_generation: u64,
    /// client id → (generation, Clean Start) of its latest connection, and how many of its
    /// connections are still alive (an old one may still be ending).
    latest: HashMap<String, (u64, bool, usize)>,
    /// client id → its pending delayed will.
    pending: HashMap<String, PendingWill>,
}

/// A will waiting out its delay.
struct PendingWill {
    /// The connection that left it.
    generation: u64,
    /// That connection's Clean Start, which settles any older will still to come.
    clean_start: bool,
    /// The session resumed (Clean Start 0): the will is not sent.
    cancel: CancellationToken,
    /// The session ended (Clean Start 1 reconnect): the will is sent now.
    fire_now: CancellationToken,
}

/// What becomes of a will whose session ended with a delay still to run.
enum WillFate {
    /// A newer connection already took the session over: resumed, so no will.
    Cancelled,
    /// A newer connection started afresh: the old session is over, send the will now.
    Now,
    /// Nobody took over: wait out the delay.
    Wait(CancellationToken, CancellationToken),
}

impl Sessions {
    /// Registers a new connection; settles the pending will of its client id, if any.
    /// Returns the connection's generation and whether a pending will was cancelled.
    fn connected(&mut self, client_id: &str, clean_start: bool) -> (u64, bool) {
        self.next_generation += 1;
        let generation = self.next_generation;
        if client_id.is_empty() {
            return (generation, false);
        }
        let live = self.latest.get(client_id).map_or(0, |l| l.2);
        self.latest
            .insert(client_id.to_owned(), (generation, clean_start, live + 1));
        let mut cancelled = false;
        if let Some(pending) = self.pending.remove(client_id) {
            if clean_start {
                pending.fire_now.cancel();
            } else {
                pending.cancel.cancel();
                cancelled = true;
            }
        }
        (generation, cancelled)
    }

    /// A connection ended and leaves a will with a delay: what happens to it.
    fn will_fate(&mut self, client_id: &str, generation: u64, clean_start: bool) -> WillFate {
        // A newer connection's will is already waiting (its end was handled first): that
        // connection took this session over, and its Clean Start settles this will.
        if let Some(newer) = self
            .pending
            .get(client_id)
            .filter(|p| p.generation > generation)
        {
            return if newer.clean_start {
                WillFate::Now
            } else {
                WillFate::Cancelled
            };
        }
        match self.latest.get(client_id) {
            Some(&(latest, clean_start, _)) if latest != generation && !client_id.is_empty() => {
                if clean_start {
                    WillFate::Now
                } else {
                    WillFate::Cancelled
                }
            }
            _ => {
                let (cancel, fire_now) = (CancellationToken::new(), CancellationToken::new());
                if !client_id.is_empty() {
                    let pending = PendingWill {
                        generation,
                        clean_start,
                        cancel: cancel.clone(),
                        fire_now: fire_now.clone(),
                    };
                    if let Some(old) = self.pending.insert(client_id.to_owned(), pending) {
                        old.cancel.cancel();
                    }
                }
                WillFate::Wait(cancel, fire_now)
            }
        }
    }

    /// A connection ended. The client id's entry stays while any of its connections is alive,
    /// so an older one still ending is settled by the latest one's Clean Start.
    fn disconnected(&mut self, client_id: &str) {
        if let Some(entry) = self.latest.get_mut(client_id) {
            entry.2 = entry.2.saturating_sub(1);
            if entry.2 == 0 {
                self.latest.remove(client_id);
            }
        }
    }

    /// A delayed will is done (sent or dropped): forget it if it is still this one.
    fn settled(&mut self, client_id: &str, generation: u64) {
        if self.pending.get(client_id).map(|p| p.generation) == Some(generation) {
            self.pending.remove(client_id);
        }
    }
}

/// Publishes a will: into the retained set first when it is retained, then to subscribers.
async fn fire_will(retained: &Retained, client: &BrokerClient, will: &frame::Will) -> bool {
    let publish = will.to_publish();
    if will.retain && will.payload.is_empty() {
        retained.record(&will.topic, Change::Delete).await;
    } else if will.retain {
        // Stored as retained messages are: QoS 0 form with the retain flag, properties kept.
        let mut packet = publish.clone();
        packet[0] |= 0x01;
        let stored = Stored {
            qos: will.qos,
            packet: packet.into(),
        };
        retained.record(&will.topic, Change::Set(stored)).await;
    }
    match client.publish_v5(&publish).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(topic = %will.topic, error = %e, "could not publish a will");
            false
        }
    }
}

/// What the client half of a connection tells the broker half.
enum Note {
    /// The client subscribed with packet id `pkid`: once rumqttd's SUBACK for it is out,
    /// deliver the retained messages the granted filters match.
    Subscribe {
        pkid: u16,
        /// Each filter with its subscription options byte.
        filters: Vec<(String, u8)>,
    },
    /// The client unsubscribed these filters (MQTT 5 Retain Handling 1 counts them new again).
    Unsubscribe(Vec<String>),
    /// The client finished one of the edge's deliveries (PUBACK, or PUBCOMP for QoS 2).
    Done(u16),
    /// The client sent PUBREC for one of the edge's QoS 2 deliveries: answer with PUBREL.
    Received(u16),
}

/// Retained deliveries of one connection, owned by its broker half.
struct Deliveries {
    /// SUBSCRIBE packets waiting for rumqttd's SUBACK, by packet id.
    pending: HashMap<u16, Vec<(String, u8)>>,
    /// Filters this connection has subscribed to (for MQTT 5 Retain Handling 1).
    subscribed: HashSet<String>,
    /// Messages to deliver, with the QoS to deliver them at.
    queue: VecDeque<(Stored, u8)>,
    /// Packet ids of the edge's QoS 1/2 deliveries not yet finished.
    inflight: HashSet<u16>,
    /// The next packet id to try.
    next_pkid: u16,
    /// Bytes the edge generated (deliveries, PUBREL), written at the next packet boundary.
    outbox: Vec<u8>,
}

impl Deliveries {
    fn new() -> Self {
        Deliveries {
            pending: HashMap::new(),
            subscribed: HashSet::new(),
            queue: VecDeque::new(),
            inflight: HashSet::new(),
            next_pkid: first_edge_pkid(),
            outbox: Vec::new(),
        }
    }

    /// Applies what the client half said.
    fn note(&mut self, note: Note) {
        match note {
            Note::Subscribe { pkid, filters } => {
                self.pending.insert(pkid, filters);
            }
            Note::Unsubscribe(filters) => {
                for filter in filters {
                    self.subscribed.remove(&filter);
                }
            }
            Note::Done(pkid) => {
                self.inflight.remove(&pkid);
            }
            Note::Received(pkid) => {
                self.outbox.extend_from_slice(&[0x62, 0x02]);
                self.outbox.extend_from_slice(&pkid.to_be_bytes());
            }
        }
    }

    /// Queues the retained messages for a SUBSCRIBE that rumqttd acknowledged with `codes`.
    fn granted(&mut self, retained: &Retained, pkid: u16, codes: &[u8]) {
        let Some(filters) = self.pending.remove(&pkid) else {
            return;
        };
        for ((filter, options), &code) in filters.into_iter().zip(codes) {
            if code > 2 {
                continue;
            }
            // MQTT 5 Retain Handling: 0 always, 1 only for a new subscription, 2 never.
            let handling = (options >> 4) & 0x03;
            let is_new = self.subscribed.insert(filter.clone());
            if handling == 2 || (handling == 1 && !is_new) {
                continue;
            }
            for (_, stored) in retained.matching(&filter) {
                let qos = stored.qos.min(code);
                self.queue.push_back((stored, qos));
            }
        }
    }

    /// Drops queued retained copies of `topic`: a live message on it is passing, and an older
    /// retained value must not arrive after it.
    fn superseded(&mut self, topic: &[u8]) {
        self.queue
            .retain(|(stored, _)| stored.topic() != Some(topic));
    }

    /// Whether retained deliveries wait in the queue.
    fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether a delivery can be written now.
    fn can_send(&self) -> bool {
        match self.queue.front() {
            Some((_, 0)) => true,
            Some(_) => self.inflight.len() < RETAINED_WINDOW,
            None => false,
        }
    }

    /// Moves up to a batch of queued deliveries into the outbox.
    fn fill(&mut self, v311: bool) -> Result<usize, FrameError> {
        let mut written = 0;
        while written < RETAINED_BATCH && self.can_send() {
            let Some((stored, qos)) = self.queue.pop_front() else {
                break;
            };
            let pkid = if qos > 0 { self.take_pkid() } else { 0 };
            let packet = delivery(&stored, qos, pkid, v311)?;
            self.outbox.extend_from_slice(&packet);
            written += 1;
        }
        Ok(written)
    }

    fn take_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = if pkid == u16::MAX {
                FIRST_EDGE_PKID
            } else {
                pkid + 1
            };
            if self.inflight.insert(pkid) {
                return pkid;
            }
        }
    }
}

/// Where a connection's own packet ids start: anywhere above rumqttd's range, so a client
/// resuming a session is unlikely to hold an id of an unfinished QoS 2 flow from before.
fn first_edge_pkid() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let span = u32::from(u16::MAX - FIRST_EDGE_PKID) + 1;
    // The remainder is below `span`, so the sum fits in a u16.
    FIRST_EDGE_PKID + u16::try_from(nanos % span).unwrap_or(0)
}

/// A retained message as the client receives it: retain set, at `qos` with `pkid`, in the
/// client's protocol generation.
fn delivery(stored: &Stored, qos: u8, pkid: u16, v311: bool) -> Result<Vec<u8>, FrameError> {
    let parts = stored.parts().ok_or(FrameError::Malformed("stored"))?;
    let delivered = frame::PublishParts {
        packet_id: (qos > 0).then_some(pkid),
        properties: if v311 { &[] } else { parts.properties },
        ..parts
    };
    Ok(delivered.encode(0x30 | (qos << 1) | 0x01))
}

/// What the edge requires of a client's PUBLISH before it may change the retained set or
/// reach rumqttd: a valid topic name (empty only for an MQTT 5 topic alias), and for MQTT 5 a
/// well-formed property block without a Subscription Identifier (server-to-client only).
fn check_publish(
    info: &frame::PublishInfo,
    protocol: Protocol,
    packet: &[u8],
    header: &Header,
) -> Result<(), FrameError> {
    let v5 = protocol == Protocol::V5;
    let topic_ok = if info.topic.is_empty() {
        v5
    } else {
        crate::client::validate_topic(&info.topic).is_ok()
    };
    if !topic_ok {
        return Err(FrameError::Malformed("PUBLISH topic"));
    }
    if v5 {
        let mut allowed = true;
        let walked = frame::PublishParts::split(packet, header, true).and_then(|parts| {
            frame::walk_properties(parts.properties, |id, _| allowed &= id != 0x0b)
        });
        if walked.is_none() || !allowed {
            return Err(FrameError::Malformed("PUBLISH properties"));
        }
    }
    Ok(())
}

/// The packet id at the start of an acknowledgement's body, if it is one of the edge's.
fn edge_pkid(packet: &[u8], header: &Header) -> Option<u16> {
    let body = packet.get(header.header_len..)?;
    let pkid = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    (pkid >= FIRST_EDGE_PKID).then_some(pkid)
}

/// The packet id and filters of an MQTT 5 SUBSCRIBE (`with_options`: each filter followed
/// by its options byte) or UNSUBSCRIBE (filters only; their options come back as 0).
fn filter_list(
    packet: &[u8],
    header: &Header,
    with_options: bool,
) -> Option<(u16, Vec<(String, u8)>)> {
    let body = packet.get(header.header_len..header.total_len())?;
    let pkid = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut at = 2 + frame::property_block_len(body.get(2..)?)?;
    let mut filters = Vec::new();
    while at < body.len() {
        let len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
        let filter = std::str::from_utf8(body.get(at + 2..at + 2 + len)?).ok()?;
        at += 2 + len;
        let options = if with_options {
            at += 1;
            *body.get(at - 1)?
        } else {
            0
        };
        filters.push((filter.to_owned(), options));
    }
    Some((pkid, filters))
}

/// The packet id and reason codes of an MQTT 5 SUBACK.
fn suback_codes(packet: &[u8], header: &Header) -> Option<(u16, Vec<u8>)> {
    let body = packet.get(header.header_len..header.total_len())?;
    let pkid = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let at = 2 + frame::property_block_len(body.get(2..)?)?;
    Some((pkid, body.get(at..)?.to_vec()))
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
        // rumqttd never sees a will: it misfires them on client-id takeover (RUMQTTD.md,
        // defect 6). The edge fires the will itself when the session ends (below).
        let first_header = frame::parse_header(&first, usize::MAX).ok().flatten();
        let first = match first_header.and_then(|h| frame::prepare_connect(&first, &h)) {
            Some(prepared) => prepared,
            None => return self.protocol_error(FrameError::Malformed("CONNECT")),
        };
        // A new connection for this client id settles a will waiting out its delay: a resumed
        // session (Clean Start 0) cancels it, a fresh one ends the old session and sends it
        // (MQTT 5 §3.1.2.5).
        let (generation, cancelled) = self
            .lock_sessions()
            .connected(&connect.client_id, connect.clean_start);
        if cancelled {
            self.metrics.wills.with_label_values(&["cancelled"]).inc();
        }
        if let Err(e) = upstream.write_all(&first).await {
            self.lock_sessions().disconnected(&connect.client_id);
            return End::Io(e);
        }
        inbound.advance(header.total_len());

        let mut accepted = false;
        let mut clean = false;
        let end = {
            let (client_rx, mut client_tx) = client.split();
            let (broker_rx, broker_tx) = upstream.split();
            let (notes, notes_rx) = mpsc::unbounded_channel();
            let to_broker = self.client_to_broker(
                client_rx,
                broker_tx,
                inbound,
                connect.protocol,
                &mut clean,
                notes,
            );
            let to_client =
                self.broker_to_client(broker_rx, &mut client_tx, v311, &mut accepted, notes_rx);
            tokio::select! {
                end = to_broker => end,
                end = to_client => end,
                () = token.cancelled() => End::Shutdown,
            }
        };
        // An accepted session that ends without a clean DISCONNECT publishes its will: the
        // client vanished, broke the protocol, or was taken over by a new connection.
        if let (true, false, Some(will)) = (accepted, clean, connect.will) {
            self.will(
                &connect.client_id,
                generation,
                connect.clean_start,
                connect.protocol,
                will,
                token,
            )
            .await;
        }
        self.lock_sessions().disconnected(&connect.client_id);
        end
    }

    /// Sends, delays or drops the will of a session that ended without a clean DISCONNECT.
    async fn will(
        &self,
        client_id: &str,
        generation: u64,
        clean_start: bool,
        protocol: Protocol,
        will: frame::Will,
        shutdown: &CancellationToken,
    ) {
        let wills = &self.metrics.wills;
        let delay = match protocol {
            Protocol::V5 => will.delay_seconds(),
            _ => 0,
        };
        let fate = if delay == 0 {
            WillFate::Now
        } else {
            self.lock_sessions()
                .will_fate(client_id, generation, clean_start)
        };
        let (cancel, fire_now) = match fate {
            WillFate::Cancelled => {
                wills.with_label_values(&["cancelled"]).inc();
                return;
            }
            WillFate::Now => {
                if fire_will(&self.retained, &self.client, &will).await {
                    wills.with_label_values(&["published"]).inc();
                }
                return;
            }
            WillFate::Wait(cancel, fire_now) => (cancel, fire_now),
        };
        wills.with_label_values(&["delayed"]).inc();
        let published = wills.with_label_values(&["published"]);
        let (retained, client) = (self.retained.clone(), self.client.clone());
        let (shutdown, sessions) = (shutdown.clone(), self.sessions.clone());
        let client_id = client_id.to_owned();
        self.tracker.spawn(async move {
            let send = tokio::select! {
                () = cancel.cancelled() => false,
                () = shutdown.cancelled() => false,
                () = fire_now.cancelled() => true,
                () = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => true,
            };
            if send && fire_will(&retained, &client, &will).await {
                published.inc();
            }
            // A poisoned lock only means a panic mid-update; the maps are still usable.
            sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .settled(&client_id, generation);
        });
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
        notes: mpsc::UnboundedSender<Note>,
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
                let mut alias_only = false;
                match header.kind() {
                    kind::PUBLISH => {
                        let info = match frame::parse_publish(packet, &header, protocol) {
                            Ok(info) => info,
                            Err(e) => return self.protocol_error(e),
                        };
                        alias_only = info.topic.is_empty();
                        if let Err(e) = check_publish(&info, protocol, packet, &header) {
                            return self.protocol_error(e);
                        }
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
                    // A DISCONNECT ends the session without its will, unless MQTT 5 reason
                    // 0x04 asks for the will anyway.
                    kind::DISCONNECT => {
                        let reason = packet.get(header.header_len).copied().unwrap_or(0);
                        *clean = protocol != Protocol::V5 || reason != 0x04;
                    }
                    kind::CONNECT => {
                        return self.protocol_error(FrameError::Malformed("second CONNECT"))
                    }
                    kind::SUBSCRIBE => {
                        let v5_header = match frame::parse_header(v5_packet, usize::MAX) {
                            Ok(Some(h)) => h,
                            _ => return self.protocol_error(FrameError::Malformed("SUBSCRIBE")),
                        };
                        let Some((pkid, filters)) = filter_list(v5_packet, &v5_header, true) else {
                            return self.protocol_error(FrameError::Malformed("SUBSCRIBE"));
                        };
                        // Told before the SUBSCRIBE goes on, so it is known when the SUBACK
                        // comes back.
                        let _ = notes.send(Note::Subscribe { pkid, filters });
                    }
                    kind::UNSUBSCRIBE => {
                        let filters = frame::parse_header(v5_packet, usize::MAX)
                            .ok()
                            .flatten()
                            .and_then(|h| filter_list(v5_packet, &h, false))
                            .map(|(_, filters)| filters.into_iter().map(|(f, _)| f).collect());
                        match filters {
                            Some(filters) => {
                                let _ = notes.send(Note::Unsubscribe(filters));
                            }
                            None => {
                                return self.protocol_error(FrameError::Malformed("UNSUBSCRIBE"))
                            }
                        }
                    }
                    // Acknowledgements of the edge's own deliveries stay at the edge.
                    kind::PUBACK | kind::PUBREC | kind::PUBCOMP => {
                        if let Some(pkid) = edge_pkid(packet, &header) {
                            // An MQTT 5 PUBREC with a failure reason ends the QoS 2 flow there.
                            let failed = packet
                                .get(header.header_len + 2)
                                .is_some_and(|reason| *reason >= 0x80);
                            let note = if header.kind() == kind::PUBREC && !failed {
                                Note::Received(pkid)
                            } else {
                                Note::Done(pkid)
                            };
                            let _ = notes.send(note);
                            // Consumed, not forwarded.
                            ready += header.total_len();
                            continue;
                        }
                    }
                    _ => {}
                }
                let start = out.len();
                out.extend_from_slice(v5_packet);
                if header.kind() == kind::PUBLISH && !alias_only {
                    // rumqttd keeps no retained messages: the edge does (retained.rs). A topic
                    // alias the edge cannot name is left to rumqttd, retain flag and all.
                    out[start] &= !0x01;
                }
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

    /// Broker to client: counts the publishes delivered, notes the CONNACK, translates for
    /// 3.1.1 clients, and delivers retained messages after each SUBACK. MQTT 5 traffic is
    /// forwarded as it arrives, parts of large publishes included; the edge's own packets are
    /// written only at packet boundaries.
    async fn broker_to_client(
        &self,
        mut rx: ReadHalf<'_>,
        tx: &mut WriteHalf<'_>,
        v311: bool,
        accepted: &mut bool,
        mut notes: mpsc::UnboundedReceiver<Note>,
    ) -> End {
        let delivered = self.metrics.messages_sent.with_label_values(&["network"]);
        let mut buf = BytesMut::with_capacity(BUFFER);
        let mut out = Vec::new();
        let mut deliveries = Deliveries::new();
        // Bytes of the current packet still to come, when a v5 publish spans reads.
        let mut pending = 0usize;
        let mut first = true;
        let mut notes_open = true;
        loop {
            let at_boundary = pending == 0;
            tokio::select! {
                read = rx.read_buf(&mut buf) => match read {
                    Ok(0) => return End::Broker,
                    Ok(_) => {}
                    Err(e) => return End::Io(e),
                },
                note = notes.recv(), if notes_open => match note {
                    Some(note) => deliveries.note(note),
                    None => notes_open = false,
                },
                () = std::future::ready(()), if at_boundary && deliveries.can_send() => {}
            }
            // rumqttd does not set TCP_NODELAY on the sockets it accepts, so Nagle holds each of
            // its small writes until our previous ACK; delayed ACKs made QoS 0 deliveries wait
            // milliseconds. Quick-ack mode is not sticky in Linux, so it is re-armed per turn.
            let _ = SockRef::from(rx.as_ref()).set_tcp_quickack(true);
            // The client half sends its note before it forwards the SUBSCRIBE, so every note a
            // SUBACK read here depends on is already queued: take them all first, whichever
            // branch woke the loop.
            while let Ok(note) = notes.try_recv() {
                deliveries.note(note);
            }
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
                // Only publishes are forwarded in parts; control packets are small and read whole.
                if !complete && (v311 || header.kind() != kind::PUBLISH) {
                    buf.reserve(header.total_len() - (buf.len() - at));
                    break;
                }
                let packet = &buf[at..at + header.total_len().min(buf.len() - at)];
                match header.kind() {
                    kind::CONNACK if first => {
                        // MQTT 5 CONNACK: flags, then the reason code.
                        *accepted = packet.get(header.header_len + 1) == Some(&0);
                        first = false;
                    }
                    kind::SUBACK => {
                        if let Some((pkid, codes)) = suback_codes(packet, &header) {
                            deliveries.granted(&self.retained, pkid, &codes);
                        }
                    }
                    kind::PUBLISH => {
                        delivered.inc();
                        if complete && deliveries.has_queued() {
                            if let Some(parts) = frame::PublishParts::split(packet, &header, true) {
                                deliveries.superseded(parts.topic);
                            }
                        }
                    }
                    _ => {}
                }
                if v311 {
                    match translate::server_to_v311(packet, &header) {
                        Ok(Some(v4)) => out.extend_from_slice(&v4),
                        Ok(None) => {}
                        Err(e) => return End::Upstream(e),
                    }
                } else {
                    out.extend_from_slice(packet);
                    pending = header.total_len() - packet.len();
                }
                at += packet.len();
            }
            // The edge's own packets go after what rumqttd sent, at a packet boundary.
            if pending == 0 {
                match deliveries.fill(v311) {
                    Ok(n) => delivered.inc_by(n as u64),
                    Err(e) => return End::Upstream(e),
                }
                out.append(&mut deliveries.outbox);
            }
            if !out.is_empty() {
                // A client that stops reading would hold this write, its slot and rumqttd's
                // backlog for it forever; past `send_timeout` it is disconnected instead.
                match tokio::time::timeout(self.settings.send_timeout, tx.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return End::Io(e),
                    Err(_) => {
                        self.reject("slow_consumer", "the client did not read in time");
                        return End::SlowConsumer;
                    }
                }
                self.metrics.bytes_sent.inc_by(out.len() as u64);
                out.clear();
            }
            buf.advance(at);
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // A poisoned lock only means a panic mid-update; the maps are still usable.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
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
        };
        self.metrics
            .protocol_errors
            .with_label_values(&[reason])
            .inc();
        End::Protocol(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(fate: WillFate) -> bool {
        matches!(fate, WillFate::Wait(..))
    }

    #[test]
    fn a_resumed_session_cancels_a_pending_will() {
        let mut s = Sessions::default();
        let (g1, _) = s.connected("esp", true);
        let WillFate::Wait(cancel, fire_now) = s.will_fate("esp", g1, true) else {
            panic!("the will should wait");
        };
        s.disconnected("esp");
        let (_, cancelled) = s.connected("esp", false);
        assert!(cancelled && cancel.is_cancelled() && !fire_now.is_cancelled());
    }

    #[test]
    fn a_fresh_session_sends_a_pending_will_now() {
        let mut s = Sessions::default();
        let (g1, _) = s.connected("esp", true);
        let WillFate::Wait(cancel, fire_now) = s.will_fate("esp", g1, true) else {
            panic!("the will should wait");
        };
        let (_, cancelled) = s.connected("esp", true);
        assert!(!cancelled && fire_now.is_cancelled() && !cancel.is_cancelled());
    }

    #[test]
    fn takeover_settles_the_old_will_by_the_new_clean_start() {
        let mut s = Sessions::default();
        let (g1, _) = s.connected("esp", true);
        s.connected("esp", false);
        assert!(matches!(s.will_fate("esp", g1, true), WillFate::Cancelled));
        let (g3, _) = s.connected("tas", true);
        s.connected("tas", true);
        assert!(matches!(s.will_fate("tas", g3, true), WillFate::Now));
    }

    #[test]
    fn empty_client_ids_never_share_a_will() {
        let mut s = Sessions::default();
        let (g1, _) = s.connected("", true);
        assert!(waits(s.will_fate("", g1, true)));
        let (_, cancelled) = s.connected("", false);
        assert!(!cancelled);
        assert!(s.pending.is_empty() && s.latest.is_empty());
    }

    #[test]
    fn an_older_end_handled_late_is_settled_by_the_newer_session() {
        let mut s = Sessions::default();
        let (g1, _) = s.connected("esp", true);
        let (g2, _) = s.connected("esp", false);
        // The newer connection's end is handled first; its will waits.
        let WillFate::Wait(cancel, _) = s.will_fate("esp", g2, false) else {
            panic!("the newer will should wait");
        };
        s.disconnected("esp");
        // The older one's end comes late: the newer session resumed it, so no will, and the
        // newer will keeps waiting.
        assert!(matches!(s.will_fate("esp", g1, true), WillFate::Cancelled));
        assert!(!cancel.is_cancelled());
        assert_eq!(s.pending.get("esp").map(|p| p.generation), Some(g2));
    }

    #[test]
    fn entries_live_while_a_connection_does() {
        let mut s = Sessions::default();
        let (g1, _) = s.connected("esp", true);
        assert!(waits(s.will_fate("esp", g1, true)));
        s.disconnected("esp");
        s.settled("esp", g1);
        assert!(s.pending.is_empty() && s.latest.is_empty());
        // conn1 is still ending (a slow write) while conn2 comes and goes cleanly.
        let (g1, _) = s.connected("esp", true);
        let (g2, _) = s.connected("esp", false);
        s.disconnected("esp");
        assert_eq!(s.latest.get("esp").map(|l| l.0), Some(g2));
        // conn1's will is settled by conn2's Clean Start 0: cancelled.
        assert!(matches!(s.will_fate("esp", g1, true), WillFate::Cancelled));
        s.disconnected("esp");
        assert!(s.latest.is_empty());
    }

    #[test]
    fn edge_packet_ids_start_above_rumqttds() {
        for _ in 0..100 {
            assert!(first_edge_pkid() >= FIRST_EDGE_PKID);
        }
    }
}
