//! Sluice behind the repository's nginx configuration: streams are not
//! buffered, WebSockets upgrade, request ids pass through, affinity holds.

use serde_json::{Value, json};
use sluice_test_support::client::{SseClient, WsClient, token_text};
use sluice_test_support::expected_text;
use sluice_test_support::harness::Harness;
use sluice_test_support::nginx::TestNginx;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[tokio::test]
async fn sse_through_nginx_is_not_buffered() {
    let h = Harness::start(BIN);
    let nginx = TestNginx::start(&[h.sluice.addr]);
    // 40 tokens, 50 ms apart: the answer takes about two seconds.
    let id = h.create_session("fake:tokens=40,delay_ms=50").await;
    // Ask as a browser does, accepting compression: compressing a stream
    // (gzip in front of SSE) is the classic way a proxy holds it back.
    let response = h
        .http
        .get(nginx.url(&format!("/v1/sessions/{id}/events")))
        .header("Accept-Encoding", "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !response.headers().contains_key("content-encoding"),
        "streams are not compressed"
    );
    let mut sse = SseClient::from_response(response);
    // (nginx consumes Sluice's X-Accel-Buffering header; it is an
    // instruction to nginx, so it is not passed on.)
    sse.until("snapshot").await;
    let response = h
        .http
        .post(nginx.url(&format!("/v1/sessions/{id}/messages")))
        .json(&json!({"content": "go"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let mut frames: Vec<Value> = sse
        .until("token")
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    // The first token came through nginx while the answer is still being
    // written (asked of Sluice directly): nginx did not hold the stream.
    let session = h.session(&id).await;
    assert_eq!(session["messages"][1]["status"], "streaming");
    frames.extend(
        sse.until("generation_end")
            .await
            .into_iter()
            .map(|e| e.data),
    );
    assert_eq!(token_text(&frames), expected_text(40));
}

#[tokio::test]
async fn websockets_and_completions_stream_through_nginx() {
    let h = Harness::start(BIN);
    let nginx = TestNginx::start(&[h.sluice.addr]);
    let id = h.create_session("fake:tokens=15").await;
    let mut ws = WsClient::connect(&nginx.ws_url(&format!("/v1/sessions/{id}/ws")))
        .await
        .unwrap();
    assert_eq!(ws.next_json().await["type"], "hello");
    ws.until("snapshot").await;
    ws.send_json(json!({"type": "send", "content": "hi"})).await;
    assert_eq!(
        token_text(&ws.until("generation_end").await),
        expected_text(15)
    );

    let body = h
        .http
        .post(nginx.url("/v1/chat/completions"))
        .json(&json!({"model": "fake:tokens=9", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(body.matches("\"content\":\"<").count(), 9);
}

#[tokio::test]
async fn request_ids_pass_through_and_the_affinity_cookie_is_set_once() {
    let h = Harness::start(BIN);
    let nginx = TestNginx::start(&[h.sluice.addr]);
    let response = h
        .http
        .get(nginx.url("/health"))
        .header("X-Request-Id", "from-client-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "from-client-1");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("sluice_affinity="), "{cookie}");

    // Without an id, nginx makes one and Sluice echoes it.
    let response = h.http.get(nginx.url("/health")).send().await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");

    // A client that has the cookie is not given a new one.
    let value = cookie.split(';').next().unwrap();
    let response = h
        .http
        .get(nginx.url("/health"))
        .header("Cookie", value)
        .send()
        .await
        .unwrap();
    assert!(!response.headers().contains_key("set-cookie"));
}
