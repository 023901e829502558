//! The embedded event log: a bounded in-process ring per session.
//!
//! Limits: it lives in this process only, so a restart loses it (and the
//! epoch changes, which tells clients to reload over REST); it serves one
//! replica. Memory is bounded three ways: `retention` events per session, a
//! budget of bytes over all sessions (the logs of the least recently active
//! sessions go first), and the logs of sessions untouched for [`IDLE_TTL`]
//! are dropped. A client resuming from a dropped log gets `gap` and
//! `snapshot`, as with a cursor older than retention.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{EncodedEvent, EventLog, LogError};

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
    sessions: HashMap<String, SessionLog>,
    /// The sum of every kept event's [`cost`].
    bytes: usize,
    appends_since_sweep: u32,
}

struct SessionLog {
    events: VecDeque<Arc<EncodedEvent>>,
    bytes: usize,
    touched: Instant,
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
        // A panic while holding this lock cannot leave the map half-updated
        // in a way that matters (each operation is one push or one remove).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Over budget: drops whole logs, least recently active first, down to
    /// nine tenths of the budget (so that this runs once per many appends,
    /// not on each), but never the log of `current`, which is trimmed from
    /// its oldest event instead if it alone is over.
    fn shed(&mut self, budget: usize, current: &str) {
        let target = budget / 10 * 9;
        let mut by_age: Vec<(Instant, String)> = self
            .sessions
            .iter()
            .filter(|(id, _)| id.as_str() != current)
            .map(|(id, log)| (log.touched, id.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age {
            if self.bytes <= target {
                return;
            }
            if let Some(log) = self.sessions.remove(&id) {
                self.bytes -= log.bytes;
            }
        }
        if self.bytes > budget
            && let Some(log) = self.sessions.get_mut(current)
        {
            let others = self.bytes - log.bytes;
            self.bytes -= log.trim(usize::MAX, target.saturating_sub(others));
        }
    }
}

impl EventLog for MemoryEventLog {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn epoch(&self, _session_id: &str) -> BoxFuture<'static, Result<String, LogError>> {
        let epoch = self.epoch.clone();
        Box::pin(async move { Ok(epoch) })
    }

    fn append(
        &self,
        session_id: &str,
        events: Vec<Arc<EncodedEvent>>,
    ) -> BoxFuture<'static, Result<(), LogError>> {
        let mut state = self.lock();
        let now = Instant::now();
        state.appends_since_sweep += 1;
        if state.appends_since_sweep >= 4096 {
            state.appends_since_sweep = 0;
            let mut freed = 0;
            state.sessions.retain(|_, log| {
                let keep = now.duration_since(log.touched) < IDLE_TTL;
                if !keep {
                    freed += log.bytes;
                }
                keep
            });
            state.bytes -= freed;
        }
        let added: usize = events.iter().map(|e| cost(e)).sum();
        let log = state
            .sessions
            .entry(session_id.to_owned())
            .or_insert_with(|| SessionLog {
                events: VecDeque::new(),
                bytes: 0,
                touched: now,
            });
        log.touched = now;
        log.events.extend(events);
        log.bytes += added;
        let freed = log.trim(self.retention, usize::MAX);
        state.bytes = state.bytes + added - freed;
        if state.bytes > self.budget {
            state.shed(self.budget, session_id);
        }
        Box::pin(async { Ok(()) })
    }

    fn read_after(
        &self,
        session_id: &str,
        after: u64,
        up_to: u64,
    ) -> BoxFuture<'static, Result<Vec<Arc<EncodedEvent>>, LogError>> {
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

    fn last_seq(&self, session_id: &str) -> BoxFuture<'static, Result<u64, LogError>> {
        let last = self
            .lock()
            .sessions
            .get(session_id)
            .and_then(|log| log.events.back())
            .map_or(0, |e| e.seq());
        Box::pin(async move { Ok(last) })
    }

    fn remove(&self, session_id: &str) -> BoxFuture<'static, Result<(), LogError>> {
        let mut state = self.lock();
        if let Some(log) = state.sessions.remove(session_id) {
            state.bytes -= log.bytes;
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::conformance::{seqs, token};

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
            log.append(id, tokens(1, 10)).await.unwrap();
        }
        // "a" becomes the most recently active.
        log.append("a", tokens(11, 11)).await.unwrap();
        log.append("d", tokens(1, 10)).await.unwrap();
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
        log.append("a", tokens(1, 10)).await.unwrap();
        log.append("a", tokens(11, 30)).await.unwrap();
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
        log.append("a", tokens(1, 8)).await.unwrap();
        log.append("b", tokens(1, 3)).await.unwrap();
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
        assert_eq!(log.lock().bytes, b);
    }
}
