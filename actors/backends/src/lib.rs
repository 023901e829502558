//! Sluice's backends: each role a trait whose doc states its contract, with
//! an embedded implementation (what `cargo run` uses with no configuration)
//! and the production one beside it, and one conformance suite that holds
//! both to the contract.
//!
//! | role | trait | embedded | production |
//! | --- | --- | --- | --- |
//! | sessions and messages | [`store::SessionStore`] | [`store::redb`] | [`store::postgres`] |
//! | resumable event log | [`log::EventLog`] | [`log::memory`] | [`log::redis`] |
//! | messages between replicas | [`bus::Bus`] | [`bus::memory`] | [`bus::redis`] |
//! | session ownership | [`lease::Leases`] | [`lease::memory`] | [`lease::redis`] |
//! | per-user rates and slots | [`limits::Limiter`] | [`limits::memory`] | [`limits::redis`] |
//! | the LLM provider | [`llm::LlmProvider`] | [`llm::demo`] | [`llm::openai`] |
//! | text to vectors | [`embed::Embedder`] | [`embed::local`] | [`embed::provider`] |
//! | uploaded files' metadata | [`files::FileStore`] | [`store::redb`] | [`store::postgres`] |
//! | file chunks for retrieval | [`vectors::VectorIndex`] | [`vectors::redb`] | [`vectors::chroma`] |
//! | uploaded files' bytes | [`objects::ObjectStore`] | [`objects::fs`] | [`objects::s3`] |
//!
//! - [`redis`]: a replica's Redis connections, shared by the log, the bus
//!   and the leases.
//! - [`probe`]: how each backend is checked for `/ready` and the metrics.
//! - [`error`]: [`BackendError`], with a kind that says whether retrying helps.
//! - [`ids`] and [`secret`]: ids and timestamps; secrets kept out of logs.
//!
//! This crate knows nothing of actors or HTTP.

pub mod bus;
pub mod cache;
pub mod crypto;
pub mod embed;
pub mod error;
pub mod files;
pub mod ids;
pub mod lease;
pub mod limits;
pub mod llm;
pub mod log;
pub mod objects;
pub mod probe;
pub mod redis;
pub mod responses;
pub mod secret;
pub mod store;
pub mod vectors;

/// The page cache of each embedded (redb) database, in bytes. redb's own
/// default is 1 GiB, which a busy replica fills: its memory then grows
/// with what it has stored.
pub const REDB_CACHE_BYTES: usize = 64 * 1024 * 1024;

pub use error::{Backend, BackendError, ErrorKind};
