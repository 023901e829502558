//! The session actor: one per live conversation, the single writer of its
//! events.
//!
//! It allocates `seq`, hands each event to its outbox (log, then fan-out),
//! runs generations and persists messages. It never waits on I/O inside a
//! handler: the provider's stream runs in its own task and feeds chunks
//! back as [`GenerationStep`] messages, and store writes go through a
//! per-session writer task so they land in order.
//!
//! This file holds the actor's state, its [`Phase`], its messages and their
//! handlers, which hand the work to:
//! - [`generation`]: a send, the provider's stream, its chunks, the end;
//! - [`agent`]: the agent loop: tool calls saved, run, their results saved,
//!   and the provider asked again;
//! - [`recovery`]: what a replica that died left behind (repair, takeover),
//!   graceful shutdown (drain, handover), and stopping;
//! - [`writer`]: the store writes, in order, and fencing;
//! - [`prompt`]: what the provider is asked.

mod agent;
mod generation;
mod prompt;
mod recovery;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use sluice_backends::log::EncodedEvent;
use sluice_backends::store::{MessageRecord, SessionRecord};
use sluice_protocol::rest::{SendAccepted, SendMessage, SessionWithMessages};
use sluice_protocol::{Event, EventBody, Partial};
use tokio::sync::{mpsc, oneshot};

use crate::deps::SessionDeps;
use crate::error::SessionError;
use crate::metrics::GaugeGuard;
use crate::outbox::{self, OutboxCmd, Sinks};
use crate::subscriber::SubscriberQueue;

pub use generation::Step;
use generation::{Finishing, Generation, Saving};
pub use recovery::TAKEOVER_LOOKBACK;
use recovery::{Recovery, Retirement};
use writer::Writer;

/// What an actor does once it has started.
struct Startup {
    /// What a replica that died left behind: settle its unfinished
    /// messages, take over its generation.
    recovery: Recovery,
    /// Fires if the log fences the outbox off.
    outbox_fenced: oneshot::Receiver<()>,
}

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// A session's state as read from the backends, to start its actor.
pub struct Loaded {
    /// The session as stored, claimed by this replica (its `fence` is ours).
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
    /// The session as stored; `last_seq` in it is what was last persisted,
    /// and `fence` is this actor's claim, carried on every write.
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
    /// What the actor is doing; see [`Phase`].
    phase: Phase,
    /// Graceful shutdown began: sends are refused while the phase runs on
    /// to [`Phase::Idle`] (within the grace period).
    draining: bool,
    /// Told when the phase next comes to what each waits for (a drain).
    phase_waiters: Vec<(Awaited, oneshot::Sender<()>)>,
    /// The last send's save failed, so the store is likely down: the next
    /// send asks the provider only once its own save lands, so an outage
    /// costs no provider requests.
    last_save_failed: bool,
    /// Ordered log-then-deliver queue.
    outbox: mpsc::UnboundedSender<OutboxCmd>,
    /// Ordered store writes.
    writer: Writer,
    /// Subscribers, kept only to know whether anyone is watching.
    watchers: Vec<Arc<SubscriberQueue>>,
    /// Last time anything happened; the idle timer counts from here.
    last_active: Instant,
    /// Told once this actor has stopped and let its lease go, so the
    /// registry forgets it (and may start a new one).
    on_retired: Recipient<Retired>,
    deps: Arc<SessionDeps>,
    /// What `started` does; taken there.
    startup: Option<Startup>,
    /// Keeps `sluice_live_sessions` counting this actor.
    _live: GaugeGuard,
}

/// What a session actor is doing. One at a time; each phase carries what
/// only it needs, and a send is refused (`conflict`) in every phase but
/// [`Phase::Idle`].
enum Phase {
    /// Nothing runs.
    Idle,
    /// A send's user message (and its `streaming` assistant message) is
    /// being saved; its generation starts once the save lands.
    Saving(Saving),
    /// A generation streams from the provider.
    Generating(Generation),
    /// A generation ended; its `generation_end` waits for the final write.
    Finishing(Finishing),
    /// The actor is stopping: every command is answered
    /// [`SessionError::Retired`], so callers go back to the registry.
    Stopping {
        /// Told once it has stopped writing and let its lease go.
        retired: Vec<oneshot::Sender<()>>,
    },
}

/// A phase a drain waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    /// [`Phase::Idle`].
    Idle,
    /// Any phase but [`Phase::Saving`].
    NotSaving,
}

impl Phase {
    /// Whether this phase is, or can no longer become, what `awaited` waits
    /// for (a stopping actor ends every wait).
    fn settles(&self, awaited: Awaited) -> bool {
        match (self, awaited) {
            (Phase::Stopping { .. }, _) => true,
            (Phase::Idle, _) => true,
            (Phase::Saving(_), _) => false,
            (_, Awaited::Idle) => false,
            (_, Awaited::NotSaving) => true,
        }
    }
}

