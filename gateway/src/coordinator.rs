//! This node's part in the cluster: it sends heartbeats and hears the others' over the mesh,
//! runs the lease (`lease.rs`) with its term and vote on disk, keeps the cluster view
//! current, and speaks for the cluster while it leads (`leader_elected`, and `node_down` and
//! the `offline` status of a member that died without saying so: the cluster's last will).
//! It also keeps this node's own status true: a node that finds itself reported `offline`
//! while it runs (after a partition) says `online` again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use roost_broker::{BrokerClient, Subscription};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::cluster::{ClusterView, Event, MemberUpdate};
use crate::config::NodeId;
use crate::lease::{Action, Heartbeat, Lease, Message, Role, Timing};
use crate::state::{Key, Namespace, Store};
use crate::topics::Topics;
use crate::witness::{WitnessEvent, WitnessEvents, WitnessLink};

/// How often the lease's timers are checked.
const TICK: Duration = Duration::from_millis(25);

/// What went wrong starting the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The term or vote could not be read or written.
    #[error("lease state: {0}")]
    State(#[from] crate::state::Error),
    /// The broker refused a subscription or a publish.
    #[error("cluster messages: {0}")]
    Broker(#[from] roost_broker::Error),
    /// Registering the metrics failed.
    #[error("cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The coordinator's metrics.
struct Metrics {
    /// `roost_cluster_term`.
    term: IntGauge,
    /// `roost_cluster_is_leader`.
    is_leader: IntGauge,
    /// `roost_cluster_members_up`, this node included.
    members_up: IntGauge,
    /// `roost_cluster_elections_won_total`.
    elections_won: IntCounter,
    /// `roost_cluster_step_downs_total`.
    step_downs: IntCounter,
    /// `roost_cluster_bad_messages_total{kind}`.
    bad_messages: IntCounterVec,
    /// `roost_cluster_duplicate_node_total`.
    duplicate_node: IntCounter,
    /// `roost_cluster_witness_up`.
    witness_up: IntGauge,
    /// `roost_cluster_witness_claims_total{result}`.
    witness_claims: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            term: IntGauge::new("roost_cluster_term", "The lease term this node is in")?,
            is_leader: IntGauge::new(
                "roost_cluster_is_leader",
                "1 while this node holds the lease",
            )?,
            members_up: IntGauge::new(
                "roost_cluster_members_up",
                "Members heard within the down-after time, this node included",
            )?,
            elections_won: IntCounter::new(
                "roost_cluster_elections_won_total",
                "Elections this node won",
            )?,
            step_downs: IntCounter::new(
                "roost_cluster_step_downs_total",
                "Times this node gave up the lease: no majority acknowledged it, or a higher term",
            )?,
            bad_messages: IntCounterVec::new(
                Opts::new(
                    "roost_cluster_bad_messages_total",
                    "Heartbeats and lease messages that did not parse, by kind",
                ),
                &["kind"],
            )?,
            duplicate_node: IntCounter::new(
                "roost_cluster_duplicate_node_total",
                "Heartbeats from another process with this node's id",
            )?,
            witness_up: IntGauge::new(
                "roost_cluster_witness_up",
                "1 while the connection to the witness broker is up and subscribed",
            )?,
            witness_claims: IntCounterVec::new(
                Opts::new(
                    "roost_cluster_witness_claims_total",
                    "Claims of the witness's vote this node made, by result (won, lost)",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.term.clone()))?;
        registry.register(Box::new(m.is_leader.clone()))?;
        registry.register(Box::new(m.members_up.clone()))?;
        registry.register(Box::new(m.elections_won.clone()))?;
        registry.register(Box::new(m.step_downs.clone()))?;
        registry.register(Box::new(m.bad_messages.clone()))?;
        registry.register(Box::new(m.duplicate_node.clone()))?;
        registry.register(Box::new(m.witness_up.clone()))?;
        registry.register(Box::new(m.witness_claims.clone()))?;
        Ok(m)
    }
}

/// What the coordinator needs.
pub struct Setup {
    /// The node's in-process MQTT client.
    pub client: BrokerClient,
    /// Where the term and vote are kept.
    pub store: Store,
    /// The cluster's topics.
    pub topics: Topics,
    /// The view to keep current.
    pub view: ClusterView,
    /// This node.
    pub node: NodeId,
    /// The other members.
    pub peers: Vec<NodeId>,
    /// Heartbeat interval and down-after time.
    pub timing: Timing,
    /// When the node started (for the uptime heartbeats carry).
    pub started: Instant,
    /// The link to the witness broker and its events, when one is configured.
    pub witness: Option<(WitnessLink, WitnessEvents)>,
}

/// A handle on the running coordinator.
pub struct Coordinator {
    stop: mpsc::Sender<oneshot::Sender<()>>,
}

impl Coordinator {
    /// Starts the coordinator on `tracker`. A node alone in its cluster is its leader before
    /// this returns.
    pub async fn start(
        setup: Setup,
        registry: &Registry,
        tracker: &TaskTracker,
    ) -> Result<Coordinator, CoordinatorError> {
        let metrics = Metrics::register(registry)?;
        let term_key = Key::new(Namespace::Node, "lease/term")?;
        let vote_key = Key::new(Namespace::Node, "lease/vote")?;
        let term = setup
            .store
            .get::<u64>(&term_key)
            .await?
            .map_or(0, |e| e.value);
        let voted_for = setup
            .store
            .get::<Option<String>>(&vote_key)
            .await?
            .and_then(|e| e.value);
        let mut rng = Rng::new();
        let now = Instant::now();
        let mut setup = setup;
        let (witness, witness_events) = setup.witness.take().unzip();
        let lease = Lease::new(
            setup.node.as_str(),
            setup.peers.iter().map(ToString::to_string),
            setup.timing,
            term,
            voted_for,
            now,
            rng.next(),
        );
        let lease = if witness.is_some() {
            lease.with_witness()
        } else {
            lease
        };
        let subscriptions = Subscriptions {
            heartbeats: setup.client.subscribe(&setup.topics.heartbeats()).await?,
            lease: setup.client.subscribe(&setup.topics.lease()).await?,
            statuses: setup
                .client
                .subscribe(&setup.topics.node_statuses())
                .await?,
            witness: witness_events,
        };
        let mut task = Task {
            incarnation: rng.next_u64(),
            lease,
            rng,
            metrics,
            term_key,
            vote_key,
            statuses: BTreeMap::new(),
            up: BTreeMap::new(),
            stopping: false,
            witness,
            setup,
        };
        metrics_term(&task);
        // A cluster of one elects itself now; others start listening.
        let actions = task.lease.on_tick(now, 0.0);
        task.apply(actions).await;
        task.refresh();
        let (stop, stopped) = mpsc::channel(1);
        tracker.spawn(task.run(subscriptions, stopped));
        Ok(Coordinator { stop })
    }

    /// Stops the coordinator; a leader hands the lease over first. Resolves once done.
    pub async fn stop(&self) {
        let (done, wait) = oneshot::channel();
        if self.stop.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn metrics_term(task: &Task) {
    task.metrics
        .term
        .set(i64::try_from(task.lease.term()).unwrap_or(i64::MAX));
}

/// The coordinator's subscriptions.
struct Subscriptions {
    heartbeats: Subscription,
    lease: Subscription,
    statuses: Subscription,
    /// The witness's events, when one is configured.
    witness: Option<WitnessEvents>,
}

/// The running coordinator.
struct Task {
    setup: Setup,
    lease: Lease,
    incarnation: u64,
    rng: Rng,
    metrics: Metrics,
    term_key: Key,
    vote_key: Key,
    /// Each member's retained status, as last seen.
    statuses: BTreeMap<String, String>,
    /// Whether each peer was up at the last check.
    up: BTreeMap<String, bool>,
    /// Set once the node stops: its own `offline` is expected then.
    stopping: bool,
    /// The link to the witness broker, when one is configured.
    witness: Option<WitnessLink>,
}

impl Task {
    async fn run(mut self, mut subs: Subscriptions, mut stop: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(self.setup.timing.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                done = stop.recv() => {
                    self.stopping = true;
                    self.resign().await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                _ = tick.tick() => {
                    let jitter = self.rng.next();
                    let actions = self.lease.on_tick(Instant::now(), jitter);
                    self.apply(actions).await;
                    self.check_members().await;
                }
                _ = beat.tick() => self.send_heartbeat().await,
                Some(m) = subs.heartbeats.recv() => {
                    match serde_json::from_slice::<Heartbeat>(&m.payload) {
                        Ok(hb) => self.on_heartbeat(hb).await,
                        Err(e) => self.bad("heartbeat", &m.topic, &e),
                    }
                }
                Some(m) = subs.lease.recv() => {
                    match serde_json::from_slice::<Message>(&m.payload) {
                        Ok(message) => {
                            let jitter = self.rng.next();
                            let actions = self.lease.on_message(message, Instant::now(), jitter);
                            self.apply(actions).await;
                        }
                        Err(e) => self.bad("lease", &m.topic, &e),
                    }
                }
                Some(m) = subs.statuses.recv() => self.on_status(&m.topic, &m.payload).await,
                Some(event) = WitnessEvents::next(&mut subs.witness) => self.on_witness(event).await,
                else => return,
            }
            self.refresh();
        }
    }

    fn bad(&self, kind: &'static str, topic: &str, e: &serde_json::Error) {
        tracing::warn!(topic, error = %e, "ignoring a cluster message that does not parse");
        self.metrics.bad_messages.with_label_values(&[kind]).inc();
    }

    async fn on_heartbeat(&mut self, hb: Heartbeat) {
        if hb.node == self.setup.node.as_str() {
            if hb.incarnation != self.incarnation {
                tracing::error!(
                    node = %hb.node,
                    "another process is running with this node's id: node ids must be unique in a cluster"
                );
                self.metrics.duplicate_node.inc();
            }
            return;
        }
        let jitter = self.rng.next();
        let actions = self.lease.on_heartbeat(hb, Instant::now(), jitter);
        self.apply(actions).await;
    }

    async fn on_witness(&mut self, event: WitnessEvent) {
        let now = Instant::now();
        let witness = self
            .witness
            .as_ref()
            .map(WitnessLink::addr)
            .unwrap_or_default();
        match event {
            WitnessEvent::Up => {
                tracing::info!(witness, "witness connected");
                self.lease.witness_up(now);
            }
            WitnessEvent::Down(error) => {
                tracing::warn!(witness, %error, "witness connection lost; retrying with backoff");
                self.lease.witness_down();
            }
            WitnessEvent::Heartbeat(hb) => {
                if hb.node == self.setup.node.as_str() && hb.incarnation == self.incarnation {
                    self.lease.on_witness_echo(&hb, now);
                } else {
                    self.on_heartbeat(hb).await;
                }
            }
            WitnessEvent::Claim { node, term } => {
                let jitter = self.rng.next();
                let actions = self.lease.on_witness_claim(&node, term, now, jitter);
                self.apply(actions).await;
            }
            WitnessEvent::Decided {
                term,
                won,
                highest_other,
                reclaim,
            } => {
                let result = if won { "won" } else { "lost" };
                if reclaim {
                    // The claim restored on a new connection: not a new claim.
                    tracing::debug!(term, result, "restored claim of the witness's vote decided");
                } else {
                    tracing::info!(term, result, "claim of the witness's vote decided");
                    self.metrics
                        .witness_claims
                        .with_label_values(&[result])
                        .inc();
                }
                let actions = self.lease.on_witness_vote(term, won, highest_other, now);
                self.apply(actions).await;
            }
            WitnessEvent::Bad { topic, error } => {
                tracing::warn!(witness, topic, %error, "ignoring a witness message that does not parse");
                self.metrics
                    .bad_messages
                    .with_label_values(&["witness"])
                    .inc();
            }
        }
    }

    async fn on_status(&mut self, topic: &str, payload: &[u8]) {
        let Some(node) = topic
            .strip_suffix("/status")
            .and_then(|t| t.rsplit('/').next())
        else {
            return;
        };
        let status = String::from_utf8_lossy(payload).into_owned();
        let own = node == self.setup.node.as_str();
        // Its own `offline` from before this start is not news: the start-up announcement
        // replaces it. Only an `offline` after this run's `online` is answered.
        let announced = own && self.statuses.get(node).map(String::as_str) == Some("online");
        if own && announced && status == "offline" && !self.stopping {
            // Reported dead while alive (a partition that healed): say otherwise.
            tracing::info!("this node was reported offline while running; announcing online again");
            let term = self.lease.term();
            self.publish(
                &self.setup.topics.node_status(&self.setup.node),
                "online".into(),
                true,
            )
            .await;
            self.event("node_up", self.setup.node.as_str(), term).await;
        }
        self.statuses.insert(node.to_owned(), status);
    }

    /// Carries out the lease's actions, in order.
    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Persist { term, voted_for } => {
                    // The vote must be durable before it is sent: a node that restarts must
                    // not vote twice in one term.
                    let persisted = async {
                        self.setup.store.put(&self.term_key, &term).await?;
                        self.setup.store.put(&self.vote_key, &voted_for).await
                    };
                    if let Err(e) = persisted.await {
                        tracing::error!(error = %e, "could not keep the lease term on disk");
                    }
                    metrics_term(self);
                }
                Action::Send(message) => {
                    let payload = serde_json::to_vec(&message).unwrap_or_default();
                    self.publish(&self.setup.topics.lease(), payload, false)
                        .await;
                }
                Action::Elected(term) => {
                    tracing::info!(term, "elected leader");
                    self.metrics.elections_won.inc();
                    self.refresh();
                    self.send_heartbeat().await;
                    let node = self.setup.node.to_string();
                    self.event("leader_elected", &node, term).await;
                    let record = serde_json::json!({
                        "leader": node,
                        "term": term,
                        "since": crate::cluster::rfc3339(std::time::SystemTime::now()),
                    });
                    self.publish(
                        &self.setup.topics.leader(),
                        record.to_string().into_bytes(),
                        true,
                    )
                    .await;
                    // Members that died while no one led get their last will now.
                    let now = Instant::now();
                    let dead: Vec<String> = self
                        .up
                        .keys()
                        .filter(|m| !self.lease.is_up(m, now))
                        .cloned()
                        .collect();
                    for member in dead {
                        self.announce_down(&member).await;
                    }
                }
                Action::ClaimWitness(term) => {
                    if let Some(witness) = &self.witness {
                        witness.claim(term);
                    }
                }
                Action::SteppedDown(term) => {
                    tracing::warn!(
                        term,
                        "stepped down: no majority acknowledges this node, or a newer term exists"
                    );
                    self.metrics.step_downs.inc();
                }
            }
        }
    }

    /// Notes members that came up or went down; the leader announces the dead.
    async fn check_members(&mut self) {
        let now = Instant::now();
        let peers: Vec<String> = self.setup.peers.iter().map(ToString::to_string).collect();
        let mut went_down = Vec::new();
        for peer in peers {
            let up = self.lease.is_up(&peer, now);
            let before = self.up.insert(peer.clone(), up);
            if before != Some(up) {
                match (before, up) {
                    (_, true) => tracing::info!(member = %peer, "member up"),
                    (Some(true), false) => {
                        tracing::warn!(member = %peer, "member down: heartbeats missed");
                        went_down.push(peer);
                    }
                    (_, false) => {}
                }
            }
        }
        if self.lease.role() == Role::Leader {
            for member in went_down {
                self.announce_down(&member).await;
            }
        }
    }

    /// The cluster's last will for a member that died: `node_down` and its status
    /// `offline`, unless its status already says so.
    async fn announce_down(&mut self, member: &str) {
        if self.statuses.get(member).map(String::as_str) != Some("online") {
            return;
        }
        let Ok(id) = NodeId::parse(member) else {
            return;
        };
        self.statuses.insert(member.to_owned(), "offline".into());
        let term = self.lease.term();
        self.event("node_down", member, term).await;
        self.publish(&self.setup.topics.node_status(&id), "offline".into(), true)
            .await;
    }

    /// A leader that stops hands the lease over.
    async fn resign(&mut self) {
        if let Some(message) = self.lease.resign(Instant::now()) {
            tracing::info!(term = self.lease.term(), "handing the lease over");
            let payload = serde_json::to_vec(&message).unwrap_or_default();
            self.publish(&self.setup.topics.lease(), payload, false)
                .await;
        }
        self.refresh();
    }

    async fn send_heartbeat(&self) {
        let mut hb = self.lease.heartbeat(self.incarnation, Instant::now());
        hb.uptime_seconds = self.setup.started.elapsed().as_secs();
        hb.version = env!("CARGO_PKG_VERSION").to_owned();
        let payload = serde_json::to_vec(&hb).unwrap_or_default();
        if let Some(witness) = self
            .witness
            .as_ref()
            .filter(|_| self.lease.witness_connected())
        {
            witness.heartbeat(payload.clone());
        }
        self.publish(
            &self.setup.topics.heartbeat(&self.setup.node),
            payload,
            false,
        )
        .await;
    }

    async fn event(&self, event: &str, node: &str, term: u64) {
        let payload = serde_json::to_vec(&Event::now(event, node, term)).unwrap_or_default();
        self.publish(&self.setup.topics.events(), payload, false)
            .await;
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        if let Err(e) = self.setup.client.publish(topic, payload, retain).await {
            tracing::debug!(topic, error = %e, "cluster message not published");
        }
    }

    /// Brings the view and the gauges up to date.
    fn refresh(&self) {
        if self.witness.is_some() {
            let connected = self.lease.witness_connected();
            self.metrics.witness_up.set(i64::from(connected));
            self.setup.view.set_witness_connected(connected);
        }
        let now = Instant::now();
        let leader = self.lease.leader(now).and_then(|l| NodeId::parse(l).ok());
        self.metrics
            .is_leader
            .set(i64::from(self.lease.role() == Role::Leader));
        self.setup.view.set_leader(leader, self.lease.term());
        let mut up = 1;
        for peer in &self.setup.peers {
            let seen = self.lease.seen(peer.as_str());
            let online = self.lease.is_up(peer.as_str(), now);
            up += i64::from(online);
            self.setup.view.update_member(
                peer.as_str(),
                MemberUpdate {
                    online,
                    last_heartbeat_ms: seen.map(|s| {
                        u64::try_from(now.duration_since(s.at).as_millis()).unwrap_or(u64::MAX)
                    }),
                    term: seen.map(|s| s.heartbeat.term),
                    uptime_seconds: seen.map(|s| s.heartbeat.uptime_seconds),
                    version: seen.map(|s| s.heartbeat.version.clone()),
                },
            );
        }
        self.metrics.members_up.set(up);
    }
}

/// A small xorshift generator for election jitter and the incarnation (not for secrets).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Rng(h.finish() | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in [0, 1).
    fn next(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
