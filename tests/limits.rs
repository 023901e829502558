//! Per-user limits (issue "Abuse-proof", item 1): requests and tokens per
//! minute, generations, streams and sessions at once, and the replica's
//! provider requests at once. Over a limit a request is `429 rate_limited`
//! with `Retry-After` in the envelope (a WebSocket command gets an `error`
//! frame and the connection stays); another user is not affected; with
//! Redis, the replicas count together.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_test_support::client::{SseClient, WsClient};
use sluice_test_support::cluster::TestCluster;
use sluice_test_support::harness::Harness;
use sluice_test_support::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECRET: &str = "limits-test-secret-0123456789";

fn mint(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    sluice_web::auth::mint(SECRET, sub, exp).unwrap()
}

/// A server in JWT mode, with `env` added.
fn server(env: &[(&str, &str)]) -> Harness {
    let mut all = vec![("SLUICE_JWT_SECRET", SECRET)];
    all.extend_from_slice(env);
    Harness::start_with(BIN, &all)
}

async fn request(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn create(base: &str, token: &str, model: &str) -> reqwest::Response {
    request(
        reqwest::Method::POST,
        &format!("{base}/v1/sessions"),
        token,
        Some(json!({"model": model})),
    )
    .await
}

async fn created(base: &str, token: &str, model: &str) -> String {
    let response = create(base, token, model).await;
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn send(base: &str, token: &str, id: &str) -> reqwest::Response {
    request(
        reqwest::Method::POST,
        &format!("{base}/v1/sessions/{id}/messages"),
        token,
        Some(json!({"content": "hi"})),
    )
    .await
}

/// Asserts `response` is `429 rate_limited` in the envelope, naming `what`,
/// with a `Retry-After` of at least one second; returns that.
async fn assert_limited(response: reqwest::Response, what: &str) -> u64 {
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(what), "{message}");
    retry_after
}

/// Waits until the session's answer has ended.
async fn settled(base: &str, token: &str, id: &str) {
    wait_until("the answer ends", || async {
        let session: Value = request(
            reqwest::Method::GET,
            &format!("{base}/v1/sessions/{id}"),
            token,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        let status = session["messages"]
            .as_array()
            .and_then(|m| m.last())
            .map(|m| m["status"].clone());
        (status.is_some_and(|s| s != "streaming")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn requests_per_minute_are_counted_per_user_over_http_and_websocket() {
    let h = server(&[("SLUICE_RATE_LIMIT_RPM", "4")]);
    let base = h.url("");
    let (alice, bob) = (mint("alice"), mint("bob"));
    let id = created(&base, &alice, "fake:tokens=3").await;
    for _ in 0..2 {
        let listed = request(
            reqwest::Method::GET,
            &format!("{base}/v1/sessions"),
            &alice,
            None,
        )
        .await;
        assert_eq!(listed.status(), 200);
    }
    // The fourth request of the minute opens a WebSocket; its commands
    // count too, and a refused one leaves the connection open.
    let mut ws = WsClient::connect(&format!("{}?access_token={alice}", h.ws_url(&id, "")))
        .await
        .unwrap();
    ws.until("snapshot").await;
    ws.send_json(json!({"type": "cancel"})).await;
    let error = ws.next_json().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "rate_limited", "{error}");
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");

    let wait = assert_limited(
        request(
            reqwest::Method::GET,
            &format!("{base}/v1/sessions/{id}"),
            &alice,
            None,
        )
        .await,
        "4 requests per minute",
    )
    .await;
    // One request comes back every 15 s.
    assert!((10..=15).contains(&wait), "Retry-After {wait}");
    // Another user, and the open routes, are not limited by alice's use.
    let other = request(
        reqwest::Method::GET,
        &format!("{base}/v1/sessions"),
        &bob,
        None,
    )
    .await;
    assert_eq!(other.status(), 200);
    let health = reqwest::get(h.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = request(reqwest::Method::GET, &h.url("/metrics"), &bob, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_limited_total{limit=\"requests\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn generations_at_once_are_bounded_across_sessions_and_the_openai_route() {
    let h = server(&[("SLUICE_MAX_GENERATIONS_PER_USER", "1")]);
    let base = h.url("");
    let (alice, bob) = (mint("alice"), mint("bob"));
    let slow = created(&base, &alice, "fake:tokens=30,delay_ms=50").await;
    let other = created(&base, &alice, "fake:tokens=3").await;
    assert_eq!(send(&base, &alice, &slow).await.status(), 202);
    assert_limited(send(&base, &alice, &other).await, "already being generated").await;
    let relayed = request(
        reqwest::Method::POST,
        &format!("{base}/v1/chat/completions"),
        &alice,
        Some(json!({"model": "fake:tokens=3", "stream": true,
                     "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_limited(relayed, "already being generated").await;
    // A second send to the running session is the conflict it always was,
    // and a send to it that fails otherwise does not free its slot.
    assert_eq!(send(&base, &alice, &slow).await.status(), 409);
    let too_many: Vec<String> = (0..17).map(|i| format!("file-{i}")).collect();
    let refused = request(
        reqwest::Method::POST,
        &format!("{base}/v1/sessions/{slow}/messages"),
        &alice,
        Some(json!({"content": "hi", "attachments": too_many})),
    )
    .await;
    assert_eq!(refused.status(), 400);
    assert_limited(send(&base, &alice, &other).await, "already being generated").await;
    // Bob is not limited by alice's generation.
    let bobs = created(&base, &bob, "fake:tokens=3").await;
    assert_eq!(send(&base, &bob, &bobs).await.status(), 202);
    // Once alice's answer ends, her next one may start.
    settled(&base, &alice, &slow).await;
    wait_until("the slot is given back", || async {
        let response = send(&base, &alice, &other).await;
        (response.status() == 202).then_some(())
    })
    .await;
}

#[tokio::test]
async fn tokens_per_minute_stop_new_generations_until_paid() {
    let h = server(&[("SLUICE_RATE_LIMIT_TPM", "50")]);
    let base = h.url("");
    let alice = mint("alice");
    let id = created(&base, &alice, "fake:tokens=60").await;
    assert_eq!(send(&base, &alice, &id).await.status(), 202);
    settled(&base, &alice, &id).await;
    // 60 tokens against 50 a minute: in debt for about 12 s more.
    let wait = wait_until("the tokens are charged", || async {
        let response = send(&base, &alice, &id).await;
        if response.status() == 202 {
            settled(&base, &alice, &id).await;
            return None;
        }
        Some(assert_limited(response, "50 generated tokens per minute").await)
    })
    .await;
    assert!((1..=15).contains(&wait), "Retry-After {wait}");
    let relayed = request(
        reqwest::Method::POST,
        &format!("{base}/v1/chat/completions"),
        &alice,
        Some(json!({"model": "fake:tokens=3", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_limited(relayed, "tokens per minute").await;
}

#[tokio::test]
async fn streams_at_once_are_bounded_and_given_back_when_closed() {
    let h = server(&[("SLUICE_MAX_STREAMS_PER_USER", "2")]);
    let base = h.url("");
    let alice = mint("alice");
    let id = created(&base, &alice, "fake:tokens=3").await;
    let events = format!("{}?access_token={alice}", h.events_url(&id, ""));
    let mut first = SseClient::connect(&events, None).await;
    first.until("snapshot").await;
    let mut second = WsClient::connect(&format!("{}?access_token={alice}", h.ws_url(&id, "")))
        .await
        .unwrap();
    second.until("snapshot").await;
    assert_limited(reqwest::get(&events).await.unwrap(), "2 streams").await;
    let refused =
        tokio_tungstenite::connect_async(format!("{}?access_token={alice}", h.ws_url(&id, "")))
            .await;
    assert!(refused.is_err(), "a third stream opened");
    drop(first);
    wait_until("the closed stream's slot is given back", || async {
        let response = reqwest::get(&events).await.unwrap();
        (response.status() == 200).then_some(())
    })
    .await;
    second.close().await;
}

#[tokio::test]
async fn sessions_a_user_keeps_are_bounded() {
    let h = server(&[("SLUICE_MAX_SESSIONS_PER_USER", "3")]);
    let base = h.url("");
    let (alice, bob) = (mint("alice"), mint("bob"));
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(created(&base, &alice, "fake:tokens=3").await);
    }
    assert_limited(create(&base, &alice, "fake:tokens=3").await, "3 sessions").await;
    created(&base, &bob, "fake:tokens=3").await;
    let deleted = request(
        reqwest::Method::DELETE,
        &format!("{base}/v1/sessions/{}", ids[0]),
        &alice,
        None,
    )
    .await;
    assert_eq!(deleted.status(), 204);
    created(&base, &alice, "fake:tokens=3").await;
}

/// Past `SLUICE_MAX_CONCURRENT_REQUESTS` a provider request waits for its
/// bounded time, then is `503 overloaded`, without asking the provider.
#[tokio::test]
async fn provider_requests_at_once_are_bounded_by_the_replica() {
    let h = server(&[
        ("SLUICE_MAX_CONCURRENT_REQUESTS", "1"),
        ("SLUICE_PROVIDER_QUEUE_SECONDS", "0.3"),
    ]);
    let base = h.url("");
    let (alice, bob) = (mint("alice"), mint("bob"));
    let body = |model: &str| json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let holding = request(
        reqwest::Method::POST,
        &format!("{base}/v1/chat/completions"),
        &alice,
        Some(body("fake:tokens=40,delay_ms=50")),
    )
    .await;
    assert_eq!(holding.status(), 200);
    let asked = h.upstream.requests().len();
    let refused = request(
        reqwest::Method::POST,
        &format!("{base}/v1/chat/completions"),
        &bob,
        Some(body("fake:tokens=3")),
    )
    .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let envelope: Value = refused.json().await.unwrap();
    assert_eq!(envelope["error"]["code"], "overloaded", "{envelope}");
    assert_eq!(h.upstream.requests().len(), asked, "the provider was asked");
    drop(holding);
    wait_until("the place is free again", || async {
        let response = request(
            reqwest::Method::POST,
            &format!("{base}/v1/chat/completions"),
            &bob,
            Some(body("fake:tokens=3")),
        )
        .await;
        (response.status() == 200).then_some(())
    })
    .await;
}

/// With Redis, replicas count a user's requests and generations together.
#[tokio::test]
async fn replicas_share_the_limits_through_redis() {
    let c = TestCluster::start(
        BIN,
        2,
        &[
            ("SLUICE_JWT_SECRET", SECRET),
            ("SLUICE_RATE_LIMIT_RPM", "6"),
            ("SLUICE_MAX_GENERATIONS_PER_USER", "1"),
        ],
    );
    let (a, b) = (c.url(0, ""), c.url(1, ""));
    let alice = mint("alice");
    let slow = created(&a, &alice, "fake:tokens=40,delay_ms=50").await;
    let other = created(&b, &alice, "fake:tokens=3").await;
    assert_eq!(send(&a, &alice, &slow).await.status(), 202);
    // The generation runs on the replica behind `a`; the other refuses.
    assert_limited(send(&b, &alice, &other).await, "already being generated").await;
    // Requests so far: 2 creates, 2 sends; two more are allowed, on either.
    for base in [&a, &b] {
        let listed = request(
            reqwest::Method::GET,
            &format!("{base}/v1/sessions"),
            &alice,
            None,
        )
        .await;
        assert_eq!(listed.status(), 200);
    }
    for base in [&a, &b] {
        let listed = request(
            reqwest::Method::GET,
            &format!("{base}/v1/sessions"),
            &alice,
            None,
        )
        .await;
        assert_limited(listed, "6 requests per minute").await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn the_bytes_of_files_a_user_keeps_are_bounded() {
    let h = server(&[("SLUICE_MAX_FILE_BYTES_PER_USER", "100")]);
    let base = h.url("");
    let (alice, bob) = (mint("alice"), mint("bob"));
    let upload = |who: &str, bytes: usize| {
        let (http, base, who) = (h.http.clone(), base.clone(), who.to_owned());
        async move {
            sluice_test_support::files::upload(&http, &base, Some(&who), "f.txt", vec![b'a'; bytes])
                .await
        }
    };
    let first = upload(&alice, 60).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // Past what is left: refused as too large, saying why; nothing stored.
    let over = upload(&alice, 60).await;
    assert_eq!(over.status(), 413);
    let body: Value = over.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over the 100 bytes"),
        "{body}"
    );
    assert_eq!(upload(&alice, 40).await.status(), 201);
    // Full: refused before a byte is read.
    assert_limited(upload(&alice, 1).await, "the most it may keep").await;
    assert_eq!(
        upload(&bob, 60).await.status(),
        201,
        "bob has room of his own"
    );
    let deleted = request(
        reqwest::Method::DELETE,
        &format!("{base}/v1/files/{}", first["id"].as_str().unwrap()),
        &alice,
        None,
    )
    .await;
    assert_eq!(deleted.status(), 200);
    assert_eq!(upload(&alice, 50).await.status(), 201);
}

/// Found by attack: sessions created at once, and uploads finishing at
/// once, all passed a check that read what was stored (12 creates against
/// a limit of 5 all succeeded). The store now counts and inserts in one
/// step.
#[tokio::test]
async fn limits_on_what_is_kept_hold_under_concurrency() {
    let h = server(&[
        ("SLUICE_MAX_SESSIONS_PER_USER", "5"),
        ("SLUICE_MAX_FILE_BYTES_PER_USER", "100000"),
    ]);
    let base = h.url("");
    let alice = mint("alice");
    let creates = (0..12).map(|_| create(&base, &alice, "fake:tokens=3"));
    let created = futures::future::join_all(creates)
        .await
        .iter()
        .filter(|r| r.status() == 201)
        .count();
    assert_eq!(created, 5);
    let uploads = (0..6).map(|_| {
        let (http, base, alice) = (h.http.clone(), base.clone(), alice.clone());
        async move {
            sluice_test_support::files::upload(
                &http,
                &base,
                Some(&alice),
                "f.txt",
                vec![b'a'; 90_000],
            )
            .await
            .status()
        }
    });
    let stored = futures::future::join_all(uploads)
        .await
        .into_iter()
        .filter(|s| *s == 201)
        .count();
    assert_eq!(stored, 1);
}

/// Found by attack: a send retried with its `client_msg_id` after its
/// answer ended took a generation slot that nothing held or gave back, for
/// a minute, and each retry renewed it.
#[tokio::test]
async fn a_retried_send_holds_no_generation_slot() {
    let h = server(&[("SLUICE_MAX_GENERATIONS_PER_USER", "1")]);
    let base = h.url("");
    let alice = mint("alice");
    let (one, two) = (
        created(&base, &alice, "fake:tokens=3").await,
        created(&base, &alice, "fake:tokens=3").await,
    );
    let body = json!({"content": "hi", "client_msg_id": "once"});
    let url = format!("{base}/v1/sessions/{one}/messages");
    let first = request(reqwest::Method::POST, &url, &alice, Some(body.clone())).await;
    assert_eq!(first.status(), 202);
    settled(&base, &alice, &one).await;
    // The slot comes back once the answer ends.
    wait_until("the slot is given back", || async {
        let response = send(&base, &alice, &two).await;
        (response.status() == 202).then_some(())
    })
    .await;
    settled(&base, &alice, &two).await;
    wait_until("the slot is given back again", || async {
        let probe = request(
            reqwest::Method::POST,
            &format!("{base}/v1/embeddings"),
            &alice,
            Some(json!({"model": "e", "input": "x"})),
        )
        .await;
        (probe.status() == 200).then_some(())
    })
    .await;
    let again = request(reqwest::Method::POST, &url, &alice, Some(body)).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["replayed"], true, "{again}");
    // Nothing runs, so a new answer may start at once.
    assert_eq!(send(&base, &alice, &two).await.status(), 202);
}

/// Found by attack: `/v1/embeddings` answers of megabytes were not a
/// generation, so one user could hold any number at once.
#[tokio::test]
async fn embeddings_count_as_generations_at_once() {
    let h = server(&[("SLUICE_MAX_GENERATIONS_PER_USER", "1")]);
    let base = h.url("");
    let alice = mint("alice");
    let slow = created(&base, &alice, "fake:tokens=30,delay_ms=50").await;
    assert_eq!(send(&base, &alice, &slow).await.status(), 202);
    let embedded = request(
        reqwest::Method::POST,
        &format!("{base}/v1/embeddings"),
        &alice,
        Some(json!({"model": "e", "input": ["a", "b"]})),
    )
    .await;
    assert_limited(embedded, "already being generated").await;
}
