//! One response being answered: the provider's chunks become the output
//! items, and, as they do, the Responses API's typed stream events.
//!
//! The text streams as it comes (`response.output_text.delta`; a
//! provider's `refusal` is text too). Function calls are joined by
//! [`ToolCallAssembler`] (bounded like the agent's) and each goes out whole
//! once the provider has finished: its `output_item.added`, its arguments
//! in one delta, their `.done`, its `output_item.done`. So every call event
//! names a call that exists, once, and items are numbered in the order
//! they open. Each call gets an id of Sluice's own (`call_<uuid>`), so a
//! provider that numbers its calls per turn cannot make two calls of one
//! conversation share an id. When `store` is on, the response is written
//! before its last event (`response.completed` or `response.incomplete`)
//! goes out, so a follow-up sent on reading that event finds it on any
//! replica.

use serde_json::{Value, json};
use sluice_backends::ids::new_id;
use sluice_backends::llm::LlmError;
use sluice_protocol::Usage;
use sluice_protocol::openai::ChunkView;
use sluice_protocol::tools::{ToolCallAssembler, floor_char_boundary};

use super::items::{Item, Speaker};
use super::{Meta, output_item};
use crate::SessionError;
use crate::relay::{ChunkStream, Relay};

/// Most text one response keeps; past it the provider is no longer read
/// and the response ends `incomplete`.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Why an answer ended `incomplete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    /// `max_output_tokens`, or [`MAX_OUTPUT_BYTES`].
    MaxOutputTokens,
    /// The provider's content filter.
    ContentFilter,
}

/// Where a response is.
enum State {
    /// The provider is being read.
    Running,
    /// Its last event went out with this object.
    Ended(Value),
    /// It failed (its `response.failed` event went out), and why.
    Failed(SessionError),
}

/// The events of one response, `(type, event)`, each with its
/// `sequence_number`.
pub struct ResponseEvents {
    relay: Relay,
    chunks: Box<ChunkStream>,
    meta: Meta,
    /// The output so far, in the order the items opened, with their ids.
    items: Vec<(String, Item)>,
    /// The message item's index while it is open.
    open: Option<usize>,
    calls: ToolCallAssembler,
    usage: Option<Usage>,
    incomplete: Option<Incomplete>,
    /// The text reached [`MAX_OUTPUT_BYTES`].
    capped: bool,
    seq: u64,
    pending: Vec<(&'static str, Value)>,
    state: State,
}

fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", new_id().replace('-', ""))
}

impl ResponseEvents {
    pub(super) fn new(relay: Relay, chunks: Box<ChunkStream>, meta: Meta) -> Self {
        let mut events = Self {
            relay,
            chunks,
            meta,
            items: Vec::new(),
            open: None,
            calls: ToolCallAssembler::default(),
            usage: None,
            incomplete: None,
            capped: false,
            seq: 0,
            pending: Vec::new(),
            state: State::Running,
        };
        let created = events.object("in_progress");
        events.push("response.created", json!({"response": created.clone()}));
        events.push("response.in_progress", json!({"response": created}));
        events
    }

    /// The next events; `None` once the last one went out.
    pub async fn next(&mut self) -> Option<Vec<(&'static str, Value)>> {
        while self.pending.is_empty() {
            if !matches!(self.state, State::Running) {
                return None;
            }
            let Some(batch) = self.chunks.next_batch().await else {
                self.finish().await;
                break;
            };
            for chunk in batch {
                if let Err(e) = chunk.and_then(|raw| self.take(&raw)) {
                    self.fail(e);
                    break;
                }
                if self.capped {
                    self.finish().await;
                    break;
                }
            }
        }
        Some(std::mem::take(&mut self.pending))
    }

    /// Runs to the end: the response object, or why it failed.
    pub async fn whole(mut self) -> Result<Value, SessionError> {
        while self.next().await.is_some() {}
        match self.state {
            State::Ended(response) => Ok(response),
            State::Failed(e) => Err(e),
            State::Running => Err(SessionError::Internal(
                "a response stopped running without an end".into(),
            )),
        }
    }

    fn push(&mut self, kind: &'static str, mut event: Value) {
        event["type"] = kind.into();
        event["sequence_number"] = self.seq.into();
        self.seq += 1;
        self.pending.push((kind, event));
    }

    /// The response object as it stands, with `status`.
    fn object(&self, status: &str) -> Value {
        let output: Vec<Value> = self
            .items
            .iter()
            .map(|(id, item)| output_item(item, id, self.item_status(item, status)))
            .collect();
        self.meta
            .object(status, &output, self.usage, self.incomplete)
    }

