//! [`Cache`]: answers to deterministic requests, reused. Session
//! generations and the OpenAI-compatible routes use the same rules:
//!
//! - **Deterministic** means `temperature` 0, no `tools`, one choice and
//!   no `logprobs`; anything else always asks the provider.
//! - **The key** is a SHA-256 of the model and the whole request as sent
//!   (messages including the retrieved passages and image parts, and every
//!   option), minus how it is delivered (`stream`, `stream_options`), and
//!   of the user unless the scope is global: one user never reads
//!   another's answers.
//! - **A hit** streams as the provider would have: the same events for a
//!   session (with `generation_end.cached`), the same chunks on the
//!   OpenAI routes.
//! - **A miss** is recorded as it streams and stored once it ended
//!   normally (`stop` or `length`, no tool calls, no error).

use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_backends::cache::{CachedAnswer, Found, ResponseCache};
use sluice_backends::llm::LlmChunk;
use sluice_protocol::Usage;
use sluice_protocol::openai::{ChatRequest, ChunkView, chunk, usage_chunk};

use crate::metrics::Metrics;

/// Whose answers a request may reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The same user's only.
    User,
    /// Anyone's (for a deployment whose users share one knowledge base).
    Global,
}

/// The cache as the session layer uses it. Cloning shares it.
#[derive(Clone)]
pub struct Cache {
    store: Option<ResponseCache>,
    scope: Scope,
    metrics: Metrics,
}

/// Bytes of text a replayed chunk carries at most.
const REPLAY_CHUNK_BYTES: usize = 64;

impl Cache {
    /// A cache over `store`; `None` turns caching off.
    pub fn new(store: Option<ResponseCache>, scope: Scope, metrics: Metrics) -> Self {
        Self {
            store,
            scope,
            metrics,
        }
    }

    /// The key of `request` for `user_id`, if it may be cached at all.
    pub fn key(&self, user_id: &str, request: &ChatRequest) -> Option<String> {
        self.store.as_ref()?;
        if !deterministic(request) {
            return None;
        }
        let mut options = request.extra.clone();
        options.remove("user");
        let material = json!({
            "user": match self.scope { Scope::User => user_id, Scope::Global => "" },
            "model": request.model,
            "messages": request.messages,
            "options": options,
        });
        let digest = Sha256::digest(serde_json::to_vec(&material).expect("JSON serialises"));
        Some(sluice_backends::ids::hex(&digest))
    }

    /// The answer cached under `key`, counted as a hit or a miss for `path`
    /// (`session`, `openai`).
    pub async fn lookup(&self, key: &str, path: &str) -> Option<Arc<CachedAnswer>> {
        let store = self.store.as_ref()?;
        let (answer, found) = store.get(key).await;
        let outcome = match found {
            Found::Local => "hit_local",
            Found::Shared => "hit_shared",
            Found::Miss => "miss",
        };
        self.metrics
            .cache_requests_total
            .with_label_values(&[path, outcome])
            .inc();
        if let Some(answer) = &answer {
            self.metrics
                .cache_bytes_total
                .with_label_values(&["read"])
                .inc_by(answer.content.len() as u64);
        }
        answer
    }

    /// Stores a recorded answer: in this replica's memory at once, then in
    /// Redis (the returned future, bounded in time; a failure is logged).
    pub fn store(
        &self,
        key: String,
        recorded: Recorded,
    ) -> impl Future<Output = ()> + Send + 'static {
        let remembered = self.store.clone().and_then(|store| {
            let answer = store.remember(
                &key,
                recorded.content,
                &recorded.finish_reason,
                recorded.usage,
                &recorded.model,
            )?;
            Some((store, answer))
        });
        let metrics = self.metrics.clone();
        async move {
            let Some((store, answer)) = remembered else {
                return;
            };
            match store.share(&key, &answer).await {
                Ok(bytes) => {
                    metrics
                        .cache_bytes_total
                        .with_label_values(&["written"])
                        .inc_by(bytes as u64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "an answer was not shared with other replicas")
                }
            }
            metrics.cache_local_bytes.set(store.local_bytes() as i64);
        }
    }
}

