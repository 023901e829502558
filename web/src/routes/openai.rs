//! The OpenAI-compatible API (PROTOCOL.md §7): relayed to the provider,
//! chunks passed through byte for byte.

use std::convert::Infallible;
use std::time::Instant;

use actix_web::{HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sluice_actors::llm::{LlmError, ready_batches};
use sluice_actors::metrics::GaugeGuard;
use sluice_protocol::ErrorBody;
use sluice_protocol::openai::ChatRequest;

use crate::auth::User;
use crate::body::RawBody;
use crate::error::ApiError;
use crate::state::AppState;

/// Most chunks relayed in one write.
const MAX_RELAY_BATCH: usize = 256;

/// `POST /v1/chat/completions`, streaming or not.
///
/// A streaming request waits for the provider's first chunk before
/// answering, so a provider that fails before it gives a real HTTP error
/// (502/504) that SDKs raise, rather than a 200 stream with an error inside.
pub async fn chat_completions(
    state: web::Data<AppState>,
    _user: User,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let mut request = ChatRequest::parse(&body.0)?;
    if request.model.as_deref().is_none_or(str::is_empty) {
        request.model = Some(state.sessions.config().default_model.clone());
    }
    let metrics = state.sessions.metrics().clone();
    let llm = state.sessions.llm().clone();
    if !request.stream {
        let completion = llm.complete(request).await.inspect_err(|e| {
            tracing::warn!(error = %e, "provider failed (OpenAI route)");
            metrics
                .upstream_errors_total
                .with_label_values(&[e.code().as_str()])
                .inc();
        })?;
        return Ok(HttpResponse::Ok().json(completion));
    }
    let started = Instant::now();
    let mut upstream = llm.stream(request);
    let first = match upstream.next().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "provider failed before the first chunk (OpenAI route)");
            metrics
                .upstream_errors_total
                .with_label_values(&[e.code().as_str()])
                .inc();
            return Err(e.into());
        }
        None => {
            return Err(ApiError::new(
                sluice_protocol::ErrorCode::UpstreamError,
                "provider ended the stream without a chunk",
            ));
        }
    };
    metrics
        .time_to_first_token_seconds
        .with_label_values(&["openai"])
        .observe(started.elapsed().as_secs_f64());
    let live = GaugeGuard::new(metrics.live_connections.with_label_values(&["openai"]));
    let tokens = metrics.tokens_streamed_total.with_label_values(&["openai"]);
    let errors = metrics.upstream_errors_total.clone();
    // Chunks that arrive together leave in one write.
    let mut batches = ready_batches(upstream, MAX_RELAY_BATCH);
    let stream = async_stream::stream! {
        let _live = live;
        let mut batch: Vec<Result<_, LlmError>> = vec![Ok(first)];
        loop {
            let mut out = BytesMut::new();
            for item in batch {
                match item {
                    Ok(chunk) => {
                        if chunk.view.content().is_some_and(|c| !c.is_empty()) {
                            tokens.inc();
                        }
                        push_data_line(&mut out, &chunk.raw);
                    }
                    Err(e) => {
                        // After the first chunk the status is sent; the error
                        // goes in the stream, as OpenAI does, and the stream ends.
                        tracing::warn!(error = %e, "provider failed mid-stream (OpenAI route)");
                        errors.with_label_values(&[e.code().as_str()]).inc();
                        let body = ErrorBody::new(e.code(), e.to_string());
                        push_data_line(&mut out, &serde_json::to_string(&body).unwrap_or_default());
                        yield Ok::<_, Infallible>(out.freeze());
                        return;
                    }
                }
            }
            yield Ok(out.freeze());
            match batches.next().await {
                Some(next) => batch = next,
                None => break,
            }
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

fn push_data_line(out: &mut BytesMut, json: &str) {
    out.reserve(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// `GET /v1/models`.
pub async fn models(state: web::Data<AppState>, _user: User) -> HttpResponse {
    let data: Vec<_> = state
        .sessions
        .llm()
        .models()
        .into_iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": data}))
}
