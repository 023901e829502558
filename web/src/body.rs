//! The JSON body extractor: reads at most the limit, whatever the content
//! type, and answers `413 payload_too_large` or `400 bad_request` in the
//! envelope (actix's own extractors answer in their own format).

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use sluice_protocol::ErrorCode;
use sluice_protocol::limits::MAX_JSON_BODY_BYTES;

use crate::error::ApiError;

/// A request body of at most [`MAX_JSON_BODY_BYTES`], as raw bytes.
pub struct RawBody(pub bytes::Bytes);

/// A JSON request body parsed into `T`. An empty body is not JSON and is
/// refused; routes whose body is optional take [`RawBody`] instead.
pub struct JsonBody<T>(pub T);

async fn read_limited(mut payload: Payload, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("body is over the limit of {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn declared_too_large(req: &HttpRequest, limit: usize) -> bool {
    req.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > limit)
}

impl FromRequest for RawBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let too_large = declared_too_large(req, MAX_JSON_BODY_BYTES);
        let payload = payload.take();
        Box::pin(async move {
            if too_large {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("body is over the limit of {MAX_JSON_BODY_BYTES} bytes"),
                ));
            }
            read_limited(payload, MAX_JSON_BODY_BYTES)
                .await
                .map(RawBody)
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
