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
use futures::{FutureExt, Stream, StreamExt};
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

/// Groups a stream's items into batches of what is ready now, up to `max`.
///
/// A provider that sends tokens faster than they are consumed leaves many in
/// the connection's read buffer, but the HTTP client hands over one chunk per
/// task switch. Each batch therefore waits for the next item through yields
/// to the scheduler for as long as one keeps arriving, and ends at the first
/// yield that brings nothing. The first item is never held back by a timer:
/// a lone token goes out as soon as the reader has no more. Downstream, a
/// batch costs one actor message, one log append and one socket write
/// instead of one per token.
pub fn ready_batches<S>(mut stream: S, max: usize) -> BoxStream<'static, Vec<S::Item>>
where
    S: Stream + Send + Unpin + 'static,
    S::Item: Send,
{
    async_stream::stream! {
        while let Some(first) = stream.next().await {
            let mut batch = Vec::with_capacity(max.min(64));
            batch.push(first);
            let mut ended = false;
            while batch.len() < max {
                let mut next = stream.next().now_or_never();
                if next.is_none() {
                    tokio::task::yield_now().await;
                    next = stream.next().now_or_never();
                }
                match next {
                    Some(Some(item)) => batch.push(item),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            yield batch;
            if ended {
                return;
            }
        }
    }
    .boxed()
}

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use futures::stream::BoxStream;
    use tokio::sync::mpsc;

    use super::ready_batches;

    fn receiver_stream(rx: mpsc::UnboundedReceiver<u32>) -> BoxStream<'static, u32> {
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
            .boxed()
    }

    #[tokio::test]
    async fn items_ready_together_come_in_batches_of_at_most_max() {
        let batches: Vec<Vec<u32>> = ready_batches(futures::stream::iter(1..=10), 4)
            .collect()
            .await;
        assert_eq!(
            batches,
            vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]
        );
    }

    #[tokio::test]
    async fn a_lone_item_is_not_held_back_waiting_for_more() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut batches = ready_batches(receiver_stream(rx), 16);
        tx.send(1).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), batches.next()).await;
        assert_eq!(first.unwrap(), Some(vec![1]));
        drop(tx);
        assert_eq!(batches.next().await, None);
    }

    #[tokio::test]
    async fn items_a_producer_hands_over_one_per_task_switch_are_gathered() {
        // Like an HTTP connection task handing over one chunk at a time.
        let (tx, rx) = mpsc::unbounded_channel();
        let producer = tokio::spawn(async move {
            for i in 0..50 {
                tx.send(i).unwrap();
                tokio::task::yield_now().await;
            }
        });
        let batches: Vec<Vec<u32>> = ready_batches(receiver_stream(rx), 256).collect().await;
        producer.await.unwrap();
        let items: Vec<u32> = batches.iter().flatten().copied().collect();
        assert_eq!(items, (0..50).collect::<Vec<_>>());
        assert!(
            batches.len() < 10,
            "50 items in {} batches: {batches:?}",
            batches.len()
        );
    }
}
