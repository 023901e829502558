//! Per-key limits, shared by every replica that shares the backend: rates
//! (so many units per period) and slots (so many held at once).
//!
//! **Rates** are the generic cell rate algorithm (GCRA): each key keeps one
//! number, its *theoretical arrival time* (TAT), the moment its balance
//! would be back to full. A unit costs `period / limit`; a key may be at
//! most one `period` ahead of now, so a burst of `limit` units is allowed,
//! and then one more each `period / limit`. One number per key, updated in
//! one atomic step, so concurrent replicas cannot drift apart or lose a
//! count. Costs known only afterwards (tokens generated) are *charged*:
//! charging is never refused and may push the TAT past the period, and the
//! key's next admission waits until the debt is paid.
//!
//! **Slots** bound what a key holds at once (generations, streams): a slot
//! is held by a named holder until its time-to-live passes, so a replica
//! that dies gives its slots back by itself; a live holder renews them.
//!
//! Contract for implementations (the conformance suite below holds every
//! implementation to it):
//! - `admit` with cost `c` is allowed if the key has room for `max(c, 1)`
//!   units, and then (only then) charges `c`; a refusal says how long until
//!   there is room.
//! - `charge` always charges.
//! - `take_slot` renews a slot the holder already holds (`Held`), or takes
//!   one while fewer than `limit` unexpired slots are held (`Taken`), else
//!   takes nothing (`Full`); `hold_slot` takes or renews whatever the
//!   limit; `renew_slot` extends only a slot that is still held (so a slot
//!   released meanwhile is not brought back); `release_slot` gives one
//!   back.
//! - State of a key that has nothing to remember is dropped: memory does not
//!   grow with keys that are no longer used.

pub mod memory;
pub mod redis;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::BackendError;

/// A rate: `limit` units per `period`, of which all may be used at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Units per period (at least 1).
    pub limit: u64,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// `limit` units per minute.
    pub fn per_minute(limit: u64) -> Self {
        Self {
            limit: limit.max(1),
            period: Duration::from_secs(60),
        }
    }

    /// What one unit costs, in seconds.
    fn interval(self) -> f64 {
        self.period.as_secs_f64() / self.limit.max(1) as f64
    }
}

/// What an admission decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted, and charged.
    Allowed,
    /// Refused, nothing charged; there is room again after this long.
    Refused {
        /// How long until there is room.
        retry_after: Duration,
    },
}

/// What [`Limiter::take_slot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotTaken {
    /// The holder had none; it has one now.
    Taken,
    /// The holder already had one; it is renewed.
    Held,
    /// Every slot is held by others; nothing changed.
    Full,
}

/// How a slot is claimed: the three ways of [`Limiter`] in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Taken while fewer than this many are held (`take_slot`).
    Within(u64),
    /// Taken whatever the limit (`hold_slot`).
    Whatever,
    /// Renewed only if held already (`renew_slot`).
    RenewOnly,
}

