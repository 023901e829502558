//! One response being answered: the provider's chunks become the output
//! items, and, as they do, the Responses API's typed stream events.
//!
//! The text streams as it comes (`response.output_text.delta`). Function
//! calls are joined by [`ToolCallAssembler`] (bounded like the agent's)
//! and each goes out whole once the provider has finished: its
//! `output_item.added`, its arguments in one delta, their `.done`, its
//! `output_item.done`. So every call event names a call that exists, once,
//! and items are numbered in the order they open. When `store` is on, the
//! response is written before its last event (`response.completed` or
//! `response.incomplete`) goes out, so a follow-up sent on reading that
//! event finds it on any replica.

use serde_json::{Value, json};
use sluice_backends::ids::new_id;
use sluice_backends::llm::LlmError;
use sluice_protocol::Usage;
use sluice_protocol::openai::ChunkView;
use sluice_protocol::tools::{AssembledCall, ToolCallAssembler};

use super::items::{Item, Speaker};
use super::{Prepared, output_item};
use crate::SessionError;
use crate::relay::{ChunkStream, Relay};

/// Most text one response keeps; the answer ends `incomplete` past it.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// How an answer ended, when it did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    /// `max_output_tokens`, or [`MAX_OUTPUT_BYTES`].
    MaxOutputTokens,
    /// The provider's content filter.
    ContentFilter,
}

/// The events of one response, `(type, event)`, each with its
/// `sequence_number`.
pub struct ResponseEvents {
    relay: Relay,
    chunks: Box<ChunkStream>,
    prepared: Prepared,
    /// The output items so far (JSON, as the response object shows them).
    output: Vec<Value>,
    /// The message item: its index in `output`, and its text.
    message: Option<(usize, String)>,
    calls: ToolCallAssembler,
    usage: Option<Usage>,
    incomplete: Option<Incomplete>,
    seq: u64,
    pending: Vec<(&'static str, Value)>,
    /// The response object it ended with, once it has.
    ended: Option<Value>,
    /// Why it failed, if it did.
    failure: Option<SessionError>,
}

impl ResponseEvents {
    pub(super) fn new(relay: Relay, chunks: Box<ChunkStream>, prepared: Prepared) -> Self {
        let mut events = Self {
            relay,
            chunks,
            prepared,
            output: Vec::new(),
            message: None,
            calls: ToolCallAssembler::default(),
            usage: None,
            incomplete: None,
            seq: 0,
            pending: Vec::new(),
            ended: None,
            failure: None,
        };
        let created = events.object("in_progress");
        events.push("response.created", json!({"response": created.clone()}));
        events.push("response.in_progress", json!({"response": created}));
        events
    }

    /// The next events; `None` once the last one went out.
    pub async fn next(&mut self) -> Option<Vec<(&'static str, Value)>> {
        while self.pending.is_empty() {
            if self.ended.is_some() {
                return None;
            }
            match self.chunks.next_batch().await {
                Some(batch) => {
                    for chunk in batch {
                        let taken = chunk.and_then(|raw| self.take(&raw));
                        if let Err(e) = taken {
                            self.fail(e);
                            break;
                        }
                        if self.incomplete == Some(Incomplete::MaxOutputTokens)
                            && self.text_len() >= MAX_OUTPUT_BYTES
                        {
                            // Enough: the provider is not read further.
                            self.finish().await;
                            break;
                        }
                    }
                }
                None => self.finish().await,
            }
        }
        Some(std::mem::take(&mut self.pending))
    }

    /// Runs to the end: the response object, or why it failed.
    pub async fn whole(mut self) -> Result<Value, SessionError> {
        while self.next().await.is_some() {}
        match (self.failure, self.ended) {
            (Some(e), _) => Err(e),
            (None, Some(response)) => Ok(response),
            (None, None) => Err(SessionError::Internal(
                "a response ended without an object".into(),
            )),
        }
    }

    fn text_len(&self) -> usize {
        self.message.as_ref().map_or(0, |(_, text)| text.len())
    }

    fn push(&mut self, kind: &'static str, mut event: Value) {
        event["type"] = kind.into();
        event["sequence_number"] = self.seq.into();
        self.seq += 1;
        self.pending.push((kind, event));
    }

    fn object(&self, status: &str) -> Value {
        self.prepared
            .object(status, &self.output, self.usage, self.incomplete)
    }

