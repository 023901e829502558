//! The session actor: one per live conversation, the single writer of its
//! events.
//!
//! It allocates `seq`, hands each event to its outbox (log, then fan-out),
//! runs generations and persists messages. It never waits on I/O inside a
//! handler: the LLM stream runs in its own task and feeds chunks back as
//! [`GenerationStep`] messages, and store writes go through a per-session
//! writer task so they land in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;
use sluice_protocol::event::EventError;
use sluice_protocol::openai::{ChatRequest, StreamOptions};
use sluice_protocol::rest::{SendAccepted, SendMessage, SessionWithMessages};
use sluice_protocol::{Event, EventBody, FinishReason, MessageStatus, Partial, Role, Usage};
use tokio::sync::{mpsc, oneshot};

use crate::SessionConfig;
use crate::cluster::Cluster;
use crate::error::SessionError;
use crate::ids::{new_id, now_rfc3339};
use crate::llm::{LlmChunk, LlmError, LlmProvider, ready_batches};
use crate::log::{EncodedEvent, EventLog};
use crate::metrics::{GaugeGuard, Metrics};
use crate::outbox::{self, OutboxCmd, Sinks};
use crate::registry::Retire;
use crate::store::{MessageRecord, SessionRecord, SessionStore, StoreError};
use crate::subscriber::SubscriberQueue;

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// Longest automatic title, in characters.
const AUTO_TITLE_CHARS: usize = 60;

/// Most provider chunks handled in one actor message.
const MAX_CHUNK_BATCH: usize = 256;

/// What every session actor needs, shared.
pub struct SessionDeps {
    /// Durable sessions and messages.
    pub store: Arc<dyn SessionStore>,
    /// The resumable event log.
    pub log: Arc<dyn EventLog>,
    /// The LLM provider.
    pub llm: Arc<dyn LlmProvider>,
    /// Metric handles.
    pub metrics: Metrics,
    /// Settings.
    pub config: SessionConfig,
    /// Ownership and the bus, when several replicas share the backends.
    pub cluster: Option<Arc<Cluster>>,
}

/// A session's state as read from the backends, to start its actor.
pub struct Loaded {
    /// The session as stored.
    pub record: SessionRecord,
    /// Its messages, oldest first.
    pub messages: Vec<MessageRecord>,
    /// The log's epoch.
    pub epoch: String,
    /// The highest `seq` in the log (it may be past `record.last_seq`: the
    /// store is checkpointed, the log has every event).
    pub log_last_seq: u64,
    /// The logged events after `record.last_seq`, read when a generation was
    /// left running; `None` if they could not be read.
    pub tail: Option<Vec<Arc<EncodedEvent>>>,
}

/// The actor of one live session.
pub struct SessionActor {
    /// The session as stored; `last_seq` in it is what was last persisted.
    record: SessionRecord,
    /// The conversation, oldest first, including the assistant message being
    /// generated (its `content` grows as tokens arrive).
    messages: Vec<MessageRecord>,
    /// `client_msg_id` → the answer given, so a retried send is answered
    /// again instead of starting a second generation.
    sent: HashMap<String, SendAccepted>,
    /// The highest `seq` allocated; the next event gets `last_seq + 1`.
    last_seq: u64,
    /// The event log's epoch for this session, sent in `hello`.
    epoch: String,
    /// The running generation, if any.
    generation: Option<Generation>,
    /// A send whose messages are being persisted: a second send conflicts
    /// (or, with the same `client_msg_id`, gets the same answer).
    sending: Option<PendingSend>,
    /// A generation that ended and whose `generation_end` waits for the final
    /// write: its text, for snapshots; its `seq` is `last_seq`.
    finishing: Option<Partial>,
    /// A cancel arrived while a send was being persisted.
    cancel_requested: bool,
    /// The last send's save failed: the next one asks the provider only
    /// after its own save lands.
    save_failed: bool,
    /// Ordered log-then-deliver queue.
    outbox: mpsc::UnboundedSender<OutboxCmd>,
    /// Ordered store writes.
    writer: mpsc::UnboundedSender<StoreWrite>,
    /// The writer's receiver until `started` spawns the task.
    writer_rx: Option<mpsc::UnboundedReceiver<StoreWrite>>,
    /// Subscribers, kept only to know whether anyone is watching.
    watchers: Vec<Arc<SubscriberQueue>>,
    /// Last time anything happened; the idle timer counts from here.
    last_active: Instant,
    /// Set once the actor decided to stop: new commands are refused with
    /// [`SessionError::Retired`] so callers go back to the registry.
    retiring: bool,
    /// Set by graceful shutdown: new sends are refused.
    draining: bool,
    /// Notified when the running generation ends (graceful shutdown waits).
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// Told when this actor retires, so it forgets the address.
    registry: Recipient<Retire>,
    deps: Arc<SessionDeps>,
    /// Older messages found `streaming` at load (their process died), or
    /// whose end is in the log, saved settled when the actor starts.
    repaired: Vec<MessageRecord>,
    /// A generation left running by a replica that died: continued (or ended
    /// as `interrupted`) when the actor starts.
    takeover: Option<Takeover>,
    /// Set when another replica took the lease: nothing is released on stop.
    lease_lost: bool,
    /// Keeps `sluice_live_sessions` counting this actor.
    _live: GaugeGuard,
}

