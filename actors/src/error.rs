//! The session layer's one error type.

use sluice_backends::llm::LlmError;
use sluice_backends::{BackendError, ErrorKind};
use sluice_protocol::ErrorCode;

/// What went wrong in the session layer, and so what a client is told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// No such session for this user. Retrying does not help.
    #[error("no such session")]
    NotFound,
    /// A generation is already running. Retry after it ends.
    #[error("a generation is already running in this session")]
    Conflict,
    /// The client's input was refused. Retrying the same input does not help.
    #[error("{0}")]
    BadRequest(String),
    /// No such file for this user (named, so a client sending several
    /// attachments knows which).
    #[error("no such file: {0}")]
    FileNotFound(String),
    /// No such stored response for this user (named, as a client sent it).
    #[error("no such response: {0}")]
    ResponseNotFound(String),
    /// An upload over what its user may still keep.
    #[error("{0}")]
    OverStorage(String),
    /// An upload of a type the server does not accept.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The client's input broke the protocol (malformed or over a limit).
    #[error("{0}")]
    Protocol(#[from] sluice_protocol::ProtocolError),
    /// A backend is down or a limit was reached. Retrying later helps.
    #[error("{0}")]
    Overloaded(String),
    /// The user is over one of its limits; retrying after `retry_after`
    /// helps.
    #[error("{message}")]
    RateLimited {
        /// Which limit, and its value, for a person.
        message: String,
        /// When there is room again (rounded up to whole seconds for
        /// `Retry-After`).
        retry_after: std::time::Duration,
    },
    /// The session actor is stopping; ask the registry again. Callers in this
    /// crate retry it; clients only see it as `overloaded` if retries run out.
    #[error("the session is restarting, retry")]
    Retired,
    /// Another replica owns the session (or took it over meanwhile); ask
    /// where it lives again. Callers in this crate retry it.
    #[error("the session moved to another replica, retry")]
    NotOwner,
    /// The LLM provider failed or refused the request (the relay).
    #[error("{0}")]
    Upstream(LlmError),
    /// A bug, or a backend answer that retrying cannot change.
    #[error("{0}")]
    Internal(String),
}

impl SessionError {
    /// How long a client should wait before it retries, where that is known.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// What a client is told: the error's text, except a bug's, whose
    /// details stay in the log (they may name files, keys or hosts).
    pub fn client_message(&self) -> String {
        match self {
            Self::NotFound => "no such session".into(),
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".into()
            }
            other => other.to_string(),
        }
    }

    /// The protocol error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound | Self::FileNotFound(_) | Self::ResponseNotFound(_) => {
                ErrorCode::NotFound
            }
            Self::UnsupportedMedia(_) => ErrorCode::UnsupportedMediaType,
            Self::OverStorage(_) => ErrorCode::PayloadTooLarge,
            Self::Conflict => ErrorCode::Conflict,
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Protocol(e) => e.code(),
            Self::Overloaded(_) | Self::Retired | Self::NotOwner => ErrorCode::Overloaded,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Upstream(e) => e.code(),
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// Only a backend that may come back is `overloaded` (503, retry later); a
/// corrupt record or a refused request is an internal error, which no retry
/// mends; a fenced write means the session moved.
impl From<BackendError> for SessionError {
    fn from(e: BackendError) -> Self {
        match e.kind {
            ErrorKind::Unavailable => Self::Overloaded(e.to_string()),
            ErrorKind::Fenced => Self::NotOwner,
            ErrorKind::Corrupt | ErrorKind::Rejected => Self::Internal(e.to_string()),
        }
    }
}

impl From<LlmError> for SessionError {
    fn from(e: LlmError) -> Self {
        Self::Upstream(e)
    }
}

impl From<actix::MailboxError> for SessionError {
    fn from(e: actix::MailboxError) -> Self {
        Self::Internal(format!("session actor unavailable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use sluice_backends::Backend;

    use super::*;

    #[test]
    fn only_a_backend_that_may_come_back_is_overloaded() {
        let check = |kind, code| {
            let e = SessionError::from(BackendError::new(Backend::Store, kind, "x"));
            assert_eq!(e.code(), code, "{kind:?}");
        };
        check(ErrorKind::Unavailable, ErrorCode::Overloaded);
        check(ErrorKind::Corrupt, ErrorCode::Internal);
        check(ErrorKind::Rejected, ErrorCode::Internal);
        assert!(matches!(
            SessionError::from(BackendError::new(Backend::Store, ErrorKind::Fenced, "x")),
            SessionError::NotOwner
        ));
    }
}
