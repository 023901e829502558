//! The OpenAI Responses API (`POST /v1/responses`, `GET
//! /v1/responses/{id}`), translated to the provider's chat completions.
//!
//! **State lives in sessions.** A stored response (`store`, true by
//! default) is a Sluice session holding the whole conversation up to it:
//! the earlier turns (from `previous_response_id`'s session), this turn's
//! input, and its output (an assistant message, and a `tool` message per
//! function call, which the client answers in its next turn). It is
//! written once, before its id is returned, into the shared session store,
//! so any replica serves `previous_response_id` and `GET`, whichever
//! replica made it and whether or not it still runs. A response's id is
//! `resp_` and its session's id; the session is the user's like any other
//! (its messages can be read, or continued, as a session).
//!
//! The provider is asked through the [`Relay`] (the same default model,
//! response cache, metrics and errors as `/v1/chat/completions`), with the
//! conversation rebuilt by the sessions' own prompt code.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sluice_backends::ids::{new_id, now_rfc3339, now_unix};
use sluice_backends::store::{MessageRecord, SessionRecord, SessionStore, ToolRecord};
use sluice_protocol::openai::{ChatRequest, ChunkView, StreamOptions};
use sluice_protocol::tools::{ToolCallAssembler, bounded_result};
use sluice_protocol::{MessageStatus, Role, Usage};

use crate::relay::{ChunkStream, Completion, Relay};
use crate::session::prompt::{self, Offer};
use crate::{Continuation, SessionConfig, SessionError};

/// Most input items in one request.
pub const MAX_INPUT_ITEMS: usize = 1000;

/// Most function tools a request may offer.
pub const MAX_TOOLS: usize = 128;

/// A request, checked, with what answering it needs.
pub struct Prepared {
    /// The chat-completions request for the provider.
    chat: ChatRequest,
    /// The conversation so far plus this turn's input, as session messages.
    history: Vec<MessageRecord>,
    /// The session this response is stored as (its id gives the response's).
    record: SessionRecord,
    /// Echoed in the response object.
    echo: Map<String, Value>,
    store: bool,
    /// When it was created (Unix seconds).
    created: i64,
}

impl Prepared {
    /// The response's id.
    pub fn id(&self) -> String {
        format!("resp_{}", self.record.id)
    }

    /// Whether the client asked for a stream.
    pub fn stream(&self) -> bool {
        self.chat.stream
    }
}

fn bad(message: impl Into<String>) -> SessionError {
    SessionError::BadRequest(message.into())
}