/// A generation in progress.
struct Generation {
    id: Arc<str>,
    /// Index of its assistant message in `messages`.
    message_index: usize,
    started: Instant,
    first_token: bool,
    usage: Option<Usage>,
    /// Set when the provider reported why it stopped.
    finish: Option<FinishReason>,
    /// The task reading the provider's stream; aborted on cancel.
    task: Option<tokio::task::JoinHandle<()>>,
    last_checkpoint: Instant,
    /// A continuation after a takeover: a failure before its first token
    /// ends it as `interrupted`, keeping the text so far.
    continued: bool,
}

/// A generation to pick up after a takeover.
struct Takeover {
    generation_id: String,
    message_index: usize,
    /// Whether the answer so far is known exactly, so asking the provider to
    /// continue it gives one whole answer.
    continuable: bool,
}

struct PendingSend {
    client_msg_id: Option<String>,
    accepted: SendAccepted,
}

/// A write for the session's writer task.
struct StoreWrite {
    session: SessionRecord,
    messages: Vec<MessageRecord>,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

impl SessionActor {
    /// Builds the actor from stored state. A generation left `streaming` by
    /// a replica that died is rebuilt from the checkpoint plus the logged
    /// tokens after it, to be continued when the actor starts; older
    /// `streaming` messages are settled as `interrupted`.
    pub fn new(loaded: Loaded, registry: Recipient<Retire>, deps: Arc<SessionDeps>) -> Self {
        let Loaded {
            record,
            mut messages,
            epoch,
            log_last_seq,
            tail,
        } = loaded;
        let mut repaired = Vec::new();
        let mut takeover = None;
        let last_streaming = messages
            .iter()
            .rposition(|m| m.status == MessageStatus::Streaming);
        for (i, m) in messages.iter_mut().enumerate() {
            if m.status != MessageStatus::Streaming {
                continue;
            }
            let generation_id = m.generation_id.clone().unwrap_or_default();
            if Some(i) != last_streaming || generation_id.is_empty() {
                m.status = MessageStatus::Interrupted;
                repaired.push(m.clone());
                continue;
            }
            // The checkpoint holds every token up to `record.last_seq`; the
            // log holds the ones after it, if it kept them all.
            let from = record.last_seq;
            let events = tail.as_deref().unwrap_or_default();
            let complete = log_last_seq <= from
                || (tail.is_some()
                    && events.len() as u64 == log_last_seq - from
                    && events.first().is_some_and(|e| e.seq() == from + 1));
            let mut ended = None;
            if complete {
                for e in events {
                    match &e.event.body {
                        EventBody::Token {
                            generation_id: g,
                            delta,
                        } if **g == *generation_id => m.content.push_str(delta),
                        EventBody::GenerationEnd {
                            generation_id: g,
                            finish_reason,
                            usage,
                            ..
                        } if *g == generation_id => ended = Some((*finish_reason, *usage)),
                        _ => {}
                    }
                }
            }
            if let Some((reason, usage)) = ended {
                // It ended and said so; only the final write was lost.
                m.status = status_for(reason);
                m.usage = usage;
                repaired.push(m.clone());
                continue;
            }
            takeover = Some(Takeover {
                generation_id,
                message_index: i,
                continuable: complete,
            });
        }
        let sent = messages
            .iter()
            .filter_map(|m| {
                let client_msg_id = m.client_msg_id.clone()?;
                Some((
                    client_msg_id,
                    SendAccepted {
                        message_id: m.id.clone(),
                        generation_id: m.generation_id.clone().unwrap_or_default(),
                    },
                ))
            })
            .collect();
        let (writer, writer_rx) = mpsc::unbounded_channel();
        let outbox = outbox::spawn(
            record.id.clone(),
            Sinks {
                log: deps.log.clone(),
                bus: deps.cluster.as_ref().map(|c| c.bus().clone()),
            },
        );
        Self {
            last_seq: record.last_seq.max(log_last_seq),
            record,
            messages,
            sent,
            epoch,
            generation: None,
            sending: None,
            finishing: None,
            cancel_requested: false,
            save_failed: false,
            outbox,
            writer,
            writer_rx: Some(writer_rx),
            watchers: Vec::new(),
            last_active: Instant::now(),
            retiring: false,
            draining: false,
            drain_waiters: Vec::new(),
            registry,
            repaired,
            takeover,
            lease_lost: false,
            _live: GaugeGuard::new(deps.metrics.live_sessions.clone()),
            deps,
        }
    }

