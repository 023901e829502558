//! A throwaway MCP server for tests: `tests/mcp/server.py`, built on the
//! official Python SDK (PyPI `mcp`), serving streamable HTTP on a free
//! loopback port, stopped by pid on drop.
//!
//! The SDK lives in the venv that `scripts/test` makes at
//! `<target>/test-tools/venv` (with the OpenAI SDK); `SLUICE_TEST_PYTHON`
//! names another interpreter that has it. Every tool call is appended to a
//! file, so a test can count how often a tool ran.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::PORT_ATTEMPTS;

/// Longest wait for the server to accept connections.
const START_GUARD: Duration = Duration::from_secs(30);

/// A running MCP server.
pub struct TestMcp {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The interpreter whose site-packages hold `mcp`.
pub fn python() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_TEST_PYTHON") {
        return path.into();
    }
    let target = crate::s3::profile_dir()
        .parent()
        .expect("the profile dir is in the target dir")
        .to_owned();
    let path = target.join("test-tools/venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs the Python SDKs there",
        path.display()
    );
    path
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../mcp/server.py")
}

impl TestMcp {
    /// Starts a server; with `token`, it refuses requests without it.
    pub fn start(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::free_port();
            let log = std::fs::File::create(dir.path().join("mcp.log")).expect("log file");
            let mut command = Command::new(python());
            command
                .arg(script())
                .arg(port.to_string())
                .arg(dir.path().join("calls"));
            if let Some(token) = token {
                command.arg(token);
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("start the MCP server");
            let deadline = Instant::now() + START_GUARD;
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child: Some(child),
                        port,
                        dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("mcp.log")).unwrap_or_default();
        panic!("the MCP server did not start on any of {PORT_ATTEMPTS} ports:\n{log}");
    }

    /// Its streamable-HTTP endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Each tool call so far, as `name key`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TestMcp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
