//! `GET /health`: the cluster as this node sees it, in the JSON shape of CONTRACT.md, with
//! 200 for healthy or degraded and 503 for unhealthy (no leader).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;
use crate::cluster::ClusterHealth;

/// The `/health` body: the contract's fields, then detail.
#[derive(Serialize)]
struct Health {
    #[serde(flatten)]
    cluster: ClusterHealth,
    uptime_seconds: u64,
    version: &'static str,
    /// Whether the replicated state has caught up (`replication::SyncStatus`).
    state: crate::replication::SyncStatus,
    /// How many devices the node has, and how many can be reached.
    devices: crate::devices::DeviceCounts,
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let cluster = state.view.health();
    let code = if cluster.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        cluster,
        uptime_seconds: state.uptime_seconds(),
        version: env!("CARGO_PKG_VERSION"),
        state: state.replicated.sync_status(),
        devices: state.devices.counts(),
    };
    // Serializing these plain structs cannot fail; fall back to null rather than panic.
    (code, Json(serde_json::to_value(body).unwrap_or_default()))
}
