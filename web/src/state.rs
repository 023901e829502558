//! What every handler can reach.

use sluice_actors::supervisor::Health;
use sluice_actors::{Files, Limits, Metrics, Relay, Sessions};
use tokio::sync::watch;

/// Who may read `/metrics` and `/ready` on the main listener (the metrics
/// listener, `SLUICE_METRICS_ADDR`, serves them to anyone who reaches it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpsAccess {
    /// Any caller with a valid token (in local mode, anyone).
    #[default]
    Token,
    /// Anyone.
    Open,
    /// Nobody: they are served on the metrics listener only.
    MetricsListener,
}

/// Shared application state. Cloning is cheap. (How requests are
/// authenticated is app data of its own: [`crate::auth::Auth`].)
#[derive(Clone)]
pub struct AppState {
    /// The session layer.
    pub sessions: Sessions,
    /// Uploaded files.
    pub files: Files,
    /// The OpenAI-compatible relay.
    pub relay: Relay,
    /// What each user may use.
    pub limits: Limits,
    /// The backends' supervisors, for `/ready`.
    pub health: Health,
    /// Metric handles.
    pub metrics: Metrics,
    /// The registry `/metrics` renders; `None` when metrics are off
    /// (`PROMETHEUS_ENABLED=false`).
    pub registry: Option<prometheus::Registry>,
    /// What browsers are allowed (CORS, WebSocket origins).
    pub browser: crate::browser::BrowserPolicy,
    /// Who may read `/metrics` and `/ready` here.
    pub ops: OpsAccess,
    /// Flips to true when shutdown begins: streams close (WS with 1001).
    pub shutdown: watch::Receiver<bool>,
}
