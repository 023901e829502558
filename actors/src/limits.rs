//! [`Limits`]: what one user may use, shared by every replica when the
//! limiter is Redis's (`sluice_backends::limits`).
//!
//! - requests per minute: every authenticated HTTP request and every
//!   WebSocket command (`request`);
//! - generated tokens per minute: checked before a generation starts,
//!   charged with what it generated once it ends (`admit_generation`,
//!   `TokenMeter`);
//! - generations at once: a slot per running generation. A session's
//!   generation holds the slot named by its session id: the replica that
//!   takes a send asks for it, the replica running the generation holds it
//!   (renewing it every [`RENEW_EVERY`]) and gives it back when the answer
//!   ends; a relayed completion holds a slot of its own while it streams;
//! - streams at once: a slot per WebSocket or SSE connection;
//! - stored sessions: counted in the session store (`check_sessions`).
//!
//! Each limit is off at 0. A limiter that cannot be asked (Redis down) lets
//! the request through, counted in `sluice_limit_errors_total`: chat goes
//! on while the limits are blind, rather than failing because of them.

pub mod provider;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_backends::limits::{Limiter, Rate, SlotTaken, Verdict};
use sluice_backends::{Backend, BackendError, ErrorKind};

use crate::error::SessionError;
use crate::metrics::Metrics;

/// How long a slot lives unless renewed: a replica that dies gives its
/// users' slots back within this.
pub const SLOT_TTL: Duration = Duration::from_secs(60);

/// How often a replica renews the slots it holds.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);

/// Each limit; 0 turns it off.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitSettings {
    /// Requests per minute per user.
    pub requests_per_minute: u64,
    /// Generated tokens per minute per user.
    pub tokens_per_minute: u64,
    /// Generations running at once per user.
    pub generations: u64,
    /// WebSocket and SSE streams open at once per user.
    pub streams: u64,
    /// Sessions stored per user.
    pub sessions: u64,
    /// Bytes of files stored per user (checked by `Files` when an upload
    /// begins).
    pub file_bytes: u64,
}

/// The limits. Cloning shares them.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

struct Inner {
    limiter: Arc<dyn Limiter>,
    settings: LimitSettings,
    metrics: Metrics,
    /// Slots this replica holds, renewed every [`RENEW_EVERY`]: (key,
    /// holder) by guard number.
    held: Mutex<HashMap<u64, (String, String)>>,
    next_guard: AtomicU64,
}

/// The kinds of state a user has in the limiter.
#[derive(Clone, Copy)]
enum Kind {
    Requests,
    Tokens,
    Generations,
    Streams,
    Sessions,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Generations => "generations",
            Self::Streams => "streams",
            Self::Sessions => "sessions",
        }
    }
}

