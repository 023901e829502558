//! Configuration from the environment (12-factor).
//!
//! [`VARS`] is the single table of every variable: the parser reads it and
//! `--help` prints it, so the two cannot drift apart. Each variable may have
//! aliases (the seed deployment's names); the `SLUICE_` name wins.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_actors::secret::Secret;

/// One environment variable.
pub struct Var {
    /// The canonical name.
    pub name: &'static str,
    /// Other names accepted for it.
    pub aliases: &'static [&'static str],
    /// The default, as shown in `--help`.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
    /// False for variables of backends this build does not have yet: setting
    /// one is a start-up error rather than silently ignored.
    pub supported: bool,
}

/// Every variable Sluice reads.
pub const VARS: &[Var] = &[
    var(
        "SLUICE_ADDR",
        &[],
        "127.0.0.1:8080",
        "listen address (host:port)",
    ),
    var(
        "SLUICE_DATA_DIR",
        &[],
        "./data",
        "directory of the embedded backends",
    ),
    var(
        "SLUICE_LLM_BASE_URL",
        &[],
        "",
        "OpenAI-compatible provider base URL ending in /v1; unset: built-in demo model",
    ),
    var(
        "SLUICE_LLM_API_KEY",
        &["ARK_API_KEY"],
        "",
        "provider API key (sent as Bearer)",
    ),
    var(
        "SLUICE_LLM_MODEL",
        &["OPENAI_MODEL"],
        "sluice-demo / gpt-4o-mini",
        "default model; a model named by a session or request passes through unchanged",
    ),
    var(
        "SLUICE_LLM_TEMPERATURE",
        &["OPENAI_TEMPERATURE"],
        "",
        "temperature sent with session generations",
    ),
    var(
        "SLUICE_REQUEST_TIMEOUT_SECONDS",
        &["REQUEST_TIMEOUT"],
        "60",
        "time allowed for the provider's first token and between tokens",
    ),
    var(
        "SLUICE_JWT_SECRET",
        &["JWT_SECRET"],
        "",
        "HS256 secret; unset: local mode (user `local`, loopback only)",
    ),
    var(
        "SLUICE_REPLICA_ID",
        &[],
        "<hostname>:<port>",
        "this replica's name, shown in hello.replica",
    ),
    var(
        "SLUICE_METRICS_ADDR",
        &["METRICS_PORT"],
        "",
        "second listener for /metrics (METRICS_PORT=N means 0.0.0.0:N)",
    ),
    var(
        "SLUICE_EVENT_RETENTION",
        &[],
        "10000",
        "events kept per session for resume",
    ),
    var(
        "SLUICE_EVENT_MEMORY_BYTES",
        &[],
        "268435456",
        "events the embedded log (no Redis) keeps in all, in bytes; the least recently active sessions' go first",
    ),
    var(
        "SLUICE_SUBSCRIBER_MAX_BYTES",
        &[],
        "4194304",
        "bytes queued for one slow client before it is disconnected (it then resumes)",
    ),
    var(
        "SLUICE_SESSION_IDLE_SECONDS",
        &["CACHE_TTL"],
        "300",
        "an idle session actor is evicted from memory after this",
    ),
    var(
        "SLUICE_SHUTDOWN_GRACE_SECONDS",
        &[],
        "30",
        "on SIGTERM, running generations may finish within this",
    ),
    var("SLUICE_WORKERS", &[], "<cores>", "HTTP worker threads"),
    var(
        "SLUICE_DEMO_TOKEN_DELAY_MS",
        &[],
        "40",
        "pause between the demo model's words",
    ),
    var(
        "SLUICE_LOG_LEVEL",
        &["LOG_LEVEL"],
        "info",
        "tracing filter (e.g. info, sluice=debug)",
    ),
    var(
        "SLUICE_LOG_FORMAT",
        &[],
        "pretty",
        "log format: pretty or json",
    ),
    var(
        "SLUICE_REDIS_URL",
        &["REDIS_URL"],
        "",
        "Redis (redis://...) for the event log, the bus between replicas and session leases; \
         unset: in-process, one replica",
    ),
    var(
        "SLUICE_LEASE_SECONDS",
        &[],
        "10",
        "with Redis: how long a replica's hold on a session outlives the replica (takeover delay)",
    ),
    var(
        "SLUICE_POSTGRES_URL",
        &["POSTGRES_URL"],
        "",
        "PostgreSQL session store (postgres://...); unset: the embedded redb store in SLUICE_DATA_DIR",
    ),
    unsupported("SLUICE_S3_ENDPOINT", &[], "S3/MinIO endpoint for uploads"),
    unsupported("SLUICE_S3_BUCKET", &[], "S3 bucket"),
    unsupported("SLUICE_S3_ACCESS_KEY", &[], "S3 access key"),
    unsupported("SLUICE_S3_SECRET_KEY", &[], "S3 secret key"),
    unsupported("SLUICE_S3_REGION", &[], "S3 region"),
    unsupported(
        "SLUICE_CHROMA_URL",
        &["CHROMA_HOST", "CHROMA_PORT"],
        "Chroma vector index",
    ),
    unsupported("SLUICE_EMBEDDING_MODEL", &[], "embeddings model"),
    unsupported("SLUICE_MAX_UPLOAD_BYTES", &[], "upload size limit"),
    unsupported("SLUICE_RATE_LIMIT_RPM", &[], "per-user requests per minute"),
    unsupported("SLUICE_RATE_LIMIT_TPM", &[], "per-user tokens per minute"),
    unsupported(
        "SLUICE_MAX_CONCURRENT_REQUESTS",
        &["MAX_CONCURRENT_REQUESTS"],
        "concurrency limit",
    ),
];