    /// Reads one chunk.
    fn take(&mut self, raw: &str) -> Result<(), SessionError> {
        let Ok(view) = serde_json::from_str::<ChunkView>(raw) else {
            return Ok(());
        };
        if let Some(usage) = view.usage {
            self.usage = Some(usage.into());
        }
        match view
            .choices
            .first()
            .and_then(|c| c.finish_reason.as_deref())
        {
            Some("length") => self.incomplete = Some(Incomplete::MaxOutputTokens),
            Some("content_filter") => self.incomplete = Some(Incomplete::ContentFilter),
            _ => {}
        }
        if let Some(text) = view.content().filter(|t| !t.is_empty()) {
            self.add_text(text);
        }
        self.calls.push(view.tool_calls()).map_err(|e| {
            SessionError::Upstream(LlmError::Upstream(format!(
                "the provider's tool calls were refused: {e}"
            )))
        })
    }

    fn add_text(&mut self, text: &str) {
        let room = MAX_OUTPUT_BYTES - self.text_len();
        let text = if text.len() > room {
            self.incomplete = Some(Incomplete::MaxOutputTokens);
            &text[..sluice_protocol::tools::floor_char_boundary(text, room)]
        } else {
            text
        };
        if self.message.is_none() {
            let index = self.output.len();
            let id = format!("msg_{}", new_id().replace('-', ""));
            self.output.push(output_item(
                &Item::Message {
                    role: Speaker::Assistant,
                    text: String::new(),
                },
                &id,
            ));
            self.message = Some((index, String::new()));
            let mut item = self.output[index].clone();
            item["status"] = "in_progress".into();
            item["content"] = json!([]);
            self.push(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            self.push(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
        }
        let (index, whole) = self.message.as_mut().expect("the message was opened");
        whole.push_str(text);
        let index = *index;
        let id = self.output[index]["id"].clone();
        self.push(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
        );
    }

    fn fail(&mut self, e: SessionError) {
        let mut response = self.object("failed");
        response["error"] = json!({"code": e.code().as_str(), "message": e.client_message()});
        self.push("response.failed", json!({"response": response.clone()}));
        self.ended = Some(response);
        self.failure = Some(e);
    }

    /// Closes the message, sends the calls, stores the response and sends
    /// its last event.
    async fn finish(&mut self) {
        if self.message.is_none() && self.calls.is_empty() {
            // An empty answer is still a message, as OpenAI's is.
            self.add_text("");
        }
        if let Some((index, text)) = self.message.clone() {
            let id = self.output[index]["id"].clone();
            self.output[index]["content"][0]["text"] = text.clone().into();
            self.push(
                "response.output_text.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
            );
            self.push(
                "response.content_part.done",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                       "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
            let item = self.output[index].clone();
            self.push(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
        }
        for call in std::mem::take(&mut self.calls).finish() {
            self.add_call(call);
        }
        let status = if self.incomplete.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        let response = self.object(status);
        if let Err(e) = self.store(&response).await {
            self.fail(e);
            return;
        }
        let kind = if self.incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.push(kind, json!({"response": response.clone()}));
        self.ended = Some(response);
    }

    fn add_call(&mut self, call: AssembledCall) {
        let index = self.output.len();
        let id = format!("fc_{}", new_id().replace('-', ""));
        let call_id = if call.id.is_empty() {
            format!("call_{}", new_id().replace('-', ""))
        } else {
            call.id
        };
        let item = output_item(
            &Item::FunctionCall {
                call_id,
                name: call.name,
                arguments: call.arguments,
            },
            &id,
        );
        let arguments = item["arguments"].clone();
        let mut opened = item.clone();
        opened["status"] = "in_progress".into();
        opened["arguments"] = "".into();
        self.push(
            "response.output_item.added",
            json!({"output_index": index, "item": opened}),
        );
        self.push(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": arguments}),
        );
        self.push(
            "response.function_call_arguments.done",
            json!({"item_id": id, "output_index": index, "arguments": arguments}),
        );
        self.push(
            "response.output_item.done",
            json!({"output_index": index, "item": item.clone()}),
        );
        self.output.push(item);
    }

    /// Writes the response, when it is to be stored.
    async fn store(&self, response: &Value) -> Result<(), SessionError> {
        let mut output = Vec::new();
        for item in &self.output {
            match item["type"].as_str() {
                Some("message") => {
                    let text = item["content"][0]["text"].as_str().unwrap_or_default();
                    if !text.is_empty() {
                        output.push(Item::Message {
                            role: Speaker::Assistant,
                            text: text.to_owned(),
                        });
                    }
                }
                Some("function_call") => output.push(Item::FunctionCall {
                    call_id: item["call_id"].as_str().unwrap_or_default().to_owned(),
                    name: item["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: item["arguments"].as_str().unwrap_or_default().to_owned(),
                }),
                _ => {}
            }
        }
        self.relay
            .keep_response(&self.prepared, output, response)
            .await
    }
}
