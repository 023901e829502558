//! Health, readiness and metrics (PROTOCOL.md §9).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;
use sluice_actors::supervisor::{BackendState, CheckNow};

use crate::state::AppState;

/// `GET /health`: 200 while the process serves.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 only when every configured backend answers; the body
/// names each backend and its state.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let checks = state.supervisors.iter().map(|s| s.send(CheckNow));
    let backends: BTreeMap<_, _> = futures::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let all_up =
        backends.len() == state.supervisors.len() && backends.values().all(BackendState::is_up);
    let draining = *state.shutdown.borrow();
    let sessions = &state.sessions;
    let mut report = serde_json::Map::new();
    for (backend, backend_state) in &backends {
        report.insert((*backend).into(), json!(backend_state));
    }
    // The in-process event log is always up; the Redis one is Redis.
    let log_kind = sessions.log().name();
    let log_state = backends.get(log_kind).map_or("up", |b| b.state);
    report.insert(
        "event_log".into(),
        json!({"kind": log_kind, "state": log_state}),
    );
    report.insert(
        "llm".into(),
        json!({"kind": sessions.llm().name(), "state": "configured"}),
    );
    let ready = all_up && !draining;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "draining": draining,
        "replica": sessions.config().replica_id,
        "backends": report,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    render_metrics(&state.registry)
}

/// Renders `registry` in the Prometheus text format.
pub fn render_metrics(registry: &prometheus::Registry) -> HttpResponse {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    match encoder.encode(&registry.gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok()
            .content_type(encoder.format_type())
            .body(buffer),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}
