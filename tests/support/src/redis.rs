//! A throwaway Redis for tests: one `redis-server`, or a Redis Cluster of
//! several masters, on free loopback ports with no persistence, in a temp
//! dir, stopped by pid on drop.
//!
//! `redis-server` cannot listen on port 0 and report the port, so a free
//! one is picked first; if another process takes it before the server
//! binds it (tests run in parallel), the server exits and another port is
//! tried.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::PORT_ATTEMPTS;

/// A running throwaway Redis: one server, or a cluster.
pub struct TestRedis {
    nodes: Vec<Node>,
    cluster: bool,
    _dir: tempfile::TempDir,
}

/// One `redis-server`.
struct Node {
    child: Child,
    port: u16,
    /// The cluster bus port (a cluster node only).
    bus_port: Option<u16>,
    dir: PathBuf,
}

impl TestRedis {
    /// Starts one server; panics if it does not answer `PING`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::start(dir.path().to_owned(), false);
        Self {
            nodes: vec![node],
            cluster: false,
            _dir: dir,
        }
    }

    /// Starts a Redis Cluster of `masters` masters (no replicas), every
    /// hash slot assigned, and waits until every node reports it healthy.
    pub fn start_cluster(masters: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<Node> = (0..masters)
            .map(|i| {
                let node_dir = dir.path().join(format!("node{i}"));
                std::fs::create_dir(&node_dir).expect("node dir");
                Node::start(node_dir, true)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let redis = Self {
            nodes,
            cluster: true,
            _dir: dir,
        };
        redis.wait_cluster_ok();
        redis
    }

    /// Waits until every node says `cluster_state:ok`.
    fn wait_cluster_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            while !cli(node.port, &["CLUSTER", "INFO"])
                .is_some_and(|info| info.contains("cluster_state:ok"))
            {
                assert!(Instant::now() < deadline, "the Redis Cluster did not form");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Kills every server (their data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    /// Starts them again, empty, on the same ports (a cluster's nodes
    /// rejoin it from their nodes.conf, with the same slots).
    pub fn resume(&mut self) {
        for node in &mut self.nodes {
            node.child = spawn(node.port, node.bus_port, &node.dir);
            assert!(
                wait_up(&mut node.child, node.port, &node.dir),
                "redis did not start again on port {}",
                node.port
            );
        }
        if self.cluster {
            self.wait_cluster_ok();
        }
    }

    /// Kills the servers and starts them again, empty, on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    /// A connection URL: `redis://` for one server, `redis-cluster://`
    /// naming every node for a cluster.
    pub fn url(&self) -> String {
        let first = format!("127.0.0.1:{}", self.nodes[0].port);
        if !self.cluster {
            return format!("redis://{first}");
        }
        let others: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node=127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{first}?{}", others.join("&"))
    }

    /// Where it listens (a cluster: its first node).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[0].port))
    }

    /// Runs a command with `redis-cli` (on a cluster, following redirects
    /// from the first node); its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        if self.cluster {
            let mut with_redirects = vec!["-c"];
            with_redirects.extend_from_slice(args);
            cli(self.nodes[0].port, &with_redirects)
        } else {
            cli(self.nodes[0].port, args)
        }
    }

    /// Empties every node; true if each said OK.
    pub fn flushall(&self) -> bool {
        self.cli_each(&["FLUSHALL"])
            .iter()
            .all(|out| out.as_deref() == Some("OK"))
    }

    /// The hash slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().ok())
            .expect("CLUSTER KEYSLOT")
    }

    /// The index of the node that owns `slot`.
    pub fn owner_of(&self, slot: u16) -> usize {
        let owner_id = cli(self.nodes[0].port, &["CLUSTER", "NODES"])
            .expect("CLUSTER NODES")
            .lines()
            .find(|line| {
                line.split(' ').skip(8).any(|range| {
                    let (start, end) = range.split_once('-').unwrap_or((range, range));
                    matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                })
            })
            .and_then(|line| line.split(' ').next().map(str::to_owned))
            .expect("an owner of the slot");
        (0..self.nodes.len())
            .find(|&i| self.node_id(i) == owner_id)
            .expect("the owner is one of ours")
    }

    fn node_id(&self, i: usize) -> String {
        cli(self.nodes[i].port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID")
    }

    /// Moves hash slot `slot`, with its keys, to node `to`, as resharding
    /// does (IMPORTING, MIGRATING, MIGRATE, then SETSLOT NODE everywhere).
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.owner_of(slot);
        if from == to {
            return;
        }
        let slot = slot.to_string();
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let (from_port, to_port) = (self.nodes[from].port, self.nodes[to].port);
        let ok = |out: Option<String>| assert_eq!(out.as_deref(), Some("OK"));
        ok(cli(
            to_port,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id],
        ));
        ok(cli(
            from_port,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id],
        ));
        loop {
            let keys =
                cli(from_port, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).unwrap_or_default();
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to_port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(&keys);
            ok(cli(from_port, &migrate));
        }
        for node in &self.nodes {
            ok(cli(
                node.port,
                &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id],
            ));
        }
    }

    /// Runs a command on every node; each node's output.
    pub fn cli_each(&self, args: &[&str]) -> Vec<Option<String>> {
        self.nodes.iter().map(|n| cli(n.port, args)).collect()
    }
}

impl Node {
    /// Starts a server keeping its files in `dir`, on free ports.
    fn start(dir: PathBuf, cluster: bool) -> Self {
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::free_port();
            let bus_port = cluster.then(crate::free_port);
            let mut child = spawn(port, bus_port, &dir);
            if wait_up(&mut child, port, &dir) {
                return Self {
                    child,
                    port,
                    bus_port,
                    dir,
                };
            }
            let _ = child.wait();
        }
        panic!("redis did not start on any of {PORT_ATTEMPTS} ports");
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
fn wait_up(child: &mut Child, port: u16, dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        let answered = cli(port, &["CONFIG", "GET", "dir"]);
        if let Some(out) = answered {
            let ours = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
            if out.lines().any(|l| Path::new(l.trim()) == ours) {
                return true;
            }
        }
        assert!(Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `redis-server` on `port`; a cluster node with `bus_port`.
fn spawn(port: u16, bus_port: Option<u16>, dir: &Path) -> Child {
    let mut command = Command::new("redis-server");
    command
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
        .arg(dir);
    if let Some(bus_port) = bus_port {
        command.args([
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus_port.to_string(),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ]);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (install redis-server)")
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
