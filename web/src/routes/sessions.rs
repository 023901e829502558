//! REST sessions (PROTOCOL.md §3).

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use sluice_protocol::rest::{CreateSession, SendMessage};

use crate::auth::User;
use crate::body::{JsonBody, RawBody, parse_json};
use crate::error::ApiError;
use crate::state::AppState;

/// Default page size of `GET /v1/sessions`.
const DEFAULT_PAGE: usize = 20;

/// `POST /v1/sessions`: the body is optional.
pub async fn create(
    state: web::Data<AppState>,
    user: User,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let request: CreateSession = if body.0.iter().all(u8::is_ascii_whitespace) {
        CreateSession::default()
    } else {
        parse_json(&body.0)?
    };
    let session = state.sessions.create(&user.0, request).await?;
    Ok(HttpResponse::Created().json(session))
}

/// Query of `GET /v1/sessions`.
#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    before: Option<String>,
}

/// `GET /v1/sessions?limit=&before=`.
pub async fn list(
    state: web::Data<AppState>,
    user: User,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .sessions
        .list(
            &user.0,
            query.limit.unwrap_or(DEFAULT_PAGE),
            query.before.as_deref(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /v1/sessions/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let session = state.sessions.get(&user.0, &id).await?;
    Ok(HttpResponse::Ok().json(session))
}

/// `DELETE /v1/sessions/{id}`.
pub async fn delete(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.sessions.delete(&user.0, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/sessions/{id}/messages` → `202 {message_id, generation_id}`.
pub async fn send(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
    body: JsonBody<SendMessage>,
) -> Result<HttpResponse, ApiError> {
    let accepted = state.sessions.send(&user.0, &id, body.0).await?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// `POST /v1/sessions/{id}/cancel`: `200` even if nothing runs.
pub async fn cancel(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.sessions.cancel(&user.0, &id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"cancelled": true})))
}
