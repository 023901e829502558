//! LLM providers: the trait, and its two implementations.
//!
//! - [`openai::OpenAiProvider`]: any OpenAI-compatible server, streamed with
//!   reqwest-eventsource; timeouts, retries before the first token, errors
//!   mapped to `upstream_error` / `upstream_timeout`.
//! - [`demo::DemoProvider`]: the built-in demo model used when no provider is
//!   configured. It says so in every reply.
//!
//! Chunks are handed on as the provider's raw JSON text plus a parsed view of
//! the fields Sluice reads, so the OpenAI-compatible route relays them
//! byte for byte and the session actor never re-parses them.

pub mod demo;
pub mod openai;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sluice_protocol::ErrorCode;
use sluice_protocol::openai::{ChatRequest, ChunkView};

/// One streamed `chat.completion.chunk`.
#[derive(Debug, Clone)]
pub struct LlmChunk {
    /// The chunk's JSON exactly as the provider sent it.
    pub raw: String,
    /// The fields Sluice reads from it.
    pub view: ChunkView,
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with an error, sent garbage, or could not be reached.
    #[error("{0}")]
    Upstream(String),
    /// The provider did not answer, or stopped answering, in time.
    #[error("{0}")]
    Timeout(String),
}

impl LlmError {
    /// The protocol code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Upstream(_) => ErrorCode::UpstreamError,
            Self::Timeout(_) => ErrorCode::UpstreamTimeout,
        }
    }
}

/// A stream of chunks; it ends after the last chunk or after one error.
pub type ChunkStream = BoxStream<'static, Result<LlmChunk, LlmError>>;

/// An OpenAI-compatible chat-completions provider.
///
/// Contract: `stream` yields the provider's chunks in order and ends after the
/// last one (or after yielding one error, which is final). Retries, if any,
/// happen only before the first chunk, so a caller never sees text twice.
/// `request.model` is always set by the caller and passed on unchanged.
pub trait LlmProvider: Send + Sync + 'static {
    /// A short name for logs and `/ready` (`openai`, `demo`).
    fn name(&self) -> &'static str;

    /// Streams a completion.
    fn stream(&self, request: ChatRequest) -> ChunkStream;

    /// A whole completion (`stream: false`), as the provider's JSON object.
    fn complete(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<serde_json::Value, LlmError>>;

    /// Model ids for `GET /v1/models`.
    fn models(&self) -> Vec<String>;
}

/// The text of the last user message of an OpenAI `messages` list: a string
/// content, or the `text` parts of a content array joined.
pub fn last_user_text(messages: &[serde_json::Value]) -> String {
    let Some(message) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
    else {
        return String::new();
    };
    match message.get("content") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}