/// Whether `request` always gets the same answer: temperature 0, no tools,
/// one choice, no log probabilities.
fn deterministic(request: &ChatRequest) -> bool {
    let extra = &request.extra;
    let absent_or = |key: &str, ok: &dyn Fn(&Value) -> bool| extra.get(key).is_none_or(ok);
    let none = |v: &Value| v.is_null() || v.as_array().is_some_and(Vec::is_empty);
    extra.get("temperature").and_then(Value::as_f64) == Some(0.0)
        && absent_or("tools", &none)
        && absent_or("functions", &none)
        && absent_or("n", &|n| n.as_u64() == Some(1))
        && absent_or("logprobs", &|l| l.is_null() || *l == false)
}

/// An answer recorded from a provider's stream.
pub struct Recorded {
    content: String,
    finish_reason: String,
    usage: Option<Usage>,
    model: String,
}

/// Records a streamed answer for the cache.
#[derive(Default)]
pub struct Recorder {
    content: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: String,
    /// The first chunk was read for the model's name.
    model_read: bool,
    /// Something that a replay could not give back (tool calls, a refusal,
    /// reasoning, several choices) or too much of it: not cached.
    spoiled: bool,
}

impl Recorder {
    /// Takes a chunk in.
    pub fn take(&mut self, chunk: &LlmChunk) {
        if self.spoiled {
            return;
        }
        let view = &chunk.view;
        if let Some(usage) = view.usage {
            self.usage = Some(usage.into());
        }
        if !self.model_read {
            self.model_read = true;
            if let Ok(value) = serde_json::from_str::<Value>(&chunk.raw)
                && let Some(model) = value["model"].as_str()
            {
                model.clone_into(&mut self.model);
            }
        }
        let delta = view.choices.first().map(|c| &c.delta);
        let unreplayable = delta.is_some_and(|d| {
            d.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
                || d.refusal.as_ref().is_some_and(|r| !r.is_empty())
                || d.reasoning_content.as_ref().is_some_and(|r| !r.is_empty())
                || d.function_call.as_ref().is_some_and(|f| !f.is_null())
        });
        if unreplayable || view.choices.len() > 1 {
            return self.spoil();
        }
        if let Some(text) = view.content() {
            self.content.push_str(text);
            if self.content.len() > sluice_backends::cache::MAX_ANSWER_BYTES {
                return self.spoil();
            }
        }
        if let Some(reason) = view.choices.first().and_then(|c| c.finish_reason.clone()) {
            self.finish_reason = Some(reason);
        }
    }

    fn spoil(&mut self) {
        self.spoiled = true;
        self.content = String::new();
    }

    /// What to store, if the answer ended normally.
    pub fn finish(self) -> Option<Recorded> {
        let reason = self.finish_reason?;
        (!self.spoiled && (reason == "stop" || reason == "length")).then_some(Recorded {
            content: self.content,
            finish_reason: reason,
            usage: self.usage,
            model: self.model,
        })
    }

