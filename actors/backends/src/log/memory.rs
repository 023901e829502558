//! The embedded event log: a bounded in-process ring per session.
//!
//! Limits: it lives in this process only, so a restart loses it (and the
//! epoch changes, which tells clients to reload over REST); it serves one
//! replica. Memory is bounded three ways: `retention` events per session, a
//! budget of bytes over all sessions (the logs of the least recently active
//! sessions go first), and the logs of sessions untouched for [`IDLE_TTL`]
//! are dropped. A client resuming from a dropped log gets `gap` and
//! `snapshot`, as with a cursor older than retention. A session's fence is
//! kept with its log and goes with it; in one process no replaced owner
//! outlives the claim of the one that replaced it, so that loses nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{EncodedEvent, EventLog};
use crate::{Backend, BackendError, ErrorKind};

/// Logs of sessions untouched for this long are dropped.
pub const IDLE_TTL: Duration = Duration::from_secs(3600);

/// What an event is counted as against the budget: its JSON, about as much
/// again for the decoded event kept beside it, and the fixed part of both.
fn cost(event: &EncodedEvent) -> usize {
    2 * event.json.len() + 128
}

/// The in-process event log.
pub struct MemoryEventLog {
    retention: usize,
    /// Bytes (as counted by [`cost`]) kept over all sessions.
    budget: usize,
    /// Chosen at start-up: a new process has a new log, hence a new epoch.
    epoch: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Arc<str>, SessionLog>,
    /// Every session by its last append, least recent first (the key is
    /// [`SessionLog::tick`]): eviction and expiry take from the front, one
    /// log at a time, so neither scans nor frees more than it must.
    by_recency: BTreeMap<u64, Arc<str>>,
    next_tick: u64,
    /// The sum of every kept event's [`cost`].
    bytes: usize,
}

struct SessionLog {
    events: VecDeque<Arc<EncodedEvent>>,
    bytes: usize,
    touched: Instant,
    /// Its key in [`State::by_recency`].
    tick: u64,
    /// The highest claim seen (see the fencing rule).
    fence: u64,
}

impl SessionLog {
    /// Drops the oldest events until at most `keep` remain and the log
    /// costs at most `max_bytes`; returns the bytes freed.
    fn trim(&mut self, keep: usize, max_bytes: usize) -> usize {
        let before = self.bytes;
        while self.events.len() > keep || (self.bytes > max_bytes && !self.events.is_empty()) {
            if let Some(event) = self.events.pop_front() {
                self.bytes -= cost(&event);
            }
        }
        before - self.bytes
    }
}

impl MemoryEventLog {
    /// A log keeping `retention` events per session and about `budget`
    /// bytes in all.
    pub fn new(retention: usize, budget: usize) -> Self {
        Self {
            retention: retention.max(1),
            budget,
            epoch: crate::ids::new_id(),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated
        // in a way that matters: `sessions` and `by_recency` change together
        // with nothing that can fail in between.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Takes the least recently active session's log out, if there is one
    /// other than `except`.
    fn pop_oldest(&mut self, except: &str) -> Option<SessionLog> {
        let (_, id) = self.by_recency.first_key_value()?;
        if &**id == except {
            return None;
        }
        let (_, id) = self.by_recency.pop_first()?;
        let log = self.sessions.remove(&id)?;
        self.bytes -= log.bytes;
        Some(log)
    }

    /// Takes the least recently active session's log out if it has been
    /// untouched for [`IDLE_TTL`] and is not `except`'s.
    fn pop_idle(&mut self, now: Instant, except: &str) -> Option<SessionLog> {
        let (_, id) = self.by_recency.first_key_value()?;
        let log = self.sessions.get(id)?;
        if now.duration_since(log.touched) < IDLE_TTL {
            return None;
        }
        self.pop_oldest(except)
    }

    /// Marks `session_id` as the most recently active, adding its (empty)
    /// log if it has none, and returns that log.
    fn touch(&mut self, session_id: &str, now: Instant) -> &mut SessionLog {
        let tick = self.next_tick;
        self.next_tick += 1;
        let id = match self.sessions.get(session_id) {
            Some(log) => self.by_recency.remove(&log.tick),
            None => None,
        }
        .unwrap_or_else(|| Arc::from(session_id));
        self.by_recency.insert(tick, id.clone());
        let log = self.sessions.entry(id).or_insert_with(|| SessionLog {
            events: VecDeque::new(),
            bytes: 0,
            touched: now,
            tick,
            fence: 0,
        });
        (log.touched, log.tick) = (now, tick);
        log
    }
}

impl EventLog for MemoryEventLog {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn epoch(&self, _session_id: &str) -> BoxFuture<'static, Result<String, BackendError>> {
        let epoch = self.epoch.clone();
        Box::pin(async move { Ok(epoch) })
    }

    fn claim(&self, session_id: &str, fence: u64) -> BoxFuture<'static, Result<(), BackendError>> {
        let mut state = self.lock();
        let log = state.touch(session_id, Instant::now());
        log.fence = log.fence.max(fence);
        Box::pin(async { Ok(()) })
    }

