//! What a hostile client cannot do: grow the server's memory through its
//! metrics, drive local mode from another web site, hold connections with
//! bodies that never arrive, or crash the server with its configuration.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::SinkExt;
use serde_json::{Value, json};
use sluice_test_support::client::WsClient;
use sluice_test_support::harness::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Longest wait for the server to answer or close (a hang guard).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Sends `request` as it is on a new connection; what the server wrote
/// before it closed the connection (or stopped writing for the hang guard).
async fn raw(h: &Harness, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(h.sluice.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(&mut stream).await
}

async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(ANSWER_WITHIN, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the connection was still open after {ANSWER_WITHIN:?}: {}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn envelope_of(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

/// Methods are a metric label; a client may send any token as one. Each
/// random method would have been a new series for good (2,000 of 60 KB
/// grew `/metrics` to 120 MB); they fold into `other`.
#[tokio::test]
async fn random_methods_do_not_grow_the_metrics() {
    let h = Harness::start(BIN);
    let before = h.metrics().await.len();
    for i in 0..50 {
        let method = format!("M{i}{}", "X".repeat(4000));
        let answer = raw(
            &h,
            format!(
                "{method} /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), 405, "{answer}");
        assert_eq!(envelope_of(&answer)["error"]["code"], "method_not_allowed");
        assert!(
            answer.to_ascii_lowercase().contains("allow: get, post"),
            "{answer}"
        );
    }
    let metrics = h.metrics().await;
    assert!(!metrics.contains("XXXX"), "a method became a label");
    assert!(
        metrics.contains(
            r#"sluice_http_requests_total{method="other",route="/v1/sessions",status="405"} 50"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.len() < before + 4096,
        "{} -> {} bytes",
        before,
        metrics.len()
    );
}

/// Local mode (no token) serves its own machine's browser, not the web
/// pages in it: a foreign `Host` (DNS rebinding) or `Origin` is refused,
/// and so is a JSON route's body a cross-site form can send.
#[tokio::test]
async fn local_mode_refuses_other_sites() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=3").await;
    let forbidden = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    };
    // DNS rebinding: the page's own host name, now pointing here.
    let listed = h
        .http
        .get(h.url("/v1/sessions"))
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    forbidden(listed).await;
    for origin in ["https://evil.example", "null"] {
        let response = h
            .http
            .post(h.url("/v1/sessions"))
            .header("Origin", origin)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        forbidden(response).await;
        let mut request = h.ws_url(&id, "").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        let refused = tokio_tungstenite::connect_async(request).await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
            panic!("a WebSocket from {origin} was accepted");
        };
        assert_eq!(response.status(), 403);
    }
    // The page's own origin is welcome.
    let own = format!("http://{}", h.sluice.addr);
    let response = h
        .http
        .post(h.url("/v1/sessions"))
        .header("Origin", &own)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // Bodies a cross-site form can send without CORS are not JSON here.
    let asked = h.upstream.requests().len();
    for (path, body) in [
        ("/v1/sessions".to_owned(), r#"{"title":"x"}"#),
        (
            format!("/v1/sessions/{id}/messages"),
            r#"{"content":"spend"}"#,
        ),
        (
            "/v1/chat/completions".to_owned(),
            r#"{"messages":[{"role":"user","content":"spend"}]}"#,
        ),
    ] {
        for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
            let response = h
                .http
                .post(h.url(&path))
                .header("Content-Type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 415, "{path} as {content_type}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "unsupported_media_type");
        }
    }
    assert_eq!(h.upstream.requests().len(), asked, "no tokens were spent");
}

/// A request body that stops arriving is answered `408` in the envelope and
/// its connection closed, as a request head that stops arriving is: many of
/// them cannot hold the server's connections.
#[tokio::test]
async fn a_stalled_body_is_answered_and_its_connection_closed() {
    let h = Harness::start(BIN);
    // The head, then the start of a body that never ends.
    let head = |path: &str, framing: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n\r\n{body}"
        )
    };
    let started = Instant::now();
    let stalled: Vec<_> = [
        head("/v1/sessions", "Content-Length: 1000", "{"),
        head("/v1/sessions", "Content-Length: 1000", ""),
        head(
            "/v1/chat/completions",
            "Transfer-Encoding: chunked",
            "10\r\n{\"messages\"",
        ),
    ]
    .into_iter()
    .map(|request| {
        let addr = h.sluice.addr;
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            read_until_closed(&mut stream).await
        })
    })
    .collect();
    for answer in stalled {
        let answer = answer.await.unwrap();
        assert_eq!(status_of(&answer), 408, "{answer}");
        assert_eq!(envelope_of(&answer)["error"]["code"], "request_timeout");
    }
    eprintln!("stalled bodies answered after {:?}", started.elapsed());
    // A route that reads no body answers at once, and does not keep the
    // connection waiting for the rest.
    for framing in [
        "Content-Length: 1000",
        "Transfer-Encoding: chunked\r\n\r\n10",
    ] {
        let request = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n\r\n{{");
        let answer = raw(&h, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
}

/// A text message may arrive in fragments, and a character may be split
/// between two of them: the message is checked as UTF-8 once it is whole.
#[tokio::test]
async fn a_fragmented_message_may_split_a_character() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=2").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(h.ws_url(&id, ""))
        .await
        .unwrap();
    let text = r#"{"type":"send","content":"h€llo"}"#.as_bytes();
    let split = text.iter().position(|b| *b == 0xE2).unwrap() + 1;
    let fragment = |payload: &[u8], opcode, last| {
        Message::Frame(Frame::message(payload.to_vec(), opcode, last))
    };
    ws.send(fragment(&text[..split], OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    ws.send(fragment(&text[split..], OpCode::Data(Data::Continue), true))
        .await
        .unwrap();
    let mut client = WsClient::from_stream(ws);
    let answer = loop {
        let frame = client.next_json().await;
        if frame["type"] == "user_message" || frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(answer["type"], "user_message", "{answer}");
    assert_eq!(answer["message"]["content"], "h€llo");
}

/// A bad configuration value is one line naming the variable and what it
/// accepts, exit status 2, and never a panic or a backtrace.
#[test]
fn bad_configuration_values_are_one_line_errors() {
    for (name, value) in [
        ("SLUICE_LEASE_SECONDS", "-1"),
        ("SLUICE_LEASE_SECONDS", "nan"),
        ("SLUICE_LEASE_SECONDS", "1e30"),
        ("SLUICE_REQUEST_TIMEOUT_SECONDS", "inf"),
        ("SLUICE_WORKERS", "100000000"),
        ("SLUICE_CONTINUATION", "sometimes"),
    ] {
        let output = Command::new(BIN)
            .env_clear()
            .env("RUST_BACKTRACE", "1")
            .env("SLUICE_DATA_DIR", tempfile::tempdir().unwrap().path())
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}={value}: {stderr}");
        assert!(stderr.starts_with(&format!("sluice: {name}=")), "{stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

/// A cursor is a seq, at most 2^63 - 1: a larger one is refused (it used to
/// wrap around to `gap from_seq 0`, or panic in a debug build); in a
/// `resume` frame it is an `error` frame, and the connection goes on.
#[tokio::test]
async fn cursors_beyond_the_largest_seq_are_refused() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=2").await;
    let huge = u64::MAX;
    let response = h
        .http
        .get(h.events_url(&id, &format!("?after={huge}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        WsClient::connect(&h.ws_url(&id, &format!("?after={huge}")))
            .await
            .is_err()
    );
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    ws.until("snapshot").await;
    ws.send_json(json!({"type": "resume", "after": huge})).await;
    let frame = ws.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{frame}"
    );
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
}

/// A client that hangs up on its SSE stream frees it at once: it used to be
/// noticed only at the second write after it left (the second 15 s ping),
/// so 3,000 closed streams held 3,000 sockets for 30 s, and a user who
/// reloaded a few tabs found its streams per user used up.
#[tokio::test]
async fn a_stream_whose_client_left_is_freed_at_once() {
    let h = Harness::start_with(BIN, &[("SLUICE_MAX_STREAMS_PER_USER", "5")]);
    let id = h.create_session("fake:tokens=2").await;
    let live = || async {
        let metrics = h.metrics().await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("sluice_live_connections{transport=\"sse\"} "))
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    for round in 0..3 {
        let mut streams = Vec::new();
        for _ in 0..5 {
            let mut stream = TcpStream::connect(h.sluice.addr).await.unwrap();
            let request =
                format!("GET /v1/sessions/{id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HTTP/1.1 200", "round {round}");
            streams.push(stream);
        }
        assert_eq!(live().await, 5);
        drop(streams);
        // Well before the first ping (15 s) could have told.
        let freed_by = Instant::now() + Duration::from_secs(5);
        while live().await > 0 {
            assert!(Instant::now() < freed_by, "closed streams still held");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A request the HTTP parser refuses is answered in the envelope (it used
/// to be an empty `400`, `431` or `408`, made by actix-http before any of
/// Sluice's code ran), and is not an ERROR in the log: any client could
/// write those at will ("stream error: request parse error" used to be
/// logged at ERROR for each).
#[tokio::test]
async fn requests_that_break_http_are_answered_in_the_envelope_and_not_errors_in_the_log() {
    let h = Harness::start(BIN);
    let huge_header = [
        &b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "[..],
        &vec![b'a'; 300_000],
        b"\r\n\r\n",
    ]
    .concat();
    for (request, status, code) in [
        (&b"GARBAGE\r\n\r\n"[..], 400, "bad_request"),
        (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
            400,
            "bad_request",
        ),
        (&huge_header, 431, "bad_request"),
        // A head that never ends.
        (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            408,
            "request_timeout",
        ),
    ] {
        let answer = raw(&h, request).await;
        assert_eq!(status_of(&answer), status, "{answer}");
        assert_eq!(envelope_of(&answer)["error"]["code"], code, "{answer}");
    }
    // The server still serves, and logged none of it as an error.
    let health = h.http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let logs = h.sluice.logs.lock().unwrap().clone();
    let errors: Vec<&String> = logs.iter().filter(|l| l.contains("\"ERROR\"")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// The OpenAI-compatible route bounds what it relays: a 1 MB model name
/// (which the answer used to echo), `n=100`, `max_tokens=-1` and
/// `temperature: "NaN"` were all passed on to the provider. Each is now
/// `400 bad_request` naming the field, and the provider is not asked.
#[tokio::test]
async fn the_openai_route_refuses_options_out_of_range() {
    let h = Harness::start(BIN);
    let huge_model = "m".repeat(1 << 19);
    let many: Vec<Value> = (0..10_000)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    for (field, body) in [
        (
            "model",
            json!({"model": huge_model, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "n",
            json!({"n": 100, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "max_tokens",
            json!({"max_tokens": -1, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "temperature",
            json!({"temperature": "NaN", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("messages", json!({"messages": many})),
    ] {
        let response = h
            .http
            .post(h.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{field}");
        let envelope: Value = response.json().await.unwrap();
        assert_eq!(envelope["error"]["code"], "bad_request", "{field}");
        let message = envelope["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{field}: {message}");
        assert!(message.len() < 200, "{field}: the answer echoes the input");
    }
    assert!(h.upstream.requests().is_empty(), "the provider was asked");
}

/// A WebSocket opened by hand on a raw socket, to send what no client
/// library would.
struct RawWs {
    stream: TcpStream,
    read: Vec<u8>,
}

impl RawWs {
    async fn open(h: &Harness, id: &str) -> Self {
        let mut stream = TcpStream::connect(h.sluice.addr).await.unwrap();
        let request = format!(
            "GET /v1/sessions/{id}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut ws = Self {
            stream,
            read: Vec::new(),
        };
        while !ws.read.windows(4).any(|w| w == b"\r\n\r\n") {
            ws.fill().await;
        }
        let end = ws.read.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(
            ws.read.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&ws.read)
        );
        ws.read.drain(..end);
        ws
    }

    async fn fill(&mut self) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(ANSWER_WITHIN, self.stream.read(&mut buf))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.read.extend_from_slice(&buf[..n]);
    }

    /// The next frame from the server (never masked, never over 64 KiB
    /// here): its opcode and payload.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.read.len() >= 2 {
                let (opcode, short) = (self.read[0] & 0x0f, usize::from(self.read[1] & 0x7f));
                let (start, len) = match short {
                    126 if self.read.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.read[2], self.read[3]])),
                    ),
                    126 => (usize::MAX, 0),
                    _ => (2, short),
                };
                if start != usize::MAX && self.read.len() >= start + len {
                    let payload = self.read[start..start + len].to_vec();
                    self.read.drain(..start + len);
                    return (opcode, payload);
                }
            }
            self.fill().await;
        }
    }

    /// Frames until a text frame of `kind`.
    async fn until(&mut self, kind: &str) {
        loop {
            let (opcode, payload) = self.frame().await;
            if opcode == 1 && serde_json::from_slice::<Value>(&payload).unwrap()["type"] == kind {
                return;
            }
        }
    }

    /// A masked client frame of `opcode` carrying `payload`.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        let mask = [7u8, 1, 9, 3];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }
}

/// A frame announced over 64 KiB closes its connection with 1009 at its
/// header: the server does not buffer what follows. (It used to hold a
/// frame until it had all of it, so one client could grow the server's
/// memory as fast as it could send.)
#[tokio::test]
async fn a_frame_over_the_limit_is_refused_by_its_header() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=2").await;
    let mut ws = RawWs::open(&h, &id).await;
    ws.until("snapshot").await;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    ws.stream.write_all(&header).await.unwrap();
    // Keep sending: the close comes anyway, long before a terabyte.
    let filler = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    let close = loop {
        if ws.stream.try_write(&filler).is_ok() {
            sent += filler.len();
        }
        match tokio::time::timeout(Duration::from_millis(10), ws.frame()).await {
            Ok((8, payload)) => break payload,
            Ok(_) | Err(_) => assert!(sent < 1 << 30, "no close after {sent} bytes"),
        }
    };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
}

/// A client that sends a command and closes at once (the close frame and
/// the end of its socket right behind the command) still has the command
/// run: frames that arrived are handled before the end is.
#[tokio::test]
async fn a_command_right_before_the_client_leaves_is_not_lost() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=2").await;
    let mut ws = RawWs::open(&h, &id).await;
    ws.until("snapshot").await;
    let mut bytes = RawWs::client_frame(1, br#"{"type":"send","content":"last words"}"#);
    bytes.extend(RawWs::client_frame(8, &1000u16.to_be_bytes()));
    ws.stream.write_all(&bytes).await.unwrap();
    ws.stream.shutdown().await.unwrap();
    let stored = sluice_test_support::wait_until("the message to be stored", || async {
        let session = h.session(&id).await;
        let messages = session["messages"].as_array().cloned().unwrap_or_default();
        messages.first().map(|m| m["content"].clone())
    })
    .await;
    assert_eq!(stored, "last words");
}

/// An address in use stops the start with one line and no panic.
#[test]
fn an_address_in_use_is_one_line() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for (name, value) in [
        ("SLUICE_ADDR", addr.as_str()),
        ("SLUICE_METRICS_ADDR", addr.as_str()),
    ] {
        let output = Command::new(BIN)
            .env_clear()
            .env("RUST_BACKTRACE", "1")
            .env("SLUICE_DATA_DIR", tempfile::tempdir().unwrap().path())
            .env("SLUICE_ADDR", "127.0.0.1:0")
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains("in use"), "{stderr}");
    }
}
