//! The agent loop: a step whose stream ends with tool calls saves them,
//! runs them, saves each result, and asks the provider again, until the
//! model answers in text or the step limit is reached.
//!
//! Durability comes first at each turn: the calls (with the answer so far)
//! are stored as `tool` messages, `streaming`, before any of them runs and
//! before clients hear of them (`tool_call`); each result is stored before
//! it is announced (`tool_result`) and before the next step asks the
//! provider. So a replica that takes the session over finds every call
//! that may have run: a finished one is never run again, and one that was
//! running is reported to the model as interrupted (see `recovery`).

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use actix::prelude::*;
use sluice_backends::BackendError;
use sluice_backends::ErrorKind;
use sluice_backends::ids::{new_id, now_rfc3339};
use sluice_backends::store::{MessageRecord, ToolRecord};
use sluice_protocol::event::EventError;
use sluice_protocol::{EventBody, FinishReason, MessageStatus, Role};

use super::generation::{Call, Work, add_usage};
use super::recovery::Retirement;
use super::{Phase, SessionActor, ToolDone};
use crate::SessionError;
use crate::tools::{CANCELLED, INTERRUPTED, Outcome, ToolContext};
use sluice_protocol::tools::MAX_TOOL_CALLS_PER_GENERATION;

impl SessionActor {
    /// The current step's stream ended with tool calls: they are saved as
    /// `tool` messages with the answer so far, then run. On the last step
    /// (the model was told to answer in text) they are not run, and the
    /// generation ends `length`.
    pub(super) fn call_tools(&mut self, ctx: &mut Context<Self>) {
        let max_steps = self.deps.config.agent_max_steps;
        let session_id = self.record.id.clone();
        let Phase::Generating(generation) = &mut self.phase else {
            return;
        };
        let mut calls = std::mem::take(&mut generation.calls).finish();
        if calls.is_empty() {
            // Fragments that named no call at all: the step simply ended.
            let reason = generation.finish.unwrap_or(FinishReason::Stop);
            return self.finish(ctx, reason, None);
        }
        if generation.finish == Some(FinishReason::Length) {
            // Cut off by the provider's token limit: the calls may be cut
            // too, so none runs.
            return self.finish(ctx, FinishReason::Length, None);
        }
        generation.usage = add_usage(generation.usage, generation.step_usage.take());
        if generation.step + 1 >= max_steps {
            tracing::warn!(session_id = %session_id, steps = max_steps, "the agent reached its step limit with tool calls left");
            return self.finish(ctx, FinishReason::Length, None);
        }
        let generation_id = generation.id.clone();
        let made: Vec<&str> = self
            .calls_of(&generation_id)
            .filter_map(|m| m.tool.as_ref().map(|t| t.call_id.as_str()))
            .collect();
        if made.len() + calls.len() > MAX_TOOL_CALLS_PER_GENERATION {
            tracing::warn!(session_id = %session_id, "the agent reached its limit of tool calls in one answer");
            return self.finish(ctx, FinishReason::Length, None);
        }
        // Every call of the answer gets an id of its own, so results, events
        // and the provider's history never mix two calls up.
        let mut seen: HashSet<String> = made.iter().map(|id| (*id).to_owned()).collect();
        for call in &mut calls {
            if call.id.is_empty() || !seen.insert(call.id.clone()) {
                call.id = format!("call_{}", new_id().replace('-', ""));
                seen.insert(call.id.clone());
            }
        }
        let Phase::Generating(generation) = &mut self.phase else {
            return;
        };
        generation.work = Work::SavingCalls;
        let index = generation.message_index;
        let step = generation.step;
        let offset = self.messages[index].content.len();
        let now = now_rfc3339();
        let mut saved = vec![self.messages[index].clone()];
        for call in calls {
            let message = MessageRecord {
                id: new_id(),
                session_id: session_id.clone(),
                role: Role::Tool,
                content: String::new(),
                attachments: Vec::new(),
                status: MessageStatus::Streaming,
                created_at: now.clone(),
                client_msg_id: None,
                generation_id: Some(generation_id.to_string()),
                usage: None,
                tool: Some(ToolRecord {
                    call_id: call.id,
                    name: call.name,
                    arguments: call.arguments,
                    step,
                    offset,
                }),
            };
            saved.push(message.clone());
            self.messages.push(message);
        }
        let record = self.record_now();
        let write = self.writer.save_acked(record, saved);
        ctx.spawn(write.into_actor(self).map(move |saved, act, ctx| {
            act.on_calls_saved(ctx, generation_id, saved);
        }));
    }

