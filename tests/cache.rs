//! The response cache (issue: "An agent that uses tools", item 6): the
//! provider is asked once for identical deterministic requests, from
//! sessions and the OpenAI-compatible route alike, on one replica and
//! across two (through Redis); a cached answer streams like any other.

use futures::StreamExt;
use serde_json::{Value, json};
use sluice_test_support::cluster::TestCluster;
use sluice_test_support::expected_text;
use sluice_test_support::harness::Harness;
use sluice_test_support::rest::settled_answer;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECRET: &str = "cache-test-secret-0123456789";

/// Deterministic session generations: temperature 0 and no tools.
const DETERMINISTIC: &[(&str, &str)] = &[("SLUICE_LLM_TEMPERATURE", "0"), ("SLUICE_TOOLS", "none")];

fn mint(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    sluice_web::auth::mint(SECRET, sub, exp).unwrap()
}

/// A session of `model` answering `content` over WebSocket: its events.
async fn answer(h: &Harness, model: &str, content: &str) -> Vec<Value> {
    let (_, mut ws) = h.session_with_ws(model, content).await;
    ws.until("generation_end").await
}

fn text(events: &[Value]) -> String {
    sluice_test_support::client::token_text(events)
}

/// `POST /v1/chat/completions` at `base` as `token`; the response's cache
/// header and its text (joined from the chunks when streamed).
async fn relay(base: &str, token: &str, body: Value) -> (String, String) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cache = response.headers()["x-sluice-cache"]
        .to_str()
        .unwrap()
        .to_owned();
    if body["stream"] != true {
        let completion: Value = response.json().await.unwrap();
        return (
            cache,
            completion["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut text = String::new();
    let mut lines = response.bytes_stream();
    let mut raw = Vec::new();
    while let Some(chunk) = lines.next().await {
        raw.extend_from_slice(&chunk.unwrap());
    }
    for line in String::from_utf8(raw).unwrap().lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(delta);
        }
    }
    (cache, text)
}

#[tokio::test]
async fn a_deterministic_session_answer_is_asked_of_the_provider_once() {
    let h = Harness::start_with(BIN, DETERMINISTIC);
    let first = answer(&h, "fake:tokens=30", "What is Sluice?").await;
    let second = answer(&h, "fake:tokens=30", "What is Sluice?").await;
    assert_eq!(h.upstream.requests().len(), 1);
    // The hit streams as tokens, the same text, and says it was cached.
    assert_eq!(text(&second), expected_text(30));
    assert_eq!(text(&first), text(&second));
    assert!(second.iter().filter(|e| e["type"] == "token").count() > 1);
    let end = second.last().unwrap();
    assert_eq!(end["cached"], true);
    assert_eq!(end["finish_reason"], "stop");
    assert!(first.last().unwrap().get("cached").is_none());
    // Misses: another question, another model.
    answer(&h, "fake:tokens=30", "Something else?").await;
    answer(&h, "fake:tokens=31", "What is Sluice?").await;
    assert_eq!(h.upstream.requests().len(), 3);
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sluice_cache_requests_total{outcome=\"hit_local\",path=\"session\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_cache_requests_total{outcome=\"miss\",path=\"session\"} 3"));
    assert!(metrics.contains("sluice_cache_bytes_total{direction=\"read\"}"));
}

#[tokio::test]
async fn what_is_not_deterministic_or_not_whole_is_never_cached() {
    // Without temperature 0, with tools, or with the cache off: asked each time.
    for env in [
        &[("SLUICE_TOOLS", "none")][..],
        &[("SLUICE_LLM_TEMPERATURE", "0")][..],
        &[
            ("SLUICE_LLM_TEMPERATURE", "0"),
            ("SLUICE_TOOLS", "none"),
            ("SLUICE_CACHE", "off"),
        ][..],
    ] {
        let h = Harness::start_with(BIN, env);
        answer(&h, "fake:tokens=5", "q").await;
        answer(&h, "fake:tokens=5", "q").await;
        assert_eq!(h.upstream.requests().len(), 2, "{env:?}");
    }
    // An answer that failed midway is not kept.
    let h = Harness::start_with(BIN, DETERMINISTIC);
    let broken = answer(&h, "fake:tokens=10,drop_after=5", "q").await;
    assert_eq!(broken.last().unwrap()["finish_reason"], "error");
    answer(&h, "fake:tokens=10,drop_after=5", "q").await;
    assert_eq!(h.upstream.requests().len(), 2);
}

