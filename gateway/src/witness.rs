//! The link to the witness broker (`[cluster.witness]`): an outside MQTT broker, such as the
//! Home Assistant host's, that gives a cluster of two nodes its third vote. This module only
//! carries messages: heartbeats out and back, claims of the witness's vote, and the order in
//! which the broker saw them. The rules are the lease's (`lease.rs`); docs/cluster.md has
//! the argument.
//!
//! The vote: a candidate publishes its claim `{"node","term"}` retained (QoS 1) on
//! `<prefix>/<cluster>/witness/claim/<node>`, one topic per node that always holds its
//! latest claim. Every node stays subscribed to all claims, so when a node's own claim
//! comes back to it, it has seen every claim the broker processed before it (retained at
//! subscription time, or live since). The claim wins when no other node's claim it has seen
//! is for the same term or a higher one: of two claims for one term, the one the broker
//! processed second sees the first, so at most one wins.
//!
//! A broker that crashed may come back without the claims made since it last saved its
//! retained messages. So on every new connection a node publishes its latest claim of this
//! run again: the claims of the nodes that are up are restored before any of them may claim
//! anew (a node claims only after its connection has been up for `down_after`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use roost_broker::Backoff;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::{NodeId, WitnessSettings};
use crate::lease::Heartbeat;
use crate::topics::Topics;

/// Keep-alive on the witness connection: a broker that vanished without closing the
/// connection is noticed within about one and a half of these.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Reconnect backoff, as for peers.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Requests waiting for the connection (heartbeats are dropped beyond this, never queued
/// for long).
const REQUESTS: usize = 64;

/// What the witness link reports to the coordinator.
#[derive(Debug)]
pub enum WitnessEvent {
    /// Connected, with the subscriptions in place.
    Up,
    /// The connection broke or could not be opened, with the reason.
    Down(String),
    /// A member's heartbeat came through the witness (this node's own included).
    Heartbeat(Heartbeat),
    /// Another node claimed the witness's vote for `term` (a live claim, not a retained
    /// one replayed at subscription).
    Claim {
        /// The claimant.
        node: String,
        /// The term it claimed.
        term: u64,
    },
    /// The broker ordered this node's claim for `term`.
    Decided {
        /// The term claimed.
        term: u64,
        /// Whether no other node had claimed this term or a higher one before it.
        won: bool,
        /// The highest term another node had claimed before it (0: none).
        highest_other: u64,
        /// Whether this was the claim published again on a new connection.
        reclaim: bool,
    },
    /// A message on the witness's topics that does not parse.
    Bad {
        /// Where it came.
        topic: String,
        /// What is wrong with it.
        error: String,
    },
}

/// A claim as published on the witness.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    node: String,
    term: u64,
}

/// What the witness connection reports, in order.
pub struct WitnessEvents(mpsc::Receiver<WitnessEvent>);

impl WitnessEvents {
    /// The next event of `events`, if there is a witness; never resolves otherwise.
    pub async fn next(events: &mut Option<WitnessEvents>) -> Option<WitnessEvent> {
        match events {
            Some(events) => events.0.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// The coordinator's handle on the witness connection.
pub struct WitnessLink {
    client: AsyncClient,
    /// The latest term this node claimed in this run (0: none), restored on reconnect. The
    /// lock is held across the publish, so claims enter the connection in term order.
    claimed: Arc<Mutex<u64>>,
    node: NodeId,
    topics: Topics,
    /// `host:port`, for logs and /health.
    addr: String,
}

impl WitnessLink {
    /// Starts the connection on `tracker`; it reconnects by itself and ends when its
    /// events are dropped.
    pub fn start(
        settings: &WitnessSettings,
        cluster: &str,
        node: &NodeId,
        topics: &Topics,
        tracker: &TaskTracker,
    ) -> (WitnessLink, WitnessEvents) {
        let mut options = MqttOptions::new(
            format!("roost-{cluster}-{node}-witness"),
            settings.mqtt.host.clone(),
            settings.mqtt.port,
        );
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(64 * 1024, 64 * 1024);
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            options.set_credentials(user.clone(), password.clone());
        }
        let (client, eventloop) = AsyncClient::new(options, REQUESTS);
        let claimed = Arc::new(Mutex::new(0));
        let (tx, events) = mpsc::channel(256);
        let addr = settings.mqtt.to_string();
        let task = Task {
            client: client.clone(),
            claimed: claimed.clone(),
            events: tx,
            me: node.clone(),
            topics: topics.clone(),
            claims: ClaimBook::default(),
            reclaimed: None,
            addr: addr.clone(),
        };
        tracker.spawn(task.run(eventloop));
        let link = WitnessLink {
            client,
            claimed,
            node: node.clone(),
            topics: topics.clone(),
            addr,
        };
        (link, WitnessEvents(events))
    }

    /// Where the witness is (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends a heartbeat through the witness (QoS 0: a late heartbeat is worth nothing). The
    /// caller sends only while the connection is reported up, so none wait for a reconnect.
    pub fn heartbeat(&self, payload: Vec<u8>) {
        let topic = self.topics.witness_heartbeat(&self.node);
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtMostOnce, false, payload)
        {
            tracing::debug!(error = %e, "heartbeat to the witness not sent");
        }
    }

    /// Claims the witness's vote for `term`; the answer comes as [`WitnessEvent::Decided`].
    pub fn claim(&self, term: u64) {
        // The value is a plain number; a panic elsewhere cannot leave it half-written.
        let mut claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        *claimed = (*claimed).max(term);
        publish_claim(&self.client, &self.topics, &self.node, *claimed);
    }
}

/// Publishes `node`'s claim for `term`: retained, QoS 1.
fn publish_claim(client: &AsyncClient, topics: &Topics, node: &NodeId, term: u64) {
    let claim = Claim {
        node: node.to_string(),
        term,
    };
    // Never an empty payload: that would delete the node's claim on the witness.
    let payload = match serde_json::to_vec(&claim) {
        Ok(payload) => payload,
        Err(e) => {
            tracing::error!(term, error = %e, "could not encode a claim of the witness's vote");
            return;
        }
    };
    let topic = topics.witness_claim(node);
    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, true, payload) {
        tracing::warn!(term, error = %e, "could not claim the witness's vote");
    }
}

