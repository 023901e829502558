//! How a session outlives a replica, and how its actor stops.
//!
//! - **Repair and takeover** (at start): a replica that died left messages
//!   `streaming`. The last one is rebuilt from its checkpoint plus the
//!   logged tokens after it and continued, in the provider's way
//!   ([`Continuation`]), or ended `interrupted` with its text kept; older
//!   ones are settled as `interrupted`.
//! - **Drain and handover** (at shutdown): a send being saved and a running
//!   generation get the grace period; a generation still running after it
//!   is saved as a checkpoint holding every token and left to the next
//!   owner (with other replicas), or ended `interrupted` (alone).
//! - **Retirement**: every way to stop, in one place, so the lease is given
//!   back before the registry hears the actor is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use sluice_backends::log::EncodedEvent;
use sluice_backends::store::{MessageRecord, SessionRecord, ToolRecord};
use sluice_protocol::{EventBody, FinishReason, MessageStatus, Role};
use tokio::sync::oneshot;

use super::generation::{Ending, Start, status_for};
use super::{Awaited, Phase, Retired, SessionActor};
use crate::Continuation;
use crate::outbox::OutboxCmd;
use crate::subscriber::CloseReason;
use crate::tools::INTERRUPTED;

/// What start-up does about a replica that died.
pub(super) struct Recovery {
    /// Older messages found `streaming`, or whose end is in the log, to
    /// save settled.
    repaired: Vec<MessageRecord>,
    /// The generation left running, to continue or end.
    takeover: Option<Takeover>,
}

/// A generation to pick up after a takeover.
struct Takeover {
    generation_id: Arc<str>,
    message_index: usize,
    /// The step to go on with: the one after its last tool calls, if it
    /// made any.
    step: u32,
    /// Whether its text since its last tool calls (or since it started) is
    /// empty: then the step is asked anew, with nothing to continue.
    fresh: bool,
    /// Whether the answer so far is known exactly, so asking the provider to
    /// continue it gives one whole answer.
    continuable: bool,
    /// Whether its `generation_start` is in the log: clients saw it start.
    announced: bool,
}

/// How many events before the checkpoint's `last_seq` the log is read from
/// for a takeover: enough to find the `generation_start` of an answer with
/// no text yet (`user_message`, `title`, `generation_start`).
pub const TAKEOVER_LOOKBACK: u64 = 3;

/// Why an actor stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retirement {
    /// Nobody watched it and nothing ran for the idle timeout.
    Idle,
    /// Graceful shutdown drained it.
    Drained,
    /// The session was deleted: subscribers are told, nothing is flushed.
    Deleted,
    /// Another replica owns the session now (its lease moved, or a write
    /// was fenced off): nothing more is written.
    Lost,
}

