//! A generation, from the send that starts it to the `generation_end` that
//! says its answer is durable.
//!
//! Phases: a send saves its messages ([`Saving`]), then the provider's
//! stream runs in a task that feeds chunks back ([`Generation`]), then the
//! final write lands before `generation_end` goes out ([`Finishing`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use sluice_backends::ErrorKind;
use sluice_backends::ids::{new_id, now_rfc3339};
use sluice_backends::llm::{CHUNK_BATCHING, LlmChunk, LlmError, ready_batches};
use sluice_backends::log::EncodedEvent;
use sluice_backends::store::MessageRecord;
use sluice_protocol::event::{EventError, Source};
use sluice_protocol::rest::{SendAccepted, SendMessage};
use sluice_protocol::tools::{AssembleError, ToolCallAssembler};
use sluice_protocol::{
    ErrorCode, Event, EventBody, FinishReason, MessageStatus, Partial, Role, Usage,
};
use tokio::sync::oneshot;

use super::prompt::{self, Offer, Prompt};
use super::recovery::Retirement;
use super::{GenerationStep, Phase, SessionActor};
use crate::cache::Recorder;
use crate::error::SessionError;
use crate::limits::SlotGuard;
use crate::outbox::OutboxCmd;
use crate::tools::Tools;

/// How often a streaming assistant message is checkpointed to the store.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Longest automatic title, in characters.
const AUTO_TITLE_CHARS: usize = 60;

/// A send whose messages are being saved.
pub(super) struct Saving {
    /// The sender's idempotency key: a retry with it gets `accepted` again.
    client_msg_id: Option<String>,
    /// The answer the send gets once saved.
    accepted: SendAccepted,
    /// A cancel arrived meanwhile: the generation ends as soon as it starts.
    cancelled: bool,
}

/// A generation in progress.
pub(super) struct Generation {
    pub(super) id: Arc<str>,
    /// Index of its assistant message in `messages`.
    pub(super) message_index: usize,
    /// Which provider request this is (from 0): each step after the first
    /// follows the tool calls of the one before.
    pub(super) step: u32,
    /// The current step's tool calls, as their fragments arrive.
    pub(super) calls: ToolCallAssembler,
    /// When the provider was asked, for the time to first token.
    started: Instant,
    /// When the latest token arrived (none yet: `None`), for the time
    /// between tokens.
    last_token: Option<Instant>,
    /// When the current step's provider request was made: the first token
    /// of a later step follows tool calls, not the token before it, so no
    /// time between tokens is measured across steps.
    pub(super) step_started: Instant,
    /// Token counts of the steps before this one.
    pub(super) usage: Option<Usage>,
    /// Token counts of this step, as last reported.
    pub(super) step_usage: Option<Usage>,
    /// Set when the provider reported why it stopped.
    pub(super) finish: Option<FinishReason>,
    /// What it waits on: the provider's stream, or its tools.
    pub(super) work: Work,
    last_checkpoint: Instant,
    /// A continuation after a takeover: a failure before its first token
    /// ends it as `interrupted`, keeping the text so far.
    continued: bool,
    /// The user's files the prompt drew on.
    sources: Vec<Source>,
    /// The answer came from the cache.
    cached: bool,
    /// Its user's generation slot, held while it runs.
    _slot: Option<SlotGuard>,
}

/// What a running generation waits on.
pub(super) enum Work {
    /// The task reading the provider's stream for the current step.
    Streaming(tokio::task::JoinHandle<()>),
    /// The step's tool calls are being saved; none runs before they are.
    SavingCalls,
    /// The step's tool calls run; the next step starts once every result
    /// is saved.
    Calling(Vec<Call>),
}

/// A tool call of the current step.
pub(super) struct Call {
    /// Its tool message.
    pub(super) message_id: String,
    /// The task running it; `None` once it answered (its result is being
    /// saved, then announced).
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
}

