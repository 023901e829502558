//! The backend supervisor: one actor that watches every backend's client or
//! pool, so `/ready` and the metrics tell the truth about them.
//!
//! Each backend is a [`Probe`]. The supervisor checks them on a timer (every
//! second while up, backing off to [`MAX_BACKOFF`] while down), keeps the
//! latest state per backend, and exports `sluice_backend_up`,
//! `sluice_backend_reconnects_total` and `sluice_backend_pool_connections`.
//! The clients themselves reconnect: fred with its exponential reconnect
//! policy, deadpool by opening a new connection on the next checkout (which
//! each probe's check is). `/ready` asks for a fresh check, so it is never
//! staler than one round trip.

use std::collections::BTreeMap;
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

/// The supervisor actor.
pub struct Supervisor {
    probes: Vec<Arc<dyn Probe>>,
    metrics: Metrics,
    /// Reconnections already counted, per backend.
    reconnects: BTreeMap<&'static str, u64>,
    /// Consecutive failed rounds, for the backoff.
    failures: u32,
}

impl Supervisor {
    /// A supervisor of `probes`.
    pub fn new(probes: Vec<Arc<dyn Probe>>, metrics: Metrics) -> Self {
        Self {
            probes,
            metrics,
            reconnects: BTreeMap::new(),
            failures: 0,
        }
    }

    /// Starts a supervisor of `probes` on the current arbiter.
    pub fn spawn(probes: Vec<Arc<dyn Probe>>, metrics: Metrics) -> Addr<Self> {
        Self::new(probes, metrics).start()
    }

    fn record(&mut self, probe: &dyn Probe, result: &Result<ProbeReport, String>) -> BackendState {
        let backend = probe.backend();
        let metrics = &self.metrics;
        metrics
            .backend_up
            .with_label_values(&[backend])
            .set(i64::from(result.is_ok()));
        match result {
            Ok(report) => {
                let seen = self.reconnects.entry(backend).or_default();
                if report.reconnects > *seen {
                    metrics
                        .backend_reconnects_total
                        .with_label_values(&[backend])
                        .inc_by(report.reconnects - *seen);
                    *seen = report.reconnects;
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
                    kind: probe.kind(),
                    state: "up",
                    error: None,
                }
            }
            Err(error) => BackendState {
                kind: probe.kind(),
                state: "down",
                error: Some(error.clone()),
            },
        }
    }

    fn check_all(
        &mut self,
    ) -> impl ActorFuture<Self, Output = BTreeMap<&'static str, BackendState>> + use<> {
        let probes = self.probes.clone();
        let checks = futures::future::join_all(probes.iter().map(|p| p.check()));
        checks.into_actor(self).map(move |results, act, _| {
            let mut states = BTreeMap::new();
            for (probe, result) in probes.iter().zip(results) {
                let state = act.record(&**probe, &result);
                if let Some(error) = &state.error {
                    tracing::warn!(backend = probe.backend(), error, "backend down");
                }
                states.insert(probe.backend(), state);
            }
            act.failures = if states.values().all(BackendState::is_up) {
                0
            } else {
                act.failures.saturating_add(1)
            };
            states
        })
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let delay = if self.failures == 0 {
            INTERVAL
        } else {
            (INTERVAL / 4 * 2u32.saturating_pow(self.failures.min(5))).min(MAX_BACKOFF)
        };
        ctx.run_later(delay, |act, ctx| {
            ctx.wait(act.check_all().map(|_, act, ctx| act.schedule(ctx)));
        });
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.schedule(ctx);
    }
}

/// Check every backend now; their states by role.
#[derive(Message)]
#[rtype(result = "BTreeMap<&'static str, BackendState>")]
pub struct CheckNow;

impl Handler<CheckNow> for Supervisor {
    type Result = ResponseActFuture<Self, BTreeMap<&'static str, BackendState>>;

    fn handle(&mut self, _: CheckNow, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.check_all())
    }
}
