//! The JSON body extractor: a body must say it is JSON, arrive within
//! [`BODY_TIMEOUT`] and stay within the limit; it answers
//! `415 unsupported_media_type`, `408 request_timeout`,
//! `413 payload_too_large` or `400 bad_request` in the envelope (actix's
//! own extractors answer in their own format).
//!
//! The media type matters beyond tidiness: a cross-site HTML form can post
//! `text/plain` or form-encoded bodies without the page's consent, but not
//! `application/json`, so a JSON route that read any body as JSON could be
//! driven by any web page.

use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use sluice_protocol::ErrorCode;
use sluice_protocol::limits::MAX_JSON_BODY_BYTES;

use crate::error::ApiError;

/// Longest time a request body may take to arrive, as the request head's
/// own timeout bounds the head: a client that stalls mid-body is answered
/// and its connection closed, not held.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body of at most [`MAX_JSON_BODY_BYTES`], as raw bytes; empty,
/// or declared as JSON.
pub struct RawBody(pub bytes::Bytes);

/// A JSON request body parsed into `T`. An empty body is not JSON and is
/// refused; routes whose body is optional take [`RawBody`] instead.
pub struct JsonBody<T>(pub T);

async fn read_limited(mut payload: Payload, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("body is over the limit of {MAX_JSON_BODY_BYTES} bytes"),
    )
}

fn declared_too_large(req: &HttpRequest, limit: usize) -> bool {
    req.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > limit)
}

/// What the `Content-Type` header says: absent, JSON, or something else.
enum Declared {
    Nothing,
    Json,
    Other,
}

fn declared_type(req: &HttpRequest) -> Declared {
    let Some(value) = req.headers().get("content-type") else {
        return Declared::Nothing;
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Declared::Json
    } else {
        Declared::Other
    }
}

fn not_json() -> ApiError {
    ApiError::new(
        ErrorCode::UnsupportedMediaType,
        "the body must be JSON, sent with Content-Type: application/json",
    )
}

impl FromRequest for RawBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let declared = declared_type(req);
        let too_large = declared_too_large(req, MAX_JSON_BODY_BYTES);
        let payload = payload.take();
        Box::pin(async move {
            if let Declared::Other = declared {
                return Err(not_json());
            }
            if too_large {
                return Err(self::too_large());
            }
            let body =
                tokio::time::timeout(BODY_TIMEOUT, read_limited(payload, MAX_JSON_BODY_BYTES))
                    .await
                    .map_err(|_| {
                        ApiError::new(
                            ErrorCode::RequestTimeout,
                            format!(
                                "the request body did not arrive within {} s",
                                BODY_TIMEOUT.as_secs()
                            ),
                        )
                    })??;
            if !body.is_empty() && matches!(declared, Declared::Nothing) {
                return Err(not_json());
            }
            Ok(RawBody(body))
        })
    }
}

/// Parses JSON into `T`, answering `bad_request` with serde's explanation.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let raw = RawBody::from_request(req, payload);
        Box::pin(async move {
            let RawBody(bytes) = raw.await?;
            parse_json(&bytes).map(JsonBody)
        })
    }
}
