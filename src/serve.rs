//! `sluice` (serve): builds the backends from the configuration and runs
//! the server until a signal stops it.

use std::sync::Arc;

use anyhow::Context;
use sluice_actors::cluster::Cluster;
use sluice_actors::lease::redis::RedisLeases;
use sluice_actors::llm::LlmProvider;
use sluice_actors::llm::demo::DemoProvider;
use sluice_actors::llm::openai::{OpenAiConfig, OpenAiProvider};
use sluice_actors::log::EventLog;
use sluice_actors::log::memory::MemoryEventLog;
use sluice_actors::log::redis::RedisEventLog;
use sluice_actors::redis::RedisConnections;
use sluice_actors::session::SessionDeps;
use sluice_actors::store::SessionStore;
use sluice_actors::store::postgres::PostgresSessionStore;
use sluice_actors::store::redb::RedbSessionStore;
use sluice_actors::supervisor::{Probe, RedisProbe, StoreProbe, Supervisor};
use sluice_actors::{Metrics, SessionConfig, Sessions};
use sluice_web::auth::Auth;
use sluice_web::{AppState, ServerOptions};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::config::Config;

/// Connections in the PostgreSQL pool.
const POSTGRES_POOL_SIZE: usize = 16;

/// Runs the server on its own actix system until SIGTERM/SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    actix_rt::System::new().block_on(serve(config))
}

fn llm_provider(config: &Config) -> anyhow::Result<Arc<dyn LlmProvider>> {
    Ok(match &config.llm_base_url {
        Some(base_url) => {
            tracing::info!(%base_url, model = %config.llm_model, "LLM provider: OpenAI-compatible");
            Arc::new(OpenAiProvider::new(OpenAiConfig {
                base_url: base_url.clone(),
                api_key: config.llm_api_key.clone(),
                default_model: config.llm_model.clone(),
                request_timeout: config.request_timeout,
                connect_timeout: config
                    .request_timeout
                    .min(std::time::Duration::from_secs(10)),
                max_retries: 2,
                retry_backoff: std::time::Duration::from_millis(250),
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

async fn serve(config: Config) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;

    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create SLUICE_DATA_DIR {}",
            config.data_dir.display()
        )
    })?;
    let store: Arc<dyn SessionStore> = match &config.postgres_url {
        Some(url) => {
            let store = PostgresSessionStore::connect(url.expose(), POSTGRES_POOL_SIZE)
                .await
                .context("cannot open the PostgreSQL session store")?;
            tracing::info!("session store: PostgreSQL");
            Arc::new(store)
        }
        None => {
            let path = config.data_dir.join("sluice.redb");
            let store = RedbSessionStore::open(&path)?;
            tracing::info!(path = %path.display(), "session store: redb (embedded)");
            Arc::new(store)
        }
    };

    // Bound first, so that the default replica id names the real port.
    let listener = sluice_web::server::bind(config.addr)
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let bound = listener.local_addr()?;
    let replica_id = config
        .replica_id
        .clone()
        .unwrap_or_else(|| format!("{}:{}", crate::config::hostname(), bound.port()));
    let session_config = SessionConfig {
        replica_id: replica_id.clone(),
        default_model: config.llm_model.clone(),
        idle_timeout: config.session_idle,
        event_retention: config.event_retention,
        subscriber_max_bytes: config.subscriber_max_bytes,
        shutdown_grace: config.shutdown_grace,
        temperature: config.llm_temperature,
        ..SessionConfig::default()
    };
    let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(StoreProbe(store.clone()))];
    let (log, cluster): (Arc<dyn EventLog>, _) = match &config.redis_url {
        Some(url) => {
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
            let cluster = Cluster::new(
                replica_id.clone(),
                Arc::new(redis.bus()),
                Arc::new(RedisLeases::new(redis.client())),
                config.lease_ttl,
            );
            let cluster = Arc::new(cluster);
            let mut reconnected = redis.reconnected();
            let watcher = cluster.clone();
            tokio::spawn(async move {
                while !matches!(reconnected.recv().await, Err(RecvError::Closed)) {
                    watcher.lease_store_reconnected().await;
                }
            });
            probes.push(Arc::new(RedisProbe(redis.clone())));
            (
                Arc::new(RedisEventLog::new(redis.client(), config.event_retention)),
                Some(cluster),
            )
        }
        None => (
            Arc::new(MemoryEventLog::new(
                config.event_retention,
                config.event_memory_bytes,
            )),
            None,
        ),
    };
    let supervisors = probes
        .into_iter()
        .map(|probe| Supervisor::spawn(probe, metrics.clone()))
        .collect();
    let deps = SessionDeps {
        store,
        log,
        llm: llm_provider(&config)?,
        metrics,
        config: session_config,
        cluster,
    };
    let arbiters = (0..config.workers)
        .map(|_| actix_rt::Arbiter::new().handle())
        .collect();
    let sessions = Sessions::start(deps, arbiters)
        .await
        .map_err(|e| anyhow::anyhow!("cannot join the cluster: {e}"))?;

    let metrics_listener = config
        .metrics_addr
        .map(|addr| {
            sluice_web::server::bind(addr)
                .with_context(|| format!("cannot listen on {addr} for metrics"))
        })
        .transpose()?;
    let auth = Auth::new(config.jwt_secret.as_ref().map(|s| s.expose()));
    tracing::info!(
        addr = %bound,
        metrics_addr = ?metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        replica = %replica_id,
        auth = if auth.is_local() { "local" } else { "jwt" },
        "listening"
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState {
        sessions,
        auth: Arc::new(auth),
        registry,
        supervisors,
        shutdown: shutdown_rx,
    };
    sluice_web::run(
        state,
        listener,
        ServerOptions {
            workers: config.workers,
            metrics_listener,
            shutdown_grace: config.shutdown_grace,
        },
        shutdown_tx,
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
