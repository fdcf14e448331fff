//! Replicated state: every node's redb store kept in step through retained MQTT messages.
//! [`Replicated`] is how the rest of the node writes state (it checks ownership and fences
//! leader-owned keys by term) and reads it (through the [`Store`], with its change feed); the
//! replicator task publishes this node's writes as retained messages on the state topics,
//! applies peers' records from them, and repairs both sides in anti-entropy passes.
//!
//! The broker's retained set is the carrier: its mesh sends every retained message to every
//! node, and a node's whole set to each peer that links to it (`synced` marks the end). The
//! store is a checked copy of the state topics: a key's owner keeps its own keys' topics
//! right, every other node follows the topics. docs/state.md has the rules and why.

mod metrics;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roost_broker::{BrokerClient, Message, PeerLinks};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::ClusterView;
use crate::config::NodeId;
use crate::state::{self, unix_ms, Change, Header, Key, Namespace, Outcome, Record, Store};
use crate::topics::Topics;
use metrics::Metrics;
use rules::{Owner, Rejection, StateTopics};

/// Live messages the replicator's subscription holds before the broker drops one (a drop
/// is repaired by an anti-entropy pass at once).
const SUBSCRIPTION_BUFFER: usize = 16 * 1024;
/// Peers' records applied in one store batch.
const APPLY_CHUNK: usize = 2048;
/// How soon after a rejected message the next anti-entropy pass repairs the topics.
const REPAIR_DELAY: Duration = Duration::from_millis(200);

/// How replication is tuned (`[state]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// How long a delete's tombstone stays before it is cleared.
    pub tombstone_ttl: Duration,
    /// How often the store is compared with the retained state topics.
    pub anti_entropy_interval: Duration,
}

/// Why a write through [`Replicated`] was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A device key of another node: only the node a device is attached to writes its state.
    #[error("{key} belongs to node {owner}; only that node writes it")]
    NotOwner {
        /// The key.
        key: Key,
        /// The node that owns it.
        owner: String,
    },
    /// A leader-owned key, and this node does not hold the lease.
    #[error("{key} is written by the leader ({}), not by this node", leader.as_deref().unwrap_or("none now"))]
    NotLeader {
        /// The key.
        key: Key,
        /// The leader as this node sees it.
        leader: Option<String>,
    },
    /// A device key without a node level (`devices/<node>/<name>`).
    #[error("{key} names no owner: device keys are devices/<node>/<name>")]
    NoOwner {
        /// The key.
        key: Key,
    },
    /// The store refused or failed (a stale term among them).
    #[error(transparent)]
    Store(#[from] state::Error),
}

/// Whether the store has caught up, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    /// True when every peer linked to this node has delivered its retained set and the store
    /// has been compared with it since (always true for a node without peers).
    pub in_sync: bool,
    /// Records in the store, tombstones included.
    pub keys: u64,
    /// Tombstones among them.
    pub tombstones: u64,
    /// Peers whose retained set this node holds now.
    pub synced_peers: Vec<String>,
    /// Milliseconds since the last anti-entropy pass, if there was one.
    pub last_reconcile_ms_ago: Option<u64>,
}

/// What the replicator reports to [`Replicated::sync_status`].
#[derive(Default)]
struct Progress {
    /// The sync counter of the peer links as of the last pass.
    reconciled: u64,
    /// Whether a pass ran with at least one peer synced.
    caught_up_once: bool,
    /// When the last pass ended.
    last: Option<Instant>,
    /// Set when a dropped message or a lagging change feed awaits the next pass.
    behind: bool,
}

/// The node's handle on replicated state; cheap to clone.
#[derive(Clone)]
pub struct Replicated {
    inner: Arc<Shared>,
}

struct Shared {
    store: Store,
    node: Arc<str>,
    view: ClusterView,
    links: Option<PeerLinks>,
    has_peers: bool,
    progress: Mutex<Progress>,
    metrics: Metrics,
}