    fn touch(&mut self) {
        self.last_active = Instant::now();
    }

    /// Allocates the next `seq` and hands the event to the outbox.
    fn emit(&mut self, body: EventBody) {
        self.last_seq += 1;
        let event = Arc::new(EncodedEvent::new(Event {
            seq: self.last_seq,
            body,
        }));
        // The outbox lives as long as this actor; a send error means it is
        // already gone with the actor, and nobody is left to deliver to.
        let _ = self.outbox.send(OutboxCmd::Event(event));
    }

    /// Queues a durable write of the session record and `messages`; a
    /// failure is logged by the writer.
    fn persist(&mut self, messages: Vec<MessageRecord>) {
        self.queue_write(messages, None);
    }

    /// Like [`Self::persist`], and reports when the write has landed.
    fn persist_acked(
        &mut self,
        messages: Vec<MessageRecord>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = oneshot::channel();
        self.queue_write(messages, Some(done));
        rx
    }

    fn queue_write(
        &mut self,
        messages: Vec<MessageRecord>,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) {
        self.record.last_seq = self.last_seq;
        // The writer lives as long as this actor.
        let _ = self.writer.send(StoreWrite {
            session: self.record.clone(),
            messages,
            done,
        });
    }

    /// The prompt for the assistant message at `message_index`: the
    /// conversation before it, and for a continuation its text so far.
    fn request_for(&self, message_index: usize, continuation: bool) -> ChatRequest {
        let history = self
            .messages
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != message_index)
            .map(|(_, m)| m);
        let so_far = continuation.then(|| self.messages[message_index].content.as_str());
        self.build_request(history, so_far)
    }

