//! Health, readiness and metrics (PROTOCOL.md §9).

use actix_web::{HttpResponse, web};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::state::AppState;

/// `GET /health`: 200 while the process serves.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 only when every configured backend answers; the body
/// names each backend and its state.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let store = state.sessions.store();
    let store_state = match store.ping().await {
        Ok(()) => json!({"kind": store.name(), "state": "up"}),
        Err(e) => json!({"kind": store.name(), "state": "down", "error": e.to_string()}),
    };
    let store_up = store_state["state"] == "up";
    let draining = *state.shutdown.borrow();
    let body = json!({
        "status": if store_up && !draining { "ready" } else { "not_ready" },
        "draining": draining,
        "backends": {
            "store": store_state,
            "event_log": {"kind": state.sessions.log().name(), "state": "up"},
            "llm": {"kind": state.sessions.llm().name(), "state": "configured"},
        },
    });
    if store_up && !draining {
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
