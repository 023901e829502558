//! Backend supervisors: one actor per backend, so `/ready` and the metrics
//! tell the truth about it, and [`Health`], what `/ready` asks.
//!
//! Each backend is a [`Probe`] (in `sluice-backends`). Its supervisor checks
//! it on a timer (at the probe's interval while up, backing off to
//! [`MAX_BACKOFF`] while down), and exports `sluice_backend_up`,
//! `sluice_backend_reconnects_total` and `sluice_backend_pool_connections`.
//! The clients themselves reconnect: fred with its exponential reconnect
//! policy, deadpool by opening a new connection on the next checkout (which
//! each probe's check is). `/ready` waits for a check that ends after it
//! came (the one under way, or a new one), so it is never staler than one
//! round trip, and a flood of `/ready` requests costs each backend one
//! check at a time; the LLM provider is reported as last checked. A check
//! that takes longer than [`CHECK_TIMEOUT`] counts as down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use sluice_backends::probe::{Probe, ProbeReport};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Longest time between checks of a backend that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Longest a check may take; a backend that does not answer by then is down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A backend's state as last checked.
#[derive(Debug, Clone, Serialize)]
pub struct BackendState {
    /// The implementation.
    pub kind: &'static str,
    /// `up`, `down`, or `unchecked` (not checked yet).
    pub state: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the replica is unready while it is not up.
    #[serde(skip)]
    pub required: bool,
}

impl BackendState {
    /// Whether the backend answered.
    pub fn is_up(&self) -> bool {
        self.state == "up"
    }
}

/// The supervisor of one backend.
pub struct Supervisor {
    probe: Arc<dyn Probe>,
    metrics: Metrics,
    /// Reconnections already counted.
    reconnects: u64,
    /// Consecutive failed checks, for the backoff.
    failures: u32,
    /// The last check's outcome; `None` before the first.
    last: Option<BackendState>,
    /// The check under way, if one is, with whoever waits for its outcome:
    /// a `/ready` that comes meanwhile waits for it rather than starting
    /// another, so a flood of `/ready` requests costs each backend one
    /// check at a time.
    in_flight: Option<Vec<oneshot::Sender<BackendState>>>,
}

impl Supervisor {
    /// Starts a supervisor of `probe` on the current arbiter.
    pub fn spawn(probe: Arc<dyn Probe>, metrics: Metrics) -> Addr<Self> {
        // Exported from the start, at zero, like every closed label set.
        metrics
            .backend_reconnects_total
            .with_label_values(&[probe.backend()]);
        Self {
            probe,
            metrics,
            reconnects: 0,
            failures: 0,
            last: None,
            in_flight: None,
        }
        .start()
    }

    fn state(&self, state: &'static str, error: Option<String>) -> BackendState {
        BackendState {
            kind: self.probe.kind(),
            state,
            error,
            required: self.probe.required(),
        }
    }

    fn record(&mut self, result: &Result<ProbeReport, String>) -> BackendState {
        let backend = self.probe.backend();
        let metrics = &self.metrics;
        metrics
            .backend_up
            .with_label_values(&[backend])
            .set(i64::from(result.is_ok()));
        let state = match result {
            Ok(report) => {
                self.failures = 0;
                if report.reconnects > self.reconnects {
                    metrics
                        .backend_reconnects_total
                        .with_label_values(&[backend])
                        .inc_by(report.reconnects - self.reconnects);
                    self.reconnects = report.reconnects;
                }
                if let Some(pool) = report.pool {
                    let gauge = &metrics.backend_pool_connections;
                    gauge
                        .with_label_values(&[backend, "open"])
                        .set(pool.open as i64);
                    gauge
                        .with_label_values(&[backend, "in_use"])
                        .set(pool.in_use as i64);
                }
                self.state("up", None)
            }
            Err(error) => {
                if self.failures == 0 {
                    tracing::warn!(backend, error, "backend down");
                }
                self.failures = self.failures.saturating_add(1);
                self.state("down", Some(error.clone()))
            }
        };
        self.last = Some(state.clone());
        state
    }

    /// The outcome of a check that ends after now: the one under way, or a
    /// new one.
    fn check(&mut self, ctx: &mut Context<Self>) -> oneshot::Receiver<BackendState> {
        let (tx, rx) = oneshot::channel();
        if let Some(waiters) = &mut self.in_flight {
            waiters.push(tx);
            return rx;
        }
        self.in_flight = Some(vec![tx]);
        let check = tokio::time::timeout(CHECK_TIMEOUT, self.probe.check());
        ctx.spawn(check.into_actor(self).map(|result, act, _| {
            let result = result
                .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())));
            let state = act.record(&result);
            for waiter in act.in_flight.take().unwrap_or_default() {
                let _ = waiter.send(state.clone());
            }
        }));
        rx
    }

    fn schedule(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(delay, |act, ctx| {
            let checked = act.check(ctx);
            ctx.spawn(fut::wrap_future::<_, Self>(checked).map(|_, act, ctx| {
                let interval = act.probe.interval();
                let delay = if act.failures == 0 {
                    interval
                } else {
                    let backoff = interval / 4 * 2u32.saturating_pow(act.failures.min(5));
                    backoff.min(MAX_BACKOFF.max(interval))
                };
                act.schedule(delay, ctx);
            }));
        });
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The first check runs at once, so `/ready` soon knows.
        self.schedule(Duration::ZERO, ctx);
    }
}

/// The backend's role and state: checked now, or as last checked.
#[derive(Message)]
#[rtype(result = "(&'static str, BackendState)")]
struct CheckNow;

impl Handler<CheckNow> for Supervisor {
    type Result = ResponseActFuture<Self, (&'static str, BackendState)>;

    fn handle(&mut self, _: CheckNow, ctx: &mut Self::Context) -> Self::Result {
        let backend = self.probe.backend();
        if !self.probe.fresh_on_ready() {
            let state = self
                .last
                .clone()
                .unwrap_or_else(|| self.state("unchecked", None));
            return Box::pin(fut::ready((backend, state)));
        }
        let checked = self.check(ctx);
        Box::pin(fut::wrap_future(async move {
            let state = checked.await.unwrap_or_else(|_| BackendState {
                kind: "unknown",
                state: "down",
                error: Some("the check was dropped".into()),
                required: true,
            });
            (backend, state)
        }))
    }
}

/// Every backend's supervisor. Cloning is cheap.
#[derive(Clone)]
pub struct Health {
    supervisors: Vec<Addr<Supervisor>>,
}

/// What `/ready` reports.
pub struct Readiness {
    /// Every required backend is up.
    pub ready: bool,
    /// Each backend by role.
    pub backends: BTreeMap<&'static str, BackendState>,
}

impl Health {
    /// Starts a supervisor for each probe (inside a running actix system).
    pub fn start(probes: Vec<Arc<dyn Probe>>, metrics: &Metrics) -> Self {
        Self {
            supervisors: probes
                .into_iter()
                .map(|probe| Supervisor::spawn(probe, metrics.clone()))
                .collect(),
        }
    }

    /// Every backend's state, checked now where its probe allows.
    pub async fn report(&self) -> Readiness {
        let checks = self.supervisors.iter().map(|s| s.send(CheckNow));
        let backends: BTreeMap<_, _> = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let ready = backends.len() == self.supervisors.len()
            && backends.values().all(|b| b.is_up() || !b.required);
        Readiness { ready, backends }
    }
}
