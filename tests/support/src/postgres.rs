//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir and
//! `postgres` on a free loopback port, run as the `postgres` user when the
//! tests run as root (initdb refuses root), stopped by pid on drop. If the
//! port picked is taken before the server binds it, another is tried.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running throwaway PostgreSQL.
pub struct TestPostgres {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    ids: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return dir.into();
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .pop()
        .filter(|dir| dir.join("initdb").exists())
        .expect("PostgreSQL binaries: install postgresql or set PG_BIN")
}

/// The postgres user's uid and gid, when running as root.
fn postgres_ids() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn command(program: &Path, ids: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = ids {
        command.uid(uid).gid(gid);
    }
    command
}

impl TestPostgres {
    /// Initialises and starts a server; panics if it does not come up.
    pub fn start() -> Self {
        let bin = bin_dir();
        let ids = postgres_ids();
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        }
        let data = dir.path().join("data");
        let status = command(&bin.join("initdb"), ids)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let mut server = Self {
            child: None,
            port: 0,
            bin,
            ids,
            dir,
        };
        for _ in 0..crate::PORT_ATTEMPTS {
            server.port = crate::free_port();
            if server.try_resume() {
                return server;
            }
        }
        panic!(
            "postgres did not start on any of {} ports",
            crate::PORT_ATTEMPTS
        );
    }

    /// Starts the server again after [`Self::stop`], on the same port and data.
    pub fn resume(&mut self) {
        assert!(
            self.try_resume(),
            "postgres did not start again on port {}",
            self.port
        );
    }

    /// Starts the server on its port; false if it exited (the port was taken).
    fn try_resume(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let data = self.dir.path().join("data");
        let child = command(&self.bin.join("postgres"), self.ids)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-k",
                self.dir.path().to_str().unwrap(),
            ])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Ready when this server says so in its own data directory's lock
        // file (another test's server may answer on a port taken from us).
        let lock = data.join("postmaster.pid");
        loop {
            let ready = std::fs::read_to_string(&lock).is_ok_and(|text| {
                text.lines()
                    .nth(7)
                    .is_some_and(|status| status.trim() == "ready")
            });
            if ready {
                return true;
            }
            if let Some(child) = &mut self.child
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's fast shutdown.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// A connection URL for the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn psql_command(&self) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
        ]);
        command
    }

    /// Runs `sql` with `psql`; its output (unaligned, tuples only), trimmed.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .psql_command()
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Opens a transaction and runs `sql` in it (say, `SELECT ... FOR
    /// UPDATE` to hold a row's lock); the transaction stays open until the
    /// returned handle commits it or drops.
    pub fn hold(&self, sql: &str) -> HeldTransaction {
        let mut child = self
            .psql_command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run psql");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "BEGIN;\n{sql};\n\\echo held").unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != "held" {
            line.clear();
            let read = stdout.read_line(&mut line).expect("read psql");
            assert!(read > 0, "psql ended before the transaction held");
        }
        HeldTransaction {
            child,
            stdin: Some(stdin),
        }
    }
}

/// A transaction `psql` keeps open (see [`TestPostgres::hold`]).
pub struct HeldTransaction {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl HeldTransaction {
    /// Commits the transaction, letting go of what it held.
    pub fn commit(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "COMMIT;");
        }
        let _ = self.child.wait();
    }
}

impl Drop for HeldTransaction {
    fn drop(&mut self) {
        // Closing psql's input ends it, and the transaction with it.
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
