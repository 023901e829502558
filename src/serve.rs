//! `sluice` (serve): builds the backends from the configuration and runs
//! the server until a signal stops it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_actors::cache::{Cache, Scope};
use sluice_actors::cluster::Cluster;
use sluice_actors::deps::SessionDeps;
use sluice_actors::files::extract::Extractor;
use sluice_actors::files::{FileBackends, FilesConfig};
use sluice_actors::limits::provider::BoundedProvider;
use sluice_actors::supervisor::Health;
use sluice_actors::tools::mcp::{self, McpServer};
use sluice_actors::{Files, Limits, Metrics, Relay, Sessions, Tools};
use sluice_backends::cache::ResponseCache;
use sluice_backends::crypto::Keyring;
use sluice_backends::crypto::objects::SealedObjects;
use sluice_backends::crypto::store::SealedStore;
use sluice_backends::crypto::vectors::SealedVectors;
use sluice_backends::embed::Embedder;
use sluice_backends::embed::local::LocalEmbedder;
use sluice_backends::embed::provider::ProviderEmbedder;
use sluice_backends::files::FileStore;
use sluice_backends::lease::redis::RedisLeases;
use sluice_backends::limits::memory::MemoryLimiter;
use sluice_backends::limits::redis::RedisLimiter;
use sluice_backends::llm::LlmProvider;
use sluice_backends::llm::demo::DemoProvider;
use sluice_backends::llm::openai::{OpenAiConfig, OpenAiProvider};
use sluice_backends::log::EventLog;
use sluice_backends::log::memory::MemoryEventLog;
use sluice_backends::log::redis::RedisEventLog;
use sluice_backends::objects::ObjectStore;
use sluice_backends::objects::fs::FsObjectStore;
use sluice_backends::objects::s3::{S3Config, S3ObjectStore};
use sluice_backends::probe::{
    EmbedderProbe, EventLogProbe, LlmProbe, ObjectsProbe, Probe, RedisProbe, StoreProbe,
    VectorsProbe,
};
use sluice_backends::redis::RedisConnections;
use sluice_backends::responses::ResponseStore;
use sluice_backends::store::SessionStore;
use sluice_backends::store::postgres::PostgresSessionStore;
use sluice_backends::store::redb::RedbSessionStore;
use sluice_backends::vectors::VectorIndex;
use sluice_backends::vectors::chroma::ChromaIndex;
use sluice_backends::vectors::redb::RedbVectorIndex;
use sluice_web::ServerOptions;
use sluice_web::auth::{Auth, JwtOptions};
use sluice_web::browser::BrowserPolicy;
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

/// The agent's tools: the built-ins, and a task per MCP server that keeps
/// its tools listed.
fn tools(config: &Config, metrics: &Metrics) -> anyhow::Result<Tools> {
    if let Some((name, _)) = config
        .mcp_tokens
        .iter()
        .find(|(name, _)| !config.mcp_servers.iter().any(|(n, _)| n == name))
    {
        anyhow::bail!(
            "SLUICE_MCP_TOKENS has a token for {name:?}, which SLUICE_MCP_SERVERS does not name"
        );
    }
    let servers: Vec<McpServer> = config
        .mcp_servers
        .iter()
        .map(|(name, url)| McpServer {
            name: name.clone(),
            url: url.clone(),
            token: config
                .mcp_tokens
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, token)| token.clone()),
        })
        .collect();
    let tools = Tools::new(
        Tools::builtins(),
        servers.iter().map(McpServer::prefix).collect(),
        config.default_tools.clone(),
        config.tool_timeout,
        metrics.clone(),
    );
    if !servers.is_empty() {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the MCP servers' HTTP client")?;
        for server in &servers {
            tracing::info!(server = %server.name, url = %crate::config::redact_url(&server.url), "MCP server");
        }
        mcp::start(&tools, servers, client, metrics.clone());
    }
    Ok(tools)
}

/// Runs the server on its own actix system until SIGTERM/SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    actix_rt::System::new().block_on(serve(config))
}

