//! The parts of the OpenAI chat-completions schema Sluice reads or writes
//! (PROTOCOL.md §7). Requests are relayed as JSON objects so that fields this
//! crate does not model (`tools`, `response_format`, content parts...) pass
//! through unchanged; only what Sluice acts on is typed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::limits::{
    MAX_CHAT_CHOICES, MAX_CHAT_MESSAGE_BYTES, MAX_CHAT_MESSAGES, MAX_CHAT_TOKENS, MAX_CHAT_TOOLS,
    MAX_MODEL_BYTES,
};
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
    /// Parses and checks a request body: `messages` must be a non-empty list
    /// of objects, each with a string `role`, and every option Sluice or the
    /// provider would act on within its range ([`check_options`]). An error
    /// names the field.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let request: ChatRequest = serde_json::from_slice(body)
            .map_err(|e| ProtocolError::Malformed(format!("invalid request: {e}")))?;
        if request.messages.is_empty() {
            return Err(ProtocolError::Malformed(
                "messages must not be empty".into(),
            ));
        }
        if request.messages.len() > MAX_CHAT_MESSAGES {
            return Err(ProtocolError::Malformed(format!(
                "messages: at most {MAX_CHAT_MESSAGES} messages"
            )));
        }
        for (i, m) in request.messages.iter().enumerate() {
            if !m.get("role").is_some_and(Value::is_string) {
                return Err(ProtocolError::Malformed(format!(
                    "messages[{i}] must be an object with a string role"
                )));
            }
            if text_bytes(m.get("content")) > MAX_CHAT_MESSAGE_BYTES {
                return Err(ProtocolError::Malformed(format!(
                    "messages[{i}].content: at most {MAX_CHAT_MESSAGE_BYTES} bytes of text"
                )));
            }
        }
        if let Some(model) = &request.model
            && (model.len() > MAX_MODEL_BYTES || model.chars().any(char::is_control))
        {
            return Err(ProtocolError::Malformed(format!(
                "model: at most {MAX_MODEL_BYTES} bytes, without control characters"
            )));
        }
        check_options(&request.extra)?;
        Ok(request)
    }

    /// A plain text message, as the session actor builds its prompt.
    pub fn text_message(role: &str, content: &str) -> Value {
        serde_json::json!({"role": role, "content": content})
    }
}

/// The bytes of text in a message's `content`: a string, or its parts'
/// `text` together.
fn text_bytes(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(str::len)
            .sum(),
        _ => 0,
    }
}

/// How an option's value must look.
enum Range {
    /// A number from .. to.
    Number(f64, f64),
    /// A whole number from .. to.
    Whole(u64, u64),
    /// A whole number, any sign, that fits in 64 bits.
    Integer,
    /// A boolean.
    Bool,
    /// Text of at most so many bytes.
    Text(usize),
    /// A list of at most so many items.
    List(usize),
    /// An object of at most so many keys.
    Object(usize),
}

/// The options of a chat-completions request that Sluice checks, with their
/// ranges (OpenAI's own, where it states them). `null` passes, as OpenAI
/// takes it for "the default". Unlisted options are relayed as they are.
const OPTIONS: &[(&str, Range)] = &[
    ("temperature", Range::Number(0.0, 2.0)),
    ("top_p", Range::Number(0.0, 1.0)),
    ("presence_penalty", Range::Number(-2.0, 2.0)),
    ("frequency_penalty", Range::Number(-2.0, 2.0)),
    ("n", Range::Whole(1, MAX_CHAT_CHOICES)),
    ("max_tokens", Range::Whole(1, MAX_CHAT_TOKENS)),
    ("max_completion_tokens", Range::Whole(1, MAX_CHAT_TOKENS)),
    ("logprobs", Range::Bool),
    ("top_logprobs", Range::Whole(0, 20)),
    ("parallel_tool_calls", Range::Bool),
    ("store", Range::Bool),
    ("seed", Range::Integer),
    ("user", Range::Text(256)),
    ("tools", Range::List(MAX_CHAT_TOOLS)),
    ("logit_bias", Range::Object(300)),
    ("metadata", Range::Object(16)),
];

/// Checks the options of [`OPTIONS`] in `extra`, and `stop`.
pub fn check_options(extra: &Map<String, Value>) -> Result<(), ProtocolError> {
    for (name, range) in OPTIONS {
        let Some(value) = extra.get(*name).filter(|v| !v.is_null()) else {
            continue;
        };
        let fits = match range {
            Range::Number(min, max) => value
                .as_f64()
                .is_some_and(|n| n.is_finite() && (*min..=*max).contains(&n)),
            Range::Whole(min, max) => value.as_u64().is_some_and(|n| (*min..=*max).contains(&n)),
            Range::Integer => value.is_i64() || value.is_u64(),
            Range::Bool => value.is_boolean(),
            Range::Text(max) => value.as_str().is_some_and(|s| s.len() <= *max),
            Range::List(max) => value.as_array().is_some_and(|a| a.len() <= *max),
            Range::Object(max) => value.as_object().is_some_and(|o| o.len() <= *max),
        };
        if !fits {
            let expected = match range {
                Range::Number(min, max) => format!("a number from {min} to {max}"),
                Range::Whole(min, max) => format!("a whole number from {min} to {max}"),
                Range::Integer => "a whole number".to_owned(),
                Range::Bool => "true or false".to_owned(),
                Range::Text(max) => format!("text of at most {max} bytes"),
                Range::List(max) => format!("a list of at most {max} items"),
                Range::Object(max) => format!("an object of at most {max} keys"),
            };
            return Err(ProtocolError::Malformed(format!(
                "{name}: must be {expected}"
            )));
        }
    }
    match extra.get("stop") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s.len() <= 256 => Ok(()),
        Some(Value::Array(stops))
            if stops.len() <= 4
                && stops
                    .iter()
                    .all(|s| s.as_str().is_some_and(|s| s.len() <= 256)) =>
        {
            Ok(())
        }
        Some(_) => Err(ProtocolError::Malformed(
            "stop: must be text, or a list of at most 4, each at most 256 bytes".into(),
        )),
    }
}