    fn append(
        &self,
        session_id: &str,
        fence: u64,
        events: Vec<Arc<EncodedEvent>>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let mut state = self.lock();
        if let Some(log) = state.sessions.get(session_id)
            && fence < log.fence
        {
            let e = BackendError::new(
                Backend::EventLog,
                ErrorKind::Fenced,
                format!("session {session_id} was claimed by another owner"),
            );
            return Box::pin(async move { Err(e) });
        }
        let now = Instant::now();
        // Logs taken out are freed after the lock is released.
        let mut removed = Vec::new();
        while let Some(log) = state.pop_idle(now, session_id) {
            removed.push(log);
        }
        let added: usize = events.iter().map(|e| cost(e)).sum();
        let log = state.touch(session_id, now);
        log.events.extend(events);
        log.bytes += added;
        let freed = log.trim(self.retention, usize::MAX);
        state.bytes = state.bytes + added - freed;
        // Over budget, whole logs go, least recently active first, but never
        // this session's, which is trimmed from its oldest event instead if
        // it alone is over.
        while state.bytes > self.budget {
            match state.pop_oldest(session_id) {
                Some(log) => removed.push(log),
                None => {
                    let over = state.bytes - self.budget;
                    if let Some(log) = state.sessions.get_mut(session_id) {
                        let freed = log.trim(usize::MAX, log.bytes.saturating_sub(over));
                        state.bytes -= freed;
                    }
                    break;
                }
            }
        }
        drop(state);
        drop(removed);
        Box::pin(async { Ok(()) })
    }

    fn read_after(
        &self,
        session_id: &str,
        after: u64,
        up_to: u64,
    ) -> BoxFuture<'static, Result<Vec<Arc<EncodedEvent>>, BackendError>> {
        let state = self.lock();
        let events = match state.sessions.get(session_id) {
            Some(log) => {
                // Seqs are contiguous in the ring, so the start is found by
                // binary search rather than a scan.
                let start = log.events.partition_point(|e| e.seq() <= after);
                log.events
                    .range(start..)
                    .take_while(|e| e.seq() <= up_to)
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        Box::pin(async move { Ok(events) })
    }

    fn last_seq(&self, session_id: &str) -> BoxFuture<'static, Result<u64, BackendError>> {
        let last = self
            .lock()
            .sessions
            .get(session_id)
            .and_then(|log| log.events.back())
            .map_or(0, |e| e.seq());
        Box::pin(async move { Ok(last) })
    }

