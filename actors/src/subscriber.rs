//! One subscriber's bounded queue of events.
//!
//! The producer (a session's outbox) never waits on a subscriber. When a
//! queue holds [`QueueLimits::soft`] events, a new `token` event is merged
//! into the queued `token` event at its tail (same generation): the delta is
//! concatenated and the merged event takes the newer `seq`, so nothing is lost
//! and the cursor stays exact. Past [`QueueLimits::hard`] events or
//! [`QueueLimits::max_bytes`], the subscriber is closed as lagged; it
//! reconnects and resumes from its cursor.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sluice_protocol::{Event, EventBody};
use tokio::sync::Notify;

use sluice_backends::log::EncodedEvent;

use crate::metrics::Metrics;

/// Queue length from which a subscriber's `token` events coalesce.
pub const SOFT_LIMIT: usize = 64;

/// Queue length past which a subscriber is dropped (it resumes from its cursor).
pub const HARD_LIMIT: usize = 4096;

/// Bounds of a subscriber queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Queue length from which `token` events coalesce.
    pub soft: usize,
    /// Queue length past which the subscriber is dropped.
    pub hard: usize,
    /// Queued JSON bytes past which the subscriber is dropped.
    pub max_bytes: usize,
}

/// Why a queue yields no more events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The subscriber fell too far behind; it should resume from its cursor.
    Lagged,
    /// The consumer went away.
    Gone,
    /// The session stopped (deleted, or the server is shutting down).
    Ended,
    /// Events may have been missed on the way from another replica (the bus
    /// broke, or skipped a `seq`): the client should resume from its cursor.
    Resume,
    /// The session was deleted: the client is told so, and not to resume.
    Deleted,
}

/// A bounded, coalescing, single-consumer event queue.
pub struct SubscriberQueue {
    limits: QueueLimits,
    metrics: Metrics,
    state: Mutex<State>,
    /// Wakes the consumer; `notify_one` keeps a permit, so no wake-up is lost
    /// between the consumer's check and its wait.
    notify: Notify,
}

#[derive(Default)]
struct State {
    items: VecDeque<Arc<EncodedEvent>>,
    bytes: usize,
    closed: Option<CloseReason>,
}