    /// The prompt for a generation: the system prompt, then the recent
    /// conversation from `history`, then (continuing) the answer so far.
    fn build_request<'a>(
        &'a self,
        history: impl Iterator<Item = &'a MessageRecord>,
        so_far: Option<&str>,
    ) -> ChatRequest {
        let mut messages = Vec::new();
        if let Some(system) = &self.record.system_prompt {
            messages.push(ChatRequest::text_message("system", system));
        }
        let history: Vec<_> = history.filter(|m| !m.content.is_empty()).collect();
        let start = history
            .len()
            .saturating_sub(self.deps.config.history_messages);
        for m in &history[start..] {
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            messages.push(ChatRequest::text_message(role, &m.content));
        }
        // A continuation asks the model to go on from the answer so far.
        if let Some(so_far) = so_far.filter(|s| !s.is_empty()) {
            messages.push(ChatRequest::text_message("assistant", so_far));
        }
        let mut extra = serde_json::Map::new();
        if let Some(t) = self.deps.config.temperature {
            extra.insert("temperature".into(), t.into());
        }
        ChatRequest {
            model: Some(self.record.model.clone()),
            messages,
            stream: true,
            // Usage is recorded on the assistant message and in `generation_end`.
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            extra,
        }
    }

    /// Starts reading the provider's stream for `request` in a task that
    /// hands chunks to this actor as [`GenerationStep`]s. With a `gate`, the
    /// provider is asked at once but nothing reaches the actor until the gate
    /// opens; a gate dropped unopened ends the task.
    fn spawn_stream(
        &self,
        ctx: &Context<Self>,
        generation_id: &str,
        request: ChatRequest,
        gate: Option<oneshot::Receiver<()>>,
    ) -> tokio::task::JoinHandle<()> {
        // Chunks that arrive together make one actor message.
        let mut stream = ready_batches(self.deps.llm.stream(request), MAX_CHUNK_BATCH);
        let addr = ctx.address();
        let id = generation_id.to_owned();
        actix_rt::spawn(async move {
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
            let mut next = match held {
                Some(first) => first,
                None => stream.next().await,
            };
            while let Some(chunks) = next {
                let failed = chunks.iter().any(Result::is_err);
                addr.do_send(GenerationStep {
                    generation_id: id.clone(),
                    step: Step::Chunks(chunks),
                });
                if failed {
                    return;
                }
                next = stream.next().await;
            }
            addr.do_send(GenerationStep {
                generation_id: id,
                step: Step::Done,
            });
        })
    }

    /// Makes `task` (from [`Self::spawn_stream`]) the running generation of
    /// the assistant message at `message_index`, asked of the provider at
    /// `started`. A continuation (after a takeover) emits no new
    /// `generation_start`: clients see one generation go on.
    fn start_generation(
        &mut self,
        generation_id: String,
        message_index: usize,
        continuation: bool,
        task: tokio::task::JoinHandle<()>,
        started: Instant,
    ) {
        if !continuation {
            let message_id = self.messages[message_index].id.clone();
            self.emit(EventBody::GenerationStart {
                generation_id: generation_id.clone(),
                message_id,
                model: self.record.model.clone(),
            });
        }
        self.generation = Some(Generation {
            id: generation_id.into(),
            message_index,
            started,
            first_token: false,
            usage: None,
            finish: None,
            task: Some(task),
            last_checkpoint: Instant::now(),
            continued: continuation,
        });
    }

    fn on_chunk(&mut self, chunk: LlmChunk) {
        let Some(generation) = self.generation.as_mut() else {
            return;
        };
        if let Some(usage) = chunk.view.usage {
            generation.usage = Some(usage.into());
        }
        if let Some(reason) = chunk.view.finish_reason() {
            generation.finish = Some(reason);
        }
        let Some(text) = chunk.view.content().filter(|t| !t.is_empty()) else {
            return;
        };
        let metrics = &self.deps.metrics;
        if !generation.first_token {
            generation.first_token = true;
            metrics
                .time_to_first_token_seconds
                .with_label_values(&["session"])
                .observe(generation.started.elapsed().as_secs_f64());
        }
        metrics
            .tokens_streamed_total
            .with_label_values(&["session"])
            .inc();
        let generation_id = generation.id.clone();
        let index = generation.message_index;
        let checkpoint =
            generation.last_checkpoint.elapsed() >= self.deps.config.checkpoint_interval;
        if checkpoint {
            generation.last_checkpoint = Instant::now();
        }
        self.messages[index].content.push_str(text);
        self.emit(EventBody::Token {
            generation_id,
            delta: text.to_owned(),
        });
        if checkpoint {
            let message = self.messages[index].clone();
            self.persist(vec![message]);
        }
    }

    /// The provider's stream failed: the generation ends with the error.
    fn on_stream_error(&mut self, ctx: &mut Context<Self>, error: LlmError) {
        let code = error.code();
        self.deps
            .metrics
            .upstream_errors_total
            .with_label_values(&[code.as_str()])
            .inc();
        tracing::warn!(session_id = %self.record.id, %error, "generation failed");
        // A continuation that cannot start keeps the answer so far.
        let reason = match &self.generation {
            Some(g) if g.continued && !g.first_token => FinishReason::Interrupted,
            _ => FinishReason::Error,
        };
        self.finish(
            ctx,
            reason,
            Some(EventError {
                code,
                message: error.to_string(),
            }),
        );
    }

    /// Ends the running generation: settles the assistant message, and
    /// emits `generation_end` once the final message is durable, so a client
    /// that sees the end can rely on the stored answer. The event's `seq` is
    /// allocated now, so the persisted `last_seq` includes it.
    fn finish(&mut self, ctx: &mut Context<Self>, reason: FinishReason, error: Option<EventError>) {
        let Some(generation) = self.generation.take() else {
            return;
        };
        if let Some(task) = &generation.task {
            task.abort();
        }
        let message = &mut self.messages[generation.message_index];
        message.status = status_for(reason);
        message.usage = generation.usage;
        let message = message.clone();
        self.last_seq += 1;
        let event = Arc::new(EncodedEvent::new(Event {
            seq: self.last_seq,
            body: EventBody::GenerationEnd {
                generation_id: generation.id.to_string(),
                message_id: message.id.clone(),
                finish_reason: reason,
                usage: generation.usage,
                error,
            },
        }));
        self.deps
            .metrics
            .generations_total
            .with_label_values(&[finish_reason_label(reason)])
            .inc();
        self.record.updated_at = now_rfc3339();
        self.finishing = Some(Partial {
            generation_id: generation.id.to_string(),
            message_id: message.id.clone(),
            content: message.content.clone(),
        });
        let saved = self.persist_acked(vec![message]);
        ctx.spawn(saved.into_actor(self).map(move |saved, act, _| {
            if !matches!(saved, Ok(Ok(()))) {
                tracing::error!(session_id = %act.record.id, "the final answer was not saved");
            }
            act.finishing = None;
            // Nothing else was emitted meanwhile: sends conflict while
            // `finishing` is set, so the order of seqs holds.
            let _ = act.outbox.send(OutboxCmd::Event(event));
            for waiter in act.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
            act.touch();
        }));
    }

    fn partial(&self) -> Option<Partial> {
        if let Some(finishing) = &self.finishing {
            return Some(finishing.clone());
        }
        let generation = self.generation.as_ref()?;
        let message = &self.messages[generation.message_index];
        Some(Partial {
            generation_id: generation.id.to_string(),
            message_id: message.id.clone(),
            content: message.content.clone(),
        })
    }

    fn is_idle(&mut self) -> bool {
        self.watchers.retain(|q| !q.is_closed());
        self.generation.is_none()
            && self.sending.is_none()
            && self.finishing.is_none()
            && self.watchers.is_empty()
            && self.last_active.elapsed() >= self.deps.config.idle_timeout
    }

    /// Picks up a generation a replica that died left running: continues it
    /// from the answer so far, or ends it as `interrupted` where the answer so
    /// far is not known exactly.
    fn take_over(&mut self, ctx: &mut Context<Self>, takeover: Takeover) {
        let outcome = if takeover.continuable {
            "continued"
        } else {
            "interrupted"
        };
        self.deps
            .metrics
            .takeovers_total
            .with_label_values(&[outcome])
            .inc();
        tracing::info!(
            session_id = %self.record.id,
            generation_id = %takeover.generation_id,
            outcome,
            "took over a running generation"
        );
        if takeover.continuable {
            let request = self.request_for(takeover.message_index, true);
            let task = self.spawn_stream(ctx, &takeover.generation_id, request, None);
            self.start_generation(
                takeover.generation_id,
                takeover.message_index,
                true,
                task,
                Instant::now(),
            );
        } else {
            let now = Instant::now();
            self.generation = Some(Generation {
                id: takeover.generation_id.into(),
                message_index: takeover.message_index,
                started: now,
                first_token: true,
                usage: None,
                finish: None,
                task: None,
                last_checkpoint: now,
                continued: true,
            });
            self.finish(ctx, FinishReason::Interrupted, None);
        }
    }

    /// Shutdown outlasted the grace period with a generation running and
    /// other replicas to take it: stop the provider's stream and save the
    /// answer so far as a checkpoint holding every token (still
    /// `streaming`), so that the next owner continues it exactly where it
    /// stopped.
    fn hand_over(&mut self) {
        let Some(generation) = self.generation.take() else {
            return;
        };
        if let Some(task) = &generation.task {
            task.abort();
        }
        tracing::info!(session_id = %self.record.id, generation_id = %generation.id, "handing a running generation over");
        self.deps.metrics.handovers_total.inc();
        let message = self.messages[generation.message_index].clone();
        self.persist(vec![message]);
    }

    /// Another replica holds this session's lease now: stop at once, writing
    /// nothing more, so there is never a second writer.
    fn lose_lease(&mut self, ctx: &mut Context<Self>) {
        if self.lease_lost {
            return;
        }
        tracing::error!(session_id = %self.record.id, "lost the session's lease to another replica; stopping");
        self.deps.metrics.lease_losses_total.inc();
        self.lease_lost = true;
        self.retiring = true;
        if let Some(task) = self.generation.take().and_then(|g| g.task) {
            task.abort();
        }
        self.registry.do_send(Retire {
            session_id: self.record.id.clone(),
            addr: ctx.address(),
        });
        ctx.stop();
    }

    /// Stops the actor once its writes are flushed, telling the registry first.
    fn retire(&mut self, ctx: &mut Context<Self>) {
        self.retiring = true;
        let flushed = self.persist_acked(Vec::new());
        let registry = self.registry.clone();
        let session_id = self.record.id.clone();
        let addr = ctx.address();
        ctx.wait(
            async move {
                let _ = flushed.await;
                registry.do_send(Retire { session_id, addr });
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
    }
}

/// The stored status of an answer that ended for `reason`.
fn status_for(reason: FinishReason) -> MessageStatus {
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

/// Writes in order; a checkpoint that fails is logged, an acknowledged write
/// reports its error to the waiter.
async fn run_writer(store: Arc<dyn SessionStore>, mut rx: mpsc::UnboundedReceiver<StoreWrite>) {
    while let Some(write) = rx.recv().await {
        let session_id = write.session.id.clone();
        let result = store.save(write.session, write.messages).await;
        if let Err(e) = &result {
            tracing::warn!(session_id, error = %e, "session write failed");
        }
        if let Some(done) = write.done {
            let _ = done.send(result);
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(rx) = self.writer_rx.take() {
            actix_rt::spawn(run_writer(self.deps.store.clone(), rx));
        }
        let repaired = std::mem::take(&mut self.repaired);
        if !repaired.is_empty() {
            tracing::info!(session_id = %self.record.id, count = repaired.len(), "settled messages left unfinished");
            self.persist(repaired);
        }
        if let Some(takeover) = self.takeover.take() {
            self.take_over(ctx, takeover);
        }
        if let Some(cluster) = self.deps.cluster.clone() {
            ctx.run_interval(cluster.lease_ttl() / 3, move |act, ctx| {
                let renew = cluster.leases().renew(
                    &act.record.id,
                    cluster.replica_id(),
                    cluster.lease_ttl(),
                );
                ctx.spawn(renew.into_actor(act).map(|renewed, act, ctx| match renewed {
                    Ok(true) => {}
                    Ok(false) => act.lose_lease(ctx),
                    // Nobody else can take it while the lease store is down;
                    // the next renewal tells.
                    Err(e) => {
                        tracing::warn!(session_id = %act.record.id, error = %e, "lease not renewed")
                    }
                }));
            });
        }
        ctx.run_interval(
            IDLE_CHECK_INTERVAL.min(self.deps.config.idle_timeout),
            |act, ctx| {
                if !act.retiring && act.is_idle() {
                    tracing::debug!(session_id = %act.record.id, "retiring idle session");
                    act.retire(ctx);
                }
            },
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(task) = self.generation.take().and_then(|g| g.task) {
            task.abort();
        }
        if let Some(cluster) = &self.deps.cluster
            && !self.lease_lost
        {
            let release = cluster
                .leases()
                .release(&self.record.id, cluster.replica_id());
            actix_rt::spawn(async move {
                let _ = release.await;
            });
        }
    }
}

/// Start a generation for a user message (REST `messages` or WS `send`).
#[derive(Message)]
#[rtype(result = "Result<SendAccepted, SessionError>")]
pub struct Send {
    /// The message.
    pub message: SendMessage,
}

/// Stop the running generation, if any.
#[derive(Message)]
#[rtype(result = "Result<(), SessionError>")]
pub struct Cancel;

/// Register a subscriber queue.
#[derive(Message)]
#[rtype(result = "Result<Joined, SessionError>")]
pub struct Subscribe {
    /// Where events go; `None` for a subscriber on another replica (it reads
    /// the bus, and only needs the state it starts from).
    pub queue: Option<Arc<SubscriberQueue>>,
}

/// The session's state at the moment a subscriber joined.
pub struct Joined {
    /// Highest `seq` when it joined; its queue gets every later event.
    pub last_seq: u64,
    /// Whether a generation was running.
    pub generating: bool,
    /// The log's epoch.
    pub epoch: String,
    /// The running generation's text up to `last_seq`.
    pub partial: Option<Partial>,
    /// Fires once every event up to `last_seq` is in the log and published.
    pub registered: oneshot::Receiver<()>,
}

/// The session with its messages, for `GET /v1/sessions/{id}`.
#[derive(Message)]
#[rtype(result = "Result<SessionWithMessages, SessionError>")]
pub struct GetState;

/// Stop now without events (the session is being deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Terminate;

/// Graceful shutdown: refuse new sends, let the running generation finish
/// within `grace`, else hand it over to another replica (with a cluster) or
/// end it as `interrupted`; then flush the store and, with a cluster, give
/// the lease back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    /// How long to wait for a running generation.
    pub grace: Duration,
}

/// One step of a running generation, sent by its stream task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GenerationStep {
    /// Which generation (a late step of a cancelled one is ignored).
    pub generation_id: String,
    /// What happened.
    pub step: Step,
}

/// What a generation's stream produced.
pub enum Step {
    /// Chunks that arrived together; an error is last and ends the stream.
    Chunks(Vec<Result<LlmChunk, LlmError>>),
    /// The stream ended normally.
    Done,
}

impl Handler<Send> for SessionActor {
    type Result = ResponseActFuture<Self, Result<SendAccepted, SessionError>>;

    fn handle(&mut self, msg: Send, ctx: &mut Self::Context) -> Self::Result {
        let client_msg_id = msg.message.client_msg_id.clone();
        let refused = |e| Box::pin(fut::ready(Err(e))) as Self::Result;
        if self.retiring {
            return refused(SessionError::Retired);
        }
        if let Some(id) = &client_msg_id {
            if let Some(accepted) = self.sent.get(id) {
                return Box::pin(fut::ready(Ok(accepted.clone())));
            }
            if let Some(pending) = &self.sending
                && pending.client_msg_id.as_deref() == Some(id.as_str())
            {
                return Box::pin(fut::ready(Ok(pending.accepted.clone())));
            }
        }
        if self.draining {
            return refused(SessionError::Overloaded(
                "the server is shutting down".into(),
            ));
        }
        if self.sending.is_some() || self.generation.is_some() || self.finishing.is_some() {
            return refused(SessionError::Conflict);
        }
        self.touch();
        let now = now_rfc3339();
        let generation_id = new_id();
        let user = MessageRecord {
            id: new_id(),
            session_id: self.record.id.clone(),
            role: Role::User,
            content: msg.message.content,
            attachments: msg.message.attachments,
            status: MessageStatus::Complete,
            created_at: now.clone(),
            client_msg_id: client_msg_id.clone(),
            generation_id: Some(generation_id.clone()),
            usage: None,
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
        };
        let accepted = SendAccepted {
            message_id: user.id.clone(),
            generation_id: generation_id.clone(),
        };
        self.sending = Some(PendingSend {
            client_msg_id: client_msg_id.clone(),
            accepted: accepted.clone(),
        });
        let new_title = self.record.title.is_empty().then(|| {
            let title: String = user.content.trim().chars().take(AUTO_TITLE_CHARS).collect();
            title.split_whitespace().collect::<Vec<_>>().join(" ")
        });
        if let Some(title) = &new_title {
            self.record.title = title.clone();
        }
        self.record.updated_at = now;
        // The user message is durable before its generation starts; the
        // assistant message is stored as `streaming` in the same transaction.
        // The provider is asked meanwhile, so its time to first token hides
        // the save, but none of its chunks is handled before the save lands.
        // After a failed save the store is likely still down: the provider
        // is asked only once a save lands, so an outage costs no requests.
        let saved = self.persist_acked(vec![user.clone(), assistant.clone()]);
        let started = Instant::now();
        let early = (!self.save_failed).then(|| {
            let request = self.build_request(self.messages.iter().chain([&user]), None);
            let (open, gate) = oneshot::channel();
            (
                self.spawn_stream(ctx, &generation_id, request, Some(gate)),
                open,
            )
        });
        Box::pin(
            async move {
                saved
                    .await
                    .unwrap_or_else(|_| Err(StoreError("writer stopped".into())))
            }
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.sending = None;
                act.save_failed = result.is_err();
                if let Err(e) = result {
                    if let Some((task, _)) = early {
                        task.abort();
                    }
                    return Err(SessionError::from(e));
                }
                act.emit(EventBody::UserMessage {
                    message: user.to_message(),
                });
                if let Some(title) = new_title.filter(|t| !t.is_empty()) {
                    act.emit(EventBody::Title { title });
                }
                act.messages.push(user);
                act.messages.push(assistant);
                if let Some(id) = client_msg_id {
                    act.sent.insert(id, accepted.clone());
                }
                let index = act.messages.len() - 1;
                match early {
                    Some((task, open)) => {
                        act.start_generation(generation_id, index, false, task, started);
                        // The task is gone already only if it was aborted.
                        let _ = open.send(());
                    }
                    None => {
                        let request = act.request_for(index, false);
                        let task = act.spawn_stream(ctx, &generation_id, request, None);
                        act.start_generation(generation_id, index, false, task, started);
                    }
                }
                if std::mem::take(&mut act.cancel_requested) {
                    act.finish(ctx, FinishReason::Cancelled, None);
                }
                Ok(accepted)
            }),
        )
    }
}

