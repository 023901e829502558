//! The OpenAI Responses API (`POST /v1/responses`, `GET` and `DELETE
//! /v1/responses/{id}`), translated to the provider's chat completions,
//! which most OpenAI-compatible providers are limited to.
//!
//! **State lives in the shared store.** A stored response (`store`, true by
//! default) is a [`ResponseRecord`] holding its own turn (its input items
//! and its output items) and naming the response it continues
//! (`previous_response_id`). It is written once, whole, before its last
//! event or its body goes out, into the store every replica shares, so
//! `previous_response_id` and `GET` work on any replica, whichever made the
//! response and whether or not it still runs. A follow-up reads the chain
//! back (one query) and sends the whole conversation: nothing is left out
//! or cut, so a conversation is bounded instead, in turns
//! ([`MAX_TURNS`]) and in bytes ([`MAX_CONVERSATION_BYTES`]), and a
//! request past either is refused before the provider is asked.
//!
//! The provider is asked through the [`Relay`] (the same default model,
//! response cache, metrics and errors as `/v1/chat/completions`), always
//! streamed; [`ResponseEvents`] turns its chunks into the output and the
//! Responses API's events, and a whole response is the same run to its end.

mod events;
pub mod items;

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sluice_backends::ids::{new_id, now_rfc3339, now_unix};
use sluice_backends::responses::{ResponseRecord, ResponseStore};
use sluice_protocol::Usage;
use sluice_protocol::openai::{ChatRequest, StreamOptions};
use sluice_protocol::tools::floor_char_boundary;

pub use self::events::{Incomplete, MAX_OUTPUT_BYTES, ResponseEvents};
use self::items::{Item, MAX_ITEM_BYTES, chat_messages, check_pairs, parse_input};
use crate::SessionError;
use crate::relay::{Completion, Relay};

/// Most responses in one conversation (a chain of `previous_response_id`).
pub const MAX_TURNS: u32 = 1000;

/// Most bytes of items (every turn's input and output, as stored) in one
/// conversation; the turn that reaches it is answered, the next refused.
pub const MAX_CONVERSATION_BYTES: u64 = 2 * 1024 * 1024;

/// Most function tools a request may offer.
pub const MAX_TOOLS: usize = 128;

/// Most `metadata` pairs, and their keys' and values' lengths (OpenAI's).
const MAX_METADATA: (usize, usize, usize) = (16, 64, 512);

/// A checked request, ready to be answered.
pub struct Prepared {
    /// The provider's request.
    chat: ChatRequest,
    meta: Meta,
}

impl Prepared {
    /// Whether the client asked for a stream.
    pub fn stream(&self) -> bool {
        self.meta.stream
    }
}

/// What answering a response needs besides the provider's request.
struct Meta {
    /// The response's id, without `resp_`.
    id: String,
    user_id: String,
    model: String,
    /// This turn's input.
    input: Vec<Item>,
    /// The stored response it continues.
    parent: Option<Parent>,
    /// Request fields the response object repeats.
    echo: Map<String, Value>,
    stream: bool,
    store: bool,
    created: i64,
}

/// The stored response a request continues.
struct Parent {
    id: String,
    turns: u32,
    bytes: u64,
}

impl Meta {
    /// The response object as it stands, `status` given.
    fn object(
        &self,
        status: &str,
        output: &[Value],
        usage: Option<Usage>,
        incomplete: Option<Incomplete>,
    ) -> Value {
        let done = !matches!(status, "in_progress");
        let mut object = json!({
            "id": format!("resp_{}", self.id),
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": if done { output.to_vec() } else { Vec::new() },
            "error": null,
            "incomplete_details": incomplete.filter(|_| status == "incomplete").map(|reason| json!({
                "reason": match reason {
                    Incomplete::MaxOutputTokens => "max_output_tokens",
                    Incomplete::ContentFilter => "content_filter",
                }
            })),
            "store": self.store,
            "truncation": "disabled",
            "usage": usage.filter(|_| done).map(|u| json!({
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": u.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
            })),
        });
        for (key, value) in &self.echo {
            object[key] = value.clone();
        }
        object
    }
}

/// An output item as the response object shows it, with its id and
/// status.
fn output_item(item: &Item, id: &str, status: &str) -> Value {
    match item {
        Item::Message { text, .. } => json!({
            "id": id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }),
        Item::FunctionCall {
            call_id,
            name,
            arguments,
        } => json!({
            "id": id, "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": arguments,
        }),
        Item::FunctionCallOutput { call_id, output } => json!({
            "id": id, "type": "function_call_output", "call_id": call_id, "output": output,
        }),
    }
}