impl SessionActor {
    /// Builds the actor from stored state. What a replica that died left
    /// behind is planned here and done when the actor starts.
    pub fn new(loaded: Loaded, on_retired: Recipient<Retired>, deps: Arc<SessionDeps>) -> Self {
        let Loaded {
            record,
            mut messages,
            epoch,
            log_last_seq,
            tail,
        } = loaded;
        let recovery = recovery::plan(&record, &mut messages, log_last_seq, tail.as_deref());
        let sent = messages
            .iter()
            .filter_map(|m| {
                let client_msg_id = m.client_msg_id.clone()?;
                Some((
                    client_msg_id,
                    SendAccepted {
                        message_id: m.id.clone(),
                        generation_id: m.generation_id.clone().unwrap_or_default(),
                        replayed: false,
                    },
                ))
            })
            .collect();
        let outbox = outbox::spawn(
            record.id.clone(),
            Sinks {
                log: deps.log.clone(),
                bus: deps.cluster.bus().clone(),
                fence: record.fence,
            },
        );
        Self {
            last_seq: record.last_seq.max(log_last_seq),
            record,
            messages,
            sent,
            epoch,
            phase: Phase::Idle,
            draining: false,
            phase_waiters: Vec::new(),
            last_save_failed: false,
            outbox: outbox.commands,
            writer: Writer::new(deps.store.clone()),
            watchers: Vec::new(),
            last_active: Instant::now(),
            on_retired,
            startup: Some(Startup {
                recovery,
                outbox_fenced: outbox.fenced,
            }),
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

    /// The session record as it is to be written now.
    fn record_now(&mut self) -> SessionRecord {
        self.record.last_seq = self.last_seq;
        self.record.clone()
    }

    /// Enters `phase` and tells whoever waited for it.
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        let (settled, waiting) = std::mem::take(&mut self.phase_waiters)
            .into_iter()
            .partition::<Vec<_>, _>(|(awaited, _)| self.phase.settles(*awaited));
        self.phase_waiters = waiting;
        for (_, waiter) in settled {
            let _ = waiter.send(());
        }
    }

    /// Enters [`Phase::Idle`].
    fn become_idle(&mut self) {
        self.set_phase(Phase::Idle);
    }

    /// Fires when the phase comes to what `awaited` waits for; `None` if it
    /// is there now.
    fn when(&mut self, awaited: Awaited) -> Option<oneshot::Receiver<()>> {
        if self.phase.settles(awaited) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.phase_waiters.push((awaited, tx));
        Some(rx)
    }

    /// The highest `seq` handed to the outbox: `last_seq`, except while a
    /// `generation_end` (whose `seq` is allocated) waits for its write.
    fn outboxed_seq(&self) -> u64 {
        match &self.phase {
            Phase::Finishing(finishing) => finishing.end_seq - 1,
            _ => self.last_seq,
        }
    }

    /// What a subscriber joining now starts from. A `queue` is registered
    /// with the outbox; without one (a subscriber on another replica, which
    /// reads the bus) only the barrier is placed.
    fn join(&mut self, queue: Option<Arc<SubscriberQueue>>) -> Result<Joined, SessionError> {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return Err(SessionError::Retired);
        }
        self.touch();
        self.watchers.retain(|q| !q.is_closed());
        let (registered, rx) = oneshot::channel();
        let command = match queue {
            Some(queue) => {
                self.watchers.push(queue.clone());
                OutboxCmd::Subscribe { queue, registered }
            }
            None => OutboxCmd::Barrier {
                reached: registered,
            },
        };
        let _ = self.outbox.send(command);
        Ok(Joined {
            // A `generation_end` waiting for its write is not in the outbox
            // yet: the joiner starts before it and receives it live.
            last_seq: self.outboxed_seq(),
            generating: matches!(self.phase, Phase::Generating(_) | Phase::Finishing(_)),
            epoch: self.epoch.clone(),
            partial: self.partial(),
            registered: rx,
        })
    }

