//! Roost's embedded MQTT broker.
//!
//! rumqttd's router does topic matching, fan-out and QoS; Roost owns the network edge in
//! front of it. Layout:
//! - `edge`: the public listener (one port, MQTT 3.1.1 and 5), limits, metrics, watching
//!   every packet that enters;
//! - `translate`: MQTT 3.1.1 clients spoken to rumqttd as MQTT 5, and back;
//! - `embed`: rumqttd's router, its internal MQTT 5 server, and in-process links;
//! - `client`: [`BrokerClient`], how the rest of the node publishes and subscribes;
//! - `frame`: MQTT framing as the edge needs it;
//! - `retained`, `topic`: the retained set Roost keeps (rumqttd keeps none), durable in redb
//!   and delivered by the edge on every subscribe;
//! - `metrics`, `settings`, `error`.
//!
//! docs/broker.md explains the design and which rumqttd defect each part answers.

mod client;
mod edge;
mod embed;
mod error;
mod frame;
mod metrics;
mod retained;
mod settings;
mod topic;
mod translate;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::{validate_filter, validate_topic, BrokerClient, Message, Subscription};
pub use error::{Error, Result};
pub use metrics::BrokerMetrics;
pub use settings::BrokerSettings;

use crate::retained::Retained;

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
}

impl Broker {
    /// Binds the public listener, starts rumqttd behind it and begins accepting clients.
    ///
    /// Called once per process. The accept loop and every connection run on `tracker` and
    /// stop when `token` is cancelled; rumqttd's own threads end with the process.
    pub async fn start(
        settings: BrokerSettings,
        registry: &prometheus::Registry,
        token: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Broker> {
        let metrics = BrokerMetrics::register(registry)?;
        let (retained, loaded) = Retained::open(
            &settings.data_dir,
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
        let embedded = embed::start(&settings).await?;
        tracing::debug!(internal = %embedded.v5, "rumqttd's internal server is up");
        tracing::info!(retained = loaded, "retained messages restored");
        let client = BrokerClient::start(
            embedded.links.clone(),
            metrics.clone(),
            retained.clone(),
            token.clone(),
            tracker.clone(),
        )
        .await?;
        let edge = Arc::new(edge::Edge {
            settings,
            upstream: embedded.v5,
            metrics: metrics.clone(),
            retained: retained.clone(),
            client: client.clone(),
            sessions: Arc::default(),
            tracker: tracker.clone(),
        });
        tracker.spawn(edge::run(edge, listener, token, tracker.clone()));
        Ok(Broker {
            local_addr,
            client,
            metrics,
            retained,
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

    /// The broker's metrics (shared handles).
    pub fn metrics(&self) -> BrokerMetrics {
        self.metrics.clone()
    }
}
