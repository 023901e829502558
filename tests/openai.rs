//! The OpenAI-compatible API (PROTOCOL.md §7), relayed to a fake upstream
//! that speaks the real format.

use futures::StreamExt;
use serde_json::{Value, json};
use sluice_test_support::expected_text;
use sluice_test_support::harness::Harness;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Reads an OpenAI SSE response: the `data:` payloads in order.
async fn data_lines(response: reqwest::Response) -> Vec<String> {
    let mut body = String::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    body.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| block.strip_prefix("data: ").expect("data line").to_owned())
        .collect()
}

fn content_of(lines: &[String]) -> String {
    lines
        .iter()
        .filter(|l| *l != "[DONE]")
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn streaming_completions_relay_the_upstream_chunks_unchanged() {
    let h = Harness::start(BIN);
    let response = h
        .http
        .post(h.url("/v1/chat/completions"))
        .json(&json!({
            "model": "fake:tokens=40",
            "stream": true,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "temperature": 0.3,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let lines = data_lines(response).await;
    assert_eq!(lines.last().unwrap(), "[DONE]");
    assert_eq!(content_of(&lines), expected_text(40));
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(
        first["system_fingerprint"], "fp_fake",
        "unknown fields pass through"
    );
    assert!(
        !lines.iter().any(|l| l.contains("\"usage\"")),
        "no usage chunk unless asked"
    );

    // The upstream got the request unchanged: model, content parts, tools.
    let request = h.upstream.requests().pop().unwrap();
    assert_eq!(request["model"], "fake:tokens=40");
    assert_eq!(request["messages"][0]["content"][0]["text"], "hi");
    assert_eq!(request["tools"][0]["function"]["name"], "f");
    assert_eq!(request["temperature"], 0.3);
    assert_eq!(request["stream"], true);
}

#[tokio::test]
async fn usage_is_streamed_when_asked_and_the_default_model_applies() {
    let h = Harness::start(BIN);
    let response = h
        .http
        .post(h.url("/v1/chat/completions"))
        .json(&json!({"stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let lines = data_lines(response).await;
    let usage: Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 20);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        h.upstream.requests().pop().unwrap()["model"],
        "fake:tokens=20",
        "SLUICE_LLM_MODEL is the default"
    );
}

#[tokio::test]
async fn non_streaming_completions_return_the_completion_object() {
    let h = Harness::start(BIN);
    let response = h
        .http
        .post(h.url("/v1/chat/completions"))
        .json(&json!({"model": "fake:tokens=6", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], expected_text(6));
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(h.upstream.requests().pop().unwrap()["stream"], false);
}

#[tokio::test]
async fn upstream_and_request_errors_use_the_envelope() {
    let h = Harness::start_with(BIN, &[("SLUICE_REQUEST_TIMEOUT_SECONDS", "1")]);
    let post = |body: Value| {
        h.http
            .post(h.url("/v1/chat/completions"))
            .json(&body)
            .send()
    };
    for (body, status, code) in [
        (
            json!({"model": "fake:status=500", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
            502,
            "upstream_error",
        ),
        (
            json!({"model": "fake:status=503", "messages": [{"role": "user", "content": "x"}]}),
            502,
            "upstream_error",
        ),
        (
            json!({"model": "fake:first_delay_ms=3000", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
            504,
            "upstream_timeout",
        ),
        (json!({"messages": []}), 400, "bad_request"),
        (
            json!({"messages": [{"content": "no role"}]}),
            400,
            "bad_request",
        ),
        (
            json!({"model": 5, "messages": [{"role": "user", "content": "x"}]}),
            400,
            "bad_request",
        ),
    ] {
        let response = post(body.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}");
    }
    // A failure after the first chunk arrives inside the stream, then it ends.
    let response = post(json!({"model": "fake:drop_after=3", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lines = data_lines(response).await;
    assert_eq!(content_of(&lines[..lines.len() - 1]), expected_text(3));
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error");
}

/// A provider's refusal (4xx) is the request's fault: it keeps its status
/// and the provider's `code`, `param` and message, so SDKs do not retry it
/// as they would a 502, and the provider is asked once.
#[tokio::test]
async fn a_providers_refusal_keeps_its_status_and_fields() {
    let h = Harness::start(BIN);
    for (status, stream) in [(400, false), (404, true), (422, true)] {
        let model = format!("fake:status={status}");
        let response = h
            .http
            .post(h.url("/v1/chat/completions"))
            .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{model}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"],
            json!({"message": format!("fake failure {status}"), "type": "invalid_request_error",
                   "param": "model", "code": "fake_refusal"}),
            "{model}"
        );
        let asked = h
            .upstream
            .requests()
            .iter()
            .filter(|r| r["model"] == model.as_str())
            .count();
        assert_eq!(asked, 1, "{model} was not retried");
    }
}

#[tokio::test]
async fn models_are_listed_and_retrieved() {
    let h = Harness::start(BIN);
    let body: Value = h.get_json(&h.url("/v1/models")).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "fake:tokens=20");
    let model = h
        .http
        .get(h.url("/v1/models/fake:tokens=20"))
        .send()
        .await
        .unwrap();
    assert_eq!(model.status(), 200);
    let model: Value = model.json().await.unwrap();
    assert_eq!(model["id"], "fake:tokens=20");
    assert_eq!(model["object"], "model");
    let unknown = h.http.get(h.url("/v1/models/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(unknown["error"]["code"], "not_found");
}
