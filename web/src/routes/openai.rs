//! The OpenAI-compatible API (PROTOCOL.md §7): relayed to the provider by
//! the session layer's [`Relay`](sluice_actors::Relay), chunks passed
//! through byte for byte.

use std::convert::Infallible;

use actix_web::{HttpResponse, web};
use bytes::{Bytes, BytesMut};
use sluice_actors::relay::Completion;
use sluice_protocol::ErrorBody;
use sluice_protocol::openai::ChatRequest;

use crate::auth::User;
use crate::body::RawBody;
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /v1/chat/completions`, streaming or not.
///
/// A streaming request waits for the provider's first chunk before
/// answering, so a provider that fails before it gives a real HTTP error
/// (a 4xx it gave, or 502/504) that SDKs raise, rather than a 200 stream
/// with an error inside.
pub async fn chat_completions(
    state: web::Data<AppState>,
    user: User,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let request = ChatRequest::parse(&body.0)?;
    let relayed = state.relay.chat(&user.0, request).await?;
    let cache_header = (
        "X-Sluice-Cache",
        if relayed.cached { "hit" } else { "miss" },
    );
    let mut chunks = match relayed.completion {
        Completion::Whole(completion) => {
            return Ok(HttpResponse::Ok()
                .insert_header(cache_header)
                .json(completion));
        }
        Completion::Stream(chunks) => chunks,
    };
    let stream = async_stream::stream! {
        while let Some(batch) = chunks.next_batch().await {
            let mut out = BytesMut::new();
            for item in batch {
                match item {
                    Ok(json) => push_data_line(&mut out, &json),
                    Err(e) => {
                        // After the first chunk the status is sent; the error
                        // goes in the stream, as OpenAI does, and the stream ends.
                        let body = ErrorBody::new(e.code(), e.to_string());
                        push_data_line(&mut out, &serde_json::to_string(&body).unwrap_or_default());
                        yield Ok::<_, Infallible>(out.freeze());
                        return;
                    }
                }
            }
            yield Ok(out.freeze());
            // Let the server write this batch now: it fills its write
            // buffer for as long as a body has more ready, so a burst
            // would hold every chunk back until 32 KiB of them had come.
            tokio::task::yield_now().await;
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    Ok(event_stream().insert_header(cache_header).streaming(stream))
}

/// `POST /v1/responses`, streaming or not: the Responses API over the
/// provider's chat completions (`sluice_actors::responses`).
pub async fn create_response(
    state: web::Data<AppState>,
    user: User,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let request: serde_json::Value = crate::body::parse_json(&body.0)?;
    let prepared = state.relay.prepare_response(&user.0, request).await?;
    let stream = prepared.stream();
    let mut events = state.relay.respond(prepared).await?;
    if !stream {
        return Ok(HttpResponse::Ok().json(events.whole().await?));
    }
    let stream = async_stream::stream! {
        while let Some(batch) = events.next().await {
            let mut out = BytesMut::new();
            for (kind, event) in batch {
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(kind.as_bytes());
                out.extend_from_slice(b"\n");
                push_data_line(&mut out, &event.to_string());
            }
            yield Ok::<_, Infallible>(out.freeze());
            // As in `chat_completions`: each batch is written now.
            tokio::task::yield_now().await;
        }
    };
    Ok(event_stream().streaming(stream))
}

/// `GET /v1/responses/{id}`: a stored response, as it was answered.
pub async fn get_response(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.relay.get_response(&user.0, &id).await?))
}

/// `DELETE /v1/responses/{id}`: deletes a stored response.
pub async fn delete_response(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.relay.delete_response(&user.0, &id).await?))
}

/// A `200` server-sent-events response, unbuffered by proxies.
fn event_stream() -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    response
}

fn push_data_line(out: &mut BytesMut, json: &str) {
    out.reserve(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"})
}

/// `POST /v1/embeddings`, relayed to the provider (the local embedder
/// answers when there is none).
pub async fn embeddings(
    state: web::Data<AppState>,
    user: User,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let request: serde_json::Value = crate::body::parse_json(&body.0)?;
    let answer = state.relay.embeddings(&user.0, request).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// `GET /v1/models`.
pub async fn models(state: web::Data<AppState>, _user: User) -> HttpResponse {
    let data: Vec<_> = state
        .relay
        .models()
        .iter()
        .map(|id| model_object(id))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: a listed model (the OpenAI SDKs' `models.retrieve`).
pub async fn model(
    state: web::Data<AppState>,
    _user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if state.relay.models().contains(&id) {
        return Ok(HttpResponse::Ok().json(model_object(&id)));
    }
    Err(ApiError::not_found(format!(
        "model {:?} is not listed; GET /v1/models lists the ones Sluice names (any model is passed on to the provider)",
        id.chars().take(200).collect::<String>()
    )))
}
