//! Test support for Sluice's integration tests and benchmarks.
//!
//! - [`fake_upstream`]: an OpenAI-compatible server speaking the real
//!   streaming wire format, scripted through the model name.
//! - [`process`]: starts the real `sluice` binary on port 0 and stops it.
//! - [`client`]: WebSocket and SSE clients that read Sluice frames.
//! - [`harness`]: a fake upstream plus a `sluice` pointed at it.
//! - [`nginx`]: nginx in front of Sluice, from the repository template.
//! - [`postgres`]: a throwaway PostgreSQL server.
//! - [`redis`]: a throwaway Redis server.
//! - [`rest`]: REST calls shared by the harnesses and tests.
//! - [`cluster`]: Redis, PostgreSQL, N replicas and nginx, as in production.

pub mod client;
pub mod cluster;
pub mod fake_upstream;
pub mod harness;
pub mod nginx;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod rest;

/// The text of token `i` from the fake upstream: its index in brackets, so a
/// test can check order and completeness of any stretch of text.
pub fn token_text(i: usize) -> String {
    format!("<{i}>")
}

/// Token `i` followed by `pad` dots (the fake's `pad=N` option).
pub fn padded_token_text(i: usize, pad: usize) -> String {
    let mut text = token_text(i);
    text.extend(std::iter::repeat_n('.', pad));
    text
}

/// The full text of tokens `0..n` with `pad` dots each.
pub fn expected_padded_text(n: usize, pad: usize) -> String {
    (0..n).map(|i| padded_token_text(i, pad)).collect()
}

/// The full text of tokens `0..n`.
pub fn expected_text(n: usize) -> String {
    (0..n).map(token_text).collect()
}