    /// The step's calls are stored: announce and run each.
    fn on_calls_saved(
        &mut self,
        ctx: &mut Context<Self>,
        generation_id: Arc<str>,
        saved: Result<(), BackendError>,
    ) {
        match &self.phase {
            Phase::Generating(g)
                if g.id == generation_id && matches!(g.work, Work::SavingCalls) => {}
            // Cancelled or stopping meanwhile: nothing runs.
            _ => return,
        }
        // A call that is not stored must not run: a takeover would not know
        // it had.
        if !self.written(ctx, saved, "the tool calls", false) {
            return;
        }
        let pending: Vec<(String, ToolRecord)> = self
            .calls_of(&generation_id)
            .filter(|m| m.status == MessageStatus::Streaming)
            .filter_map(|m| Some((m.id.clone(), m.tool.clone()?)))
            .collect();
        let mut calls = Vec::with_capacity(pending.len());
        for (message_id, tool) in pending {
            self.emit(EventBody::ToolCall {
                generation_id: generation_id.to_string(),
                call_id: tool.call_id.clone(),
                name: tool.name.clone(),
                arguments: tool.to_call().arguments,
            });
            let task = self.spawn_tool(ctx, generation_id.clone(), message_id.clone(), tool);
            calls.push(Call {
                message_id,
                task: Some(task),
            });
        }
        if let Phase::Generating(g) = &mut self.phase {
            g.work = Work::Calling(calls);
        }
    }