/// Per-key rates and slots.
pub trait Limiter: Send + Sync + 'static {
    /// Admits `cost` units of `key` at `rate` if there is room for
    /// `max(cost, 1)`, charging `cost`.
    fn admit(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
    ) -> BoxFuture<'static, Result<Verdict, BackendError>>;

    /// Charges `cost` units already spent, whatever the balance.
    fn charge(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Takes one of `limit` slots of `key` for `holder`, for `ttl`.
    fn take_slot(
        &self,
        key: &str,
        holder: &str,
        limit: u64,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<SlotTaken, BackendError>>;

    /// Takes or renews `holder`'s slot of `key` for `ttl`, whatever the
    /// limit (a holder that already counted, moved or renewing).
    fn hold_slot(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Extends `holder`'s slot of `key` for `ttl` if it still holds one;
    /// false if not (released, or expired).
    fn renew_slot(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// Gives `holder`'s slot of `key` back.
    fn release_slot(&self, key: &str, holder: &str)
    -> BoxFuture<'static, Result<(), BackendError>>;
}

/// The GCRA step shared by the in-process limiter (the Redis one is the
/// same arithmetic in Lua): from the key's TAT (seconds on the caller's
/// clock, `None` if unknown) and now, the verdict and the new TAT.
pub(crate) fn gcra(
    tat: Option<f64>,
    now: f64,
    rate: Rate,
    cost: u64,
    admit: bool,
) -> (Verdict, f64) {
    let interval = rate.interval();
    let period = rate.period.as_secs_f64();
    let base = tat.map_or(now, |tat| tat.max(now));
    if admit {
        let over = base + cost.max(1) as f64 * interval - now - period;
        if over > 1e-9 {
            let retry_after = Duration::try_from_secs_f64(over).unwrap_or(Duration::MAX);
            return (Verdict::Refused { retry_after }, base);
        }
    }
    (Verdict::Allowed, base + cost as f64 * interval)
}

/// The conformance suite every [`Limiter`] must pass; `make` gives a fresh one.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    fn refused(verdict: Verdict) -> Duration {
        match verdict {
            Verdict::Refused { retry_after } => retry_after,
            Verdict::Allowed => panic!("allowed, expected a refusal"),
        }
    }

    pub async fn run<L: Limiter>(make: impl Fn() -> L) {
        rates(&make()).await;
        debts(&make()).await;
        refill(&make()).await;
        slots(&make()).await;
        slots_expire(&make()).await;
    }

    async fn rates<L: Limiter>(limiter: &L) {
        let rate = Rate::per_minute(3);
        for i in 0..3 {
            assert_eq!(
                limiter.admit("a", rate, 1).await.unwrap(),
                Verdict::Allowed,
                "unit {i} of the burst"
            );
        }
        let wait = refused(limiter.admit("a", rate, 1).await.unwrap());
        // One unit comes back every 20 s.
        assert!(
            wait > Duration::from_secs(18) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(
            limiter.admit("b", rate, 1).await.unwrap(),
            Verdict::Allowed,
            "keys are apart"
        );
        // A refusal charges nothing: still refused for about as long.
        let again = refused(limiter.admit("a", rate, 1).await.unwrap());
        assert!(again <= wait, "{again:?} after {wait:?}");
        // A cost larger than the burst is never admitted at once.
        refused(limiter.admit("c", rate, 4).await.unwrap());
        assert_eq!(limiter.admit("c", rate, 3).await.unwrap(), Verdict::Allowed);
    }

    async fn debts<L: Limiter>(limiter: &L) {
        let rate = Rate::per_minute(100);
        // Cost 0 asks for room and charges nothing.
        assert_eq!(limiter.admit("t", rate, 0).await.unwrap(), Verdict::Allowed);
        limiter.charge("t", rate, 99).await.unwrap();
        assert_eq!(limiter.admit("t", rate, 0).await.unwrap(), Verdict::Allowed);
        // Charged past the period: 300 units is 3 minutes, 2 past a full burst.
        limiter.charge("t", rate, 201).await.unwrap();
        let wait = refused(limiter.admit("t", rate, 0).await.unwrap());
        assert!(
            wait > Duration::from_secs(119) && wait <= Duration::from_secs(121),
            "{wait:?}"
        );
    }

    async fn refill<L: Limiter>(limiter: &L) {
        // 10 per second: a burst of 10, then one back each 100 ms.
        let rate = Rate {
            limit: 10,
            period: Duration::from_secs(1),
        };
        for _ in 0..10 {
            assert_eq!(limiter.admit("r", rate, 1).await.unwrap(), Verdict::Allowed);
        }
        refused(limiter.admit("r", rate, 1).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(limiter.admit("r", rate, 2).await.unwrap(), Verdict::Allowed);
        refused(limiter.admit("r", rate, 1).await.unwrap());
    }

    async fn slots<L: Limiter>(limiter: &L) {
        use SlotTaken::{Full, Held, Taken};
        let take = |holder: &'static str, limit| limiter.take_slot("u", holder, limit, LONG);
        assert_eq!(take("g1", 2).await.unwrap(), Taken);
        assert_eq!(take("g2", 2).await.unwrap(), Taken);
        assert_eq!(take("g3", 2).await.unwrap(), Full);
        assert_eq!(
            take("g1", 2).await.unwrap(),
            Held,
            "a holder renews its own"
        );
        assert_eq!(
            limiter.take_slot("v", "g3", 2, LONG).await.unwrap(),
            Taken,
            "keys are apart"
        );
        limiter.release_slot("u", "g1").await.unwrap();
        assert_eq!(take("g3", 2).await.unwrap(), Taken);
        // Holding ignores the limit (u now has g2, g3 and g4).
        limiter.hold_slot("u", "g4", LONG).await.unwrap();
        limiter.release_slot("u", "g2").await.unwrap();
        assert_eq!(take("g5", 2).await.unwrap(), Full);
        // Renewing extends what is held, and brings back nothing released.
        assert!(limiter.renew_slot("u", "g3", LONG).await.unwrap());
        assert!(!limiter.renew_slot("u", "g2", LONG).await.unwrap());
        assert_eq!(take("g5", 2).await.unwrap(), Full);
        limiter.release_slot("u", "g3").await.unwrap();
        limiter.release_slot("u", "g4").await.unwrap();
        limiter.release_slot("u", "unknown").await.unwrap();
        assert_eq!(take("g5", 1).await.unwrap(), Taken);
    }

    async fn slots_expire<L: Limiter>(limiter: &L) {
        let short = Duration::from_millis(200);
        let take = |holder: &'static str, ttl| limiter.take_slot("x", holder, 1, ttl);
        assert_eq!(take("dead", short).await.unwrap(), SlotTaken::Taken);
        assert_eq!(take("live", LONG).await.unwrap(), SlotTaken::Full);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!limiter.renew_slot("x", "dead", LONG).await.unwrap());
        assert_eq!(
            take("live", LONG).await.unwrap(),
            SlotTaken::Taken,
            "a holder that stopped renewing gave its slot back"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_a_burst_then_one_per_interval() {
        let rate = Rate::per_minute(60);
        let mut tat = None;
        for _ in 0..60 {
            let (verdict, next) = gcra(tat, 1000.0, rate, 1, true);
            assert_eq!(verdict, Verdict::Allowed);
            tat = Some(next);
        }
        assert!(matches!(
            gcra(tat, 1000.0, rate, 1, true).0,
            Verdict::Refused { .. }
        ));
        assert_eq!(gcra(tat, 1001.0, rate, 1, true).0, Verdict::Allowed);
        // Huge costs neither overflow nor panic.
        let (verdict, _) = gcra(None, 0.0, rate, u64::MAX, true);
        assert!(matches!(verdict, Verdict::Refused { .. }));
        let (_, tat) = gcra(None, 0.0, rate, u64::MAX, false);
        assert!(tat.is_finite());
    }
}