    /// An item's status in a response with `status`: the message is as
    /// whole as the response; a call is only ever sent whole.
    fn item_status(&self, item: &Item, status: &str) -> &'static str {
        match (item, status) {
            (Item::Message { .. }, "in_progress") => "in_progress",
            (Item::Message { .. }, "incomplete" | "failed") => "incomplete",
            _ => "completed",
        }
    }

    /// Reads one chunk.
    fn take(&mut self, raw: &str) -> Result<(), SessionError> {
        let Ok(view) = serde_json::from_str::<ChunkView>(raw) else {
            return Ok(());
        };
        if let Some(usage) = view.usage {
            self.usage = Some(usage.into());
        }
        let Some(choice) = view.choices.first() else {
            return Ok(());
        };
        match choice.finish_reason.as_deref() {
            Some("length") => self.incomplete = Some(Incomplete::MaxOutputTokens),
            Some("content_filter") => self.incomplete = Some(Incomplete::ContentFilter),
            _ => {}
        }
        for text in [&choice.delta.content, &choice.delta.refusal]
            .into_iter()
            .flatten()
        {
            self.add_text(text);
        }
        self.calls.push(view.tool_calls()).map_err(|e| {
            SessionError::Upstream(LlmError::Upstream(format!(
                "the provider's tool calls were refused: {e}"
            )))
        })
    }

    /// Opens the message item.
    fn open_message(&mut self) -> usize {
        let index = self.items.len();
        let id = item_id("msg");
        self.items.push((
            id.clone(),
            Item::Message {
                role: Speaker::Assistant,
                text: String::new(),
            },
        ));
        self.open = Some(index);
        let mut item = output_item(&self.items[index].1, &id, "in_progress");
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
        index
    }

    /// Adds text to the message, up to [`MAX_OUTPUT_BYTES`] in all.
    fn add_text(&mut self, text: &str) {
        if text.is_empty() || self.capped {
            return;
        }
        let index = match self.open {
            Some(index) => index,
            None => self.open_message(),
        };
        let (id, Item::Message { text: whole, .. }) = &mut self.items[index] else {
            unreachable!("the open item is the message");
        };
        let room = MAX_OUTPUT_BYTES.saturating_sub(whole.len());
        let text = if text.len() > room {
            self.capped = true;
            self.incomplete = Some(Incomplete::MaxOutputTokens);
            &text[..floor_char_boundary(text, room)]
        } else {
            text
        };
        whole.push_str(text);
        let id = id.clone();
        if !text.is_empty() {
            self.push(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
            );
        }
    }

    /// Closes the message, if it is open, as a response with `status`
    /// shows it.
    fn close_message(&mut self, status: &str) {
        let Some(index) = self.open.take() else {
            return;
        };
        let (id, message) = &self.items[index];
        let text = match message {
            Item::Message { text, .. } => text.clone(),
            _ => unreachable!("the open item is the message"),
        };
        let item = output_item(message, id, self.item_status(message, status));
        let id = id.clone();
        self.push(
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
        );
        self.push(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                   "part": {"type": "output_text", "text": text, "annotations": []}}),
        );
        self.push(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
    }

    fn fail(&mut self, e: SessionError) {
        self.close_message("failed");
        let mut response = self.object("failed");
        response["error"] = json!({"code": e.code().as_str(), "message": e.client_message()});
        self.push("response.failed", json!({"response": response}));
        self.state = State::Failed(e);
    }

    /// Closes the message, sends the calls, stores the response and sends
    /// its last event.
    async fn finish(&mut self) {
        let calls = std::mem::take(&mut self.calls).finish();
        if self.items.is_empty() && calls.is_empty() {
            // An empty answer is still a message, as OpenAI's is.
            self.open_message();
        }
        let status = if self.incomplete.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        self.close_message(status);
        for call in calls {
            self.add_call(Item::FunctionCall {
                call_id: item_id("call"),
                name: call.name,
                arguments: call.arguments,
            });
        }
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
        self.state = State::Ended(response);
    }

    /// Sends a whole function call.
    fn add_call(&mut self, call: Item) {
        let index = self.items.len();
        let id = item_id("fc");
        let item = output_item(&call, &id, "completed");
        let Item::FunctionCall { arguments, .. } = &call else {
            unreachable!("a call is a call");
        };
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
            json!({"output_index": index, "item": item}),
        );
        self.items.push((id, call));
    }

    /// Writes the response, when it is to be stored: its output, less an
    /// empty message.
    async fn store(&self, response: &Value) -> Result<(), SessionError> {
        let output = self
            .items
            .iter()
            .map(|(_, item)| item)
            .filter(|item| !matches!(item, Item::Message { text, .. } if text.is_empty()))
            .cloned()
            .collect();
        self.relay.keep_response(&self.meta, output, response).await
    }
}
