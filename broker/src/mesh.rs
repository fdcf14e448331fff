//! The cluster mesh: one link from this node to every peer, carrying the messages this node's
//! own clients (and the node itself) publish, and the retained set when a link opens. Links
//! are Roost's peer protocol over TCP to the peer's MQTT port (`wire.rs`; the edge hands a
//! connection that opens with the protocol's preamble to [`Mesh::accept`]).
//!
//! After the retained set, a link sends `synced`: the receiving node then holds everything
//! the peer held when the link opened. [`PeerStatus::synced`] and [`crate::PeerLinks`]'s
//! sync counter let the node's state replication tell when it has caught up.
//!
//! Why there are no loops and no duplicates (docs/cluster.md has the whole argument):
//! - one hop: a message is forwarded only by the node where it entered (`Origin::is_local`);
//!   a peer's message enters here as `Origin::Peer` and is never forwarded again;
//! - each forwarded message has a sequence number of its origin's incarnation; the receiving
//!   node keeps the highest it has routed per peer and drops anything at or below it, so a
//!   resend after a reconnect is delivered once;
//! - a message stays queued for a peer until that peer acknowledges it (after routing it),
//!   and a reconnect resends what was not acknowledged: QoS 1 stays at-least-once across the
//!   link, and the sequence numbers make it exactly once while both nodes live.

mod wire;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::envelope::{Origin, Publication};
use crate::intake::Intake;
use crate::retained::Entry;
use wire::{Frame, FrameReader};

pub(crate) use wire::MAGIC;

/// How long a link has to open (connect, hello, welcome).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// A link with nothing to send pings this often; the other side answers.
const PING_EVERY: Duration = Duration::from_millis(500);
/// A link on which nothing was read for this long is dead.
const LINK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a write to a peer may wait for it to read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff: the first wait, and the cap it doubles up to (each wait jittered to
/// between half and all of it).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Messages kept for one peer until it acknowledges them; past either bound the oldest are
/// dropped, counted in `roost_cluster_peer_dropped_total{reason="queue_full"}`.
const QUEUE_MESSAGES: usize = 100_000;
const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Bytes gathered into one socket write.
const WRITE_BATCH: usize = 64 * 1024;
/// The refusal reason of a peer that cannot be reached (not counted as a refusal).
const UNREACHABLE: &str = "unreachable";
/// Topics that stay on the node that made them (MQTT: `$SYS` is the server's own).
const NODE_LOCAL_PREFIX: &[u8] = b"$SYS/";

/// The cluster as the mesh needs it.
#[derive(Debug, Clone, Default)]
pub struct MeshSettings {
    /// The cluster's name: a peer of another cluster is refused.
    pub cluster: String,
    /// The other members.
    pub peers: Vec<MeshPeer>,
}

/// One other member.
#[derive(Debug, Clone)]
pub struct MeshPeer {
    /// Its node id.
    pub id: String,
    /// Where its MQTT listener is, `host:port`.
    pub addr: String,
}

/// One peer as the mesh sees it, for `/health` (serialized as is) and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    /// The peer's node id.
    pub id: String,
    /// Its address.
    pub addr: String,
    /// The link from here to it: `up`, `connecting` or `down`.
    pub outbound: &'static str,
    /// Whether its link to here is up.
    pub inbound: bool,
    /// Whether that link has delivered the peer's whole retained set (as of the link's start).
    pub synced: bool,
    /// Links to it opened after the first.
    pub reconnects: u64,
    /// Messages sent to it.
    pub messages_out: u64,
    /// Messages received from it.
    pub messages_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Messages waiting for its acknowledgement.
    pub queued: u64,
    /// Why the last link to it failed, if it did.
    pub last_error: Option<String>,
}

