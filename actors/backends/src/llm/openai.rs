//! Any OpenAI-compatible provider, streamed over SSE with reqwest-eventsource.
//!
//! - The first chunk must arrive within `request_timeout`, and so must every
//!   later one; otherwise the call ends with `upstream_timeout`.
//! - Connection failures (including a pooled connection closed before the
//!   provider answered), 429 and 5xx answers are retried with exponential
//!   backoff, but only before the first chunk: after that a retry would repeat
//!   text the client already has.
//! - A stream that ends without `[DONE]` or a finish reason is an error.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use reqwest_eventsource::{Event, EventSource, retry::Never};
use sluice_protocol::openai::{ChatRequest, ChunkData, read_chunk};

use super::{ChunkStream, LlmChunk, LlmError, LlmProvider, Refusal};
use crate::secret::Secret;

/// Settings of an [`OpenAiProvider`].
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL ending in `/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<Secret>,
    /// The default model, listed by `GET /v1/models`.
    pub default_model: String,
    /// Time allowed for the first chunk and between chunks.
    pub request_timeout: Duration,
    /// Time allowed to open the TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Extra attempts before the first chunk.
    pub max_retries: u32,
    /// First backoff; doubled at each retry.
    pub retry_backoff: Duration,
}

/// Longest wait for the provider's model list when `/ready` checks it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// An OpenAI-compatible provider. Cloning shares its HTTP clients.
#[derive(Clone)]
pub struct OpenAiProvider {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tells this provider's per-thread clients apart from another's.
    id: u64,
    /// The client for threads that have none of their own (never used on
    /// the runtime threads in practice, since those build theirs).
    fallback: reqwest::Client,
    /// `{base}/chat/completions`.
    url: String,
    /// `{base}/models`, for checks.
    models_url: String,
    /// `{base}/embeddings`.
    embeddings_url: String,
    config: OpenAiConfig,
}

thread_local! {
    /// Each thread's HTTP client per provider. A connection's I/O task runs on
    /// the thread that opened it, so a thread reusing another's pooled
    /// connection would cross threads (a wake-up through the kernel) for
    /// every chunk; with one pool per thread the reader and the connection
    /// share a scheduler.
    static CLIENTS: RefCell<HashMap<u64, reqwest::Client>> = RefCell::new(HashMap::new());
}

fn build_client(config: &OpenAiConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
}

impl OpenAiProvider {
    /// Builds the provider and checks that its HTTP client can be built.
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let fallback = build_client(&config)
            .map_err(|e| LlmError::Upstream(format!("cannot build the HTTP client: {e}")))?;
        let base = config.base_url.trim_end_matches('/');
        let url = format!("{base}/chat/completions");
        let models_url = format!("{base}/models");
        let embeddings_url = format!("{base}/embeddings");
        Ok(Self {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                fallback,
                url,
                models_url,
                embeddings_url,
                config,
            }),
        })
    }
}

impl Inner {
    /// This thread's client.
    fn client(&self) -> reqwest::Client {
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            if let Some(client) = clients.get(&self.id) {
                return client.clone();
            }
            match build_client(&self.config) {
                Ok(client) => clients.entry(self.id).or_insert(client).clone(),
                Err(_) => self.fallback.clone(),
            }
        })
    }

    fn post(&self, body: &ChatRequest) -> reqwest::RequestBuilder {
        self.authorized(self.client().post(&self.url).json(body))
    }

    /// A JSON request answered with one JSON object (a completion that does
    /// not stream, embeddings), retried like a stream before its first
    /// chunk: after a failure that may pass, with backoff.
    async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, LlmError> {
        let mut attempt = 0;
        loop {
            let sent = self
                .authorized(self.client().post(url).json(body))
                .timeout(self.config.request_timeout)
                .send()
                .await;
            let failure = match sent {
                Ok(response) if response.status().is_success() => {
                    return response.json::<serde_json::Value>().await.map_err(|e| {
                        if e.is_timeout() {
                            LlmError::Timeout(format!("provider timed out: {e}"))
                        } else {
                            LlmError::Upstream(format!("provider sent invalid JSON: {e}"))
                        }
                    });
                }
                Ok(response) => status_failure(response.status(), response).await,
                Err(e) => transport_failure(&e),
            };
            if failure.retryable && attempt < self.config.max_retries {
                attempt += 1;
                tokio::time::sleep(self.backoff(attempt)).await;
                continue;
            }
            return Err(failure.error);
        }
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.api_key {
            Some(key) => builder.bearer_auth(key.expose()),
            None => builder,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.config.retry_backoff * 2u32.saturating_pow(attempt.saturating_sub(1))
    }
}

/// A failed attempt: what to report, and whether another attempt may help.
struct Failure {
    error: LlmError,
    retryable: bool,
}

/// A provider's answer with an error status. A 4xx is the request's fault
/// and is passed on as a [`Refusal`] with the provider's error object, except
/// 401 and 403, which refuse Sluice's own key (a server-side failure), and
/// 408, a timeout. 429 and 5xx may pass, so they are retried first.
async fn status_failure(status: reqwest::StatusCode, response: reqwest::Response) -> Failure {
    let code = status.as_u16();
    let body = response.text().await.unwrap_or_default();
    let object = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .filter(serde_json::Value::is_object);
    let text = |field: &str| {
        object
            .as_ref()
            .and_then(|o| o.get(field))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let detail = text("message").unwrap_or_else(|| body.chars().take(300).collect());
    let message = format!("provider answered {status}: {detail}");
    let error = match code {
        408 | 504 => LlmError::Timeout(message),
        401 | 403 => LlmError::Upstream(format!(
            "provider refused Sluice's credentials ({status}): {detail}; check SLUICE_LLM_API_KEY"
        )),
        400..=499 => LlmError::Refused(Refusal {
            status: code,
            message: detail,
            kind: text("type"),
            code: object
                .as_ref()
                .and_then(|o| o.get("code"))
                .filter(|c| c.is_string() || c.is_number())
                .cloned(),
            param: text("param"),
        }),
        _ => LlmError::Upstream(message),
    };
    Failure {
        error,
        retryable: code == 429 || code >= 500,
    }
}

/// A request that failed before the provider answered. Besides a refused
/// connection, this is a pooled keep-alive connection that the provider's
/// server closed as the request went out (idle connections are closed after
/// a few seconds by many servers): nothing was answered, so another attempt
/// is safe from repeating text, and the official SDKs retry it the same way.
/// A failure while reading an answer's body is not retried here.
fn transport_failure(e: &reqwest::Error) -> Failure {
    let detail = error_chain(e);
    if e.is_timeout() {
        Failure {
            error: LlmError::Timeout(format!("provider timed out: {detail}")),
            retryable: false,
        }
    } else {
        Failure {
            error: LlmError::Upstream(format!("provider unreachable: {detail}")),
            retryable: e.is_connect() || e.is_request(),
        }
    }
}

/// `e` and its causes: reqwest's own message ("error sending request for
/// url") hides what went wrong (e.g. "connection closed before message
/// completed").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn event_failure(e: reqwest_eventsource::Error) -> Failure {
    use reqwest_eventsource::Error as E;
    match e {
        E::InvalidStatusCode(status, response) => status_failure(status, response).await,
        E::Transport(e) => transport_failure(&e),
        E::InvalidContentType(ct, _) => Failure {
            error: LlmError::Upstream(format!(
                "provider answered with content type {ct:?}, not an event stream"
            )),
            retryable: false,
        },
        E::StreamEnded => Failure {
            error: LlmError::Upstream("provider closed the stream before finishing".into()),
            retryable: true,
        },
        other => Failure {
            error: LlmError::Upstream(format!("provider stream broke: {other}")),
            retryable: false,
        },
    }
}

/// A chunk that is an error object (`{"error": {...}}`), as some providers
/// send mid-stream.
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn stream(&self, mut request: ChatRequest) -> ChunkStream {
        request.stream = true;
        let inner = self.inner.clone();
        async_stream::stream! {
            let timeout = inner.config.request_timeout;
            let mut attempt = 0;
            'attempts: loop {
                let mut source = match EventSource::new(inner.post(&request)) {
                    Ok(source) => source,
                    Err(e) => {
                        yield Err(LlmError::Upstream(format!("cannot build the request: {e}")));
                        return;
                    }
                };
                source.set_retry_policy(Box::new(Never));
                let mut got_first = false;
                let mut finished = false;
                loop {
                    let next = match tokio::time::timeout(timeout, source.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            source.close();
                            let what = if got_first { "no data from the provider" } else { "no first token" };
                            yield Err(LlmError::Timeout(format!("{what} within {}s", timeout.as_secs_f32())));
                            return;
                        }
                    };
                    match next {
                        None => return,
                        Some(Ok(Event::Open)) => {}
                        Some(Ok(Event::Message(message))) => {
                            let data = message.data;
                            match read_chunk(&data) {
                                Ok(ChunkData::Done) => {
                                    source.close();
                                    return;
                                }
                                Ok(ChunkData::Error(message)) => {
                                    source.close();
                                    yield Err(LlmError::Upstream(format!("provider error: {message}")));
                                    return;
                                }
                                Ok(ChunkData::Chunk(view)) => {
                                    got_first = true;
                                    finished |= view.finish_reason().is_some();
                                    yield Ok(LlmChunk { raw: data, view });
                                }
                                Err(e) => {
                                    source.close();
                                    yield Err(LlmError::Upstream(format!("provider sent an invalid chunk: {e}")));
                                    return;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            source.close();
                            if finished && matches!(e, reqwest_eventsource::Error::StreamEnded) {
                                return;
                            }
                            let failure = event_failure(e).await;
                            if !got_first && failure.retryable && attempt < inner.config.max_retries {
                                attempt += 1;
                                tracing::warn!(attempt, error = %failure.error, "retrying the provider");
                                tokio::time::sleep(inner.backoff(attempt)).await;
                                continue 'attempts;
                            }
                            yield Err(failure.error);
                            return;
                        }
                    }
                }
            }
        }
        .boxed()
    }

    fn complete(
        &self,
        mut request: ChatRequest,
    ) -> BoxFuture<'static, Result<serde_json::Value, LlmError>> {
        request.stream = false;
        request.stream_options = None;
        let inner = self.inner.clone();
        let body = serde_json::to_value(&request).expect("a request serialises");
        Box::pin(async move { inner.post_json(&inner.url, &body).await })
    }

    fn embeddings(
        &self,
        request: serde_json::Value,
    ) -> BoxFuture<'static, Result<serde_json::Value, LlmError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.post_json(&inner.embeddings_url, &request).await })
    }

    fn models(&self) -> Vec<String> {
        vec![self.inner.config.default_model.clone()]
    }

    fn check(&self) -> BoxFuture<'static, Result<(), LlmError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let request = inner
                .authorized(inner.client().get(&inner.models_url))
                .timeout(CHECK_TIMEOUT);
            match request.send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(status_failure(response.status(), response).await.error),
                Err(e) => Err(transport_failure(&e).error),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Reads one HTTP request (headers, then a `content-length` body).
    async fn read_request(socket: &mut TcpStream) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before sending a request");
            seen.extend_from_slice(&buf[..n]);
            let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let headers = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if seen.len() >= end + 4 + length {
                return;
            }
        }
    }

    fn provider(addr: std::net::SocketAddr) -> OpenAiProvider {
        OpenAiProvider::new(OpenAiConfig {
            base_url: format!("http://{addr}/v1"),
            api_key: None,
            default_model: "m".into(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_retries: 2,
            retry_backoff: Duration::from_millis(1),
        })
        .unwrap()
    }

    fn request() -> ChatRequest {
        ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap()
    }

    /// A provider whose server takes the request and closes the connection
    /// without an answer, as one does when it closes an idle keep-alive
    /// connection just as a request goes out on it: the request is made
    /// again and the stream arrives.
    #[tokio::test]
    async fn a_request_whose_connection_closes_unanswered_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_request(&mut socket).await;
            drop(socket);
            let (mut socket, _) = listener.accept().await.unwrap();
            read_request(&mut socket).await;
            let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"hello"},"finish_reason":"stop"}]}"#;
            let body = format!("data: {chunk}\n\ndata: [DONE]\n\n");
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n";
            socket
                .write_all(format!("{head}content-length: {}\r\n\r\n{body}", body.len()).as_bytes())
                .await
                .unwrap();
        });
        let chunks: Vec<_> = provider(addr).stream(request()).collect().await;
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        let chunk = chunks[0].as_ref().unwrap();
        assert_eq!(chunk.view.content(), Some("hello"));
    }

    /// Without retries left, the error names the cause, not just reqwest's
    /// "error sending request".
    #[tokio::test]
    async fn an_unanswered_request_reports_why() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                read_request(&mut socket).await;
            }
        });
        let chunks: Vec<_> = provider(addr).stream(request()).collect().await;
        assert_eq!(chunks.len(), 1);
        let Err(LlmError::Upstream(message)) = &chunks[0] else {
            panic!("expected an upstream error, got {:?}", chunks[0]);
        };
        assert!(
            message.contains("error sending request") && message.contains("closed"),
            "{message}"
        );
    }

    /// A provider's 4xx is the request's fault: it is not retried, and it
    /// keeps the provider's status and error fields.
    #[tokio::test]
    async fn a_refusal_keeps_the_providers_status_and_error_fields() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(AtomicU64::new(0));
        let counter = asked.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                read_request(&mut socket).await;
                counter.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"error":{"message":"The model `nope` does not exist","type":"invalid_request_error","param":"model","code":"model_not_found"}}"#;
                let head = "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\nconnection: close\r\n";
                let _ = socket
                    .write_all(
                        format!("{head}content-length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                    )
                    .await;
            }
        });
        let provider = provider(addr);
        let chunks: Vec<_> = provider.stream(request()).collect().await;
        let Err(LlmError::Refused(refusal)) = &chunks[0] else {
            panic!("expected a refusal, got {:?}", chunks[0]);
        };
        assert_eq!(refusal.status, 404);
        assert_eq!(refusal.message, "The model `nope` does not exist");
        assert_eq!(refusal.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!(refusal.code, Some(serde_json::json!("model_not_found")));
        assert_eq!(refusal.param.as_deref(), Some("model"));
        let whole = provider.complete(request()).await.unwrap_err();
        assert!(matches!(
            whole,
            LlmError::Refused(Refusal { status: 404, .. })
        ));
        assert_eq!(
            asked.load(Ordering::SeqCst),
            2,
            "one request each, no retry"
        );
    }
}
