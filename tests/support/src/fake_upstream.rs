//! A fake OpenAI-compatible provider. It speaks the real wire format (the
//! `chat.completion.chunk` SSE stream ending in `data: [DONE]`, and the
//! `chat.completion` object), so the real client code is what gets tested.
//!
//! Behaviour is scripted through the requested model, e.g.
//! `fake:tokens=50,delay_ms=5` (`;` separates keys too). Keys:
//! - `tokens=N` (default 20): content chunks; chunk `i` is `<i>`.
//! - `delay_ms=N`: pause between chunks; `first_delay_ms=N`: before the first.
//! - `status=N`: answer with HTTP status N and an OpenAI error body.
//! - `fail_times=N`: with `status`, fail only the first N requests of this
//!   model string (then stream normally), to exercise retries.
//! - `drop_after=N`: send N content chunks, then break the connection.
//! - `stall_after=N`: send N content chunks, then go silent.
//! - `finish=length`: the finish reason of the last chunk.
//! - `pad=N`: each chunk is `<i>` followed by N dots (large tokens).
//! - `api=NAME`: which real provider's way to continue an answer it follows
//!   (below); `openai` by default.
//!
//! - `tools`: call tools (below).
//! - `preamble=1`: with `tools`, each step that calls tools first says
//!   `(step k) `.
//! - `empty_call=1`: start the answer with a `tool_calls` fragment that
//!   names no call (`{"index": 0}`), as some providers do.
//! - `ignore_tool_choice=1`: with `tools`, call them even when the request
//!   says `tool_choice: "none"` (as some providers do).
//!
//! **Calling tools.** With `tools`, and a request that offers `tools`, the
//! calls come from the last user message, which is a JSON object
//! `{"steps": [[{"name": "...", "arguments": {...}}, ...], ...]}`: step `k`
//! (the number of assistant messages with `tool_calls` after that user
//! message) streams the calls of `steps[k]` as OpenAI does, an `id`
//! (`call_<k>_<i>`) and name first, then the arguments' JSON in three
//! pieces, ending with `finish_reason: "tool_calls"`. Past the last step,
//! or when the request says `tool_choice: "none"`, it answers in text as
//! usual.
//!
//! A status of 4xx answers with an OpenAI error object whose `type` is
//! `invalid_request_error`, `param` is `model` and `code` is `fake_refusal`.
//!
//! **Continuing an answer.** A request that ends with an `assistant`
//! message asks to continue it on some providers and not on others; the
//! fake does what the provider named by `api` does. Continuing, the stream
//! starts at the first chunk not already in the answer (each chunk starts
//! with `<`); not continuing, it answers anew from chunk 0.
//! - `openai`: answers anew (OpenAI's models do not continue).
//! - `ollama`: continues a plain trailing assistant message (`prefill`).
//! - `mistral`: continues one with `"prefix": true` (`prefix`, also
//!   DeepSeek's); refuses a plain one with a 400, as Mistral does.
//! - `vllm`: continues with `continue_final_message: true` and
//!   `add_generation_prompt: false`; otherwise answers anew.
//!
//! Any other model streams the default. Every request body is recorded with
//! its `Authorization` header and can be read at `GET /_requests`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::padded_token_text;

/// What the fake remembers, and how this instance differs from the default.
#[derive(Default, Clone)]
pub struct State {
    requests: Arc<Mutex<Vec<Value>>>,
    embedding_requests: Arc<Mutex<Vec<Value>>>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
    options: FakeOptions,
}

/// How one fake instance differs from the default, so a test can tell two
/// providers apart.
#[derive(Debug, Clone, Default)]
pub struct FakeOptions {
    /// Appended to every chunk's text (without a `<`).
    pub suffix: String,
    /// Every pause between chunks lasts this many times longer (0 or 1: as
    /// scripted).
    pub slowdown: u32,
}

/// Which provider's continuation rules a fake model follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Ollama,
    Mistral,
    Vllm,
}

