//! The dashboard's JSON API: `GET /api/node` (a snapshot of this node) and `GET /api/live`
//! (the same snapshot every second over Server-Sent Events, ending at shutdown); the state
//! endpoints under `/api/state` are in `state_api.rs`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Serialize;

use super::AppState;
use crate::cluster::ClusterHealth;

/// How often `/api/live` sends a snapshot.
const LIVE_INTERVAL: Duration = Duration::from_secs(1);

/// A snapshot of the node for the dashboard. Counters are totals; the page derives rates.
#[derive(Serialize)]
pub struct NodeSnapshot {
    node: String,
    cluster: String,
    version: &'static str,
    uptime_seconds: u64,
    /// Milliseconds since start when the snapshot was taken, so the page can derive rates.
    uptime_ms: u64,
    health: ClusterHealth,
    mqtt: MqttSnapshot,
    state: StateSnapshot,
}

#[derive(Serialize)]
struct MqttSnapshot {
    listen: String,
    connections: i64,
    messages_received: u64,
    messages_sent: u64,
    bytes_received: u64,
    bytes_sent: u64,
    retained: i64,
}

#[derive(Serialize)]
struct StateSnapshot {
    keys: u64,
    tombstones: u64,
    in_sync: bool,
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/node", get(node))
        .route("/api/live", get(live))
        .merge(super::state_api::router())
        .merge(super::sim_api::router())
}

fn snapshot(state: &AppState) -> NodeSnapshot {
    let b = &state.broker;
    // Both counters are labelled by source (or destination) and QoS.
    let sum = |v: &prometheus::IntCounterVec| {
        ["network", "local"]
            .iter()
            .flat_map(|place| ["0", "1", "2"].map(|qos| v.with_label_values(&[place, qos]).get()))
            .sum::<u64>()
    };
    NodeSnapshot {
        node: state.node.clone(),
        cluster: state.cluster.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.uptime_seconds(),
        uptime_ms: u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        health: state.view.health(),
        mqtt: MqttSnapshot {
            listen: state.mqtt_addr.to_string(),
            connections: b.connections.get(),
            messages_received: sum(&b.messages_received),
            messages_sent: sum(&b.messages_sent),
            bytes_received: b.bytes_received.get(),
            bytes_sent: b.bytes_sent.get(),
            retained: b.retained.get(),
        },
        state: {
            let sync = state.replicated.sync_status();
            StateSnapshot {
                keys: sync.keys,
                tombstones: sync.tombstones,
                in_sync: sync.in_sync,
            }
        },
    }
}

async fn node(State(state): State<AppState>) -> Json<NodeSnapshot> {
    Json(snapshot(&state))
}

async fn live(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let shutdown = state.shutdown.clone();
    let ticks = stream::unfold((state, true), |(state, first)| async move {
        if !first {
            tokio::select! {
                () = state.shutdown.cancelled() => return None,
                () = tokio::time::sleep(LIVE_INTERVAL) => {}
            }
        }
        let event = Event::default()
            .event("node")
            .json_data(snapshot(&state))
            .unwrap_or_else(|_| Event::default().comment("snapshot unavailable"));
        Some((Ok(event), (state, false)))
    });
    let ticks = futures_util::StreamExt::take_until(ticks, shutdown.cancelled_owned());
    Sse::new(ticks).keep_alive(KeepAlive::default())
}
