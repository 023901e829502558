//! The session layer's one error type.

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
    /// The client's input broke the protocol (malformed or over a limit).
    #[error("{0}")]
    Protocol(#[from] sluice_protocol::ProtocolError),
    /// A backend is down or a limit was reached. Retrying later helps.
    #[error("{0}")]
    Overloaded(String),
    /// The session actor is stopping; ask the registry again. Callers in this
    /// crate retry it; clients only see it as `overloaded` if retries run out.
    #[error("the session is restarting, retry")]
    Retired,
    /// Another replica owns the session (or took it over meanwhile); ask
    /// where it lives again. Callers in this crate retry it.
    #[error("the session moved to another replica, retry")]
    NotOwner,
    /// A bug or an unexpected backend answer.
    #[error("{0}")]
    Internal(String),
}

impl SessionError {
    /// The protocol error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::Conflict => ErrorCode::Conflict,
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Protocol(e) => e.code(),
            Self::Overloaded(_) | Self::Retired | Self::NotOwner => ErrorCode::Overloaded,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<crate::store::StoreError> for SessionError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Overloaded(format!("session store unavailable: {e}"))
    }
}

impl From<actix::MailboxError> for SessionError {
    fn from(e: actix::MailboxError) -> Self {
        Self::Internal(format!("session actor unavailable: {e}"))
    }
}