const fn var(
    name: &'static str,
    aliases: &'static [&'static str],
    default: &'static str,
    help: &'static str,
) -> Var {
    Var {
        name,
        aliases,
        default,
        help,
        supported: true,
    }
}

const fn unsupported(
    name: &'static str,
    aliases: &'static [&'static str],
    help: &'static str,
) -> Var {
    Var {
        name,
        aliases,
        default: "",
        help,
        supported: false,
    }
}

/// The `--help` section listing every variable.
pub fn help_table() -> String {
    let mut out = String::from("Environment variables (aliases in brackets):\n");
    for v in VARS {
        let aliases = if v.aliases.is_empty() {
            String::new()
        } else {
            format!(" [{}]", v.aliases.join(", "))
        };
        let default = if v.default.is_empty() {
            String::new()
        } else {
            format!(" (default: {})", v.default)
        };
        let status = if v.supported {
            ""
        } else {
            " (not in this version: setting it is an error)"
        };
        out.push_str(&format!(
            "  {}{aliases}\n      {}{default}{status}\n",
            v.name, v.help
        ));
    }
    out
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
    /// Default model.
    pub llm_model: String,
    /// Temperature for session generations.
    pub llm_temperature: Option<f64>,
    /// Provider first-token and inter-token timeout.
    pub request_timeout: Duration,
    /// JWT secret; `None` is local mode.
    pub jwt_secret: Option<Secret>,
    /// This replica's name; `None` means `<hostname>:<bound port>`.
    pub replica_id: Option<String>,
    /// Second listener for `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
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
    /// HTTP workers.
    pub workers: usize,
    /// Demo model pace.
    pub demo_token_delay: Duration,
    /// Tracing filter.
    pub log_level: String,
    /// Whether logs are JSON.
    pub log_json: bool,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |name: &str| -> Option<String> {
            let v = VARS
                .iter()
                .find(|v| v.name == name)
                .expect("variable is in VARS");
            std::iter::once(v.name)
                .chain(v.aliases.iter().copied())
                .find_map(|n| lookup(n).filter(|value| !value.trim().is_empty()))
        };
        for v in VARS.iter().filter(|v| !v.supported) {
            if let Some(name) = std::iter::once(v.name)
                .chain(v.aliases.iter().copied())
                .find(|n| lookup(n).is_some_and(|value| !value.trim().is_empty()))
            {
                bail!(
                    "{name} is set, but this version of Sluice has no {} yet; unset it",
                    v.help
                );
            }
        }
        fn parse<T: std::str::FromStr>(
            name: &str,
            value: Option<String>,
            default: T,
        ) -> anyhow::Result<T>
        where
            T::Err: std::fmt::Display,
        {
            match value {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
            }
        }
        let addr_text = get("SLUICE_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
        let addr = resolve(&addr_text).with_context(|| format!("SLUICE_ADDR={addr_text:?}"))?;
        let metrics_addr = match (lookup("SLUICE_METRICS_ADDR"), lookup("METRICS_PORT")) {
            (Some(a), _) if !a.trim().is_empty() => {
                Some(resolve(&a).with_context(|| format!("SLUICE_METRICS_ADDR={a:?}"))?)
            }
            (_, Some(port)) if !port.trim().is_empty() => {
                let port: u16 = port
                    .trim()
                    .parse()
                    .with_context(|| format!("METRICS_PORT={port:?}"))?;
                Some(SocketAddr::from(([0, 0, 0, 0], port)))
            }
            _ => None,
        };
        let llm_base_url =
            get("SLUICE_LLM_BASE_URL").map(|u| u.trim().trim_end_matches('/').to_owned());
        if let Some(url) = &llm_base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("SLUICE_LLM_BASE_URL must be an http(s) URL, got {url:?}");
        }
        let default_model = if llm_base_url.is_some() {
            "gpt-4o-mini"
        } else {
            sluice_actors::llm::demo::DEMO_MODEL
        };
        let log_format = get("SLUICE_LOG_FORMAT").unwrap_or_else(|| "pretty".into());
        let log_json = match log_format.as_str() {
            "json" => true,
            "pretty" => false,
            other => bail!("SLUICE_LOG_FORMAT must be json or pretty, got {other:?}"),
        };
        let workers = parse("SLUICE_WORKERS", get("SLUICE_WORKERS"), default_workers())?;
        let config = Self {
            addr,
            data_dir: PathBuf::from(get("SLUICE_DATA_DIR").unwrap_or_else(|| "./data".into())),
            llm_api_key: get("SLUICE_LLM_API_KEY").map(Secret::new),
            postgres_url: get("SLUICE_POSTGRES_URL").map(Secret::new),
            redis_url: get("SLUICE_REDIS_URL").map(Secret::new),
            lease_ttl: Duration::from_secs_f64(parse(
                "SLUICE_LEASE_SECONDS",
                get("SLUICE_LEASE_SECONDS"),
                10.0,
            )?),
            llm_model: get("SLUICE_LLM_MODEL").unwrap_or_else(|| default_model.into()),
            llm_temperature: get("SLUICE_LLM_TEMPERATURE")
                .map(|t| {
                    t.trim()
                        .parse()
                        .with_context(|| format!("SLUICE_LLM_TEMPERATURE={t:?}"))
                })
                .transpose()?,
            llm_base_url,
            request_timeout: Duration::from_secs_f64(parse(
                "SLUICE_REQUEST_TIMEOUT_SECONDS",
                get("SLUICE_REQUEST_TIMEOUT_SECONDS"),
                60.0,
            )?),
            jwt_secret: get("SLUICE_JWT_SECRET").map(Secret::new),
            replica_id: get("SLUICE_REPLICA_ID"),
            metrics_addr,
            event_retention: parse(
                "SLUICE_EVENT_RETENTION",
                get("SLUICE_EVENT_RETENTION"),
                10_000,
            )?,
            event_memory_bytes: parse(
                "SLUICE_EVENT_MEMORY_BYTES",
                get("SLUICE_EVENT_MEMORY_BYTES"),
                256 * 1024 * 1024,
            )?,
            subscriber_max_bytes: parse(
                "SLUICE_SUBSCRIBER_MAX_BYTES",
                get("SLUICE_SUBSCRIBER_MAX_BYTES"),
                4 * 1024 * 1024,
            )?,
            session_idle: Duration::from_secs(parse(
                "SLUICE_SESSION_IDLE_SECONDS",
                get("SLUICE_SESSION_IDLE_SECONDS"),
                300,
            )?),
            shutdown_grace: Duration::from_secs(parse(
                "SLUICE_SHUTDOWN_GRACE_SECONDS",
                get("SLUICE_SHUTDOWN_GRACE_SECONDS"),
                30,
            )?),
            workers,
            demo_token_delay: Duration::from_millis(parse(
                "SLUICE_DEMO_TOKEN_DELAY_MS",
                get("SLUICE_DEMO_TOKEN_DELAY_MS"),
                40,
            )?),
            log_level: get("SLUICE_LOG_LEVEL").unwrap_or_else(|| "info".into()),
            log_json,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks rules that span variables.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.request_timeout.is_zero() {
            bail!("SLUICE_REQUEST_TIMEOUT_SECONDS must be above 0");
        }
        if self.event_retention == 0 {
            bail!("SLUICE_EVENT_RETENTION must be above 0");
        }
        if self.event_memory_bytes < 1024 * 1024 {
            bail!("SLUICE_EVENT_MEMORY_BYTES must be at least 1048576 (1 MiB)");
        }
        if self.subscriber_max_bytes < 1024 {
            bail!("SLUICE_SUBSCRIBER_MAX_BYTES must be at least 1024");
        }
        if self.workers == 0 {
            bail!("SLUICE_WORKERS must be above 0");
        }
        if !(0.3..=3600.0).contains(&self.lease_ttl.as_secs_f64()) {
            bail!("SLUICE_LEASE_SECONDS must be between 0.3 and 3600");
        }
        if let Some(url) = &self.redis_url
            && !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://"))
        {
            bail!("SLUICE_REDIS_URL must be a redis:// or rediss:// URL");
        }
        if self.jwt_secret.is_none() && !self.addr.ip().is_loopback() {
            bail!(
                "refusing to listen on {} in local mode: without SLUICE_JWT_SECRET every request \
                 is user `local`, so only a loopback address is allowed; set SLUICE_JWT_SECRET or \
                 SLUICE_ADDR=127.0.0.1:PORT",
                self.addr
            );
        }
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < 16
        {
            bail!("SLUICE_JWT_SECRET must be at least 16 bytes");
        }
        Ok(())
    }
}