/// What one `data:` line of a provider's chat-completions stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkData {
    /// `[DONE]`: the stream is over.
    Done,
    /// An error object in the stream, with its message (at most 500
    /// characters of it).
    Error(String),
    /// A chunk.
    Chunk(ChunkView),
}

/// Reads one `data:` line of a provider's stream; an error says why the
/// line is not a chunk.
pub fn read_chunk(data: &str) -> Result<ChunkData, String> {
    if data.trim() == "[DONE]" {
        return Ok(ChunkData::Done);
    }
    if data.contains("\"error\"")
        && let Ok(value) = serde_json::from_str::<Value>(data)
        && let Some(error) = value.get("error")
    {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Ok(ChunkData::Error(message.chars().take(500).collect()));
    }
    serde_json::from_str::<ChunkView>(data)
        .map(ChunkData::Chunk)
        .map_err(|e| e.to_string())
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

    /// Each option out of its range is refused naming the field; at the
    /// edges of its range, and `null`, it passes.
    #[test]
    fn options_out_of_range_are_refused_naming_the_field() {
        let with = |field: &str, value: Value| {
            let mut body = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
            body[field] = value;
            ChatRequest::parse(&serde_json::to_vec(&body).unwrap())
        };
        let huge = "m".repeat(MAX_MODEL_BYTES + 1);
        for (field, value) in [
            ("model", Value::String(huge)),
            ("model", serde_json::json!("a\nb")),
            ("n", serde_json::json!(100)),
            ("n", serde_json::json!(0)),
            ("max_tokens", serde_json::json!(-1)),
            ("max_tokens", serde_json::json!(1e300)),
            ("max_completion_tokens", serde_json::json!(0)),
            ("temperature", serde_json::json!("NaN")),
            ("temperature", serde_json::json!(2.5)),
            ("top_p", serde_json::json!(-0.1)),
            ("presence_penalty", serde_json::json!(3)),
            ("top_logprobs", serde_json::json!(21)),
            ("logprobs", serde_json::json!("yes")),
            ("seed", serde_json::json!(1.5)),
            ("user", Value::String("u".repeat(257))),
            (
                "tools",
                serde_json::json!(vec![serde_json::json!({}); MAX_CHAT_TOOLS + 1]),
            ),
            ("stop", serde_json::json!(["a", "b", "c", "d", "e"])),
            ("stop", serde_json::json!(7)),
        ] {
            let error = with(field, value.clone()).unwrap_err().to_string();
            assert!(error.starts_with(field), "{field}={value}: {error}");
        }
        for (field, value) in [
            ("n", serde_json::json!(MAX_CHAT_CHOICES)),
            ("max_tokens", serde_json::json!(MAX_CHAT_TOKENS)),
            ("temperature", serde_json::json!(0)),
            ("temperature", serde_json::json!(2)),
            ("temperature", Value::Null),
            ("seed", serde_json::json!(-5)),
            ("stop", serde_json::json!(["a", "b"])),
            ("model", Value::String("m".repeat(MAX_MODEL_BYTES))),
        ] {
            with(field, value.clone()).unwrap_or_else(|e| panic!("{field}={value}: {e}"));
        }
        let many = serde_json::json!({"messages": vec![serde_json::json!({"role": "user", "content": "x"}); MAX_CHAT_MESSAGES + 1]});
        let error = ChatRequest::parse(&serde_json::to_vec(&many).unwrap()).unwrap_err();
        assert!(error.to_string().starts_with("messages"), "{error}");
        let long = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x".repeat(MAX_CHAT_MESSAGE_BYTES / 2 + 1)},
            {"type": "text", "text": "x".repeat(MAX_CHAT_MESSAGE_BYTES / 2)},
        ]}]});
        let error = ChatRequest::parse(&serde_json::to_vec(&long).unwrap()).unwrap_err();
        assert!(
            error.to_string().starts_with("messages[0].content"),
            "{error}"
        );
    }

    /// Found by fuzzing: a number past 64 bits in a field Sluice does not
    /// read came out of the relay one unit in the last place off (serde's
    /// fast float parsing is not exact); it is relayed exactly now.
    #[test]
    fn numbers_are_relayed_exactly() {
        let body =
            br#"{"messages":[{"role":"user","content":"hi"}],"x":1111111111111111111110,"y":0.1}"#;
        let request = ChatRequest::parse(body).unwrap();
        let again = ChatRequest::parse(&serde_json::to_vec(&request).unwrap()).unwrap();
        assert_eq!(again, request);
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
