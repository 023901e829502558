//! Prometheus metrics: one struct of handles, registered on an injected registry.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric Sluice exports. Cloning shares the handles.
#[derive(Clone)]
pub struct Metrics {
    /// HTTP requests by route pattern, method and status.
    pub http_requests_total: IntCounterVec,
    /// HTTP request durations by route pattern (for streams: until the
    /// response head is sent).
    pub http_request_duration_seconds: HistogramVec,
    /// Open streaming connections by transport (`ws`, `sse`, `openai`).
    pub live_connections: IntGaugeVec,
    /// Session actors alive on this replica.
    pub live_sessions: IntGauge,
    /// Text chunks received from the provider and streamed to clients.
    pub tokens_streamed_total: IntCounterVec,
    /// Time from a generation's request to its first token.
    pub time_to_first_token_seconds: HistogramVec,
    /// Time between consecutive tokens of a generation, as they arrive
    /// from the provider.
    pub inter_token_seconds: HistogramVec,
    /// 1 while this replica is ready (`/ready` would answer 200), else 0.
    pub ready: IntGauge,
    /// Always 1, labelled with the version running.
    pub build_info: IntGaugeVec,
    /// Generations ended, by finish reason.
    pub generations_total: IntCounterVec,
    /// Provider failures, by error code.
    pub upstream_errors_total: IntCounterVec,
    /// Subscriptions that resumed from a cursor, by transport.
    pub resumes_total: IntCounterVec,
    /// Resumes whose cursor was older than retention.
    pub gaps_total: IntCounter,
    /// Subscribers disconnected for falling too far behind.
    pub slow_consumer_disconnects_total: IntCounter,
    /// `token` events merged into a slow subscriber's queued one.
    pub coalesced_events_total: IntCounter,
    /// Malformed or oversized client input, by transport.
    pub rejected_frames_total: IntCounterVec,
    /// Generations picked up from a replica that died, by outcome
    /// (`continued`, `interrupted`, `restarted`).
    pub takeovers_total: IntCounterVec,
    /// Session leases lost to another replica while held.
    pub lease_losses_total: IntCounter,
    /// Running generations handed to another replica at shutdown.
    pub handovers_total: IntCounter,
    /// Requests forwarded to the replica owning the session, by operation and
    /// outcome (`ok`, `moved`, `error`, `owner_gone`, `no_answer`).
    pub forwarded_requests_total: IntCounterVec,
    /// Subscribers on a replica that does not own their session, closed so
    /// they resume (the bus broke or skipped events).
    pub remote_resyncs_total: IntCounter,
    /// Whether each backend answers (1) or not (0).
    pub backend_up: IntGaugeVec,
    /// Reconnections of each backend's client.
    pub backend_reconnects_total: IntCounterVec,
    /// Connections in each backend's pool, by state (`open`, `in_use`).
    pub backend_pool_connections: IntGaugeVec,
    /// Uploads by outcome (`stored`, `too_large`, `unsupported`, `failed`).
    pub uploads_total: IntCounterVec,
    /// Bytes of uploads stored.
    pub upload_bytes_total: IntCounter,
    /// Files indexed, by outcome (`indexed`, `failed`, `retry`).
    pub indexing_total: IntCounterVec,
    /// Chunks written to the vector index.
    pub chunks_indexed_total: IntCounter,
    /// Searches of the user's files for a generation, by outcome (`hits`,
    /// `empty`, `error`).
    pub retrievals_total: IntCounterVec,
    /// Tool calls run, by outcome (`ok`, `error`, `timeout`, `unknown`).
    pub tool_calls_total: IntCounterVec,
    /// How long tool calls ran.
    pub tool_call_seconds: prometheus::Histogram,
    /// Provider requests of session generations beyond the first (the
    /// agent asking again after its tools answered).
    pub agent_steps_total: IntCounter,
    /// Tools of the MCP servers, by server (as configured), now listed.
    pub mcp_tools: IntGaugeVec,
    /// Response-cache lookups, by path (`session`, `openai`) and outcome
    /// (`hit_local`, `hit_shared`, `miss`).
    pub cache_requests_total: IntCounterVec,
    /// Bytes of answers read from and written to the cache.
    pub cache_bytes_total: IntCounterVec,
    /// Bytes of answers held in this replica's memory.
    pub cache_local_bytes: IntGauge,
    /// Requests refused by a limit, by limit (`requests`, `tokens`,
    /// `generations`, `streams`, `sessions`, `file_bytes`, `provider`).
    pub limited_total: IntCounterVec,
    /// Limit checks that could not ask their backend (and let the request
    /// through).
    pub limit_errors_total: IntCounter,
    /// Provider requests running on this replica, and waiting for a place.
    pub provider_requests: IntGaugeVec,
}