/// The mesh's metrics.
#[derive(Clone)]
struct MeshMetrics {
    /// `roost_cluster_peer_up{peer,direction}`: 1 while the link is up.
    up: IntGaugeVec,
    /// `roost_cluster_peer_reconnects_total{peer}`.
    reconnects: IntCounterVec,
    /// `roost_cluster_peer_messages_total{peer,direction}`.
    messages: IntCounterVec,
    /// `roost_cluster_peer_bytes_total{peer,direction}`.
    bytes: IntCounterVec,
    /// `roost_cluster_peer_queued_messages{peer}`.
    queued: IntGaugeVec,
    /// `roost_cluster_peer_dropped_total{peer,reason}`.
    dropped: IntCounterVec,
    /// `roost_cluster_peer_duplicates_total{peer}`.
    duplicates: IntCounterVec,
    /// `roost_cluster_links_refused_total{direction,reason}`.
    refused: IntCounterVec,
}

impl MeshMetrics {
    fn register(registry: &Registry) -> Result<MeshMetrics, prometheus::Error> {
        let m = MeshMetrics {
            up: IntGaugeVec::new(
                Opts::new(
                    "roost_cluster_peer_up",
                    "1 while the link to (out) or from (in) a peer is up",
                ),
                &["peer", "direction"],
            )?,
            reconnects: IntCounterVec::new(
                Opts::new(
                    "roost_cluster_peer_reconnects_total",
                    "Links to a peer opened after the first",
                ),
                &["peer"],
            )?,
            messages: IntCounterVec::new(
                Opts::new(
                    "roost_cluster_peer_messages_total",
                    "Messages sent to (out) or received from (in) a peer",
                ),
                &["peer", "direction"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "roost_cluster_peer_bytes_total",
                    "Bytes sent to (out) or received from (in) a peer",
                ),
                &["peer", "direction"],
            )?,
            queued: IntGaugeVec::new(
                Opts::new(
                    "roost_cluster_peer_queued_messages",
                    "Messages waiting for a peer's acknowledgement",
                ),
                &["peer"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "roost_cluster_peer_dropped_total",
                    "Messages not forwarded to a peer: queue_full (the oldest, past the queue's bound) or peer_down (QoS 0 while its link is down)",
                ),
                &["peer", "reason"],
            )?,
            duplicates: IntCounterVec::new(
                Opts::new(
                    "roost_cluster_peer_duplicates_total",
                    "Messages a peer sent again after a reconnect, dropped as already routed",
                ),
                &["peer"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "roost_cluster_links_refused_total",
                    "Peer links refused, by this node (in) or by the other end (out), by reason",
                ),
                &["direction", "reason"],
            )?,
        };
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.queued.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.duplicates.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        Ok(m)
    }
}

/// One message waiting for a peer's acknowledgement.
struct Queued {
    seq: u64,
    /// The whole PUBLISH frame, shared by every peer's queue.
    frame: Bytes,
}

/// What waits to go to one peer.
#[derive(Default)]
struct Outbox {
    /// Unacknowledged messages, in sequence order.
    queue: VecDeque<Queued>,
    /// Their frames' bytes.
    bytes: usize,
    /// Whether a link to the peer is up (QoS 0 is not queued while it is not).
    up: bool,
}

/// What this node knows of a peer's link to it.
#[derive(Default)]
struct Inbound {
    /// The peer's incarnation the sequence below belongs to.
    incarnation: u64,
    /// The highest sequence number routed from it.
    last_seq: u64,
}

/// The live inbound link of a peer, if any.
struct InboundLink {
    /// Tells this link from the one that replaces it.
    id: u64,
    incarnation: u64,
    /// When a frame was last read on it.
    last_seen: Instant,
    /// Whether the peer's retained set has arrived in full on it (`synced` frame).
    synced: bool,
    /// Ends it (a reconnect of the same incarnation replaces it).
    cancel: CancellationToken,
}

/// One peer's metrics on the forwarding path, looked up once.
struct PeerCounters {
    /// `roost_cluster_peer_queued_messages`.
    queued: IntGauge,
    /// `roost_cluster_peer_dropped_total{reason="peer_down"}`.
    dropped_down: IntCounter,
    /// `roost_cluster_peer_dropped_total{reason="queue_full"}`.
    dropped_full: IntCounter,
}

