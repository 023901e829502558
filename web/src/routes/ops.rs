//! Health, readiness and metrics (PROTOCOL.md §9).

use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::auth::User;
use crate::error::ApiError;
use crate::state::{AppState, OpsAccess};

/// Whether the caller may read `/metrics` and `/ready` on the main listener.
async fn allowed(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    match state.ops {
        OpsAccess::Open => Ok(()),
        OpsAccess::Token => User::extract(req).await.map(drop),
        OpsAccess::MetricsListener => Err(ApiError::not_found(
            "served on the metrics listener (SLUICE_METRICS_ADDR) only",
        )),
    }
}

/// `GET /health`: 200 while the process serves.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /ready` on the main listener, for whom `SLUICE_OPS_ENDPOINTS` allows.
pub async fn ready(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    allowed(&req, &state).await?;
    Ok(ready_here(state).await)
}

/// `GET /metrics` on the main listener, for whom `SLUICE_OPS_ENDPOINTS` allows.
pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    allowed(&req, &state).await?;
    Ok(metrics_here(state).await)
}

/// `GET /ready`: 200 only when every required backend answers and the
/// replica is not draining; the body names each backend and its state.
pub async fn ready_here(state: web::Data<AppState>) -> HttpResponse {
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
pub async fn metrics_here(state: web::Data<AppState>) -> HttpResponse {
    match &state.registry {
        Some(registry) => render_metrics(registry),
        None => {
            ApiError::not_found("metrics are off here (PROMETHEUS_ENABLED=false)").error_response()
        }
    }
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
