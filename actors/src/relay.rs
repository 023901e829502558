//! [`Relay`]: the OpenAI-compatible API's way to the provider, beside
//! [`Sessions`](crate::Sessions) on the session layer's side, so that what
//! wraps a provider call (defaults, metrics, and the cache and limits to
//! come) is written once, here, not in the web layer.
//!
//! A request is relayed unchanged but for a missing model; chunks come back
//! as the provider's JSON text, for the web layer to frame byte for byte.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::BoxStream;
use prometheus::{Histogram, IntCounter};
use sluice_backends::llm::{CHUNK_BATCHING, LlmChunk, LlmError, LlmProvider, ready_batches};
use sluice_protocol::openai::ChatRequest;

use crate::cache::{Cache, Recorder};
use crate::error::SessionError;
use crate::limits::{Limits, SlotGuard, TokenMeter};
use crate::metrics::{GaugeGuard, Metrics};
use sluice_backends::responses::ResponseStore;

/// The relay. Cloning is cheap.
#[derive(Clone)]
pub struct Relay {
    llm: Arc<dyn LlmProvider>,
    pub(crate) default_model: String,
    /// The model `/v1/embeddings` asks for when a request names none.
    embedding_model: Option<String>,
    cache: Cache,
    metrics: Metrics,
    /// Where stored responses live (`/v1/responses`).
    pub(crate) responses: Option<Arc<dyn ResponseStore>>,
    /// What each user may use.
    limits: Limits,
}

/// Most inputs in one `/v1/embeddings` request (OpenAI's own limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// A relayed chat completion, and whether the cache answered it.
pub struct Relayed {
    /// The completion.
    pub completion: Completion,
    /// It was replayed from the response cache.
    pub cached: bool,
}

/// A relayed chat completion.
pub enum Completion {
    /// `stream: false`: the provider's `chat.completion` object.
    Whole(serde_json::Value),
    /// `stream: true`: the chunks, from the first.
    Stream(Box<ChunkStream>),
}

/// The chunks of a streamed completion, in batches of what arrived
/// together. Holding it counts as an open `openai` connection.
pub struct ChunkStream {
    first: Option<Vec<Result<String, SessionError>>>,
    rest: BoxStream<'static, Vec<Result<LlmChunk, LlmError>>>,
    tokens: IntCounter,
    /// When the latest token arrived, for the time between tokens.
    last_token: Option<Instant>,
    inter_token: Histogram,
    metrics: Metrics,
    /// Where a cacheable answer is recorded, and its key.
    recording: Option<(String, Recorder, Cache)>,
    /// The user's generation slot and token count (none for a cached
    /// answer).
    charged: Option<(Option<SlotGuard>, TokenMeter)>,
    _live: GaugeGuard,
}

impl ChunkStream {
    /// The next batch: chunk JSON, or an error that ends the stream (it is
    /// the batch's last item). `None` once the provider has finished.
    pub async fn next_batch(&mut self) -> Option<Vec<Result<String, SessionError>>> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let Some(batch) = self.rest.next().await else {
            // The provider finished: a recorded answer is cached.
            if let Some((key, recorder, cache)) = self.recording.take()
                && let Some(recorded) = recorder.finish()
            {
                cache.store(key, recorded).await;
            }
            return None;
        };
        Some(
            batch
                .into_iter()
                .map(|item| match item {
                    Ok(chunk) => {
                        let text = chunk.view.content().is_some_and(|c| !c.is_empty());
                        if text {
                            self.tokens.inc();
                            let now = Instant::now();
                            if let Some(last) = self.last_token.replace(now) {
                                self.inter_token.observe((now - last).as_secs_f64());
                            }
                        }
                        if let Some((_, meter)) = &mut self.charged {
                            meter.text(delta_bytes(&chunk.view));
                            if let Some(usage) = chunk.view.usage {
                                meter.reported(usage.completion_tokens);
                            }
                        }
                        if let Some((_, recorder, _)) = &mut self.recording {
                            recorder.take(&chunk);
                        }
                        Ok(chunk.raw)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "provider failed mid-stream (OpenAI route)");
                        count_error(&self.metrics, &e);
                        self.recording = None;
                        Err(e.into())
                    }
                })
                .collect(),
        )
    }
}