fn bad(message: impl Into<String>) -> SessionError {
    SessionError::BadRequest(message.into())
}

/// The stored id of a response id, if it can be one.
fn stored_id(response_id: &str) -> Option<&str> {
    response_id
        .strip_prefix("resp_")
        .filter(|id| id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

/// The request's checked optional fields: what goes to the provider (into
/// `extra`) and what the response repeats (into `echo`).
fn options(
    body: &Map<String, Value>,
    extra: &mut Map<String, Value>,
    echo: &mut Map<String, Value>,
) -> Result<(), SessionError> {
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    for name in ["background", "conversation", "prompt"] {
        if field(name).is_some_and(|v| v != &Value::Bool(false)) {
            return Err(bad(format!(
                "{name} is not supported here (previous_response_id is)"
            )));
        }
    }
    for (name, max) in [("temperature", 2.0), ("top_p", 1.0)] {
        let value = match field(name) {
            None => Value::Null,
            Some(v) => match v.as_f64() {
                Some(x) if (0.0..=max).contains(&x) => {
                    extra.insert(name.into(), v.clone());
                    v.clone()
                }
                _ => return Err(bad(format!("{name} must be a number from 0 to {max}"))),
            },
        };
        echo.insert(name.into(), value);
    }
    let max_output = match field("max_output_tokens") {
        None => Value::Null,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=1_000_000).contains(&n) => {
                extra.insert("max_tokens".into(), v.clone());
                v.clone()
            }
            _ => {
                return Err(bad(
                    "max_output_tokens must be an integer from 1 to 1000000",
                ));
            }
        },
    };
    echo.insert("max_output_tokens".into(), max_output);
    let metadata = match field("metadata") {
        None => json!({}),
        Some(Value::Object(pairs)) => {
            let (most, key_len, value_len) = MAX_METADATA;
            let fits = pairs.len() <= most
                && pairs.iter().all(|(k, v)| {
                    k.len() <= key_len && v.as_str().is_some_and(|v| v.len() <= value_len)
                });
            if !fits {
                return Err(bad(format!(
                    "metadata must have at most {most} pairs, keys of at most {key_len} \
                     bytes and string values of at most {value_len}"
                )));
            }
            Value::Object(pairs.clone())
        }
        Some(_) => return Err(bad("metadata must be an object")),
    };
    echo.insert("metadata".into(), metadata);
    let tools = chat_tools(field("tools"))?;
    let has_tools = !tools.is_empty();
    // Repeated as understood: each function tool's known fields only.
    let understood: Vec<Value> = tools
        .iter()
        .map(|tool| {
            let mut tool = tool["function"].clone();
            tool["type"] = "function".into();
            tool
        })
        .collect();
    echo.insert("tools".into(), understood.into());
    if has_tools {
        extra.insert("tools".into(), tools.into());
    }
    let choice = match field("tool_choice") {
        None => json!("auto"),
        Some(choice) => {
            if has_tools {
                extra.insert("tool_choice".into(), chat_tool_choice(choice)?);
            } else {
                chat_tool_choice(choice)?;
            }
            choice.clone()
        }
    };
    echo.insert("tool_choice".into(), choice);
    let parallel = match field("parallel_tool_calls") {
        None => json!(true),
        Some(Value::Bool(b)) => {
            if has_tools {
                extra.insert("parallel_tool_calls".into(), (*b).into());
            }
            json!(b)
        }
        Some(_) => return Err(bad("parallel_tool_calls must be true or false")),
    };
    echo.insert("parallel_tool_calls".into(), parallel);
    // The response repeats `text` as it was understood, not as it came.
    let format = match field("text") {
        None => json!({"type": "text"}),
        Some(text) if !text.is_object() => return Err(bad("text must be an object")),
        Some(text) => {
            let (format, chat) = text_format(&text["format"])?;
            if let Some(chat) = chat {
                extra.insert("response_format".into(), chat);
            }
            format
        }
    };
    echo.insert("text".into(), json!({"format": format}));
    Ok(())
}

