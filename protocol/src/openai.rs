//! The parts of the OpenAI chat-completions schema Sluice reads or writes
//! (PROTOCOL.md §7). Requests are relayed as JSON objects so that fields this
//! crate does not model (`tools`, `response_format`, content parts...) pass
//! through unchanged; only what Sluice acts on is typed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{FinishReason, ProtocolError, Usage};

/// A chat-completions request. Unknown fields are kept in `extra` and relayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation, relayed unchanged.
    pub messages: Vec<Value>,
    /// Whether to stream chunks.
    #[serde(default)]
    pub stream: bool,
    /// `{"include_usage": true}` asks for a final usage chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Everything else (`tools`, `temperature`, ...), relayed unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stream_options` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

impl ChatRequest {
    /// Parses and checks a request body: `messages` must be a non-empty list of
    /// objects, each with a string `role`.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let request: ChatRequest = serde_json::from_slice(body)
            .map_err(|e| ProtocolError::Malformed(format!("invalid request: {e}")))?;
        if request.messages.is_empty() {
            return Err(ProtocolError::Malformed(
                "messages must not be empty".into(),
            ));
        }
        for (i, m) in request.messages.iter().enumerate() {
            if !m.get("role").is_some_and(Value::is_string) {
                return Err(ProtocolError::Malformed(format!(
                    "messages[{i}] must be an object with a string role"
                )));
            }
        }
        Ok(request)
    }

    /// A plain text message, as the session actor builds its prompt.
    pub fn text_message(role: &str, content: &str) -> Value {
        serde_json::json!({"role": role, "content": content})
    }
}

/// What Sluice reads from one streamed chunk. Unknown fields are ignored here;
/// the raw chunk is what gets relayed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChunkView {
    /// Choices; Sluice reads the first.
    #[serde(default)]
    pub choices: Vec<ChoiceView>,
    /// Present on the usage chunk.
    #[serde(default)]
    pub usage: Option<UsageView>,
}

/// One choice of a chunk.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChoiceView {
    /// The delta.
    #[serde(default)]
    pub delta: DeltaView,
    /// Set on the last chunk of the choice.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The delta of a choice.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DeltaView {
    /// Text, when there is any.
    #[serde(default)]
    pub content: Option<String>,
    /// Fragments of tool calls, when the model calls tools.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// A refusal's text, when the model refuses.
    #[serde(default)]
    pub refusal: Option<String>,
    /// A reasoning model's thoughts (DeepSeek's, vLLM's reasoning parsers).
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// The deprecated single function call, from the `functions` API.
    #[serde(default)]
    pub function_call: Option<Value>,
}

/// A fragment of one tool call in a streamed delta: the first fragment of a
/// call carries its `id` and name, the following ones more of its
/// `arguments` (a JSON text cut anywhere).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ToolCallDelta {
    /// Which call of the step this fragment belongs to.
    #[serde(default)]
    pub index: usize,
    /// The call's id (first fragment).
    #[serde(default)]
    pub id: Option<String>,
    /// The function's name and a piece of its arguments.
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FunctionDelta {
    /// The tool's name (first fragment).
    #[serde(default)]
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text.
    #[serde(default)]
    pub arguments: Option<String>,
}

/// The usage object of a chunk or a completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct UsageView {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

impl From<UsageView> for Usage {
    fn from(u: UsageView) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

impl ChunkView {
    /// The first choice's text delta, if any.
    pub fn content(&self) -> Option<&str> {
        self.choices.first()?.delta.content.as_deref()
    }

    /// The first choice's tool-call fragments (empty if none).
    pub fn tool_calls(&self) -> &[ToolCallDelta] {
        self.choices
            .first()
            .and_then(|c| c.delta.tool_calls.as_deref())
            .unwrap_or_default()
    }

    /// The first choice's finish reason, if any.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.choices
            .first()?
            .finish_reason
            .as_deref()
            .map(finish_reason_from_openai)
    }
}

/// Maps OpenAI's finish reasons onto Sluice's: `length` stays, everything
/// else that ends normally (`stop`, `tool_calls`, `content_filter`) is `stop`.
pub fn finish_reason_from_openai(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// Builds one `chat.completion.chunk` object.
pub fn chunk(
    id: &str,
    created: i64,
    model: &str,
    delta: Value,
    finish_reason: Option<&str>,
) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

/// Builds the final usage chunk (`stream_options.include_usage`).
pub fn usage_chunk(id: &str, created: i64, model: &str, usage: Usage) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_json(usage),
    })
}

/// Builds a whole `chat.completion` object.
pub fn completion(
    id: &str,
    created: i64,
    model: &str,
    content: &str,
    finish_reason: &str,
    usage: Usage,
) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
        }],
        "usage": usage_json(usage),
    })
}

fn usage_json(usage: Usage) -> Value {
    serde_json::json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_unknown_fields() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],
                        "stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function"}],"temperature":0.2}"#;
        let req = ChatRequest::parse(body).unwrap();
        assert!(req.stream);
        assert_eq!(
            req.stream_options,
            Some(StreamOptions {
                include_usage: true
            })
        );
        assert_eq!(req.extra["tools"][0]["type"], "function");
        let again = serde_json::to_value(&req).unwrap();
        assert_eq!(again["temperature"], 0.2);
        assert_eq!(again["messages"][0]["content"][0]["text"], "hi");
    }

    #[test]
    fn bad_requests_are_refused() {
        for body in [
            &b"{"[..],
            br#"{"messages":[]}"#,
            br#"{"messages":[{"content":"x"}]}"#,
            br#"{"messages":"x"}"#,
            br#"{"model":"m"}"#,
        ] {
            assert!(
                ChatRequest::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn chunks_are_read() {
        let c: ChunkView = serde_json::from_value(chunk(
            "c",
            1,
            "m",
            serde_json::json!({"content": "hé"}),
            None,
        ))
        .unwrap();
        assert_eq!(c.content(), Some("hé"));
        assert_eq!(c.finish_reason(), None);
        let end: ChunkView =
            serde_json::from_value(chunk("c", 1, "m", serde_json::json!({}), Some("length")))
                .unwrap();
        assert_eq!(end.finish_reason(), Some(FinishReason::Length));
        let usage: ChunkView = serde_json::from_value(usage_chunk(
            "c",
            1,
            "m",
            Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
            },
        ))
        .unwrap();
        assert_eq!(usage.usage.unwrap().completion_tokens, 2);
        assert_eq!(usage.content(), None);
    }
}