    fn is_idle(&mut self) -> bool {
        self.watchers.retain(|q| !q.is_closed());
        matches!(self.phase, Phase::Idle)
            && self.watchers.is_empty()
            && self.last_active.elapsed() >= self.deps.config.idle_timeout
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.writer.start(ctx.address().recipient());
        if let Some(Startup {
            recovery,
            outbox_fenced,
        }) = self.startup.take()
        {
            ctx.spawn(outbox_fenced.into_actor(self).map(|fenced, act, ctx| {
                if fenced.is_ok() {
                    act.retire(ctx, Retirement::Lost);
                }
            }));
            self.recover(ctx, recovery);
        }
        let cluster = self.deps.cluster.clone();
        ctx.run_interval(cluster.lease_ttl() / 3, move |act, ctx| {
            if matches!(act.phase, Phase::Stopping { .. }) {
                // Retiring gives the lease back; a renewal now could take
                // it again after that.
                return;
            }
            let renew =
                cluster
                    .leases()
                    .renew(&act.record.id, cluster.replica_id(), cluster.lease_ttl());
            ctx.spawn(renew.into_actor(act).map(|renewed, act, ctx| match renewed {
                Ok(true) => {}
                Ok(false) => {
                    act.retire(ctx, Retirement::Lost);
                }
                // Nobody else can take it while the lease store is down, and
                // a replica that can reach it and takes the session claims
                // it first, which fences this actor's writes off.
                Err(e) => {
                    tracing::warn!(session_id = %act.record.id, error = %e, "lease not renewed")
                }
            }));
        });
        ctx.run_interval(
            IDLE_CHECK_INTERVAL.min(self.deps.config.idle_timeout),
            |act, ctx| {
                if act.is_idle() {
                    tracing::debug!(session_id = %act.record.id, "retiring idle session");
                    act.retire(ctx, Retirement::Idle);
                }
            },
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Every way to stop goes through `retire`, which ends the generation
        // task; this covers an actor stopped by its arbiter.
        if let Phase::Generating(generation) = &self.phase {
            generation.abort();
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

/// Register a local subscriber's queue.
#[derive(Message)]
#[rtype(result = "Result<Joined, SessionError>")]
pub struct Subscribe {
    /// Where events go.
    pub queue: Arc<SubscriberQueue>,
}

/// A subscriber on another replica joins: it reads the bus, and needs only
/// the state it starts from.
#[derive(Message)]
#[rtype(result = "Result<Joined, SessionError>")]
pub struct Join;

/// The session's state at the moment a subscriber joined.
pub struct Joined {
    /// Highest `seq` when it joined; later events reach it.
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

/// Stop now: the session was deleted. Subscribers are told so.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Terminate;

/// Graceful shutdown: refuse new sends, let a send being saved and the
/// running generation finish within `grace`, else hand the generation over
/// to another replica (or, alone, end it as `interrupted`); then flush the
/// store, give the lease back and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    /// How long to wait for what runs.
    pub grace: Duration,
}

/// One step of a running generation, sent by its stream task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GenerationStep {
    /// Which generation (a late step of a cancelled one is ignored).
    pub generation_id: Arc<str>,
    /// What happened.
    pub step: Step,
}

/// A tool call of the running generation answered. Sent by its task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ToolDone {
    /// Which generation (a late answer of a cancelled one is ignored).
    pub generation_id: Arc<str>,
    /// The call's tool message.
    pub message_id: String,
    /// What it gave.
    pub outcome: crate::tools::Outcome,
}

/// The store refused a write: another replica claimed the session. Sent by
/// the writer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fenced;

/// This actor has stopped and let its lease go. Sent to the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retired {
    /// The session.
    pub session_id: String,
    /// The actor that stopped.
    pub addr: Addr<SessionActor>,
}

impl Handler<Send> for SessionActor {
    type Result = ResponseActFuture<Self, Result<SendAccepted, SessionError>>;

    fn handle(&mut self, msg: Send, ctx: &mut Self::Context) -> Self::Result {
        self.send(msg.message, ctx)
    }
}

impl Handler<Cancel> for SessionActor {
    type Result = Result<(), SessionError>;

    fn handle(&mut self, _: Cancel, ctx: &mut Self::Context) -> Self::Result {
        self.cancel(ctx)
    }
}

impl Handler<Subscribe> for SessionActor {
    type Result = Result<Joined, SessionError>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        self.join(Some(msg.queue))
    }
}

impl Handler<Join> for SessionActor {
    type Result = Result<Joined, SessionError>;

    fn handle(&mut self, _: Join, _: &mut Self::Context) -> Self::Result {
        self.join(None)
    }
}

impl Handler<GetState> for SessionActor {
    type Result = Result<SessionWithMessages, SessionError>;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> Self::Result {
        if matches!(self.phase, Phase::Stopping { .. }) {
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
        self.retire(ctx, Retirement::Deleted);
    }
}

impl Handler<Drain> for SessionActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Drain, _: &mut Self::Context) -> Self::Result {
        self.drain(msg.grace)
    }
}

impl Handler<GenerationStep> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: GenerationStep, ctx: &mut Self::Context) {
        self.on_step(ctx, msg);
    }
}

impl Handler<ToolDone> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: ToolDone, ctx: &mut Self::Context) {
        self.on_tool_done(ctx, msg);
    }
}

impl Handler<Fenced> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Fenced, ctx: &mut Self::Context) {
        self.retire(ctx, Retirement::Lost);
    }
}
