//! Error codes (PROTOCOL.md §2) and the OpenAI-compatible error envelope.

use serde::{Deserialize, Serialize};

/// Every error code the server can answer with. The wire form is snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, wrong types, an unknown client event type, invalid UTF-8.
    BadRequest,
    /// Missing, malformed, expired or wrongly signed token.
    Unauthorized,
    /// Refused whoever asks: in local mode, a request from another site
    /// (a foreign `Host` or `Origin`).
    Forbidden,
    /// No such session or file for this user.
    NotFound,
    /// The route exists, but not with this method.
    MethodNotAllowed,
    /// A generation is already running in this session.
    Conflict,
    /// The request body did not arrive in time.
    RequestTimeout,
    /// Body, upload or frame over its limit.
    PayloadTooLarge,
    /// Upload of a type the server does not accept.
    UnsupportedMediaType,
    /// Over a per-user or per-IP limit.
    RateLimited,
    /// The LLM provider failed.
    UpstreamError,
    /// Concurrency limit reached or a required backend is down.
    Overloaded,
    /// The LLM provider did not answer in time.
    UpstreamTimeout,
    /// A bug; the message carries a request id.
    Internal,
}

impl ErrorCode {
    /// The code for an error status that no code was given for (an
    /// answer of the HTTP framework's): its own where one has it, else
    /// `bad_request` for a 4xx and `internal` for a 5xx.
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            408 => Self::RequestTimeout,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            429 => Self::RateLimited,
            502 => Self::UpstreamError,
            503 => Self::Overloaded,
            504 => Self::UpstreamTimeout,
            500..=599 => Self::Internal,
            _ => Self::BadRequest,
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::UpstreamError => 502,
            Self::Overloaded => 503,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
        }
    }

    /// The wire name, as used in `code` and `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::UpstreamError => "upstream_error",
            Self::Overloaded => "overloaded",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every HTTP error: `{"error": {"code", "message", "type"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`]. `type` repeats the code, as OpenAI SDKs read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Same as `code`.
    #[serde(rename = "type")]
    pub kind: ErrorCode,
}

impl ErrorBody {
    /// An envelope for `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
                kind: code,
            },
        }
    }
}

/// Why a client's input was refused while parsing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The input is larger than its limit.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The input is not valid JSON, or not the expected shape.
    #[error("{0}")]
    Malformed(String),
}

impl ProtocolError {
    /// The error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::Malformed(_) => ErrorCode::BadRequest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_code_message_and_type() {
        let body = ErrorBody::new(ErrorCode::RateLimited, "slow down");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "rate_limited", "message": "slow down", "type": "rate_limited"}})
        );
        let back: ErrorBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn statuses_match_the_table() {
        for (code, status) in [
            (ErrorCode::BadRequest, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::MethodNotAllowed, 405),
            (ErrorCode::RequestTimeout, 408),
            (ErrorCode::Conflict, 409),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::UnsupportedMediaType, 415),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::UpstreamError, 502),
            (ErrorCode::Overloaded, 503),
            (ErrorCode::UpstreamTimeout, 504),
            (ErrorCode::Internal, 500),
        ] {
            assert_eq!(code.http_status(), status, "{code}");
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
