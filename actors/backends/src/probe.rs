//! How each backend is checked, for `/ready` and the metrics: one
//! [`Probe`] per backend, which the session layer's supervisors run.
//!
//! A probe says what it checks (`backend`, the key in `/ready`; `kind`, the
//! implementation), how to check it now, how often, and whether the replica
//! is unready while it fails.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::embed::Embedder;
use crate::llm::LlmProvider;
use crate::log::EventLog;
use crate::objects::ObjectStore;
use crate::redis::RedisConnections;
use crate::store::{PoolStatus, SessionStore};
use crate::vectors::VectorIndex;

/// How often a cheap local check runs while the backend answers.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the LLM provider is checked: each check is a request to a
/// (possibly paid) service, so `/ready` reports the last result instead.
pub const LLM_INTERVAL: Duration = Duration::from_secs(30);

/// What a check found out, besides up or down.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeReport {
    /// The pool's occupancy, for pooled clients.
    pub pool: Option<PoolStatus>,
    /// Reconnections of the client so far.
    pub reconnects: u64,
}

/// A check that only says up or down, as a probe's answer.
fn answered<E: std::fmt::Display + 'static>(
    check: BoxFuture<'static, Result<(), E>>,
) -> BoxFuture<'static, Result<ProbeReport, String>> {
    Box::pin(async move {
        check.await.map_err(|e| e.to_string())?;
        Ok(ProbeReport::default())
    })
}

/// One checked backend.
pub trait Probe: Send + Sync + 'static {
    /// The role (`store`, `redis`, `event_log`, `llm`): the key in `/ready`
    /// and the metric label.
    fn backend(&self) -> &'static str;

    /// The implementation (`postgres`, `redb`, `redis`, `memory`, `openai`, `demo`).
    fn kind(&self) -> &'static str;

    /// Checks that the backend answers now.
    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>>;

    /// Time between checks while it answers.
    fn interval(&self) -> Duration {
        DEFAULT_INTERVAL
    }

    /// Whether `/ready` checks it afresh (true) or reports the last check.
    fn fresh_on_ready(&self) -> bool {
        true
    }

    /// Whether the replica is unready while this backend fails.
    fn required(&self) -> bool {
        true
    }
}

/// The session store.
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

/// A replica's Redis connections (the bus and the leases ride on them).
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

/// The event log, whatever it is stored in.
pub struct EventLogProbe(pub Arc<dyn EventLog>);

impl Probe for EventLogProbe {
    fn backend(&self) -> &'static str {
        "event_log"
    }

    fn kind(&self) -> &'static str {
        self.0.name()
    }

    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>> {
        answered(self.0.ping())
    }
}

/// The LLM provider. Checked every [`LLM_INTERVAL`] and reported as last
/// checked; it does not make the replica unready, since every replica
/// shares the provider and routing elsewhere cannot help.
pub struct LlmProbe(pub Arc<dyn LlmProvider>);

impl Probe for LlmProbe {
    fn backend(&self) -> &'static str {
        "llm"
    }

    fn kind(&self) -> &'static str {
        self.0.name()
    }

    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>> {
        answered(self.0.check())
    }

    fn interval(&self) -> Duration {
        LLM_INTERVAL
    }

    fn fresh_on_ready(&self) -> bool {
        false
    }

    fn required(&self) -> bool {
        false
    }
}

/// The object store of uploaded files. Chat goes on without it, so the
/// replica stays ready while it is down; `/ready` says so, and uploads and
/// file reads answer `503 overloaded` meanwhile.
pub struct ObjectsProbe(pub Arc<dyn ObjectStore>);

impl Probe for ObjectsProbe {
    fn backend(&self) -> &'static str {
        "objects"
    }

    fn kind(&self) -> &'static str {
        self.0.name()
    }

    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>> {
        answered(self.0.ping())
    }

    fn required(&self) -> bool {
        false
    }
}

/// The vector index. Like the object store, not required for chat.
pub struct VectorsProbe(pub Arc<dyn VectorIndex>);

impl Probe for VectorsProbe {
    fn backend(&self) -> &'static str {
        "vectors"
    }

    fn kind(&self) -> &'static str {
        self.0.name()
    }

    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>> {
        answered(self.0.ping())
    }

    fn required(&self) -> bool {
        false
    }
}

/// The embedder: `local` (in process, no model) or `provider` (checked
/// through the provider, as often as the LLM).
pub struct EmbedderProbe(pub Arc<dyn Embedder>);

impl Probe for EmbedderProbe {
    fn backend(&self) -> &'static str {
        "embedder"
    }

    fn kind(&self) -> &'static str {
        self.0.name()
    }

    fn check(&self) -> BoxFuture<'static, Result<ProbeReport, String>> {
        answered(self.0.check())
    }

    fn interval(&self) -> Duration {
        LLM_INTERVAL
    }

    fn fresh_on_ready(&self) -> bool {
        false
    }

    fn required(&self) -> bool {
        false
    }
}