/// A user's key for `kind`: a digest, so any user id makes a short key of
/// fixed form.
fn key(kind: Kind, user: &str) -> String {
    let digest = Sha256::digest(user.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{hex}", kind.as_str())
}

/// Longest a limiter call made in the background (a release, a charge, a
/// renewal) may take before it is given up: a Redis that hangs must not
/// pile such tasks up.
const BACKGROUND_CALL: Duration = Duration::from_secs(5);

/// Most tokens one charge counts (a provider's `usage` is not trusted to
/// be sane).
const MAX_CHARGE: u64 = 1 << 40;

impl Limits {
    /// Limits on `limiter`. Starts the task that renews held slots (it ends
    /// when the last clone is dropped).
    pub fn new(limiter: Arc<dyn Limiter>, settings: LimitSettings, metrics: Metrics) -> Self {
        let inner = Arc::new(Inner {
            limiter,
            settings,
            metrics,
            held: Mutex::default(),
            next_guard: AtomicU64::new(0),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(renew(Arc::downgrade(&inner)));
        } else {
            tracing::warn!("limits made outside a runtime: held slots will not be renewed");
        }
        Self { inner }
    }

    /// Limits that are all off (tests, tools).
    pub fn unlimited(metrics: Metrics) -> Self {
        Self::new(
            Arc::new(sluice_backends::limits::memory::MemoryLimiter::new()),
            LimitSettings::default(),
            metrics,
        )
    }

    /// The settings.
    pub fn settings(&self) -> LimitSettings {
        self.inner.settings
    }

    /// Counts a request of `user`; refused past the requests per minute.
    pub async fn request(&self, user: &str) -> Result<(), SessionError> {
        let limit = self.inner.settings.requests_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let verdict = self
            .inner
            .limiter
            .admit(&key(Kind::Requests, user), Rate::per_minute(limit), 1)
            .await;
        self.judge(Kind::Requests, verdict.map(wait_of), || {
            format!("over {limit} requests per minute")
        })
    }

    /// Checks that `user` may start a generation named `holder` (a session
    /// id, or any unique name): that it is not over its tokens per minute,
    /// and that a slot of its generations at once is free, which is taken.
    /// True if this call took the slot (rather than finding it held by
    /// `holder` already): a caller whose generation then does not start
    /// gives it back ([`Limits::release_generation`]); false also when
    /// there is no such limit.
    pub async fn admit_generation(&self, user: &str, holder: &str) -> Result<bool, SessionError> {
        let tokens = self.inner.settings.tokens_per_minute;
        if tokens > 0 {
            let verdict = self
                .inner
                .limiter
                .admit(&key(Kind::Tokens, user), Rate::per_minute(tokens), 0)
                .await;
            self.judge(Kind::Tokens, verdict.map(wait_of), || {
                format!("over {tokens} generated tokens per minute")
            })?;
        }
        let limit = self.inner.settings.generations;
        if limit == 0 {
            return Ok(false);
        }
        let taken = self
            .take(Kind::Generations, user, holder, limit, || {
                format!(
                    "{limit} answers are already being generated for this user; wait for one to end"
                )
            })
            .await?;
        Ok(taken == Some(SlotTaken::Taken))
    }

    /// Holds `user`'s generation slot `holder` while the guard lives (taken
    /// by [`Limits::admit_generation`], or carried over from a replica that
    /// died), whatever the limit.
    pub fn hold_generation(&self, user: &str, holder: &str) -> Option<SlotGuard> {
        if self.inner.settings.generations == 0 {
            return None;
        }
        let key = key(Kind::Generations, user);
        let held = self.inner.limiter.hold_slot(&key, holder, SLOT_TTL);
        self.fire(held);
        Some(self.guard(key, holder.to_owned()))
    }

    /// Gives back a generation slot that nothing holds (a send that failed
    /// after [`Limits::admit_generation`] took it).
    pub fn release_generation(&self, user: &str, holder: &str) {
        if self.inner.settings.generations > 0 {
            self.release(key(Kind::Generations, user), holder.to_owned());
        }
    }

    /// A generation of the relay: admitted as [`Limits::admit_generation`]
    /// with a name of its own, and held while the guard lives.
    pub async fn relay_generation(&self, user: &str) -> Result<Option<SlotGuard>, SessionError> {
        let holder = sluice_backends::ids::new_id();
        let taken = self.admit_generation(user, &holder).await?;
        Ok(taken.then(|| self.guard(key(Kind::Generations, user), holder)))
    }

    /// A stream (WebSocket or SSE) of `user`, held while the guard lives;
    /// refused past its streams at once.
    pub async fn open_stream(&self, user: &str) -> Result<Option<SlotGuard>, SessionError> {
        let limit = self.inner.settings.streams;
        if limit == 0 {
            return Ok(None);
        }
        let holder = sluice_backends::ids::new_id();
        let taken = self
            .take(Kind::Streams, user, &holder, limit, || {
                format!("{limit} streams are already open for this user; close one")
            })
            .await?;
        Ok((taken == Some(SlotTaken::Taken)).then(|| self.guard(key(Kind::Streams, user), holder)))
    }

    /// Refuses a new session past the sessions a user may store, given
    /// how many it has.
    pub fn check_sessions(&self, stored: u64) -> Result<(), SessionError> {
        let limit = self.inner.settings.sessions;
        if limit == 0 || stored < limit {
            return Ok(());
        }
        Err(self.refused(
            Kind::Sessions,
            format!("this user has {limit} sessions, the most it may keep; delete some"),
            Duration::from_secs(60),
        ))
    }

    /// Counts the tokens a generation of `user` produces; they are charged
    /// when the meter is dropped.
    pub fn meter(&self, user: &str) -> TokenMeter {
        TokenMeter {
            limits: self.clone(),
            user: user.to_owned(),
            tokens: 0,
        }
    }

    /// Charges `tokens` generated for `user`.
    pub fn charge_tokens(&self, user: &str, tokens: u64) {
        let limit = self.inner.settings.tokens_per_minute;
        if limit == 0 || tokens == 0 {
            return;
        }
        let charged = self.inner.limiter.charge(
            &key(Kind::Tokens, user),
            Rate::per_minute(limit),
            tokens.min(MAX_CHARGE),
        );
        self.fire(charged);
    }

    /// Takes a slot of `kind`: `None` if the limiter could not be asked
    /// (the request goes through).
    async fn take(
        &self,
        kind: Kind,
        user: &str,
        holder: &str,
        limit: u64,
        message: impl FnOnce() -> String,
    ) -> Result<Option<SlotTaken>, SessionError> {
        let taken = self
            .inner
            .limiter
            .take_slot(&key(kind, user), holder, limit, SLOT_TTL)
            .await;
        // A slot frees when something ends; there is no telling when.
        let wait =
            |taken: &SlotTaken| (*taken == SlotTaken::Full).then_some(Duration::from_secs(1));
        let verdict = taken.as_ref().map(wait).map_err(Clone::clone);
        self.judge(kind, verdict, message)?;
        Ok(taken.ok())
    }

    /// A limiter's answer as the request's: refused with the wait it says,
    /// or through (also when the limiter failed, which is counted).
    fn judge(
        &self,
        kind: Kind,
        verdict: Result<Option<Duration>, BackendError>,
        message: impl FnOnce() -> String,
    ) -> Result<(), SessionError> {
        match verdict {
            Ok(None) => Ok(()),
            Ok(Some(retry_after)) => Err(self.refused(kind, message(), retry_after)),
            Err(e) => {
                self.inner.failed(&e);
                Ok(())
            }
        }
    }

    fn refused(&self, kind: Kind, message: String, retry_after: Duration) -> SessionError {
        self.inner
            .metrics
            .limited_total
            .with_label_values(&[kind.as_str()])
            .inc();
        SessionError::RateLimited {
            message,
            retry_after,
        }
    }

    /// A guard of `holder`'s slot of `key`, already taken, renewed from now
    /// on and given back when dropped.
    fn guard(&self, key: String, holder: String) -> SlotGuard {
        let id = self.inner.next_guard.fetch_add(1, Ordering::Relaxed);
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (key, holder));
        SlotGuard {
            limits: self.clone(),
            id,
        }
    }

    fn release(&self, key: String, holder: String) {
        let released = self.inner.limiter.release_slot(&key, &holder);
        self.fire(released);
    }

    /// Runs a limiter call in the background, bounded in time; a failure
    /// is counted and logged.
    fn fire<T>(&self, call: impl Future<Output = Result<T, BackendError>> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // The runtime is gone (shutting down): held slots lapse by themselves.
            return;
        };
        let inner = self.inner.clone();
        runtime.spawn(async move {
            match tokio::time::timeout(BACKGROUND_CALL, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => inner.failed(&e),
                Err(_) => inner.failed(&BackendError::new(
                    Backend::Limits,
                    ErrorKind::Unavailable,
                    "no answer in time",
                )),
            }
        });
    }
}

