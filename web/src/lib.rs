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
//! - [`body`]: the JSON body extractor with its size limit.

pub mod auth;
pub mod body;
pub mod context;
pub mod error;
pub mod routes;
pub mod server;
pub mod state;

pub use server::{ServerOptions, run};
pub use state::AppState;
