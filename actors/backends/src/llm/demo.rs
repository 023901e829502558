//! The built-in demo model: answers when no provider is configured.
//!
//! Limits: it does not understand anything. It echoes the question inside a
//! fixed explanation, one word per chunk at a human reading pace, so that a
//! fresh `cargo run` shows real streaming. Every reply starts with
//! `[Sluice demo model]` so nobody mistakes it for a real model.

use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use sluice_protocol::Usage;
use sluice_protocol::openai::{self, ChatRequest, ChunkView};

use super::{ChunkStream, LlmChunk, LlmError, LlmProvider, last_user_text};

/// The demo model's id.
pub const DEMO_MODEL: &str = "sluice-demo";

/// The demo provider. `token_delay` is the pause between chunks.
#[derive(Debug, Clone)]
pub struct DemoProvider {
    token_delay: Duration,
}

impl DemoProvider {
    /// A demo model that pauses `token_delay` between words.
    pub fn new(token_delay: Duration) -> Self {
        Self { token_delay }
    }

    fn reply_words(request: &ChatRequest) -> Vec<String> {
        let question: String = last_user_text(&request.messages)
            .chars()
            .take(200)
            .collect();
        let text = format!(
            "[Sluice demo model] No LLM provider is configured, so Sluice's built-in demo model \
             is answering. You said: \"{}\". Set SLUICE_LLM_BASE_URL (with SLUICE_LLM_API_KEY and \
             SLUICE_LLM_MODEL) to stream answers from any OpenAI-compatible provider.",
            question.trim()
        );
        let mut words = Vec::new();
        let mut current = String::new();
        for c in text.chars() {
            current.push(c);
            if c == ' ' {
                words.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            words.push(current);
        }
        words
    }

    fn prompt_tokens(request: &ChatRequest) -> u64 {
        request
            .messages
            .iter()
            .map(|m| m.to_string().split_whitespace().count() as u64)
            .sum()
    }
}

impl LlmProvider for DemoProvider {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn stream(&self, request: ChatRequest) -> ChunkStream {
        let delay = self.token_delay;
        let model = request.model.clone().unwrap_or_else(|| DEMO_MODEL.into());
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        let words = Self::reply_words(&request);
        let usage = Usage {
            prompt_tokens: Self::prompt_tokens(&request),
            completion_tokens: words.len() as u64,
        };
        let id = format!("chatcmpl-{}", crate::ids::new_id());
        let created = crate::ids::now_unix();
        async_stream::stream! {
            let mut chunks = Vec::with_capacity(words.len() + 2);
            for (i, word) in words.iter().enumerate() {
                let delta = if i == 0 {
                    serde_json::json!({"role": "assistant", "content": word})
                } else {
                    serde_json::json!({"content": word})
                };
                chunks.push(openai::chunk(&id, created, &model, delta, None));
            }
            chunks.push(openai::chunk(&id, created, &model, serde_json::json!({}), Some("stop")));
            if include_usage {
                chunks.push(openai::usage_chunk(&id, created, &model, usage));
            }
            for (i, value) in chunks.into_iter().enumerate() {
                if i > 0 && i <= words.len() {
                    tokio::time::sleep(delay).await;
                }
                // The chunks are built above from known-good shapes.
                let view: ChunkView = serde_json::from_value(value.clone()).unwrap_or_default();
                yield Ok::<_, LlmError>(LlmChunk { raw: value.to_string(), view });
            }
        }
        .boxed()
    }

    fn complete(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<serde_json::Value, LlmError>> {
        let model = request.model.clone().unwrap_or_else(|| DEMO_MODEL.into());
        let words = Self::reply_words(&request);
        let usage = Usage {
            prompt_tokens: Self::prompt_tokens(&request),
            completion_tokens: words.len() as u64,
        };
        let content = words.concat();
        Box::pin(async move {
            Ok(openai::completion(
                &format!("chatcmpl-{}", crate::ids::new_id()),
                crate::ids::now_unix(),
                &model,
                &content,
                "stop",
                usage,
            ))
        })
    }

    fn embeddings(
        &self,
        request: serde_json::Value,
    ) -> BoxFuture<'static, Result<serde_json::Value, LlmError>> {
        Box::pin(async move {
            // Thousands of inputs are CPU work: off the async threads.
            let answer = tokio::task::spawn_blocking(move || {
                crate::embed::local::embeddings_response(&request)
            })
            .await
            .map_err(|e| LlmError::Upstream(format!("embedding task failed: {e}")))?;
            answer.map_err(|message| {
                LlmError::Refused(super::Refusal {
                    status: 400,
                    message,
                    kind: Some("invalid_request_error".into()),
                    code: None,
                    param: Some("input".into()),
                })
            })
        })
    }

    fn models(&self) -> Vec<String> {
        vec![DEMO_MODEL.into()]
    }

    fn check(&self) -> BoxFuture<'static, Result<(), LlmError>> {
        // In this process: it answers whenever the process does.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn demo_streams_a_labelled_reply_that_ends() {
        let provider = DemoProvider::new(Duration::ZERO);
        let request = ChatRequest::parse(
            br#"{"messages":[{"role":"user","content":"hello there"}],"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        let chunks: Vec<_> = provider.stream(request).collect().await;
        let text: String = chunks
            .iter()
            .filter_map(|c| c.as_ref().unwrap().view.content().map(str::to_owned))
            .collect();
        assert!(text.starts_with("[Sluice demo model]"), "{text}");
        assert!(text.contains("You said: \"hello there\""), "{text}");
        let last = chunks.last().unwrap().as_ref().unwrap();
        assert!(last.view.usage.is_some());
        let finish = &chunks[chunks.len() - 2].as_ref().unwrap().view;
        assert_eq!(
            finish.finish_reason(),
            Some(sluice_protocol::FinishReason::Stop)
        );
    }
}
