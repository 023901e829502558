//! Settings of the session layer, filled from the binary's configuration.

use std::time::Duration;

/// Settings that shape sessions, generations and subscribers.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This replica's name, shown in `hello.replica`.
    pub replica_id: String,
    /// The model used when a session or request names none.
    pub default_model: String,
    /// A session actor with no subscriber and no generation stops after this.
    pub idle_timeout: Duration,
    /// How often a streaming assistant message is checkpointed to the store.
    pub checkpoint_interval: Duration,
    /// Events kept per session for resume.
    pub event_retention: usize,
    /// Queue length at which a subscriber's `token` events start coalescing.
    pub subscriber_soft_limit: usize,
    /// Queue length (or [`Self::subscriber_max_bytes`]) at which a subscriber
    /// is disconnected; it resumes from its cursor.
    pub subscriber_hard_limit: usize,
    /// Bytes queued for one subscriber before it is disconnected.
    pub subscriber_max_bytes: usize,
    /// Messages of history sent to the model with each generation.
    pub history_messages: usize,
    /// How long graceful shutdown waits for running generations.
    pub shutdown_grace: Duration,
    /// Temperature sent with session generations (the provider's default if unset).
    pub temperature: Option<f64>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            replica_id: "sluice".into(),
            default_model: crate::llm::demo::DEMO_MODEL.into(),
            idle_timeout: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(1),
            event_retention: 10_000,
            subscriber_soft_limit: 64,
            subscriber_hard_limit: 4096,
            subscriber_max_bytes: 4 * 1024 * 1024,
            history_messages: 40,
            shutdown_grace: Duration::from_secs(30),
            temperature: None,
        }
    }
}
