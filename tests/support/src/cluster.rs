//! The production topology on loopback: a throwaway Redis (or Redis
//! Cluster) and PostgreSQL,
//! N `sluice` replicas sharing them (replica `i` is named `r{i}`; each binds
//! port 0 and reports its address), the fake provider, and nginx in front.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::fake_upstream::{FakeOptions, FakeUpstream};
use crate::nginx::TestNginx;
use crate::postgres::TestPostgres;
use crate::process::{Sluice, SluiceBuilder};
use crate::redis::TestRedis;
use crate::tcp_proxy::TcpProxy;

/// Lease length the tests run with, in seconds: takeovers wait for it.
pub const LEASE_SECONDS: &str = "2";

/// How replicas differ from the default topology.
#[derive(Default)]
pub struct ClusterOptions<'a> {
    /// Environment added to every replica's.
    pub env: &'a [(&'a str, &'a str)],
    /// Replicas that reach Redis through a [`TcpProxy`] the test can cut.
    pub proxied_redis: &'a [usize],
    /// Replicas with a fake provider of their own, differing by these options.
    pub own_upstream: &'a [(usize, FakeOptions)],
    /// A Redis Cluster of three masters instead of one Redis.
    pub redis_cluster: bool,
}

/// A running cluster. Everything stops on drop.
pub struct TestCluster {
    /// Replicas by index; `None` while stopped.
    pub replicas: Vec<Option<Sluice>>,
    /// nginx in front of every replica.
    pub nginx: TestNginx,
    /// The fake provider.
    pub upstream: FakeUpstream,
    /// The shared Redis.
    pub redis: TestRedis,
    /// The shared PostgreSQL.
    pub postgres: TestPostgres,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// Each replica's proxy to Redis, for those in
    /// [`ClusterOptions::proxied_redis`].
    pub redis_proxies: Vec<Option<TcpProxy>>,
    /// Each replica's own fake provider, for those in
    /// [`ClusterOptions::own_upstream`].
    pub own_upstreams: Vec<Option<FakeUpstream>>,
    addrs: Vec<SocketAddr>,
    _data: Vec<tempfile::TempDir>,
}

impl TestCluster {
    /// Starts everything with `n` replicas; `env` is added to each replica's.
    pub fn start(bin: &str, n: usize, env: &[(&str, &str)]) -> Self {
        Self::start_with(
            bin,
            n,
            ClusterOptions {
                env,
                ..ClusterOptions::default()
            },
        )
    }

    /// Starts everything with `n` replicas, as `options` say.
    pub fn start_with(bin: &str, n: usize, options: ClusterOptions<'_>) -> Self {
        let redis = if options.redis_cluster {
            TestRedis::start_cluster(3)
        } else {
            TestRedis::start()
        };
        let postgres = TestPostgres::start();
        let upstream = FakeUpstream::start();
        let mut replicas = Vec::new();
        let mut redis_proxies = Vec::new();
        let mut own_upstreams = Vec::new();
        let mut data = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().expect("temp dir");
            let proxy = options
                .proxied_redis
                .contains(&i)
                .then(|| TcpProxy::start(redis.addr()));
            let redis_url = match &proxy {
                Some(proxy) => format!("redis://{}", proxy.addr()),
                None => redis.url(),
            };
            let own = options
                .own_upstream
                .iter()
                .find(|(replica, _)| *replica == i)
                .map(|(_, fake)| FakeUpstream::start_with(fake.clone()));
            let base_url = own.as_ref().unwrap_or(&upstream).base_url();
            let mut builder = SluiceBuilder::new(PathBuf::from(bin), dir.path())
                .env("SLUICE_REPLICA_ID", format!("r{i}"))
                .env("SLUICE_REDIS_URL", redis_url)
                .env("SLUICE_POSTGRES_URL", postgres.url())
                .env("SLUICE_LEASE_SECONDS", LEASE_SECONDS)
                .env("SLUICE_SHUTDOWN_GRACE_SECONDS", "20")
                .env("SLUICE_CONTINUATION", "prefill")
                .env("SLUICE_LLM_BASE_URL", base_url)
                .env("SLUICE_LLM_MODEL", "fake:tokens=20");
            for (k, v) in options.env {
                builder = builder.env(k, *v);
            }
            replicas.push(Some(builder.start()));
            redis_proxies.push(proxy);
            own_upstreams.push(own);
            data.push(dir);
        }
        let addrs: Vec<SocketAddr> = replicas.iter().flatten().map(|r| r.addr).collect();
        let nginx = TestNginx::start(&addrs);
        Self {
            replicas,
            nginx,
            upstream,
            redis,
            postgres,
            http: reqwest::Client::new(),
            redis_proxies,
            own_upstreams,
            addrs,
            _data: data,
        }
    }

    /// Where each replica listens.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// `http://replica{path}`.
    pub fn url(&self, replica: usize, path: &str) -> String {
        format!("http://{}{path}", self.addrs[replica])
    }

    /// `ws://replica{path}`.
    pub fn ws_url(&self, replica: usize, path: &str) -> String {
        format!("ws://{}{path}", self.addrs[replica])
    }

    /// The running replica `i`.
    pub fn replica(&mut self, i: usize) -> &mut Sluice {
        self.replicas[i].as_mut().expect("replica is running")
    }

    /// Kills replica `i` at once (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut sluice) = self.replicas[i].take() {
            sluice.kill();
        }
    }

    /// Which replica holds the session's lease, if any.
    pub fn owner(&self, session_id: &str) -> Option<usize> {
        let owner = self
            .redis
            .cli(&["GET", &format!("sluice:{{{session_id}}}:owner")])?;
        owner.strip_prefix('r')?.parse().ok()
    }

    /// Creates a session through replica `i`; its id.
    pub async fn create_session(&self, replica: usize, model: &str) -> String {
        crate::rest::create_session(&self.http, &self.url(replica, ""), model).await
    }

    /// `POST {base}/v1/sessions/{id}/{action}` with `body`.
    pub async fn post(&self, base: &str, id: &str, action: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{base}/v1/sessions/{id}/{action}"))
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    /// `GET {base}/v1/sessions/{id}` as JSON (asserting 200).
    pub async fn session(&self, base: &str, id: &str) -> Value {
        crate::rest::get_session(&self.http, base, id).await
    }

    /// Replica `i`'s metrics text.
    pub async fn metrics(&self, i: usize) -> String {
        self.http
            .get(self.url(i, "/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap()
    }
}
