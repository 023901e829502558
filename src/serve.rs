//! `sluice` (serve): builds the backends from the configuration and runs
//! the server until a signal stops it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_actors::cluster::Cluster;
use sluice_actors::deps::SessionDeps;
use sluice_actors::supervisor::Health;
use sluice_actors::{Metrics, Relay, Sessions};
use sluice_backends::lease::redis::RedisLeases;
use sluice_backends::llm::LlmProvider;
use sluice_backends::llm::demo::DemoProvider;
use sluice_backends::llm::openai::{OpenAiConfig, OpenAiProvider};
use sluice_backends::log::EventLog;
use sluice_backends::log::memory::MemoryEventLog;
use sluice_backends::log::redis::RedisEventLog;
use sluice_backends::probe::{EventLogProbe, LlmProbe, Probe, RedisProbe, StoreProbe};
use sluice_backends::redis::RedisConnections;
use sluice_backends::store::SessionStore;
use sluice_backends::store::postgres::PostgresSessionStore;
use sluice_backends::store::redb::RedbSessionStore;
use sluice_web::ServerOptions;
use sluice_web::auth::Auth;
use sluice_web::state::AppState;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::config::Config;

/// Connections in the PostgreSQL pool.
const POSTGRES_POOL_SIZE: usize = 16;

/// Extra attempts at a provider request before its first chunk.
const PROVIDER_RETRIES: u32 = 2;

/// The first of those attempts waits this long; each later one twice as long.
const PROVIDER_BACKOFF: Duration = Duration::from_millis(250);

/// Runs the server on its own actix system until SIGTERM/SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    actix_rt::System::new().block_on(serve(config))
}

fn llm_provider(config: &Config) -> anyhow::Result<Arc<dyn LlmProvider>> {
    Ok(match &config.llm_base_url {
        Some(base_url) => {
            tracing::info!(
                base_url = %crate::config::redact_url(base_url),
                model = %config.llm_model(),
                continuation = ?config.continuation,
                "LLM provider: OpenAI-compatible"
            );
            Arc::new(OpenAiProvider::new(OpenAiConfig {
                base_url: base_url.clone(),
                api_key: config.llm_api_key.clone(),
                default_model: config.llm_model(),
                request_timeout: config.request_timeout,
                connect_timeout: config.request_timeout.min(Duration::from_secs(10)),
                max_retries: PROVIDER_RETRIES,
                retry_backoff: PROVIDER_BACKOFF,
            })?)
        }
        None => {
            tracing::warn!(
                "no SLUICE_LLM_BASE_URL: answering with the built-in DEMO model (its replies say so); \
                 set SLUICE_LLM_BASE_URL to use a real provider"
            );
            Arc::new(DemoProvider::new(config.demo_token_delay))
        }
    })
}

async fn session_store(config: &Config) -> anyhow::Result<Arc<dyn SessionStore>> {
    Ok(match &config.postgres_url {
        Some(url) => {
            let store = PostgresSessionStore::connect(url.expose(), POSTGRES_POOL_SIZE)
                .await
                .context("cannot open the PostgreSQL session store")?;
            tracing::info!("session store: PostgreSQL");
            Arc::new(store)
        }
        None => {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!(
                    "cannot create SLUICE_DATA_DIR {}",
                    config.data_dir.display()
                )
            })?;
            let path = config.data_dir.join("sluice.redb");
            let store = RedbSessionStore::open(&path)?;
            tracing::info!(path = %path.display(), "session store: redb (embedded)");
            Arc::new(store)
        }
    })
}

/// The event log and the cluster: Redis for both with `SLUICE_REDIS_URL`
/// (adding its probe to `probes`), else this process's own.
async fn log_and_cluster(
    config: &Config,
    replica_id: &str,
    probes: &mut Vec<Arc<dyn Probe>>,
) -> anyhow::Result<(Arc<dyn EventLog>, Arc<Cluster>)> {
    let Some(url) = &config.redis_url else {
        let log = MemoryEventLog::new(config.event_retention, config.event_memory_bytes);
        let cluster = Cluster::local(replica_id.to_owned(), config.lease_ttl);
        return Ok((Arc::new(log), Arc::new(cluster)));
    };
    let redis = RedisConnections::connect(url.expose())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis: {e}"))?;
    if config.postgres_url.is_none() {
        tracing::warn!(
            "Redis without SLUICE_POSTGRES_URL: the session store is this replica's own \
             redb file, so run only one replica"
        );
    }
    tracing::info!(lease = ?config.lease_ttl, "event log, bus and leases: Redis");
    let cluster = Arc::new(Cluster::shared(
        replica_id.to_owned(),
        Arc::new(redis.bus()),
        Arc::new(RedisLeases::new(redis.client())),
        config.lease_ttl,
    ));
    // After each reconnection, find out whether Redis lost its leases.
    let mut reconnected = redis.reconnected();
    let watcher = cluster.clone();
    tokio::spawn(async move {
        while !matches!(reconnected.recv().await, Err(RecvError::Closed)) {
            watcher.lease_store_reconnected().await;
        }
    });
    probes.push(Arc::new(RedisProbe(redis.clone())));
    let log = RedisEventLog::new(redis.client(), config.event_retention);
    Ok((Arc::new(log), cluster))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    let store = session_store(&config).await?;

    // Bound first, so that the default replica id names the real port.
    // Every listener is bound before anything starts, so an address in use
    // stops the start at once and cleanly.
    let listener = sluice_web::server::bind(config.addr)
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let metrics_listener = config
        .metrics_addr
        .map(|addr| {
            sluice_web::server::bind(addr)
                .with_context(|| format!("cannot listen on {addr} for metrics"))
        })
        .transpose()?;
    let auth = Auth::new(config.jwt_secret.as_ref().map(|s| s.expose()));

    let bound = listener.local_addr()?;
    let replica_id = config
        .replica_id
        .clone()
        .unwrap_or_else(|| format!("{}:{}", crate::config::hostname(), bound.port()));
    let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(StoreProbe(store.clone()))];
    let (log, cluster) = log_and_cluster(&config, &replica_id, &mut probes).await?;
    let llm = llm_provider(&config)?;
    probes.push(Arc::new(EventLogProbe(log.clone())));
    probes.push(Arc::new(LlmProbe(llm.clone())));
    let health = Health::start(probes, &metrics);
    let relay = Relay::new(llm.clone(), config.llm_model(), metrics.clone());
    let deps = SessionDeps {
        store,
        log,
        llm,
        metrics: metrics.clone(),
        config: config.session(replica_id.clone()),
        cluster,
    };
    let arbiters = (0..config.workers())
        .map(|_| actix_rt::Arbiter::new().handle())
        .collect();
    let sessions = Sessions::start(deps, arbiters)
        .await
        .map_err(|e| anyhow::anyhow!("cannot join the cluster: {e}"))?;

    let metrics_bound = metrics_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %bound,
        metrics_addr = %metrics_bound,
        replica = %replica_id,
        auth = if auth.is_local() { "local" } else { "jwt" },
        "listening"
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState {
        sessions,
        relay,
        health,
        metrics,
        registry,
        shutdown: shutdown_rx,
    };
    sluice_web::run(
        state,
        auth,
        listener,
        ServerOptions {
            workers: config.workers(),
            metrics_listener,
            shutdown_grace: config.shutdown_grace,
        },
        shutdown_tx,
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
