//! The per-session outbox: appends events to the event log, publishes them
//! to other replicas, then hands them to local subscribers, strictly in `seq`
//! order.
//!
//! The session actor sends commands without waiting; the outbox batches
//! whatever has queued up into one log append, so a slow log slows delivery
//! but never the actor. A subscriber is registered in the same ordered stream
//! of commands, so it receives exactly the events after the point where it
//! joined, and everything before that point is already in the log when its
//! registration is acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use sluice_backends::bus::Bus;
use sluice_backends::log::{EncodedEvent, EventLog};
use sluice_backends::{BackendError, ErrorKind};

use crate::cluster::events_channel;
use crate::subscriber::{CloseReason, SubscriberQueue};

/// Most commands folded into one batch.
const MAX_BATCH: usize = 512;

/// After the log or bus failed, how long to deliver without them before
/// trying again, so a backend outage does not stall every batch by its
/// timeout.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the session actor asks of its outbox.
pub enum OutboxCmd {
    /// Log and deliver an event.
    Event(Arc<EncodedEvent>),
    /// Start delivering to `queue`; `registered` fires once every earlier
    /// event is in the log and published.
    Subscribe {
        /// The subscriber's queue.
        queue: Arc<SubscriberQueue>,
        /// Acknowledges the registration.
        registered: oneshot::Sender<()>,
    },
    /// Fires `reached` once every earlier event is in the log and
    /// published (a subscriber on another replica joins after it; a drain
    /// gives the lease back after it).
    Barrier {
        /// Fires at the barrier.
        reached: oneshot::Sender<()>,
    },
    /// Drops the events not yet logged and closes every local subscriber
    /// with `reason` (the session was deleted, or another replica owns it).
    Close(CloseReason),
}

/// Where an outbox sends events: the log, then the session's bus channel
/// (for subscribers on other replicas), then local subscribers.
pub struct Sinks {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The session actor's claim, carried on every append.
    pub fence: u64,
}

/// A running outbox: where commands go, and what fires if the log refuses
/// an append as fenced (another replica claimed the session; the events
/// that were refused reach nobody).
pub struct Spawned {
    /// Commands, in order.
    pub commands: mpsc::UnboundedSender<OutboxCmd>,
    /// Fires once if the log fences the outbox off.
    pub fenced: oneshot::Receiver<()>,
}

/// Starts the outbox task of `session_id` on the current arbiter.
pub fn spawn(session_id: String, sinks: Sinks) -> Spawned {
    let (commands, rx) = mpsc::unbounded_channel();
    let (fenced_tx, fenced) = oneshot::channel();
    actix_rt::spawn(run(session_id, sinks, rx, fenced_tx));
    Spawned { commands, fenced }
}

/// The outbox task's state.
struct Outbox {
    session_id: String,
    sinks: Sinks,
    /// The session's bus channel.
    channel: String,
    /// After a log or bus failure: until when to deliver without them.
    down_until: Option<Instant>,
    /// Told (once) when the log fences this outbox off.
    on_fenced: Option<oneshot::Sender<()>>,
    /// Events waiting for the next flush.
    events: Vec<Arc<EncodedEvent>>,
    subscribers: Vec<Arc<SubscriberQueue>>,
}

async fn run(
    session_id: String,
    sinks: Sinks,
    mut rx: mpsc::UnboundedReceiver<OutboxCmd>,
    on_fenced: oneshot::Sender<()>,
) {
    let mut outbox = Outbox {
        channel: events_channel(&session_id),
        session_id,
        sinks,
        down_until: None,
        on_fenced: Some(on_fenced),
        events: Vec::with_capacity(MAX_BATCH),
        subscribers: Vec::new(),
    };
    let mut commands = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut commands, MAX_BATCH).await > 0 {
        for command in commands.drain(..) {
            match command {
                OutboxCmd::Event(event) => outbox.events.push(event),
                OutboxCmd::Subscribe { queue, registered } => {
                    outbox.flush().await;
                    // Subscribers that left are dropped here too, not only
                    // at the next event: on a quiet session, clients that
                    // keep reconnecting would pile up.
                    outbox.subscribers.retain(|queue| !queue.is_closed());
                    outbox.subscribers.push(queue);
                    // The subscriber may have given up waiting; that is fine.
                    let _ = registered.send(());
                }
                OutboxCmd::Barrier { reached } => {
                    outbox.flush().await;
                    let _ = reached.send(());
                }
                OutboxCmd::Close(reason) => {
                    outbox.events.clear();
                    for queue in outbox.subscribers.drain(..) {
                        queue.close(reason);
                    }
                }
            }
        }
        outbox.flush().await;
    }
    // The session actor is gone: tell every subscriber the stream has ended.
    for queue in outbox.subscribers {
        queue.close(CloseReason::Ended);
    }
}

impl Outbox {
    /// Logs and publishes the waiting events, then hands them to local
    /// subscribers.
    async fn flush(&mut self) {
        if self.events.is_empty() {
            return;
        }
        if self.on_fenced.is_none() {
            // Fenced off before: these events are another owner's seqs.
            self.events.clear();
            return;
        }
        if self.down_until.is_some_and(|until| Instant::now() < until) {
            // The log or bus failed a moment ago: local subscribers get the
            // events without waiting; resumes across these seqs see a gap,
            // and subscribers on other replicas a hole (they resume).
        } else {
            match self.log_and_publish().await {
                Ok(()) => self.down_until = None,
                Err(e) if e.kind == ErrorKind::Fenced => {
                    tracing::error!(session_id = %self.session_id, error = %e, "events refused: another replica owns this session");
                    if let Some(fenced) = self.on_fenced.take() {
                        let _ = fenced.send(());
                    }
                    self.events.clear();
                    return;
                }
                Err(e) => {
                    tracing::warn!(session_id = %self.session_id, error = %e, "events not logged or published");
                    self.down_until = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        for event in self.events.drain(..) {
            self.subscribers.retain(|queue| queue.push(&event));
        }
    }

    async fn log_and_publish(&self) -> Result<(), BackendError> {
        let events = &self.events;
        self.sinks
            .log
            .append(&self.session_id, self.sinks.fence, events.clone())
            .await?;
        // One message per batch: the events' JSON, one per line.
        let mut payload = String::with_capacity(events.iter().map(|e| e.json.len() + 1).sum());
        for event in events {
            payload.push_str(&event.json);
            payload.push('\n');
        }
        self.sinks.bus.publish(&self.channel, payload).await?;
        Ok(())
    }
}
