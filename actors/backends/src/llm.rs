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
    /// The provider failed: it answered 5xx, sent garbage, broke the stream,
    /// could not be reached, or refused Sluice's own credentials.
    #[error("{0}")]
    Upstream(String),
    /// The provider did not answer, or stopped answering, in time.
    #[error("{0}")]
    Timeout(String),
    /// The provider refused the request itself (a 4xx answer: an unknown
    /// model, a bad parameter, a rate limit): the caller's to fix, and the
    /// OpenAI-compatible route passes it on as it came.
    #[error("provider refused the request ({}): {}", .0.status, .0.message)]
    Refused(Refusal),
    /// Sluice itself did not ask: its limit of provider requests at once
    /// stayed full for as long as a request may wait.
    #[error("{0}")]
    Busy(String),
}

/// A provider's 4xx answer, with the fields of its OpenAI error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status (400 to 499).
    pub status: u16,
    /// `error.message`.
    pub message: String,
    /// `error.type`, if given.
    pub kind: Option<String>,
    /// `error.code`, if given (a string, or a number as some providers send).
    pub code: Option<serde_json::Value>,
    /// `error.param`, if given.
    pub param: Option<String>,
}

impl LlmError {
    /// The protocol code a session client sees (in `generation_end.error`).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Upstream(_) | Self::Refused(_) => ErrorCode::UpstreamError,
            Self::Timeout(_) => ErrorCode::UpstreamTimeout,
            Self::Busy(_) => ErrorCode::Overloaded,
        }
    }
}

/// A stream of chunks; it ends after the last chunk or after one error.
pub type ChunkStream = BoxStream<'static, Result<LlmChunk, LlmError>>;

/// How [`ready_batches`] cuts a stream into batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching<T> {
    /// Most items in one batch.
    pub max_items: usize,
    /// Most bytes (by `size`) in one batch; a single larger item goes alone.
    pub max_bytes: usize,
    /// An item's size in bytes.
    pub size: fn(&T) -> usize,
    /// Whether an item is one the reader waits for (a token): until one has
    /// gone out, a batch ends with the first such item, so it is never held
    /// back for the items behind it.
    pub awaited: fn(&T) -> bool,
}

/// Provider chunks: a batch is at most 32 chunks or 16 KiB of JSON, and the
/// first token (text, or an error) leaves as soon as it arrives.
pub const CHUNK_BATCHING: Batching<Result<LlmChunk, LlmError>> = Batching {
    max_items: 32,
    max_bytes: 16 * 1024,
    size: |item| item.as_ref().map_or(0, |chunk| chunk.raw.len()),
    awaited: |item| match item {
        Ok(chunk) => chunk.view.content().is_some_and(|text| !text.is_empty()),
        Err(_) => true,
    },
};

/// Groups a stream's items into batches of what is ready now, within
/// `batching`'s bounds.
///
/// A provider that sends tokens faster than they are consumed leaves many in
/// the connection's read buffer, but the HTTP client hands over one chunk per
/// task switch. So a batch waits for the next item through yields to the
/// scheduler, and ends at the first yield that brings nothing, at its
/// bounds, or (before the first awaited item has gone out) right after the
/// first awaited item. No item is held back by a timer, and none waits for
/// more than a bounded batch behind it. Downstream, a batch costs one actor
/// message, one log append and one socket write instead of one per token.
pub fn ready_batches<S>(
    mut stream: S,
    batching: Batching<S::Item>,
) -> BoxStream<'static, Vec<S::Item>>
where
    S: Stream + Send + Unpin + 'static,
    S::Item: Send + 'static,
{
    let Batching {
        max_items,
        max_bytes,
        size,
        awaited,
    } = batching;
    let max_items = max_items.max(1);
    async_stream::stream! {
        let mut waiting_first = true;
        while let Some(first) = stream.next().await {
            let mut bytes = size(&first);
            let mut full = waiting_first && awaited(&first);
            waiting_first &= !full;
            let mut batch = Vec::with_capacity(max_items.min(64));
            batch.push(first);
            let mut ended = false;
            while !full && batch.len() < max_items && bytes < max_bytes {
                let mut next = stream.next().now_or_never();
                if next.is_none() {
                    tokio::task::yield_now().await;
                    next = stream.next().now_or_never();
                }
                match next {
                    Some(Some(item)) => {
                        bytes += size(&item);
                        if waiting_first && awaited(&item) {
                            waiting_first = false;
                            full = true;
                        }
                        batch.push(item);
                    }
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

    /// An OpenAI `POST /embeddings` request's answer, as the provider's
    /// JSON object (`{"data": [{"embedding": [...], "index": 0}], ...}`).
    fn embeddings(
        &self,
        request: serde_json::Value,
    ) -> BoxFuture<'static, Result<serde_json::Value, LlmError>>;

    /// Model ids for `GET /v1/models`.
    fn models(&self) -> Vec<String>;

    /// Checks that the provider answers (for `/ready`): a cheap request
    /// that costs no tokens.
    fn check(&self) -> BoxFuture<'static, Result<(), LlmError>>;
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

    use super::{Batching, ready_batches};

    /// Counting items; every item is awaited, each one byte.
    const EVERY: Batching<u32> = Batching {
        max_items: 4,
        max_bytes: 1000,
        size: |_| 1,
        awaited: |_| true,
    };

    /// Items of their own value in bytes; only 7 is awaited.
    const SEVEN: Batching<u32> = Batching {
        max_items: 100,
        max_bytes: 10,
        size: |n| *n as usize,
        awaited: |n| *n == 7,
    };

    fn receiver_stream(rx: mpsc::UnboundedReceiver<u32>) -> BoxStream<'static, u32> {
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
            .boxed()
    }

    #[tokio::test]
    async fn items_ready_together_come_in_bounded_batches_after_the_first_alone() {
        // The first awaited item goes alone, however many wait behind it.
        let batches: Vec<Vec<u32>> = ready_batches(futures::stream::iter(1..=10), EVERY)
            .collect()
            .await;
        assert_eq!(
            batches,
            vec![vec![1], vec![2, 3, 4, 5], vec![6, 7, 8, 9], vec![10]]
        );
        // Items before the first awaited one go with it; later batches stop
        // at the byte bound (an item larger than it goes alone).
        let batches: Vec<Vec<u32>> =
            ready_batches(futures::stream::iter([1, 1, 7, 1, 2, 3, 4, 20, 1]), SEVEN)
                .collect()
                .await;
        assert_eq!(
            batches,
            vec![vec![1, 1, 7], vec![1, 2, 3, 4], vec![20], vec![1]]
        );
    }

    /// A provider that streams without pauses: its first token is not held
    /// back while the rest of the answer keeps arriving.
    #[tokio::test]
    async fn the_first_item_of_an_endless_burst_is_not_held_back() {
        let burst = futures::stream::iter(0u32..).boxed();
        let mut batches = ready_batches(burst, EVERY);
        assert_eq!(batches.next().await, Some(vec![0]));
        assert_eq!(batches.next().await, Some(vec![1, 2, 3, 4]));
    }

    #[tokio::test]
    async fn a_lone_item_is_not_held_back_waiting_for_more() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut batches = ready_batches(receiver_stream(rx), EVERY);
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
        let batching = Batching {
            max_items: 256,
            ..EVERY
        };
        let batches: Vec<Vec<u32>> = ready_batches(receiver_stream(rx), batching).collect().await;
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