/// A parsed `fake:` model.
#[derive(Debug, Clone)]
struct Script {
    tokens: usize,
    delay: Duration,
    first_delay: Duration,
    status: Option<u16>,
    fail_times: Option<u32>,
    drop_after: Option<usize>,
    stall_after: Option<usize>,
    finish: String,
    pad: usize,
    api: Api,
    tools: bool,
    empty_call: bool,
    preamble: bool,
    ignore_tool_choice: bool,
}

impl Script {
    fn parse(model: &str) -> Self {
        let mut script = Script {
            tokens: 20,
            delay: Duration::ZERO,
            first_delay: Duration::ZERO,
            status: None,
            fail_times: None,
            drop_after: None,
            stall_after: None,
            finish: "stop".into(),
            pad: 0,
            api: Api::OpenAi,
            tools: false,
            empty_call: false,
            preamble: false,
            ignore_tool_choice: false,
        };
        let Some(spec) = model.strip_prefix("fake:") else {
            return script;
        };
        for pair in spec.split([',', ';']) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = value.parse::<u64>().unwrap_or(0);
            match key {
                "tokens" => script.tokens = number as usize,
                "delay_ms" => script.delay = Duration::from_millis(number),
                "first_delay_ms" => script.first_delay = Duration::from_millis(number),
                "status" => script.status = Some(number as u16),
                "fail_times" => script.fail_times = Some(number as u32),
                "drop_after" => script.drop_after = Some(number as usize),
                "stall_after" => script.stall_after = Some(number as usize),
                "finish" => script.finish = value.to_owned(),
                "pad" => script.pad = number as usize,
                "tools" => script.tools = true,
                "empty_call" => script.empty_call = number == 1,
                "preamble" => script.preamble = number == 1,
                "ignore_tool_choice" => script.ignore_tool_choice = number == 1,
                "api" => {
                    script.api = match value {
                        "ollama" => Api::Ollama,
                        "mistral" => Api::Mistral,
                        "vllm" => Api::Vllm,
                        _ => Api::OpenAi,
                    }
                }
                _ => {}
            }
        }
        script
    }
}

/// Serves the fake on `addr` until the system stops; `bound` gets the
/// address it listens on (with port 0, the port the system chose).
pub async fn serve(
    addr: &str,
    state: State,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let (server, addr) = server(addr, state)?;
    bound(addr);
    server.await
}

fn server(addr: &str, state: State) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let http = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::JsonConfig::default().limit(16 * 1024 * 1024))
            .route("/v1/chat/completions", web::post().to(completions))
            .route("/v1/models", web::get().to(models))
            .route("/v1/embeddings", web::post().to(embeddings))
            .route("/_requests", web::get().to(requests))
    })
    .workers(1)
    // As a real provider's server does: each chunk leaves at once.
    .tcp_nodelay(true)
    // A benchmark opens a thousand connections at once; the standard
    // library's backlog of 128 would drop most of them for a second.
    .backlog(4096)
    .disable_signals()
    .bind(addr)?;
    let bound = http.addrs()[0];
    Ok((http.run(), bound))
}

/// A fake upstream running on its own thread, stopped on drop.
pub struct FakeUpstream {
    addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    state: State,
}

impl FakeUpstream {
    /// Starts the fake on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(FakeOptions::default())
    }

    /// Starts a fake that differs from the default by `options`.
    pub fn start_with(options: FakeOptions) -> Self {
        let state = State {
            options,
            ..State::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_state = state.clone();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let (server, addr) = server("127.0.0.1:0", thread_state).expect("listen");
                tx.send((server.handle(), addr)).expect("report the handle");
                server.await
            })
        });
        let (handle, addr) = rx.recv().expect("fake upstream started");
        Self {
            addr,
            handle,
            state,
        }
    }

    /// The base URL to give Sluice (`SLUICE_LLM_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The request bodies received so far, each with `_authorization`.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The `/v1/embeddings` request bodies received so far.
    pub fn embedding_requests(&self) -> Vec<Value> {
        self.state.embedding_requests.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        // Stopping is asynchronous; the server thread ends on its own.
        drop(self.handle.stop(false));
    }
}

async fn requests(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(state.requests.lock().unwrap().clone())
}

/// Dimensions of the fake's embeddings.
pub const EMBEDDING_DIMS: usize = 64;

