//! Where messages leave the router: one dispatcher reads rumqttd's log back in the order
//! messages were appended, and offers each to every session that subscribed (which matches it
//! against its own subscriptions, `Session::offer`) and to every in-process subscription. A
//! shared subscription gets each message once per group: the dispatcher chooses the session,
//! turn by turn, among the group's connected members.
//!
//! Offering never waits (a session queues, holds publishers when its client is behind, or
//! drops what it may drop, counted), so the dispatcher keeps up with the router, and the
//! intake's budget keeps the router from running ahead of it (`intake.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rumqttd::local::LinkRx;
use tokio::sync::mpsc;

use crate::client::Message;
use crate::edge::Edge;
use crate::envelope::{self, Publication};
use crate::ingress::{next_forward, reschedule, Next};
use crate::session::{Outbound, Session, Subscription};
use crate::topic;

/// Shared subscriptions whose turn is remembered; beyond, every turn starts again (only
/// filters that came and went leave entries behind).
const MAX_TURNS: usize = 4096;

/// An in-process subscription (`BrokerClient::subscribe`).
#[derive(Clone)]
struct Local {
    /// The filter.
    filter: String,
    /// Messages routed when it was made: it is offered the later ones only (as
    /// `Subscription::since`).
    since: u64,
    /// Where its messages go; a full channel drops the message, counted.
    deliver: mpsc::Sender<Message>,
    /// Messages dropped because `deliver` was full, shared with the `Subscription`.
    dropped: Arc<AtomicU64>,
}

/// Everyone the dispatcher offers messages to, as one snapshot.
#[derive(Default, Clone)]
struct Members {
    /// Sessions that subscribed at least once, by key (in key order, so a shared group's
    /// turns go round in a stable order).
    sessions: BTreeMap<u64, Arc<Session>>,
    /// In-process subscriptions, by key.
    locals: BTreeMap<u64, Local>,
}

/// The subscribers of this node: changed by the edge and the in-process client, read by the
/// dispatcher as a snapshot it renews when the version moves.
#[derive(Default)]
pub(crate) struct Subscribers {
    members: Mutex<Arc<Members>>,
    version: AtomicU64,
}

impl Subscribers {
    fn lock(&self) -> MutexGuard<'_, Arc<Members>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the members. The version moves first, under the lock: the dispatcher, once
    /// it sees the new version, waits for the lock and takes the members with the change.
    fn change(&self, f: impl FnOnce(&mut Members)) {
        let mut members = self.lock();
        self.version.fetch_add(1, Ordering::SeqCst);
        f(Arc::make_mut(&mut members));
    }

    /// Offers `session` every message from now on.
    pub(crate) fn add_session(&self, session: Arc<Session>) {
        self.change(|m| {
            m.sessions.insert(session.key, session);
        });
    }

    /// Stops offering messages to the session `key` (it ended).
    pub(crate) fn remove_session(&self, key: u64) {
        self.change(|m| {
            m.sessions.remove(&key);
        });
    }

    /// Delivers messages matching `filter` to `deliver`, from those numbered after
    /// `routed()` when the version has moved on.
    pub(crate) fn add_local(
        &self,
        key: u64,
        filter: String,
        deliver: mpsc::Sender<Message>,
        dropped: Arc<AtomicU64>,
        routed: impl FnOnce() -> u64,
    ) {
        self.change(|m| {
            let since = routed();
            m.locals.insert(
                key,
                Local {
                    filter,
                    since,
                    deliver,
                    dropped,
                },
            );
        });
    }

    /// Stops the in-process subscription `key`.
    pub(crate) fn remove_local(&self, key: u64) {
        self.change(|m| {
            m.locals.remove(&key);
        });
    }

    /// The members now, and the version they are at.
    fn snapshot(&self) -> (u64, Arc<Members>) {
        let members = self.lock();
        (self.version.load(Ordering::SeqCst), members.clone())
    }
}