impl SubscriberQueue {
    /// An empty open queue.
    pub fn new(limits: QueueLimits, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            limits,
            metrics,
            state: Mutex::default(),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `event`. Returns false when the queue is closed (now or before),
    /// so the producer forgets it.
    pub fn push(&self, event: &Arc<EncodedEvent>) -> bool {
        let mut state = self.lock();
        if state.closed.is_some() {
            return false;
        }
        if state.items.len() >= self.limits.soft && self.coalesce(&mut state, event) {
            self.metrics.coalesced_events_total.inc();
        } else {
            state.bytes += event.json.len();
            state.items.push_back(event.clone());
        }
        if state.items.len() > self.limits.hard || state.bytes > self.limits.max_bytes {
            state.closed = Some(CloseReason::Lagged);
            state.items.clear();
            state.bytes = 0;
            self.metrics.slow_consumer_disconnects_total.inc();
            drop(state);
            self.notify.notify_one();
            return false;
        }
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Merges a `token` event into a queued `token` event of the same
    /// generation at the tail. Returns false when it cannot.
    fn coalesce(&self, state: &mut State, event: &Arc<EncodedEvent>) -> bool {
        let EventBody::Token {
            generation_id,
            delta,
        } = &event.event.body
        else {
            return false;
        };
        let Some(back) = state.items.back_mut() else {
            return false;
        };
        let EventBody::Token {
            generation_id: queued_generation,
            delta: queued_delta,
        } = &back.event.body
        else {
            return false;
        };
        if queued_generation != generation_id {
            return false;
        }
        let mut merged_delta = String::with_capacity(queued_delta.len() + delta.len());
        merged_delta.push_str(queued_delta);
        merged_delta.push_str(delta);
        let merged = EncodedEvent::new(Event {
            seq: event.seq(),
            body: EventBody::Token {
                generation_id: generation_id.clone(),
                delta: merged_delta,
            },
        });
        state.bytes = state.bytes - back.json.len() + merged.json.len();
        *back = Arc::new(merged);
        true
    }

    /// The next event, waiting for one (the tests read queues one by one).
    #[cfg(test)]
    pub async fn pop(&self) -> Result<Arc<EncodedEvent>, CloseReason> {
        let mut one = Vec::with_capacity(1);
        self.pop_many(&mut one, 1).await?;
        Ok(one.remove(0))
    }

    /// Waits for at least one event, then moves up to `max` queued events
    /// into `out` (so a consumer that fell behind writes them in one go); the
    /// reason once closed and drained. A lagged queue reports
    /// [`CloseReason::Lagged`] at once.
    pub async fn pop_many(
        &self,
        out: &mut Vec<Arc<EncodedEvent>>,
        max: usize,
    ) -> Result<(), CloseReason> {
        loop {
            {
                let mut state = self.lock();
                if state.closed == Some(CloseReason::Lagged) {
                    return Err(CloseReason::Lagged);
                }
                if !state.items.is_empty() {
                    let n = state.items.len().min(max.max(1));
                    let state = &mut *state;
                    for event in state.items.drain(..n) {
                        state.bytes -= event.json.len();
                        out.push(event);
                    }
                    return Ok(());
                }
                if let Some(reason) = state.closed {
                    return Err(reason);
                }
            }
            self.notify.notified().await;
        }
    }

    /// Closes the queue; the consumer drains what is queued, then sees `reason`.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pop_many_takes_what_is_queued_in_order_then_the_close() {
        let q = queue(100, 200);
        for seq in 1..=5 {
            assert!(q.push(&token(seq, "g", "x")));
        }
        q.close(CloseReason::Ended);
        let mut out = Vec::new();
        q.pop_many(&mut out, 3).await.unwrap();
        q.pop_many(&mut out, 3).await.unwrap();
        let seqs: Vec<u64> = out.iter().map(|e| e.seq()).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(q.pop_many(&mut out, 3).await, Err(CloseReason::Ended));
    }

    fn token(seq: u64, generation: &str, delta: &str) -> Arc<EncodedEvent> {
        Arc::new(EncodedEvent::new(Event {
            seq,
            body: EventBody::Token {
                generation_id: generation.into(),
                delta: delta.into(),
            },
        }))
    }

    fn queue(soft: usize, hard: usize) -> Arc<SubscriberQueue> {
        SubscriberQueue::new(
            QueueLimits {
                soft,
                hard,
                max_bytes: 1 << 20,
            },
            Metrics::unregistered(),
        )
    }

    fn delta(e: &EncodedEvent) -> &str {
        match &e.event.body {
            EventBody::Token { delta, .. } => delta,
            _ => panic!("not a token"),
        }
    }

    #[tokio::test]
    async fn slow_consumers_get_tokens_coalesced_without_loss() {
        let q = queue(2, 100);
        for seq in 1..=10 {
            assert!(q.push(&token(seq, "g", &format!("{seq},"))));
        }
        let first = q.pop().await.unwrap();
        let second = q.pop().await.unwrap();
        assert_eq!((first.seq(), delta(&first)), (1, "1,"));
        assert_eq!(second.seq(), 10);
        assert_eq!(delta(&second), "2,3,4,5,6,7,8,9,10,");
        // The merged event's JSON is re-encoded with the newer seq.
        assert!(second.json.contains("\"seq\":10"));
    }

    #[tokio::test]
    async fn different_generations_are_not_merged_and_overflow_closes() {
        let q = queue(1, 3);
        assert!(q.push(&token(1, "a", "x")));
        assert!(q.push(&token(2, "b", "y")));
        assert!(q.push(&token(3, "c", "z")));
        assert!(
            !q.push(&token(4, "d", "w")),
            "fourth distinct event overflows"
        );
        assert_eq!(q.pop().await.unwrap_err(), CloseReason::Lagged);
        assert!(!q.push(&token(5, "d", "w")));
    }

    #[tokio::test]
    async fn close_drains_then_reports_the_reason() {
        let q = queue(10, 10);
        q.push(&token(1, "g", "a"));
        q.close(CloseReason::Ended);
        assert_eq!(q.pop().await.unwrap().seq(), 1);
        assert_eq!(q.pop().await.unwrap_err(), CloseReason::Ended);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken() {
        let q = queue(10, 10);
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await.unwrap().seq() }
        });
        tokio::task::yield_now().await;
        q.push(&token(7, "g", "a"));
        assert_eq!(consumer.await.unwrap(), 7);
    }
}