impl Shared {
    /// See [`Replicated::sync_status`]; also sets `roost_state_in_sync`.
    fn sync_status(&self) -> SyncStatus {
        let peers = self
            .links
            .as_ref()
            .map(PeerLinks::status)
            .unwrap_or_default();
        let synced_peers: Vec<String> = peers
            .iter()
            .filter(|p| p.synced)
            .map(|p| p.id.clone())
            .collect();
        let all_linked_synced = peers.iter().all(|p| !p.inbound || p.synced);
        let generation = self
            .links
            .as_ref()
            .map_or(0, |l| *l.synced_links().borrow());
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let in_sync = progress.last.is_some()
            && !progress.behind
            && (!self.has_peers
                || (progress.caught_up_once
                    && progress.reconciled == generation
                    && all_linked_synced
                    && !synced_peers.is_empty()));
        self.metrics.in_sync.set(i64::from(in_sync));
        SyncStatus {
            in_sync,
            keys: self.store.len(),
            tombstones: self.store.tombstones(),
            synced_peers,
            last_reconcile_ms_ago: progress
                .last
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// What [`start`] needs.
pub struct Setup {
    /// The node's in-process MQTT client.
    pub client: BrokerClient,
    /// The node's store.
    pub store: Store,
    /// The cluster view: who leads, in which term.
    pub view: ClusterView,
    /// The mesh's links, for their sync state (`None` in tests without a broker mesh).
    pub links: Option<PeerLinks>,
    /// This node.
    pub node: NodeId,
    /// Every member's id, this node's included.
    pub members: Vec<String>,
    /// The node's topics.
    pub topics: Topics,
    /// `[state]`.
    pub tuning: Tuning,
}

/// Starts the replicator on `tracker` (it stops with `token`) and returns the handle.
pub async fn start(
    setup: Setup,
    registry: &prometheus::Registry,
    tracker: &TaskTracker,
    token: CancellationToken,
) -> anyhow::Result<Replicated> {
    let metrics = Metrics::register(registry)?;
    let shared = Arc::new(Shared {
        store: setup.store.clone(),
        node: Arc::from(setup.node.as_str()),
        view: setup.view.clone(),
        has_peers: setup.members.len() > 1,
        links: setup.links.clone(),
        progress: Mutex::new(Progress::default()),
        metrics: metrics.clone(),
    });
    let topics = StateTopics::new(&setup.topics);
    let mut subscription = setup
        .client
        .subscribe_with(&topics.filter(), SUBSCRIPTION_BUFFER)
        .await?;
    // The first anti-entropy pass reads the retained set itself.
    subscription.discard_retained();
    let changes = setup.store.subscribe();
    let synced = match &setup.links {
        Some(links) => links.synced_links(),
        None => watch::Sender::new(0).subscribe(),
    };
    let replicator = Replicator {
        client: setup.client,
        store: setup.store,
        topics,
        members: setup.members,
        tuning: setup.tuning,
        shared: shared.clone(),
        metrics,
        republished: Mutex::new(HashMap::new()),
    };
    tracker.spawn(replicator.run(subscription, changes, synced, token));
    Ok(Replicated { inner: shared })
}

impl Replicated {
    /// The store, for reads ([`Store::get`], [`Store::scan_prefix`]) and its change feed
    /// ([`Store::subscribe`]: local writes and peers' alike, `Change::remote` tells which).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Writes `value` under `key` and returns its version; replication publishes it.
    ///
    /// `devices/<node>/..` keys are written only by that node; `cluster/..` keys only by the
    /// leader, stamped with its term; `node/..` keys stay on this node.
    pub async fn put<T: serde::Serialize + ?Sized>(
        &self,
        key: &Key,
        value: &T,
    ) -> Result<u64, WriteError> {
        let term = self.write_term(key)?;
        Ok(self
            .inner
            .store
            .put_as(key, value, term, &self.inner.node)
            .await?)
    }

    /// Deletes `key` (a tombstone that replication spreads, then clears); returns whether it
    /// had a value. The same rules as [`Replicated::put`].
    pub async fn delete(&self, key: &Key) -> Result<bool, WriteError> {
        let term = self.write_term(key)?;
        Ok(self
            .inner
            .store
            .delete_as(key, term, &self.inner.node)
            .await?)
    }

    /// Whether the store has caught up with the peers, and its size.
    pub fn sync_status(&self) -> SyncStatus {
        self.inner.sync_status()
    }

    /// The term a write of `key` by this node carries, or why it may not write it.
    fn write_term(&self, key: &Key) -> Result<u64, WriteError> {
        match key.ns {
            Namespace::Node => Ok(0),
            _ => match rules::owner(key) {
                None => Err(WriteError::NoOwner { key: key.clone() }),
                Some(Owner::Node(owner)) if owner == &*self.inner.node => Ok(0),
                Some(Owner::Node(owner)) => Err(WriteError::NotOwner {
                    key: key.clone(),
                    owner: owner.to_owned(),
                }),
                Some(Owner::Leader) => {
                    let (leader, term) = self.inner.view.leader_and_term();
                    if leader
                        .as_ref()
                        .is_some_and(|l| l.as_str() == &*self.inner.node)
                    {
                        Ok(term)
                    } else {
                        Err(WriteError::NotLeader {
                            key: key.clone(),
                            leader: leader.map(|l| l.to_string()),
                        })
                    }
                }
            },
        }
    }
}

/// The task that moves records between the store and the state topics.
struct Replicator {
    client: BrokerClient,
    store: Store,
    topics: StateTopics,
    members: Vec<String>,
    tuning: Tuning,
    shared: Arc<Shared>,
    metrics: Metrics,
    /// Keys an anti-entropy pass published ahead of the change feed, with the version.
    republished: Mutex<HashMap<Key, u64>>,
}

impl Replicator {
    async fn run(
        self,
        mut subscription: roost_broker::Subscription,
        mut changes: broadcast::Receiver<Change>,
        mut synced: watch::Receiver<u64>,
        token: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.tuning.anti_entropy_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dropped = 0;
        let mut repair_at: Option<tokio::time::Instant> = None;
        loop {
            let repair = async {
                match repair_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Unbiased: a steady stream of this node's writes must not starve peers'
            // messages, link syncs or the timers.
            let outcome = tokio::select! {
                () = token.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(change) => {
                        self.publish_local(change).await;
                        while let Ok(change) = changes.try_recv() {
                            self.publish_local(change).await;
                        }
                        Ok(false)
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "state replication fell behind the store's changes; comparing everything");
                        self.set_behind();
                        Ok(true)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                message = subscription.recv() => {
                    let Some(message) = message else { return };
                    let mut batch = vec![message];
                    while batch.len() < APPLY_CHUNK {
                        match subscription.try_recv() {
                            Some(m) => batch.push(m),
                            None => break,
                        }
                    }
                    let rejected = self.receive(batch).await;
                    if subscription.dropped() != dropped {
                        dropped = subscription.dropped();
                        tracing::warn!(dropped, "state messages were dropped on a full buffer; comparing everything");
                        self.set_behind();
                        Ok(true)
                    } else {
                        rejected.map(|r| {
                            if r && repair_at.is_none() {
                                repair_at = Some(tokio::time::Instant::now() + REPAIR_DELAY);
                            }
                            false
                        })
                    }
                }
                changed = synced.changed() => {
                    if changed.is_err() {
                        // The mesh is gone: the node is stopping.
                        return;
                    }
                    Ok(true)
                }
                () = repair => {
                    repair_at = None;
                    Ok(true)
                }
                _ = tick.tick() => Ok(true),
            };
            let reconcile = match outcome {
                Ok(reconcile) => reconcile,
                Err(e) => {
                    tracing::error!(error = %e, "state replication failed a step; comparing everything");
                    true
                }
            };
            if reconcile {
                // This node's writes committed so far go out first, so the pass does not
                // republish a key ahead of its own queued changes.
                while let Ok(change) = changes.try_recv() {
                    self.publish_local(change).await;
                }
                let generation = *synced.borrow_and_update();
                if let Err(e) = self.reconcile(generation).await {
                    tracing::error!(error = %e, "anti-entropy pass failed; retrying at the next");
                }
            }
        }
    }

    fn set_behind(&self) {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .behind = true;
        // Refreshes `roost_state_in_sync`.
        self.shared.sync_status();
    }

    /// Publishes a write of this node.
    async fn publish_local(&self, change: Change) {
        if change.remote || !change.key.ns.is_replicated() {
            return;
        }
        {
            let mut republished = self.republished.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(&version) = republished.get(&change.key) {
                if change.record.version >= version {
                    republished.remove(&change.key);
                }
                if change.record.version <= version {
                    // An anti-entropy pass published this version or a later one already.
                    return;
                }
            }
        }
        self.publish(&change.key, &change.record).await;
    }

    /// Publishes `record` as the retained state of `key`.
    async fn publish(&self, key: &Key, record: &Record) {
        let topic = self.topics.topic(key);
        match record.to_bytes() {
            Ok(payload) => match self.client.publish_unsynced(&topic, payload, true).await {
                Ok(()) => self.metrics.published.inc(),
                Err(e) => tracing::warn!(%key, error = %e, "could not publish a state record"),
            },
            Err(e) => tracing::error!(%key, error = %e, "could not encode a state record"),
        }
    }

    /// Clears the retained message of `topic`.
    async fn clear(&self, topic: &str) {
        if let Err(e) = self.client.publish_unsynced(topic, Vec::new(), true).await {
            tracing::warn!(topic, error = %e, "could not clear a state topic");
        }
    }

    /// Whether this node keeps `key`'s topic right: the key's node, or the leader.
    fn responsible(&self, key: &Key) -> bool {
        match rules::owner(key) {
            Some(Owner::Node(node)) => node == &*self.shared.node,
            Some(Owner::Leader) => self.is_leader(),
            None => false,
        }
    }

    fn is_leader(&self) -> bool {
        self.shared
            .view
            .leader_and_term()
            .0
            .is_some_and(|l| l.as_str() == &*self.shared.node)
    }

    fn horizon_ms(&self) -> u64 {
        unix_ms().saturating_sub(
            u64::try_from(self.tuning.tombstone_ttl.as_millis()).unwrap_or(u64::MAX),
        )
    }

    /// Counts and logs one refused message.
    fn reject(&self, reason: Rejection, topic: &str, detail: &dyn std::fmt::Display) {
        self.metrics.reject(reason);
        tracing::warn!(topic, reason = reason.label(), %detail, "state message rejected");
    }

    /// Checks and applies live messages from the state topics; true if any was rejected.
    async fn receive(&self, batch: Vec<Message>) -> Result<bool, state::Error> {
        let mut rejected = false;
        let mut records = Vec::with_capacity(batch.len());
        for message in batch {
            let key = match self.topics.key(&message.topic) {
                Ok(key) => key,
                // A cleared topic that names no key is the end of garbage, not more of it.
                Err(_) if message.payload.is_empty() => continue,
                Err(reason) => {
                    self.reject(reason, &message.topic, &"not a replicated key");
                    rejected = true;
                    continue;
                }
            };
            if message.payload.is_empty() {
                // In order: what came before the clear is applied first.
                rejected |= self.apply_peers(std::mem::take(&mut records)).await?;
                self.follow_clear(&key).await?;
                continue;
            }
            let record = match Record::from_bytes(&message.payload) {
                Ok(record) => record,
                Err(e) => {
                    self.reject(Rejection::BadJson, &message.topic, &e);
                    rejected = true;
                    continue;
                }
            };
            if let Err(reason) = rules::check(&key, &record.origin, record.term, &self.members) {
                self.reject(
                    reason,
                    &message.topic,
                    &format_args!("origin {} term {}", record.origin, record.term),
                );
                rejected = true;
                continue;
            }
            // Echoes of this node's own writes; the anti-entropy pass checks them.
            if record.origin == *self.shared.node {
                continue;
            }
            records.push((key, record));
        }
        rejected |= self.apply_peers(records).await?;
        Ok(rejected)
    }

    /// Applies checked peers' records in one batch and counts what became of them; true if
    /// any was refused.
    async fn apply_peers(&self, records: Vec<(Key, Record)>) -> Result<bool, state::Error> {
        if records.is_empty() {
            return Ok(false);
        }
        let mut rejected = false;
        let now = unix_ms();
        let outcomes = self.store.apply(records.clone(), self.horizon_ms()).await?;
        for ((key, record), outcome) in records.iter().zip(outcomes) {
            match outcome {
                Outcome::Applied { conflict } => {
                    self.metrics.applied.inc();
                    self.metrics
                        .lag
                        .observe(now.saturating_sub(record.updated_ms) as f64 / 1000.0);
                    if conflict {
                        self.reject(
                            Rejection::Conflict,
                            &self.topics.topic(key),
                            &"two records of the same term and version; the tie-break kept this one",
                        );
                    }
                }
                Outcome::Stale { stored } => {
                    let topic = self.topics.topic(key);
                    // A message the retained set has moved past is old news (this node read
                    // a newer one in an anti-entropy pass); a stale record that is what the
                    // topic holds now was published over a newer one.
                    if !self.retained_is(&topic, record) {
                        continue;
                    }
                    let reason = Rejection::of_stale(record, &stored);
                    self.reject(
                        reason,
                        &topic,
                        &format_args!(
                            "term {} version {} against stored term {} version {}",
                            record.term, record.version, stored.term, stored.version
                        ),
                    );
                    rejected = true;
                }
                Outcome::Duplicate | Outcome::Expired => {}
            }
        }
        Ok(rejected)
    }

    /// Publishes what the store holds for `key` now, if anything. A record the rules refuse
    /// (one written before replication, without an origin) is not published: this node,
    /// which keeps the key, writes its value again under its own name, as the next version.
    async fn republish(&self, key: &Key) -> Result<(), state::Error> {
        let Some(record) = self.store.record(key).await? else {
            return Ok(());
        };
        if rules::check(key, &record.origin, record.term, &self.members).is_ok() {
            self.publish(key, &record).await;
            self.note_republished(key, record.version);
            return Ok(());
        }
        let (term, node) = (self.term_for(key), &self.shared.node);
        let rewritten = match &record.value {
            Some(value) => self.store.put_as(key, value, term, node).await.map(|_| ()),
            None => self.store.delete_as(key, term, node).await.map(|_| ()),
        };
        match rewritten {
            Ok(()) => {
                tracing::info!(%key, "rewrote a state record from before replication under this node's name")
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot rewrite a state record from before replication")
            }
        }
        Ok(())
    }

    /// The term this node writes `key` with: the current term for a leader's key, else 0.
    fn term_for(&self, key: &Key) -> u64 {
        match rules::owner(key) {
            Some(Owner::Leader) => self.shared.view.leader_and_term().1,
            _ => 0,
        }
    }

    /// Whether this node keeps `key`'s topic right given the record it holds: it is the key's
    /// responsible node, or the record is its own write (a leader's write stays its to
    /// publish after it lost the lease: the term order decides against newer ones).
    fn keeps(&self, key: &Key, header: &Header) -> bool {
        self.responsible(key) || header.origin == *self.shared.node
    }

    /// Remembers that `key` was published at `version` out of the change feed's order, so the
    /// feed's older changes of it still queued are not published after it.
    fn note_republished(&self, key: &Key, version: u64) {
        self.republished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), version);
    }

    /// Whether `topic`'s retained message is `record`.
    fn retained_is(&self, topic: &str, record: &Record) -> bool {
        self.client
            .retained(topic)
            .unwrap_or_default()
            .iter()
            .filter(|m| m.topic == topic)
            .filter_map(|m| Record::from_bytes(&m.payload).ok())
            .any(|r| r.order(record).is_eq())
    }

    /// A state topic's retained message was removed: the node that keeps the key puts it
    /// back, any other node removes its copy.
    async fn follow_clear(&self, key: &Key) -> Result<(), state::Error> {
        let Some(stored) = self.store.record(key).await? else {
            return Ok(());
        };
        if self.keeps(key, &stored.header()) {
            if !(stored.is_tombstone() && stored.updated_ms < self.horizon_ms()) {
                self.publish(key, &stored).await;
                self.metrics.repairs.inc();
            }
        } else {
            self.store.forget(key, stored.version).await?;
        }
        Ok(())
    }

    /// The anti-entropy pass: compares the store with the retained state topics, applies
    /// what the topics hold newer, republishes what this node is responsible for and the
    /// topics lack, forgets what the topics dropped, and clears expired tombstones.
    /// `generation` is the peer links' sync counter it covers.
    async fn reconcile(&self, generation: u64) -> Result<(), state::Error> {
        let started = Instant::now();
        let horizon = self.horizon_ms();
        let leader = self.is_leader();
        // The store first: everything in it that came from a peer was in the retained set
        // before it was applied, so a key missing from the set read after was removed.
        // Headers only: a pass over 100,000 keys must not build 100,000 values.
        let mut stored: HashMap<Key, Header> = HashMap::new();
        for ns in [Namespace::Cluster, Namespace::Devices] {
            stored.extend(self.store.headers(ns, "").await?);
        }
        let retained = self
            .client
            .retained(&self.topics.filter())
            .unwrap_or_default();
        let peers_synced = self
            .shared
            .links
            .as_ref()
            .is_some_and(|l| l.status().iter().any(|p| p.synced));
        let mut seen = HashSet::with_capacity(retained.len());
        let mut to_apply = Vec::new();
        let mut repairs = 0u64;
        for message in retained {
            let Ok(key) = self.topics.key(&message.topic) else {
                // Garbage on the state topics: the leader clears it.
                if leader {
                    self.clear(&message.topic).await;
                    repairs += 1;
                }
                continue;
            };
            // The topic names a key: whatever it holds, the key is not missing from it.
            seen.insert(key.clone());
            let mine = stored.get(&key);
            let header = Header::from_bytes(&message.payload)
                .ok()
                .filter(|h| rules::check(&key, &h.origin, h.term, &self.members).is_ok());
            let Some(header) = header else {
                // Garbage on a key's topic: whoever keeps the key puts its record back, or
                // clears the topic if it has none.
                match mine {
                    Some(mine) if self.keeps(&key, mine) => {
                        self.republish(&key).await?;
                        repairs += 1;
                    }
                    None if self.responsible(&key) => {
                        self.clear(&message.topic).await;
                        repairs += 1;
                    }
                    _ => {}
                }
                continue;
            };
            match mine.map(|m| (m.order(&header), m)) {
                Some((std::cmp::Ordering::Greater, mine)) => {
                    if self.keeps(&key, mine) {
                        self.republish(&key).await?;
                        repairs += 1;
                    }
                }
                Some((std::cmp::Ordering::Equal, _)) => {}
                Some((std::cmp::Ordering::Less, _)) | None => {
                    if let Ok(record) = Record::from_bytes(&message.payload) {
                        to_apply.push((key, record));
                    }
                }
            }
        }
        let mut applied = 0u64;
        for chunk in to_apply.chunks(APPLY_CHUNK) {
            let outcomes = self.store.apply(chunk.to_vec(), horizon).await?;
            applied += outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Applied { .. }))
                .count() as u64;
        }
        self.metrics.applied.inc_by(applied);
        let mut forgotten = 0u64;
        for (key, header) in &stored {
            let expired = header.deleted && header.updated_ms < horizon;
            if expired {
                // Done spreading: drop it here, and from the topics if this node keeps them.
                self.store.forget(key, header.version).await?;
                if seen.contains(key) && self.keeps(key, header) {
                    self.clear(&self.topics.topic(key)).await;
                    repairs += 1;
                }
                forgotten += 1;
            } else if !seen.contains(key) {
                if self.keeps(key, header) {
                    self.republish(key).await?;
                    repairs += 1;
                } else if peers_synced {
                    // Only with a peer's set in hand: a node alone may hold what its
                    // broker lost in a crash, and the peers will bring it back.
                    self.store.forget(key, header.version).await?;
                    forgotten += 1;
                }
            }
        }
        self.metrics.repairs.inc_by(repairs);
        self.metrics.reconciles.inc();
        {
            let mut progress = self
                .shared
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            progress.reconciled = generation;
            progress.caught_up_once |= peers_synced;
            progress.last = Some(Instant::now());
            progress.behind = false;
        }
        self.shared.sync_status();
        tracing::debug!(
            keys = stored.len(),
            applied,
            repairs,
            forgotten,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "anti-entropy pass"
        );
        Ok(())
    }
}
