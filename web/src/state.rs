//! What every handler can reach.

use std::sync::Arc;

use actix::Addr;
use sluice_actors::Sessions;
use sluice_actors::supervisor::Supervisor;
use tokio::sync::watch;

use crate::auth::Auth;

/// Shared application state. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    /// The session layer.
    pub sessions: Sessions,
    /// How requests are authenticated.
    pub auth: Arc<Auth>,
    /// The registry `/metrics` renders.
    pub registry: prometheus::Registry,
    /// One per backend; `/ready` asks them.
    pub supervisors: Vec<Addr<Supervisor>>,
    /// Flips to true when shutdown begins: streams close (WS with 1001).
    pub shutdown: watch::Receiver<bool>,
}