/// The wait a rate's verdict says, if refused.
fn wait_of(verdict: Verdict) -> Option<Duration> {
    match verdict {
        Verdict::Allowed => None,
        Verdict::Refused { retry_after } => Some(retry_after),
    }
}

impl Inner {
    fn failed(&self, e: &BackendError) {
        self.metrics.limit_errors_total.inc();
        tracing::warn!(error = %e, "a limit could not be checked or kept");
    }
}

/// Renews every slot this replica holds, until the limits are dropped. A
/// slot given back meanwhile is not brought back.
async fn renew(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let held: Vec<(String, String)> = inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for (key, holder) in held {
            let renewed = inner.limiter.renew_slot(&key, &holder, SLOT_TTL);
            match tokio::time::timeout(BACKGROUND_CALL, renewed).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    inner.failed(&e);
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// A slot held until dropped.
pub struct SlotGuard {
    limits: Limits,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let slot = self
            .limits
            .inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if let Some((key, holder)) = slot {
            self.limits.release(key, holder);
        }
    }
}

/// The tokens of one generation, charged to its user when dropped.
pub struct TokenMeter {
    limits: Limits,
    user: String,
    tokens: u64,
}

impl TokenMeter {
    /// Counts `tokens` more.
    pub fn add(&mut self, tokens: u64) {
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// The provider's own count (its `usage`), which replaces the estimate.
    pub fn reported(&mut self, tokens: u64) {
        self.tokens = tokens;
    }

    /// Counts the text of `bytes` bytes (a delta's text and tool-call
    /// arguments): a token per four bytes, at least one for any text.
    pub fn text(&mut self, bytes: usize) {
        if bytes > 0 {
            self.add((bytes as u64 / 4).max(1));
        }
    }
}

impl Drop for TokenMeter {
    fn drop(&mut self) {
        self.limits.charge_tokens(&self.user, self.tokens);
    }
}

#[cfg(test)]
mod tests {
    use sluice_backends::limits::memory::MemoryLimiter;

    use super::*;

    fn limits(settings: LimitSettings) -> Limits {
        Limits::new(
            Arc::new(MemoryLimiter::new()),
            settings,
            Metrics::unregistered(),
        )
    }

    #[tokio::test]
    async fn each_limit_refuses_past_its_value_and_zero_is_off() {
        let l = limits(LimitSettings {
            requests_per_minute: 2,
            tokens_per_minute: 10,
            generations: 1,
            streams: 1,
            sessions: 3,
            file_bytes: 0,
        });
        l.request("a").await.unwrap();
        l.request("a").await.unwrap();
        let e = l.request("a").await.unwrap_err();
        assert!(e.retry_after().unwrap() > Duration::from_secs(25), "{e:?}");
        l.request("b").await.unwrap();

        l.admit_generation("a", "s1").await.unwrap();
        let guard = l.hold_generation("a", "s1");
        l.admit_generation("a", "s1").await.unwrap();
        assert!(l.admit_generation("a", "s2").await.is_err());
        drop(guard);
        tokio::task::yield_now().await;
        l.admit_generation("a", "s2").await.unwrap();
        l.release_generation("a", "s2");
        tokio::task::yield_now().await;

        let mut meter = l.meter("a");
        meter.text(12);
        meter.reported(25);
        drop(meter);
        tokio::task::yield_now().await;
        let e = l.admit_generation("a", "s3").await.unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");

        let stream = l.open_stream("a").await.unwrap();
        assert!(l.open_stream("a").await.is_err());
        drop(stream);
        tokio::task::yield_now().await;
        assert!(l.open_stream("a").await.unwrap().is_some());

        l.check_sessions(2).unwrap();
        assert!(l.check_sessions(3).is_err());

        let off = limits(LimitSettings::default());
        for _ in 0..100 {
            off.request("a").await.unwrap();
            off.admit_generation("a", "x").await.unwrap();
            assert!(off.open_stream("a").await.unwrap().is_none());
        }
        off.check_sessions(u64::MAX).unwrap();
    }
}
