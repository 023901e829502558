//! Clients that read Sluice frames over WebSocket and SSE.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Longest wait for one frame before a test fails (a hang guard).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// A WebSocket connection as `tokio-tungstenite` opens it.
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a WebSocket read returned.
#[derive(Debug)]
pub enum WsFrame {
    /// A JSON text frame.
    Json(Value),
    /// The server closed, with its close frame.
    Closed(Option<CloseFrame>),
}

/// A WebSocket client.
pub struct WsClient {
    stream: WsStream,
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (stream, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self { stream })
    }

    /// Reads Sluice frames from a connection opened elsewhere.
    pub fn from_stream(stream: WsStream) -> Self {
        Self { stream }
    }

    /// Connects with a small receive buffer, so that a client that stops
    /// reading backs up into the server quickly (a slow consumer).
    pub async fn connect_slow(url: &str, recv_buffer: u32) -> Self {
        let addr = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("ws://host:port/...");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let tcp = socket
            .connect(addr.parse().expect("address"))
            .await
            .expect("connect");
        let (stream, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                .await
                .expect("handshake");
        Self { stream }
    }

    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("send frame");
    }

    /// Sends a raw message.
    pub async fn send(
        &mut self,
        message: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.stream.send(message).await
    }

    /// The next text frame as JSON, or the close; pings are skipped (the
    /// hang guard counts from the call, so pings cannot keep it waiting).
    pub async fn next(&mut self) -> WsFrame {
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a frame within the timeout");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return WsFrame::Json(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Ok(Message::Close(frame))) => return WsFrame::Closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return WsFrame::Closed(None),
            }
        }
    }

    /// The next JSON frame; panics on close.
    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            WsFrame::Json(v) => v,
            WsFrame::Closed(frame) => panic!("closed while waiting for a frame: {frame:?}"),
        }
    }

    /// Reads frames until one of type `kind`, returning everything read.
    pub async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next_json().await;
            let done = frame["type"] == kind;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// One SSE message.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `id:`, if any.
    pub id: Option<String>,
    /// `event:`.
    pub event: String,
    /// `data:` parsed as JSON.
    pub data: Value,
}

/// An SSE client over reqwest.
pub struct SseClient {
    stream: futures::stream::BoxStream<'static, Result<eventsource_stream::Event, String>>,
    /// The response's headers.
    pub headers: reqwest::header::HeaderMap,
}

impl SseClient {
    /// Opens `url`, with `Last-Event-ID` if given. Panics unless 200.
    pub async fn connect(url: &str, last_event_id: Option<u64>) -> Self {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("SSE request");
        assert_eq!(response.status(), 200, "SSE status");
        Self::from_response(response)
    }

    /// Reads an already opened SSE response.
    pub fn from_response(response: reqwest::Response) -> Self {
        use eventsource_stream::Eventsource;
        let headers = response.headers().clone();
        let stream = response
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed();
        Self { stream, headers }
    }

    /// The next message; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        let item = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
            .await
            .expect("an SSE message within the timeout")?;
        let event = item.ok()?;
        Some(SseEvent {
            id: (!event.id.is_empty()).then_some(event.id),
            event: event.event,
            data: serde_json::from_str(&event.data).expect("JSON data"),
        })
    }

    /// Reads messages until one of type `kind`, returning everything read.
    pub async fn until(&mut self, kind: &str) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await.expect("stream ended early");
            let done = event.event == kind;
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

/// The concatenated `delta` of every `token` frame in `frames`.
pub fn token_text(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "token")
        .map(|f| f["delta"].as_str().unwrap_or_default())
        .collect()
}

/// The `seq` of every frame that has one.
pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter_map(|f| f["seq"].as_u64()).collect()
}