impl Handler<Cancel> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, _: Cancel, ctx: &mut Self::Context) -> Self::Result {
        if self.retiring {
            return Err(SessionError::Retired);
        }
        self.touch();
        if self.generation.is_some() {
            self.finish(ctx, FinishReason::Cancelled, None);
        } else if self.sending.is_some() {
            self.cancel_requested = true;
        }
        Ok(())
    }
}

impl Handler<Subscribe> for SessionActor {
    type Result = Result<Joined, SessionError>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        if self.retiring {
            return Err(SessionError::Retired);
        }
        self.touch();
        self.watchers.retain(|q| !q.is_closed());
        self.watchers.extend(msg.queue.clone());
        let (registered, rx) = oneshot::channel();
        let _ = self.outbox.send(OutboxCmd::Subscribe {
            queue: msg.queue,
            registered,
        });
        // While `generation_end` waits for its write, it is not yet in the
        // outbox: the joiner starts before it and receives it live.
        let finishing = self.finishing.is_some();
        Ok(Joined {
            last_seq: self.last_seq - u64::from(finishing),
            generating: self.generation.is_some() || finishing,
            epoch: self.epoch.clone(),
            partial: self.partial(),
            registered: rx,
        })
    }
}

impl Handler<GetState> for SessionActor {
    type Result = Result<SessionWithMessages, SessionError>;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> Self::Result {
        if self.retiring {
            return Err(SessionError::Retired);
        }
        let mut session = self.record.to_session();
        session.last_seq = self.last_seq;
        Ok(SessionWithMessages {
            session,
            system_prompt: self.record.system_prompt.clone(),
            messages: self
                .messages
                .iter()
                .map(MessageRecord::to_message)
                .collect(),
        })
    }
}

