//! The node's HTTP server (axum): `/health`, `/metrics`, the dashboard at `/` and its JSON
//! API under `/api/`. Handlers read shared state; the only writes are the state API's
//! (`state_api.rs`), which go through replication's ownership rules.
//!
//! `router()` builds the whole app from an [`AppState`], so tests can drive it with
//! `tower::ServiceExt::oneshot` and the binary can serve it on a socket.

mod api;
mod dashboard;
mod health;
mod metrics;
mod sim_api;
mod state_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use roost_broker::BrokerMetrics;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterView;
use crate::devices::Devices;
use crate::replication::Replicated;
use crate::state::Store;
use crate::telemetry::Telemetry;

/// What every handler can read; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The parts of the node the HTTP server shows.
pub struct Inner {
    /// This node's id.
    pub node: String,
    /// The cluster's name.
    pub cluster: String,
    /// When the node started, for uptime.
    pub started: Instant,
    /// Membership, leader, term.
    pub view: ClusterView,
    /// The broker's counters, read for the dashboard.
    pub broker: BrokerMetrics,
    /// The MQTT listener, shown on the dashboard.
    pub mqtt_addr: SocketAddr,
    /// The state store, for its key count.
    pub store: Store,
    /// Replicated state: writes from the API, and whether the store is in sync.
    pub replicated: Replicated,
    /// The node's devices: their counts, and the simulation hook.
    pub devices: Devices,
    /// The Prometheus registry `/metrics` renders.
    pub telemetry: Telemetry,
    /// Cancelled at shutdown, so live streams end and the server can stop.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// Wraps the node's parts for the handlers.
    pub fn new(inner: Inner) -> Self {
        AppState {
            inner: Arc::new(inner),
        }
    }

    /// Seconds since the node started.
    pub fn uptime_seconds(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The whole HTTP app.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .merge(api::router())
        .merge(dashboard::router())
        .with_state(state)
}
