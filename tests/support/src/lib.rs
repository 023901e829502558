//! Test support for Sluice's integration tests and benchmarks.
//!
//! - [`fake_upstream`]: an OpenAI-compatible server speaking the real
//!   streaming wire format, scripted through the model name.
//! - [`process`]: starts the real `sluice` binary on port 0 and stops it.
//! - [`chroma`]: a throwaway Chroma server (PyPI `chromadb`).
//! - [`client`]: WebSocket and SSE clients that read Sluice frames.
//! - [`files`]: uploads, and PDF fixtures.
//! - [`harness`]: a fake upstream plus a `sluice` pointed at it.
//! - [`mcp`]: a throwaway MCP server (PyPI `mcp`, the official Python SDK).
//! - [`nginx`]: nginx in front of Sluice, from the repository template.
//! - [`postgres`]: a throwaway PostgreSQL server.
//! - [`redis`]: a throwaway Redis server.
//! - [`rest`]: REST calls shared by the harnesses and tests.
//! - [`s3`]: a throwaway S3 server (the workspace's `s3-server`).
//! - [`cluster`]: Redis, PostgreSQL, N replicas and nginx, as in production.
//! - [`tcp_proxy`]: a TCP proxy a test can cut, for network partitions.

pub mod chroma;
pub mod client;
pub mod cluster;
pub mod fake_upstream;
pub mod files;
pub mod harness;
pub mod mcp;
pub mod nginx;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod rest;
pub mod s3;
pub mod tcp_proxy;

/// How many free ports a throwaway server tries: a port picked free can be
/// taken by another test's server before this one binds it.
pub const PORT_ATTEMPTS: usize = 5;

/// A loopback port that was free a moment ago, for a server that cannot
/// bind port 0 and report the port itself. The caller retries with another
/// if the server finds it taken.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// How long [`wait_until`] waits before the test fails (a hang guard, not
/// a timing check).
pub const WAIT_GUARD: std::time::Duration = std::time::Duration::from_secs(60);

/// Asks `check` every 50 ms until it has an answer, and returns it: the way
/// a test waits for a state the server reaches by itself. Panics, naming
/// `what`, past [`WAIT_GUARD`].
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + WAIT_GUARD;
    loop {
        if let Some(answer) = check().await {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {WAIT_GUARD:?} for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

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