#[tokio::test]
async fn the_openai_route_reuses_answers_per_user() {
    let h = Harness::start_with(BIN, &[("SLUICE_JWT_SECRET", SECRET)]);
    let base = h.url("");
    let (alice, bob) = (mint("alice"), mint("bob"));
    let body = |stream: bool, temperature: f64| {
        let mut body = json!({"model": "fake:tokens=12", "stream": stream, "temperature": temperature,
                              "messages": [{"role": "user", "content": "hello"}]});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    };
    assert_eq!(
        relay(&base, &alice, body(true, 0.0)).await,
        ("miss".into(), expected_text(12))
    );
    // Streamed or whole, the same answer, from the cache.
    assert_eq!(
        relay(&base, &alice, body(true, 0.0)).await,
        ("hit".into(), expected_text(12))
    );
    assert_eq!(
        relay(&base, &alice, body(false, 0.0)).await,
        ("hit".into(), expected_text(12))
    );
    assert_eq!(h.upstream.requests().len(), 1);
    // Another user's cache is their own.
    assert_eq!(relay(&base, &bob, body(false, 0.0)).await.0, "miss");
    assert_eq!(h.upstream.requests().len(), 2);
    // An answer streamed without usage cannot answer a client that wants
    // usage: it is asked again, and then kept with it.
    let quiet = json!({"model": "fake:tokens=3", "stream": true, "temperature": 0,
                       "messages": [{"role": "user", "content": "usage?"}]});
    relay(&base, &alice, quiet.clone()).await;
    let mut whole = quiet.clone();
    whole["stream"] = json!(false);
    assert_eq!(relay(&base, &alice, whole.clone()).await.0, "miss");
    assert_eq!(relay(&base, &alice, whole).await.0, "hit");
    assert_eq!(h.upstream.requests().len(), 4);
    // Not deterministic: asked each time.
    relay(&base, &alice, body(false, 0.7)).await;
    relay(&base, &alice, body(false, 0.7)).await;
    assert_eq!(h.upstream.requests().len(), 6);
}

#[tokio::test]
async fn replicas_share_the_cache_through_redis() {
    let c = TestCluster::start(BIN, 2, DETERMINISTIC);
    let body = json!({"model": "fake:tokens=8", "temperature": 0, "stream": true,
                      "messages": [{"role": "user", "content": "shared"}]});
    let one = relay(&c.url(0, ""), "local", body.clone()).await;
    let two = relay(&c.url(1, ""), "local", body).await;
    assert_eq!(one, ("miss".into(), expected_text(8)));
    assert_eq!(two, ("hit".into(), expected_text(8)));
    assert_eq!(c.upstream.requests().len(), 1);
    assert!(
        c.metrics(1)
            .await
            .contains("sluice_cache_requests_total{outcome=\"hit_shared\",path=\"openai\"} 1")
    );

    // A session on each replica, the same question: one provider request.
    for replica in 0..2 {
        let id = c.create_session(replica, "fake:tokens=9").await;
        let base = c.url(replica, "");
        let sent = c
            .post(
                &base,
                &id,
                "messages",
                json!({"content": "the same question"}),
            )
            .await;
        assert_eq!(sent.status(), 202);
        let answer = settled_answer(&c.http, &base, &id).await;
        assert_eq!(answer["content"], expected_text(9));
        assert_eq!(answer["status"], "complete");
    }
    assert_eq!(c.upstream.requests().len(), 2);
}