    fn remove(&self, session_id: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let mut state = self.lock();
        let removed = state.sessions.remove(session_id);
        if let Some(log) = &removed {
            state.by_recency.remove(&log.tick);
            state.bytes -= log.bytes;
        }
        // An empty log that refuses every append stays in its place, until
        // idle expiry or the budget takes it like any other.
        state.touch(session_id, Instant::now()).fence = u64::MAX;
        drop(state);
        drop(removed);
        Box::pin(async { Ok(()) })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        // In this process: it answers whenever the process does.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance::{seqs, token};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// The resume invariant, for any batches, retention and cursor: a
        /// read after a cursor gives the events after it, each once, in
        /// order, with no hole among them, up to the end asked for; only
        /// events older than retention may be missing, and only from the
        /// front (which the reader sees as a gap: its first seq is past
        /// `after + 1`).
        #[test]
        fn a_read_after_a_cursor_is_exactly_what_follows_it(
            batches in proptest::collection::vec(1usize..20, 1..30),
            retention in 1usize..60,
            after_back in 0u64..80,
            up_to_back in 0u64..10,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let log = MemoryEventLog::new(retention, usize::MAX / 2);
                let mut seq = 0u64;
                for size in &batches {
                    let batch: Vec<_> = (0..*size).map(|_| { seq += 1; token(seq) }).collect();
                    log.append("s", 0, batch).await.unwrap();
                }
                let last = seq;
                let after = last.saturating_sub(after_back);
                let up_to = last.saturating_sub(up_to_back).max(after);
                let got = seqs(&log.read_after("s", after, up_to).await.unwrap());
                proptest::prop_assert_eq!(log.last_seq("s").await.unwrap(), last);
                if up_to > after {
                    // Within retention, nothing is missing.
                    let oldest_kept = last.saturating_sub(retention as u64) + 1;
                    let first = (after + 1).max(oldest_kept);
                    let expected: Vec<u64> = (first.min(up_to + 1)..=up_to).collect();
                    proptest::prop_assert_eq!(&got, &expected);
                }
                proptest::prop_assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
                proptest::prop_assert!(got.iter().all(|s| *s > after && *s <= up_to));
                Ok(())
            })?;
        }
    }

    /// No budget to speak of: the conformance suite is about retention.
    const UNBOUNDED: usize = usize::MAX;

    #[tokio::test]
    async fn memory_log_conforms() {
        crate::log::conformance::run(|retention| MemoryEventLog::new(retention, UNBOUNDED)).await;
    }

    #[tokio::test]
    async fn a_new_log_has_a_new_epoch() {
        let a = MemoryEventLog::new(1, UNBOUNDED).epoch("s").await.unwrap();
        let b = MemoryEventLog::new(1, UNBOUNDED).epoch("s").await.unwrap();
        assert_ne!(a, b);
    }

    fn tokens(from: u64, to: u64) -> Vec<Arc<EncodedEvent>> {
        (from..=to).map(token).collect()
    }

    /// Over the budget, the least recently active session's log goes first,
    /// whole, and the one being appended to stays.
    #[tokio::test]
    async fn over_budget_the_least_recently_active_logs_go_first() {
        let ten = tokens(1, 10).iter().map(|e| cost(e)).sum::<usize>();
        // Room for three sessions of ten events, not four.
        let log = MemoryEventLog::new(1000, ten * 3 + ten / 2);
        for id in ["a", "b", "c"] {
            log.append(id, 0, tokens(1, 10)).await.unwrap();
        }
        // "a" becomes the most recently active.
        log.append("a", 0, tokens(11, 11)).await.unwrap();
        log.append("d", 0, tokens(1, 10)).await.unwrap();
        assert_eq!(log.last_seq("b").await.unwrap(), 0, "b was the oldest");
        assert_eq!(
            seqs(&log.read_after("a", 0, 11).await.unwrap()),
            (1..=11).collect::<Vec<_>>()
        );
        assert_eq!(log.last_seq("c").await.unwrap(), 10);
        assert_eq!(log.last_seq("d").await.unwrap(), 10);
        assert!(log.lock().bytes <= log.budget);
    }

    /// One session alone over the budget keeps its newest events.
    #[tokio::test]
    async fn a_session_alone_over_budget_keeps_its_newest_events() {
        let ten = tokens(1, 10).iter().map(|e| cost(e)).sum::<usize>();
        let log = MemoryEventLog::new(1000, ten);
        log.append("a", 0, tokens(1, 10)).await.unwrap();
        log.append("a", 0, tokens(11, 30)).await.unwrap();
        let kept = seqs(&log.read_after("a", 0, 30).await.unwrap());
        assert_eq!(kept.last(), Some(&30));
        assert!(kept.len() < 30 && !kept.is_empty(), "{kept:?}");
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
        assert!(log.lock().bytes <= log.budget);
    }

    /// The count of bytes follows appends, trims and removals exactly.
    #[tokio::test]
    async fn the_byte_count_follows_the_events_kept() {
        let log = MemoryEventLog::new(5, UNBOUNDED);
        log.append("a", 0, tokens(1, 8)).await.unwrap();
        log.append("b", 0, tokens(1, 3)).await.unwrap();
        let kept: usize = ["a", "b"]
            .iter()
            .map(|id| {
                log.lock().sessions[*id]
                    .events
                    .iter()
                    .map(|e| cost(e))
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(log.lock().bytes, kept);
        log.remove("a").await.unwrap();
        let b: usize = tokens(1, 3).iter().map(|e| cost(e)).sum();
        let state = log.lock();
        assert_eq!(state.bytes, b);
        // "a" is left as an empty tombstone that refuses appends.
        assert_eq!(
            state
                .by_recency
                .values()
                .map(|id| &**id)
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert!(state.sessions["a"].events.is_empty());
    }
}
