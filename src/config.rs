//! Configuration from the environment (12-factor).
//!
//! [`VARS`] is the one typed table of every variable: its names (the
//! canonical `SLUICE_` one, then the seed deployment's aliases), its
//! default, the parser that reads it into [`Config`], and its help. The
//! parser reads the defaults too, `--help` prints the table, and the session
//! layer's settings are filled from the parsed [`Config`], so no default is
//! written twice. Every value is checked against its range before anything
//! uses it; a bad one is a one-line error naming the variable.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use sluice_actors::{Continuation, LimitSettings, SessionConfig};
use sluice_backends::crypto;
use sluice_backends::llm::demo::DEMO_MODEL;
use sluice_backends::secret::Secret;
use sluice_web::browser::valid_origin;
use sluice_web::state::OpsAccess;

/// The default model when a provider is configured and names none.
const PROVIDER_DEFAULT_MODEL: &str = "gpt-4o-mini";

/// Volcengine Ark's OpenAI-compatible API: the provider of a configuration
/// that names its key (`ARK_API_KEY`) and no base URL, as the seed
/// deployment does.
const ARK_BASE_URL: &str = "https://ark.cn-beijing.volces.com/api/v3";

/// Longest replica id: it is part of Redis channel and key names.
const MAX_REPLICA_ID_BYTES: usize = 128;

/// One environment variable.
pub struct Var {
    /// The canonical name.
    pub name: &'static str,
    /// Other names accepted for it (the canonical one wins).
    pub aliases: &'static [&'static str],
    /// Its default.
    pub default: DefaultValue,
    /// What it does.
    pub help: &'static str,
    /// Reads a value into the configuration, or says what it accepts.
    parse: fn(&mut Config, &str) -> Result<(), String>,
}

