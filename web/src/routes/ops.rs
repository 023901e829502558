//! Health, readiness and metrics (PROTOCOL.md §9).

use actix_web::{HttpResponse, web};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::state::AppState;

/// `GET /health`: 200 while the process serves.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 only when every required backend answers and the
/// replica is not draining; the body names each backend and its state.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let readiness = state.health.report().await;
    let draining = *state.shutdown.borrow();
    let ready = readiness.ready && !draining;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "draining": draining,
        "replica": state.sessions.config().replica_id,
        "backends": readiness.backends,
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