/// The fake's embedding of a text: each lower-cased word hashed to one of
/// [`EMBEDDING_DIMS`] dimensions, so texts sharing words are near.
pub fn fake_embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; EMBEDDING_DIMS];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        let hash = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        v[(hash % EMBEDDING_DIMS as u64) as usize] += 1.0;
    }
    v
}

/// `POST /v1/embeddings`: OpenAI's answer, with [`fake_embedding`]s. A
/// model scripted `fake:status=N` answers status N instead.
async fn embeddings(state: web::Data<State>, body: web::Json<Value>) -> HttpResponse {
    state
        .embedding_requests
        .lock()
        .unwrap()
        .push(body.0.clone());
    let model = body["model"].as_str().unwrap_or("fake-embed").to_owned();
    if let Some(status) = Script::parse(&model).status {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .json(json!({"error": {"message": format!("fake failure {status}"), "type": "server_error", "param": null, "code": null}}));
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().map(|i| i.as_str().unwrap_or_default().to_owned()).collect(),
        _ => return HttpResponse::BadRequest().json(json!({"error": {"message": "input is required", "type": "invalid_request_error", "param": "input", "code": null}})),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": fake_embedding(text)}))
        .collect();
    HttpResponse::Ok().json(json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()},
    }))
}

async fn models() -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}]}))
}

fn chunk(id: &str, model: &str, delta: Value, finish: Option<&str>) -> Bytes {
    let value = json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    Bytes::from(format!("data: {value}\n\n"))
}

async fn completions(
    req: HttpRequest,
    state: web::Data<State>,
    body: web::Json<Value>,
) -> HttpResponse {
    let mut recorded = body.0.clone();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    recorded["_authorization"] = json!(authorization);
    state.requests.lock().unwrap().push(recorded);

    let model = body["model"].as_str().unwrap_or("fake").to_owned();
    let script = Script::parse(&model);
    if let Some(status) = script.status {
        let fail = match script.fail_times {
            None => true,
            Some(times) => {
                let mut failures = state.failures.lock().unwrap();
                let count = failures.entry(model.clone()).or_default();
                *count += 1;
                *count <= times
            }
        };
        if fail {
            let error = if (400..500).contains(&status) {
                json!({"message": format!("fake failure {status}"), "type": "invalid_request_error", "param": "model", "code": "fake_refusal"})
            } else {
                json!({"message": format!("fake failure {status}"), "type": "server_error", "param": null, "code": null})
            };
            return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .json(json!({"error": error}));
        }
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    if let Some(calls) = tool_calls(&script, &body) {
        return call_tools(&model, calls, stream, &body, script.preamble);
    }
    let last = body["messages"].as_array().and_then(|m| m.last());
    let trailing_answer = last.filter(|m| m["role"] == "assistant");
    let continues = trailing_answer.is_some_and(|m| match script.api {
        Api::OpenAi => false,
        Api::Ollama => true,
        Api::Mistral => m["prefix"] == true,
        Api::Vllm => {
            body["continue_final_message"] == true && body["add_generation_prompt"] == false
        }
    });
    if script.api == Api::Mistral && trailing_answer.is_some() && !continues {
        return HttpResponse::BadRequest().json(json!({"error": {"message": "Expected last role User or Tool (or Assistant with prefix True) for serving but got assistant", "type": "invalid_request_error", "param": null, "code": "3230"}}));
    }
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let prompt_tokens = body["messages"].as_array().map_or(0, Vec::len) as u64;
    let start = match trailing_answer {
        Some(m) if continues => m["content"].as_str().unwrap_or("").matches('<').count(),
        _ => 0,
    };
    let suffix = state.options.suffix.clone();
    let slowdown = state.options.slowdown.max(1);
    let token = move |i: usize| format!("{}{suffix}", padded_token_text(i, script.pad));
    let id = "chatcmpl-fake".to_owned();
    if !stream {
        tokio::time::sleep(script.first_delay).await;
        let content: String = (0..script.tokens).map(&token).collect();
        return HttpResponse::Ok().json(json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": script.finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": script.tokens, "total_tokens": prompt_tokens + script.tokens as u64},
        }));
    }
    let body = async_stream::stream! {
        tokio::time::sleep(script.first_delay).await;
        yield Ok::<_, actix_web::Error>(chunk(&id, &model, json!({"role": "assistant", "content": ""}), None));
        if script.empty_call {
            yield Ok(chunk(&id, &model, json!({"tool_calls": [{"index": 0}]}), None));
        }
        for i in start..script.tokens {
            if script.drop_after == Some(i) {
                // Let the server write what it has before breaking the
                // connection: a pending body makes actix flush its buffer.
                tokio::time::sleep(Duration::from_millis(50)).await;
                yield Err(actix_web::error::ErrorInternalServerError("fake connection drop"));
                return;
            }
            if script.stall_after == Some(i) {
                std::future::pending::<()>().await;
            }
            if i > start && !script.delay.is_zero() {
                tokio::time::sleep(script.delay * slowdown).await;
            }
            yield Ok(chunk(&id, &model, json!({"content": token(i)}), None));
        }
        yield Ok(chunk(&id, &model, json!({}), Some(&script.finish)));
        if include_usage {
            yield Ok(usage_chunk(&id, &model, prompt_tokens, (script.tokens - start) as u64));
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    event_stream(body)
}

/// The usage chunk that ends a stream asked for usage.
fn usage_chunk(id: &str, model: &str, prompt: u64, completion: u64) -> Bytes {
    let usage = json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    });
    Bytes::from(format!("data: {usage}\n\n"))
}