fn resolve(text: &str) -> anyhow::Result<SocketAddr> {
    text.trim()
        .to_socket_addrs()?
        .next()
        .context("address resolves to nothing")
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
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

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
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
        assert_eq!(c.llm_model, "sluice-demo");
        assert!(c.jwt_secret.is_none());
    }

    #[test]
    fn aliases_apply_and_canonical_names_win() {
        let c = config(&[
            ("ARK_API_KEY", "k1"),
            ("OPENAI_MODEL", "m1"),
            ("REQUEST_TIMEOUT", "5"),
        ])
        .unwrap();
        assert_eq!(c.llm_api_key.unwrap().expose(), "k1");
        assert_eq!(c.llm_model, "m1");
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        let c = config(&[("OPENAI_MODEL", "m1"), ("SLUICE_LLM_MODEL", "m2")]).unwrap();
        assert_eq!(c.llm_model, "m2");
        let c = config(&[("METRICS_PORT", "9100")]).unwrap();
        assert_eq!(c.metrics_addr.unwrap().to_string(), "0.0.0.0:9100");
        let c = config(&[("REDIS_URL", "redis://127.0.0.1:6390")]).unwrap();
        assert_eq!(c.redis_url.unwrap().expose(), "redis://127.0.0.1:6390");
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        let c = config(&[("POSTGRES_URL", "postgres://u:p@db/sluice")]).unwrap();
        assert_eq!(c.postgres_url.unwrap().expose(), "postgres://u:p@db/sluice");
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

    #[test]
    fn bad_values_and_unsupported_backends_are_errors() {
        for vars in [
            &[("SLUICE_EVENT_RETENTION", "lots")][..],
            &[("SLUICE_EVENT_MEMORY_BYTES", "1000")],
            &[("SLUICE_LLM_BASE_URL", "ftp://x")],
            &[("SLUICE_LOG_FORMAT", "xml")],
            &[("SLUICE_S3_BUCKET", "b")],
            &[("REDIS_URL", "http://127.0.0.1")],
            &[("SLUICE_LEASE_SECONDS", "0")],
            &[("SLUICE_SESSION_IDLE_SECONDS", "-1")],
            &[("SLUICE_JWT_SECRET", "short")],
        ] {
            assert!(config(vars).is_err(), "{vars:?}");
        }
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
