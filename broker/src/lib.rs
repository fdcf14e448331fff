//! Roost's embedded MQTT broker.
//!
//! Roost owns the network edge and the MQTT sessions; every message passes through rumqttd's
//! router, in order, and a dispatcher hands it to the sessions it matches. Layout:
//! - `edge`: the public listener (one port, MQTT 3.1.1 and 5), limits, and one task per
//!   connection that runs the client's session;
//! - `session`: what outlives a connection (subscriptions, queue, QoS 1/2 state, will,
//!   expiry) and the flow control that holds publishers back;
//! - `codec`, `frame`: MQTT packets, decoded and encoded;
//! - `intake`, `envelope`: where every message enters as a typed `Publication`, and the
//!   envelope that carries it through the router;
//! - `ingress`, `embed`: rumqttd's router, and the thread that feeds it;
//! - `fanout`: the dispatcher that reads the router back and offers each message to the
//!   sessions and in-process subscriptions;
//! - `mesh`: the links to the cluster's other nodes (Roost's peer protocol), which carry
//!   the messages that entered here and the retained set;
//! - `client`: [`BrokerClient`], how the rest of the node publishes and subscribes;
//! - `retained`, `topic`: the retained set Roost keeps (rumqttd keeps none), durable in redb;
//! - `auth`: the authorization hook;
//! - `metrics`, `settings`, `error`.
//!
//! docs/broker.md explains the design and which rumqttd defect each part answers.

mod auth;
mod backoff;
mod client;
mod codec;
mod edge;
mod embed;
mod envelope;
mod error;
mod fanout;
mod frame;
mod ingress;
mod intake;
mod mesh;
mod metrics;
mod retained;
mod session;
mod settings;
mod topic;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{AllowAll, Authorizer, ClientInfo};
pub use backoff::Backoff;
pub use client::{validate_filter, validate_topic, BrokerClient, Message, Subscription};
pub use error::{Error, Result};
pub use mesh::{MeshPeer, MeshSettings, PeerStatus};
pub use metrics::BrokerMetrics;
pub use settings::BrokerSettings;

use crate::fanout::Subscribers;
use crate::ingress::Ingress;
use crate::intake::Intake;
use crate::mesh::Mesh;
use crate::retained::Retained;
use crate::session::{Flow, Limits, Registry};

/// QoS 1/2 deliveries in flight per connection (lowered by a client's Receive Maximum), and
/// the Receive Maximum the edge announces to MQTT 5 clients.
const MAX_INFLIGHT: u16 = 100;

/// The links to the cluster's other members, for `/health` and the dashboard; cheap to clone.
#[derive(Clone)]
pub struct PeerLinks(Arc<Mesh>);

impl PeerLinks {
    /// Every peer's link state and traffic, as they are now.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.0.status()
    }

    /// A counter of inbound links that delivered their peer's whole retained set; it changes
    /// each time one more does ([`PeerStatus::synced`] says which links are synced now).
    pub fn synced_links(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.synced_links()
    }
}

/// A running broker: its listener address, its in-process client and its metrics.
pub struct Broker {
    /// The address the public listener is bound to (the real port when 0 was asked for).
    local_addr: SocketAddr,
    /// The node's in-process client.
    client: BrokerClient,
    /// The broker's counters, for the dashboard.
    metrics: BrokerMetrics,
    /// The durable retained set.
    retained: Retained,
    /// The links to the other members.
    mesh: Arc<Mesh>,
}

impl Broker {
    /// Binds the public listener, starts rumqttd behind it and begins accepting clients, with
    /// every client allowed everything ([`AllowAll`]).
    ///
    /// Called once per process. The accept loop and every connection run on `tracker` and
    /// stop when `token` is cancelled; rumqttd's own threads end with the process.
    pub async fn start(
        settings: BrokerSettings,
        registry: &prometheus::Registry,
        token: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Broker> {
        Self::start_with(settings, Arc::new(AllowAll), registry, token, tracker).await
    }

    /// [`Broker::start`] with an authorization hook that decides every publish and
    /// subscription of network clients.
    pub async fn start_with(
        settings: BrokerSettings,
        authorizer: Arc<dyn Authorizer>,
        registry: &prometheus::Registry,
        token: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Broker> {
        let metrics = BrokerMetrics::register(registry)?;
        let (retained, loaded) = Retained::open(
            &settings.data_dir,
            &settings.node,
            metrics.retained.clone(),
            metrics.retained_bytes.clone(),
            metrics.retained_persist_errors.clone(),
        )?;
        // Bind first: a taken port is the most likely startup error and the cheapest to find.
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: settings.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: settings.listen,
            source,
        })?;
        let (ingress, reader) = Ingress::start(embed::start())?;
        tracing::info!(retained = loaded, "retained messages restored");
        let intake = Arc::new(Intake::new(ingress, retained.clone()));
        let mesh = Arc::new(Mesh::new(
            &settings.node,
            &settings.mesh,
            intake.clone(),
            settings.max_packet_size,
            registry,
            token.clone(),
        )?);
        let subscribers = Arc::new(Subscribers::default());
        let client = BrokerClient::new(
            intake.clone(),
            subscribers.clone(),
            metrics.clone(),
            token.clone(),
        );
        let limits = Limits {
            max_queued: settings.max_queued_messages,
            max_inflight: MAX_INFLIGHT,
        };
        let edge = Arc::new(edge::Edge {
            settings,
            metrics: metrics.clone(),
            intake,
            sessions: Registry::default(),
            subscribers,
            flow: Flow::new(),
            limits,
            authorizer,
            mesh: mesh.clone(),
            tracker: tracker.clone(),
            shutdown: token.clone(),
        });
        tracker.spawn(retained.clone().purge_until(token.clone()));
        tracker.spawn(fanout::dispatch(edge.clone(), reader));
        tracker.spawn(edge::run(edge, listener, token, tracker.clone()));
        mesh.start(tracker);
        Ok(Broker {
            local_addr,
            client,
            metrics,
            retained,
            mesh,
        })
    }

    /// Where MQTT clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to the node's in-process client.
    pub fn client(&self) -> BrokerClient {
        self.client.clone()
    }

    /// Releases the durable retained set once every write queued so far is on disk. Called at
    /// shutdown, after the edge and the node's tasks stopped.
    pub async fn close(&self) {
        self.retained.close().await;
    }

    /// A handle on the links to the other members.
    pub fn peer_links(&self) -> PeerLinks {
        PeerLinks(self.mesh.clone())
    }

    /// The broker's metrics (shared handles).
    pub fn metrics(&self) -> BrokerMetrics {
        self.metrics.clone()
    }
}