impl Handler<Terminate> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Terminate, ctx: &mut Self::Context) {
        self.retiring = true;
        ctx.stop();
    }
}

impl Handler<Drain> for SessionActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Drain, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let ended = if self.generation.is_some() {
            let (tx, rx) = oneshot::channel();
            self.drain_waiters.push(tx);
            Some(rx)
        } else {
            None
        };
        Box::pin(
            async move {
                if let Some(ended) = ended {
                    let _ = tokio::time::timeout(msg.grace, ended).await;
                }
            }
            .into_actor(self)
            .then(|_, act, ctx| {
                if act.deps.cluster.is_some() && act.generation.is_some() {
                    act.hand_over();
                } else {
                    act.finish(ctx, FinishReason::Interrupted, None);
                }
                // A `generation_end` waiting for its write goes to the outbox
                // before the barrier below, so it is logged before the lease
                // is given back.
                let ended = act.finishing.is_some().then(|| {
                    let (tx, rx) = oneshot::channel();
                    act.drain_waiters.push(tx);
                    rx
                });
                let flushed = act.persist_acked(Vec::new());
                async move {
                    if let Some(ended) = ended {
                        let _ = ended.await;
                    }
                    let _ = flushed.await;
                }
                .into_actor(act)
            })
            .then(|_, act, _| {
                // Every write has landed; once every event is logged and
                // published too, the lease is given back so that another
                // replica serves the session (and continues a generation
                // handed over) right away.
                let (registered, logged) = oneshot::channel();
                let _ = act.outbox.send(OutboxCmd::Subscribe {
                    queue: None,
                    registered,
                });
                let release = act
                    .deps
                    .cluster
                    .as_ref()
                    .map(|c| c.leases().release(&act.record.id, c.replica_id()));
                if release.is_some() {
                    act.retiring = true;
                }
                async move {
                    let _ = logged.await;
                    if let Some(release) = release {
                        let _ = release.await;
                    }
                }
                .into_actor(act)
            })
            .map(|_, act, ctx| {
                if act.retiring {
                    act.registry.do_send(Retire {
                        session_id: act.record.id.clone(),
                        addr: ctx.address(),
                    });
                    ctx.stop();
                }
            }),
        )
    }
}

impl Handler<GenerationStep> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: GenerationStep, ctx: &mut Self::Context) {
        if self.generation.as_ref().map(|g| &*g.id) != Some(msg.generation_id.as_str()) {
            return;
        }
        self.touch();
        match msg.step {
            Step::Chunks(chunks) => {
                for chunk in chunks {
                    match chunk {
                        Ok(chunk) => self.on_chunk(chunk),
                        Err(error) => {
                            self.on_stream_error(ctx, error);
                            return;
                        }
                    }
                }
            }
            Step::Done => {
                let reason = self
                    .generation
                    .as_ref()
                    .and_then(|g| g.finish)
                    .unwrap_or(FinishReason::Stop);
                self.finish(ctx, reason, None);
            }
        }
    }
}
