//! A throwaway S3 server for tests: the workspace's `s3-server` (s3s-fs:
//! real SigV4, objects as files) on a loopback port, over a temp dir,
//! stopped by pid on drop. Build it first (`cargo build --workspace
//! --bins`, as `scripts/test` does).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The access key every test server takes.
pub const ACCESS_KEY: &str = "sluice-test";
/// Its secret key.
pub const SECRET_KEY: &str = "sluice-test-secret-key";

/// A running throwaway S3 server.
pub struct TestS3 {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The directory of the running test's or benchmark's own build profile
/// (`target/debug`), where the workspace's binaries are.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("a directory").to_owned();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir
}

fn binary() -> PathBuf {
    let path = profile_dir().join("s3-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn spawn(root: &std::path::Path, port: u16) -> (Child, u16) {
    let mut child = Command::new(binary())
        .arg(root)
        .args([ACCESS_KEY, SECRET_KEY, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start s3-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("s3-server's address");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("s3-server did not start: {line:?}"));
    (child, port)
}

impl TestS3 {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (child, port) = spawn(dir.path(), 0);
        Self {
            child: Some(child),
            port,
            dir,
        }
    }

    /// The endpoint URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment that points Sluice at it, with `bucket`.
    pub fn env(&self, bucket: &str) -> Vec<(String, String)> {
        vec![
            ("SLUICE_S3_ENDPOINT".into(), self.url()),
            ("SLUICE_S3_BUCKET".into(), bucket.into()),
            ("SLUICE_S3_ACCESS_KEY".into(), ACCESS_KEY.into()),
            ("SLUICE_S3_SECRET_KEY".into(), SECRET_KEY.into()),
            ("SLUICE_S3_REGION".into(), "us-east-1".into()),
        ]
    }

    /// Where the objects of `bucket` are, as files.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.dir.path().join(bucket)
    }

    /// Kills the server; its objects stay on disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same objects.
    pub fn resume(&mut self) {
        self.stop();
        let (child, _) = spawn(self.dir.path(), self.port);
        self.child = Some(child);
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.stop();
    }
}