/// The session id of a response id, if it is one.
fn session_of(response_id: &str) -> Option<&str> {
    response_id
        .strip_prefix("resp_")
        .filter(|id| id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

impl Relay {
    /// Checks a `POST /v1/responses` body and gathers the conversation it
    /// continues.
    pub async fn prepare_response(
        &self,
        user_id: &str,
        body: Value,
    ) -> Result<Prepared, SessionError> {
        let Value::Object(mut body) = body else {
            return Err(bad("the request must be a JSON object"));
        };
        let store_backend = self.store()?;
        let model = match body.get("model") {
            None | Some(Value::Null) => self.default_model().to_owned(),
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 256 => m.clone(),
            Some(_) => return Err(bad("model must be a string of 1 to 256 bytes")),
        };
        let instructions = match body.get("instructions") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= 32 * 1024 => Some(s.clone()),
            Some(_) => return Err(bad("instructions must be a string of at most 32 KiB")),
        };
        let store = body.get("store").and_then(Value::as_bool).unwrap_or(true);
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let mut history = match body.get("previous_response_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(id)) => {
                let Some(session_id) = session_of(id) else {
                    return Err(SessionError::NotFound);
                };
                match store_backend.get_session(session_id).await? {
                    Some(s) if s.user_id == user_id => store_backend.messages(session_id).await?,
                    _ => return Err(SessionError::NotFound),
                }
            }
            Some(_) => return Err(bad("previous_response_id must be a string")),
        };
        let record = SessionRecord {
            id: new_id(),
            user_id: user_id.to_owned(),
            title: String::new(),
            model: model.clone(),
            system_prompt: instructions.clone(),
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
            last_seq: 0,
            fence: 0,
            tools: Some(Vec::new()),
        };
        let generation = new_id();
        let mut record = record;
        let system = add_input(&mut history, &record, &generation, body.remove("input"))?;
        if !system.is_empty() {
            let mut prompt = record.system_prompt.take().unwrap_or_default();
            for text in system {
                if !prompt.is_empty() {
                    prompt.push_str("\n\n");
                }
                prompt.push_str(&text);
            }
            record.system_prompt = Some(prompt);
        }
        let tools = chat_tools(body.get("tools"))?;
        let mut config = SessionConfig {
            replica_id: String::new(),
            default_model: model.clone(),
            idle_timeout: std::time::Duration::ZERO,
            subscriber_max_bytes: 0,
            shutdown_grace: std::time::Duration::ZERO,
            temperature: None,
            continuation: Continuation::Off,
            agent_max_steps: 1,
        };
        config.temperature = body.get("temperature").and_then(Value::as_f64);
        let refs: Vec<&MessageRecord> = history.iter().collect();
        let offer = Offer {
            definitions: Value::Array(tools.clone()),
            last_step: false,
        };
        let mut chat = prompt::chat_request(&record, &refs, &config, None, false, &offer).request;
        chat.stream = stream;
        chat.stream_options = stream.then_some(StreamOptions {
            include_usage: true,
        });
        if let Some(choice) = body.get("tool_choice") {
            chat.extra
                .insert("tool_choice".into(), chat_tool_choice(choice)?);
        }
        for (from, to) in [
            ("top_p", "top_p"),
            ("max_output_tokens", "max_tokens"),
            ("parallel_tool_calls", "parallel_tool_calls"),
        ] {
            if let Some(value) = body.get(from).filter(|v| !v.is_null()) {
                chat.extra.insert(to.into(), value.clone());
            }
        }
        let mut echo = Map::new();
        for key in [
            "instructions",
            "metadata",
            "temperature",
            "top_p",
            "max_output_tokens",
            "previous_response_id",
        ] {
            echo.insert(key.into(), body.get(key).cloned().unwrap_or(Value::Null));
        }
        echo.insert(
            "tools".into(),
            body.get("tools").cloned().unwrap_or(json!([])),
        );
        echo.insert(
            "tool_choice".into(),
            body.get("tool_choice").cloned().unwrap_or(json!("auto")),
        );
        echo.insert(
            "parallel_tool_calls".into(),
            body.get("parallel_tool_calls")
                .cloned()
                .unwrap_or(json!(true)),
        );
        Ok(Prepared {
            chat,
            history,
            record,
            echo,
            store,
            created: now_unix(),
        })
    }

    /// Answers a prepared request in one piece: the response object.
    pub async fn respond(&self, user_id: &str, prepared: Prepared) -> Result<Value, SessionError> {
        let mut chat = prepared.chat.clone();
        chat.stream = false;
        let relayed = self.chat(user_id, chat).await?;
        let Completion::Whole(completion) = relayed.completion else {
            return Err(SessionError::Internal(
                "a whole completion was asked for".into(),
            ));
        };
        let choice = &completion["choices"][0];
        let text = choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut calls = Vec::new();
        if let Some(list) = choice["message"]["tool_calls"].as_array() {
            for call in list {
                calls.push(Call {
                    item_id: format!("fc_{}", new_id()),
                    call_id: call["id"].as_str().unwrap_or_default().to_owned(),
                    name: call["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: call["function"]["arguments"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
        let usage = serde_json::from_value::<sluice_protocol::openai::UsageView>(
            completion["usage"].clone(),
        )
        .ok()
        .map(Usage::from);
        let output = Output {
            message_id: format!("msg_{}", new_id()),
            text,
            calls,
            usage,
            incomplete: choice["finish_reason"] == "length",
            model: completion["model"]
                .as_str()
                .unwrap_or(&prepared.record.model)
                .to_owned(),
        };
        self.keep(&prepared, &output).await?;
        Ok(response_object(&prepared, &output, "completed"))
    }

    /// Answers a prepared request as the Responses API's stream: its events,
    /// each `(type, object)`. The stream's first chunk has arrived (or the
    /// provider's failure is the error here).
    pub async fn respond_streamed(
        &self,
        user_id: &str,
        prepared: Prepared,
    ) -> Result<ResponseEvents, SessionError> {
        let relayed = self.chat(user_id, prepared.chat.clone()).await?;
        let Completion::Stream(chunks) = relayed.completion else {
            return Err(SessionError::Internal("a stream was asked for".into()));
        };
        let mut events = ResponseEvents {
            relay: self.clone(),
            chunks,
            output: Output {
                message_id: format!("msg_{}", new_id()),
                text: String::new(),
                calls: Vec::new(),
                usage: None,
                incomplete: false,
                model: prepared.record.model.clone(),
            },
            prepared,
            assembler: ToolCallAssembler::default(),
            message_open: false,
            calls_open: 0,
            seq: 0,
            pending: Vec::new(),
            done: false,
        };
        let created = response_object(&events.prepared, &events.output, "in_progress");
        events.push("response.created", json!({"response": created.clone()}));
        events.push("response.in_progress", json!({"response": created}));
        Ok(events)
    }

    /// `GET /v1/responses/{id}`: a stored response of the user.
    pub async fn get_response(&self, user_id: &str, id: &str) -> Result<Value, SessionError> {
        let store = self.store()?;
        let session_id = session_of(id).ok_or(SessionError::NotFound)?;
        let record = match store.get_session(session_id).await? {
            Some(record) if record.user_id == user_id => record,
            _ => return Err(SessionError::NotFound),
        };
        let messages = store.messages(session_id).await?;
        let answer = messages
            .iter()
            .rfind(|m| m.role == Role::Assistant)
            .ok_or(SessionError::NotFound)?;
        let calls = messages
            .iter()
            .filter(|m| m.role == Role::Tool && m.generation_id == answer.generation_id)
            .filter_map(|m| m.tool.as_ref())
            .map(|t| Call {
                item_id: format!("fc_{}", t.call_id),
                call_id: t.call_id.clone(),
                name: t.name.clone(),
                arguments: t.arguments.clone(),
            })
            .collect();
        let output = Output {
            message_id: format!("msg_{}", answer.id),
            text: answer.content.clone(),
            calls,
            usage: answer.usage,
            incomplete: false,
            model: record.model.clone(),
        };
        let created = time::OffsetDateTime::parse(
            &record.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_or(0, |t| t.unix_timestamp());
        let mut echo = Map::new();
        echo.insert("instructions".into(), json!(record.system_prompt));
        let prepared = Prepared {
            chat: ChatRequest {
                model: Some(record.model.clone()),
                messages: Vec::new(),
                stream: false,
                stream_options: None,
                extra: Map::new(),
            },
            history: Vec::new(),
            record,
            echo,
            store: true,
            created,
        };
        Ok(response_object(&prepared, &output, "completed"))
    }

    /// Stores a finished response as its session (when `store`).
    async fn keep(&self, prepared: &Prepared, output: &Output) -> Result<(), SessionError> {
        if !prepared.store {
            return Ok(());
        }
        let store = self.store()?;
        let mut record = prepared.record.clone();
        record.title = prepared
            .history
            .iter()
            .rfind(|m| m.role == Role::User)
            .map(|m| m.content.chars().take(60).collect())
            .unwrap_or_default();
        let mut messages = prepared.history.clone();
        let generation = new_id();
        let now = now_rfc3339();
        messages.push(MessageRecord {
            id: new_id(),
            session_id: record.id.clone(),
            role: Role::Assistant,
            content: output.text.clone(),
            attachments: Vec::new(),
            status: MessageStatus::Complete,
            created_at: now.clone(),
            client_msg_id: None,
            generation_id: Some(generation.clone()),
            usage: output.usage,
            tool: None,
        });
        for call in &output.calls {
            messages.push(tool_message(
                &record,
                &generation,
                call,
                String::new(),
                output.text.len(),
            ));
        }
        for m in &mut messages {
            m.session_id.clone_from(&record.id);
        }
        store.create_session(record.clone()).await?;
        store.save(record, messages).await?;
        Ok(())
    }

    fn store(&self) -> Result<&Arc<dyn SessionStore>, SessionError> {
        self.session_store()
            .ok_or_else(|| SessionError::Internal("no session store for responses".into()))
    }
}

/// A function call of the output.
struct Call {
    item_id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// What the provider answered.
struct Output {
    message_id: String,
    text: String,
    calls: Vec<Call>,
    usage: Option<Usage>,
    incomplete: bool,
    model: String,
}

fn tool_message(
    record: &SessionRecord,
    generation: &str,
    call: &Call,
    result: String,
    offset: usize,
) -> MessageRecord {
    MessageRecord {
        id: new_id(),
        session_id: record.id.clone(),
        role: Role::Tool,
        content: result,
        attachments: Vec::new(),
        status: MessageStatus::Complete,
        created_at: now_rfc3339(),
        client_msg_id: None,
        generation_id: Some(generation.to_owned()),
        usage: None,
        tool: Some(ToolRecord {
            call_id: call.call_id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            step: 0,
            offset,
        }),
    }
}

/// The text of a Responses content (a string, or `input_text` /
/// `output_text` parts); image parts are refused here.
fn content_text(content: &Value) -> Result<String, SessionError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for part in parts {
                match part["type"].as_str() {
                    Some("input_text" | "output_text" | "text") => {
                        texts.push(part["text"].as_str().unwrap_or_default().to_owned())
                    }
                    Some(other) => {
                        return Err(bad(format!(
                            "content parts of type {:?} are not supported here (input_text is)",
                            &other[..other.len().min(40)]
                        )));
                    }
                    None => return Err(bad("a content part needs a type")),
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(bad("content must be a string or a list of parts")),
    }
}

/// Adds a request's `input` to the conversation as session messages, and
/// returns the text of its `system` and `developer` messages (which join
/// the instructions).
fn add_input(
    history: &mut Vec<MessageRecord>,
    record: &SessionRecord,
    generation: &str,
    input: Option<Value>,
) -> Result<Vec<String>, SessionError> {
    let mut system = Vec::new();
    let message = |role: Role, content: String, generation: &str| MessageRecord {
        id: new_id(),
        session_id: record.id.clone(),
        role,
        content,
        attachments: Vec::new(),
        status: MessageStatus::Complete,
        created_at: now_rfc3339(),
        client_msg_id: None,
        generation_id: Some(generation.to_owned()),
        usage: None,
        tool: None,
    };
    let items = match input {
        None | Some(Value::Null) => return Err(bad("input is required")),
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("input must be a string or a list of items")),
    };
    if items.is_empty() || items.len() > MAX_INPUT_ITEMS {
        return Err(bad(format!("input must have 1 to {MAX_INPUT_ITEMS} items")));
    }
    // Function calls the client replays (stateless use) belong to an
    // assistant message of their own generation.
    let mut replayed: Option<(String, usize)> = None;
    for item in items {
        match item["type"].as_str().unwrap_or("message") {
            "message" => {
                replayed = None;
                let text = content_text(&item["content"])?;
                match item["role"].as_str() {
                    Some("user") => history.push(message(Role::User, text, generation)),
                    Some("assistant") => {
                        let g = new_id();
                        history.push(message(Role::Assistant, text, &g));
                    }
                    Some("system" | "developer") => system.push(text),
                    _ => {
                        return Err(bad(
                            "a message's role must be user, assistant, system or developer",
                        ));
                    }
                }
            }
            "function_call" => {
                let call = Call {
                    item_id: String::new(),
                    call_id: item["call_id"]
                        .as_str()
                        .ok_or_else(|| bad("a function_call needs call_id"))?
                        .to_owned(),
                    name: item["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: item["arguments"].as_str().unwrap_or("{}").to_owned(),
                };
                let (g, offset) = match &replayed {
                    Some(r) => r.clone(),
                    None => {
                        let g = new_id();
                        history.push(message(Role::Assistant, String::new(), &g));
                        replayed = Some((g.clone(), 0));
                        (g, 0)
                    }
                };
                history.push(tool_message(record, &g, &call, String::new(), offset));
            }
            "function_call_output" => {
                let call_id = item["call_id"]
                    .as_str()
                    .ok_or_else(|| bad("a function_call_output needs call_id"))?;
                let output = match &item["output"] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                let call = history
                    .iter_mut()
                    .rfind(|m| m.tool.as_ref().is_some_and(|t| t.call_id == call_id))
                    .ok_or_else(|| {
                        bad(format!(
                            "no function call {:?} to answer",
                            &call_id[..call_id.len().min(64)]
                        ))
                    })?;
                call.content = bounded_result(output);
            }
            other => {
                return Err(bad(format!(
                    "input items of type {:?} are not supported",
                    &other[..other.len().min(40)]
                )));
            }
        }
    }
    Ok(system)
}

/// The Responses API's function tools as chat-completions tools.
fn chat_tools(tools: Option<&Value>) -> Result<Vec<Value>, SessionError> {
    let Some(tools) = tools.filter(|t| !t.is_null()) else {
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
        .map(|tool| {
            if tool["type"] != "function" {
                return Err(bad("only tools of type function are supported"));
            }
            let name = tool["name"].as_str().ok_or_else(|| bad("a function tool needs a name"))?;
            let mut function = json!({"name": name, "parameters": tool.get("parameters").cloned().unwrap_or(json!({"type": "object"}))});
            if let Some(description) = tool.get("description").filter(|d| d.is_string()) {
                function["description"] = description.clone();
            }
            if let Some(strict) = tool.get("strict").filter(|s| s.is_boolean()) {
                function["strict"] = strict.clone();
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

fn output_items(output: &Output, status: &str) -> Vec<Value> {
    let mut items = Vec::new();
    if !output.text.is_empty() || output.calls.is_empty() {
        items.push(json!({
            "id": output.message_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": output.text, "annotations": [], "logprobs": []}],
        }));
    }
    for call in &output.calls {
        items.push(json!({
            "id": call.item_id, "type": "function_call", "status": status,
            "call_id": call.call_id, "name": call.name, "arguments": call.arguments,
        }));
    }
    items
}

fn response_object(prepared: &Prepared, output: &Output, status: &str) -> Value {
    let done = status != "in_progress";
    let status = if done && output.incomplete {
        "incomplete"
    } else {
        status
    };
    let mut object = json!({
        "id": prepared.id(),
        "object": "response",
        "created_at": prepared.created,
        "status": status,
        "model": output.model,
        "output": if done { output_items(output, "completed") } else { Vec::new() },
        "error": null,
        "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "store": prepared.store,
        "text": {"format": {"type": "text"}},
        "usage": output.usage.filter(|_| done).map(|u| json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        })),
    });
    for (key, value) in &prepared.echo {
        object[key] = value.clone();
    }
    object
}

/// The Responses API's stream for one response: `(type, event)` pairs,
/// each event with its `sequence_number`.
pub struct ResponseEvents {
    relay: Relay,
    chunks: Box<ChunkStream>,
    prepared: Prepared,
    output: Output,
    assembler: ToolCallAssembler,
    message_open: bool,
    calls_open: usize,
    seq: u64,
    pending: Vec<(String, Value)>,
    done: bool,
}

impl ResponseEvents {
    fn push(&mut self, kind: &str, mut event: Value) {
        event["type"] = kind.into();
        event["sequence_number"] = self.seq.into();
        self.seq += 1;
        self.pending.push((kind.to_owned(), event));
    }

    /// The next events; `None` once `response.completed` (or a failure
    /// event) went out.
    pub async fn next(&mut self) -> Option<Vec<(String, Value)>> {
        while self.pending.is_empty() {
            if self.done {
                return None;
            }
            match self.chunks.next_batch().await {
                Some(batch) => {
                    for item in batch {
                        match item {
                            Ok(raw) => self.take(&raw),
                            Err(e) => {
                                self.done = true;
                                let failed = json!({"code": e.code().as_str(), "message": e.client_message()});
                                let mut response =
                                    response_object(&self.prepared, &self.output, "failed");
                                response["status"] = "failed".into();
                                response["error"] = failed;
                                self.push("response.failed", json!({"response": response}));
                                break;
                            }
                        }
                    }
                }
                None => self.finish().await,
            }
        }
        Some(std::mem::take(&mut self.pending))
    }

    fn take(&mut self, raw: &str) {
        let Ok(view) = serde_json::from_str::<ChunkView>(raw) else {
            return;
        };
        if let Some(usage) = view.usage {
            self.output.usage = Some(usage.into());
        }
        if let Some(model) = serde_json::from_str::<Value>(raw)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_owned))
        {
            self.output.model = model;
        }
        if view.finish_reason() == Some(sluice_protocol::FinishReason::Length) {
            self.output.incomplete = true;
        }
        if let Some(text) = view.content().filter(|t| !t.is_empty()) {
            if !self.message_open {
                self.message_open = true;
                let item = json!({"id": self.output.message_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []});
                self.push(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": item}),
                );
                self.push("response.content_part.added", json!({"item_id": self.output.message_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
            }
            self.output.text.push_str(text);
            let delta = json!({"item_id": self.output.message_id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": []});
            self.push("response.output_text.delta", delta);
        }
        let fragments = view.tool_calls().to_vec();
        if self.assembler.push(&fragments).is_err() {
            return;
        }
        for fragment in fragments {
            let output_index = usize::from(self.message_open) + fragment.index;
            while self.calls_open <= fragment.index {
                let item_id = format!("fc_{}", new_id());
                self.output.calls.push(Call {
                    item_id: item_id.clone(),
                    call_id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                self.calls_open += 1;
            }
            let call = &mut self.output.calls[fragment.index];
            let function = fragment.function.unwrap_or_default();
            let first = call.name.is_empty() && call.call_id.is_empty();
            if let Some(id) = fragment.id {
                call.call_id = id;
            }
            if let Some(name) = function.name.filter(|n| *n != call.name) {
                call.name.push_str(&name);
            }
            let (item_id, call_id, name) = (
                call.item_id.clone(),
                call.call_id.clone(),
                call.name.clone(),
            );
            if first {
                let item = json!({"id": item_id, "type": "function_call", "status": "in_progress", "call_id": call_id, "name": name, "arguments": ""});
                self.push(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                );
            }
            if let Some(piece) = function.arguments.filter(|p| !p.is_empty()) {
                self.output.calls[fragment.index].arguments.push_str(&piece);
                self.push(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": output_index, "delta": piece}),
                );
            }
        }
    }

    async fn finish(&mut self) {
        self.done = true;
        if self.message_open || self.output.calls.is_empty() {
            let text = self.output.text.clone();
            let id = self.output.message_id.clone();
            if !self.message_open {
                let item = json!({"id": id, "type": "message", "role": "assistant", "status": "in_progress", "content": []});
                self.push(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": item}),
                );
                self.push("response.content_part.added", json!({"item_id": id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
                self.message_open = true;
            }
            self.push("response.output_text.done", json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}));
            let part = json!({"type": "output_text", "text": text, "annotations": []});
            self.push(
                "response.content_part.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "part": part}),
            );
            let item = output_items(
                &Output {
                    calls: Vec::new(),
                    ..self.output_clone()
                },
                "completed",
            )[0]
            .clone();
            self.push(
                "response.output_item.done",
                json!({"output_index": 0, "item": item}),
            );
        }
        let base = usize::from(self.message_open);
        for call in &mut self.output.calls {
            if call.call_id.is_empty() {
                call.call_id = format!("call_{}", new_id().replace('-', ""));
            }
        }
        let calls: Vec<(String, String, String, String)> = self
            .output
            .calls
            .iter()
            .map(|c| {
                (
                    c.item_id.clone(),
                    c.call_id.clone(),
                    c.name.clone(),
                    c.arguments.clone(),
                )
            })
            .collect();
        for (i, (item_id, call_id, name, arguments)) in calls.into_iter().enumerate() {
            self.push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": base + i, "arguments": arguments}),
            );
            let item = json!({"id": item_id, "type": "function_call", "status": "completed", "call_id": call_id, "name": name, "arguments": arguments});
            self.push(
                "response.output_item.done",
                json!({"output_index": base + i, "item": item}),
            );
        }
        if let Err(e) = self.relay.keep(&self.prepared, &self.output).await {
            let mut response = response_object(&self.prepared, &self.output, "failed");
            response["status"] = "failed".into();
            response["error"] = json!({"code": e.code().as_str(), "message": e.client_message()});
            self.push("response.failed", json!({"response": response}));
            return;
        }
        let response = response_object(&self.prepared, &self.output, "completed");
        self.push("response.completed", json!({"response": response}));
    }

    fn output_clone(&self) -> Output {
        Output {
            message_id: self.output.message_id.clone(),
            text: self.output.text.clone(),
            calls: Vec::new(),
            usage: self.output.usage,
            incomplete: self.output.incomplete,
            model: self.output.model.clone(),
        }
    }
}
