//! What every handler can reach.

use sluice_actors::supervisor::Health;
use sluice_actors::{Files, Limits, Metrics, Relay, Sessions};
use tokio::sync::watch;

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
    /// The registry `/metrics` renders.
    pub registry: prometheus::Registry,
    /// Flips to true when shutdown begins: streams close (WS with 1001).
    pub shutdown: watch::Receiver<bool>,
}
