//! The replicated state over HTTP, for the dashboard and for debugging: `GET /api/state`
//! (keys, one page at a time), `PUT` and `DELETE /api/state/{ns}/{path}` (writes by the
//! rules of `replication`), and `GET /api/state/events` (every committed change, live, over
//! Server-Sent Events). Every refusal is a JSON `{"error"}`, a log line and a count in
//! `roost_http_bad_requests_total`.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::AppState;
use crate::replication::WriteError;
use crate::state::{self, Change, Key, Namespace, Record, MAX_PATH_LEN};

/// Entries `GET /api/state` returns when the request names no `limit`, and the most it
/// returns.
const STATE_LIMIT_DEFAULT: usize = 1_000;
const STATE_LIMIT_MAX: usize = 10_000;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/state", get(list))
        .route("/api/state/events", get(events))
        .route(
            "/api/state/{ns}/{*path}",
            axum::routing::put(put).delete(delete),
        )
}

/// An error answer: its status and `{"error": "..."}`.
type Refusal = (StatusCode, Json<serde_json::Value>);

/// A refused request: `status`, a JSON error, a log line and `roost_http_bad_requests_total`.
fn refuse(state: &AppState, endpoint: &str, status: StatusCode, error: String) -> Refusal {
    tracing::warn!(endpoint, status = status.as_u16(), %error, "refusing an HTTP request");
    state.telemetry.bad_request(endpoint);
    (status, Json(serde_json::json!({ "error": error })))
}

/// A store failure: 500, logged (not counted as bad input).
fn failed(endpoint: &str, e: &dyn std::fmt::Display) -> Refusal {
    tracing::error!(endpoint, error = %e, "the state store failed a request");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": e.to_string() })),
    )
}

/// `GET /api/state`'s query: all optional.
#[derive(Deserialize)]
struct ListQuery {
    /// One namespace (`cluster`, `devices`, `node`); all when absent.
    ns: Option<String>,
    /// Only keys whose path starts with this.
    prefix: Option<String>,
    /// At most this many entries (1 to `STATE_LIMIT_MAX`).
    limit: Option<String>,
    /// Only keys after this one (`ns/path`, as `next` gave it): the next page.
    after: Option<String>,
    /// `true` to list tombstones too.
    tombstones: Option<String>,
}

/// One record as the API shows it.
#[derive(Serialize)]
struct StateEntry {
    /// `ns/path`.
    key: String,
    namespace: &'static str,
    path: String,
    version: u64,
    term: u64,
    origin: String,
    updated_ms: u64,
    /// The value; `null` for a tombstone.
    value: serde_json::Value,
    /// Whether this is a tombstone.
    deleted: bool,
}

impl StateEntry {
    fn new(key: Key, record: Record) -> StateEntry {
        StateEntry {
            key: key.to_string(),
            namespace: key.ns.as_str(),
            path: key.path,
            version: record.version,
            term: record.term,
            origin: record.origin,
            updated_ms: record.updated_ms,
            deleted: record.value.is_none(),
            value: record.value.unwrap_or_default(),
        }
    }
}

/// `GET /api/state`'s answer.
#[derive(Serialize)]
struct StateView {
    node: String,
    /// Records in the whole store, tombstones included.
    keys: u64,
    /// Tombstones in the whole store.
    tombstones: u64,
    /// Whether the store has caught up with the peers (as `/health` says).
    in_sync: bool,
    /// The entries asked for, in key order.
    entries: Vec<StateEntry>,
    /// Whether more entries matched than `limit`.
    truncated: bool,
    /// When truncated, the `after` that asks for the next page.
    next: Option<String>,
}

/// The node's state store as JSON: every key, or one namespace and path prefix of it.
async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<StateView>, Refusal> {
    const ENDPOINT: &str = "/api/state";
    let bad = |error: String| refuse(&state, ENDPOINT, StatusCode::BAD_REQUEST, error);
    let namespaces = match query.ns.as_deref() {
        None => Namespace::ALL.to_vec(),
        Some(name) => vec![parse_ns(name).map_err(bad)?],
    };
    let prefix = query.prefix.unwrap_or_default();
    if prefix.len() > MAX_PATH_LEN || prefix.contains('\0') {
        return Err(bad(format!(
            "prefix must be at most {MAX_PATH_LEN} bytes, without NUL"
        )));
    }
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => STATE_LIMIT_DEFAULT,
        Some(Ok(n)) if (1..=STATE_LIMIT_MAX).contains(&n) => n,
        Some(_) => {
            return Err(bad(format!(
                "limit must be a number from 1 to {STATE_LIMIT_MAX}"
            )))
        }
    };
    let tombstones = match query.tombstones.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(bad(format!(
                "tombstones must be true or false, not {other:?}"
            )))
        }
    };
    let after = query.after.unwrap_or_default();
    let mut entries = Vec::new();
    let mut truncated = false;
    for ns in namespaces {
        let found = state
            .store
            .records(ns, &prefix)
            .await
            .map_err(|e| failed(ENDPOINT, &e))?;
        for (key, record) in found {
            if record.is_tombstone() && !tombstones {
                continue;
            }
            let name = key.to_string();
            if !after.is_empty() && name.as_str() <= after.as_str() {
                continue;
            }
            if entries.len() == limit {
                truncated = true;
                break;
            }
            entries.push(StateEntry::new(key, record));
        }
        if truncated {
            break;
        }
    }
    let sync = state.replicated.sync_status();
    Ok(Json(StateView {
        node: state.node.clone(),
        keys: sync.keys,
        tombstones: sync.tombstones,
        in_sync: sync.in_sync,
        next: truncated
            .then(|| entries.last().map(|e| e.key.clone()))
            .flatten(),
        entries,
        truncated,
    }))
}

