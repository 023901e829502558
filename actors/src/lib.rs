//! Sluice's live core: one actor per conversation, the registry that finds
//! them, the cluster that spreads them over replicas, and the relay that
//! serves the OpenAI-compatible API. The backends they stand on are in
//! `sluice-backends` (`actors/backends`).
//!
//! Follow a token from the provider to a client's socket:
//! - [`session`]: [`SessionActor`](session::SessionActor), the single writer
//!   of a session's events. Its generation task turns the provider's chunks
//!   into `token` events, each with the next `seq`.
//! - [`outbox`]: the session's task that appends events to the log,
//!   publishes them on the bus, then hands them to local subscribers.
//! - [`subscriber`]: one client's bounded queue, which coalesces `token`
//!   deltas for a slow consumer and drops it past a hard limit.
//! - [`subscription`]: [`Subscription`], what a WebSocket or SSE connection
//!   reads: `hello`, the replay from its cursor (PROTOCOL.md §4), then the
//!   queue.
//!
//! Around them:
//! - [`sessions`]: [`Sessions`], the async API the web layer calls.
//! - [`registry`]: [`SessionRegistry`](registry::SessionRegistry), session
//!   id → actor; loads one session at most once at a time.
//! - [`cluster`]: [`Cluster`](cluster::Cluster), session ownership (leases)
//!   and requests forwarded to a session's owner; one replica is a cluster
//!   of one on in-process backends.
//! - [`remote_pump`]: feeds a subscriber on a replica that does not own the
//!   session from the bus.
//! - [`relay`]: [`Relay`], the OpenAI-compatible API's way to the provider.
//! - [`cache`]: [`Cache`](cache::Cache), answers to deterministic requests
//!   reused, for sessions and the relay alike.
//! - [`files`]: [`Files`], uploads, their indexing, and the attachments a
//!   generation's prompt draws on.
//! - [`tools`]: [`Tools`], what the agent may call: built-ins and MCP
//!   servers' tools.
//! - [`supervisor`]: one actor per backend that probes it, and
//!   [`Health`](supervisor::Health), what `/ready` asks.
//! - [`deps`], [`config`], [`error`], [`metrics`]: what every part shares.
//!
//! This crate knows nothing of HTTP: the web crate maps [`SessionError`] to
//! statuses and close codes.

pub mod cache;
pub mod cluster;
pub mod config;
pub mod deps;
pub mod error;
pub mod files;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod registry;
pub mod relay;
pub mod remote_pump;
pub mod responses;
pub mod session;
pub mod sessions;
pub mod subscriber;
pub mod subscription;
pub mod supervisor;
pub mod tools;

pub use config::{Continuation, SessionConfig};
pub use error::SessionError;
pub use files::Files;
pub use limits::{LimitSettings, Limits};
pub use metrics::Metrics;
pub use relay::Relay;
pub use sessions::Sessions;
pub use subscription::{Outgoing, Subscription};
pub use tools::Tools;

/// Ids and timestamps, as the web layer needs them.
pub use sluice_backends::ids;
/// Provider errors, as the relay reports them.
pub use sluice_backends::llm::{LlmError, Refusal};
