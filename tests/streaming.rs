//! The session event stream over WebSocket and SSE, against the real binary
//! and a fake upstream that speaks the OpenAI streaming format: streaming,
//! every resume rule of PROTOCOL.md §4, cancel, idempotency, conflict,
//! upstream failures, and malformed input.

use serde_json::{Value, json};
use sluice_test_support::client::{SseClient, WsClient, WsFrame, seqs, token_text};
use sluice_test_support::expected_text;
use sluice_test_support::harness::Harness;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Frames from an SSE client as JSON objects (the same objects as on WS),
/// checking that events carry `id:` equal to their `seq` and control frames none.
fn sse_frames(events: &[sluice_test_support::client::SseEvent]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.data["type"], e.event.as_str(), "event: matches type");
            match e.data["seq"].as_u64() {
                Some(seq) => assert_eq!(e.id.as_deref(), Some(seq.to_string().as_str())),
                None => assert_eq!(e.id, None, "control frames have no id"),
            }
            e.data.clone()
        })
        .collect()
}

/// Checks one whole generation's frames: contiguous seqs, the full text,
/// and the end.
fn check_generation(frames: &[Value], tokens: usize, first_seq: u64) {
    let seqs = seqs(frames);
    let expected: Vec<u64> = (first_seq..first_seq + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs are contiguous with no duplicate");
    assert_eq!(token_text(frames), expected_text(tokens));
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "generation_end");
    assert_eq!(end["finish_reason"], "stop");
    assert_eq!(end["usage"]["completion_tokens"], tokens as u64);
}

#[tokio::test]
async fn websocket_streams_a_generation() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=30").await;
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    let hello = ws.next_json().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["session_id"], id.as_str());
    assert_eq!(hello["last_seq"], 0);
    assert_eq!(hello["generating"], false);
    assert!(hello["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(
        ws.next_json().await,
        json!({"type": "snapshot", "last_seq": 0})
    );

    ws.send_json(json!({"type": "send", "content": "hello", "client_msg_id": "c1"}))
        .await;
    let frames = ws.until("generation_end").await;
    assert_eq!(frames[0]["type"], "user_message");
    assert_eq!(frames[0]["message"]["content"], "hello");
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "title" && f["title"] == "hello")
    );
    let start = frames
        .iter()
        .find(|f| f["type"] == "generation_start")
        .unwrap();
    assert_eq!(
        start["model"], "fake:tokens=30",
        "the session's model goes to the provider"
    );
    check_generation(&frames, 30, 1);

    let session = h.session(&id).await;
    assert_eq!(session["last_seq"], frames.last().unwrap()["seq"]);
    let messages = session["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["status"], "complete");
    assert_eq!(messages[1]["content"], expected_text(30));
    // The provider got the model unchanged, the key, and the user's text.
    let request = h.upstream.requests().pop().unwrap();
    assert_eq!(request["model"], "fake:tokens=30");
    assert_eq!(request["_authorization"], "Bearer upstream-key");
    assert_eq!(
        request["messages"].as_array().unwrap().last().unwrap()["content"],
        "hello"
    );
}

#[tokio::test]
async fn sse_streams_a_generation_with_the_documented_headers() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=25").await;
    let mut sse = SseClient::connect(&h.events_url(&id, ""), None).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    assert!(sse.headers.contains_key("x-request-id"));
    let head = sse_frames(&[sse.next().await.unwrap(), sse.next().await.unwrap()]);
    assert_eq!(head[0]["type"], "hello");
    assert_eq!(head[1]["type"], "snapshot");

    let response = h.send(&id, "hi", None).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let frames = sse_frames(&sse.until("generation_end").await);
    assert_eq!(frames[0]["message"]["id"], accepted["message_id"]);
    let start = frames
        .iter()
        .find(|f| f["type"] == "generation_start")
        .unwrap();
    assert_eq!(start["generation_id"], accepted["generation_id"]);
    check_generation(&frames, 25, 1);
}

/// The stream opens with a `retry:` field, so a browser's `EventSource`
/// resumes a second after the stream ends instead of its default of about
/// three seconds.
#[tokio::test]
async fn sse_tells_the_browser_how_soon_to_reconnect() {
    use futures::StreamExt;
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=2").await;
    let response = h.http.get(h.events_url(&id, "")).send().await.unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("event: hello") {
        let chunk = body.next().await.expect("more of the stream").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("retry: 1000\n\n"), "{text}");
}