/// How often `sluice_ready` is brought up to date.
const READY_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps `sluice_ready` equal to what `/ready` would answer: checked every
/// [`READY_INTERVAL`], and 0 from the moment shutdown begins.
fn follow_readiness(health: Health, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    actix_rt::spawn(async move {
        loop {
            let draining = *shutdown.borrow();
            let ready = !draining && health.report().await.ready;
            metrics.ready.set(i64::from(ready));
            tokio::select! {
                () = tokio::time::sleep(READY_INTERVAL) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        metrics.ready.set(0);
                        return;
                    }
                }
            }
        }
    });
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

/// The session store, and the same database as the store of files'
/// metadata and of the Responses API's responses.
async fn session_store(
    config: &Config,
) -> anyhow::Result<(
    Arc<dyn SessionStore>,
    Arc<dyn FileStore>,
    Arc<dyn ResponseStore>,
)> {
    Ok(match &config.postgres_url {
        Some(url) => {
            let store = PostgresSessionStore::connect(url.expose(), POSTGRES_POOL_SIZE)
                .await
                .context("cannot open the PostgreSQL session store")?;
            tracing::info!("session store: PostgreSQL");
            (
                Arc::new(store.clone()),
                Arc::new(store.clone()),
                Arc::new(store),
            )
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
            (
                Arc::new(store.clone()),
                Arc::new(store.clone()),
                Arc::new(store),
            )
        }
    })
}

/// Where files live: S3 and Chroma when configured, else under
/// `SLUICE_DATA_DIR`; the embedder; and their probes, added to `probes`.
/// S3 unreachable at start is not fatal (chat does not need it): the bucket
/// is made once S3 answers, and `/ready` says it is down meanwhile.
fn file_backends(
    config: &Config,
    llm: &Arc<dyn LlmProvider>,
    store: Arc<dyn FileStore>,
    probes: &mut Vec<Arc<dyn Probe>>,
) -> anyhow::Result<FileBackends> {
    let shared = config.redis_url.is_some();
    let embedder: Arc<dyn Embedder> = match &config.embedding_model {
        Some(model) => {
            tracing::info!(%model, "embeddings: the provider's /embeddings");
            Arc::new(ProviderEmbedder::new(llm.clone(), model.clone()))
        }
        None => {
            tracing::warn!(
                "embeddings: the LOCAL hashing embedder (no model; it matches words, not \
                 meaning); set SLUICE_EMBEDDING_MODEL to use the provider's embeddings"
            );
            Arc::new(LocalEmbedder)
        }
    };
    let objects: Arc<dyn ObjectStore> = match &config.s3_endpoint {
        Some(endpoint) => {
            let s3 = S3Config {
                endpoint: endpoint.clone(),
                bucket: config.s3_bucket.clone(),
                region: config.s3_region.clone(),
                access_key: config
                    .s3_access_key
                    .as_ref()
                    .map(|k| k.expose().to_owned())
                    .unwrap_or_default(),
                secret_key: config
                    .s3_secret_key
                    .as_ref()
                    .map(|k| k.expose().to_owned())
                    .unwrap_or_default(),
            };
            let store = S3ObjectStore::new(&s3);
            let region = s3.region.clone();
            let ensure = store.clone();
            tokio::spawn(async move {
                loop {
                    match ensure.ensure_bucket(&region).await {
                        Ok(()) => break,
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(error = %e, "object store: S3 does not answer yet; uploads wait for it");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "object store: S3 refused Sluice (check the bucket and the keys)");
                            break;
                        }
                    }
                }
            });
            tracing::info!(endpoint = %crate::config::redact_url(endpoint), bucket = %s3.bucket, "object store: S3");
            Arc::new(store)
        }
        None => {
            if shared {
                tracing::warn!(
                    "Redis without SLUICE_S3_ENDPOINT: uploads stay on this replica's disk, so run only one replica"
                );
            }
            tracing::info!(dir = %config.data_dir.join("objects").display(), "object store: directory (embedded)");
            Arc::new(FsObjectStore::open(&config.data_dir)?)
        }
    };
    let vectors: Arc<dyn VectorIndex> = match config.chroma_url() {
        Some(url) => {
            tracing::info!(url = %crate::config::redact_url(&url), "vector index: Chroma");
            Arc::new(ChromaIndex::new(&url, embedder.space())?)
        }
        None => {
            if shared {
                tracing::warn!(
                    "Redis without SLUICE_CHROMA_URL: the vector index is this replica's own file, so run only one replica"
                );
            }
            let path = config.data_dir.join("vectors.redb");
            tracing::info!(path = %path.display(), "vector index: redb (embedded)");
            Arc::new(RedbVectorIndex::open(&path, embedder.space())?)
        }
    };
    probes.push(Arc::new(ObjectsProbe(objects.clone())));
    probes.push(Arc::new(VectorsProbe(vectors.clone())));
    probes.push(Arc::new(EmbedderProbe(embedder.clone())));
    Ok(FileBackends {
        store,
        objects,
        vectors,
        embedder,
    })
}

