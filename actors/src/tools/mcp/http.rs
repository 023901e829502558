//! rmcp's streamable-HTTP client over this program's reqwest (0.12).
//!
//! rmcp's own HTTP client is built on reqwest 0.13 with another TLS
//! stack; [`StreamableHttpClient`] is rmcp's seam for bringing one's own,
//! so MCP traffic shares the HTTP client, TLS and limits of the rest.
//! Every response is bounded: a JSON answer by [`MAX_JSON_BYTES`], an SSE
//! stream by [`MAX_STREAM_BYTES`] over its life.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::{Sse, SseStream};

/// Largest JSON answer to one POST.
pub const MAX_JSON_BYTES: usize = 4 << 20;

/// Most bytes one SSE response may carry over its life (the stream then
/// fails; rmcp opens another).
pub const MAX_STREAM_BYTES: u64 = 16 << 20;

const SESSION_HEADER: &str = "Mcp-Session-Id";
const LAST_EVENT_HEADER: &str = "Last-Event-ID";
const EVENT_STREAM: &str = "text/event-stream";
const JSON: &str = "application/json";

/// An MCP client's HTTP side: a reqwest client with its timeouts.
#[derive(Clone)]
pub struct McpHttp {
    client: reqwest::Client,
}

/// A failure of the HTTP side.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// reqwest failed (connection, timeout, body).
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    /// A stream carried more than [`MAX_STREAM_BYTES`].
    #[error("the server's stream is longer than {MAX_STREAM_BYTES} bytes")]
    StreamTooLong,
}

type Failure = StreamableHttpError<HttpError>;

impl McpHttp {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }

    fn request(
        &self,
        method: reqwest::Method,
        uri: &str,
        session_id: Option<&str>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
    ) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(session_id) = session_id {
            request = request.header(SESSION_HEADER, session_id);
        }
        if let Some(token) = auth {
            request = request.bearer_auth(token);
        }
        request
    }
}

/// The response's media type is `expected` (parameters ignored).
fn is(response: &reqwest::Response, expected: &str) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected))
}

fn unexpected(text: String) -> Failure {
    StreamableHttpError::UnexpectedServerResponse(Cow::Owned(text))
}

/// The response's events, its bytes bounded by [`MAX_STREAM_BYTES`].
fn events(response: reqwest::Response) -> BoxStream<'static, Result<Sse, SseError>> {
    let mut seen = 0u64;
    let bytes = response
        .bytes_stream()
        .map_err(HttpError::from)
        .and_then(move |chunk| {
            seen += chunk.len() as u64;
            let within = seen <= MAX_STREAM_BYTES;
            async move {
                if within {
                    Ok(chunk)
                } else {
                    Err(HttpError::StreamTooLong)
                }
            }
        });
    SseStream::from_bytes_stream(bytes).boxed()
}

/// The whole body, refused past `limit` bytes.
async fn bounded_body(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, Failure> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(StreamableHttpError::ResponseBodyTooLarge { max_size: limit });
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StreamableHttpError::Client(e.into()))?;
        if body.len() + chunk.len() > limit {
            return Err(StreamableHttpError::ResponseBodyTooLarge { max_size: limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl StreamableHttpClient for McpHttp {
    type Error = HttpError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        let had_session = session_id.is_some();
        let body = serde_json::to_vec(&message)?;
        let response = self
            .request(
                reqwest::Method::POST,
                &uri,
                session_id.as_deref(),
                auth,
                headers,
            )
            .header(ACCEPT, format!("{EVENT_STREAM}, {JSON}"))
            .header(CONTENT_TYPE, JSON)
            .body(body)
            .send()
            .await
            .map_err(|e| StreamableHttpError::Client(e.into()))?;
        let status = response.status();
        if status == reqwest::StatusCode::ACCEPTED || status == reqwest::StatusCode::NO_CONTENT {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == reqwest::StatusCode::NOT_FOUND && had_session {
            return Err(StreamableHttpError::SessionExpired);
        }
        let session = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if is(&response, EVENT_STREAM) && status.is_success() {
            return Ok(StreamableHttpPostResponse::Sse(events(response), session));
        }
        if is(&response, JSON) {
            // A JSON-RPC error may come with a failing status; it is the
            // answer to the request all the same.
            let body = bounded_body(response, MAX_JSON_BYTES).await?;
            return match serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
                Ok(message) => Ok(StreamableHttpPostResponse::Json(message, session)),
                Err(_) if !status.is_success() => Err(unexpected(format!("HTTP {status}"))),
                Err(e) => Err(e.into()),
            };
        }
        if status.is_success() && response.content_length() == Some(0) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if !status.is_success() {
            return Err(unexpected(format!("HTTP {status}")));
        }
        let kind = response.headers().get(CONTENT_TYPE).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect()
        });
        Err(StreamableHttpError::UnexpectedContentType(kind))
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Failure> {
        let response = self
            .request(
                reqwest::Method::DELETE,
                &uri,
                Some(&session_id),
                auth,
                headers,
            )
            .send()
            .await
            .map_err(|e| StreamableHttpError::Client(e.into()))?;
        if response.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportDeleteSession);
        }
        Ok(())
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Failure> {
        let mut request = self
            .request(
                reqwest::Method::GET,
                &uri,
                session_id.as_deref(),
                auth,
                headers,
            )
            .header(ACCEPT, EVENT_STREAM);
        if let Some(id) = last_event_id {
            request = request.header(LAST_EVENT_HEADER, id);
        }
        let response = request
            .send()
            .await
            .map_err(|e| StreamableHttpError::Client(e.into()))?;
        let status = response.status();
        if status == reqwest::StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if !status.is_success() {
            return Err(unexpected(format!("HTTP {status}")));
        }
        if !is(&response, EVENT_STREAM) {
            return Err(StreamableHttpError::UnexpectedContentType(None));
        }
        Ok(events(response))
    }
}
