//! [`BackendError`]: what failed in the session store, the event log, the
//! bus or the lease store, and whether trying again can help.
//!
//! Callers decide by [`ErrorKind`], never by the message: only an
//! [`ErrorKind::Unavailable`] error is worth a retry (and becomes
//! `503 overloaded` for a client); a corrupt record or a refused request
//! stays what it is however often it is retried, and a fenced write means
//! the writer has lost its session to another replica.

use std::fmt;

/// Which backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The session store (redb, PostgreSQL).
    Store,
    /// The event log (memory, Redis Streams).
    EventLog,
    /// The bus between replicas (memory, Redis pub/sub).
    Bus,
    /// The lease store (memory, Redis).
    Leases,
    /// The object store of uploaded files (a directory, S3).
    Objects,
    /// The vector index of file chunks (redb, Chroma).
    Vectors,
    /// The embedder (local, the provider's `/embeddings`).
    Embedder,
    /// The response cache (in process, Redis).
    Cache,
    /// Per-user limits (in process, Redis).
    Limits,
}

impl Backend {
    /// How messages name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Store => "session store",
            Self::EventLog => "event log",
            Self::Bus => "bus",
            Self::Leases => "lease store",
            Self::Objects => "object store",
            Self::Vectors => "vector index",
            Self::Embedder => "embedder",
            Self::Cache => "response cache",
            Self::Limits => "limits",
        }
    }
}

/// How a backend call failed, which decides what its caller may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Down, unreachable, overloaded or too slow. Retrying later can help.
    Unavailable,
    /// Stored data cannot be read (corrupt, or written by an unknown
    /// version). Retrying cannot help.
    Corrupt,
    /// The backend refused the request itself (a constraint, an argument it
    /// cannot take). Retrying the same request cannot help.
    Rejected,
    /// A write of a session by a replica that no longer owns it: another one
    /// has claimed the session since (see
    /// [`SessionStore::claim_session`](crate::store::SessionStore::claim_session)).
    /// Retrying cannot help; the writer must stop.
    Fenced,
}

/// A backend failure. Its message never holds a secret (URLs are not quoted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BackendError {
    /// Which backend.
    pub backend: Backend,
    /// How it failed.
    pub kind: ErrorKind,
    /// What the backend said.
    pub message: String,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = self.backend.as_str();
        let what = match self.kind {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Corrupt => "holds a corrupt record",
            ErrorKind::Rejected => "refused the request",
            ErrorKind::Fenced => "refused a write from a replica that lost the session",
        };
        write!(f, "{backend} {what}: {}", self.message)
    }
}

impl BackendError {
    /// An error of `kind` from `backend`.
    pub fn new(backend: Backend, kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            backend,
            kind,
            message: message.to_string(),
        }
    }

    /// `backend` is down or unreachable.
    pub fn unavailable(backend: Backend, message: impl fmt::Display) -> Self {
        Self::new(backend, ErrorKind::Unavailable, message)
    }

    /// `backend` holds data that cannot be read.
    pub fn corrupt(backend: Backend, message: impl fmt::Display) -> Self {
        Self::new(backend, ErrorKind::Corrupt, message)
    }

    /// `backend` refused the request.
    pub fn rejected(backend: Backend, message: impl fmt::Display) -> Self {
        Self::new(backend, ErrorKind::Rejected, message)
    }

    /// Whether trying the same call again later can succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable_and_messages_name_the_backend() {
        let e = BackendError::unavailable(Backend::Store, "connection refused");
        assert!(e.is_retryable());
        assert_eq!(
            e.to_string(),
            "session store unavailable: connection refused"
        );
        for kind in [ErrorKind::Corrupt, ErrorKind::Rejected, ErrorKind::Fenced] {
            assert!(!BackendError::new(Backend::EventLog, kind, "x").is_retryable());
        }
    }
}