/// Reads frames until at least `tokens` token frames were seen.
async fn read_tokens(ws: &mut WsClient, tokens: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames
        .iter()
        .filter(|f: &&Value| f["type"] == "token")
        .count()
        < tokens
    {
        frames.push(ws.next_json().await);
    }
    frames
}

#[tokio::test]
async fn websocket_disconnect_then_resume_gets_every_token_exactly_once() {
    let h = Harness::start(BIN);
    let (id, mut ws) = h.session_with_ws("fake:tokens=300,delay_ms=2", "go").await;
    let before = read_tokens(&mut ws, 40).await;
    let cursor = *seqs(&before).last().unwrap();
    ws.close().await;

    // Reconnect with the cursor: hello, then every event after it.
    let mut ws = WsClient::connect(&h.ws_url(&id, &format!("?after={cursor}")))
        .await
        .unwrap();
    assert_eq!(ws.next_json().await["type"], "hello");
    let after = ws.until("generation_end").await;
    assert_eq!(
        after[0]["seq"],
        cursor + 1,
        "the replay starts right after the cursor"
    );
    let all: Vec<Value> = before.into_iter().chain(after).collect();
    check_generation(&all, 300, 1);
}

#[tokio::test]
async fn websocket_resume_frame_replays_on_the_same_connection() {
    let h = Harness::start(BIN);
    let (_, mut ws) = h.session_with_ws("fake:tokens=50", "go").await;
    let first = ws.until("generation_end").await;
    ws.send_json(json!({"type": "resume", "after": 10})).await;
    assert_eq!(ws.next_json().await["type"], "hello");
    let replay = ws.until("generation_end").await;
    assert_eq!(seqs(&replay), seqs(&first)[10..].to_vec());
    assert_eq!(replay, first[10..].to_vec(), "the replay is byte-identical");
}

#[tokio::test]
async fn sse_disconnect_then_resume_with_last_event_id_or_after() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=300,delay_ms=2").await;
    let mut sse = SseClient::connect(&h.events_url(&id, ""), None).await;
    sse.until("snapshot").await;
    assert_eq!(h.send(&id, "go", None).await.status(), 202);
    let mut before = Vec::new();
    while before
        .iter()
        .filter(|f: &&Value| f["type"] == "token")
        .count()
        < 30
    {
        before.extend(sse_frames(&[sse.next().await.unwrap()]));
    }
    drop(sse);
    let cursor = *seqs(&before).last().unwrap();

    // Resume with the Last-Event-ID header, as EventSource does.
    let mut sse = SseClient::connect(&h.events_url(&id, ""), Some(cursor)).await;
    let resumed = sse_frames(&sse.until("generation_end").await);
    assert_eq!(resumed[0]["type"], "hello");
    let all: Vec<Value> = before
        .iter()
        .cloned()
        .chain(resumed[1..].iter().cloned())
        .collect();
    check_generation(&all, 300, 1);

    // And with ?after=, from an older cursor.
    let mut sse = SseClient::connect(&h.events_url(&id, "?after=5"), None).await;
    let replay = sse_frames(&sse.until("generation_end").await);
    assert_eq!(seqs(&replay), seqs(&all)[5..].to_vec());
}

