//! [`ApiError`]: every error a client sees, in the OpenAI-style envelope.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use sluice_actors::{LlmError, Refusal, SessionError};
use sluice_protocol::{ErrorBody, ErrorCode, ProtocolError};

use crate::context::REQUEST_ID;

/// Seconds a client is told to wait on `overloaded` and `rate_limited`.
const RETRY_AFTER_SECONDS: &str = "1";

/// An error answer: a code and a human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The protocol code (it decides the status).
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// A provider's refusal, passed on with its own status and fields
    /// instead of `code` (the OpenAI-compatible route).
    refusal: Option<Box<Refusal>>,
    /// When a retry may succeed, for `Retry-After` (else
    /// [`RETRY_AFTER_SECONDS`] where one is sent).
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            refusal: None,
            retry_after: None,
        }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// The envelope body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        let status = match &self.refusal {
            Some(refusal) => refusal.status,
            None => self.code.http_status(),
        };
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(refusal) = &self.refusal {
            // The provider's error object as it sent it: SDKs read `code`
            // and `param` to say what to fix.
            if refusal.status == 429 {
                response.insert_header(("Retry-After", RETRY_AFTER_SECONDS));
            }
            return response.json(serde_json::json!({"error": {
                "message": refusal.message,
                "type": refusal.kind,
                "param": refusal.param,
                "code": refusal.code,
            }}));
        }
        let mut body = self.body();
        if self.code == ErrorCode::Internal {
            // Never the details of a bug: they go to the log with the id.
            let id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
            tracing::error!(request_id = %id, error = %self.message, "internal error");
            body.error.message = format!("internal error; request id {id}");
        }
        if self.code == ErrorCode::Unauthorized {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if matches!(self.code, ErrorCode::Overloaded | ErrorCode::RateLimited) {
            match self.retry_after {
                // Whole seconds, rounded up: never earlier than there is room.
                Some(wait) => response.insert_header((
                    "Retry-After",
                    wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                )),
                None => response.insert_header(("Retry-After", RETRY_AFTER_SECONDS)),
            };
        }
        if matches!(
            self.code,
            ErrorCode::RequestTimeout | ErrorCode::PayloadTooLarge
        ) {
            // The rest of the body may never come: nothing more is read
            // from this connection.
            response.force_close();
        }
        response.json(body)
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let refusal = match &e {
            SessionError::Upstream(LlmError::Refused(refusal)) => Some(Box::new(refusal.clone())),
            _ => None,
        };
        let message = match &e {
            SessionError::NotFound => "no such session".to_owned(),
            other => other.to_string(),
        };
        Self {
            code: e.code(),
            message,
            refusal,
            retry_after: e.retry_after(),
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}
