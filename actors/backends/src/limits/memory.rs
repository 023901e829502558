//! Limits in process, for one replica: the GCRA's TAT and the slots of each
//! key in maps behind a mutex, each step under the lock. Keys with nothing
//! to remember (a TAT in the past, no unexpired slot) are swept whenever a
//! map has doubled since the last sweep, so memory follows the keys in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, ready};

use super::{Claim, Limiter, Rate, SlotTaken, Verdict, gcra};
use crate::BackendError;

/// The in-process limiter. Cloning shares it.
#[derive(Clone, Default)]
pub struct MemoryLimiter {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Each key's TAT, in seconds since `epoch`.
    tats: HashMap<String, f64>,
    /// Each key's holders and when their slot expires.
    slots: HashMap<String, HashMap<String, Instant>>,
    /// Map sizes after the last sweep.
    swept: (usize, usize),
    epoch: Option<Instant>,
}

/// Sweeping starts once a map holds this many keys.
const SWEEP_FLOOR: usize = 1024;

impl State {
    fn now(&mut self) -> f64 {
        self.epoch
            .get_or_insert_with(Instant::now)
            .elapsed()
            .as_secs_f64()
    }

    fn sweep(&mut self) {
        let now = self.now();
        if self.tats.len() >= SWEEP_FLOOR.max(2 * self.swept.0) {
            self.tats.retain(|_, tat| *tat > now);
            self.swept.0 = self.tats.len();
        }
        if self.slots.len() >= SWEEP_FLOOR.max(2 * self.swept.1) {
            let now = Instant::now();
            self.slots.retain(|_, holders| {
                holders.retain(|_, expiry| *expiry > now);
                !holders.is_empty()
            });
            self.swept.1 = self.slots.len();
        }
    }

    fn rate(&mut self, key: &str, rate: Rate, cost: u64, admit: bool) -> Verdict {
        let now = self.now();
        let (verdict, tat) = gcra(self.tats.get(key).copied(), now, rate, cost, admit);
        if tat > now {
            self.tats.insert(key.to_owned(), tat);
        } else {
            self.tats.remove(key);
        }
        self.sweep();
        verdict
    }

    fn slot(&mut self, key: &str, holder: &str, claim: Claim, ttl: Duration) -> SlotTaken {
        let now = Instant::now();
        let holders = self.slots.entry(key.to_owned()).or_default();
        holders.retain(|_, expiry| *expiry > now);
        let taken = match claim {
            _ if holders.contains_key(holder) => SlotTaken::Held,
            Claim::Within(limit) if (holders.len() as u64) < limit => SlotTaken::Taken,
            Claim::Whatever => SlotTaken::Taken,
            Claim::Within(_) | Claim::RenewOnly => SlotTaken::Full,
        };
        match taken {
            SlotTaken::Full if holders.is_empty() => {
                self.slots.remove(key);
            }
            SlotTaken::Full => {}
            SlotTaken::Taken | SlotTaken::Held => {
                holders.insert(holder.to_owned(), now + ttl);
            }
        }
        self.sweep();
        taken
    }
}

impl MemoryLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Limiter for MemoryLimiter {
    fn admit(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
    ) -> BoxFuture<'static, Result<Verdict, BackendError>> {
        let verdict = self.with(|s| s.rate(key, rate, cost, true));
        Box::pin(ready(Ok(verdict)))
    }

    fn charge(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.with(|s| s.rate(key, rate, cost, false));
        Box::pin(ready(Ok(())))
    }

    fn take_slot(
        &self,
        key: &str,
        holder: &str,
        limit: u64,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<SlotTaken, BackendError>> {
        let taken = self.with(|s| s.slot(key, holder, Claim::Within(limit), ttl));
        Box::pin(ready(Ok(taken)))
    }

    fn hold_slot(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.with(|s| s.slot(key, holder, Claim::Whatever, ttl));
        Box::pin(ready(Ok(())))
    }

    fn renew_slot(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let held = self.with(|s| s.slot(key, holder, Claim::RenewOnly, ttl)) == SlotTaken::Held;
        Box::pin(ready(Ok(held)))
    }

    fn release_slot(
        &self,
        key: &str,
        holder: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.with(|s| {
            if let Some(holders) = s.slots.get_mut(key) {
                holders.remove(holder);
                if holders.is_empty() {
                    s.slots.remove(key);
                }
            }
        });
        Box::pin(ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_limiter_conforms() {
        super::super::conformance::run(MemoryLimiter::new).await;
    }

    /// Keys that have nothing to remember do not stay.
    #[tokio::test]
    async fn unused_keys_are_swept() {
        let limiter = MemoryLimiter::new();
        let rate = Rate {
            limit: 1000,
            period: Duration::from_millis(10),
        };
        for i in 0..20_000 {
            limiter.admit(&format!("k{i}"), rate, 1).await.unwrap();
            limiter
                .take_slot(&format!("k{i}"), "h", 1, Duration::from_millis(1))
                .await
                .unwrap();
            if i % 5000 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        limiter.admit("last", rate, 1).await.unwrap();
        let (tats, slots) = limiter.with(|s| (s.tats.len(), s.slots.len()));
        assert!(tats < 12_000 && slots < 12_000, "{tats} {slots}");
    }
}