#[tokio::test]
async fn a_client_joining_mid_stream_gets_a_snapshot_then_live_tokens() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=300,delay_ms=2").await;
    let mut first = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    first.until("snapshot").await;
    first
        .send_json(json!({"type": "send", "content": "go"}))
        .await;
    read_tokens(&mut first, 20).await;

    // A second tab over SSE, and a third over WS, with no cursor.
    let mut sse = SseClient::connect(&h.events_url(&id, ""), None).await;
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    for frames in [
        sse_frames(&sse.until("generation_end").await),
        ws.until("generation_end").await,
    ] {
        assert_eq!(frames[0]["type"], "hello");
        assert_eq!(frames[0]["generating"], true);
        let snapshot = &frames[1];
        assert_eq!(snapshot["type"], "snapshot");
        assert_eq!(snapshot["last_seq"], frames[0]["last_seq"]);
        let partial = snapshot["partial"]["content"].as_str().unwrap().to_owned();
        assert!(!partial.is_empty());
        let live = &frames[2..];
        assert_eq!(
            live[0]["seq"].as_u64().unwrap(),
            snapshot["last_seq"].as_u64().unwrap() + 1
        );
        assert_eq!(
            partial + &token_text(live),
            expected_text(300),
            "snapshot + live = the whole answer"
        );
    }
    first.until("generation_end").await;
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_a_gap_then_a_snapshot() {
    let h = Harness::start_with(BIN, &[("SLUICE_EVENT_RETENTION", "10")]);
    let (id, mut ws) = h.session_with_ws("fake:tokens=40", "go").await;
    let frames = ws.until("generation_end").await;
    let last_seq = frames.last().unwrap()["seq"].as_u64().unwrap();

    let mut ws = WsClient::connect(&h.ws_url(&id, "?after=2")).await.unwrap();
    assert_eq!(ws.next_json().await["type"], "hello");
    assert_eq!(ws.next_json().await, json!({"type": "gap", "from_seq": 3}));
    assert_eq!(
        ws.next_json().await,
        json!({"type": "snapshot", "last_seq": last_seq})
    );

    let mut sse = SseClient::connect(&h.events_url(&id, ""), Some(2)).await;
    let head: Vec<Value> = sse_frames(&[
        sse.next().await.unwrap(),
        sse.next().await.unwrap(),
        sse.next().await.unwrap(),
    ]);
    assert_eq!(head[1], json!({"type": "gap", "from_seq": 3}));
    assert_eq!(head[2]["type"], "snapshot");

    // A cursor inside retention still replays.
    let mut ws = WsClient::connect(&h.ws_url(&id, &format!("?after={}", last_seq - 3)))
        .await
        .unwrap();
    ws.next_json().await;
    assert_eq!(
        seqs(&ws.until("generation_end").await),
        vec![last_seq - 2, last_seq - 1, last_seq]
    );
}