/// A namespace by name, or what names there are.
fn parse_ns(name: &str) -> Result<Namespace, String> {
    Namespace::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Namespace::ALL.iter().map(|ns| ns.as_str()).collect();
        format!("unknown namespace {name:?}: one of {}", known.join(", "))
    })
}

/// The key of `/api/state/{ns}/{path}`, or a refusal.
fn key_of(state: &AppState, endpoint: &str, ns: &str, path: String) -> Result<Key, Refusal> {
    let bad = |error: String| refuse(state, endpoint, StatusCode::BAD_REQUEST, error);
    let ns = parse_ns(ns).map_err(bad)?;
    Key::new(ns, path).map_err(|e| bad(e.to_string()))
}

/// The answer to a refused write.
fn write_refusal(state: &AppState, endpoint: &str, e: WriteError) -> Refusal {
    let status = match &e {
        WriteError::NotOwner { .. } | WriteError::NoOwner { .. } => StatusCode::FORBIDDEN,
        WriteError::NotLeader { .. } | WriteError::Store(state::Error::StaleTerm { .. }) => {
            StatusCode::CONFLICT
        }
        WriteError::Store(_) => return failed(endpoint, &e),
    };
    refuse(state, endpoint, status, e.to_string())
}

/// `PUT /api/state/{ns}/{path}` with a JSON body: writes it, answers the new version.
async fn put(
    State(state): State<AppState>,
    Path((ns, path)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Refusal> {
    const ENDPOINT: &str = "PUT /api/state";
    let key = key_of(&state, ENDPOINT, &ns, path)?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        refuse(
            &state,
            ENDPOINT,
            StatusCode::BAD_REQUEST,
            format!("the body must be a JSON value: {e}"),
        )
    })?;
    let version = state
        .replicated
        .put(&key, &value)
        .await
        .map_err(|e| write_refusal(&state, ENDPOINT, e))?;
    Ok(Json(
        serde_json::json!({ "key": key.to_string(), "version": version }),
    ))
}

/// `DELETE /api/state/{ns}/{path}`: deletes it, answers whether it had a value.
async fn delete(
    State(state): State<AppState>,
    Path((ns, path)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Refusal> {
    const ENDPOINT: &str = "DELETE /api/state";
    let key = key_of(&state, ENDPOINT, &ns, path)?;
    let deleted = state
        .replicated
        .delete(&key)
        .await
        .map_err(|e| write_refusal(&state, ENDPOINT, e))?;
    Ok(Json(
        serde_json::json!({ "key": key.to_string(), "deleted": deleted }),
    ))
}

/// `GET /api/state/events`' query.
#[derive(Deserialize)]
struct EventsQuery {
    /// One namespace; all when absent.
    ns: Option<String>,
    /// Only keys whose path starts with this.
    prefix: Option<String>,
}

/// One change as `GET /api/state/events` sends it.
#[derive(Serialize)]
struct ChangeEvent {
    #[serde(flatten)]
    entry: StateEntry,
    /// Whether it came from a peer.
    remote: bool,
}

/// Every change committed from now on, as `change` events; `lagged` (with how many were
/// missed) when the client reads too slowly. Ends at shutdown.
async fn events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Refusal> {
    const ENDPOINT: &str = "/api/state/events";
    let ns = match query.ns.as_deref() {
        None => None,
        Some(name) => {
            Some(parse_ns(name).map_err(|e| refuse(&state, ENDPOINT, StatusCode::BAD_REQUEST, e))?)
        }
    };
    let prefix = query.prefix.unwrap_or_default();
    let changes = state.store.subscribe();
    let shutdown = state.shutdown.clone();
    let wanted = move |change: &Change| {
        ns.is_none_or(|ns| change.key.ns == ns) && change.key.path.starts_with(&prefix)
    };
    let stream = stream::unfold((changes, wanted), |(mut changes, wanted)| async move {
        loop {
            let event = match changes.recv().await {
                Ok(change) if !wanted(&change) => continue,
                Ok(change) => Event::default()
                    .event("change")
                    .json_data(ChangeEvent {
                        remote: change.remote,
                        entry: StateEntry::new(change.key, change.record),
                    })
                    .unwrap_or_else(|_| Event::default().comment("change unavailable")),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Event::default().event("lagged").data(missed.to_string())
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok(event), (changes, wanted)));
        }
    });
    let stream = futures_util::StreamExt::take_until(stream, shutdown.cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
