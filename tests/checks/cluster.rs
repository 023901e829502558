// The checks of several replicas as one that hold whatever the Redis is:
// included by tests/cluster.rs (one Redis) and tests/redis_cluster.rs (a
// Redis Cluster), each of which defines `start(replicas, env)`. Clients on
// different replicas see one event sequence; commands reach the owner from
// anywhere; the owner can be killed or stopped, and every token still
// arrives exactly once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_test_support::client::{SseClient, WsClient, WsFrame, token_text};
use sluice_test_support::cluster::{ClusterOptions, LEASE_SECONDS, TestCluster};
use sluice_test_support::rest::settled_answer;
use sluice_test_support::{expected_text, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Longest a client keeps trying to reconnect (a hang guard).
const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// What a client that follows a session to the end of a generation saw.
#[derive(Default)]
struct Followed {
    /// Every frame with a `seq`, in arrival order.
    events: Vec<Value>,
    /// Every frame without one (hello, snapshot, gap, ...).
    controls: Vec<Value>,
    /// The answer's text as the client shows it: tokens, with a `snapshot`
    /// after a `gap` replacing what was shown.
    text: String,
    /// How many times it reconnected.
    reconnects: usize,
    /// When the first event after the first reconnection arrived.
    first_after_reconnect: Option<Instant>,
}
impl Followed {
    fn last_seq(&self) -> Option<u64> {
        self.events.last().and_then(|e| e["seq"].as_u64())
    }

    /// Takes a frame; true once the generation ended.
    fn take(&mut self, frame: Value) -> bool {
        if frame["seq"].is_u64() {
            if self.reconnects > 0 && self.first_after_reconnect.is_none() {
                self.first_after_reconnect = Some(Instant::now());
            }
            if frame["type"] == "token" {
                self.text.push_str(frame["delta"].as_str().unwrap());
            }
            let end = frame["type"] == "generation_end";
            self.events.push(frame);
            return end;
        }
        let after_gap = self.controls.last().is_some_and(|c| c["type"] == "gap");
        if frame["type"] == "snapshot" && after_gap {
            self.text = frame["partial"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        self.controls.push(frame);
        false
    }

    /// Every seq at most once, in order, none skipped: a jump is allowed only
    /// onto a `token`, which then carries the merged deltas of the tokens it
    /// covers (a queue that backed up coalesces them, PROTOCOL.md §5).
    fn assert_exactly_once(&self) {
        for pair in self.events.windows(2) {
            let (a, b) = (
                pair[0]["seq"].as_u64().unwrap(),
                pair[1]["seq"].as_u64().unwrap(),
            );
            assert!(
                b == a + 1 || (b > a && pair[1]["type"] == "token"),
                "seq {a} then {b} ({})",
                pair[1]
            );
        }
    }
}
/// Reads a WebSocket until `generation_end`, reconnecting to `url()` with
/// `?after=<cursor>` whenever the connection closes, as a client does.
async fn follow_ws(mut ws: WsClient, url: impl Fn() -> String, seen: &mut Followed) {
    loop {
        match ws.next().await {
            WsFrame::Json(frame) => {
                if seen.take(frame) {
                    return;
                }
            }
            WsFrame::Closed(_) => {
                seen.reconnects += 1;
                let cursor = seen.last_seq().unwrap_or(0);
                ws = connect_ws(&format!("{}?after={cursor}", url())).await;
            }
        }
    }
}
async fn connect_ws(url: &str) -> WsClient {
    let deadline = Instant::now() + RECONNECT_FOR;
    loop {
        match WsClient::connect(url).await {
            Ok(ws) => return ws,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot reconnect to {url}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
/// Reads SSE until `generation_end`, reconnecting with `Last-Event-ID`.
async fn follow_sse(mut sse: SseClient, url: &str, seen: &mut Followed) {
    loop {
        match sse.next().await {
            Some(event) => {
                if seen.take(event.data) {
                    return;
                }
            }
            None => {
                seen.reconnects += 1;
                sse = connect_sse(url, seen.last_seq()).await;
            }
        }
    }
}
async fn connect_sse(url: &str, last_event_id: Option<u64>) -> SseClient {
    let deadline = Instant::now() + RECONNECT_FOR;
    loop {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        match request.send().await {
            Ok(response) if response.status() == 200 => return SseClient::from_response(response),
            other => {
                assert!(
                    Instant::now() < deadline,
                    "cannot reconnect to {url}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
/// Reads frames until `count` tokens arrived.
async fn read_tokens(ws: &mut WsClient, seen: &mut Followed, count: usize) {
    while seen.events.iter().filter(|e| e["type"] == "token").count() < count {
        let frame = ws.next_json().await;
        assert!(!seen.take(frame), "the answer ended too early");
    }
}
fn ws_path(id: &str) -> String {
    format!("/v1/sessions/{id}/ws")
}
fn events_path(id: &str) -> String {
    format!("/v1/sessions/{id}/events")
}
/// The stored 600-token answer is whole, and a replica other than `owner`
/// continued it.
async fn assert_continued_elsewhere(c: &TestCluster, owner: usize, id: &str) {
    let answer = settled_answer(&c.http, &c.nginx.url(""), id).await;
    assert_eq!(answer["status"], "complete");
    assert_eq!(answer["content"], expected_text(600));
    let alive: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    let continued = metric_sum(c, &alive, "sluice_takeovers_total{outcome=\"continued\"}").await;
    assert_eq!(continued, 1);
}
async fn metric_sum(c: &TestCluster, replicas: &[usize], line: &str) -> u64 {
    let mut sum = 0;
    for &i in replicas {
        let text = c.metrics(i).await;
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    sum
}
#[tokio::test]
async fn clients_on_different_replicas_see_the_same_events() {
    let c = start(3, &[]);
    let id = c.create_session(0, "fake:tokens=60,delay_ms=5").await;
    // The WebSocket on r1 makes r1 the owner; SSE on r2 reads the bus.
    let mut ws = WsClient::connect(&c.ws_url(1, &ws_path(&id)))
        .await
        .unwrap();
    let mut on_ws = Followed::default();
    assert_eq!(ws.next_json().await["replica"], "r1");
    assert_eq!(c.owner(&id), Some(1));
    let mut sse = SseClient::connect(&c.url(2, &events_path(&id)), None).await;
    let mut on_sse = Followed::default();
    assert_eq!(sse.next().await.unwrap().data["replica"], "r2");

    // Sent through a third replica.
    let sent = c
        .post(&c.url(0, ""), &id, "messages", json!({"content": "go"}))
        .await;
    assert_eq!(sent.status(), 202);
    follow_ws(ws, || unreachable!("no reconnect"), &mut on_ws).await;
    follow_sse(sse, &c.url(2, &events_path(&id)), &mut on_sse).await;

    assert_eq!(on_ws.events, on_sse.events, "one event sequence everywhere");
    assert_eq!(token_text(&on_ws.events), expected_text(60));
    on_ws.assert_exactly_once();
    assert_eq!(on_ws.events[0]["type"], "user_message");
    let forwarded = metric_sum(
        &c,
        &[0],
        "sluice_forwarded_requests_total{op=\"send\",outcome=\"ok\"}",
    )
    .await;
    assert_eq!(forwarded, 1);
    // Any replica answers for the session, with the same messages.
    let here = c.session(&c.url(2, ""), &id).await;
    let there = c.session(&c.url(1, ""), &id).await;
    assert_eq!(here["messages"], there["messages"]);
    assert_eq!(here["messages"][1]["content"], expected_text(60));
}
#[tokio::test]
async fn send_through_one_replica_and_cancel_through_another() {
    let c = start(3, &[]);
    let id = c.create_session(0, "fake:tokens=100000,delay_ms=2").await;
    let mut ws = WsClient::connect(&c.ws_url(0, &ws_path(&id)))
        .await
        .unwrap();
    ws.until("snapshot").await;
    let sent = c
        .post(&c.url(1, ""), &id, "messages", json!({"content": "go"}))
        .await;
    assert_eq!(sent.status(), 202);
    let mut seen = Followed::default();
    read_tokens(&mut ws, &mut seen, 20).await;
    let cancelled = c.post(&c.url(2, ""), &id, "cancel", json!({})).await;
    assert_eq!(cancelled.status(), 200);
    follow_ws(ws, || unreachable!("no reconnect"), &mut seen).await;
    assert_eq!(seen.events.last().unwrap()["finish_reason"], "cancelled");
    let answer = settled_answer(&c.http, &c.url(2, ""), &id).await;
    assert_eq!(answer["status"], "cancelled");
    assert_eq!(answer["content"].as_str().unwrap(), seen.text);
}
/// Starts a 600-token answer with a WebSocket client through nginx and an
/// SSE client directly on a replica that does not own the session; returns
/// the session, the owner and the SSE replica once 150 tokens have arrived.
async fn mid_generation(c: &TestCluster) -> (String, usize, usize, WsClient, Followed, SseClient) {
    let id = c
        .create_session(0, "fake:tokens=600,delay_ms=5,api=ollama")
        .await;
    let mut ws = WsClient::connect(&c.nginx.ws_url(&ws_path(&id)))
        .await
        .unwrap();
    let mut seen = Followed::default();
    seen.take(ws.next_json().await); // hello
    let owner = c.owner(&id).expect("the WebSocket's replica owns it");
    let other = (owner + 1) % 3;
    let mut sse = SseClient::connect(&c.url(other, &events_path(&id)), None).await;
    sse.until("snapshot").await;
    let sent = c
        .post(&c.nginx.url(""), &id, "messages", json!({"content": "go"}))
        .await;
    assert_eq!(sent.status(), 202);
    read_tokens(&mut ws, &mut seen, 150).await;
    (id, owner, other, ws, seen, sse)
}
#[tokio::test]
async fn the_owner_killed_mid_generation_is_taken_over_without_losing_a_token() {
    let mut c = start(3, &[]);
    let (id, owner, other, ws, mut on_ws, sse) = mid_generation(&c).await;
    // The lease outlives its owner by what is left of it.
    let lease_left: u64 = c
        .redis
        .cli(&["PTTL", &format!("sluice:{{{id}}}:owner")])
        .unwrap()
        .parse()
        .unwrap();
    let killed = Instant::now();
    c.kill(owner);
    let expiry = killed + Duration::from_millis(lease_left);

    let ws_url = c.nginx.ws_url(&ws_path(&id));
    let mut on_sse = Followed::default();
    let sse_url = c.url(other, &events_path(&id));
    tokio::join!(
        follow_ws(ws, || ws_url.clone(), &mut on_ws),
        follow_sse(sse, &sse_url, &mut on_sse),
    );
    let continued = on_ws.first_after_reconnect.unwrap();
    eprintln!(
        "takeover: lease {LEASE_SECONDS} s, {lease_left} ms of it left at kill -9; \
         kill to first continued event {} ms; lease expiry to it {} ms",
        (continued - killed).as_millis(),
        continued.saturating_duration_since(expiry).as_millis(),
    );

    assert_eq!(on_ws.reconnects, 1);
    on_ws.assert_exactly_once();
    assert_eq!(on_ws.text, expected_text(600), "every token exactly once");
    assert_eq!(on_ws.events.last().unwrap()["finish_reason"], "stop");
    on_sse.assert_exactly_once();
    assert_eq!(on_sse.text, expected_text(600));
    assert!(on_ws.controls.iter().all(|c| c["type"] != "gap"));
    assert_continued_elsewhere(&c, owner, &id).await;
}
#[tokio::test]
async fn the_owner_stopped_mid_generation_finishes_it_without_an_error() {
    let mut c = start(3, &[]);
    let (id, owner, other, ws, mut on_ws, sse) = mid_generation(&c).await;
    c.replica(owner).signal_term();

    let ws_url = c.nginx.ws_url(&ws_path(&id));
    let mut on_sse = Followed::default();
    let sse_url = c.url(other, &events_path(&id));
    tokio::join!(
        follow_ws(ws, || ws_url.clone(), &mut on_ws),
        follow_sse(sse, &sse_url, &mut on_sse),
    );
    assert!(c.replica(owner).wait().success(), "a clean exit");

    assert_eq!(on_ws.reconnects, 1, "closed with 1001, then resumed");
    on_ws.assert_exactly_once();
    assert_eq!(on_ws.text, expected_text(600));
    let end = on_ws.events.last().unwrap();
    assert_eq!(end["finish_reason"], "stop");
    assert!(end.get("error").is_none_or(Value::is_null));
    assert!(
        on_ws
            .events
            .iter()
            .chain(&on_ws.controls)
            .all(|f| f["type"] != "error")
    );
    on_sse.assert_exactly_once();
    assert_eq!(on_sse.text, expected_text(600));
    let answer = settled_answer(&c.http, &c.nginx.url(""), &id).await;
    assert_eq!(answer["status"], "complete");
    // The lease was handed back: another replica serves the next message.
    let sent = c
        .post(
            &c.nginx.url(""),
            &id,
            "messages",
            json!({"content": "next"}),
        )
        .await;
    assert_eq!(sent.status(), 202);
    assert_ne!(c.owner(&id), Some(owner));
}
#[tokio::test]
async fn the_owner_stopped_past_its_grace_period_hands_the_generation_over() {
    let mut c = start(3, &[("SLUICE_SHUTDOWN_GRACE_SECONDS", "1")]);
    let id = c
        .create_session(0, "fake:tokens=600,delay_ms=10,api=ollama")
        .await;
    let mut ws = WsClient::connect(&c.nginx.ws_url(&ws_path(&id)))
        .await
        .unwrap();
    let mut on_ws = Followed::default();
    on_ws.take(ws.next_json().await);
    let owner = c.owner(&id).unwrap();
    let sent = c
        .post(&c.nginx.url(""), &id, "messages", json!({"content": "go"}))
        .await;
    assert_eq!(sent.status(), 202);
    read_tokens(&mut ws, &mut on_ws, 100).await;
    // Six seconds of answer left, one second of grace: the rest is
    // generated by another replica.
    c.replica(owner).signal_term();
    let ws_url = c.nginx.ws_url(&ws_path(&id));
    follow_ws(ws, || ws_url.clone(), &mut on_ws).await;
    assert!(c.replica(owner).wait().success(), "a clean exit");

    on_ws.assert_exactly_once();
    assert_eq!(on_ws.text, expected_text(600), "every token exactly once");
    let end = on_ws.events.last().unwrap();
    assert_eq!(end["finish_reason"], "stop");
    assert_continued_elsewhere(&c, owner, &id).await;
}
/// A command whose session's owner has died waits until the owner's lease
/// expires. Meanwhile its client's connection goes on: a ping sent after
/// it is answered at once, while the dead owner still holds the lease.
/// (Commands used to pause the connection's whole mailbox: no frames, no
/// pongs and no tokens until the command ended.)
#[tokio::test]
async fn a_waiting_command_does_not_freeze_its_connection() {
    let mut c = start(2, &[("SLUICE_LEASE_SECONDS", "30")]);
    let id = c.create_session(0, "fake:tokens=5").await;
    let mut on_owner = WsClient::connect(&c.ws_url(0, &ws_path(&id)))
        .await
        .unwrap();
    on_owner.until("snapshot").await;
    assert_eq!(c.owner(&id), Some(0));
    let mut ws = WsClient::connect(&c.ws_url(1, &ws_path(&id)))
        .await
        .unwrap();
    ws.until("snapshot").await;
    c.kill(0);
    ws.send_json(json!({"type": "cancel"})).await;
    ws.send_json(json!({"type": "ping"})).await;
    loop {
        if ws.next_json().await["type"] == "pong" {
            break;
        }
    }
    assert_eq!(
        c.owner(&id),
        Some(0),
        "the pong came while the cancel waited"
    );
}
/// Deleting a session tells its subscribers on every replica, the owner's
/// and the others', before their streams end.
#[tokio::test]
async fn deleting_a_session_tells_its_subscribers_on_every_replica() {
    let c = start(2, &[]);
    let id = c.create_session(0, "fake:tokens=5").await;
    let mut on_owner = WsClient::connect(&c.ws_url(0, &ws_path(&id)))
        .await
        .unwrap();
    on_owner.until("snapshot").await;
    assert_eq!(c.owner(&id), Some(0));
    let mut elsewhere = SseClient::connect(&c.url(1, &events_path(&id)), None).await;
    elsewhere.until("snapshot").await;
    let deleted = c
        .http
        .delete(c.url(1, &format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let frame = on_owner.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("not_found"))
    );
    assert!(
        matches!(on_owner.next().await, WsFrame::Closed(Some(close)) if u16::from(close.code) == 1000)
    );
    let event = elsewhere.next().await.expect("an error event");
    assert_eq!(
        (event.event.as_str(), &event.data["code"]),
        ("error", &json!("not_found"))
    );
    assert!(elsewhere.next().await.is_none(), "then the stream ends");
}
