//! [`Subscription`]: a client's view of a session's event stream, the resume
//! logic of PROTOCOL.md §4 written once for WebSocket and SSE.
//!
//! It yields exactly what a client must see, in order: `hello`, then the
//! replay from the cursor (or `gap` and `snapshot` when the log no longer
//! has it, or just `snapshot` without a cursor), then live events from the
//! subscriber's queue, with no gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;

use sluice_backends::log::{EncodedEvent, EventLog};
use sluice_protocol::Control;

use crate::cluster::JoinInfo;
use crate::error::SessionError;
use crate::metrics::Metrics;
use crate::subscriber::{CloseReason, SubscriberQueue};

/// Most frames one [`Subscription::next_batch`] returns.
pub const MAX_BATCH: usize = 256;

/// One frame for a client.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A control frame (no `seq`).
    Control(Control),
    /// An event, already encoded.
    Event(Arc<EncodedEvent>),
}

/// A client's view of a session's event stream.
pub struct Subscription {
    /// Frames to send before live events.
    initial: VecDeque<Outgoing>,
    queue: Arc<SubscriberQueue>,
    /// Highest `seq` handed out; live events at or below it are skipped.
    last_sent: u64,
}

impl Subscription {
    /// The subscription of `queue`, joined at `start`: `hello`, then the
    /// replay from `after` (or `gap` and `snapshot`, or `snapshot` without
    /// a cursor). `transport` labels the resume metric. `after` is at most
    /// [`MAX_SEQ`](sluice_protocol::limits::MAX_SEQ) (checked by the caller).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open(
        session_id: &str,
        replica_id: &str,
        log: &dyn EventLog,
        metrics: &Metrics,
        queue: Arc<SubscriberQueue>,
        start: JoinInfo,
        after: Option<u64>,
        transport: &'static str,
    ) -> Result<Self, SessionError> {
        let last_seq = start.last_seq;
        let mut initial = VecDeque::new();
        initial.push_back(Outgoing::Control(Control::Hello {
            session_id: session_id.to_owned(),
            replica: replica_id.to_owned(),
            last_seq,
            generating: start.generating,
            epoch: start.epoch,
        }));
        let snapshot = Outgoing::Control(Control::Snapshot {
            last_seq,
            partial: start.partial,
        });
        let subscription = |initial| Self {
            initial,
            queue,
            last_sent: last_seq,
        };
        let Some(after) = after else {
            initial.push_back(snapshot);
            return Ok(subscription(initial));
        };
        metrics.resumes_total.with_label_values(&[transport]).inc();
        if after == last_seq {
            return Ok(subscription(initial));
        }
        let replay = if after < last_seq {
            log.read_after(session_id, after, last_seq).await?
        } else {
            Vec::new()
        };
        let complete = replay.first().is_some_and(|e| e.seq() == after + 1)
            && replay.last().is_some_and(|e| e.seq() == last_seq)
            && replay.len() as u64 == last_seq - after;
        if complete {
            initial.extend(replay.into_iter().map(Outgoing::Event));
        } else {
            // The cursor is older than retention, or from a log that was lost.
            metrics.gaps_total.inc();
            initial.push_back(Outgoing::Control(Control::Gap {
                from_seq: after + 1,
            }));
            initial.push_back(snapshot);
        }
        Ok(subscription(initial))
    }

    /// The next frames, waiting for at least one: whatever is ready, up to
    /// [`MAX_BATCH`], so a transport writes them in one go. The reason once
    /// the stream is over.
    pub async fn next_batch(&mut self) -> Result<Vec<Outgoing>, CloseReason> {
        if !self.initial.is_empty() {
            let n = self.initial.len().min(MAX_BATCH);
            return Ok(self.initial.drain(..n).collect());
        }
        let mut events = Vec::new();
        loop {
            self.queue.pop_many(&mut events, MAX_BATCH).await?;
            let frames: Vec<Outgoing> = events
                .drain(..)
                .filter(|event| {
                    let new = event.seq() > self.last_sent;
                    if new {
                        self.last_sent = event.seq();
                    }
                    new
                })
                .map(Outgoing::Event)
                .collect();
            if !frames.is_empty() {
                return Ok(frames);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.close(CloseReason::Gone);
    }
}

/// Closes its queue on drop unless defused first, so a subscription that
/// failed to open leaves nothing for its producer to feed.
pub(crate) struct QueueGuard {
    queue: Arc<SubscriberQueue>,
    armed: bool,
}

impl QueueGuard {
    /// Guards `queue`.
    pub(crate) fn new(queue: Arc<SubscriberQueue>) -> Self {
        Self { queue, armed: true }
    }

    /// The guarded queue.
    pub(crate) fn queue(&self) -> Arc<SubscriberQueue> {
        self.queue.clone()
    }

    /// The queue is in good hands: leave it open.
    pub(crate) fn defuse(mut self) {
        self.armed = false;
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        if self.armed {
            self.queue.close(CloseReason::Gone);
        }
    }
}
