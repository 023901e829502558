//! A throwaway Redis server for tests: `redis-server` on a free loopback
//! port with no persistence, in a temp dir, stopped by pid on drop.
//!
//! `redis-server` cannot listen on port 0 and report the port, so a free
//! one is picked first; if another process takes it before the server
//! binds it (tests run in parallel), the server exits and another port is
//! tried.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::PORT_ATTEMPTS;

/// A running throwaway Redis.
pub struct TestRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts a server; panics if it does not answer `PING`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::free_port();
            let mut child = spawn(port, dir.path());
            if wait_up(&mut child, port, dir.path()) {
                return Self { child, port, dir };
            }
            let _ = child.wait();
        }
        panic!("redis did not start on any of {PORT_ATTEMPTS} ports");
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, empty, on the same port.
    pub fn resume(&mut self) {
        self.child = spawn(self.port, self.dir.path());
        assert!(
            wait_up(&mut self.child, self.port, self.dir.path()),
            "redis did not start again on port {}",
            self.port
        );
    }

    /// Kills the server and starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    /// A connection URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs a command with `redis-cli`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, args)
    }
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits until the server on `port` answers and is this one (its `dir` is
/// ours, not another test's server that took the port); false if it exited.
fn wait_up(child: &mut Child, port: u16, dir: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        let answered = cli(port, &["CONFIG", "GET", "dir"]);
        if let Some(out) = answered {
            let ours = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
            if out.lines().any(|l| std::path::Path::new(l.trim()) == ours) {
                return true;
            }
        }
        assert!(Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (install redis-server)")
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