impl PeerCounters {
    fn new(metrics: &MeshMetrics, id: &str) -> PeerCounters {
        PeerCounters {
            queued: metrics.queued.with_label_values(&[id]),
            dropped_down: metrics.dropped.with_label_values(&[id, "peer_down"]),
            dropped_full: metrics.dropped.with_label_values(&[id, "queue_full"]),
        }
    }
}

/// One other member.
struct Peer {
    index: u32,
    id: Arc<str>,
    addr: String,
    /// Its forwarding metrics.
    counters: PeerCounters,
    outbox: Mutex<Outbox>,
    /// Woken when the outbox has something new.
    wake: Notify,
    /// Woken when the peer linked to here: it is up, so a dial waiting out its backoff
    /// goes at once.
    redial: Notify,
    /// Held by the inbound link for its whole life: one at a time routes a peer's messages.
    inbound: tokio::sync::Mutex<Inbound>,
    /// The live inbound link.
    link: Mutex<Option<InboundLink>>,
    /// The outbound link's state: `up`, `connecting`, `down`.
    state: Mutex<(&'static str, Option<String>)>,
}

impl Peer {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A poisoned lock means a panic elsewhere; the queue itself is still consistent.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn link(&self) -> MutexGuard<'_, Option<InboundLink>> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: &'static str, error: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = state;
        if error.is_some() || state == "up" {
            s.1 = error;
        }
    }
}

/// Why a link was refused, as the metric label and the log's words.
struct Refusal {
    reason: &'static str,
    detail: String,
}

impl Refusal {
    fn new(reason: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

/// How an outbound link ended.
enum Ended {
    /// The node is shutting down.
    Shutdown,
    /// It failed; retry after a backoff.
    Failed(String),
}

/// The mesh's sending side, which the intake hands every message that enters this node
/// (`Intake::route`, before the message goes through this node's router): it numbers each
/// message this node forwards and queues it for every peer, for the peer links' tasks to
/// send.
pub(crate) struct Forwarder {
    peers: Vec<Arc<Peer>>,
    /// The last sequence number given to a forwarded message. Held while the message is
    /// queued for every peer: messages enter from many tasks at once, and each peer's queue
    /// must be in sequence order (the peer drops anything at or below what it routed).
    seq: Mutex<u64>,
}

impl Forwarder {
    /// Hands a message that enters this node, with its router envelope, to every peer, if it
    /// is this node's to forward: it entered here (one hop) and its topic is not node-local.
    pub(crate) fn forward(&self, message: &Publication, envelope: &[u8]) {
        if self.peers.is_empty()
            || !message.origin.is_local()
            || message.topic.starts_with(NODE_LOCAL_PREFIX)
        {
            return;
        }
        let mut last = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        *last += 1;
        let seq = *last;
        let frame = wire::publish(seq, &message.topic, envelope);
        for peer in &self.peers {
            let mut outbox = peer.outbox();
            if !outbox.up && message.qos == 0 {
                peer.counters.dropped_down.inc();
                continue;
            }
            outbox.bytes += frame.len();
            outbox.queue.push_back(Queued {
                seq,
                frame: frame.clone(),
            });
            while outbox.queue.len() > QUEUE_MESSAGES || outbox.bytes > QUEUE_BYTES {
                if let Some(old) = outbox.queue.pop_front() {
                    outbox.bytes -= old.frame.len();
                    peer.counters.dropped_full.inc();
                }
            }
            peer.counters.queued.set(outbox.queue.len() as i64);
            drop(outbox);
            peer.wake.notify_one();
        }
    }
}

/// The mesh of this node.
pub(crate) struct Mesh {
    node: Arc<str>,
    cluster: String,
    /// Random per start: tells a restarted peer (whose sequence starts again) from a
    /// reconnect, and this node from another with the same id.
    incarnation: u64,
    peers: Vec<Arc<Peer>>,
    intake: Arc<Intake>,
    /// Inbound links accepted so far (their ids).
    links: AtomicU64,
    metrics: MeshMetrics,
    /// The largest frame a peer may send.
    max_frame: usize,
    /// Counts inbound links that delivered their peer's whole retained set.
    synced: watch::Sender<u64>,
    token: CancellationToken,
}

impl Mesh {
    /// The mesh of `node` with the peers of `settings`, registering its metrics; from now on
    /// the intake hands its forwarder every message that enters.
    pub(crate) fn new(
        node: &str,
        settings: &MeshSettings,
        intake: Arc<Intake>,
        max_packet_size: usize,
        registry: &Registry,
        token: CancellationToken,
    ) -> Result<Mesh, prometheus::Error> {
        let metrics = MeshMetrics::register(registry)?;
        let peers = settings
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Arc::new(Peer {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    id: p.id.as_str().into(),
                    addr: p.addr.clone(),
                    counters: PeerCounters::new(&metrics, &p.id),
                    outbox: Mutex::new(Outbox::default()),
                    wake: Notify::new(),
                    redial: Notify::new(),
                    inbound: tokio::sync::Mutex::new(Inbound::default()),
                    link: Mutex::new(None),
                    state: Mutex::new(("connecting", None)),
                })
            })
            .collect::<Vec<_>>();
        for p in &peers {
            for direction in ["in", "out"] {
                metrics.up.with_label_values(&[&p.id, direction]).set(0);
            }
        }
        intake.set_forwarder(Arc::new(Forwarder {
            peers: peers.clone(),
            seq: Mutex::new(0),
        }));
        Ok(Mesh {
            node: node.into(),
            cluster: settings.cluster.clone(),
            incarnation: crate::backoff::random_u64(),
            peers,
            intake,
            links: AtomicU64::new(0),
            metrics,
            // A frame is a PUBLISH's envelope and topic plus a few fixed fields.
            max_frame: max_packet_size + 1024,
            synced: watch::Sender::new(0),
            token,
        })
    }

