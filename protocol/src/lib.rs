//! The Sluice wire contract (PROTOCOL.md v1) as Rust types.
//!
//! This crate is pure: no I/O, no actix, no async. Everything that crosses the
//! wire is defined here once, so the web layer, the actors and the tests agree.
//!
//! - [`error`]: error codes, their HTTP statuses, and the OpenAI-style envelope (§2).
//! - [`rest`]: session and message objects and REST bodies (§3).
//! - [`event`]: session events with their `seq`, and control frames (§4).
//! - [`client`]: WebSocket client frames and their parsing with size limits (§5).
//! - [`sse`]: Server-Sent Events encoding and `Last-Event-ID` parsing (§6).
//! - [`files`]: file objects (§8).
//! - [`openai`]: the pieces of the OpenAI chat-completions schema Sluice reads (§7).
//! - [`tools`]: tool calls: streamed fragments joined, and their limits.
//! - [`limits`]: the default size limits.

pub mod client;
pub mod error;
pub mod event;
pub mod files;
pub mod limits;
pub mod openai;
pub mod rest;
pub mod sse;
pub mod tools;

pub use client::{ClientFrame, parse_client_frame};
pub use error::{ErrorBody, ErrorCode, ProtocolError};
pub use event::{Control, Event, EventBody, FinishReason, Partial, Usage};
pub use files::{FileObject, FileStatus};
pub use rest::{Message, MessageStatus, Role, Session};
