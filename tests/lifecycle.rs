//! The process around the sessions: restarts keep conversations, signals
//! shut down gracefully, auth isolates users, the operations endpoints.

use std::process::Command;

use serde_json::{Value, json};
use sluice_test_support::client::{SseClient, WsClient, WsFrame, token_text};
use sluice_test_support::harness::Harness;
use sluice_test_support::rest::{assert_store_unavailable, ready_when, settled_answer};
use sluice_test_support::{expected_text, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECRET: &str = "test-secret-0123456789";

#[tokio::test]
async fn a_restart_keeps_the_conversation_and_changes_the_epoch() {
    let mut h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=8").await;
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    let epoch = ws.next_json().await["epoch"].clone();
    ws.next_json().await;
    ws.send_json(json!({"type": "send", "content": "first question"}))
        .await;
    let frames = ws.until("generation_end").await;
    let last_seq = frames.last().unwrap()["seq"].as_u64().unwrap();
    drop(ws);
    assert!(h.sluice.terminate().success());

    h.restart();
    let session = h.session(&id).await;
    assert_eq!(session["last_seq"], last_seq);
    assert_eq!(session["title"], "first question");
    let messages = session["messages"].as_array().unwrap();
    assert_eq!(messages[0]["content"], "first question");
    assert_eq!(messages[1]["content"], expected_text(8));
    assert_eq!(messages[1]["status"], "complete");
    let list: Value = h.get_json(&h.url("/v1/sessions")).await;
    assert_eq!(list["data"][0]["id"], id.as_str());

    // The in-memory event log did not survive: a new epoch, and a cursor
    // into the old log is a gap; seqs continue where they were.
    let mut ws = WsClient::connect(&h.ws_url(&id, "?after=3")).await.unwrap();
    let hello = ws.next_json().await;
    assert_ne!(hello["epoch"], epoch);
    assert_eq!(hello["last_seq"], last_seq);
    assert_eq!(ws.next_json().await["type"], "gap");
    assert_eq!(ws.next_json().await["type"], "snapshot");
    ws.send_json(json!({"type": "send", "content": "second question"}))
        .await;
    let frames = ws.until("generation_end").await;
    assert_eq!(frames[0]["seq"], last_seq + 1);
    // The model saw the earlier turns.
    let request = h.upstream.requests().pop().unwrap();
    let contents: Vec<&str> = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        vec![
            "first question",
            expected_text(8).as_str(),
            "second question"
        ]
    );
}

/// Streams until at least `count` tokens arrived (past a checkpoint, which
/// is taken every second while streaming), then kills and restarts the server.
async fn kill_mid_answer(h: &mut Harness, model: &str, count: usize) -> String {
    let (id, mut ws) = h.session_with_ws(model, "go").await;
    let mut tokens = 0;
    while tokens < count {
        if ws.next_json().await["type"] == "token" {
            tokens += 1;
        }
    }
    h.restart(); // SIGKILL, then start again on the same data
    id
}

/// Kills a process mid-answer from a fake provider that continues answers
/// the way `api` does, and restarts it with `SLUICE_CONTINUATION` set to
/// `continuation`; then follows the session until the answer ends. The
/// harness, the session, and the settled answer.
async fn taken_over_after_kill(continuation: &str, api: &str) -> (Harness, String, Value) {
    let mut h = Harness::start_with(BIN, &[("SLUICE_CONTINUATION", continuation)]);
    let model = format!("fake:tokens=1500,delay_ms=2,api={api}");
    let id = kill_mid_answer(&mut h, &model, 700).await;
    // A client joining the new process sees the answer go on (or stop) and end.
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    ws.until("generation_end").await;
    let answer = settled_answer(&h.http, &h.url(""), &id).await;
    (h, id, answer)
}