/// An SSE response of `body`'s chunks.
fn event_stream(
    body: impl futures::Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body)
}

/// The calls of this step, if the model is scripted to call tools now: the
/// step is the number of assistant messages with `tool_calls` after the
/// last user message, whose content holds the steps.
fn tool_calls(script: &Script, body: &Value) -> Option<(usize, Vec<Value>)> {
    if !script.tools || !body["tools"].is_array() {
        return None;
    }
    if body["tool_choice"] == "none" && !script.ignore_tool_choice {
        return None;
    }
    let messages = body["messages"].as_array()?;
    let last_user = messages.iter().rposition(|m| m["role"] == "user")?;
    let step = messages[last_user..]
        .iter()
        .filter(|m| m["role"] == "assistant" && m["tool_calls"].is_array())
        .count();
    let script: Value = serde_json::from_str(messages[last_user]["content"].as_str()?).ok()?;
    let calls = script["steps"].get(step)?.as_array()?.clone();
    Some((step, calls))
}

/// Answers with the tool `calls` of `step`, streamed or whole.
fn call_tools(
    model: &str,
    (step, calls): (usize, Vec<Value>),
    stream: bool,
    body: &Value,
    preamble: bool,
) -> HttpResponse {
    let id = "chatcmpl-fake-tools".to_owned();
    let calls: Vec<(String, String, String)> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                format!("call_{step}_{i}"),
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["arguments"].to_string(),
            )
        })
        .collect();
    let text = preamble.then(|| format!("(step {step}) "));
    if !stream {
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
        return HttpResponse::Ok().json(json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": tool_calls}, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": calls.len(), "total_tokens": 1 + calls.len()},
        }));
    }
    let include_usage = body["stream_options"]["include_usage"] == true;
    let model = model.to_owned();
    let body = async_stream::stream! {
        yield Ok::<_, actix_web::Error>(chunk(&id, &model, json!({"role": "assistant", "content": null}), None));
        if let Some(text) = text {
            yield Ok(chunk(&id, &model, json!({"content": text}), None));
        }
        for (index, (call_id, name, args)) in calls.iter().enumerate() {
            yield Ok(chunk(&id, &model, json!({"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
            // The arguments' JSON cut in three, anywhere.
            let cuts = [0, args.len() / 3, 2 * args.len() / 3, args.len()];
            for pair in cuts.windows(2) {
                let piece: String = args.char_indices().filter(|(i, _)| *i >= pair[0] && *i < pair[1]).map(|(_, c)| c).collect();
                yield Ok(chunk(&id, &model, json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), None));
            }
        }
        yield Ok(chunk(&id, &model, json!({}), Some("tool_calls")));
        if include_usage {
            yield Ok(usage_chunk(&id, &model, 1, calls.len() as u64));
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    event_stream(body)
}
