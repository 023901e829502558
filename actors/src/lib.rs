//! Sluice's live core: one actor per conversation, the registry that finds
//! them, and the backends they stand on.
//!
//! - [`session`]: [`SessionActor`](session::SessionActor), the single writer of a
//!   session's events: it allocates `seq`, runs generations, persists messages.
//! - [`registry`]: [`SessionRegistry`](registry::SessionRegistry), session id →
//!   actor; starts actors on demand from the store and retires idle ones.
//! - [`outbox`]: the per-session task that appends events to the log, then
//!   fans them out to subscribers, in order.
//! - [`subscriber`]: bounded per-subscriber queues that coalesce `token`
//!   deltas for slow consumers and drop them past a hard limit.
//! - [`handle`]: [`Sessions`](handle::Sessions), the async API the web layer
//!   calls, and [`Subscription`](handle::Subscription), the resume logic of
//!   PROTOCOL.md §4 shared by WebSocket and SSE.
//! - Backends, each a trait with its implementations beside it:
//!   [`log`] (event log), [`store`] (sessions and messages), [`llm`] (providers),
//!   [`lease`] (which replica owns a session), [`bus`] (messages between
//!   replicas). [`redis`] holds a replica's Redis connections.
//! - [`cluster`]: session ownership across replicas, and requests forwarded
//!   to a session's owner.
//! - [`supervisor`]: one actor per backend that watches it for `/ready` and
//!   the metrics.
//! - [`metrics`]: the Prometheus handles, registered on an injected registry.
//!
//! This crate knows nothing of HTTP: the web crate maps [`SessionError`] to
//! statuses and close codes.

pub mod bus;
pub mod cluster;
pub mod config;
pub mod error;
pub mod handle;
pub mod ids;
pub mod lease;
pub mod llm;
pub mod log;
pub mod metrics;
pub mod outbox;
pub mod redis;
pub mod registry;
pub mod secret;
pub mod session;
pub mod store;
pub mod subscriber;
pub mod supervisor;

pub use config::SessionConfig;
pub use error::SessionError;
pub use handle::{Outgoing, Sessions, Subscription};
pub use metrics::Metrics;