/// The bytes of generated text in a chunk: its text and its tool calls'
/// arguments (what the provider charges as output).
fn delta_bytes(view: &sluice_protocol::openai::ChunkView) -> usize {
    let text = view.content().map_or(0, str::len);
    let calls: usize = view
        .tool_calls()
        .iter()
        .filter_map(|c| c.function.as_ref()?.arguments.as_ref())
        .map(String::len)
        .sum();
    text + calls
}

fn count_error(metrics: &Metrics, e: &LlmError) {
    metrics
        .upstream_errors_total
        .with_label_values(&[e.code().as_str()])
        .inc();
}

impl Relay {
    /// A relay to `llm`, with `default_model` for requests that name none.
    pub fn new(
        llm: Arc<dyn LlmProvider>,
        default_model: String,
        cache: Cache,
        metrics: Metrics,
    ) -> Self {
        Self {
            llm,
            default_model,
            embedding_model: None,
            cache,
            limits: Limits::unlimited(metrics.clone()),
            metrics,
            responses: None,
        }
    }

    /// What each user may use.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The model `/v1/embeddings` asks for when a request names none.
    pub fn with_embedding_model(mut self, model: Option<String>) -> Self {
        self.embedding_model = model;
        self
    }

    /// Relays an OpenAI `/v1/embeddings` request (an object with `input`:
    /// a string or up to [`MAX_EMBEDDING_INPUTS`] of them, or token
    /// arrays), naming the configured embedding model if it names none.
    /// Without a provider, the local embedder answers (a request without
    /// `model` still needs `SLUICE_EMBEDDING_MODEL`).
    pub async fn embeddings(
        &self,
        user_id: &str,
        mut request: serde_json::Value,
    ) -> Result<serde_json::Value, SessionError> {
        let Some(fields) = request.as_object_mut() else {
            return Err(SessionError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        };
        let inputs = match fields.get("input") {
            Some(serde_json::Value::String(_)) => 1,
            Some(serde_json::Value::Array(items)) if !items.is_empty() => items.len(),
            _ => {
                return Err(SessionError::BadRequest(
                    "input must be a string or a non-empty array".into(),
                ));
            }
        };
        if inputs > MAX_EMBEDDING_INPUTS {
            return Err(SessionError::BadRequest(format!(
                "input holds at most {MAX_EMBEDDING_INPUTS} items"
            )));
        }
        match fields.get("model") {
            Some(serde_json::Value::String(model)) if !model.is_empty() => {}
            None => {
                let model = self.embedding_model.clone().ok_or_else(|| {
                    SessionError::BadRequest(
                        "model is required (no SLUICE_EMBEDDING_MODEL is set)".into(),
                    )
                })?;
                fields.insert("model".into(), model.into());
            }
            Some(_) => {
                return Err(SessionError::BadRequest(
                    "model must be a non-empty string".into(),
                ));
            }
        }
        // An answer of 2,048 vectors is megabytes: it counts as one of the
        // user's generations at once, so one user cannot hold many.
        let _slot = self.limits.relay_generation(user_id).await?;
        self.llm.embeddings(request).await.map_err(|e| {
            tracing::warn!(error = %e, "provider failed (embeddings)");
            count_error(&self.metrics, &e);
            e.into()
        })
    }

    /// Relays a chat completion. A streamed one waits for the provider's
    /// first chunk, so a provider that fails before it is an error here,
    /// which the web layer answers with a real HTTP status that SDKs raise.
    /// A deterministic request may be answered from the cache, as it would
    /// have been by the provider.
    pub async fn chat(
        &self,
        user_id: &str,
        mut request: ChatRequest,
    ) -> Result<Relayed, SessionError> {
        if request.model.as_deref().is_none_or(str::is_empty) {
            request.model = Some(self.default_model.clone());
        }
        let key = self.cache.key(user_id, &request);
        // An answer stored without usage cannot answer a client that wants
        // it (a whole completion, or a stream asking for it): ask again.
        let wants_usage =
            !request.stream || request.stream_options.is_some_and(|o| o.include_usage);
        let hit = match &key {
            Some(key) => self
                .cache
                .lookup(key, "openai")
                .await
                .filter(|answer| answer.usage.is_some() || !wants_usage),
            None => None,
        };
        if let Some(answer) = hit {
            let id = format!("chatcmpl-{}", crate::ids::new_id());
            let created = crate::ids::now_unix();
            let completion = if request.stream {
                let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
                let chunks = crate::cache::replay(&answer, &id, created, include_usage);
                Completion::Stream(Box::new(self.chunk_stream(
                    chunks.into_iter().map(|c| Ok(c.raw)).collect(),
                    futures::stream::empty().boxed(),
                    None,
                    None,
                )))
            } else {
                Completion::Whole(crate::cache::whole(&answer, &id, created))
            };
            return Ok(Relayed {
                completion,
                cached: true,
            });
        }
        let relayed = |completion| Relayed {
            completion,
            cached: false,
        };
        let slot = self.limits.relay_generation(user_id).await?;
        let mut meter = self.limits.meter(user_id);
        if !request.stream {
            let completion = self.llm.complete(request).await.inspect_err(|e| {
                tracing::warn!(error = %e, "provider failed (OpenAI route)");
                count_error(&self.metrics, e);
            })?;
            match completion
                .pointer("/usage/completion_tokens")
                .and_then(serde_json::Value::as_u64)
            {
                Some(tokens) => meter.reported(tokens),
                // No usage: the answer's text and calls, by their length.
                None => meter.text(
                    completion
                        .pointer("/choices/0/message")
                        .map_or(0, |m| m.to_string().len()),
                ),
            }
            drop((slot, meter));
            if let Some(key) = key
                && let Some(recorded) = Recorder::from_completion(&completion)
            {
                self.cache.store(key, recorded).await;
            }
            return Ok(relayed(Completion::Whole(completion)));
        }
        let started = Instant::now();
        let mut upstream = self.llm.stream(request);
        let first = match upstream.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "provider failed before the first chunk (OpenAI route)");
                count_error(&self.metrics, &e);
                return Err(e.into());
            }
            None => {
                return Err(
                    LlmError::Upstream("provider ended the stream without a chunk".into()).into(),
                );
            }
        };
        let metrics = &self.metrics;
        metrics
            .time_to_first_token_seconds
            .with_label_values(&["openai"])
            .observe(started.elapsed().as_secs_f64());
        let first_text = first.view.content().is_some_and(|c| !c.is_empty());
        if first_text {
            metrics
                .tokens_streamed_total
                .with_label_values(&["openai"])
                .inc();
        }
        meter.text(delta_bytes(&first.view));
        let recording = key.map(|key| {
            let mut recorder = Recorder::default();
            recorder.take(&first);
            (key, recorder, self.cache.clone())
        });
        // Chunks that arrive together leave in one write.
        let rest = ready_batches(upstream, CHUNK_BATCHING);
        let mut stream =
            self.chunk_stream(vec![Ok(first.raw)], rest, recording, Some((slot, meter)));
        stream.last_token = first_text.then(Instant::now);
        Ok(relayed(Completion::Stream(Box::new(stream))))
    }

    fn chunk_stream(
        &self,
        first: Vec<Result<String, SessionError>>,
        rest: BoxStream<'static, Vec<Result<LlmChunk, LlmError>>>,
        recording: Option<(String, Recorder, Cache)>,
        charged: Option<(Option<SlotGuard>, TokenMeter)>,
    ) -> ChunkStream {
        let metrics = &self.metrics;
        ChunkStream {
            first: Some(first),
            rest,
            tokens: metrics.tokens_streamed_total.with_label_values(&["openai"]),
            last_token: None,
            inter_token: metrics.inter_token_seconds.with_label_values(&["openai"]),
            metrics: metrics.clone(),
            recording,
            charged,
            _live: GaugeGuard::new(metrics.live_connections.with_label_values(&["openai"])),
        }
    }

    /// The models `GET /v1/models` lists.
    pub fn models(&self) -> Vec<String> {
        self.llm.models()
    }
}
