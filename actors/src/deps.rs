//! What every part of the session layer shares.

use std::sync::Arc;

use sluice_backends::llm::LlmProvider;
use sluice_backends::log::EventLog;
use sluice_backends::store::SessionStore;

use crate::SessionConfig;
use crate::cache::Cache;
use crate::cluster::Cluster;
use crate::files::Files;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::tools::Tools;

/// The backends, settings and cluster every session actor and the registry
/// use, shared.
pub struct SessionDeps {
    /// Durable sessions and messages.
    pub store: Arc<dyn SessionStore>,
    /// The resumable event log.
    pub log: Arc<dyn EventLog>,
    /// The LLM provider.
    pub llm: Arc<dyn LlmProvider>,
    /// Metric handles.
    pub metrics: Metrics,
    /// Settings.
    pub config: SessionConfig,
    /// Ownership and the bus: in-process for one replica, Redis for several.
    pub cluster: Arc<Cluster>,
    /// Uploaded files, for the attachments of generations.
    pub files: Files,
    /// The agent's tools.
    pub tools: Tools,
    /// Answers to deterministic requests.
    pub cache: Cache,
    /// What each user may use.
    pub limits: Limits,
}
