//! Runs the real `sluice` binary for a test: port 0, a temp data dir, JSON
//! logs on stdout (read to learn the bound address), stopped on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a start may take before the test fails (a hang guard, not a
/// performance check).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `sluice`.
pub struct Sluice {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its second `/metrics` listener listens, if it has one.
    pub metrics_addr: Option<SocketAddr>,
    /// Every log line so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// How to start one.
pub struct SluiceBuilder {
    bin: PathBuf,
    data_dir: PathBuf,
    env: HashMap<String, String>,
    unset: Vec<String>,
}

impl SluiceBuilder {
    /// `bin` is `env!("CARGO_BIN_EXE_sluice")`; `data_dir` is kept by the caller.
    pub fn new(bin: impl Into<PathBuf>, data_dir: &Path) -> Self {
        Self {
            bin: bin.into(),
            data_dir: data_dir.to_owned(),
            env: HashMap::new(),
            unset: Vec::new(),
        }
    }

    /// Leaves out one of the variables every test server gets
    /// (`SLUICE_LOG_FORMAT`, `SLUICE_LOG_LEVEL`, `SLUICE_WORKERS`), so the
    /// configuration's own default, or an alias, decides.
    pub fn unset(mut self, key: &str) -> Self {
        self.unset.push(key.to_owned());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.set_env(key, value);
        self
    }

    /// Sets an environment variable of a builder kept for restarts.
    pub fn set_env(&mut self, key: &str, value: impl Into<String>) {
        self.env.insert(key.to_owned(), value.into());
    }

    /// Starts the process and waits for its `listening` line.
    pub fn start(&self) -> Sluice {
        let mut command = Command::new(&self.bin);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SLUICE_ADDR", "127.0.0.1:0")
            .env("SLUICE_DATA_DIR", &self.data_dir)
            .env("SLUICE_LOG_FORMAT", "json")
            .env("SLUICE_LOG_LEVEL", "info")
            .env("SLUICE_WORKERS", "2")
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for key in &self.unset {
            command.env_remove(key);
        }
        let mut child = command.spawn().expect("spawn sluice");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for (reader, tx) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                tx.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), tx),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match rx.recv_timeout(remaining) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sluice did not start: {:#?}", logs.lock().unwrap());
                }
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if value["message"] == "listening" {
                let addr = value["addr"]
                    .as_str()
                    .expect("addr field")
                    .parse()
                    .expect("socket address");
                let metrics_addr = value["metrics_addr"].as_str().and_then(|a| a.parse().ok());
                return Sluice {
                    child,
                    addr,
                    metrics_addr,
                    logs,
                };
            }
        }
    }
}

impl Sluice {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://addr{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_term();
        self.child.wait().expect("wait for sluice")
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for sluice")
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sluice logs ---");
            for line in self.logs.lock().unwrap().iter() {
                eprintln!("{line}");
            }
        }
        self.kill();
    }
}