    /// Starts one outbound link per peer, each reconnecting until shutdown.
    pub(crate) fn start(self: &Arc<Self>, tracker: &TaskTracker) {
        for peer in &self.peers {
            let mesh = self.clone();
            let peer = peer.clone();
            tracker.spawn(async move { mesh.dial_loop(peer).await });
        }
    }

    /// Every peer's link state and traffic.
    pub(crate) fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| {
                let counter =
                    |v: &IntCounterVec, dir: &str| v.with_label_values(&[&p.id, dir]).get();
                let (outbound, last_error) =
                    p.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (inbound, synced) = {
                    let link = p.link();
                    (link.is_some(), link.as_ref().is_some_and(|l| l.synced))
                };
                PeerStatus {
                    id: p.id.to_string(),
                    addr: p.addr.clone(),
                    outbound,
                    inbound,
                    synced,
                    reconnects: self.metrics.reconnects.with_label_values(&[&p.id]).get(),
                    messages_out: counter(&self.metrics.messages, "out"),
                    messages_in: counter(&self.metrics.messages, "in"),
                    bytes_out: counter(&self.metrics.bytes, "out"),
                    bytes_in: counter(&self.metrics.bytes, "in"),
                    queued: p.outbox().queue.len() as u64,
                    last_error,
                }
            })
            .collect()
    }

    /// A receiver that sees the count of completed retained-set transfers change each time an
    /// inbound link delivers its peer's whole set.
    pub(crate) fn synced_links(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Keeps a link to `peer` open until shutdown, reconnecting with capped, jittered
    /// exponential backoff.
    async fn dial_loop(self: Arc<Self>, peer: Arc<Peer>) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut opened_before = false;
        let mut last_error = String::new();
        loop {
            let ended = self.link_out(&peer, &mut opened_before, &mut backoff).await;
            let error = match ended {
                Ended::Shutdown => return,
                Ended::Failed(error) => error,
            };
            // The same failure again (a peer that stays down) is logged once.
            if error != last_error {
                tracing::warn!(peer = %peer.id, addr = %peer.addr, %error, "link to peer down; retrying with backoff");
                last_error.clone_from(&error);
            } else {
                tracing::debug!(peer = %peer.id, %error, "link to peer still down");
            }
            peer.set_state("down", Some(error));
            let jittered = backoff.next_wait();
            tokio::select! {
                () = self.token.cancelled() => return,
                () = tokio::time::sleep(jittered) => {}
                () = peer.redial.notified() => backoff.reset(),
            }
        }
    }

    /// One outbound link: connect, hello, then send the retained set and the queue, and
    /// whatever is forwarded, until it fails or the node stops.
    async fn link_out(
        &self,
        peer: &Peer,
        opened_before: &mut bool,
        backoff: &mut Backoff,
    ) -> Ended {
        peer.set_state("connecting", None);
        let opened = tokio::select! {
            () = self.token.cancelled() => return Ended::Shutdown,
            opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.open(peer)) => opened,
        };
        let (mut reader, mut writer, resume_after) = match opened {
            Ok(Ok(link)) => link,
            Ok(Err(refusal)) => {
                if refusal.reason != UNREACHABLE {
                    self.metrics
                        .refused
                        .with_label_values(&["out", refusal.reason])
                        .inc();
                }
                return Ended::Failed(format!("{}: {}", refusal.reason, refusal.detail));
            }
            Err(_) => return Ended::Failed("no answer in time".into()),
        };
        if std::mem::replace(opened_before, true) {
            self.metrics.reconnects.with_label_values(&[&peer.id]).inc();
        }
        backoff.reset();
        tracing::info!(peer = %peer.id, addr = %peer.addr, "link to peer up");
        peer.set_state("up", None);
        let up = self.metrics.up.with_label_values(&[&peer.id, "out"]);
        up.set(1);
        {
            let mut outbox = peer.outbox();
            outbox.up = true;
            self.trim(peer, &mut outbox, resume_after);
        }
        let ended = self
            .run_out(peer, &mut reader, &mut writer)
            .await
            .unwrap_or_else(Ended::Failed);
        up.set(0);
        let mut outbox = peer.outbox();
        outbox.up = false;
        ended
    }

    /// Connects and exchanges hello and welcome; refused when the peer cannot be reached
    /// (`UNREACHABLE`), is not the peer, or refuses.
    async fn open(&self, peer: &Peer) -> Result<(FrameReader, OwnedWriteHalf, u64), Refusal> {
        let stream = TcpStream::connect(&peer.addr)
            .await
            .map_err(|e| Refusal::new(UNREACHABLE, e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut hello = BytesMut::from(&MAGIC[..]);
        hello.extend_from_slice(&wire::hello(
            &self.cluster,
            &self.node,
            &peer.id,
            self.incarnation,
        ));
        write
            .write_all(&hello)
            .await
            .map_err(|e| Refusal::new(UNREACHABLE, e.to_string()))?;
        let mut reader = FrameReader::new(read, BytesMut::new(), self.max_frame);
        let not_roost = |what: &str| {
            Refusal::new(
                "protocol",
                format!(
                    "{} does not speak the Roost peer protocol ({what})",
                    peer.addr
                ),
            )
        };
        match reader.next().await {
            Ok(Some(Frame::Welcome {
                node,
                incarnation,
                resume_after,
            })) => {
                if *node == *self.node && incarnation == self.incarnation {
                    return Err(Refusal::new(
                        "self",
                        format!("{} is this node's own address", peer.addr),
                    ));
                }
                if *node != *peer.id {
                    return Err(Refusal::new(
                        "wrong_node",
                        format!("{} is node {node}, not {}", peer.addr, peer.id),
                    ));
                }
                Ok((reader, write, resume_after))
            }
            Ok(Some(Frame::Refuse { reason, detail })) => Err(Refusal::new(
                wire::known_reason(&reason),
                format!("refused by {}: {detail}", peer.id),
            )),
            Ok(Some(_)) => Err(not_roost("unexpected frame")),
            Ok(None) => Err(not_roost("closed the connection")),
            Err(e) => Err(not_roost(&e.to_string())),
        }
    }

    /// Drops what the peer acknowledged.
    fn trim(&self, peer: &Peer, outbox: &mut Outbox, acked: u64) {
        while outbox.queue.front().is_some_and(|q| q.seq <= acked) {
            if let Some(q) = outbox.queue.pop_front() {
                outbox.bytes -= q.frame.len();
            }
        }
        peer.counters.queued.set(outbox.queue.len() as i64);
    }

    /// Sends the retained set, then everything queued and forwarded, reading the peer's
    /// acknowledgements, until the link fails or the node stops.
    async fn run_out(
        &self,
        peer: &Peer,
        reader: &mut FrameReader,
        writer: &mut OwnedWriteHalf,
    ) -> Result<Ended, String> {
        let out_bytes = self.metrics.bytes.with_label_values(&[&peer.id, "out"]);
        let out_messages = self.metrics.messages.with_label_values(&[&peer.id, "out"]);
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        for (topic, entry) in self.intake.retained.entries() {
            batch.extend_from_slice(&wire::retained(&topic, &entry));
            if batch.len() >= WRITE_BATCH {
                send(writer, &mut batch, &out_bytes).await?;
            }
        }
        batch.extend_from_slice(&wire::synced());
        send(writer, &mut batch, &out_bytes).await?;
        // The sequence number of the last message written on this link.
        let mut sent = 0;
        let mut last_read = Instant::now();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Everything queued past what this link sent, a batch at a time.
            loop {
                {
                    let outbox = peer.outbox();
                    let start = outbox.queue.partition_point(|q| q.seq <= sent);
                    for q in outbox.queue.range(start..) {
                        batch.extend_from_slice(&q.frame);
                        sent = q.seq;
                        out_messages.inc();
                        if batch.len() >= WRITE_BATCH {
                            break;
                        }
                    }
                }
                if batch.is_empty() {
                    break;
                }
                send(writer, &mut batch, &out_bytes).await?;
                ping.reset();
            }
            tokio::select! {
                () = self.token.cancelled() => {
                    let _ = writer.write_all(&wire::bye()).await;
                    return Ok(Ended::Shutdown);
                }
                () = peer.wake.notified() => {}
                // Checked on its own clock: a link that keeps writing (heartbeats every
                // 200 ms) never idles long enough for the ping below to fire.
                () = tokio::time::sleep_until((last_read + LINK_TIMEOUT).into()) => {
                    return Err("the peer stopped answering".into());
                }
                _ = ping.tick() => {
                    batch.extend_from_slice(&wire::ping());
                    send(writer, &mut batch, &out_bytes).await?;
                }
                frame = reader.next() => {
                    last_read = Instant::now();
                    match frame {
                        Ok(Some(Frame::Ack { seq })) => {
                            let mut outbox = peer.outbox();
                            self.trim(peer, &mut outbox, seq);
                        }
                        Ok(Some(_)) => return Err("unexpected frame from the peer".into()),
                        Ok(None) => return Err("the peer closed the link".into()),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
        }
    }

    /// Serves a link a peer opened to this node; `buffered` holds what the edge read of it.
    pub(crate) async fn accept(self: Arc<Self>, stream: TcpStream, buffered: BytesMut) {
        let remote = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = FrameReader::new(read, buffered, self.max_frame);
        let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            reader.preamble().await?;
            reader.next().await
        })
        .await;
        let checked = match hello {
            Ok(Ok(Some(Frame::Hello {
                version,
                cluster,
                from,
                to,
                incarnation,
            }))) => self.check_hello(version, &cluster, &from, &to, incarnation),
            Ok(Ok(Some(_))) => Err(Refusal::new("protocol", "the first frame is not a hello")),
            Ok(Ok(None)) => return,
            Ok(Err(e)) => Err(Refusal::new("protocol", e.to_string())),
            Err(_) => Err(Refusal::new("protocol", "no hello in time")),
        };
        let (peer, incarnation) = match checked {
            Ok(accepted) => accepted,
            Err(refusal) => {
                tracing::warn!(%remote, reason = refusal.reason, detail = %refusal.detail, "peer link refused");
                self.metrics
                    .refused
                    .with_label_values(&["in", refusal.reason])
                    .inc();
                let _ = write
                    .write_all(&wire::refuse(refusal.reason, &refusal.detail))
                    .await;
                return;
            }
        };
        let cancel = self.token.child_token();
        let link_id = self.links.fetch_add(1, Ordering::Relaxed);
        // A reconnect of the same incarnation replaces the link it left behind.
        if let Some(old) = peer.link().replace(InboundLink {
            id: link_id,
            incarnation,
            last_seen: Instant::now(),
            synced: false,
            cancel: cancel.clone(),
        }) {
            old.cancel.cancel();
        }
        let mut state = peer.inbound.lock().await;
        if state.incarnation != incarnation {
            *state = Inbound {
                incarnation,
                last_seq: 0,
            };
        }
        let up = self.metrics.up.with_label_values(&[&peer.id, "in"]);
        up.set(1);
        let welcome = wire::welcome(&self.node, self.incarnation, state.last_seq);
        let outcome = match write.write_all(&welcome).await {
            Ok(()) => {
                tracing::info!(peer = %peer.id, %remote, "link from peer up");
                // A peer that just started has been unreachable: link back now rather than
                // after the backoff, so it receives this node's retained set at once.
                peer.redial.notify_waiters();
                self.run_in(
                    &peer,
                    &mut state,
                    &mut reader,
                    &mut write,
                    (&cancel, link_id),
                )
                .await
            }
            Err(e) => Err(e.to_string()),
        };
        drop(state);
        {
            // Unless a newer link replaced this one, the peer has no link to here now.
            let mut link = peer.link();
            if link.as_ref().is_some_and(|l| l.id == link_id) {
                *link = None;
                up.set(0);
            }
        }
        match outcome {
            Ok(()) => tracing::info!(peer = %peer.id, "link from peer closed"),
            Err(error) => tracing::warn!(peer = %peer.id, %error, "link from peer failed"),
        }
    }

    /// Checks a hello: which peer it is and that it may link now.
    fn check_hello(
        &self,
        version: u8,
        cluster: &str,
        from: &str,
        to: &str,
        incarnation: u64,
    ) -> Result<(Arc<Peer>, u64), Refusal> {
        if version != wire::VERSION {
            return Err(Refusal::new(
                "version",
                format!(
                    "peer protocol {version}, this node speaks {}",
                    wire::VERSION
                ),
            ));
        }
        if cluster != self.cluster {
            return Err(Refusal::new(
                "wrong_cluster",
                format!(
                    "node {from} is of cluster {cluster:?}, this node of {:?}",
                    self.cluster
                ),
            ));
        }
        if from == &*self.node {
            return Err(if incarnation == self.incarnation {
                Refusal::new("self", "this node's own address is listed as a peer's")
            } else {
                Refusal::new(
                    "duplicate_node",
                    format!("another node also calls itself {from}: node ids must be unique"),
                )
            });
        }
        if to != &*self.node {
            return Err(Refusal::new(
                "wrong_node",
                format!("node {from} expected {to} here, but this is {}", self.node),
            ));
        }
        let Some(peer) = self.peers.iter().find(|p| &*p.id == from) else {
            return Err(Refusal::new(
                "unknown_node",
                format!("{from} is not among this node's cluster.peers"),
            ));
        };
        if let Some(live) = peer.link().as_ref() {
            if live.incarnation != incarnation && live.last_seen.elapsed() < LINK_TIMEOUT {
                return Err(Refusal::new(
                    "duplicate_node",
                    format!(
                        "{from} is already linked from another process: node ids must be unique"
                    ),
                ));
            }
        }
        Ok((peer.clone(), incarnation))
    }

    /// Routes what a peer sends until its link ends; acknowledges each batch once routed.
    async fn run_in(
        &self,
        peer: &Peer,
        state: &mut Inbound,
        reader: &mut FrameReader,
        writer: &mut OwnedWriteHalf,
        (cancel, link_id): (&CancellationToken, u64),
    ) -> Result<(), String> {
        let in_bytes = self.metrics.bytes.with_label_values(&[&peer.id, "in"]);
        let in_messages = self.metrics.messages.with_label_values(&[&peer.id, "in"]);
        let duplicates = self.metrics.duplicates.with_label_values(&[&peer.id]);
        let mut acked = state.last_seq;
        loop {
            let frame = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                frame = tokio::time::timeout(LINK_TIMEOUT, reader.next()) => frame,
            };
            let frame = match frame {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => return Err("the peer closed the link".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("nothing from the peer in time".into()),
            };
            in_bytes.inc_by(reader.take_read());
            if let Some(link) = peer.link().as_mut() {
                link.last_seen = Instant::now();
            }
            let mut ping = false;
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                match frame {
                    Frame::Publish {
                        seq,
                        topic,
                        envelope,
                    } => {
                        if seq <= state.last_seq {
                            duplicates.inc();
                        } else {
                            state.last_seq = seq;
                            let Some(mut message) = Publication::open(topic, envelope) else {
                                return Err("a message that is not an envelope".into());
                            };
                            message.origin = Origin::Peer(peer.index);
                            message.writer = Some(peer.id.clone());
                            self.intake
                                .route(message)
                                .await
                                .map_err(|e| e.to_string())?;
                            in_messages.inc();
                        }
                    }
                    Frame::Retained { topic, entry } => {
                        let message = retained_message(topic, entry, peer);
                        self.intake
                            .merge(message)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Frame::Synced => {
                        if let Some(link) = peer.link().as_mut().filter(|l| l.id == link_id) {
                            link.synced = true;
                        }
                        tracing::debug!(peer = %peer.id, "peer's retained set received");
                        self.synced.send_modify(|n| *n += 1);
                    }
                    Frame::Ping => ping = true,
                    Frame::Bye => return Ok(()),
                    _ => return Err("unexpected frame from the peer".into()),
                }
                next = reader.buffered().map_err(|e| e.to_string())?;
            }
            if state.last_seq != acked || ping {
                acked = state.last_seq;
                let ack = wire::ack(acked);
                tokio::time::timeout(SEND_TIMEOUT, writer.write_all(&ack))
                    .await
                    .map_err(|_| "the peer does not read".to_string())?
                    .map_err(|e| e.to_string())?;
            }
        }
    }
}

/// The message a retained entry from a peer makes: the retained message, or for a
/// tombstone a retained delete (empty payload), with the entry's version.
fn retained_message(topic: Bytes, entry: Entry, peer: &Peer) -> Publication {
    let version = entry.version().clone();
    let (payload, properties, qos, expires_at) = match &entry {
        Entry::Message(stored) => match stored.parts() {
            Some(parts) => (
                Bytes::copy_from_slice(parts.payload),
                Bytes::copy_from_slice(parts.properties),
                stored.qos,
                stored.expires_at,
            ),
            None => (Bytes::new(), Bytes::from_static(&[0]), 0, None),
        },
        Entry::Tombstone(_) => (Bytes::new(), Bytes::from_static(&[0]), 0, None),
    };
    Publication {
        topic,
        payload,
        properties,
        qos,
        retain: true,
        origin: Origin::Peer(peer.index),
        sequence: 0,
        expires_at,
        stamp: version.stamp,
        writer: Some(version.writer),
    }
}

/// Writes and clears `batch`, within `SEND_TIMEOUT`.
async fn send(
    writer: &mut OwnedWriteHalf,
    batch: &mut Vec<u8>,
    bytes: &prometheus::IntCounter,
) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(SEND_TIMEOUT, writer.write_all(batch))
        .await
        .map_err(|_| "the peer does not read".to_string())?
        .map_err(|e| e.to_string())?;
    bytes.inc_by(batch.len() as u64);
    batch.clear();
    Ok(())
}