/// Reads the router's log until the node shuts down, offering every message.
pub(crate) async fn dispatch(edge: Arc<Edge>, mut reader: LinkRx) {
    let (mut version, mut members) = edge.subscribers.snapshot();
    let mut turns: HashMap<String, usize> = HashMap::new();
    loop {
        let next = tokio::select! {
            () = edge.shutdown.cancelled() => break,
            next = next_forward(&mut reader) => next,
        };
        let (topic, envelope) = match next {
            Next::Message(topic, envelope) => (topic, envelope),
            Next::Reschedule if reschedule(&reader).await => continue,
            Next::Reschedule | Next::Gone => {
                tracing::error!("the router's reader link ended: no message is delivered any more");
                break;
            }
        };
        edge.intake
            .consumed(envelope::routed_size(&topic, &envelope));
        let Some(message) = Publication::open(topic, envelope) else {
            edge.metrics
                .dropped
                .with_label_values(&["not_an_envelope"])
                .inc();
            continue;
        };
        if edge.subscribers.version.load(Ordering::SeqCst) != version {
            (version, members) = edge.subscribers.snapshot();
        }
        offer(&edge, &members, &message, &mut turns);
    }
    // Ends the in-process subscriptions' streams.
    edge.subscribers.change(|m| m.locals.clear());
}

/// Offers one message to every member.
fn offer(
    edge: &Edge,
    members: &Members,
    message: &Publication,
    turns: &mut HashMap<String, usize>,
) {
    let mut shared: Vec<(Subscription, &Arc<Session>)> = Vec::new();
    for session in members.sessions.values() {
        session.offer(
            message,
            &edge.limits,
            &edge.metrics,
            &edge.flow,
            &mut |sub| {
                shared.push((sub.clone(), session));
            },
        );
    }
    if !shared.is_empty() {
        deliver_shared(edge, message, shared, turns);
    }
    if members.locals.is_empty() {
        return;
    }
    let name = String::from_utf8_lossy(&message.topic);
    let sent = edge
        .metrics
        .messages_sent
        .with_label_values(&["local", "0"]);
    for (key, local) in &members.locals {
        if local.since >= message.sequence
            || !topic::matches(Subscription::pattern_of(&local.filter), &name)
        {
            continue;
        }
        let delivered = Message {
            topic: name.clone().into_owned(),
            payload: message.payload.clone(),
        };
        match local.deliver.try_send(delivered) {
            Ok(()) => sent.inc(),
            Err(mpsc::error::TrySendError::Full(_)) => {
                local.dropped.fetch_add(1, Ordering::Relaxed);
                edge.metrics
                    .dropped
                    .with_label_values(&["queue_full"])
                    .inc();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => edge.subscribers.remove_local(*key),
        }
    }
}

/// Delivers a message once to each shared subscription it matched (MQTT 5 §4.8.2): to one
/// session of the group, the next in turn among those connected (or among all, when none
/// is: a session that is away keeps QoS 1/2 messages for its return).
fn deliver_shared(
    edge: &Edge,
    message: &Publication,
    mut shared: Vec<(Subscription, &Arc<Session>)>,
    turns: &mut HashMap<String, usize>,
) {
    // Grouped by filter (`$share/<group>/<filter>` names the shared subscription), in key
    // order within a group.
    shared.sort_by(|a, b| a.0.filter.cmp(&b.0.filter).then(a.1.key.cmp(&b.1.key)));
    for group in shared.chunk_by(|a, b| a.0.filter == b.0.filter) {
        let online: Vec<_> = group.iter().filter(|(_, s)| s.is_online()).collect();
        let pool: Vec<_> = if online.is_empty() {
            group.iter().collect()
        } else {
            online
        };
        if turns.len() >= MAX_TURNS && !turns.contains_key(&group[0].0.filter) {
            turns.clear();
        }
        let turn = turns.entry(group[0].0.filter.clone()).or_default();
        let (sub, session) = pool[*turn % pool.len()];
        *turn = turn.wrapping_add(1);
        let delivery = Outbound {
            message: message.clone(),
            qos: sub.qos.min(message.qos),
            retain: sub.retain_as_published && message.retain,
            subscription_ids: sub.id.into_iter().collect(),
        };
        session.deliver(delivery, &edge.limits, &edge.metrics, &edge.flow);
    }
}