    /// Runs one call in a task of its own, which reports with [`ToolDone`].
    fn spawn_tool(
        &self,
        ctx: &Context<Self>,
        generation_id: Arc<str>,
        message_id: String,
        tool: ToolRecord,
    ) -> tokio::task::JoinHandle<()> {
        let tools = self.deps.tools.clone();
        let allowed = self.record.tools.clone();
        let context = ToolContext {
            user_id: self.record.user_id.clone(),
            files: self.deps.files.clone(),
        };
        let addr = ctx.address();
        actix_rt::spawn(async move {
            let run = tools.run(allowed.as_deref(), context, &tool.name, &tool.arguments);
            // A tool that panics still answers, or its step would wait forever.
            let outcome = AssertUnwindSafe(run)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(tool = %tool.name, "a tool panicked");
                    Outcome::error("The tool failed unexpectedly.")
                });
            addr.do_send(ToolDone {
                generation_id,
                message_id,
                outcome,
            });
        })
    }

    /// A call answered: its result is saved, then announced.
    pub(super) fn on_tool_done(&mut self, ctx: &mut Context<Self>, done: ToolDone) {
        let Phase::Generating(generation) = &mut self.phase else {
            return;
        };
        if generation.id != done.generation_id {
            return;
        }
        let Work::Calling(calls) = &mut generation.work else {
            return;
        };
        let Some(call) = calls
            .iter_mut()
            .find(|c| c.message_id == done.message_id && c.task.is_some())
        else {
            return;
        };
        call.task = None;
        let Some(message) = self.messages.iter_mut().rfind(|m| m.id == done.message_id) else {
            return;
        };
        message.content = done.outcome.content;
        message.status = if done.outcome.is_error {
            MessageStatus::Error
        } else {
            MessageStatus::Complete
        };
        let message = message.clone();
        self.touch();
        let record = self.record_now();
        let write = self.writer.save_acked(record, vec![message]);
        let (generation_id, message_id) = (done.generation_id, done.message_id);
        ctx.spawn(write.into_actor(self).map(move |saved, act, ctx| {
            act.on_result_saved(ctx, &generation_id, &message_id, saved);
        }));
    }

    /// A result is stored: announce it; once every call of the step is,
    /// ask the provider again.
    fn on_result_saved(
        &mut self,
        ctx: &mut Context<Self>,
        generation_id: &Arc<str>,
        message_id: &str,
        saved: Result<(), BackendError>,
    ) {
        match &self.phase {
            Phase::Generating(g)
                if g.id == *generation_id && matches!(g.work, Work::Calling(_)) => {}
            _ => return,
        }
        // A result the store could not take now goes with the next write;
        // meanwhile a takeover would report the call as interrupted, which
        // is still true to the model: it ran once, and nobody knows it
        // finished.
        if !self.written(ctx, saved, "a tool result", true) {
            return;
        }
        let Phase::Generating(generation) = &mut self.phase else {
            return;
        };
        let Work::Calling(calls) = &mut generation.work else {
            return;
        };
        calls.retain(|c| c.message_id != message_id);
        let step_done = calls.is_empty();
        self.announce_result(generation_id, message_id);
        if step_done {
            self.next_step(ctx);
        }
    }

    /// Whether the loop goes on after a step's write of `what`: a fenced one
    /// retires the actor (another replica owns the session), one the store
    /// refused for good ends the generation, and one that may land with the
    /// next write goes on if `later_is_fine`.
    fn written(
        &mut self,
        ctx: &mut Context<Self>,
        saved: Result<(), BackendError>,
        what: &str,
        later_is_fine: bool,
    ) -> bool {
        let e = match saved {
            Ok(()) => return true,
            Err(e) if e.kind == ErrorKind::Fenced => {
                self.retire(ctx, Retirement::Lost);
                return false;
            }
            Err(e) if later_is_fine && e.is_retryable() => {
                tracing::warn!(session_id = %self.record.id, error = %e, "{what} was not saved yet");
                return true;
            }
            Err(e) => SessionError::from(e),
        };
        self.fail(
            ctx,
            EventError {
                code: e.code(),
                message: format!("{what} could not be saved: {}", e.client_message()),
            },
        );
        false
    }

    /// Emits the `tool_result` of the tool message `message_id`.
    fn announce_result(&mut self, generation_id: &str, message_id: &str) {
        let Some(message) = self.messages.iter().rfind(|m| m.id == message_id) else {
            return;
        };
        let Some(tool) = &message.tool else {
            return;
        };
        let body = EventBody::ToolResult {
            generation_id: generation_id.to_owned(),
            call_id: tool.call_id.clone(),
            content: message.content.clone(),
            is_error: message.status != MessageStatus::Complete,
        };
        self.emit(body);
    }

    /// Every call of the step answered: the provider is asked again, with
    /// the results.
    fn next_step(&mut self, ctx: &mut Context<Self>) {
        let Phase::Generating(generation) = &mut self.phase else {
            return;
        };
        generation.step += 1;
        generation.finish = None;
        generation.step_started = std::time::Instant::now();
        let (id, index, step) = (
            generation.id.clone(),
            generation.message_index,
            generation.step,
        );
        self.deps.metrics.agent_steps_total.inc();
        let prompt = self.request_for(index, false, step);
        let task = self.spawn_stream(ctx, &id, prompt, None);
        if let Phase::Generating(generation) = &mut self.phase {
            generation.work = Work::Streaming(task);
        }
    }

    /// The tool messages of the generation `generation_id`, wherever they
    /// are in the conversation (replicas' clocks order stored ids).
    fn calls_of<'a>(
        &'a self,
        generation_id: &'a str,
    ) -> impl Iterator<Item = &'a MessageRecord> + 'a {
        self.messages
            .iter()
            .filter(move |m| m.tool.is_some() && m.generation_id.as_deref() == Some(generation_id))
    }

    /// Settles the tool calls of the generation `generation_id` that have
    /// not answered, as the generation ends with `status`: each gets it,
    /// with what the model would be told, and a `tool_result` (after its
    /// `tool_call`, unless that went out already: `announced`), so what
    /// clients saw matches what is stored; `answered` calls (saved, not yet
    /// announced) are announced. Returns the settled messages, to be saved.
    pub(super) fn settle_calls(
        &mut self,
        generation_id: &str,
        status: MessageStatus,
        answered: &[String],
        announced: bool,
    ) -> Vec<MessageRecord> {
        for message_id in answered {
            self.announce_result(generation_id, message_id);
        }
        let (status, content) = match status {
            MessageStatus::Cancelled => (MessageStatus::Cancelled, CANCELLED),
            MessageStatus::Error => (
                MessageStatus::Error,
                "The answer ended with an error before the tool answered.",
            ),
            _ => (MessageStatus::Interrupted, INTERRUPTED),
        };
        let mut settled = Vec::new();
        for message in &mut self.messages {
            if message.status == MessageStatus::Streaming
                && message.generation_id.as_deref() == Some(generation_id)
                && message.tool.is_some()
            {
                message.status = status;
                content.clone_into(&mut message.content);
                settled.push(message.clone());
            }
        }
        for message in &settled {
            if !announced && let Some(tool) = &message.tool {
                self.emit(EventBody::ToolCall {
                    generation_id: generation_id.to_owned(),
                    call_id: tool.call_id.clone(),
                    name: tool.name.clone(),
                    arguments: tool.to_call().arguments,
                });
            }
            self.announce_result(generation_id, &message.id);
        }
        settled
    }
}