/// A variable's default.
pub enum DefaultValue {
    /// This text, read by the variable's parser like any value.
    Value(&'static str),
    /// Unset: the feature is off, or an embedded backend serves.
    Unset,
    /// Worked out at start, as described.
    Computed(&'static str),
}

/// Every variable Sluice reads.
pub const VARS: &[Var] = &[
    Var {
        name: "SLUICE_ADDR",
        aliases: &[],
        default: DefaultValue::Value("127.0.0.1:8080"),
        help: "listen address (host:port)",
        parse: |c, v| {
            c.addr = address(v)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_DATA_DIR",
        aliases: &[],
        default: DefaultValue::Value("./data"),
        help: "directory of the embedded backends",
        parse: |c, v| {
            c.data_dir = PathBuf::from(v);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_LLM_BASE_URL",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "OpenAI-compatible provider base URL ending in /v1; unset: built-in demo model \
               (or, when ARK_API_KEY is set, Volcengine Ark's https://ark.cn-beijing.volces.com/api/v3)",
        parse: |c, v| {
            c.llm_base_url = Some(http_url(v)?);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_LLM_API_KEY",
        aliases: &["ARK_API_KEY"],
        default: DefaultValue::Unset,
        help: "provider API key (sent as Bearer)",
        parse: |c, v| {
            if v.chars().any(char::is_control) {
                return Err("must not hold control characters (a line break, say)".into());
            }
            c.llm_api_key = Some(Secret::new(v));
            Ok(())
        },
    },
    Var {
        name: "SLUICE_LLM_MODEL",
        aliases: &["OPENAI_MODEL"],
        default: DefaultValue::Computed("sluice-demo; gpt-4o-mini with SLUICE_LLM_BASE_URL"),
        help: "default model; a model named by a session or request passes through unchanged",
        parse: |c, v| {
            c.llm_model = Some(bounded_text(v, 200)?);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_LLM_TEMPERATURE",
        aliases: &["OPENAI_TEMPERATURE"],
        default: DefaultValue::Unset,
        help: "temperature sent with session generations (0 to 2)",
        parse: |c, v| {
            c.llm_temperature = Some(number(v, 0.0, 2.0)?);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_CONTINUATION",
        aliases: &[],
        default: DefaultValue::Value("off"),
        help: "how the provider continues an answer another replica started: prefill (Ollama), \
               prefix (Mistral, DeepSeek), vllm, or off (the answer ends `interrupted`)",
        parse: |c, v| {
            c.continuation = v.parse()?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_REQUEST_TIMEOUT_SECONDS",
        aliases: &["REQUEST_TIMEOUT"],
        default: DefaultValue::Value("60"),
        help: "time allowed for the provider's first token and between tokens (0.1 to 3600)",
        parse: |c, v| {
            c.request_timeout = seconds(v, 0.1, 3600.0)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_JWT_SECRET",
        aliases: &["JWT_SECRET"],
        default: DefaultValue::Unset,
        help: "HS256 secret of at least 16 bytes; unset: local mode (user `local`, loopback only)",
        parse: |c, v| {
            if v.len() < 16 {
                return Err("must be at least 16 bytes".into());
            }
            c.jwt_secret = Some(Secret::new(v));
            Ok(())
        },
    },
    Var {
        name: "SLUICE_JWT_LEEWAY_SECONDS",
        aliases: &[],
        default: DefaultValue::Value("30"),
        help: "clock skew allowed on a token's exp, nbf and iat, in seconds (0 to 300)",
        parse: |c, v| {
            c.jwt_leeway_seconds = integer(v, 0, 300)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_JWT_ISSUER",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "the iss every token must carry; unset: not checked",
        parse: |c, v| {
            c.jwt_issuer = Some(bounded_text(v, 512)?);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_JWT_AUDIENCE",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "the aud every token must carry; unset: not checked",
        parse: |c, v| {
            c.jwt_audience = Some(bounded_text(v, 512)?);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_API_KEYS",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "static API keys for the OpenAI-compatible routes (server-to-server), separated by \
               commas, each `user=key` (the key at least 32 bytes; needs SLUICE_JWT_SECRET)",
        parse: |c, v| {
            c.api_keys = api_keys(v)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_CORS_ORIGINS",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "origins whose web pages may call this server (CORS, and WebSockets), separated by \
               commas, each scheme://host[:port]; unset: none but the server's own",
        parse: |c, v| {
            let origins: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect();
            if origins.len() > 100 || !origins.iter().all(|o| valid_origin(o)) {
                return Err("must be at most 100 origins, each http(s)://host[:port]".into());
            }
            c.cors_origins = origins;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_OPS_ENDPOINTS",
        aliases: &[],
        default: DefaultValue::Value("token"),
        help: "who may read /metrics and /ready on the main listener: token (any valid token; \
               anyone in local mode), open, or metrics-listener (only on SLUICE_METRICS_ADDR, \
               which serves both to anyone who reaches it); /health is always open",
        parse: |c, v| {
            c.ops = match v {
                "token" => OpsAccess::Token,
                "open" => OpsAccess::Open,
                "metrics-listener" => OpsAccess::MetricsListener,
                _ => return Err("must be token, open or metrics-listener".into()),
            };
            Ok(())
        },
    },
    Var {
        name: "SLUICE_ENCRYPTION_KEY",
        aliases: &["ENCRYPTION_KEY"],
        default: DefaultValue::Unset,
        help: "seals message text and uploaded files at rest (XChaCha20-Poly1305): 32 bytes as 64 hex \
               digits or base64 (openssl rand -hex 32), or a passphrase of at least 32 bytes; \
               unset: stored in the clear",
        parse: |c, v| {
            crypto::parse_key(v)?;
            c.encryption_key = Some(Secret::new(v));
            Ok(())
        },
    },
    Var {
        name: "SLUICE_ENCRYPTION_OLD_KEYS",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "other encryption keys, separated by commas: they open what they sealed but seal \
               nothing (see docs/security.md for turning encryption on and rotating keys)",
        parse: |c, v| {
            let keys: Vec<&str> = v
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect();
            for key in &keys {
                crypto::parse_key(key)?;
            }
            c.encryption_old_keys = keys.into_iter().map(Secret::new).collect();
            Ok(())
        },
    },
    Var {
        name: "SLUICE_REPLICA_ID",
        aliases: &[],
        default: DefaultValue::Computed("<hostname>:<port>"),
        help: "this replica's name, shown in hello.replica (letters, digits, . _ : -)",
        parse: |c, v| {
            c.replica_id = Some(replica_id(v)?);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_METRICS_ADDR",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "second listener for /metrics (host:port)",
        parse: |c, v| {
            c.metrics_addr = Some(address(v)?);
            Ok(())
        },
    },
    Var {
        name: "METRICS_PORT",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "the seed deployment's name: /metrics on 0.0.0.0:PORT (SLUICE_METRICS_ADDR wins)",
        parse: |c, v| {
            c.metrics_port = Some(integer(v, 1, u16::MAX.into())? as u16);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_EVENT_RETENTION",
        aliases: &[],
        default: DefaultValue::Value("10000"),
        help: "events kept per session for resume (1 to 1000000)",
        parse: |c, v| {
            c.event_retention = integer(v, 1, 1_000_000)? as usize;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_EVENT_MEMORY_BYTES",
        aliases: &[],
        default: DefaultValue::Value("268435456"),
        help: "events the embedded log (no Redis) keeps in all, in bytes (1 MiB to 1 TiB); \
               the least recently active sessions' go first",
        parse: |c, v| {
            c.event_memory_bytes = integer(v, 1 << 20, 1 << 40)? as usize;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_SUBSCRIBER_MAX_BYTES",
        aliases: &[],
        default: DefaultValue::Value("4194304"),
        help: "bytes queued for one slow client before it is disconnected and resumes (1 KiB to 1 GiB)",
        parse: |c, v| {
            c.subscriber_max_bytes = integer(v, 1 << 10, 1 << 30)? as usize;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_SESSION_IDLE_SECONDS",
        aliases: &[],
        default: DefaultValue::Value("300"),
        help: "an idle session actor is evicted from memory after this (1 to 604800)",
        parse: |c, v| {
            c.session_idle = seconds(v, 1.0, 604_800.0)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_SHUTDOWN_GRACE_SECONDS",
        aliases: &[],
        default: DefaultValue::Value("30"),
        help: "on SIGTERM, running generations may finish within this (0 to 3600)",
        parse: |c, v| {
            c.shutdown_grace = seconds(v, 0.0, 3600.0)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_WORKERS",
        aliases: &[],
        default: DefaultValue::Computed("<cores>"),
        help: "HTTP worker threads, and as many for session actors (1 to 256)",
        parse: |c, v| {
            c.workers = Some(integer(v, 1, 256)? as usize);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_DEMO_TOKEN_DELAY_MS",
        aliases: &[],
        default: DefaultValue::Value("40"),
        help: "pause between the demo model's words (0 to 10000)",
        parse: |c, v| {
            c.demo_token_delay = Duration::from_millis(integer(v, 0, 10_000)?);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_LOG_LEVEL",
        aliases: &["LOG_LEVEL"],
        default: DefaultValue::Value("info"),
        help: "tracing filter: a level (trace, debug, info, warn, error, off; warning, critical \
               and fatal are read as warn, error, error), and target=level directives, separated \
               by commas (e.g. info,sluice=debug)",
        parse: |c, v| {
            c.log_level = log_filter(v)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_LOG_FORMAT",
        aliases: &[],
        default: DefaultValue::Value("pretty"),
        help: "log format: pretty or json",
        parse: |c, v| {
            c.log_json = match v.to_ascii_lowercase().as_str() {
                "json" => true,
                "pretty" => false,
                _ => return Err("must be pretty or json".into()),
            };
            Ok(())
        },
    },
    Var {
        name: "SLUICE_REDIS_URL",
        aliases: &["REDIS_URL"],
        default: DefaultValue::Unset,
        help: "Redis (redis://...) for the event log, the bus between replicas and session leases; \
               a Redis Cluster as redis-cluster://host:port?node=host2:port2&node=... \
               (rediss:// and rediss-cluster:// with TLS); unset: in-process, one replica",
        parse: |c, v| {
            const SCHEMES: [&str; 4] = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
            ];
            if !SCHEMES.iter().any(|s| v.starts_with(s)) {
                return Err(
                    "must be a redis://, rediss://, redis-cluster:// or rediss-cluster:// URL"
                        .into(),
                );
            }
            c.redis_url = Some(Secret::new(v));
            Ok(())
        },
    },
    Var {
        name: "SLUICE_LEASE_SECONDS",
        aliases: &[],
        default: DefaultValue::Value("10"),
        help: "with Redis: how long a replica's hold on a session outlives the replica (0.3 to 3600)",
        parse: |c, v| {
            c.lease_ttl = seconds(v, 0.3, 3600.0)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_POSTGRES_URL",
        aliases: &["POSTGRES_URL"],
        default: DefaultValue::Unset,
        help: "PostgreSQL session store (postgres://...); unset: the embedded redb store in SLUICE_DATA_DIR",
        parse: |c, v| {
            if !(v.starts_with("postgres://") || v.starts_with("postgresql://")) {
                return Err("must be a postgres:// or postgresql:// URL".into());
            }
            c.postgres_url = Some(Secret::new(v));
            Ok(())
        },
    },
    Var {
        name: "SLUICE_S3_ENDPOINT",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "S3/MinIO endpoint (http(s)://host:port) for uploaded files, path-style; \
               unset: files under SLUICE_DATA_DIR/objects",
        parse: |c, v| {
            c.s3_endpoint = Some(http_url(v)?);
            Ok(())
        },
    },
    Var {
        name: "SLUICE_S3_BUCKET",
        aliases: &[],
        default: DefaultValue::Value("sluice"),
        help: "S3 bucket, created at start if missing (3 to 63 of a-z 0-9 . -)",
        parse: |c, v| {
            let fine = (3..=63).contains(&v.len())
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !fine {
                return Err("must be 3 to 63 lower-case letters, digits, '.' or '-'".into());
            }
            c.s3_bucket = v.to_owned();
            Ok(())
        },
    },
    Var {
        name: "SLUICE_S3_ACCESS_KEY",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "S3 access key id (required with SLUICE_S3_ENDPOINT)",
        parse: |c, v| {
            c.s3_access_key = Some(Secret::new(bounded_text(v, 256)?));
            Ok(())
        },
    },
    Var {
        name: "SLUICE_S3_SECRET_KEY",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "S3 secret access key (required with SLUICE_S3_ENDPOINT)",
        parse: |c, v| {
            c.s3_secret_key = Some(Secret::new(bounded_text(v, 256)?));
            Ok(())
        },
    },
    Var {
        name: "SLUICE_S3_REGION",
        aliases: &[],
        default: DefaultValue::Value("us-east-1"),
        help: "S3 region",
        parse: |c, v| {
            c.s3_region = bounded_text(v, 64)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_CHROMA_URL",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "Chroma vector index (http(s)://host:port, API v2); the seed's CHROMA_HOST and \
               CHROMA_PORT are read too; unset: the embedded index in SLUICE_DATA_DIR",
        parse: |c, v| {
            c.chroma_url = Some(http_url(v)?);
            Ok(())
        },
    },
    Var {
        name: "CHROMA_HOST",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "the seed deployment's Chroma host (with CHROMA_PORT; SLUICE_CHROMA_URL wins)",
        parse: |c, v| {
            let host = bounded_text(v, 253)?;
            if host.contains(['/', '@', ' ']) {
                return Err("must be a host name or address".into());
            }
            c.chroma_host = Some(host);
            Ok(())
        },
    },
    Var {
        name: "CHROMA_PORT",
        aliases: &[],
        default: DefaultValue::Value("8000"),
        help: "the seed deployment's Chroma port",
        parse: |c, v| {
            c.chroma_port = integer(v, 1, u16::MAX.into())? as u16;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_EMBEDDING_MODEL",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "embedding model asked of the provider's /embeddings (needs SLUICE_LLM_BASE_URL); \
               unset or `local`: the built-in hashing embedder (no model; matches words, not meaning)",
        parse: |c, v| {
            c.embedding_model = (v != "local").then(|| bounded_text(v, 200)).transpose()?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_MAX_UPLOAD_BYTES",
        aliases: &[],
        default: DefaultValue::Value("104857600"),
        help: "largest upload, in bytes (1 to 10 GiB)",
        parse: |c, v| {
            c.max_upload_bytes = integer(v, 1, 10 << 30)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_CACHE",
        aliases: &[],
        default: DefaultValue::Value("on"),
        help: "reuse answers to deterministic requests (temperature 0, no tools): on or off",
        parse: |c, v| {
            c.cache = match v {
                "on" => true,
                "off" => false,
                _ => return Err("must be on or off".into()),
            };
            Ok(())
        },
    },
    Var {
        name: "SLUICE_CACHE_TTL_SECONDS",
        aliases: &["CACHE_TTL"],
        default: DefaultValue::Value("3600"),
        help: "how long a cached answer is reused (1 to 2592000)",
        parse: |c, v| {
            c.cache_ttl = seconds(v, 1.0, 2_592_000.0)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_CACHE_SCOPE",
        aliases: &[],
        default: DefaultValue::Value("user"),
        help: "whose cached answers a request may reuse: user (its own) or global (anyone's)",
        parse: |c, v| {
            c.cache_global = match v {
                "user" => false,
                "global" => true,
                _ => return Err("must be user or global".into()),
            };
            Ok(())
        },
    },
    Var {
        name: "SLUICE_CACHE_MEMORY_BYTES",
        aliases: &[],
        default: DefaultValue::Value("67108864"),
        help: "bytes of cached answers each replica keeps in memory, in front of Redis (1 MiB to 64 GiB)",
        parse: |c, v| {
            c.cache_memory_bytes = integer(v, 1 << 20, 64 << 30)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_AGENT_MAX_STEPS",
        aliases: &[],
        default: DefaultValue::Value("8"),
        help: "most provider requests in one answer of the agent; the last may not call tools (1 to 64)",
        parse: |c, v| {
            c.agent_max_steps = integer(v, 1, 64)? as u32;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_TOOL_TIMEOUT_SECONDS",
        aliases: &[],
        default: DefaultValue::Value("30"),
        help: "longest a tool call may run; the model is then told it timed out (0.1 to 3600)",
        parse: |c, v| {
            c.tool_timeout = seconds(v, 0.1, 3600.0)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_TOOLS",
        aliases: &[],
        default: DefaultValue::Value("all"),
        help: "the tools of a session that names none: `all`, `none`, or names separated by commas \
               (calculator, current_time, search_files; an MCP server's as <server>__<tool>)",
        parse: |c, v| {
            c.default_tools = tool_names(v)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_MCP_SERVERS",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "MCP servers whose tools the agent may call (streamable HTTP), separated by commas, \
               each `name=url` (the name prefixes its tools: <name>__<tool>) or just the url",
        parse: |c, v| {
            c.mcp_servers = mcp_servers(v)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_MCP_TOKENS",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "bearer tokens for MCP servers, separated by commas, each `name=token`",
        parse: |c, v| {
            c.mcp_tokens = mcp_tokens(v)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_RATE_LIMIT_RPM",
        aliases: &[],
        default: DefaultValue::Value("600"),
        help: "requests per minute per user, shared by the replicas (HTTP requests and WebSocket \
               commands; all at once at most); 0: no limit",
        parse: |c, v| {
            c.limits.requests_per_minute = integer(v, 0, 1_000_000_000)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_RATE_LIMIT_TPM",
        aliases: &[],
        default: DefaultValue::Value("200000"),
        help: "generated tokens per minute per user: a generation starts only while the user is \
               under it, and is charged what it generated; 0: no limit",
        parse: |c, v| {
            c.limits.tokens_per_minute = integer(v, 0, 1_000_000_000_000)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_MAX_GENERATIONS_PER_USER",
        aliases: &[],
        default: DefaultValue::Value("8"),
        help: "answers generated at once per user (sessions and the OpenAI-compatible API); 0: no limit",
        parse: |c, v| {
            c.limits.generations = integer(v, 0, 1_000_000)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_MAX_STREAMS_PER_USER",
        aliases: &[],
        default: DefaultValue::Value("32"),
        help: "WebSocket and SSE streams open at once per user; 0: no limit",
        parse: |c, v| {
            c.limits.streams = integer(v, 0, 1_000_000)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_MAX_SESSIONS_PER_USER",
        aliases: &[],
        default: DefaultValue::Value("10000"),
        help: "sessions a user may keep; 0: no limit",
        parse: |c, v| {
            c.limits.sessions = integer(v, 0, 1_000_000_000)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_MAX_FILE_BYTES_PER_USER",
        aliases: &[],
        default: DefaultValue::Value("1073741824"),
        help: "bytes of uploaded files a user may keep (inline images included); 0: no limit",
        parse: |c, v| {
            c.limits.file_bytes = integer(v, 0, 1 << 50)?;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_MAX_CONCURRENT_REQUESTS",
        aliases: &["MAX_CONCURRENT_REQUESTS"],
        default: DefaultValue::Value("256"),
        help: "provider requests at once on this replica; more wait up to \
               SLUICE_PROVIDER_QUEUE_SECONDS, then are answered 503 overloaded (1 to 100000)",
        parse: |c, v| {
            c.max_concurrent_requests = integer(v, 1, 100_000)? as usize;
            Ok(())
        },
    },
    Var {
        name: "SLUICE_PROVIDER_QUEUE_SECONDS",
        aliases: &[],
        default: DefaultValue::Value("10"),
        help: "longest a provider request waits for a place under SLUICE_MAX_CONCURRENT_REQUESTS \
               (0 to 600)",
        parse: |c, v| {
            c.provider_queue = seconds(v, 0.0, 600.0)?;
            Ok(())
        },
    },
    Var {
        name: "ENV",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "the seed deployment's name for SLUICE_ENV (which wins); a value that is not one \
               of its words is ignored with a warning (shells set ENV for their own use)",
        parse: |c, v| {
            match environment(v) {
                Ok(production) => c.production = production,
                Err(_) => c.warnings.push(format!(
                    "ENV={:?} is ignored: not production, staging, development or test \
                     (set SLUICE_ENV to choose)",
                    v.chars().take(40).collect::<String>()
                )),
            }
            Ok(())
        },
    },
    Var {
        name: "SLUICE_ENV",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "production (or staging): refuses to start without SLUICE_JWT_SECRET, and logs \
               JSON unless SLUICE_LOG_FORMAT says otherwise; development (the default) or test: \
               neither",
        parse: |c, v| {
            c.production = environment(v)?;
            Ok(())
        },
    },
    Var {
        name: "DEBUG",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "the seed deployment's switch: true means SLUICE_LOG_LEVEL=debug when no level is \
               set; false changes nothing; anything else (Node's DEBUG=*, say) is ignored with a \
               warning",
        parse: |c, v| {
            match boolean(v) {
                Ok(debug) => c.debug = debug,
                Err(_) => c.warnings.push(format!(
                    "DEBUG={:?} is ignored: not true or false (set LOG_LEVEL to choose what is logged)",
                    v.chars().take(40).collect::<String>()
                )),
            }
            Ok(())
        },
    },
    Var {
        name: "SLUICE_METRICS_ENABLED",
        aliases: &["PROMETHEUS_ENABLED"],
        default: DefaultValue::Value("true"),
        help: "false: /metrics answers 404 on every listener (metrics are still counted)",
        parse: |c, v| {
            c.metrics_enabled = boolean(v)?;
            Ok(())
        },
    },
    Var {
        name: "MAX_WORKERS",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "the seed deployment's name for SLUICE_WORKERS (SLUICE_WORKERS wins)",
        parse: |c, v| {
            let workers = integer(v, 1, 256)? as usize;
            match c.workers {
                None => c.workers = Some(workers),
                Some(set) if set != workers => c
                    .warnings
                    .push("MAX_WORKERS is ignored: SLUICE_WORKERS is set too and wins".into()),
                Some(_) => {}
            }
            Ok(())
        },
    },
    Var {
        name: "SECRET_KEY",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "ignored, with a warning: Sluice has no use for a general secret (SLUICE_JWT_SECRET \
               signs tokens, SLUICE_ENCRYPTION_KEY seals data at rest)",
        parse: |c, _| {
            c.warnings.push(
                "SECRET_KEY is ignored: Sluice has no use for a general secret; \
                 JWT_SECRET signs tokens and ENCRYPTION_KEY seals data at rest"
                    .into(),
            );
            Ok(())
        },
    },
    Var {
        name: "SENTRY_DSN",
        aliases: &[],
        default: DefaultValue::Unset,
        help: "ignored, with a warning: Sluice has no Sentry client; errors are JSON log lines \
               (SLUICE_LOG_FORMAT=json) for Loki or ELK, and metrics for Prometheus",
        parse: |c, _| {
            c.warnings.push(
                "SENTRY_DSN is ignored: Sluice has no Sentry client; errors are logged as JSON \
                 lines (SLUICE_LOG_FORMAT=json) for Loki or ELK, and counted in /metrics"
                    .into(),
            );
            Ok(())
        },
    },
];

/// The `--help` section listing every variable.
pub fn help_table() -> String {
    let mut out = String::from("Environment variables (aliases in brackets):\n");
    for v in VARS {
        let aliases = if v.aliases.is_empty() {
            String::new()
        } else {
            format!(" [{}]", v.aliases.join(", "))
        };
        let default = match v.default {
            DefaultValue::Value(text) | DefaultValue::Computed(text) => {
                format!(" (default: {text})")
            }
            DefaultValue::Unset => String::new(),
        };
        out.push_str(&format!(
            "  {}{aliases}\n      {}{default}\n",
            v.name, v.help
        ));
    }
    out
}

/// A variable whose value was refused.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    /// The name it was set under.
    name: &'static str,
    /// The value (at most 100 characters of it; never a secret's).
    value: String,
    /// What it accepts.
    reason: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// Embedded backends' directory.
    pub data_dir: PathBuf,
    /// Provider base URL; `None` means the demo model.
    pub llm_base_url: Option<String>,
    /// PostgreSQL URL; `None` means the embedded store.
    pub postgres_url: Option<Secret>,
    /// Redis URL; `None` means the in-process log and one replica.
    pub redis_url: Option<Secret>,
    /// How long a session lease lasts unrenewed.
    pub lease_ttl: Duration,
    /// Provider key.
    pub llm_api_key: Option<Secret>,
    /// Default model, if named (see [`Config::llm_model`]).
    llm_model: Option<String>,
    /// Temperature for session generations.
    pub llm_temperature: Option<f64>,
    /// How a taken-over generation is continued.
    pub continuation: Continuation,
    /// Provider first-token and inter-token timeout.
    pub request_timeout: Duration,
    /// JWT secret; `None` is local mode.
    pub jwt_secret: Option<Secret>,
    /// This replica's name; `None` means `<hostname>:<bound port>`.
    pub replica_id: Option<String>,
    /// Second listener for `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// `METRICS_PORT`, used when `metrics_addr` is not set.
    metrics_port: Option<u16>,
    /// Events kept per session.
    pub event_retention: usize,
    /// Bytes of events the embedded (in-memory) log keeps over all sessions.
    pub event_memory_bytes: usize,
    /// Bytes queued for one subscriber before it is disconnected.
    pub subscriber_max_bytes: usize,
    /// Idle session eviction.
    pub session_idle: Duration,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// HTTP workers, if named (see [`Config::workers`]).
    workers: Option<usize>,
    /// Demo model pace.
    pub demo_token_delay: Duration,
    /// S3 endpoint; `None` means the embedded object store.
    pub s3_endpoint: Option<String>,
    /// S3 bucket.
    pub s3_bucket: String,
    /// S3 access key id.
    pub s3_access_key: Option<Secret>,
    /// S3 secret key.
    pub s3_secret_key: Option<Secret>,
    /// S3 region.
    pub s3_region: String,
    /// Chroma URL; `None` (and no `CHROMA_HOST`) means the embedded index.
    chroma_url: Option<String>,
    /// `CHROMA_HOST`.
    chroma_host: Option<String>,
    /// `CHROMA_PORT`.
    chroma_port: u16,
    /// The provider's embedding model; `None` means the local embedder.
    pub embedding_model: Option<String>,
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
    /// Whether answers are cached.
    pub cache: bool,
    /// How long a cached answer lives.
    pub cache_ttl: Duration,
    /// Whether any user may reuse any user's cached answers.
    pub cache_global: bool,
    /// Bytes of cached answers kept in memory.
    pub cache_memory_bytes: u64,
    /// Most provider requests in one answer of the agent.
    pub agent_max_steps: u32,
    /// Longest a tool call may run.
    pub tool_timeout: Duration,
    /// The tools of a session that names none (`None`: all).
    pub default_tools: Option<Vec<String>>,
    /// MCP servers: (name, url).
    pub mcp_servers: Vec<(String, String)>,
    /// Bearer tokens of MCP servers, by name.
    pub mcp_tokens: Vec<(String, Secret)>,
    /// The key sealing data at rest.
    pub encryption_key: Option<Secret>,
    /// Earlier keys, still opening what they sealed.
    pub encryption_old_keys: Vec<Secret>,
    /// Origins whose pages may call this server.
    pub cors_origins: Vec<String>,
    /// Who may read `/metrics` and `/ready` on the main listener.
    pub ops: OpsAccess,
    /// Clock skew allowed on tokens, in seconds.
    pub jwt_leeway_seconds: u64,
    /// The `iss` tokens must carry.
    pub jwt_issuer: Option<String>,
    /// The `aud` tokens must carry.
    pub jwt_audience: Option<String>,
    /// Static API keys: (user, key).
    pub api_keys: Vec<(String, Secret)>,
    /// Per-user limits.
    pub limits: LimitSettings,
    /// Provider requests at once on this replica.
    pub max_concurrent_requests: usize,
    /// Longest a provider request waits for a place.
    pub provider_queue: Duration,
    /// Tracing filter.
    pub log_level: String,
    /// Whether logs are JSON.
    pub log_json: bool,
    /// `ENV=production`: a token secret is required, logs default to JSON.
    pub production: bool,
    /// `DEBUG=true`.
    debug: bool,
    /// Whether `/metrics` is served.
    pub metrics_enabled: bool,
    /// Variables read but ignored, each with why: logged once at start.
    pub warnings: Vec<String>,
}

impl Config {
    /// Every field before the table's defaults are read into it. These
    /// values are never seen: each is overwritten by its variable's default
    /// (a test holds the table to that).
    fn before_defaults() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            data_dir: PathBuf::new(),
            llm_base_url: None,
            postgres_url: None,
            redis_url: None,
            lease_ttl: Duration::ZERO,
            llm_api_key: None,
            llm_model: None,
            llm_temperature: None,
            continuation: Continuation::Off,
            request_timeout: Duration::ZERO,
            jwt_secret: None,
            replica_id: None,
            metrics_addr: None,
            metrics_port: None,
            event_retention: 0,
            event_memory_bytes: 0,
            subscriber_max_bytes: 0,
            session_idle: Duration::ZERO,
            shutdown_grace: Duration::ZERO,
            workers: None,
            demo_token_delay: Duration::ZERO,
            log_level: String::new(),
            log_json: false,
            s3_endpoint: None,
            s3_bucket: String::new(),
            s3_access_key: None,
            s3_secret_key: None,
            s3_region: String::new(),
            chroma_url: None,
            chroma_host: None,
            chroma_port: 0,
            embedding_model: None,
            max_upload_bytes: 0,
            cache: false,
            cache_ttl: Duration::ZERO,
            cache_global: false,
            cache_memory_bytes: 0,
            agent_max_steps: 0,
            tool_timeout: Duration::ZERO,
            default_tools: None,
            mcp_servers: Vec::new(),
            mcp_tokens: Vec::new(),
            encryption_key: None,
            encryption_old_keys: Vec::new(),
            cors_origins: Vec::new(),
            ops: OpsAccess::Open,
            jwt_leeway_seconds: 0,
            jwt_issuer: None,
            jwt_audience: None,
            api_keys: Vec::new(),
            limits: LimitSettings::default(),
            max_concurrent_requests: 0,
            provider_queue: Duration::ZERO,
            production: false,
            debug: false,
            metrics_enabled: false,
            warnings: Vec::new(),
        }
    }

    /// Reads the process environment. A variable of the table that is set
    /// but not UTF-8 is refused (read as unset, a secret would be lost
    /// without a word).
    pub fn from_env() -> Result<Self, ConfigError> {
        for name in VARS
            .iter()
            .flat_map(|v| std::iter::once(v.name).chain(v.aliases.iter().copied()))
        {
            if std::env::var_os(name).is_some_and(|v| v.to_str().is_none()) {
                return Err(ConfigError {
                    name,
                    value: "[not UTF-8]".into(),
                    reason: "must be UTF-8 text".into(),
                });
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (tests pass a map). A variable set
    /// to only spaces counts as unset; values are read without their
    /// surrounding spaces, except secrets, which are taken as they are.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Self::before_defaults();
        let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        for var in VARS {
            // A name and its alias both set, differently: one warning.
            let mut given = std::iter::once(var.name)
                .chain(var.aliases.iter().copied())
                .filter_map(|name| Some((name, set(name)?)));
            if let Some((winner, value)) = given.next() {
                for (other, _) in given.filter(|(_, v)| v.trim() != value.trim()) {
                    config
                        .warnings
                        .push(format!("{other} is ignored: {winner} is set too and wins"));
                }
            }
            let set = std::iter::once(var.name)
                .chain(var.aliases.iter().copied())
                .find_map(|name| {
                    let value = lookup(name)?;
                    if value.trim().is_empty() {
                        return None;
                    }
                    // A secret keeps its spaces, but not the line break a
                    // file it was read from (a Kubernetes secret) ends with.
                    let value = if is_secret(var.name) {
                        value.trim_end_matches(['\r', '\n']).to_owned()
                    } else {
                        value.trim().to_owned()
                    };
                    Some((name, value))
                });
            let (name, value) = match (set, &var.default) {
                (Some(set), _) => set,
                (None, DefaultValue::Value(text)) => (var.name, (*text).to_owned()),
                (None, _) => continue,
            };
            (var.parse)(&mut config, &value).map_err(|reason| ConfigError {
                name,
                value: if may_hold_secret(var.name) {
                    "[redacted]".into()
                } else {
                    value.chars().take(100).collect()
                },
                reason,
            })?;
        }
        let set = |names: &[&str]| names.iter().any(|n| set(n).is_some());
        if config.production && !set(&["SLUICE_LOG_FORMAT"]) {
            config.log_json = true;
        }
        if config.debug && !set(&["SLUICE_LOG_LEVEL", "LOG_LEVEL"]) {
            config.log_level = "debug".into();
        }
        if set(&["ENV"]) && set(&["SLUICE_ENV"]) {
            let (env, sluice_env) = (lookup("ENV"), lookup("SLUICE_ENV"));
            let word = |v: Option<String>| v.and_then(|v| environment(v.trim()).ok());
            // (An ENV that is no environment's name has its own warning.)
            if let (Some(env), Some(sluice_env)) = (word(env), word(sluice_env))
                && env != sluice_env
            {
                config
                    .warnings
                    .push("ENV is ignored: SLUICE_ENV is set too and wins".into());
            }
        }
        for (seed, canonical) in [
            ("METRICS_PORT", "SLUICE_METRICS_ADDR"),
            ("CHROMA_HOST", "SLUICE_CHROMA_URL"),
            ("CHROMA_PORT", "SLUICE_CHROMA_URL"),
        ] {
            if set(&[seed]) && set(&[canonical]) {
                config.warnings.push(format!(
                    "{seed} is ignored: {canonical} is set too and wins"
                ));
            }
        }
        if config.llm_base_url.is_none() && config.llm_api_key.is_some() {
            if set(&["ARK_API_KEY"]) && !set(&["SLUICE_LLM_API_KEY"]) {
                config.llm_base_url = Some(ARK_BASE_URL.into());
                if config.llm_model.is_none() {
                    return Err(ConfigError {
                        name: "ARK_API_KEY",
                        value: "[redacted]".into(),
                        reason: "Volcengine Ark needs the model (its name or endpoint id): set \
                                 OPENAI_MODEL (or SLUICE_LLM_MODEL) too"
                            .into(),
                    });
                }
            } else {
                config.warnings.push(
                    "SLUICE_LLM_API_KEY is ignored: no SLUICE_LLM_BASE_URL is set, so the \
                     built-in demo model answers"
                        .into(),
                );
            }
        }
        if config.metrics_addr.is_none() {
            // All interfaces, as the seed deployment means; loopback in
            // local mode, which serves no other machine.
            let host = if config.jwt_secret.is_some() {
                [0, 0, 0, 0]
            } else {
                [127, 0, 0, 1]
            };
            config.metrics_addr = config
                .metrics_port
                .map(|port| SocketAddr::from((host, port)));
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks rules that span variables.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.production && self.jwt_secret.is_none() {
            return Err(ConfigError {
                name: "SLUICE_ENV",
                value: "production".into(),
                reason: "production needs SLUICE_JWT_SECRET (JWT_SECRET): without it every \
                         request would be user `local`"
                    .into(),
            });
        }
        if self.jwt_secret.is_none() && !self.addr.ip().is_loopback() {
            return Err(ConfigError {
                name: "SLUICE_ADDR",
                value: self.addr.to_string(),
                reason: "local mode (no SLUICE_JWT_SECRET) listens on loopback only, since every \
                         request is user `local`; set SLUICE_JWT_SECRET or SLUICE_ADDR=127.0.0.1:PORT"
                    .into(),
            });
        }
        if self.ops == OpsAccess::MetricsListener && self.metrics_addr.is_none() {
            return Err(ConfigError {
                name: "SLUICE_OPS_ENDPOINTS",
                value: "metrics-listener".into(),
                reason: "/metrics and /ready would be served nowhere: set SLUICE_METRICS_ADDR (or METRICS_PORT) too"
                    .into(),
            });
        }
        if !self.api_keys.is_empty() && self.jwt_secret.is_none() {
            return Err(ConfigError {
                name: "SLUICE_API_KEYS",
                value: "[redacted]".into(),
                reason: "API keys need JWT mode: set SLUICE_JWT_SECRET too".into(),
            });
        }
        if let Some(addr) = self.metrics_addr
            && self.jwt_secret.is_none()
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError {
                name: "SLUICE_METRICS_ADDR",
                value: addr.to_string(),
                reason: "local mode (no SLUICE_JWT_SECRET) listens on loopback only".into(),
            });
        }
        if self.s3_endpoint.is_some()
            && (self.s3_access_key.is_none() || self.s3_secret_key.is_none())
        {
            return Err(ConfigError {
                name: "SLUICE_S3_ENDPOINT",
                value: "[redacted]".into(),
                reason: "needs SLUICE_S3_ACCESS_KEY and SLUICE_S3_SECRET_KEY".into(),
            });
        }
        if self.embedding_model.is_some() && self.llm_base_url.is_none() {
            return Err(ConfigError {
                name: "SLUICE_EMBEDDING_MODEL",
                value: self.embedding_model.clone().unwrap_or_default(),
                reason: "asks the provider for embeddings, so it needs SLUICE_LLM_BASE_URL \
                         (or leave it unset for the local embedder)"
                    .into(),
            });
        }
        Ok(())
    }

    /// The Chroma URL: `SLUICE_CHROMA_URL`, else `http://CHROMA_HOST:CHROMA_PORT`.
    pub fn chroma_url(&self) -> Option<String> {
        self.chroma_url.clone().or_else(|| {
            self.chroma_host.as_ref().map(|host| {
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                format!("http://{host}:{}", self.chroma_port)
            })
        })
    }

    /// The keys sealing data at rest, if a key is set (each was checked
    /// when it was read).
    pub fn keyring(&self) -> Option<crypto::Keyring> {
        let key = |s: &Secret| crypto::parse_key(s.expose()).ok();
        let current = self.encryption_key.as_ref().and_then(key);
        let older: Vec<[u8; 32]> = self.encryption_old_keys.iter().filter_map(key).collect();
        (current.is_some() || !older.is_empty()).then(|| crypto::Keyring::new(current, &older))
    }

    /// The default model: the configured one, else the demo model without a
    /// provider and [`PROVIDER_DEFAULT_MODEL`] with one.
    pub fn llm_model(&self) -> String {
        match (&self.llm_model, &self.llm_base_url) {
            (Some(model), _) => model.clone(),
            (None, Some(_)) => PROVIDER_DEFAULT_MODEL.into(),
            (None, None) => DEMO_MODEL.into(),
        }
    }

    /// HTTP worker threads (and session arbiters): the configured number,
    /// else one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// The session layer's settings, for the replica named `replica_id`.
    pub fn session(&self, replica_id: String) -> SessionConfig {
        SessionConfig {
            replica_id,
            default_model: self.llm_model(),
            idle_timeout: self.session_idle,
            subscriber_max_bytes: self.subscriber_max_bytes,
            shutdown_grace: self.shutdown_grace,
            temperature: self.llm_temperature,
            continuation: self.continuation,
            agent_max_steps: self.agent_max_steps,
        }
    }
}

/// Whether a variable's value is a secret: never repeated in an error, and
/// taken as it is (spaces may be part of it).
fn is_secret(name: &str) -> bool {
    name.contains("SECRET") || name.contains("KEY") || name.ends_with("_TOKENS")
}

/// Whether a variable's value may hold a secret (a URL's password): never
/// repeated in an error.
fn may_hold_secret(name: &str) -> bool {
    is_secret(name) || name.ends_with("_URL")
}

/// `url` with any `user:password@` replaced, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://[redacted]@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn address(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("must be host:port ({e})"))?
        .next()
        .ok_or_else(|| "resolves to no address".into())
}

fn http_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("must be a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn bounded_text(text: &str, max: usize) -> Result<String, String> {
    if text.len() > max {
        return Err(format!("must be at most {max} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not hold control characters".into());
    }
    Ok(text.to_owned())
}

fn replica_id(text: &str) -> Result<String, String> {
    // It names this replica's spool directory, so `.` and `..` are out.
    if text.chars().all(|c| c == '.') {
        return Err("must not be only dots".into());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:-".contains(c);
    if text.len() > MAX_REPLICA_ID_BYTES || !text.chars().all(allowed) {
        return Err(format!(
            "must be at most {MAX_REPLICA_ID_BYTES} letters, digits, '.', '_', ':' or '-'"
        ));
    }
    Ok(text.to_owned())
}

/// `production` (true) or `development` (false), by any of their names.
fn environment(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "production" | "prod" | "staging" => Ok(true),
        "development" | "dev" | "test" | "local" => Ok(false),
        _ => Err("must be production, staging, development or test".into()),
    }
}

/// A log filter: each bare directive must be a level (a bare word is
/// otherwise a target name, and `warning` would silently log nothing), with
/// the names other logging libraries use mapped onto tracing's.
fn log_filter(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let mut directives = Vec::new();
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains('=') {
            directives.push(directive.to_owned());
            continue;
        }
        let level = match directive.to_ascii_lowercase().as_str() {
            "warning" => "warn".to_owned(),
            "critical" | "fatal" => "error".to_owned(),
            level if LEVELS.contains(&level) => level.to_owned(),
            _ => {
                return Err(format!(
                    "{directive:?} is not a level ({}) nor target=level",
                    LEVELS.join(", ")
                ));
            }
        };
        directives.push(level);
    }
    if directives.is_empty() {
        return Err("must name a level".into());
    }
    // Only target=level directives would leave everything else (errors
    // included) unlogged: the default level stays below them.
    if directives.iter().all(|d| d.contains('=')) {
        directives.insert(0, "info".to_owned());
    }
    let filter = directives.join(",");
    tracing_subscriber::EnvFilter::try_new(&filter).map_err(|e| e.to_string())?;
    Ok(filter)
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

/// Most MCP servers.
const MAX_MCP_SERVERS: usize = 16;

/// The built-in tools' names (SLUICE_TOOLS may name them, or MCP tools).
const BUILTIN_TOOLS: &[&str] = &["calculator", "current_time", "search_files"];

/// `all` (None), `none` (an empty list), or tool names separated by commas:
/// built-ins, or an MCP server's tools (`<server>__<tool>`).
fn tool_names(text: &str) -> Result<Option<Vec<String>>, String> {
    match text {
        "all" => return Ok(None),
        "none" => return Ok(Some(Vec::new())),
        _ => {}
    }
    let names: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let known = |n: &str| {
        BUILTIN_TOOLS.contains(&n)
            || n.split_once("__")
                .is_some_and(|(s, t)| server_name(s).is_ok() && !t.is_empty())
    };
    if names.is_empty() {
        return Err("must be all, none, or tool names separated by commas".into());
    }
    match names.iter().find(|n| !known(n) || n.len() > 128) {
        Some(unknown) => Err(format!(
            "names an unknown tool {unknown:?} (built-ins: {}; MCP tools: <server>__<tool>)",
            BUILTIN_TOOLS.join(", ")
        )),
        None => Ok(Some(names)),
    }
}

/// An MCP server's name: 1 to 32 letters, digits, `_` or `-`, without `__`
/// (which joins it to its tools' names).
fn server_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.contains("__");
    ok.then_some(()).ok_or_else(|| {
        format!("{name:?} is not a server name (1 to 32 letters, digits, _ or -, without __)")
    })
}

/// MCP servers separated by commas, each `name=url` or a url (named by its
/// host).
fn mcp_servers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut servers: Vec<(String, String)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = match entry.split_once('=') {
            Some((name, url)) if !name.contains("://") => (name.trim().to_owned(), url.trim()),
            _ => {
                let host = entry
                    .split_once("://")
                    .map_or(entry, |(_, rest)| rest)
                    .split(['/', ':', '@'])
                    .next()
                    .unwrap_or_default();
                let name: String = host
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .take(32)
                    .collect();
                (name, entry)
            }
        };
        server_name(&name)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            return Err(format!("server {name:?} needs an http:// or https:// url"));
        }
        if servers.iter().any(|(n, _)| *n == name) {
            return Err(format!("names the server {name:?} twice"));
        }
        servers.push((name, url.trim_end_matches('/').to_owned()));
    }
    if servers.is_empty() || servers.len() > MAX_MCP_SERVERS {
        return Err(format!("must list 1 to {MAX_MCP_SERVERS} servers"));
    }
    Ok(servers)
}

/// Bearer tokens of MCP servers, separated by commas, each `name=token`.
fn mcp_tokens(text: &str) -> Result<Vec<(String, Secret)>, String> {
    let mut tokens = Vec::new();
    for entry in text.split(',').filter(|e| !e.trim().is_empty()) {
        let Some((name, token)) = entry.split_once('=') else {
            return Err("each entry must be name=token".into());
        };
        let name = name.trim();
        server_name(name)?;
        if token.is_empty() || token.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!(
                "the token of {name:?} is empty or holds control characters"
            ));
        }
        tokens.push((name.to_owned(), Secret::new(token.to_owned())));
    }
    Ok(tokens)
}

/// A whole number from `min` to `max`.
fn integer(text: &str, min: u64, max: u64) -> Result<u64, String> {
    text.parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
}

/// A finite number from `min` to `max`.
fn number(text: &str, min: f64, max: f64) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && (min..=max).contains(n))
        .ok_or_else(|| format!("must be a number from {min} to {max}"))
}

/// A number of seconds from `min` to `max`, fractions allowed.
fn seconds(text: &str, min: f64, max: f64) -> Result<Duration, String> {
    number(text, min, max)
        .map(Duration::from_secs_f64)
        .map_err(|_| format!("must be a number of seconds from {min} to {max}"))
}

/// `user=key` pairs separated by commas; each user 1 to 128 bytes of
/// letters, digits and `. _ : @ -`, each key at least 32 bytes, no user or
/// key twice.
fn api_keys(text: &str) -> Result<Vec<(String, Secret)>, String> {
    let mut keys: Vec<(String, Secret)> = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((user, key)) = pair.split_once('=') else {
            return Err("each entry must be user=key".into());
        };
        let (user, key) = (user.trim(), key.trim());
        if user.is_empty()
            || user.len() > 128
            || !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:@-".contains(c))
        {
            return Err("a user must be 1 to 128 letters, digits or . _ : @ -".into());
        }
        if key.len() < 32 {
            return Err(format!("the key of {user} must be at least 32 bytes"));
        }
        if keys.iter().any(|(u, k)| u == user || k.expose() == key) {
            return Err(format!("{user}, or its key, is named twice"));
        }
        keys.push((user.to_owned(), Secret::new(key)));
    }
    Ok(keys)
}

/// This machine's host name, for the default replica id.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_embedded_and_local() {
        let c = config(&[]).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.llm_base_url.is_none());
        assert_eq!(c.llm_model(), "sluice-demo");
        assert!(c.jwt_secret.is_none());
        assert_eq!(c.continuation, Continuation::Off);
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        let with_provider = config(&[("SLUICE_LLM_BASE_URL", "http://p/v1/")]).unwrap();
        assert_eq!(with_provider.llm_model(), "gpt-4o-mini");
        assert_eq!(with_provider.llm_base_url.as_deref(), Some("http://p/v1"));
    }

    /// Every default in the table is one its own parser takes, so none of
    /// the placeholder values before the defaults survives.
    #[test]
    fn every_default_is_read_by_its_parser() {
        let blank = Config::before_defaults();
        let defaults = config(&[]).unwrap();
        for var in VARS {
            if let DefaultValue::Value(text) = var.default {
                let mut c = Config::before_defaults();
                (var.parse)(&mut c, text).unwrap_or_else(|e| panic!("{}: {e}", var.name));
            }
        }
        assert_ne!(defaults.addr, blank.addr);
        assert_ne!(defaults.request_timeout, blank.request_timeout);
        assert_ne!(defaults.event_retention, blank.event_retention);
        assert_ne!(defaults.subscriber_max_bytes, blank.subscriber_max_bytes);
        assert_ne!(defaults.session_idle, blank.session_idle);
        assert_ne!(defaults.log_level, blank.log_level);
    }

    /// The seed deployment's `.env.production` as `(name, value)` pairs.
    fn seed_env() -> Vec<(&'static str, &'static str)> {
        include_str!("../tests/fixtures/seed.env.production")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split_once('=').expect("NAME=value"))
            .collect()
    }

    #[test]
    fn the_seed_environment_file_is_read_whole() {
        let seed = seed_env();
        assert_eq!(seed.len(), 20, "the guide's twenty variables");
        let known = |name: &str| {
            VARS.iter()
                .any(|v| v.name == name || v.aliases.contains(&name))
        };
        for (name, _) in &seed {
            assert!(known(name), "{name} is neither honoured nor warned about");
        }
        let c = config(&seed).unwrap();
        assert!(c.production);
        assert!(c.log_json, "production logs JSON lines");
        assert_eq!(c.log_level, "info");
        assert_eq!(c.llm_base_url.as_deref(), Some(ARK_BASE_URL));
        assert_eq!(
            c.llm_api_key.as_ref().unwrap().expose(),
            "your-ark-api-key-here"
        );
        assert_eq!(c.llm_model(), "doubao-pro-32k");
        assert_eq!(c.llm_temperature, Some(0.7));
        assert!(
            c.postgres_url
                .as_ref()
                .unwrap()
                .expose()
                .starts_with("postgresql://chatuser")
        );
        assert_eq!(
            c.redis_url.as_ref().unwrap().expose(),
            "redis://redis:6379/0"
        );
        assert_eq!(c.chroma_url().as_deref(), Some("http://chroma:8000"));
        assert!(c.jwt_secret.is_some());
        assert!(c.keyring().is_some(), "the passphrase seals data at rest");
        assert_eq!(c.workers(), 4);
        assert_eq!(c.max_concurrent_requests, 100);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.cache_ttl, Duration::from_secs(3600));
        assert!(c.metrics_enabled);
        assert_eq!(c.metrics_addr.unwrap().to_string(), "0.0.0.0:9090");
        // Ignored, each with one warning that names it and says why.
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("SECRET_KEY is ignored: "));
        assert!(c.warnings[1].starts_with("SENTRY_DSN is ignored: "));
    }

    #[test]
    fn the_seed_switches_do_what_they_say() {
        let err = config(&[("ENV", "production")]).unwrap_err().to_string();
        assert!(
            err.starts_with("SLUICE_ENV=") && err.contains("JWT_SECRET"),
            "{err}"
        );
        assert!(config(&[("SLUICE_ENV", "sometimes")]).is_err());
        // The generic names may be set for other programs: ignored, warned.
        let c = config(&[("ENV", "/home/me/.shrc"), ("DEBUG", "express:*")]).unwrap();
        assert!(!c.production && !c.debug);
        assert!(c.warnings[0].starts_with("ENV=\"/home/me/.shrc\" is ignored: "));
        assert!(c.warnings[1].starts_with("DEBUG=\"express:*\" is ignored: "));
        let c = config(&[("ENV", "development")]).unwrap();
        assert!(!c.production && !c.log_json);
        let secret = ("JWT_SECRET", "0123456789abcdef");
        let c = config(&[
            ("ENV", "production"),
            secret,
            ("SLUICE_LOG_FORMAT", "pretty"),
        ])
        .unwrap();
        assert!(!c.log_json, "an explicit format wins");
        assert_eq!(config(&[("DEBUG", "true")]).unwrap().log_level, "debug");
        assert_eq!(config(&[("DEBUG", "false")]).unwrap().log_level, "info");
        let c = config(&[("DEBUG", "true"), ("LOG_LEVEL", "warn")]).unwrap();
        assert_eq!(c.log_level, "warn", "an explicit level wins");
        assert_eq!(config(&[("DEBUG", "maybe")]).unwrap().log_level, "info");
        assert!(
            !config(&[("PROMETHEUS_ENABLED", "false")])
                .unwrap()
                .metrics_enabled
        );
        assert!(config(&[("PROMETHEUS_ENABLED", "2")]).is_err());
        assert_eq!(config(&[("MAX_WORKERS", "3")]).unwrap().workers(), 3);
        let c = config(&[("MAX_WORKERS", "3"), ("SLUICE_WORKERS", "5")]).unwrap();
        assert_eq!(c.workers(), 5, "the canonical name wins");
        assert!(config(&[("MAX_WORKERS", "0")]).is_err());
        // A key without a provider is named in a warning, not dropped quietly.
        let c = config(&[("SLUICE_LLM_API_KEY", "sk-1")]).unwrap();
        assert!(c.llm_base_url.is_none());
        assert!(c.warnings[0].starts_with("SLUICE_LLM_API_KEY is ignored: "));
        let c = config(&[("ARK_API_KEY", "k"), ("SLUICE_LLM_BASE_URL", "http://h/v1")]).unwrap();
        assert_eq!(c.llm_base_url.as_deref(), Some("http://h/v1"));
        assert!(c.warnings.is_empty());
        assert!(config(&[]).unwrap().warnings.is_empty());
    }

    #[test]
    fn a_name_and_its_alias_set_differently_are_warned_about() {
        let c = config(&[("SLUICE_ENV", "development"), ("ENV", "production")]).unwrap();
        assert!(!c.production, "the canonical name wins");
        assert_eq!(
            c.warnings,
            ["ENV is ignored: SLUICE_ENV is set too and wins"]
        );
        let c = config(&[
            ("SLUICE_METRICS_ENABLED", "false"),
            ("PROMETHEUS_ENABLED", "true"),
        ])
        .unwrap();
        assert!(!c.metrics_enabled);
        assert_eq!(
            c.warnings,
            ["PROMETHEUS_ENABLED is ignored: SLUICE_METRICS_ENABLED is set too and wins"]
        );
        let c = config(&[
            ("SLUICE_JWT_SECRET", "a-secret-of-16-bytes"),
            ("JWT_SECRET", "another-one-16-bytes"),
        ])
        .unwrap();
        assert_eq!(
            c.warnings,
            ["JWT_SECRET is ignored: SLUICE_JWT_SECRET is set too and wins"]
        );
        assert!(
            !c.warnings[0].contains("16-bytes"),
            "values are not repeated"
        );
        // The same value twice is no conflict.
        assert!(
            config(&[
                ("REDIS_URL", "redis://h"),
                ("SLUICE_REDIS_URL", "redis://h")
            ])
            .unwrap()
            .warnings
            .is_empty()
        );
        // A seed name beside its canonical twin is still checked.
        assert!(config(&[("SLUICE_WORKERS", "2"), ("MAX_WORKERS", "garbage")]).is_err());
        let c = config(&[("SLUICE_WORKERS", "2"), ("MAX_WORKERS", "4")]).unwrap();
        assert_eq!((c.workers(), c.warnings.len()), (2, 1));
        let c = config(&[
            ("METRICS_PORT", "9100"),
            ("SLUICE_METRICS_ADDR", "127.0.0.1:9200"),
        ])
        .unwrap();
        assert_eq!(
            c.warnings,
            ["METRICS_PORT is ignored: SLUICE_METRICS_ADDR is set too and wins"]
        );
    }

    #[test]
    fn a_provider_missing_its_model_or_a_production_without_one_is_named() {
        let err = config(&[("ARK_API_KEY", "k")]).unwrap_err().to_string();
        assert!(
            err.starts_with("ARK_API_KEY=") && err.contains("OPENAI_MODEL"),
            "{err}"
        );
    }

    #[test]
    fn a_log_level_is_a_level_whatever_library_named_it() {
        for (given, read) in [
            ("INFO", "info"),
            ("warning", "warn"),
            ("CRITICAL", "error"),
            ("fatal", "error"),
            ("info, sluice=debug", "info,sluice=debug"),
            ("sluice=debug", "info,sluice=debug"),
            ("warn,sluice=off", "warn,sluice=off"),
        ] {
            assert_eq!(
                config(&[("LOG_LEVEL", given)]).unwrap().log_level,
                read,
                "{given}"
            );
        }
        for refused in ["garbage", "ÄÖÜ", "sluice", ","] {
            assert!(config(&[("LOG_LEVEL", refused)]).is_err(), "{refused}");
        }
        assert!(config(&[("SLUICE_LOG_FORMAT", "JSON")]).unwrap().log_json);
    }

    #[test]
    fn aliases_apply_and_canonical_names_win() {
        let c = config(&[
            ("ARK_API_KEY", "k1"),
            ("OPENAI_MODEL", "m1"),
            ("REQUEST_TIMEOUT", "5"),
        ])
        .unwrap();
        assert_eq!(c.llm_api_key.as_ref().unwrap().expose(), "k1");
        assert_eq!(c.llm_model(), "m1");
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        let c = config(&[("OPENAI_MODEL", "m1"), ("SLUICE_LLM_MODEL", "m2")]).unwrap();
        assert_eq!(c.llm_model(), "m2");
        let c = config(&[("METRICS_PORT", "9100")]).unwrap();
        assert_eq!(c.metrics_addr.unwrap().to_string(), "127.0.0.1:9100");
        let c = config(&[
            ("METRICS_PORT", "9100"),
            ("JWT_SECRET", " a secret, spaces and all \n"),
            ("SLUICE_ADDR", "0.0.0.0:8080"),
        ])
        .unwrap();
        assert_eq!(c.metrics_addr.unwrap().to_string(), "0.0.0.0:9100");
        assert_eq!(c.jwt_secret.unwrap().expose(), " a secret, spaces and all ");
        let c = config(&[("SLUICE_LLM_API_KEY", "sk-from-a-file\n")]).unwrap();
        assert_eq!(c.llm_api_key.unwrap().expose(), "sk-from-a-file");
        let c = config(&[
            ("METRICS_PORT", "9100"),
            ("SLUICE_METRICS_ADDR", "127.0.0.1:9200"),
        ])
        .unwrap();
        assert_eq!(c.metrics_addr.unwrap().to_string(), "127.0.0.1:9200");
        let c = config(&[("REDIS_URL", "redis://127.0.0.1:6390")]).unwrap();
        assert_eq!(c.redis_url.unwrap().expose(), "redis://127.0.0.1:6390");
        let c = config(&[("POSTGRES_URL", "postgres://u:p@db/sluice")]).unwrap();
        assert_eq!(c.postgres_url.unwrap().expose(), "postgres://u:p@db/sluice");
        let c = config(&[("SLUICE_CONTINUATION", "vllm")]).unwrap();
        assert_eq!(c.continuation, Continuation::Vllm);
    }

    #[test]
    fn files_backends_are_configured_from_urls_and_the_seed_names() {
        let c = config(&[]).unwrap();
        assert!(c.s3_endpoint.is_none() && c.chroma_url().is_none() && c.embedding_model.is_none());
        assert_eq!(c.max_upload_bytes, 100 << 20);
        assert_eq!(
            (c.s3_bucket.as_str(), c.s3_region.as_str()),
            ("sluice", "us-east-1")
        );
        let c = config(&[
            ("SLUICE_S3_ENDPOINT", "http://minio:9000/"),
            ("SLUICE_S3_ACCESS_KEY", "ak"),
            ("SLUICE_S3_SECRET_KEY", "sk"),
            ("CHROMA_HOST", "chroma"),
            ("CHROMA_PORT", "8001"),
        ])
        .unwrap();
        assert_eq!(c.s3_endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(c.chroma_url().as_deref(), Some("http://chroma:8001"));
        let c = config(&[("CHROMA_HOST", "::1"), ("SLUICE_CHROMA_URL", "http://c:1")]).unwrap();
        assert_eq!(c.chroma_url().as_deref(), Some("http://c:1"));
        assert_eq!(
            config(&[("CHROMA_HOST", "::1")])
                .unwrap()
                .chroma_url()
                .as_deref(),
            Some("http://[::1]:8000")
        );
        let c = config(&[
            ("SLUICE_LLM_BASE_URL", "http://p/v1"),
            ("SLUICE_EMBEDDING_MODEL", "text-embedding-3-small"),
        ])
        .unwrap();
        assert_eq!(c.embedding_model.as_deref(), Some("text-embedding-3-small"));
        assert!(
            config(&[("SLUICE_EMBEDDING_MODEL", "local")])
                .unwrap()
                .embedding_model
                .is_none()
        );
        // A secret key is not repeated in the error about a missing one.
        let err = config(&[
            ("SLUICE_S3_ENDPOINT", "http://m:9000"),
            ("SLUICE_S3_SECRET_KEY", "s3cr3t"),
        ])
        .unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn local_mode_refuses_non_loopback() {
        let err = config(&[("SLUICE_ADDR", "0.0.0.0:8080")]).unwrap_err();
        assert!(err.to_string().contains("local mode"), "{err}");
        config(&[
            ("SLUICE_ADDR", "0.0.0.0:8080"),
            ("SLUICE_JWT_SECRET", "0123456789abcdef"),
        ])
        .unwrap();
        config(&[("SLUICE_ADDR", "[::1]:8080")]).unwrap();
    }

    /// Each bad value is refused with the variable's name and what it
    /// accepts, on one line, before anything can use it (a negative, a
    /// non-number, an infinite or a huge duration used to panic).
    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        for (name, value) in [
            ("SLUICE_LEASE_SECONDS", "-1"),
            ("SLUICE_LEASE_SECONDS", "nan"),
            ("SLUICE_LEASE_SECONDS", "1e30"),
            ("SLUICE_LEASE_SECONDS", "inf"),
            ("SLUICE_LEASE_SECONDS", "0"),
            ("SLUICE_REQUEST_TIMEOUT_SECONDS", "-1"),
            ("REQUEST_TIMEOUT", "NaN"),
            ("SLUICE_REQUEST_TIMEOUT_SECONDS", "inf"),
            ("SLUICE_WORKERS", "100000000"),
            ("SLUICE_WORKERS", "0"),
            ("SLUICE_EVENT_RETENTION", "lots"),
            ("SLUICE_EVENT_RETENTION", "0"),
            ("SLUICE_EVENT_MEMORY_BYTES", "1000"),
            ("SLUICE_SUBSCRIBER_MAX_BYTES", "18446744073709551616"),
            ("SLUICE_SESSION_IDLE_SECONDS", "-1"),
            ("SLUICE_SHUTDOWN_GRACE_SECONDS", "1e300"),
            ("SLUICE_DEMO_TOKEN_DELAY_MS", "99999999999"),
            ("SLUICE_LLM_TEMPERATURE", "hot"),
            ("SLUICE_LLM_TEMPERATURE", "NaN"),
            ("SLUICE_LLM_BASE_URL", "ftp://x"),
            ("SLUICE_LLM_BASE_URL", "http://[::1"),
            ("SLUICE_LLM_MODEL", "a\nb"),
            ("SLUICE_LLM_API_KEY", "k\nX-Injected: 1"),
            ("SLUICE_LOG_FORMAT", "xml"),
            ("SLUICE_LOG_LEVEL", "sluice=loud"),
            ("SLUICE_CONTINUATION", "maybe"),
            ("SLUICE_REPLICA_ID", "r 1"),
            ("SLUICE_REPLICA_ID", ".."),
            ("SLUICE_S3_BUCKET", "b"),
            ("SLUICE_S3_BUCKET", "Upper"),
            ("SLUICE_S3_ENDPOINT", "http://minio:9000"),
            ("SLUICE_S3_ENDPOINT", "s3.example"),
            ("CHROMA_HOST", "http://chroma"),
            ("CHROMA_PORT", "0"),
            ("SLUICE_EMBEDDING_MODEL", "text-embedding-3-small"),
            ("SLUICE_MAX_UPLOAD_BYTES", "0"),
            ("SLUICE_MAX_UPLOAD_BYTES", "-5"),
            ("SLUICE_MAX_UPLOAD_BYTES", "1e9"),
            ("SLUICE_AGENT_MAX_STEPS", "0"),
            ("SLUICE_AGENT_MAX_STEPS", "65"),
            ("SLUICE_TOOL_TIMEOUT_SECONDS", "-1"),
            ("SLUICE_TOOLS", "rm_rf"),
            ("SLUICE_TOOLS", ","),
            ("SLUICE_MCP_SERVERS", "ftp://x"),
            ("SLUICE_MCP_SERVERS", "a__b=http://x"),
            ("SLUICE_MCP_SERVERS", "a=http://x,a=http://y"),
            ("SLUICE_MCP_TOKENS", "novalue"),
            ("SLUICE_CACHE", "maybe"),
            ("SLUICE_CACHE_TTL_SECONDS", "0"),
            ("SLUICE_CACHE_SCOPE", "everyone"),
            ("SLUICE_CACHE_MEMORY_BYTES", "10"),
            ("REDIS_URL", "http://127.0.0.1"),
            ("METRICS_PORT", "99999"),
            ("SLUICE_JWT_SECRET", "short"),
            ("SLUICE_METRICS_ADDR", "0.0.0.0:9100"),
        ] {
            let err = config(&[(name, value)]).expect_err(&format!("{name}={value}"));
            let text = err.to_string();
            assert!(text.starts_with(&format!("{name}=")), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        // A secret is never repeated back.
        let err = config(&[("JWT_SECRET", "hunter2")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_agent_and_the_cache_are_configured() {
        let c = config(&[]).unwrap();
        assert_eq!((c.agent_max_steps, c.default_tools.clone()), (8, None));
        assert!(c.cache && !c.cache_global && c.mcp_servers.is_empty());
        assert_eq!(c.cache_ttl, Duration::from_secs(3600));
        // The seed's CACHE_TTL is the cache's, not the session idle time.
        let c = config(&[("CACHE_TTL", "120")]).unwrap();
        assert_eq!(c.cache_ttl, Duration::from_secs(120));
        assert_eq!(c.session_idle, Duration::from_secs(300));
        let c = config(&[
            ("SLUICE_TOOLS", "calculator, docs__search"),
            (
                "SLUICE_MCP_SERVERS",
                "docs=http://127.0.0.1:9000/mcp/, https://tools.example:8443/mcp",
            ),
            ("SLUICE_MCP_TOKENS", "docs=abc"),
            ("SLUICE_CACHE", "off"),
        ])
        .unwrap();
        assert_eq!(
            c.default_tools,
            Some(vec!["calculator".to_owned(), "docs__search".to_owned()])
        );
        assert_eq!(
            c.mcp_servers,
            [
                ("docs".to_owned(), "http://127.0.0.1:9000/mcp".to_owned()),
                (
                    "tools-example".to_owned(),
                    "https://tools.example:8443/mcp".to_owned()
                )
            ]
        );
        assert_eq!(c.mcp_tokens[0].1.expose(), "abc");
        assert!(!c.cache);
        assert_eq!(
            config(&[("SLUICE_TOOLS", "none")]).unwrap().default_tools,
            Some(vec![])
        );
    }

    #[test]
    fn urls_are_logged_without_their_password() {
        assert_eq!(
            redact_url("https://user:pw@llm.example/v1"),
            "https://[redacted]@llm.example/v1"
        );
        assert_eq!(redact_url("http://llm.example/v1"), "http://llm.example/v1");
        assert_eq!(redact_url("http://h/v1?a=b@c"), "http://h/v1?a=b@c");
    }

    #[test]
    fn help_lists_every_variable_and_alias() {
        let help = help_table();
        for v in VARS {
            assert!(help.contains(v.name));
            for a in v.aliases {
                assert!(help.contains(a));
            }
        }
    }
}
