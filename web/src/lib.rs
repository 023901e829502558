//! Sluice's HTTP face: the only crate that knows HTTP, WebSocket and SSE.
//!
//! - [`server`]: builds the actix-web app, runs it, and shuts it down
//!   gracefully (WS closed with 1001, generations drained).
//! - [`routes`]: REST sessions (§3), WebSocket (§5), SSE (§6), the
//!   OpenAI-compatible API (§7), health/readiness/metrics (§9), the chat page.
//! - [`auth`]: the `User` extractor: JWT HS256 or local mode (§1).
//! - [`error`]: [`ApiError`](error::ApiError), the one place errors become
//!   statuses and the OpenAI-style envelope (§2).
//! - [`context`]: request ids, tracing spans and HTTP metrics for every request.
//! - [`local`]: local mode's guard against other web sites (`Host`, `Origin`).
//! - [`browser`]: CORS, WebSocket origins, security headers, and errors
//!   the framework answers put in the envelope.
//! - [`body`]: the JSON body extractor: media type, size and time limits.
//! - [`unread`]: a request body left unread closes its connection.
//!
//! It speaks to the session layer only through `sluice-actors`'
//! [`Sessions`](sluice_actors::Sessions), [`Relay`](sluice_actors::Relay)
//! and [`Health`](sluice_actors::supervisor::Health).

pub mod auth;
pub mod body;
pub mod browser;
pub mod context;
pub mod enveloped;
pub mod error;
pub mod local;
pub mod routes;
pub mod server;
pub mod state;
pub mod unread;

pub use server::{ServerOptions, run};
pub use state::AppState;
