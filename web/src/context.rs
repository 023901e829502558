//! Per-request context: `X-Request-Id` (echoed or generated), a tracing span
//! carrying it, and the HTTP metrics.
//!
//! Every metric label comes from a closed set: the route is a pattern of
//! this app or `unmatched`, the method one of HTTP's own or `other`, the
//! status a number below 1000. A client cannot mint new series.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use tracing::Instrument;

use crate::state::AppState;

tokio::task_local! {
    /// The current request's id, set by [`request_context`] so that an
    /// `internal` error can name it.
    pub static REQUEST_ID: String;
}

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id accepted from a client; longer ones are replaced.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// The middleware: wraps every request.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            // Visible ASCII only (as nginx/production.conf keeps them): a
            // request id is a key for searching logs, not text.
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_BYTES
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(sluice_actors::ids::new_id);
    let method = method_label(req.method());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    // Routing has not filled `match_info` yet: the id is read off the path.
    let session_id = route
        .starts_with("/v1/sessions/{id}")
        .then(|| req.path().strip_prefix("/v1/sessions/"))
        .flatten()
        .and_then(|rest| rest.split('/').next())
        .filter(|id| id.len() <= MAX_REQUEST_ID_BYTES)
        .map(str::to_owned);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method,
        %route,
        session_id,
        user = tracing::field::Empty,
    );
    let mut response = REQUEST_ID
        .scope(id.clone(), next.call(req).instrument(span.clone()))
        .await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let status = response.status();
    if let Some(metrics) = metrics {
        metrics
            .http_requests_total
            .with_label_values(&[&route, method, status.as_str()])
            .inc();
        metrics
            .http_request_duration_seconds
            .with_label_values(&[&route])
            .observe(started.elapsed().as_secs_f64());
    }
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "served"
        );
    });
    Ok(response)
}

/// The method as a metric label: HTTP's own methods by name, anything
/// else (a client may send any token as a method) as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_fold_into_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        for name in ["PURGE", "X".repeat(1000).as_str()] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other");
        }
    }
}