/// Rebuilds, in `messages`, what a replica that died left unfinished: the
/// last answer (the last message but its own tool messages), if
/// `streaming`, gets the logged tokens after its checkpoint; one whose end
/// is in the log is settled; other `streaming` ones are interrupted (an
/// answer with messages after it is no answer to continue), and so are the
/// tool calls of every answer but the one taken over (whose calls the
/// takeover settles, telling clients). `tail` is the log from
/// [`TAKEOVER_LOOKBACK`] events before the checkpoint's `last_seq`.
pub(super) fn plan(
    record: &SessionRecord,
    messages: &mut [MessageRecord],
    log_last_seq: u64,
    tail: Option<&[Arc<EncodedEvent>]>,
) -> Recovery {
    let mut repaired = Vec::new();
    let mut takeover: Option<Takeover> = None;
    let last = messages
        .iter()
        .rposition(|m| m.role != Role::Tool)
        .unwrap_or(0);
    for i in 0..messages.len() {
        let m = &mut messages[i];
        if m.status != MessageStatus::Streaming || m.role == Role::Tool {
            continue;
        }
        let generation_id = m.generation_id.clone().unwrap_or_default();
        if i != last || generation_id.is_empty() {
            m.status = MessageStatus::Interrupted;
            repaired.push(m.clone());
            continue;
        }
        // The checkpoint holds every token up to `record.last_seq`; the
        // log holds the ones after it, if it kept them all.
        let from = record.last_seq;
        let events = tail.unwrap_or_default();
        let announced = events.iter().any(|e| {
            matches!(&e.event.body, EventBody::GenerationStart { generation_id: g, .. } if *g == generation_id)
        });
        let after: Vec<_> = events.iter().filter(|e| e.seq() > from).collect();
        let complete = log_last_seq <= from
            || (tail.is_some()
                && after.len() as u64 == log_last_seq - from
                && after.first().is_some_and(|e| e.seq() == from + 1));
        let mut ended = None;
        if complete {
            for e in after {
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
        // Its calls, wherever replicas' clocks put them in the order.
        let calls: Vec<&ToolRecord> = messages
            .iter()
            .filter(|c| c.role == Role::Tool)
            .filter(|c| c.generation_id.as_deref() == Some(generation_id.as_str()))
            .filter_map(|c| c.tool.as_ref())
            .collect();
        let last_step = calls.iter().max_by_key(|t| t.step);
        let text_from = last_step.map_or(0, |t| t.offset);
        let content = &messages[i].content;
        takeover = Some(Takeover {
            generation_id: generation_id.into(),
            message_index: i,
            step: last_step.map_or(0, |t| t.step + 1),
            fresh: complete && content.len() <= text_from,
            continuable: complete,
            // Text or calls are stored only after its start went out (the
            // lookback cannot reach that far back once steps ran).
            announced: announced || !calls.is_empty() || !content.is_empty(),
        });
    }
    // Tool calls left running by an answer that is not taken over.
    let taken = takeover.as_ref().map(|t| t.generation_id.to_string());
    for m in messages.iter_mut() {
        if m.role == Role::Tool && m.status == MessageStatus::Streaming && m.generation_id != taken
        {
            m.status = MessageStatus::Interrupted;
            INTERRUPTED.clone_into(&mut m.content);
            repaired.push(m.clone());
        }
    }
    Recovery { repaired, takeover }
}

impl SessionActor {
    /// Does what [`plan`] found at start.
    pub(super) fn recover(&mut self, ctx: &mut Context<Self>, recovery: Recovery) {
        if !recovery.repaired.is_empty() {
            tracing::info!(session_id = %self.record.id, count = recovery.repaired.len(), "settled messages left unfinished");
            let record = self.record_now();
            self.writer.save(record, recovery.repaired);
        }
        if let Some(takeover) = recovery.takeover {
            self.take_over(ctx, takeover);
        }
    }

    /// Picks up a generation a replica that died left running. An answer
    /// with text is continued from the answer so far, or ended as
    /// `interrupted` where the answer so far is not known exactly or the
    /// provider's way to continue is not configured. An answer with no text
    /// at all starts afresh (asking anew is what any provider does with an
    /// empty answer), announced with `generation_start` unless the log shows
    /// it was (its replica may have stopped right after saving it).
    fn take_over(&mut self, ctx: &mut Context<Self>, takeover: Takeover) {
        let fresh = takeover.fresh;
        let continues =
            !fresh && takeover.continuable && self.deps.config.continuation != Continuation::Off;
        let outcome = match (fresh, continues) {
            (true, _) => "restarted",
            (false, true) => "continued",
            (false, false) => "interrupted",
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
        if fresh || continues {
            // Calls that were running when their replica died: the model
            // is told, and so are clients; none runs again.
            let interrupted = self.settle_calls(
                &takeover.generation_id,
                MessageStatus::Interrupted,
                &[],
                true,
            );
            if !interrupted.is_empty() {
                let record = self.record_now();
                self.writer.save(record, interrupted);
            }
            let prompt = self.request_for(takeover.message_index, continues, takeover.step);
            let task = self.spawn_stream(ctx, &takeover.generation_id, prompt, None);
            let start = if continues {
                Start::Continued
            } else {
                Start::Restarted {
                    announced: takeover.announced,
                }
            };
            self.start_generation(
                takeover.generation_id,
                takeover.message_index,
                start,
                takeover.step,
                task,
                Instant::now(),
            );
        } else {
            self.settle(
                ctx,
                Ending {
                    generation_id: takeover.generation_id,
                    message_index: takeover.message_index,
                    usage: None,
                    reason: FinishReason::Interrupted,
                    error: None,
                    sources: Vec::new(),
                    answered: Vec::new(),
                    calls_announced: true,
                    cached: false,
                },
            );
        }
    }

    /// Graceful shutdown (see [`super::Drain`]): waits for what runs to end
    /// within `grace`; then for a send still saving to land (a store that
    /// hangs fails by its own timeout), so its events go out here; hands a
    /// generation still running over (or interrupts it); waits for the last
    /// `generation_end` to be written; and retires.
    pub(super) fn drain(&mut self, grace: Duration) -> ResponseActFuture<Self, ()> {
        self.draining = true;
        let idle = self.when(Awaited::Idle);
        Box::pin(
            fut::wrap_future::<_, Self>(async move {
                if let Some(idle) = idle {
                    let _ = tokio::time::timeout(grace, idle).await;
                }
            })
            .then(|(), act, _| wait(act.when(Awaited::NotSaving)))
            .then(|(), act, ctx| {
                match act.phase {
                    Phase::Generating(_) if act.deps.cluster.is_shared() => act.hand_over(),
                    Phase::Generating(_) => act.finish(ctx, FinishReason::Interrupted, None),
                    _ => {}
                }
                // A `generation_end` waiting for its write reaches the outbox
                // before the actor retires, so it is logged before the
                // lease is given back.
                wait(act.when(Awaited::Idle))
            })
            .then(|(), act, ctx| wait(Some(act.retire(ctx, Retirement::Drained)))),
        )
    }

    /// Shutdown outlasted the grace period with a generation running and
    /// other replicas to take it: stop the provider's stream and save the
    /// answer so far as a checkpoint holding every token (still
    /// `streaming`), so that the next owner continues it exactly where it
    /// stopped.
    fn hand_over(&mut self) {
        let Some(message) = self.generating_message() else {
            return;
        };
        if let Phase::Generating(generation) = &self.phase {
            generation.abort();
            tracing::info!(session_id = %self.record.id, generation_id = %generation.id, "handing a running generation over");
        }
        self.deps.metrics.handovers_total.inc();
        let record = self.record_now();
        self.writer.save(record, vec![message]);
        // The answer stays `streaming` in the store, for the next owner.
        self.become_idle();
    }

    /// Stops the actor for `why`: ends what runs; unless the session is
    /// lost or deleted, waits until every write has landed and every event
    /// is logged; gives the lease back, tells the registry, and stops. The
    /// returned receiver fires once that is done, however many times
    /// retirement is asked for.
    pub(super) fn retire(
        &mut self,
        ctx: &mut Context<Self>,
        why: Retirement,
    ) -> oneshot::Receiver<()> {
        let (done, retired) = oneshot::channel();
        if let Phase::Stopping { retired: waiters } = &mut self.phase {
            waiters.push(done);
            return retired;
        }
        if let Phase::Generating(generation) = &self.phase {
            generation.abort();
        }
        if why == Retirement::Lost {
            tracing::error!(session_id = %self.record.id, "another replica owns this session now; stopping without writing");
            self.deps.metrics.lease_losses_total.inc();
            self.writer.abandon();
        }
        self.set_phase(Phase::Stopping {
            retired: vec![done],
        });
        // Subscribers of a deleted session are told so; those of a lost one
        // resume from their cursor wherever the session lives now. Either
        // way the events not yet logged are dropped: a lost session's next
        // owner allocates those seqs itself.
        match why {
            Retirement::Deleted => {
                let _ = self.outbox.send(OutboxCmd::Close(CloseReason::Deleted));
            }
            Retirement::Lost => {
                let _ = self.outbox.send(OutboxCmd::Close(CloseReason::Resume));
            }
            Retirement::Idle | Retirement::Drained => {}
        }
        let settled = matches!(why, Retirement::Idle | Retirement::Drained).then(|| {
            let record = self.record_now();
            let flushed = self.writer.flush(record);
            let (reached, logged) = oneshot::channel();
            let _ = self.outbox.send(OutboxCmd::Barrier { reached });
            async move {
                flushed.await;
                let _ = logged.await;
            }
        });
        let cluster = self.deps.cluster.clone();
        let on_retired = self.on_retired.clone();
        let session_id = self.record.id.clone();
        let addr = ctx.address();
        ctx.spawn(
            async move {
                if let Some(settled) = settled {
                    settled.await;
                }
                // Before the registry hears of it: a new actor for this
                // session may start as soon as it does, and must find the
                // lease free, not released under it.
                if let Err(e) = cluster
                    .leases()
                    .release(&session_id, cluster.replica_id())
                    .await
                {
                    tracing::warn!(session_id, error = %e, "lease not released; it expires by itself");
                }
                on_retired.do_send(Retired { session_id, addr });
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                if let Phase::Stopping { retired } = &mut act.phase {
                    for waiter in retired.drain(..) {
                        let _ = waiter.send(());
                    }
                }
                ctx.stop();
            }),
        );
        retired
    }
}

/// An actor future that waits for `rx` to fire (or its sender to go), if any.
fn wait(rx: Option<oneshot::Receiver<()>>) -> impl ActorFuture<SessionActor, Output = ()> {
    fut::wrap_future(async move {
        if let Some(rx) = rx {
            let _ = rx.await;
        }
    })
}
