//! The per-session outbox: appends events to the event log, then hands them
//! to subscribers, strictly in `seq` order.
//!
//! The session actor sends commands without waiting; the outbox batches
//! whatever has queued up into one log append, so a slow log slows delivery
//! but never the actor. A subscriber is registered in the same ordered stream
//! of commands, so it receives exactly the events after the point where it
//! joined, and everything before that point is already in the log when its
//! registration is acknowledged.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::log::{EncodedEvent, EventLog};
use crate::subscriber::{CloseReason, SubscriberQueue};

/// Most commands folded into one batch.
const MAX_BATCH: usize = 512;

/// What the session actor asks of its outbox.
pub enum OutboxCmd {
    /// Log and deliver an event.
    Event(Arc<EncodedEvent>),
    /// Start delivering to `queue`; `registered` fires once every earlier
    /// event is in the log.
    Subscribe {
        /// The subscriber's queue.
        queue: Arc<SubscriberQueue>,
        /// Acknowledges the registration.
        registered: oneshot::Sender<()>,
    },
}

/// Starts the outbox task of `session_id` on the current arbiter.
pub fn spawn(session_id: String, log: Arc<dyn EventLog>) -> mpsc::UnboundedSender<OutboxCmd> {
    let (tx, rx) = mpsc::unbounded_channel();
    actix_rt::spawn(run(session_id, log, rx));
    tx
}

async fn run(
    session_id: String,
    log: Arc<dyn EventLog>,
    mut rx: mpsc::UnboundedReceiver<OutboxCmd>,
) {
    let mut subscribers: Vec<Arc<SubscriberQueue>> = Vec::new();
    let mut commands = Vec::with_capacity(MAX_BATCH);
    let mut events: Vec<Arc<EncodedEvent>> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut commands, MAX_BATCH).await > 0 {
        for command in commands.drain(..) {
            match command {
                OutboxCmd::Event(event) => events.push(event),
                OutboxCmd::Subscribe { queue, registered } => {
                    flush(&session_id, &*log, &mut events, &mut subscribers).await;
                    subscribers.push(queue);
                    // The subscriber may have given up waiting; that is fine.
                    let _ = registered.send(());
                }
            }
        }
        flush(&session_id, &*log, &mut events, &mut subscribers).await;
    }
    // The session actor is gone: tell every subscriber the stream has ended.
    for queue in subscribers {
        queue.close(CloseReason::Ended);
    }
}

async fn flush(
    session_id: &str,
    log: &dyn EventLog,
    events: &mut Vec<Arc<EncodedEvent>>,
    subscribers: &mut Vec<Arc<SubscriberQueue>>,
) {
    if events.is_empty() {
        return;
    }
    if let Err(e) = log.append(session_id, events.clone()).await {
        // Live subscribers still get the events; a later resume across
        // these seqs will be told of a gap.
        tracing::warn!(session_id, error = %e, "events not logged");
    }
    for event in events.drain(..) {
        subscribers.retain(|queue| queue.push(&event));
    }
}