impl Metrics {
    /// Creates the handles and registers them on `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let m = Self {
            http_requests_total: IntCounterVec::new(
                Opts::new("sluice_http_requests_total", "HTTP requests served"),
                &["route", "method", "status"],
            )?,
            http_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_http_request_duration_seconds",
                    "HTTP request duration until the response head",
                )
                .buckets(latency_buckets.clone()),
                &["route"],
            )?,
            live_connections: IntGaugeVec::new(
                Opts::new("sluice_live_connections", "Open streaming connections"),
                &["transport"],
            )?,
            live_sessions: IntGauge::new("sluice_live_sessions", "Session actors alive")?,
            tokens_streamed_total: IntCounterVec::new(
                Opts::new(
                    "sluice_tokens_streamed_total",
                    "Text chunks received from the provider and streamed",
                ),
                &["path"],
            )?,
            time_to_first_token_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_time_to_first_token_seconds",
                    "Time from a generation's request to its first token",
                )
                .buckets(latency_buckets.clone()),
                &["path"],
            )?,
            inter_token_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_inter_token_seconds",
                    "Time between consecutive tokens of a generation",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0,
                ]),
                &["path"],
            )?,
            ready: IntGauge::new(
                "sluice_ready",
                "1 while this replica is ready (GET /ready answers 200), else 0",
            )?,
            build_info: IntGaugeVec::new(
                Opts::new(
                    "sluice_build_info",
                    "Always 1, labelled with the version running",
                ),
                &["version"],
            )?,
            generations_total: IntCounterVec::new(
                Opts::new("sluice_generations_total", "Generations ended"),
                &["finish_reason"],
            )?,
            upstream_errors_total: IntCounterVec::new(
                Opts::new("sluice_upstream_errors_total", "LLM provider failures"),
                &["code"],
            )?,
            resumes_total: IntCounterVec::new(
                Opts::new(
                    "sluice_resumes_total",
                    "Subscriptions resumed from a cursor",
                ),
                &["transport"],
            )?,
            gaps_total: IntCounter::new(
                "sluice_gaps_total",
                "Resumes whose cursor was older than retention",
            )?,
            slow_consumer_disconnects_total: IntCounter::new(
                "sluice_slow_consumer_disconnects_total",
                "Subscribers disconnected for falling too far behind",
            )?,
            coalesced_events_total: IntCounter::new(
                "sluice_coalesced_events_total",
                "Token events merged for slow subscribers",
            )?,
            rejected_frames_total: IntCounterVec::new(
                Opts::new(
                    "sluice_rejected_frames_total",
                    "Malformed or oversized client input",
                ),
                &["transport"],
            )?,
            takeovers_total: IntCounterVec::new(
                Opts::new(
                    "sluice_takeovers_total",
                    "Generations picked up from a replica that died",
                ),
                &["outcome"],
            )?,
            lease_losses_total: IntCounter::new(
                "sluice_lease_losses_total",
                "Session leases lost to another replica while held",
            )?,
            handovers_total: IntCounter::new(
                "sluice_handovers_total",
                "Running generations handed to another replica at shutdown",
            )?,
            forwarded_requests_total: IntCounterVec::new(
                Opts::new(
                    "sluice_forwarded_requests_total",
                    "Requests forwarded to the replica owning the session",
                ),
                &["op", "outcome"],
            )?,
            remote_resyncs_total: IntCounter::new(
                "sluice_remote_resyncs_total",
                "Subscribers of another replica's session told to resume",
            )?,
            backend_up: IntGaugeVec::new(
                Opts::new("sluice_backend_up", "Whether the backend answers"),
                &["backend"],
            )?,
            backend_reconnects_total: IntCounterVec::new(
                Opts::new(
                    "sluice_backend_reconnects_total",
                    "Reconnections of a backend's client",
                ),
                &["backend"],
            )?,
            backend_pool_connections: IntGaugeVec::new(
                Opts::new(
                    "sluice_backend_pool_connections",
                    "Connections in a backend's pool",
                ),
                &["backend", "state"],
            )?,
            uploads_total: IntCounterVec::new(
                Opts::new("sluice_uploads_total", "File uploads, by outcome"),
                &["outcome"],
            )?,
            upload_bytes_total: IntCounter::new(
                "sluice_upload_bytes_total",
                "Bytes of uploaded files stored",
            )?,
            indexing_total: IntCounterVec::new(
                Opts::new("sluice_indexing_total", "Files indexed, by outcome"),
                &["outcome"],
            )?,
            chunks_indexed_total: IntCounter::new(
                "sluice_chunks_indexed_total",
                "Chunks of files' text written to the vector index",
            )?,
            retrievals_total: IntCounterVec::new(
                Opts::new(
                    "sluice_retrievals_total",
                    "Searches of the user's files for a generation, by outcome",
                ),
                &["outcome"],
            )?,
            tool_calls_total: IntCounterVec::new(
                Opts::new("sluice_tool_calls_total", "Tool calls run, by outcome"),
                &["outcome"],
            )?,
            tool_call_seconds: prometheus::Histogram::with_opts(
                HistogramOpts::new("sluice_tool_call_seconds", "How long tool calls ran")
                    .buckets(latency_buckets.clone()),
            )?,
            agent_steps_total: IntCounter::new(
                "sluice_agent_steps_total",
                "Provider requests of session generations after tools answered",
            )?,
            mcp_tools: IntGaugeVec::new(
                Opts::new("sluice_mcp_tools", "Tools listed by each MCP server"),
                &["server"],
            )?,
            cache_requests_total: IntCounterVec::new(
                Opts::new(
                    "sluice_cache_requests_total",
                    "Response-cache lookups, by path and outcome",
                ),
                &["path", "outcome"],
            )?,
            cache_bytes_total: IntCounterVec::new(
                Opts::new(
                    "sluice_cache_bytes_total",
                    "Bytes of answers read from and written to the cache",
                ),
                &["direction"],
            )?,
            cache_local_bytes: IntGauge::new(
                "sluice_cache_local_bytes",
                "Bytes of answers held in this replica's memory",
            )?,
            limited_total: IntCounterVec::new(
                Opts::new(
                    "sluice_limited_total",
                    "Requests refused by a limit, by limit",
                ),
                &["limit"],
            )?,
            limit_errors_total: IntCounter::new(
                "sluice_limit_errors_total",
                "Limit checks whose backend failed (the request went through)",
            )?,
            provider_requests: IntGaugeVec::new(
                Opts::new(
                    "sluice_provider_requests",
                    "Provider requests on this replica, by state (running, waiting)",
                ),
                &["state"],
            )?,
        };
        registry.register(Box::new(m.http_requests_total.clone()))?;
        registry.register(Box::new(m.http_request_duration_seconds.clone()))?;
        registry.register(Box::new(m.live_connections.clone()))?;
        registry.register(Box::new(m.live_sessions.clone()))?;
        registry.register(Box::new(m.tokens_streamed_total.clone()))?;
        registry.register(Box::new(m.time_to_first_token_seconds.clone()))?;
        registry.register(Box::new(m.inter_token_seconds.clone()))?;
        registry.register(Box::new(m.ready.clone()))?;
        registry.register(Box::new(m.build_info.clone()))?;
        registry.register(Box::new(m.generations_total.clone()))?;
        registry.register(Box::new(m.upstream_errors_total.clone()))?;
        registry.register(Box::new(m.resumes_total.clone()))?;
        registry.register(Box::new(m.gaps_total.clone()))?;
        registry.register(Box::new(m.slow_consumer_disconnects_total.clone()))?;
        registry.register(Box::new(m.coalesced_events_total.clone()))?;
        registry.register(Box::new(m.rejected_frames_total.clone()))?;
        registry.register(Box::new(m.takeovers_total.clone()))?;
        registry.register(Box::new(m.lease_losses_total.clone()))?;
        registry.register(Box::new(m.handovers_total.clone()))?;
        registry.register(Box::new(m.forwarded_requests_total.clone()))?;
        registry.register(Box::new(m.remote_resyncs_total.clone()))?;
        registry.register(Box::new(m.backend_up.clone()))?;
        registry.register(Box::new(m.backend_reconnects_total.clone()))?;
        registry.register(Box::new(m.backend_pool_connections.clone()))?;
        registry.register(Box::new(m.uploads_total.clone()))?;
        registry.register(Box::new(m.upload_bytes_total.clone()))?;
        registry.register(Box::new(m.indexing_total.clone()))?;
        registry.register(Box::new(m.chunks_indexed_total.clone()))?;
        registry.register(Box::new(m.retrievals_total.clone()))?;
        registry.register(Box::new(m.tool_calls_total.clone()))?;
        registry.register(Box::new(m.tool_call_seconds.clone()))?;
        registry.register(Box::new(m.agent_steps_total.clone()))?;
        registry.register(Box::new(m.mcp_tools.clone()))?;
        registry.register(Box::new(m.cache_requests_total.clone()))?;
        registry.register(Box::new(m.cache_bytes_total.clone()))?;
        registry.register(Box::new(m.cache_local_bytes.clone()))?;
        registry.register(Box::new(m.limited_total.clone()))?;
        registry.register(Box::new(m.limit_errors_total.clone()))?;
        registry.register(Box::new(m.provider_requests.clone()))?;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.initialize_known_labels();
        Ok(m)
    }

    /// Creates every series whose labels come from a closed set, at zero,
    /// so that a fresh replica exports them all: `rate()` over a counter
    /// sees its first increment, and dashboards and alerts find every
    /// metric they name from the first scrape.
    fn initialize_known_labels(&self) {
        const PATHS: &[&str] = &["session", "openai"];
        for transport in ["ws", "sse", "openai"] {
            self.live_connections.with_label_values(&[transport]);
        }
        for transport in ["ws", "sse"] {
            self.resumes_total.with_label_values(&[transport]);
        }
        self.rejected_frames_total.with_label_values(&["ws"]);
        for path in PATHS {
            self.tokens_streamed_total.with_label_values(&[path]);
            self.time_to_first_token_seconds.with_label_values(&[path]);
            self.inter_token_seconds.with_label_values(&[path]);
            for outcome in ["hit_local", "hit_shared", "miss"] {
                self.cache_requests_total
                    .with_label_values(&[path, outcome]);
            }
        }
        for reason in ["stop", "length", "cancelled", "error", "interrupted"] {
            self.generations_total.with_label_values(&[reason]);
        }
        for code in ["upstream_error", "upstream_timeout", "overloaded"] {
            self.upstream_errors_total.with_label_values(&[code]);
        }
        for outcome in ["continued", "interrupted", "restarted"] {
            self.takeovers_total.with_label_values(&[outcome]);
        }
        for op in ["send", "cancel", "get", "join", "remove"] {
            for outcome in ["ok", "moved", "error", "owner_gone", "no_answer"] {
                self.forwarded_requests_total
                    .with_label_values(&[op, outcome]);
            }
        }
        for outcome in ["stored", "too_large", "unsupported", "failed"] {
            self.uploads_total.with_label_values(&[outcome]);
        }
        for outcome in ["indexed", "failed", "retry"] {
            self.indexing_total.with_label_values(&[outcome]);
        }
        for outcome in ["hits", "empty", "error"] {
            self.retrievals_total.with_label_values(&[outcome]);
        }
        for outcome in ["ok", "error", "timeout", "unknown"] {
            self.tool_calls_total.with_label_values(&[outcome]);
        }
        for direction in ["read", "written"] {
            self.cache_bytes_total.with_label_values(&[direction]);
        }
        for limit in [
            "requests",
            "tokens",
            "generations",
            "streams",
            "sessions",
            "file_bytes",
            "provider",
        ] {
            self.limited_total.with_label_values(&[limit]);
        }
        for state in ["running", "waiting"] {
            self.provider_requests.with_label_values(&[state]);
        }
    }

    /// Handles on a private registry, for tests.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("fresh registry has no name clashes")
    }
}

/// Keeps a gauge raised while alive; lowers it on drop, however the holder ends.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    /// Raises `gauge` by one until the guard drops.
    pub fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
