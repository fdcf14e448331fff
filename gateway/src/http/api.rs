//! The dashboard's JSON API: `GET /api/node` (a snapshot of this node), `GET /api/live`
//! (the same snapshot every second over Server-Sent Events, ending at shutdown) and
//! `GET /api/state` (the state store's keys, for the dashboard and debugging).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::cluster::ClusterHealth;
use crate::state::{Namespace, MAX_PATH_LEN};

/// How often `/api/live` sends a snapshot.
const LIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Entries `/api/state` returns when the request names no `limit`, and the most it returns.
const STATE_LIMIT_DEFAULT: usize = 1_000;
const STATE_LIMIT_MAX: usize = 10_000;

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
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/node", get(node))
        .route("/api/live", get(live))
        .route("/api/state", get(state_view))
}

/// `/api/state`'s query: all optional.
#[derive(Deserialize)]
struct StateQuery {
    /// One namespace (`cluster`, `devices`, `node`); all when absent.
    ns: Option<String>,
    /// Only keys whose path starts with this.
    prefix: Option<String>,
    /// At most this many entries (1 to `STATE_LIMIT_MAX`).
    limit: Option<String>,
}

/// One key of the store as `/api/state` shows it.
#[derive(Serialize)]
struct StateEntry {
    /// `ns/path`.
    key: String,
    namespace: &'static str,
    path: String,
    version: u64,
    updated_ms: u64,
    value: serde_json::Value,
}

/// `/api/state`'s answer.
#[derive(Serialize)]
struct StateView {
    node: String,
    /// Keys in the whole store.
    keys: u64,
    /// The entries asked for, in key order.
    entries: Vec<StateEntry>,
    /// Whether more entries matched than `limit`.
    truncated: bool,
}

/// An error answer: its status and `{"error": "..."}`.
type Refusal = (StatusCode, Json<serde_json::Value>);

/// A refused request: 400, a JSON error, a log line and `roost_http_bad_requests_total`.
fn bad_request(state: &AppState, endpoint: &str, error: String) -> Refusal {
    tracing::warn!(endpoint, %error, "refusing a bad HTTP request");
    state.telemetry.bad_request(endpoint);
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": error })),
    )
}

/// The node's state store as JSON: every key, or one namespace and path prefix of it.
async fn state_view(
    State(state): State<AppState>,
    Query(query): Query<StateQuery>,
) -> Result<Json<StateView>, Refusal> {
    const ENDPOINT: &str = "/api/state";
    let namespaces = match query.ns.as_deref() {
        None => Namespace::ALL.to_vec(),
        Some(name) => match Namespace::parse(name) {
            Some(ns) => vec![ns],
            None => {
                let known: Vec<&str> = Namespace::ALL.iter().map(|ns| ns.as_str()).collect();
                let error = format!("unknown namespace {name:?}: one of {}", known.join(", "));
                return Err(bad_request(&state, ENDPOINT, error));
            }
        },
    };
    let prefix = query.prefix.unwrap_or_default();
    if prefix.len() > MAX_PATH_LEN || prefix.contains('\0') {
        let error = format!("prefix must be at most {MAX_PATH_LEN} bytes, without NUL");
        return Err(bad_request(&state, ENDPOINT, error));
    }
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => STATE_LIMIT_DEFAULT,
        Some(Ok(n)) if (1..=STATE_LIMIT_MAX).contains(&n) => n,
        Some(_) => {
            let error = format!("limit must be a number from 1 to {STATE_LIMIT_MAX}");
            return Err(bad_request(&state, ENDPOINT, error));
        }
    };
    let mut entries = Vec::new();
    let mut truncated = false;
    for ns in namespaces {
        let found = match state.store.scan_prefix(ns, &prefix).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "reading the state store for /api/state");
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(serde_json::json!({ "error": e.to_string() })),
                ));
            }
        };
        for (key, entry) in found {
            if entries.len() == limit {
                truncated = true;
                break;
            }
            entries.push(StateEntry {
                key: key.to_string(),
                namespace: key.ns.as_str(),
                path: key.path,
                version: entry.version,
                updated_ms: entry.updated_ms,
                value: entry.value,
            });
        }
        if truncated {
            break;
        }
    }
    Ok(Json(StateView {
        node: state.node.clone(),
        keys: state.store.len(),
        entries,
        truncated,
    }))
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
        state: StateSnapshot {
            keys: state.store.len(),
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
