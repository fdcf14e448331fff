//! The simulation hook: `PUT /api/sim/{device}/{entity}` drives an input of a device on a
//! simulated board as its wire would (`{"level": true}` for a binary sensor's pin,
//! `{"value": 21.5}` for a sensor's analog input), and `GET` reads the entity's pin back
//! (outputs included), so that the demo devices, tests and people trying Roost without a
//! Raspberry Pi can play the world around the devices. Refusals are a JSON `{"error"}`, a log
//! line and a count in `roost_http_bad_requests_total`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use crate::devices::{SimError, SimInput, SimPin};

const ENDPOINT: &str = "/api/sim";

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/sim/{device}/{entity}", get(probe).put(drive))
}

/// What `PUT` takes: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Drive {
    level: Option<bool>,
    value: Option<f64>,
}

type Refusal = (StatusCode, Json<serde_json::Value>);

fn refuse(state: &AppState, error: &SimError) -> Refusal {
    let status = match error {
        SimError::Unknown(_) => StatusCode::NOT_FOUND,
        SimError::NotSimulated(_) => StatusCode::CONFLICT,
        SimError::WrongInput(_) | SimError::Gpio(_) => StatusCode::BAD_REQUEST,
    };
    bad(state, status, error.to_string())
}

fn bad(state: &AppState, status: StatusCode, error: String) -> Refusal {
    tracing::warn!(endpoint = ENDPOINT, status = status.as_u16(), %error, "refusing an HTTP request");
    state.telemetry.bad_request(ENDPOINT);
    (status, Json(serde_json::json!({ "error": error })))
}

async fn probe(
    State(state): State<AppState>,
    Path((device, entity)): Path<(String, String)>,
) -> Result<Json<SimPin>, Refusal> {
    state
        .devices
        .probe(&device, &entity)
        .map(Json)
        .map_err(|e| refuse(&state, &e))
}

async fn drive(
    State(state): State<AppState>,
    Path((device, entity)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, Refusal> {
    const EXPECTED: &str = r#"expected {"level": true|false} or {"value": <number>}"#;
    let input = match serde_json::from_slice::<Drive>(&body) {
        Ok(Drive {
            level: Some(level),
            value: None,
        }) => SimInput::Level(level),
        Ok(Drive {
            level: None,
            value: Some(value),
        }) if value.is_finite() => SimInput::Value(value),
        Ok(_) => return Err(bad(&state, StatusCode::BAD_REQUEST, EXPECTED.to_owned())),
        Err(e) => {
            return Err(bad(
                &state,
                StatusCode::BAD_REQUEST,
                format!("{e}; {EXPECTED}"),
            ))
        }
    };
    state
        .devices
        .simulate(&device, &entity, input)
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(|e| refuse(&state, &e))
}