/// The event log and the cluster: Redis for both with `SLUICE_REDIS_URL`
/// (adding its probe to `probes`), else this process's own.
async fn log_and_cluster(
    config: &Config,
    replica_id: &str,
    probes: &mut Vec<Arc<dyn Probe>>,
) -> anyhow::Result<(Arc<dyn EventLog>, Arc<Cluster>, Option<RedisConnections>)> {
    let Some(url) = &config.redis_url else {
        let log = MemoryEventLog::new(config.event_retention, config.event_memory_bytes);
        let cluster = Cluster::local(replica_id.to_owned(), config.lease_ttl);
        return Ok((Arc::new(log), Arc::new(cluster), None));
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
    Ok((Arc::new(log), cluster, Some(redis)))
}

/// The session store's setting that holds the encryption key check.
const KEY_CHECK: &str = "encryption_check";
/// What the check holds, sealed, and what it is sealed for.
const KEY_CHECK_TEXT: &str = "sluice: the encryption key opens this";
const KEY_CHECK_CONTEXT: &str = "setting\0encryption_check";

/// Stops the start if the stored data was sealed with a key this
/// configuration cannot open, or is sealed and no key is set: a wrong key
/// must fail here, loudly, and never later as garbage. The check is a value
/// sealed with the current key in the session store (which every replica
/// shares, and which must answer at start): set if missing (the first
/// replica to set it wins a race, and the others check against it), and
/// sealed again with a new current key once the old one is among the older
/// keys.
async fn check_encryption(
    store: &Arc<dyn SessionStore>,
    keys: Option<&Keyring>,
) -> anyhow::Result<()> {
    let stored = store
        .setting(KEY_CHECK)
        .await
        .context("cannot read the encryption key check from the session store")?;
    let sealed_with = |value: &str| {
        value
            .strip_prefix("sle1:")
            .and_then(|rest| rest.split(':').next())
            .map(str::to_owned)
    };
    let Some(keys) = keys else {
        if let Some(id) = stored.as_deref().and_then(sealed_with) {
            anyhow::bail!(
                "the stored data is encrypted (key {id}): set SLUICE_ENCRYPTION_KEY (ENCRYPTION_KEY) to its key"
            );
        }
        return Ok(());
    };
    let opens = |value: &str| {
        keys.open_text(value.to_owned(), KEY_CHECK_CONTEXT)
            .is_ok_and(|text| text == KEY_CHECK_TEXT)
    };
    let refused = |id: &str| {
        anyhow::anyhow!(
            "SLUICE_ENCRYPTION_KEY does not open the stored data (sealed with key {id}); set that key, \
             or list it in SLUICE_ENCRYPTION_OLD_KEYS"
        )
    };
    let Some(current) = keys.current_id() else {
        // Only older keys (the first step of a rotation): they must open.
        return match stored
            .as_deref()
            .and_then(|v| sealed_with(v).map(|id| (v, id)))
        {
            Some((value, id)) if !opens(value) => Err(refused(&id)),
            _ => Ok(()),
        };
    };
    let sealed = keys.seal_text(KEY_CHECK_TEXT, KEY_CHECK_CONTEXT);
    match stored
        .as_deref()
        .and_then(|v| sealed_with(v).map(|id| (v, id)))
    {
        Some((value, id)) => {
            if !opens(value) {
                return Err(refused(&id));
            }
            if id != current {
                store
                    .set_setting(KEY_CHECK, &sealed)
                    .await
                    .context("cannot store the encryption key check")?;
            }
        }
        None => {
            let held = store
                .init_setting(KEY_CHECK, &sealed)
                .await
                .context("cannot store the encryption key check")?;
            if !opens(&held) {
                return Err(refused(sealed_with(&held).as_deref().unwrap_or("?")));
            }
        }
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    let (store, file_store, response_store) = session_store(&config).await?;
    let keys = config.keyring().map(Arc::new);
    check_encryption(&store, keys.as_deref()).await?;
    let store: Arc<dyn SessionStore> = match &keys {
        Some(keys) => Arc::new(SealedStore::new(store, keys.clone())),
        None => store,
    };

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
    let auth = match &config.jwt_secret {
        None => Auth::Local,
        Some(secret) => Auth::jwt(JwtOptions {
            secret: secret.expose().to_owned(),
            leeway_seconds: config.jwt_leeway_seconds,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            api_keys: config
                .api_keys
                .iter()
                .map(|(user, key)| (user.clone(), key.expose().to_owned()))
                .collect(),
        }),
    };

    let bound = listener.local_addr()?;
    let replica_id = config
        .replica_id
        .clone()
        .unwrap_or_else(|| format!("{}:{}", crate::config::hostname(), bound.port()));
    crate::telemetry::set_replica(&replica_id);
    let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(StoreProbe(store.clone()))];
    let (log, cluster, redis) = log_and_cluster(&config, &replica_id, &mut probes).await?;
    let cache = Cache::new(
        config.cache.then(|| {
            ResponseCache::new(config.cache_memory_bytes, config.cache_ttl, redis.as_ref())
        }),
        if config.cache_global {
            Scope::Global
        } else {
            Scope::User
        },
        metrics.clone(),
    );
    let limits = Limits::new(
        match &redis {
            Some(redis) => Arc::new(RedisLimiter::new(redis.client())),
            None => Arc::new(MemoryLimiter::new()),
        },
        config.limits,
        metrics.clone(),
    );
    let llm: Arc<dyn LlmProvider> = Arc::new(BoundedProvider::new(
        llm_provider(&config)?,
        config.max_concurrent_requests,
        config.provider_queue,
        metrics.clone(),
    ));
    probes.push(Arc::new(EventLogProbe(log.clone())));
    probes.push(Arc::new(LlmProbe(llm.clone())));
    let mut file_backends = file_backends(&config, &llm, file_store, &mut probes)?;
    if let Some(keys) = &keys {
        match keys.current_id() {
            Some(key) => tracing::info!(key, "message text and uploads are sealed at rest"),
            None => tracing::warn!(
                "only older encryption keys: sealed data is read, new data is stored in the clear"
            ),
        }
        file_backends.objects = Arc::new(SealedObjects::new(file_backends.objects, keys.clone()));
        file_backends.vectors = Arc::new(SealedVectors::new(file_backends.vectors, keys.clone()));
    }
    let files = Files::start(
        file_backends,
        FilesConfig {
            max_upload_bytes: config.max_upload_bytes,
            max_user_bytes: config.limits.file_bytes,
            spool_dir: config.data_dir.join("spool").join(&replica_id),
            replica_id: replica_id.clone(),
            // PDFs are parsed by this binary in a child process it limits.
            extractor: match std::env::current_exe() {
                Ok(program) => Extractor::Process(program),
                Err(e) => anyhow::bail!("cannot find this program to parse PDFs with: {e}"),
            },
        },
        metrics.clone(),
    )
    .context("cannot make the upload spool under SLUICE_DATA_DIR")?;
    let health = Health::start(probes, &metrics);
    let relay = Relay::new(
        llm.clone(),
        config.llm_model(),
        cache.clone(),
        metrics.clone(),
    )
    .with_embedding_model(config.embedding_model.clone())
    .with_responses(response_store)
    .with_limits(limits.clone());
    let tools = tools(&config, &metrics)?;
    let deps = SessionDeps {
        store,
        log,
        llm,
        metrics: metrics.clone(),
        config: config.session(replica_id.clone()),
        cluster,
        files: files.clone(),
        tools,
        cache,
        limits: limits.clone(),
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
        auth = if auth.is_local() { "local" } else { "jwt" },
        "listening"
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    follow_readiness(health.clone(), metrics.clone(), shutdown_rx.clone());
    let state = AppState {
        sessions,
        files,
        relay,
        limits,
        browser: BrowserPolicy::new(config.cors_origins.clone()),
        ops: config.ops,
        health,
        metrics,
        registry: config.metrics_enabled.then_some(registry),
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