/// `text.format`, checked (its known fields only), and as chat
/// completions' `response_format` (`None`: text).
fn text_format(format: &Value) -> Result<(Value, Option<Value>), SessionError> {
    match format["type"].as_str() {
        None if format.is_null() => Ok((json!({"type": "text"}), None)),
        Some("text") => Ok((json!({"type": "text"}), None)),
        Some("json_object") => Ok((
            json!({"type": "json_object"}),
            Some(json!({"type": "json_object"})),
        )),
        Some("json_schema") => {
            let name = format["name"]
                .as_str()
                .filter(|n| (1..=64).contains(&n.len()))
                .ok_or_else(|| bad("text.format.name must be a string of 1 to 64 bytes"))?;
            if !format["schema"].is_object() {
                return Err(bad("text.format.schema must be an object"));
            }
            let mut schema = json!({"name": name, "schema": format["schema"]});
            for key in ["strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema[key] = v.clone();
                }
            }
            let mut checked = schema.clone();
            checked["type"] = "json_schema".into();
            Ok((
                checked,
                Some(json!({"type": "json_schema", "json_schema": schema})),
            ))
        }
        _ => Err(bad(
            "text.format.type must be text, json_object or json_schema",
        )),
    }
}

/// The Responses API's function tools as chat-completions tools.
fn chat_tools(tools: Option<&Value>) -> Result<Vec<Value>, SessionError> {
    let Some(tools) = tools else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| bad("tools must be a list"))?;
    if tools.len() > MAX_TOOLS {
        return Err(bad(format!("tools lists more than {MAX_TOOLS} tools")));
    }
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool["type"] != "function" {
                return Err(bad(format!(
                    "tools[{i}]: only tools of type function are supported"
                )));
            }
            let name = tool["name"]
                .as_str()
                .filter(|n| sluice_protocol::tools::name_for_history(n) == *n)
                .ok_or_else(|| {
                    bad(format!(
                        "tools[{i}].name must be 1 to 64 letters, digits, _ or -"
                    ))
                })?;
            let mut function = json!({"name": name});
            for key in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function[key] = v.clone();
                }
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

fn chat_tool_choice(choice: &Value) -> Result<Value, SessionError> {
    match choice {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type") == Some(&json!("function")) => {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice needs a name"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad(
            "tool_choice must be auto, none, required or a function",
        )),
    }
}

impl Relay {
    /// Stores the Responses API's responses in `store`.
    pub fn with_responses(mut self, store: Arc<dyn ResponseStore>) -> Self {
        self.responses = Some(store);
        self
    }

    fn response_store(&self) -> Result<&Arc<dyn ResponseStore>, SessionError> {
        self.responses
            .as_ref()
            .ok_or_else(|| SessionError::Internal("no store for responses".into()))
    }