impl Generation {
    /// Stops whatever runs for it: the provider's stream, or its tools.
    pub(super) fn abort(&self) {
        match &self.work {
            Work::Streaming(task) => task.abort(),
            Work::SavingCalls => {}
            Work::Calling(calls) => {
                for task in calls.iter().filter_map(|c| c.task.as_ref()) {
                    task.abort();
                }
            }
        }
    }

    /// Tool messages that answered but whose result is not announced yet.
    fn answered(&self) -> Vec<String> {
        match &self.work {
            Work::Calling(calls) => calls
                .iter()
                .filter(|c| c.task.is_none())
                .map(|c| c.message_id.clone())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// How a generation starts: what clients are told, and how an early
/// failure ends it.
#[derive(Clone, Copy)]
pub(super) enum Start {
    /// A send's answer: announced with `generation_start`.
    New,
    /// A taken-over answer asked again from the start (nothing of it was
    /// kept); announced unless the log shows it already was.
    Restarted { announced: bool },
    /// A taken-over answer continued from its text so far: no new
    /// `generation_start`, and a failure before its first token ends it
    /// `interrupted`, keeping that text.
    Continued,
}

/// A generation that ended, waiting for its final write.
pub(super) struct Finishing {
    /// Its text, for the snapshots of subscribers joining meanwhile.
    partial: Partial,
    /// The `seq` of its `generation_end`, already allocated.
    pub(super) end_seq: u64,
}

/// How a generation ended, for [`SessionActor::settle`].
pub(super) struct Ending {
    pub(super) generation_id: Arc<str>,
    pub(super) message_index: usize,
    pub(super) usage: Option<Usage>,
    pub(super) reason: FinishReason,
    pub(super) error: Option<EventError>,
    pub(super) sources: Vec<Source>,
    /// Tool messages whose result is saved but not yet announced.
    pub(super) answered: Vec<String>,
    /// Whether the running step's `tool_call`s went out.
    pub(super) calls_announced: bool,
    /// The answer came from the cache.
    pub(super) cached: bool,
}

/// What a generation's stream produced.
pub enum Step {
    /// The files the prompt drew on (before any chunk).
    Sources(Vec<Source>),
    /// The chunks that follow replay a cached answer.
    Cached,
    /// The prompt could not be made (its files' backends failed); nothing
    /// was asked of the provider.
    Failed(EventError),
    /// Chunks that arrived together; an error is last and ends the stream.
    Chunks(Vec<Result<LlmChunk, LlmError>>),
    /// The stream ended normally.
    Done,
}

/// A send prepared while its messages are saved.
struct Prepared {
    user: MessageRecord,
    assistant: MessageRecord,
    generation_id: String,
    new_title: Option<String>,
    /// The provider's stream, asked for while the save runs, and the gate
    /// that lets its chunks through once the save has landed.
    early: Option<(tokio::task::JoinHandle<()>, oneshot::Sender<()>)>,
    started: Instant,
    /// The session's title before this send named it, if it did: put back
    /// if the save fails.
    previous_title: Option<String>,
}

impl SessionActor {
    /// A send: refused unless [`Phase::Idle`] (or answered again for a
    /// known `client_msg_id`); otherwise the user message is saved with a
    /// `streaming` assistant message, and the generation starts once the
    /// save lands.
    pub(super) fn send(
        &mut self,
        message: SendMessage,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<SendAccepted, SessionError>> {
        let answer = |result| Box::pin(fut::ready(result)) as ResponseActFuture<Self, _>;
        if matches!(self.phase, Phase::Stopping { .. }) {
            return answer(Err(SessionError::Retired));
        }
        if let Some(id) = &message.client_msg_id {
            let replay = |accepted: &SendAccepted| SendAccepted {
                replayed: true,
                ..accepted.clone()
            };
            if let Some(accepted) = self.sent.get(id) {
                return answer(Ok(replay(accepted)));
            }
            if let Phase::Saving(saving) = &self.phase
                && saving.client_msg_id.as_deref() == Some(id.as_str())
            {
                return answer(Ok(replay(&saving.accepted)));
            }
        }
        if self.draining {
            return answer(Err(SessionError::Overloaded(
                "the server is shutting down".into(),
            )));
        }
        if !matches!(self.phase, Phase::Idle) {
            return answer(Err(SessionError::Conflict));
        }
        self.touch();
        let now = now_rfc3339();
        let generation_id = new_id();
        let user = MessageRecord {
            id: new_id(),
            session_id: self.record.id.clone(),
            role: Role::User,
            content: message.content,
            attachments: message.attachments,
            status: MessageStatus::Complete,
            created_at: now.clone(),
            client_msg_id: message.client_msg_id.clone(),
            generation_id: Some(generation_id.clone()),
            usage: None,
            tool: None,
        };
        let assistant = MessageRecord {
            id: new_id(),
            session_id: self.record.id.clone(),
            role: Role::Assistant,
            content: String::new(),
            attachments: Vec::new(),
            status: MessageStatus::Streaming,
            created_at: now.clone(),
            client_msg_id: None,
            generation_id: Some(generation_id.clone()),
            usage: None,
            tool: None,
        };
        let accepted = SendAccepted {
            message_id: user.id.clone(),
            generation_id: generation_id.clone(),
            replayed: false,
        };
        self.set_phase(Phase::Saving(Saving {
            client_msg_id: message.client_msg_id,
            accepted: accepted.clone(),
            cancelled: false,
        }));
        let new_title = self.record.title.is_empty().then(|| {
            let title: String = user.content.trim().chars().take(AUTO_TITLE_CHARS).collect();
            title.split_whitespace().collect::<Vec<_>>().join(" ")
        });
        let previous_title = new_title
            .as_ref()
            .map(|title| std::mem::replace(&mut self.record.title, title.clone()));
        self.record.updated_at = now;
        // The user message is durable before its generation starts; the
        // assistant message is stored as `streaming` in the same transaction.
        // The provider is asked meanwhile, so its time to first token hides
        // the save, but none of its chunks is handled before the save lands.
        // After a failed save the store is likely still down: the provider
        // is asked only once a save lands, so an outage costs no requests.
        let record = self.record_now();
        let saved = self
            .writer
            .save_once(record, vec![user.clone(), assistant.clone()]);
        let started = Instant::now();
        let early = (!self.last_save_failed).then(|| {
            let history: Vec<&MessageRecord> = self.messages.iter().chain([&user]).collect();
            let prompt = prompt::chat_request(
                &self.record,
                &history,
                &self.deps.config,
                None,
                false,
                &self.offer(0),
            );
            let (open, gate) = oneshot::channel();
            let task = self.spawn_stream(ctx, &generation_id, prompt, Some(gate));
            (task, open)
        });
        let prepared = Prepared {
            user,
            assistant,
            generation_id,
            new_title,
            early,
            started,
            previous_title,
        };
        Box::pin(
            saved
                .into_actor(self)
                .map(move |saved, act, ctx| act.on_send_saved(ctx, saved, prepared, accepted)),
        )
    }

    /// The send's save has landed (or failed): start its generation.
    fn on_send_saved(
        &mut self,
        ctx: &mut Context<Self>,
        saved: Result<(), sluice_backends::BackendError>,
        prepared: Prepared,
        accepted: SendAccepted,
    ) -> Result<SendAccepted, SessionError> {
        let saving = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Saving(saving) => saving,
            other => {
                // The actor began stopping meanwhile (the session was
                // deleted or lost): nothing starts here. A save that landed
                // left a `streaming` answer that the session's next owner
                // takes over.
                self.phase = other;
                if let Some((task, _)) = prepared.early {
                    task.abort();
                }
                return saved.map(|()| accepted).map_err(SessionError::from);
            }
        };
        self.last_save_failed = saved.is_err();
        if let Err(e) = saved {
            if let Some((task, _)) = prepared.early {
                task.abort();
            }
            if let Some(title) = prepared.previous_title {
                self.record.title = title;
            }
            self.become_idle();
            if e.kind == ErrorKind::Fenced {
                self.retire(ctx, Retirement::Lost);
            }
            return Err(e.into());
        }
        let Prepared {
            user,
            assistant,
            generation_id,
            new_title,
            early,
            started,
            ..
        } = prepared;
        self.emit(EventBody::UserMessage {
            message: user.to_message(),
        });
        if let Some(title) = new_title.filter(|t| !t.is_empty()) {
            self.emit(EventBody::Title { title });
        }
        self.messages.push(user);
        self.messages.push(assistant);
        if let Some(id) = saving.client_msg_id {
            self.sent.insert(id, accepted.clone());
        }
        let index = self.messages.len() - 1;
        let task = match early {
            Some((task, open)) => {
                // The task is gone already only if it was aborted.
                let _ = open.send(());
                task
            }
            None => {
                let prompt = self.request_for(index, false, 0);
                self.spawn_stream(ctx, &generation_id, prompt, None)
            }
        };
        self.start_generation(generation_id.into(), index, Start::New, 0, task, started);
        if saving.cancelled {
            self.finish(ctx, FinishReason::Cancelled, None);
        }
        Ok(accepted)
    }

    /// Stops the running generation; a send still saving is cancelled as
    /// soon as its generation starts.
    pub(super) fn cancel(&mut self, ctx: &mut Context<Self>) -> Result<(), SessionError> {
        self.touch();
        match &mut self.phase {
            Phase::Stopping { .. } => return Err(SessionError::Retired),
            Phase::Saving(saving) => saving.cancelled = true,
            Phase::Generating(_) => self.finish(ctx, FinishReason::Cancelled, None),
            Phase::Idle | Phase::Finishing(_) => {}
        }
        Ok(())
    }

    /// The prompt for `step` of the assistant message at `message_index`:
    /// the conversation, that answer's earlier steps with their tool
    /// results, and for a continuation its text since.
    pub(super) fn request_for(
        &self,
        message_index: usize,
        continuation: bool,
        step: u32,
    ) -> Prompt {
        let history: Vec<&MessageRecord> = self.messages.iter().collect();
        let running = self.messages[message_index].generation_id.as_deref();
        prompt::chat_request(
            &self.record,
            &history,
            &self.deps.config,
            running,
            continuation,
            &self.offer(step),
        )
    }

    /// The tools offered at `step`: the session's, and on the last step
    /// none may be called.
    fn offer(&self, step: u32) -> Offer {
        let tools = self.deps.tools.for_session(self.record.tools.as_deref());
        Offer {
            definitions: Tools::definitions(&tools),
            last_step: step + 1 >= self.deps.config.agent_max_steps,
        }
    }

    /// Starts reading the provider's stream for `prompt` in a task that
    /// hands chunks to this actor as [`GenerationStep`]s, after working the
    /// prompt's attachments in ([`Files::ground`](crate::files::Files::ground)).
    /// With a `gate`, the provider is asked at once but nothing reaches the
    /// actor until the gate opens; a gate dropped unopened ends the task.
    pub(super) fn spawn_stream(
        &self,
        ctx: &Context<Self>,
        generation_id: &str,
        prompt: Prompt,
        gate: Option<oneshot::Receiver<()>>,
    ) -> tokio::task::JoinHandle<()> {
        let addr = ctx.address();
        let id: Arc<str> = generation_id.into();
        let llm = self.deps.llm.clone();
        let files = self.deps.files.clone();
        let cache = self.deps.cache.clone();
        let user_id = self.record.user_id.clone();
        let send = move |step| {
            addr.do_send(GenerationStep {
                generation_id: id.clone(),
                step,
            })
        };
        actix_rt::spawn(async move {
            let (request, sources) = match files
                .ground(&user_id, prompt.request, &prompt.attachments)
                .await
            {
                Ok(grounded) => grounded,
                Err(e) => {
                    if let Some(gate) = gate
                        && gate.await.is_err()
                    {
                        return;
                    }
                    return send(Step::Failed(EventError {
                        code: e.code(),
                        message: e.client_message(),
                    }));
                }
            };
            let key = cache.key(&user_id, &request);
            let hit = match &key {
                Some(key) => cache.lookup(key, "session").await,
                None => None,
            };
            if let Some(answer) = hit {
                if let Some(gate) = gate
                    && gate.await.is_err()
                {
                    return;
                }
                send(Step::Cached);
                if !sources.is_empty() {
                    send(Step::Sources(sources));
                }
                let chunks = crate::cache::replay(&answer, "cached", 0, true);
                send(Step::Chunks(chunks.into_iter().map(Ok).collect()));
                return send(Step::Done);
            }
            let mut recorder = key.as_ref().map(|_| Recorder::default());
            // Chunks that arrive together make one actor message.
            let mut stream = ready_batches(llm.stream(request), CHUNK_BATCHING);
            let mut held = None;
            if let Some(mut gate) = gate {
                tokio::select! {
                    biased;
                    open = &mut gate => if open.is_err() { return },
                    first = stream.next() => {
                        held = Some(first);
                        if gate.await.is_err() {
                            return;
                        }
                    }
                }
            }
            if !sources.is_empty() {
                send(Step::Sources(sources));
            }
            let mut next = match held {
                Some(first) => first,
                None => stream.next().await,
            };
            while let Some(chunks) = next {
                let failed = chunks.iter().any(Result::is_err);
                if let Some(recorder) = &mut recorder {
                    chunks.iter().flatten().for_each(|c| recorder.take(c));
                }
                send(Step::Chunks(chunks));
                if failed {
                    return;
                }
                next = stream.next().await;
            }
            if let (Some(key), Some(recorded)) = (key, recorder.and_then(Recorder::finish)) {
                cache.store(key, recorded).await;
            }
            send(Step::Done);
        })
    }

    /// Makes `task` (from [`Self::spawn_stream`]) the running generation of
    /// the assistant message at `message_index`, asked of the provider at
    /// `started`. A continuation (after a takeover) emits no new
    /// `generation_start`: clients see one generation go on.
    pub(super) fn start_generation(
        &mut self,
        id: Arc<str>,
        message_index: usize,
        start: Start,
        step: u32,
        task: tokio::task::JoinHandle<()>,
        started: Instant,
    ) {
        let announce = match start {
            Start::New => true,
            Start::Restarted { announced } => !announced,
            Start::Continued => false,
        };
        if announce {
            let message_id = self.messages[message_index].id.clone();
            self.emit(EventBody::GenerationStart {
                generation_id: id.to_string(),
                message_id,
                model: self.record.model.clone(),
            });
        }
        self.set_phase(Phase::Generating(Generation {
            id,
            message_index,
            step,
            calls: ToolCallAssembler::default(),
            started,
            last_token: None,
            step_started: started,
            usage: None,
            step_usage: None,
            finish: None,
            work: Work::Streaming(task),
            last_checkpoint: Instant::now(),
            continued: matches!(start, Start::Continued),
            sources: Vec::new(),
            cached: false,
            _slot: self
                .deps
                .limits
                .hold_generation(&self.record.user_id, &self.record.id),
        }));
    }

    /// A step of the running generation's stream.
    pub(super) fn on_step(&mut self, ctx: &mut Context<Self>, msg: GenerationStep) {
        let reported = match &self.phase {
            Phase::Generating(generation) if generation.id == msg.generation_id => {
                generation.finish
            }
            // A late step of a generation that already ended.
            _ => return,
        };
        self.touch();
        match msg.step {
            Step::Sources(sources) => {
                if let Phase::Generating(generation) = &mut self.phase {
                    generation.sources = sources;
                }
            }
            Step::Cached => {
                if let Phase::Generating(generation) = &mut self.phase {
                    generation.cached = true;
                }
            }
            Step::Failed(error) => self.fail(ctx, error),
            Step::Chunks(chunks) => {
                for chunk in chunks {
                    let refused = match chunk {
                        Ok(chunk) => self.on_chunk(chunk),
                        Err(error) => return self.on_stream_error(ctx, error),
                    };
                    if let Err(e) = refused {
                        return self.fail(
                            ctx,
                            EventError {
                                code: ErrorCode::UpstreamError,
                                message: e.to_string(),
                            },
                        );
                    }
                }
            }
            Step::Done => {
                let calls = matches!(&self.phase, Phase::Generating(g) if !g.calls.is_empty());
                if calls {
                    self.call_tools(ctx);
                } else {
                    self.finish(ctx, reported.unwrap_or(FinishReason::Stop), None);
                }
            }
        }
    }

    /// A chunk of the current step: its text is streamed, its tool-call
    /// fragments gathered (refused past the limits of a step).
    fn on_chunk(&mut self, chunk: LlmChunk) -> Result<(), AssembleError> {
        let Phase::Generating(generation) = &mut self.phase else {
            return Ok(());
        };
        if let Some(usage) = chunk.view.usage {
            // The latest report of this step (some providers send a running
            // total with every chunk).
            generation.step_usage = Some(usage.into());
        }
        generation.calls.push(chunk.view.tool_calls())?;
        if let Some(reason) = chunk.view.finish_reason() {
            generation.finish = Some(reason);
        }
        let Some(text) = chunk.view.content().filter(|t| !t.is_empty()) else {
            return Ok(());
        };
        let metrics = &self.deps.metrics;
        let now = Instant::now();
        match generation.last_token.replace(now) {
            None => metrics
                .time_to_first_token_seconds
                .with_label_values(&["session"])
                .observe((now - generation.started).as_secs_f64()),
            Some(last) if last >= generation.step_started => metrics
                .inter_token_seconds
                .with_label_values(&["session"])
                .observe((now - last).as_secs_f64()),
            Some(_) => {}
        }
        metrics
            .tokens_streamed_total
            .with_label_values(&["session"])
            .inc();
        let generation_id = generation.id.clone();
        let index = generation.message_index;
        let checkpoint = generation.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
        if checkpoint {
            generation.last_checkpoint = Instant::now();
        }
        self.messages[index].content.push_str(text);
        self.emit(EventBody::Token {
            generation_id,
            delta: text.to_owned(),
        });
        if checkpoint {
            let record = self.record_now();
            self.writer.save(record, vec![self.messages[index].clone()]);
        }
        Ok(())
    }

    /// The provider's stream failed: the generation ends with the error.
    fn on_stream_error(&mut self, ctx: &mut Context<Self>, error: LlmError) {
        let code = error.code();
        self.deps
            .metrics
            .upstream_errors_total
            .with_label_values(&[code.as_str()])
            .inc();
        self.fail(
            ctx,
            EventError {
                code,
                message: error.to_string(),
            },
        );
    }

    /// Ends the running generation with `error`; a continuation that cannot
    /// start keeps the answer so far (`interrupted`).
    pub(super) fn fail(&mut self, ctx: &mut Context<Self>, error: EventError) {
        tracing::warn!(session_id = %self.record.id, code = %error.code, error = %error.message, "generation failed");
        let reason = match &self.phase {
            Phase::Generating(g) if g.continued && g.last_token.is_none() => {
                FinishReason::Interrupted
            }
            _ => FinishReason::Error,
        };
        self.finish(ctx, reason, Some(error));
    }

    /// Ends the running generation for `reason`.
    pub(super) fn finish(
        &mut self,
        ctx: &mut Context<Self>,
        reason: FinishReason,
        error: Option<EventError>,
    ) {
        let generation = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Generating(generation) => generation,
            other => {
                self.phase = other;
                return;
            }
        };
        generation.abort();
        let answered = generation.answered();
        // Calls still being saved were never announced.
        let calls_announced = !matches!(generation.work, Work::SavingCalls);
        self.settle(
            ctx,
            Ending {
                generation_id: generation.id,
                message_index: generation.message_index,
                usage: add_usage(generation.usage, generation.step_usage),
                reason,
                error,
                sources: generation.sources,
                answered,
                calls_announced,
                cached: generation.cached,
            },
        );
    }

    /// Settles an ended generation's assistant message and emits
    /// `generation_end` once the final message is durable, so a client that
    /// sees the end can rely on the stored answer. The event's `seq` is
    /// allocated now, so the persisted `last_seq` includes it; until the
    /// write lands the actor is [`Phase::Finishing`], where sends conflict,
    /// so no other event can take a `seq` in between.
    pub(super) fn settle(&mut self, ctx: &mut Context<Self>, ending: Ending) {
        // Its tool calls still running end with it, and are announced so.
        let mut saved = self.settle_calls(
            &ending.generation_id,
            status_for(ending.reason),
            &ending.answered,
            ending.calls_announced,
        );
        let message = &mut self.messages[ending.message_index];
        message.status = status_for(ending.reason);
        message.usage = ending.usage;
        let message = message.clone();
        if !ending.cached {
            // The provider's count, else about four bytes a token.
            let tokens = ending
                .usage
                .map_or(message.content.len() as u64 / 4, |u| u.completion_tokens);
            self.deps.limits.charge_tokens(&self.record.user_id, tokens);
        }
        saved.insert(0, message.clone());
        self.last_seq += 1;
        let end = Arc::new(EncodedEvent::new(Event {
            seq: self.last_seq,
            body: EventBody::GenerationEnd {
                generation_id: ending.generation_id.to_string(),
                message_id: message.id.clone(),
                finish_reason: ending.reason,
                usage: ending.usage,
                error: ending.error,
                sources: ending.sources,
                cached: ending.cached,
            },
        }));
        self.deps
            .metrics
            .generations_total
            .with_label_values(&[finish_reason_label(ending.reason)])
            .inc();
        self.record.updated_at = now_rfc3339();
        self.set_phase(Phase::Finishing(Finishing {
            partial: Partial {
                generation_id: ending.generation_id.to_string(),
                message_id: message.id.clone(),
                content: message.content.clone(),
            },
            end_seq: self.last_seq,
        }));
        let record = self.record_now();
        let saved = self.writer.save_acked(record, saved);
        ctx.spawn(saved.into_actor(self).map(move |saved, act, ctx| {
            if !matches!(act.phase, Phase::Finishing(_)) {
                // Stopping meanwhile: the session was deleted or lost.
                return;
            }
            match saved {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::Fenced => {
                    // Another replica owns the answer now; it says how it ends.
                    act.retire(ctx, Retirement::Lost);
                    return;
                }
                Err(e) => {
                    tracing::error!(session_id = %act.record.id, error = %e, "the final answer was not saved");
                }
            }
            let _ = act.outbox.send(OutboxCmd::Event(end));
            act.become_idle();
            act.touch();
        }));
    }

    /// The running (or finishing) generation's text so far.
    pub(super) fn partial(&self) -> Option<Partial> {
        match &self.phase {
            Phase::Finishing(finishing) => Some(finishing.partial.clone()),
            Phase::Generating(generation) => {
                let message = &self.messages[generation.message_index];
                Some(Partial {
                    generation_id: generation.id.to_string(),
                    message_id: message.id.clone(),
                    content: message.content.clone(),
                })
            }
            _ => None,
        }
    }

    /// The running generation's assistant message, to save as a checkpoint.
    pub(super) fn generating_message(&self) -> Option<MessageRecord> {
        match &self.phase {
            Phase::Generating(generation) => Some(self.messages[generation.message_index].clone()),
            _ => None,
        }
    }
}

/// Token counts of two steps together.
pub(super) fn add_usage(a: Option<Usage>, b: Option<Usage>) -> Option<Usage> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Usage {
            prompt_tokens: a.prompt_tokens + b.prompt_tokens,
            completion_tokens: a.completion_tokens + b.completion_tokens,
        }),
        (a, b) => a.or(b),
    }
}

/// The stored status of an answer that ended for `reason`.
pub(super) fn status_for(reason: FinishReason) -> MessageStatus {
    match reason {
        FinishReason::Stop | FinishReason::Length => MessageStatus::Complete,
        FinishReason::Cancelled => MessageStatus::Cancelled,
        FinishReason::Error => MessageStatus::Error,
        FinishReason::Interrupted => MessageStatus::Interrupted,
    }
}

fn finish_reason_label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Error => "error",
        FinishReason::Interrupted => "interrupted",
    }
}
