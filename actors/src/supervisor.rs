//! Backend supervisors: one actor per backend, holding its client or pool,
//! so `/ready` and the metrics tell the truth about it.
//!
//! Each backend is a [`Probe`]. Its supervisor checks it on a timer (every
//! second while up, backing off to [`MAX_BACKOFF`] while down), and exports
//! `sluice_backend_up`,
//! `sluice_backend_reconnects_total` and `sluice_backend_pool_connections`.
//! The clients themselves reconnect: fred with its exponential reconnect
//! policy, deadpool by opening a new connection on the next checkout (which
//! each probe's check is). `/ready` asks for a fresh check, so it is never
//! staler than one round trip.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::redis::RedisConnections;
use crate::store::{PoolStatus, SessionStore};

/// Time between checks of a healthy backend.
const INTERVAL: Duration = Duration::from_secs(1);

/// Longest time between checks of a backend that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a check found out, besides up or down.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeReport {
    /// The pool's occupancy, for pooled clients.
    pub pool: Option<PoolStatus>,
    /// Reconnections of the client so far.
    pub reconnects: u64,
}

/// One supervised backend.
pub trait Probe: Send + Sync + 'static {
    /// The role (`store`, `redis`), the key in `/ready` and the metric label.
    fn backend(&self) -> &'static str;
    /// The implementation (`postgres`, `redb`, `redis`).
    fn kind(&self) -> &'static str;
    /// Checks that the backend answers now.
    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>>;
}

/// The session store as a probe.
pub struct StoreProbe(pub Arc<dyn SessionStore>);

impl Probe for StoreProbe {
    fn backend(&self) -> &'static str {
        "store"
    }

    fn kind(&self) -> &'static str {
        self.0.name()
    }

    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>> {
        let store = self.0.clone();
        Box::pin(async move {
            store.ping().await.map_err(|e| e.to_string())?;
            Ok(ProbeReport {
                pool: store.pool_status(),
                reconnects: 0,
            })
        })
    }
}

/// Redis (event log, bus, leases) as a probe.
pub struct RedisProbe(pub RedisConnections);

impl Probe for RedisProbe {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>> {
        let redis = self.0.clone();
        Box::pin(async move {
            redis.ping().await?;
            Ok(ProbeReport {
                pool: None,
                reconnects: redis.reconnects(),
            })
        })
    }
}

/// A backend's state as last checked.
#[derive(Debug, Clone, Serialize)]
pub struct BackendState {
    /// The implementation.
    pub kind: &'static str,
    /// `up` or `down`.
    pub state: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
}

impl Supervisor {
    /// Starts a supervisor of `probe` on the current arbiter.
    pub fn spawn(probe: Arc<dyn Probe>, metrics: Metrics) -> Addr<Self> {
        Self {
            probe,
            metrics,
            reconnects: 0,
            failures: 0,
        }
        .start()
    }

    fn record(&mut self, result: &Result<ProbeReport, String>) -> BackendState {
        let backend = self.probe.backend();
        let metrics = &self.metrics;
        metrics
            .backend_up
            .with_label_values(&[backend])
            .set(i64::from(result.is_ok()));
        match result {
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
                BackendState {
                    kind: self.probe.kind(),
                    state: "up",
                    error: None,
                }
            }
            Err(error) => {
                if self.failures == 0 {
                    tracing::warn!(backend, error, "backend down");
                }
                self.failures = self.failures.saturating_add(1);
                BackendState {
                    kind: self.probe.kind(),
                    state: "down",
                    error: Some(error.clone()),
                }
            }
        }
    }

    fn check(&mut self) -> impl ActorFuture<Self, Output = (&'static str, BackendState)> + use<> {
        self.probe
            .check()
            .into_actor(self)
            .map(|result, act, _| (act.probe.backend(), act.record(&result)))
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let delay = if self.failures == 0 {
            INTERVAL
        } else {
            (INTERVAL / 4 * 2u32.saturating_pow(self.failures.min(5))).min(MAX_BACKOFF)
        };
        ctx.run_later(delay, |act, ctx| {
            ctx.wait(act.check().map(|_, act, ctx| act.schedule(ctx)));
        });
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.schedule(ctx);
    }
}

/// Check the backend now; its role and state.
#[derive(Message)]
#[rtype(result = "(&'static str, BackendState)")]
pub struct CheckNow;

impl Handler<CheckNow> for Supervisor {
    type Result = ResponseActFuture<Self, (&'static str, BackendState)>;

    fn handle(&mut self, _: CheckNow, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.check())
    }
}
