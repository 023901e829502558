//! The resumable event log: every event of a session, by `seq`, for a bounded
//! retention, so that a client can resume from its cursor.
//!
//! Contract for implementations (the conformance tests in this module hold
//! every implementation to it):
//! - `append` keeps events in the order given; within a session `seq` only grows.
//! - `read_after(after, up_to)` returns the retained events with
//!   `after < seq <= up_to`, in order. Events older than retention may be
//!   missing from the front; the caller detects that as a gap.
//! - `epoch` identifies the log's contents: it changes only if the log was lost.
//! - **Fencing**, as in the session store: `claim` raises the session's
//!   fence (never lowers it), and an `append` with a lower fence is refused
//!   whole with [`ErrorKind::Fenced`](crate::ErrorKind::Fenced). A new owner
//!   claims the log right after the store, before reading the log's tail,
//!   so a replaced owner can no longer add events with `seq`s the new one
//!   allocates itself.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use bytestring::ByteString;
use futures::future::BoxFuture;
use sluice_protocol::Event;

use crate::BackendError;

/// An event together with its JSON, serialised once for every subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    /// The event.
    pub event: Event,
    /// `event.to_json()`, computed once; cloning it shares the bytes, so
    /// every WebSocket frame of the event reuses them.
    pub json: ByteString,
}

impl EncodedEvent {
    /// Encodes `event`.
    pub fn new(event: Event) -> Self {
        let json = event.to_json().into();
        Self { event, json }
    }

    /// The event's sequence number.
    pub fn seq(&self) -> u64 {
        self.event.seq
    }
}

/// A session-keyed, bounded, ordered event log.
pub trait EventLog: Send + Sync + 'static {
    /// A short name for `/ready` (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// The identity of this log's contents for `session_id`.
    fn epoch(&self, session_id: &str) -> BoxFuture<'static, Result<String, BackendError>>;

    /// Raises the session's fence to `fence` (a new owner's claim).
    fn claim(&self, session_id: &str, fence: u64) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Appends `events` (in `seq` order) to the session's log, for the owner
    /// whose claim is `fence`.
    fn append(
        &self,
        session_id: &str,
        fence: u64,
        events: Vec<Arc<EncodedEvent>>,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Retained events with `after < seq <= up_to`, in order.
    fn read_after(
        &self,
        session_id: &str,
        after: u64,
        up_to: u64,
    ) -> BoxFuture<'static, Result<Vec<Arc<EncodedEvent>>, BackendError>>;

    /// The highest `seq` in the session's log (0 if none).
    fn last_seq(&self, session_id: &str) -> BoxFuture<'static, Result<u64, BackendError>>;

    /// Forgets the session's events (the session was deleted); an append
    /// after it is refused as fenced, since an owner may not have heard of
    /// the deletion yet.
    fn remove(&self, session_id: &str) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Checks that the log answers now.
    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>>;
}

/// The conformance suite every [`EventLog`] must pass, parameterised by a
/// factory that returns a fresh log retaining `retention` events per session.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use sluice_protocol::EventBody;

    pub(crate) fn token(seq: u64) -> Arc<EncodedEvent> {
        Arc::new(EncodedEvent::new(Event {
            seq,
            body: EventBody::Token {
                generation_id: "g".into(),
                delta: format!("t{seq} "),
            },
        }))
    }

    pub(crate) fn seqs(events: &[Arc<EncodedEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.seq()).collect()
    }

    pub async fn run<L: EventLog>(make: impl Fn(usize) -> L) {
        // Order and bounds.
        let log = make(100);
        log.append("s", 0, (1..=5).map(token).collect())
            .await
            .unwrap();
        log.append("s", 0, (6..=8).map(token).collect())
            .await
            .unwrap();
        assert_eq!(
            seqs(&log.read_after("s", 0, 8).await.unwrap()),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&log.read_after("s", 3, 6).await.unwrap()),
            vec![4, 5, 6]
        );
        assert!(log.read_after("s", 8, 8).await.unwrap().is_empty());
        assert_eq!(log.last_seq("s").await.unwrap(), 8);
        assert_eq!(log.last_seq("other").await.unwrap(), 0);
        assert!(log.read_after("other", 0, 100).await.unwrap().is_empty());
        let events = log.read_after("s", 6, 7).await.unwrap();
        assert_eq!(events[0].json, token(7).json);

        // Retention drops the oldest events first and keeps at least
        // `retention` (a log may trim approximately, in whole blocks).
        let log = make(10);
        for chunk in (1..=1000u64).collect::<Vec<_>>().chunks(40) {
            log.append("s", 0, chunk.iter().copied().map(token).collect())
                .await
                .unwrap();
        }
        let kept = seqs(&log.read_after("s", 0, 1000).await.unwrap());
        assert!(kept.len() >= 10, "{kept:?}");
        assert_eq!(*kept.last().unwrap(), 1000);
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert!(*kept.first().unwrap() > 1, "{kept:?}");

        // Fencing: after a claim, an older owner's append is refused whole;
        // the claimant's goes through; a lower claim changes nothing.
        let log = make(100);
        log.append("f", 1, (1..=2).map(token).collect())
            .await
            .unwrap();
        log.claim("f", 2).await.unwrap();
        let refused = log
            .append("f", 1, (3..=4).map(token).collect())
            .await
            .unwrap_err();
        assert_eq!(refused.kind, crate::ErrorKind::Fenced);
        assert_eq!(log.last_seq("f").await.unwrap(), 2);
        log.claim("f", 1).await.unwrap();
        log.append("f", 2, (3..=4).map(token).collect())
            .await
            .unwrap();
        assert_eq!(log.last_seq("f").await.unwrap(), 4);
        let log = make(10);
        for chunk in (1..=1000u64).collect::<Vec<_>>().chunks(40) {
            log.append("s", 0, chunk.iter().copied().map(token).collect())
                .await
                .unwrap();
        }

        // The epoch is stable while the log lives; remove forgets a session.
        let e1 = log.epoch("s").await.unwrap();
        assert_eq!(log.epoch("s").await.unwrap(), e1);
        assert_eq!(log.last_seq("s").await.unwrap(), 1000);
        log.remove("s").await.unwrap();
        assert_eq!(log.last_seq("s").await.unwrap(), 0);
        assert!(log.read_after("s", 0, 1000).await.unwrap().is_empty());
        let late = log.append("s", 7, vec![token(1001)]).await.unwrap_err();
        assert_eq!(late.kind, crate::ErrorKind::Fenced);
        assert_eq!(log.last_seq("s").await.unwrap(), 0);
    }
}
