//! The embedded event log: a bounded in-process ring per session.
//!
//! Limits: it lives in this process only, so a restart loses it (and the
//! epoch changes, which tells clients to reload over REST); it serves one
//! replica. Memory is bounded by `retention` events per session, and the logs
//! of sessions untouched for [`IDLE_TTL`] are dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{EncodedEvent, EventLog, LogError};

/// Logs of sessions untouched for this long are dropped.
pub const IDLE_TTL: Duration = Duration::from_secs(3600);

/// The in-process event log.
pub struct MemoryEventLog {
    retention: usize,
    /// Chosen at start-up: a new process has a new log, hence a new epoch.
    epoch: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, SessionLog>,
    appends_since_sweep: u32,
}

struct SessionLog {
    events: VecDeque<Arc<EncodedEvent>>,
    touched: Instant,
}

impl MemoryEventLog {
    /// A log keeping `retention` events per session.
    pub fn new(retention: usize) -> Self {
        Self {
            retention: retention.max(1),
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
            state
                .sessions
                .retain(|_, log| now.duration_since(log.touched) < IDLE_TTL);
        }
        let log = state
            .sessions
            .entry(session_id.to_owned())
            .or_insert_with(|| SessionLog {
                events: VecDeque::new(),
                touched: now,
            });
        log.touched = now;
        log.events.extend(events);
        let excess = log.events.len().saturating_sub(self.retention);
        log.events.drain(..excess);
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
        self.lock().sessions.remove(session_id);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_log_conforms() {
        crate::log::conformance::run(MemoryEventLog::new).await;
    }

    #[tokio::test]
    async fn a_new_log_has_a_new_epoch() {
        let a = MemoryEventLog::new(1).epoch("s").await.unwrap();
        let b = MemoryEventLog::new(1).epoch("s").await.unwrap();
        assert_ne!(a, b);
    }
}