    /// What to store of a whole `chat.completion`, if cacheable.
    pub fn from_completion(completion: &Value) -> Option<Recorded> {
        let choices = completion["choices"].as_array()?;
        let [choice] = choices.as_slice() else {
            return None;
        };
        let message = &choice["message"];
        let present = |key: &str| message.get(key).is_some_and(|v| !v.is_null() && *v != "");
        if [
            "tool_calls",
            "function_call",
            "refusal",
            "reasoning_content",
        ]
        .into_iter()
        .any(present)
        {
            return None;
        }
        let reason = choice["finish_reason"].as_str()?;
        if reason != "stop" && reason != "length" {
            return None;
        }
        let usage = serde_json::from_value::<sluice_protocol::openai::UsageView>(
            completion["usage"].clone(),
        )
        .ok()
        .map(Usage::from);
        Some(Recorded {
            content: message["content"].as_str()?.to_owned(),
            finish_reason: reason.to_owned(),
            usage,
            model: completion["model"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// A cached answer as the provider's chunks: a role chunk, the text in
/// pieces, the finish chunk, and with `include_usage` the usage chunk.
pub fn replay(answer: &CachedAnswer, id: &str, created: i64, include_usage: bool) -> Vec<LlmChunk> {
    let model = answer.model.as_str();
    let mut values = vec![chunk(
        id,
        created,
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    let mut rest = answer.content.as_str();
    while !rest.is_empty() {
        let mut end = rest.len().min(REPLAY_CHUNK_BYTES);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        values.push(chunk(
            id,
            created,
            model,
            json!({"content": &rest[..end]}),
            None,
        ));
        rest = &rest[end..];
    }
    values.push(chunk(
        id,
        created,
        model,
        json!({}),
        Some(&answer.finish_reason),
    ));
    if include_usage && let Some(usage) = answer.usage {
        values.push(usage_chunk(id, created, model, usage));
    }
    values
        .into_iter()
        .map(|value| LlmChunk {
            raw: value.to_string(),
            view: serde_json::from_value::<ChunkView>(value).unwrap_or_default(),
        })
        .collect()
}

/// A cached answer as a whole `chat.completion`.
pub fn whole(answer: &CachedAnswer, id: &str, created: i64) -> Value {
    sluice_protocol::openai::completion(
        id,
        created,
        &answer.model,
        &answer.content,
        &answer.finish_reason,
        answer.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: Value) -> ChatRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
    }

    fn cache(scope: Scope) -> Cache {
        let store = ResponseCache::new(1 << 20, std::time::Duration::from_secs(60), None);
        Cache::new(Some(store), scope, Metrics::unregistered())
    }

    #[test]
    fn only_deterministic_requests_have_a_key() {
        let c = cache(Scope::User);
        assert!(c.key("u", &request(json!({"temperature": 0}))).is_some());
        assert!(
            c.key("u", &request(json!({"temperature": 0.0, "tools": []})))
                .is_some()
        );
        for not in [
            json!({}),
            json!({"temperature": 0.7}),
            json!({"temperature": 0, "tools": [{"type": "function"}]}),
            json!({"temperature": 0, "n": 2}),
            json!({"temperature": 0, "logprobs": true}),
            json!({"temperature": 0, "functions": [{"name": "f"}]}),
        ] {
            assert!(c.key("u", &request(not.clone())).is_none(), "{not}");
        }
        let off = Cache::new(None, Scope::User, Metrics::unregistered());
        assert!(off.key("u", &request(json!({"temperature": 0}))).is_none());
    }

    #[test]
    fn the_key_is_per_user_unless_global_and_ignores_delivery() {
        let c = cache(Scope::User);
        let plain = request(json!({"temperature": 0}));
        let streamed = request(
            json!({"temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
        );
        assert_eq!(c.key("u", &plain), c.key("u", &streamed));
        assert_ne!(c.key("u", &plain), c.key("v", &plain));
        assert_ne!(
            c.key("u", &plain),
            c.key("u", &request(json!({"temperature": 0, "max_tokens": 5})))
        );
        let g = cache(Scope::Global);
        assert_eq!(g.key("u", &plain), g.key("v", &plain));
    }

    #[test]
    fn a_recorded_answer_replays_as_the_same_text() {
        let answer = CachedAnswer {
            content: "é".repeat(100),
            finish_reason: "length".into(),
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            }),
            model: "m".into(),
            expires_at_ms: 0,
        };
        let chunks = replay(&answer, "id", 1, true);
        let mut recorder = Recorder::default();
        for c in &chunks {
            recorder.take(c);
        }
        let recorded = recorder.finish().unwrap();
        assert_eq!(recorded.content, answer.content);
        assert_eq!(recorded.finish_reason, "length");
        assert_eq!(recorded.usage, answer.usage);
        assert_eq!(recorded.model, "m");
        let again = Recorder::from_completion(&whole(&answer, "id", 1)).unwrap();
        assert_eq!(again.content, answer.content);
    }

    #[test]
    fn what_a_replay_could_not_give_back_is_not_recorded() {
        let raw = |delta: Value, finish: Option<&str>| {
            let value = chunk("id", 1, "m", delta, finish);
            LlmChunk {
                raw: value.to_string(),
                view: serde_json::from_value(value).unwrap(),
            }
        };
        for spoiler in [
            json!({"refusal": "I cannot help with that."}),
            json!({"reasoning_content": "Let me think."}),
            json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "t", "arguments": "{}"}}]}),
        ] {
            let mut recorder = Recorder::default();
            recorder.take(&raw(json!({"content": "a"}), None));
            recorder.take(&raw(spoiler.clone(), None));
            recorder.take(&raw(json!({}), Some("stop")));
            assert!(recorder.finish().is_none(), "{spoiler}");
        }
        let mut cut = Recorder::default();
        cut.take(&raw(json!({"content": "a"}), None));
        assert!(cut.finish().is_none(), "no finish reason: the stream broke");
    }
}