/// The provider was asked once more, to continue: the checkpointed answer
/// ends its messages, in `api`'s way; the answer is whole, nothing twice.
async fn assert_continued(h: &Harness, id: &str, answer: &Value) -> Value {
    assert_eq!(answer["status"], "complete");
    assert_eq!(
        answer["content"],
        expected_text(1500),
        "whole, nothing twice"
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sluice_takeovers_total{outcome=\"continued\"} 1"),
        "{metrics}"
    );
    // The continuation is the last request until the next send's reaches
    // the provider, which happens after the send is acknowledged.
    let asked = h.upstream.requests().len();
    assert_eq!(h.send(id, "again", None).await.status(), 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.upstream.requests().len() == asked && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let requests = h.upstream.requests();
    assert!(requests.len() > asked, "the next send reached the provider");
    let continuation = requests[asked - 1].clone();
    let last = continuation["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "assistant");
    assert!(expected_text(1500).starts_with(last["content"].as_str().unwrap()));
    continuation
}

#[tokio::test]
async fn a_killed_process_continues_the_answer_by_prefill() {
    let (h, id, answer) = taken_over_after_kill("prefill", "ollama").await;
    let request = assert_continued(&h, &id, &answer).await;
    let last = request["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(last.get("prefix").is_none(), "{last}");
}

#[tokio::test]
async fn a_killed_process_continues_the_answer_by_prefix() {
    let (h, id, answer) = taken_over_after_kill("prefix", "mistral").await;
    let request = assert_continued(&h, &id, &answer).await;
    assert_eq!(
        request["messages"].as_array().unwrap().last().unwrap()["prefix"],
        true
    );
}

#[tokio::test]
async fn a_killed_process_continues_the_answer_the_vllm_way() {
    let (h, id, answer) = taken_over_after_kill("vllm", "vllm").await;
    let request = assert_continued(&h, &id, &answer).await;
    assert_eq!(request["continue_final_message"], true);
    assert_eq!(request["add_generation_prompt"], false);
}

/// Without a configured way (the default), a provider that would answer
/// anew is never asked: the answer ends `interrupted` with its text kept.
#[tokio::test]
async fn a_killed_process_leaves_the_answer_interrupted_without_a_continuation_method() {
    let (h, id, answer) = taken_over_after_kill("off", "openai").await;
    assert_eq!(answer["status"], "interrupted");
    let text = answer["content"].as_str().unwrap();
    assert!(!text.is_empty(), "the text so far is kept");
    assert!(expected_text(1500).starts_with(text));
    assert_eq!(
        h.upstream.requests().len(),
        1,
        "the provider was not asked again"
    );
    let metrics = h.metrics().await;
    for needle in [
        "sluice_takeovers_total{outcome=\"interrupted\"} 1",
        "sluice_generations_total{finish_reason=\"interrupted\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle}: {metrics}");
    }
    assert_eq!(h.send(&id, "again", None).await.status(), 202);
}

/// A provider asked to continue in a way it refuses (Mistral, asked with a
/// plain trailing message) leaves the answer `interrupted` with its text.
#[tokio::test]
async fn a_killed_process_leaves_the_answer_interrupted_when_the_provider_refuses() {
    let (h, id, answer) = taken_over_after_kill("prefill", "mistral").await;
    assert_eq!(answer["status"], "interrupted");
    let text = answer["content"].as_str().unwrap();
    assert!(!text.is_empty(), "the text so far is kept");
    assert!(expected_text(1500).starts_with(text));
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sluice_generations_total{finish_reason=\"interrupted\"} 1"),
        "{metrics}"
    );
    assert_eq!(h.send(&id, "again", None).await.status(), 202);
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_lets_the_generation_finish() {
    let mut h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=150,delay_ms=10").await;
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    let mut sse = SseClient::connect(&h.events_url(&id, ""), None).await;
    ws.until("snapshot").await;
    ws.send_json(json!({"type": "send", "content": "go"})).await;
    ws.until("token").await;
    let pid_kill = Command::new("kill")
        .args(["-TERM", &h.sluice.pid().to_string()])
        .status()
        .unwrap();
    assert!(pid_kill.success());
    loop {
        match ws.next().await {
            WsFrame::Json(_) => continue,
            WsFrame::Closed(frame) => {
                assert_eq!(u16::from(frame.expect("a close frame").code), 1001);
                break;
            }
        }
    }
    // The SSE stream ends too (clients reconnect with Last-Event-ID).
    while sse.next().await.is_some() {}
    assert!(h.sluice.wait().success(), "exits cleanly");

    h.restart();
    let session = h.session(&id).await;
    assert_eq!(
        session["messages"][1]["status"], "complete",
        "finished within the grace period"
    );
    assert_eq!(session["messages"][1]["content"], expected_text(150));
}

fn mint(sub: &str, ttl: &str) -> String {
    let output = Command::new(BIN)
        .args(["token", "--sub", sub, "--ttl", ttl])
        .env("SLUICE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn jwt_auth_isolates_users() {
    let h = Harness::start_with(BIN, &[("SLUICE_JWT_SECRET", SECRET)]);
    let alice = mint("alice", "1h");
    let bob = mint("bob", "1h");
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let expired = sluice_web::auth::mint(SECRET, "alice", an_hour_ago).unwrap();
    let wrong_key =
        sluice_web::auth::mint("another-secret-0123456789", "alice", an_hour_ago + 7200).unwrap();

    let create = |token: Option<&str>| {
        let mut request = h.http.post(h.url("/v1/sessions"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    for token in [
        None,
        Some("not-a-jwt"),
        Some(expired.as_str()),
        Some(wrong_key.as_str()),
    ] {
        let response = create(token).await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            "unauthorized"
        );
    }
    let response = create(Some(&alice)).await.unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob cannot see, use, or delete Alice's session: 404, not 403.
    let path = |p: &str| h.url(&format!("/v1/sessions/{id}{p}"));
    for request in [
        h.http.get(path("")),
        h.http.delete(path("")),
        h.http
            .post(path("/messages"))
            .json(&json!({"content": "x"})),
        h.http.post(path("/cancel")),
        h.http.get(path("/events")),
    ] {
        let response = request.bearer_auth(&bob).send().await.unwrap();
        assert_eq!(response.status(), 404);
    }
    let ws_bob = h.ws_url(&id, &format!("?access_token={bob}"));
    assert!(WsClient::connect(&ws_bob).await.is_err());
    let bobs: Value = h
        .http
        .get(h.url("/v1/sessions"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bobs["data"], json!([]));

    // Browsers pass the token as a query parameter on WS and SSE.
    let mut ws = WsClient::connect(&h.ws_url(&id, &format!("?access_token={alice}")))
        .await
        .unwrap();
    assert_eq!(ws.next_json().await["type"], "hello");
    let sse = h
        .http
        .get(h.events_url(&id, &format!("?access_token={alice}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    // ... but not on REST routes, where headers work.
    let response = h
        .http
        .get(format!("{}?access_token={alice}", path("")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    ws.send_json(json!({"type": "send", "content": "hi"})).await;
    assert_eq!(
        token_text(&ws.until("generation_end").await),
        expected_text(20)
    );
}

#[test]
fn local_mode_refuses_a_non_loopback_address() {
    let output = Command::new(BIN)
        .env_clear()
        .env("SLUICE_ADDR", "0.0.0.0:0")
        .env("SLUICE_DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("local mode"));
}

#[test]
fn help_lists_the_configuration() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for name in [
        "SLUICE_ADDR",
        "SLUICE_DATA_DIR",
        "SLUICE_LLM_BASE_URL",
        "SLUICE_LLM_API_KEY",
        "SLUICE_LLM_MODEL",
        "SLUICE_JWT_SECRET",
        "SLUICE_REDIS_URL",
        "SLUICE_POSTGRES_URL",
        "SLUICE_REPLICA_ID",
        "SLUICE_METRICS_ADDR",
        "SLUICE_EVENT_RETENTION",
        "SLUICE_SHUTDOWN_GRACE_SECONDS",
        "ARK_API_KEY",
        "OPENAI_MODEL",
        "REQUEST_TIMEOUT",
        "token",
    ] {
        assert!(help.contains(name), "--help lacks {name}");
    }
}

#[tokio::test]
async fn health_ready_and_metrics_report_the_server() {
    let h = Harness::start_with(BIN, &[("SLUICE_METRICS_ADDR", "127.0.0.1:0")]);
    let metrics_addr = h.sluice.metrics_addr.expect("a metrics listener");
    let health = h.http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // Load balancers' HEAD probes: the same answer without its body.
    for path in ["/health", "/"] {
        let head = h.http.head(h.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path}");
    }
    let ready = h.http.get(h.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["backends"]["store"]["state"], "up");
    assert_eq!(ready["backends"]["event_log"]["kind"], "memory");
    assert_eq!(ready["backends"]["event_log"]["state"], "up");
    assert_eq!(ready["backends"]["store"]["kind"], "redb");
    // The provider is really asked (its model list), not assumed.
    let llm = checked_llm(&h).await;
    assert_eq!(llm, json!({"kind": "openai", "state": "up"}));

    let (_, mut ws) = h.session_with_ws("fake:tokens=12", "go").await;
    ws.until("generation_end").await;
    for url in [h.url("/metrics"), format!("http://{metrics_addr}/metrics")] {
        let text = h.http.get(&url).send().await.unwrap().text().await.unwrap();
        for needle in [
            "sluice_tokens_streamed_total{path=\"session\"} 12",
            "sluice_live_connections{transport=\"ws\"} 1",
            "sluice_generations_total{finish_reason=\"stop\"} 1",
            "sluice_time_to_first_token_seconds_count{path=\"session\"} 1",
            "sluice_http_requests_total{method=\"POST\",route=\"/v1/sessions\",status=\"201\"} 1",
            "sluice_live_sessions 1",
        ] {
            assert!(text.contains(needle), "{url} lacks {needle}:\n{text}");
        }
    }
}

/// `/ready`'s `llm` entry once the provider has been checked (it is
/// checked at start, then every 30 s; the wait is a hang guard).
async fn checked_llm(h: &Harness) -> Value {
    wait_until("the provider to be checked", || async {
        let ready = h.get_json(&h.url("/ready")).await;
        let llm = ready["backends"]["llm"].clone();
        (llm["state"] != "unchecked").then_some(llm)
    })
    .await
}

/// A provider that cannot be reached is reported down, with why; it does
/// not make the replica unready (every replica shares the provider).
#[tokio::test]
async fn ready_reports_a_provider_that_does_not_answer() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let h = Harness::start_with(
        BIN,
        &[("SLUICE_LLM_BASE_URL", &format!("http://{closed}/v1"))],
    );
    let llm = checked_llm(&h).await;
    assert_eq!(llm["state"], "down", "{llm}");
    assert!(
        llm["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{llm}"
    );
    let ready = h.http.get(h.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// Reads `/metrics` until `needle` appears (the server reports the state
/// change; the loop is bounded by the hang guard, not a timing threshold).
async fn wait_for_metric(h: &Harness, needle: &str) {
    wait_until(needle, || async {
        h.metrics().await.contains(needle).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_idle_session_is_evicted_and_reloads_where_it_left_off() {
    let h = Harness::start_with(BIN, &[("SLUICE_SESSION_IDLE_SECONDS", "1")]);
    let id = h.create_session("fake:tokens=4").await;
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    let epoch = ws.next_json().await["epoch"].clone();
    ws.next_json().await;
    ws.send_json(json!({"type": "send", "content": "one"}))
        .await;
    let first = ws.until("generation_end").await;
    let last_seq = first.last().unwrap()["seq"].as_u64().unwrap();
    ws.close().await;
    wait_for_metric(&h, "sluice_live_sessions 0").await;

    // The reloaded actor continues the same seq line on the same log, so an
    // old cursor still replays.
    let mut ws = WsClient::connect(&h.ws_url(&id, "?after=0")).await.unwrap();
    let hello = ws.next_json().await;
    assert_eq!(hello["epoch"], epoch);
    assert_eq!(hello["last_seq"], last_seq);
    assert_eq!(ws.until("generation_end").await, first);
    ws.send_json(json!({"type": "send", "content": "two"}))
        .await;
    let second = ws.until("generation_end").await;
    assert_eq!(second[0]["seq"], last_seq + 1);
    assert_eq!(token_text(&second), expected_text(4));
}

#[tokio::test]
async fn with_postgres_the_conversation_lives_in_the_database() {
    let db = sluice_test_support::postgres::TestPostgres::start();
    let url = db.url();
    let mut h = Harness::start_with(BIN, &[("POSTGRES_URL", &url)]);
    let ready = h.get_json(&h.url("/ready")).await;
    assert_eq!(
        ready["backends"]["store"],
        json!({"kind": "postgres", "state": "up"})
    );
    let id = h.create_session("fake:tokens=6").await;
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    ws.until("snapshot").await;
    ws.send_json(json!({"type": "send", "content": "kept in postgres", "client_msg_id": "pg-1"}))
        .await;
    ws.until("generation_end").await;
    drop(ws);
    h.restart();

    // A server with another data directory but the same database sees it:
    // the conversation is in Postgres, not in the embedded store.
    let other = Harness::start_with(BIN, &[("SLUICE_POSTGRES_URL", &url)]);
    for server in [&h, &other] {
        let session = server.session(&id).await;
        assert_eq!(session["title"], "kept in postgres");
        assert_eq!(session["messages"][1]["content"], expected_text(6));
        assert_eq!(session["messages"][1]["status"], "complete");
    }
    // Idempotency survives the restart too.
    let again = h.send(&id, "kept in postgres", Some("pg-1")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        h.session(&id).await["messages"].as_array().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn with_postgres_down_sends_are_overloaded_and_service_returns_by_itself() {
    let mut db = sluice_test_support::postgres::TestPostgres::start();
    let h = Harness::start_with(BIN, &[("SLUICE_POSTGRES_URL", &db.url())]);
    let id = h.create_session("fake:tokens=3").await;
    assert_eq!(h.send(&id, "before", None).await.status(), 202);
    let mut ws = WsClient::connect(&h.ws_url(&id, "?after=0")).await.unwrap();
    ws.until("generation_end").await;

    db.stop();
    let response = h.send(&id, "while down", None).await;
    assert_store_unavailable(response).await;
    let ready = ready_when(&h.http, &h.url(""), 503).await;
    assert_eq!(ready["backends"]["store"]["state"], "down");
    assert!(
        ready["backends"]["store"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    // The live WebSocket stays open meanwhile.
    ws.send_json(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));

    db.resume();
    ready_when(&h.http, &h.url(""), 200).await;
    assert_eq!(h.send(&id, "after", None).await.status(), 202);
    let frames = ws.until("generation_end").await;
    assert_eq!(token_text(&frames), expected_text(3));
    let messages = h.session(&id).await["messages"].as_array().unwrap().len();
    assert_eq!(messages, 4, "the refused send left nothing behind");
    // Nor in the database: its messages were not written later either.
    let stored = db.psql(&format!(
        "SELECT count(*) FROM messages WHERE session_id = '{id}'"
    ));
    assert_eq!(stored, "4");
}

/// A send still saving when shutdown begins is waited for, like a running
/// generation: its answer is whole in the store when the process exits.
/// (A drain that looked only for a running generation saw none, and the
/// generation started after the save was cut off with the process.)
#[tokio::test]
async fn shutdown_waits_for_a_send_that_is_still_saving() {
    let db = sluice_test_support::postgres::TestPostgres::start();
    let mut h = Harness::start_with(BIN, &[("SLUICE_POSTGRES_URL", &db.url())]);
    let id = h.create_session("fake:tokens=100,delay_ms=10").await;
    // Its actor runs (a read starts it), then its row is held, so the
    // send's save waits for it.
    h.session(&id).await;
    let held = db.hold(&format!(
        "SELECT 1 FROM sessions WHERE id = '{id}' FOR UPDATE"
    ));
    let send = {
        let (http, url) = (
            h.http.clone(),
            h.url(&format!("/v1/sessions/{id}/messages")),
        );
        tokio::spawn(async move { http.post(url).json(&json!({"content": "go"})).send().await })
    };
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'";
    wait_until("the save to wait", || async {
        (db.psql(waiting) != "0").then_some(())
    })
    .await;
    h.sluice.signal_term();
    held.commit();
    let sent = send.await.unwrap().unwrap();
    assert_eq!(sent.status(), 202);
    assert!(h.sluice.wait().success(), "a clean exit");
    let stored = db.psql(&format!(
        "SELECT status || ' ' || content FROM messages WHERE session_id = '{id}' AND role = 'assistant'"
    ));
    assert_eq!(stored, format!("complete {}", expected_text(100)));
}

/// Deleting a session tells whoever follows it, before their stream ends,
/// so they do not reconnect to a session that is gone.
#[tokio::test]
async fn deleting_a_session_tells_its_subscribers() {
    let h = Harness::start(BIN);
    let id = h.create_session("fake:tokens=5").await;
    let mut ws = WsClient::connect(&h.ws_url(&id, "")).await.unwrap();
    ws.until("snapshot").await;
    let mut sse = SseClient::connect(&h.events_url(&id, ""), None).await;
    sse.until("snapshot").await;
    let deleted = h
        .http
        .delete(h.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let frame = ws.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("not_found")),
        "{frame}"
    );
    match ws.next().await {
        WsFrame::Closed(Some(close)) => assert_eq!(u16::from(close.code), 1000),
        other => panic!("expected a close, got {other:?}"),
    }
    let event = sse.next().await.expect("an error event");
    assert_eq!(event.event, "error");
    assert_eq!(event.data["code"], "not_found");
    assert!(sse.next().await.is_none(), "then the stream ends");
}

/// An answer whose final write failed (PostgreSQL was down as it ended) is
/// written once the store is back: the next write of the session carries
/// it (here, the flush as the idle session retires).
#[tokio::test]
async fn a_final_answer_whose_write_failed_is_written_when_the_store_returns() {
    let mut db = sluice_test_support::postgres::TestPostgres::start();
    let h = Harness::start_with(
        BIN,
        &[
            ("SLUICE_POSTGRES_URL", &db.url()),
            ("SLUICE_SESSION_IDLE_SECONDS", "1"),
        ],
    );
    let (id, mut ws) = h.session_with_ws("fake:tokens=30,delay_ms=50", "go").await;
    ws.until("token").await;
    db.stop();
    let frames = ws.until("generation_end").await;
    assert_eq!(frames.last().unwrap()["finish_reason"], "stop");
    ws.close().await;
    db.resume();
    let query = format!(
        "SELECT status || ' ' || content FROM messages WHERE session_id = '{id}' AND role = 'assistant'"
    );
    let stored = wait_until("the answer to be written", || async {
        let stored = db.psql(&query);
        stored.starts_with("complete").then_some(stored)
    })
    .await;
    assert_eq!(stored, format!("complete {}", expected_text(30)));
}
