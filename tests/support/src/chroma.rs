//! A throwaway Chroma server for tests: the PyPI wheel `chromadb==1.5.9`
//! (its server is Rust, run through the wheel's bindings, offline), on a
//! free loopback port over a temp dir, stopped by pid on drop.
//!
//! The wheel lives in a venv that `scripts/test` makes at
//! `<target>/test-tools/chroma` (`pip install --no-deps chromadb==1.5.9`);
//! `SLUICE_TEST_CHROMA_PYTHON` names another interpreter that has it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::PORT_ATTEMPTS;

/// Longest wait for a server to answer its heartbeat.
const START_GUARD: Duration = Duration::from_secs(60);

/// A running throwaway Chroma.
pub struct TestChroma {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The interpreter whose site-packages hold `chromadb`.
pub fn python() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_TEST_CHROMA_PYTHON") {
        return path.into();
    }
    let target = crate::s3::profile_dir()
        .parent()
        .expect("the profile dir is in the target dir")
        .to_owned();
    let path = target.join("test-tools/chroma/bin/python");
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs chromadb==1.5.9 there",
        path.display()
    );
    path
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    let log = std::fs::File::create(dir.join("chroma.log")).expect("log file");
    let script = format!(
        "import chromadb_rust_bindings as c; c.cli(['chroma', 'run', '--path', {:?}, \
         '--host', '127.0.0.1', '--port', '{port}'])",
        dir.join("data").display().to_string()
    );
    Command::new(python())
        .args(["-c", &script])
        .env("ANONYMIZED_TELEMETRY", "False")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start chroma")
}

/// Whether the server at `port` answers its heartbeat.
fn heartbeat(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "GET /api/v2/heartbeat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// Waits for the heartbeat; false if the process exits or time runs out.
fn wait_up(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + START_GUARD;
    while Instant::now() < deadline {
        if heartbeat(port) {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl TestChroma {
    /// Starts a server; panics if none answers.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::free_port();
            let mut child = spawn(dir.path(), port);
            if wait_up(&mut child, port) {
                return Self {
                    child: Some(child),
                    port,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("chroma.log")).unwrap_or_default();
        panic!("chroma did not start on any of {PORT_ATTEMPTS} ports:\n{log}");
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it; its data stays on disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same data.
    pub fn resume(&mut self) {
        self.stop();
        let mut child = spawn(self.dir.path(), self.port);
        assert!(wait_up(&mut child, self.port), "chroma did not start again");
        self.child = Some(child);
    }
}

impl Drop for TestChroma {
    fn drop(&mut self) {
        self.stop();
    }
}