/// What a claim seen on the witness means for this node.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Nothing to report: a retained claim, part of the picture at subscription.
    Nothing,
    /// Another node's live claim.
    Claim { node: String, term: u64 },
    /// This node's own claim came back.
    Decided {
        term: u64,
        won: bool,
        highest_other: u64,
    },
}

/// Every node's highest claim seen on the current connection, and the rule that decides a
/// claim: when this node's own claim comes back live, every claim the broker processed
/// before it is in the book, and it wins if none of another node is for its term or higher.
#[derive(Debug, Default)]
struct ClaimBook {
    latest: BTreeMap<String, u64>,
}

impl ClaimBook {
    /// A new connection: the retained claims that come with the subscription are the whole
    /// picture again.
    fn clear(&mut self) {
        self.latest.clear();
    }

    /// An empty retained message cleared `node`'s claim.
    fn cleared(&mut self, node: &str) {
        self.latest.remove(node);
    }

    /// Records `node`'s claim of `term`; `live` when the broker processed it after the
    /// subscription (retain flag 0).
    fn record(&mut self, me: &str, node: &str, term: u64, live: bool) -> Seen {
        let seen = if !live {
            Seen::Nothing
        } else if node == me {
            let highest_other = self
                .latest
                .iter()
                .filter(|(n, _)| n.as_str() != me)
                .map(|(_, t)| *t)
                .max()
                .unwrap_or(0);
            Seen::Decided {
                term,
                won: highest_other < term,
                highest_other,
            }
        } else {
            Seen::Claim {
                node: node.to_owned(),
                term,
            }
        };
        // A node's claims only grow; a stale one replayed late does not lower the mark.
        let latest = self.latest.entry(node.to_owned()).or_default();
        *latest = (*latest).max(term);
        seen
    }
}

/// The connection task.
struct Task {
    client: AsyncClient,
    claimed: Arc<Mutex<u64>>,
    events: mpsc::Sender<WitnessEvent>,
    me: NodeId,
    topics: Topics,
    /// Each node's latest claim seen on this connection.
    claims: ClaimBook,
    /// The term of the claim published again on this connection, until its echo.
    reclaimed: Option<u64>,
    addr: String,
}

impl Task {
    async fn run(mut self, mut eventloop: EventLoop) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut up = false;
        let mut last_error = String::new();
        loop {
            let polled = tokio::select! {
                polled = eventloop.poll() => polled,
                () = self.events.closed() => return,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    // Packets of the broken connection that rumqttc read but had not handed
                    // out yet: an old echo must not be decided against the new, empty book.
                    eventloop.state.events.clear();
                    self.claims.clear();
                    let filters = vec![
                        SubscribeFilter::new(self.topics.witness_claims(), QoS::AtLeastOnce),
                        SubscribeFilter::new(self.topics.witness_heartbeats(), QoS::AtMostOnce),
                    ];
                    if let Err(e) = self.client.try_subscribe_many(filters) {
                        tracing::warn!(error = %e, "could not subscribe on the witness");
                    }
                    // After the subscription, so that its echo is heard like any claim's.
                    let claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
                    if *claimed > 0 {
                        publish_claim(&self.client, &self.topics, &self.me, *claimed);
                        self.reclaimed = Some(*claimed);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                    if refused {
                        tracing::error!(
                            witness = %self.addr,
                            "the witness broker refused the subscriptions; it must let this node read and write {}/witness/#; retrying with backoff",
                            self.topics.witness_claims().trim_end_matches("/claim/+")
                        );
                        // Through the error path below: backoff, then a new connection.
                        let _ = self.client.try_disconnect();
                    } else {
                        up = true;
                        last_error.clear();
                        self.send(WitnessEvent::Up).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => self.on_publish(publish).await,
                Ok(_) => {}
                Err(e) => {
                    let error = e.to_string();
                    if std::mem::take(&mut up) {
                        self.send(WitnessEvent::Down(error.clone())).await;
                    } else if error != last_error {
                        tracing::warn!(witness = %self.addr, %error, "cannot reach the witness; retrying with backoff");
                    }
                    last_error = error;
                    let wait = backoff.next_wait();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.events.closed() => return,
                    }
                }
            }
        }
    }