#[tokio::test]
async fn cancel_stops_the_generation_and_keeps_the_partial_text() {
    let h = Harness::start(BIN);
    let (id, mut ws) = h.session_with_ws("fake:tokens=5000,delay_ms=5", "go").await;
    read_tokens(&mut ws, 5).await;
    // Cancel over REST (a WS cancel is covered below).
    let response = h
        .http
        .post(h.url(&format!("/v1/sessions/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let end = ws.until("generation_end").await.pop().unwrap();
    assert_eq!(end["finish_reason"], "cancelled");
    let session = h.session(&id).await;
    let assistant = &session["messages"][1];
    assert_eq!(assistant["status"], "cancelled");
    let text = assistant["content"].as_str().unwrap();
    assert!(
        !text.is_empty() && expected_text(5000).starts_with(text),
        "{text}"
    );

    // Cancel with nothing running is still 200; a new send works after it.
    let response = h
        .http
        .post(h.url(&format!("/v1/sessions/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    ws.send_json(json!({"type": "send", "content": "again"}))
        .await;
    read_tokens(&mut ws, 1).await;
    ws.send_json(json!({"type": "cancel"})).await;
    assert_eq!(
        ws.until("generation_end").await.pop().unwrap()["finish_reason"],
        "cancelled"
    );
}

#[tokio::test]
async fn the_same_client_msg_id_makes_one_message_and_one_generation() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=5").await;
    let first: Value = h
        .send(&id, "hi", Some("retry-1"))
        .await
        .json()
        .await
        .unwrap();
    let second = h.send(&id, "hi", Some("retry-1")).await;
    assert_eq!(second.status(), 202);
    // Answered as the first was, and said to be a retry.
    let replayed = |mut answer: Value| {
        assert_eq!(answer["replayed"], true, "{answer}");
        answer.as_object_mut().unwrap().remove("replayed");
        answer
    };
    assert!(first.get("replayed").is_none(), "{first}");
    assert_eq!(replayed(second.json::<Value>().await.unwrap()), first);

    let mut ws = WsClient::connect(&h.ws_url(&id, "?after=0")).await.unwrap();
    ws.next_json().await;
    ws.until("generation_end").await;
    // After the generation ended, the same id is still answered, not repeated.
    let third: Value = h
        .send(&id, "hi", Some("retry-1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(replayed(third), first);
    ws.send_json(json!({"type": "send", "content": "hi", "client_msg_id": "retry-1"}))
        .await;
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "pong"}),
        "no new events, no error"
    );
    let session = h.session(&id).await;
    assert_eq!(session["messages"].as_array().unwrap().len(), 2);
    assert_eq!(h.upstream.requests().len(), 1);
}

#[tokio::test]
async fn a_send_during_a_generation_is_a_conflict() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=5000,delay_ms=5").await;
    assert_eq!(h.send(&id, "one", None).await.status(), 202);
    let response = h.send(&id, "two", None).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(body["error"]["type"], "conflict");

    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    ws.until("snapshot").await;
    ws.send_json(json!({"type": "send", "content": "three"}))
        .await;
    let frames = ws.until("error").await;
    assert_eq!(frames.last().unwrap()["code"], "conflict");
    ws.send_json(json!({"type": "cancel"})).await;
    assert_eq!(
        ws.until("generation_end").await.pop().unwrap()["finish_reason"],
        "cancelled"
    );
}

/// Sends one message in a fresh session using `model` and returns the
/// generation's frames.
async fn generation_with(h: &Harness, model: &str) -> (String, Vec<Value>) {
    let (id, mut ws) = h.session_with_ws(model, "go").await;
    (id, ws.until("generation_end").await)
}

#[tokio::test]
async fn upstream_failures_end_the_generation_with_the_documented_error() {
    let h = Harness::start_with(BIN, &[("SLUICE_REQUEST_TIMEOUT_SECONDS", "1")]);

    // Before the first token: upstream_error, nothing streamed.
    let (id, frames) = generation_with(&h, "fake:status=500").await;
    let end = frames.last().unwrap();
    assert_eq!(end["finish_reason"], "error");
    assert_eq!(end["error"]["code"], "upstream_error");
    assert!(end["error"]["message"].as_str().unwrap().contains("500"));
    assert_eq!(token_text(&frames), "");
    assert_eq!(h.session(&id).await["messages"][1]["status"], "error");

    // A transient failure before the first token is retried.
    let (_, frames) = generation_with(&h, "fake:status=503,fail_times=1,tokens=7").await;
    assert_eq!(frames.last().unwrap()["finish_reason"], "stop");
    assert_eq!(token_text(&frames), expected_text(7));

    // After the first token: no retry (it would repeat text); the partial
    // answer is kept.
    let (id, frames) = generation_with(&h, "fake:drop_after=5,tokens=20").await;
    let end = frames.last().unwrap();
    assert_eq!(end["finish_reason"], "error");
    assert_eq!(end["error"]["code"], "upstream_error");
    assert_eq!(token_text(&frames), expected_text(5));
    let assistant = &h.session(&id).await["messages"][1];
    assert_eq!(assistant["status"], "error");
    assert_eq!(assistant["content"], expected_text(5));

    // Silence before the first token, and after some: upstream_timeout.
    for model in ["fake:first_delay_ms=5000", "fake:stall_after=3"] {
        let (_, frames) = generation_with(&h, model).await;
        let end = frames.last().unwrap();
        assert_eq!(end["error"]["code"], "upstream_timeout", "{model}");
    }
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_the_connection_stays() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=5").await;
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    let mut neighbour = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    ws.until("snapshot").await;
    neighbour.until("snapshot").await;
    for (frame, code) in [
        ("not json", "bad_request"),
        (r#"{"type":"launch"}"#, "bad_request"),
        (r#"{"type":"send"}"#, "bad_request"),
        (r#"{"type":"send","content":""}"#, "bad_request"),
        (r#"{"type":"resume","after":"x"}"#, "bad_request"),
    ] {
        ws.send_text(frame).await;
        let error = ws.next_json().await;
        assert_eq!(error["type"], "error", "{frame}");
        assert_eq!(error["code"], code, "{frame}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1, 2, 3,
    ]))
    .await
    .unwrap();
    assert_eq!(ws.next_json().await["code"], "bad_request");
    // Still open and working.
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));

    // A frame over the limit closes that connection with 1009 ...
    let huge = json!({"type": "send", "content": "x".repeat(70 * 1024)}).to_string();
    ws.send_text(&huge).await;
    match ws.next().await {
        WsFrame::Closed(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // ... and its neighbour on the same session is untouched.
    neighbour
        .send_json(json!({"type": "send", "content": "still here"}))
        .await;
    let frames = neighbour.until("generation_end").await;
    assert_eq!(token_text(&frames), expected_text(5));
}

#[tokio::test]
async fn rest_errors_use_the_envelope_and_every_response_has_a_request_id() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake").await;
    let messages = h.url(&format!("/v1/sessions/{id}/messages"));
    let post = || {
        h.http
            .post(&messages)
            .header("Content-Type", "application/json")
    };
    for (name, request, status, code) in [
        ("truncated JSON", post().body("{"), 400, "bad_request"),
        (
            "not declared as JSON",
            h.http.post(&messages).body(r#"{"content":"hi"}"#),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong type",
            post().body(r#"{"content":5}"#),
            400,
            "bad_request",
        ),
        (
            "invalid UTF-8",
            post().body(vec![b'"', 0xff, b'"']),
            400,
            "bad_request",
        ),
        (
            "content over 32 KiB",
            post().json(&json!({"content": "x".repeat(40 * 1024)})),
            413,
            "payload_too_large",
        ),
        (
            "body over 1 MiB",
            post().body(vec![b' '; 2 * 1024 * 1024]),
            413,
            "payload_too_large",
        ),
        (
            "unknown session",
            h.http.get(h.url("/v1/sessions/nope")),
            404,
            "not_found",
        ),
        (
            "unknown route",
            h.http.get(h.url("/v1/nothing-here")),
            404,
            "not_found",
        ),
        (
            "bad query",
            h.http.get(h.url("/v1/sessions?limit=x")),
            400,
            "bad_request",
        ),
        (
            "unknown field",
            h.http
                .post(h.url("/v1/sessions"))
                .header("Content-Type", "application/json; charset=utf-8")
                .body(r#"{"titel":"typo"}"#),
            400,
            "bad_request",
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{name}");
        assert!(response.headers().contains_key("x-request-id"), "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{name}");
        assert_eq!(body["error"]["type"], code, "{name}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    let response = h
        .http
        .get(h.url("/v1/nothing-here"))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    // Unknown sessions are 404 on the streaming routes too.
    let response = h.http.get(h.events_url("nope", "")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(WsClient::connect(&h.ws_url("nope", "")).await.is_err());
}

#[tokio::test]
async fn sessions_are_listed_newest_first_and_deleted() {
    let h = Harness::start(BIN);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.create_session("fake").await);
    }
    let list: Value = h.get_json(&h.url("/v1/sessions?limit=2")).await;
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(list["has_more"], true);
    let older: Value = h
        .get_json(&h.url(&format!("/v1/sessions?before={}", ids[1])))
        .await;
    assert_eq!(older["data"][0]["id"], ids[0].as_str());
    assert_eq!(older["has_more"], false);

    let url = h.url(&format!("/v1/sessions/{}", ids[0]));
    let status =
        |request: reqwest::RequestBuilder| async move { request.send().await.unwrap().status() };
    assert_eq!(status(h.http.delete(&url)).await, 204);
    assert_eq!(status(h.http.get(&url)).await, 404);
    assert_eq!(
        status(h.http.delete(&url)).await,
        404,
        "a second delete finds nothing"
    );
}

#[tokio::test]
async fn a_slow_client_is_coalesced_then_dropped_and_resumes_without_loss() {
    // 2,000 tokens of 10 KB: 20 MB of text, far more than the kernel's
    // socket buffers (4 MiB at most here) plus the 1 MiB queue limit.
    let (tokens, pad) = (2_000, 10_000);
    let h = Harness::start_with(BIN, &[("SLUICE_SUBSCRIBER_MAX_BYTES", "1048576")]);
    let id = h
        .create_session(&format!("fake:tokens={tokens},pad={pad}"))
        .await;
    let mut slow = WsClient::connect_slow(&h.ws_url(&id, ""), 64 * 1024).await;
    slow.until("snapshot").await;
    slow.send_json(json!({"type": "send", "content": "go"}))
        .await;
    // Stop reading until the whole answer is stored: the producer must not
    // wait for this client.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while h.session(&id).await["messages"][1]["status"] != "complete" {
        assert!(
            std::time::Instant::now() < deadline,
            "the generation never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Now read: what was buffered, then a 1013 close.
    let mut frames = Vec::new();
    let close = loop {
        match slow.next().await {
            WsFrame::Json(frame) => frames.push(frame),
            WsFrame::Closed(frame) => break frame,
        }
    };
    assert_eq!(
        u16::from(close.expect("a close frame").code),
        1013,
        "a lagging client is told to come back"
    );
    assert!(!frames.iter().any(|f| f["type"] == "generation_end"));
    let cursor = *seqs(&frames).last().unwrap();
    // Resume from the cursor: the rest, exactly once.
    let mut ws = WsClient::connect(&h.ws_url(&id, &format!("?after={cursor}")))
        .await
        .unwrap();
    assert_eq!(ws.next_json().await["type"], "hello");
    frames.extend(ws.until("generation_end").await);
    assert!(
        token_text(&frames) == sluice_test_support::expected_padded_text(tokens, pad),
        "the text is whole"
    );
    let seqs = seqs(&frames);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs only grow");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sluice_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
}