    /// Checks a `POST /v1/responses` body and reads the conversation it
    /// continues.
    pub async fn prepare_response(
        &self,
        user_id: &str,
        body: Value,
    ) -> Result<Prepared, SessionError> {
        let Value::Object(body) = body else {
            return Err(bad("the request must be a JSON object"));
        };
        let model = match body.get("model") {
            None | Some(Value::Null) => self.default_model.clone(),
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 256 => m.clone(),
            Some(_) => return Err(bad("model must be a string of 1 to 256 bytes")),
        };
        let flag = |name: &str, default: bool| match body.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(format!("{name} must be true or false"))),
        };
        let (stream, store) = (flag("stream", false)?, flag("store", true)?);
        let instructions = match body.get("instructions") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= MAX_ITEM_BYTES => Some(s.clone()),
            Some(_) => {
                return Err(bad(format!(
                    "instructions must be a string of at most {MAX_ITEM_BYTES} bytes"
                )));
            }
        };
        let input = parse_input(body.get("input"))?;
        let mut extra = Map::new();
        let mut echo = Map::new();
        options(&body, &mut extra, &mut echo)?;
        echo.insert("instructions".into(), json!(instructions));

        let input_bytes = serde_json::to_string(&input).map_or(0, |s| s.len()) as u64;
        let (mut conversation, parent) = match body.get("previous_response_id") {
            None | Some(Value::Null) => (Vec::new(), None),
            Some(Value::String(id)) => {
                let parent = self.owned_response(user_id, id).await?;
                check_room(&parent, input_bytes)?;
                (self.conversation(&parent, id).await?, Some(parent))
            }
            Some(_) => return Err(bad("previous_response_id must be a string")),
        };
        echo.insert(
            "previous_response_id".into(),
            body.get("previous_response_id")
                .cloned()
                .unwrap_or(Value::Null),
        );
        conversation.extend(input.iter().cloned());
        check_pairs(&conversation)?;
        let chat = ChatRequest {
            model: Some(model.clone()),
            messages: chat_messages(instructions.as_deref(), &conversation),
            stream: true,
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            extra,
        };
        Ok(Prepared {
            chat,
            meta: Meta {
                id: new_id(),
                user_id: user_id.to_owned(),
                model,
                input,
                parent: parent.map(|p| Parent {
                    id: p.id,
                    turns: p.turns,
                    bytes: p.bytes,
                }),
                echo,
                stream,
                store,
                created: now_unix(),
            },
        })
    }

    /// The items of the conversation up to `parent` (the stored response
    /// `response_id`, the user's), oldest first.
    async fn conversation(
        &self,
        parent: &ResponseRecord,
        response_id: &str,
    ) -> Result<Vec<Item>, SessionError> {
        let turns = self
            .response_store()?
            .conversation(&parent.id, parent.turns)
            .await?;
        if turns.len() != parent.turns as usize {
            return Err(bad(format!(
                "an earlier response of the conversation {} was deleted: it cannot be \
                 continued",
                &response_id[..floor_char_boundary(response_id, 48)]
            )));
        }
        let mut items = Vec::new();
        for turn in turns {
            let mut turn: Vec<Item> = serde_json::from_str(&turn).map_err(|e| {
                SessionError::Internal(format!("a stored response does not parse: {e}"))
            })?;
            items.append(&mut turn);
        }
        Ok(items)
    }

    /// Asks the provider: the response's events, from `response.created`.
    /// The provider's first chunk has arrived (or its failure is the error
    /// here).
    pub async fn respond(&self, prepared: Prepared) -> Result<ResponseEvents, SessionError> {
        let Prepared { chat, meta } = prepared;
        let relayed = self.chat(&meta.user_id, chat).await?;
        let Completion::Stream(chunks) = relayed.completion else {
            return Err(SessionError::Internal("a stream was asked for".into()));
        };
        Ok(ResponseEvents::new(self.clone(), chunks, meta))
    }

    /// Writes an answered response, when it is to be stored.
    async fn keep_response(
        &self,
        meta: &Meta,
        output: Vec<Item>,
        response: &Value,
    ) -> Result<(), SessionError> {
        if !meta.store {
            return Ok(());
        }
        let mut turn = meta.input.clone();
        turn.extend(output);
        let items = serde_json::to_string(&turn)
            .map_err(|e| SessionError::Internal(format!("items do not serialise: {e}")))?;
        let (parent, turns, bytes) = match &meta.parent {
            Some(p) => (Some(p.id.clone()), p.turns, p.bytes),
            None => (None, 0, 0),
        };
        let record = ResponseRecord {
            id: meta.id.clone(),
            user_id: meta.user_id.clone(),
            parent,
            turns: turns + 1,
            bytes: bytes + items.len() as u64,
            items,
            response: response.to_string(),
            created_at: now_rfc3339(),
        };
        self.response_store()?.create_response(record).await?;
        Ok(())
    }

    /// `GET /v1/responses/{id}`: the user's stored response, as it was
    /// answered.
    pub async fn get_response(&self, user_id: &str, id: &str) -> Result<Value, SessionError> {
        let record = self.owned_response(user_id, id).await?;
        serde_json::from_str(&record.response)
            .map_err(|e| SessionError::Internal(format!("a stored response does not parse: {e}")))
    }

    /// `DELETE /v1/responses/{id}`: deletes the user's stored response.
    pub async fn delete_response(&self, user_id: &str, id: &str) -> Result<Value, SessionError> {
        let record = self.owned_response(user_id, id).await?;
        if !self.response_store()?.delete_response(&record.id).await? {
            return Err(bad_id(id));
        }
        Ok(json!({"id": id, "object": "response", "deleted": true}))
    }

    async fn owned_response(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<ResponseRecord, SessionError> {
        let stored = stored_id(id).ok_or_else(|| bad_id(id))?;
        match self.response_store()?.get_response(stored).await? {
            Some(record) if record.user_id == user_id => Ok(record),
            _ => Err(bad_id(id)),
        }
    }
}

/// Refuses a turn that would take the conversation up to `parent` past
/// its limits, before the conversation is read.
fn check_room(parent: &ResponseRecord, input_bytes: u64) -> Result<(), SessionError> {
    if parent.turns >= MAX_TURNS {
        return Err(bad(format!(
            "this conversation has {MAX_TURNS} responses, its limit: start a new one"
        )));
    }
    let bytes = parent.bytes.saturating_add(input_bytes);
    if bytes > MAX_CONVERSATION_BYTES {
        return Err(bad(format!(
            "this conversation would be {bytes} bytes, over its limit of \
             {MAX_CONVERSATION_BYTES}: start a new one"
        )));
    }
    Ok(())
}

/// No such response for this user (unknown, another user's, not stored or
/// deleted), named.
fn bad_id(id: &str) -> SessionError {
    let end = floor_char_boundary(id, 48);
    SessionError::ResponseNotFound(id[..end].to_owned())
}