    async fn send(&self, event: WitnessEvent) {
        // The coordinator gone means the node stops; `run` notices.
        let _ = self.events.send(event).await;
    }

    async fn on_publish(&mut self, publish: Publish) {
        let topic = publish.topic.clone();
        let claims = self.topics.witness_claims();
        let heartbeats = self.topics.witness_heartbeats();
        if let Some(node) = topic.strip_prefix(claims.trim_end_matches('+')) {
            let node = node.to_owned();
            self.on_claim(topic, node, &publish).await;
        } else if let Some(node) = topic.strip_prefix(heartbeats.trim_end_matches('+')) {
            match serde_json::from_slice::<Heartbeat>(&publish.payload) {
                Ok(hb) if hb.node == node => self.send(WitnessEvent::Heartbeat(hb)).await,
                Ok(hb) => {
                    let error = format!("a heartbeat of {} on {node}'s topic", hb.node);
                    self.send(WitnessEvent::Bad { topic, error }).await;
                }
                Err(e) => {
                    let error = e.to_string();
                    self.send(WitnessEvent::Bad { topic, error }).await;
                }
            }
        }
    }

    async fn on_claim(&mut self, topic: String, node: String, publish: &Publish) {
        if publish.payload.is_empty() {
            self.claims.cleared(&node);
            return;
        }
        let claim = match serde_json::from_slice::<Claim>(&publish.payload) {
            Ok(claim) if claim.node == node => claim,
            Ok(claim) => {
                let error = format!("a claim for {} on {node}'s topic", claim.node);
                self.send(WitnessEvent::Bad { topic, error }).await;
                return;
            }
            Err(e) => {
                let error = e.to_string();
                self.send(WitnessEvent::Bad { topic, error }).await;
                return;
            }
        };
        let seen = self
            .claims
            .record(self.me.as_str(), &node, claim.term, !publish.retain);
        match seen {
            Seen::Nothing => {}
            Seen::Claim { node, term } => self.send(WitnessEvent::Claim { node, term }).await,
            Seen::Decided {
                term,
                won,
                highest_other,
            } => {
                let reclaim = self.reclaimed == Some(term);
                if reclaim {
                    self.reclaimed = None;
                }
                self.send(WitnessEvent::Decided {
                    term,
                    won,
                    highest_other,
                    reclaim,
                })
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_two_claims_for_one_term_the_first_the_broker_processed_wins() {
        // a's book: b's claim was processed first (live, after a's subscription).
        let mut a = ClaimBook::default();
        assert_eq!(
            a.record("a", "b", 3, true),
            Seen::Claim {
                node: "b".into(),
                term: 3
            }
        );
        assert_eq!(
            a.record("a", "a", 3, true),
            Seen::Decided {
                term: 3,
                won: false,
                highest_other: 3
            }
        );
        // b's book: b's own claim came back before a's.
        let mut b = ClaimBook::default();
        assert_eq!(
            b.record("b", "b", 3, true),
            Seen::Decided {
                term: 3,
                won: true,
                highest_other: 0
            }
        );
    }

    #[test]
    fn retained_claims_count_against_a_claim_but_are_not_news() {
        let mut book = ClaimBook::default();
        // At subscription: the retained claims of both nodes, this one's included.
        assert_eq!(book.record("a", "b", 7, false), Seen::Nothing);
        assert_eq!(book.record("a", "a", 6, false), Seen::Nothing);
        assert!(matches!(
            book.record("a", "a", 7, true),
            Seen::Decided {
                won: false,
                highest_other: 7,
                ..
            }
        ));
        assert!(matches!(
            book.record("a", "a", 8, true),
            Seen::Decided { won: true, .. }
        ));
    }

    #[test]
    fn a_mark_never_goes_down_but_a_cleared_claim_or_a_new_connection_resets_it() {
        let mut book = ClaimBook::default();
        book.record("a", "b", 9, true);
        // A stale claim of b, replayed late, leaves b at 9.
        book.record("a", "b", 4, true);
        assert!(matches!(
            book.record("a", "a", 9, true),
            Seen::Decided { won: false, .. }
        ));
        book.cleared("b");
        assert!(matches!(
            book.record("a", "a", 10, true),
            Seen::Decided { won: true, .. }
        ));
        book.record("a", "b", 11, true);
        book.clear();
        assert!(matches!(
            book.record("a", "a", 11, true),
            Seen::Decided { won: true, .. }
        ));
    }
}
