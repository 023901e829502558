//! A corpus of broken requests and frames against a running cluster (issue
//! "Abuse-proof", acceptance): truncated UTF-8, huge numbers, deep nesting,
//! wrong types, 10 MB bodies and frames, random methods, bodies that stall.
//! Each gets its documented answer in the envelope, no replica restarts or
//! grows without bound, and another user's stream, running meanwhile,
//! finishes intact.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice_test_support::client::WsClient;
use sluice_test_support::cluster::TestCluster;
use sluice_test_support::expected_text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECRET: &str = "hostile-cluster-secret-0123456789";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    sluice_web::auth::mint(SECRET, sub, exp).unwrap()
}

/// A replica's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `head` and then `body` (which may be cut short or never come) on
/// a raw connection; the status and body of what comes back.
async fn raw(addr: &str, head: String, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            format!(
                "<not an envelope: {}>",
                body.chars().take(200).collect::<String>()
            )
        })
}

#[tokio::test]
async fn a_hostile_corpus_is_answered_and_harms_no_one() {
    let mut c = TestCluster::start(
        BIN,
        2,
        &[
            ("SLUICE_JWT_SECRET", SECRET),
            // The corpus is many requests from one user: the per-user rate
            // is not what this test is about.
            ("SLUICE_RATE_LIMIT_RPM", "0"),
        ],
    );
    let (bob, mallory) = (token("bob"), token("mallory"));
    let pids = [c.replica(0).pid(), c.replica(1).pid()];
    let rss_before: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    // Bob's answer streams on replica 0 while the corpus runs.
    let bobs = c
        .http
        .post(c.url(0, "/v1/sessions"))
        .bearer_auth(&bob)
        .json(&json!({"model": "fake:tokens=300,delay_ms=10"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let bob_sid = bobs["id"].as_str().unwrap().to_owned();
    let mut bob_ws =
        WsClient::connect(&c.ws_url(0, &format!("/v1/sessions/{bob_sid}/ws?access_token={bob}")))
            .await
            .unwrap();
    bob_ws.until("snapshot").await;
    bob_ws
        .send_json(json!({"type": "send", "content": "a long answer, please"}))
        .await;
    let bob_done = tokio::spawn(async move { bob_ws.until("generation_end").await });

    let mallorys = c
        .http
        .post(c.url(1, "/v1/sessions"))
        .bearer_auth(&mallory)
        .json(&json!({"model": "fake:tokens=2"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let sid = mallorys["id"].as_str().unwrap().to_owned();

    let deep = "[".repeat(100_000);
    let ten_mb = "x".repeat(10 << 20);
    let mut truncated_utf8 = br#"{"content": "caf"#.to_vec();
    truncated_utf8.push(0xC3);
    let json_head = |method: &str, path: &str, len: usize| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {mallory}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let messages = format!("/v1/sessions/{sid}/messages");
    let corpus: Vec<(String, String, Vec<u8>, u16, &str)> = vec![
        (
            "truncated UTF-8".into(),
            messages.clone(),
            truncated_utf8,
            400,
            "bad_request",
        ),
        (
            "deep nesting".into(),
            messages.clone(),
            deep.clone().into_bytes(),
            400,
            "bad_request",
        ),
        (
            "wrong types".into(),
            messages.clone(),
            br#"{"content": 5}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "huge numbers".into(),
            "/v1/chat/completions".into(),
            br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1e400}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "negative numbers".into(),
            "/v1/chat/completions".into(),
            br#"{"messages":[{"role":"user","content":"x"}],"n":-3}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "a 10 MB body".into(),
            messages.clone(),
            ten_mb.clone().into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "deep nesting (OpenAI)".into(),
            "/v1/chat/completions".into(),
            deep.into_bytes(),
            400,
            "bad_request",
        ),
    ];
    for replica in 0..2 {
        let addr = c.url(replica, "").trim_start_matches("http://").to_owned();
        for (what, path, body, status, code) in &corpus {
            let (got, answer) = raw(&addr, json_head("POST", path, body.len()), body).await;
            assert_eq!(
                (got, code_of(&answer).as_str()),
                (*status, *code),
                "{what} on replica {replica}"
            );
        }
        // Random methods, a cursor past the largest seq, a body that stalls.
        for method in ["FOO", "PATCH", "PUT", "TRACE"] {
            let (got, answer) = raw(&addr, json_head(method, "/v1/sessions", 0), b"").await;
            assert!(matches!(got, 404 | 405), "{method}: {got}");
            assert!(
                matches!(
                    code_of(&answer).as_str(),
                    "not_found" | "method_not_allowed"
                ),
                "{method}: {answer}"
            );
        }
        let (got, answer) = raw(
            &addr,
            format!(
                "GET /v1/sessions/{sid}/events?after=99999999999999999999999 HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Bearer {mallory}\r\nConnection: close\r\n\r\n"
            ),
            b"",
        )
        .await;
        assert_eq!(
            (got, code_of(&answer).as_str()),
            (400, "bad_request"),
            "a huge cursor"
        );
        let (got, answer) = raw(
            &addr,
            json_head("POST", &messages, 1000),
            br#"{"content": "#,
        )
        .await;
        assert_eq!(
            (got, code_of(&answer).as_str()),
            (408, "request_timeout"),
            "a stalled body"
        );
    }

    // Frames: malformed ones get an error frame and the connection stays; a
    // 10 MB one closes it (1009); broken UTF-8 closes it (1007).
    for replica in 0..2 {
        let url = c.ws_url(
            replica,
            &format!("/v1/sessions/{sid}/ws?access_token={mallory}"),
        );
        let mut ws = WsClient::connect(&url).await.unwrap();
        ws.until("snapshot").await;
        for frame in [
            "{\"type\": \"send\", \"content\": 5}".to_owned(),
            "[".repeat(100_000).chars().take(60_000).collect(),
            "{\"type\": \"resume\", \"after\": 1e400}".to_owned(),
            "{\"type\": \"nonsense\"}".to_owned(),
            "not json".to_owned(),
        ] {
            ws.send_text(&frame).await;
            let answer = ws.next_json().await;
            assert_eq!(answer["type"], "error", "{answer}");
        }
        ws.send_json(json!({"type": "ping"})).await;
        assert_eq!(ws.next_json().await["type"], "pong");

        let (mut big, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let _ = big.send(Message::text(ten_mb.clone())).await;
        let mut closed_with = None;
        while let Some(Ok(message)) = big.next().await {
            if let Message::Close(frame) = message {
                closed_with = frame.map(|f| u16::from(f.code));
                break;
            }
        }
        assert_eq!(
            closed_with,
            Some(1009),
            "a 10 MB frame on replica {replica}"
        );

        let (mut broken, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let frame = Frame::message(vec![b'{', 0xC3], OpCode::Data(Data::Text), true);
        let _ = broken.send(Message::Frame(frame)).await;
        let mut closed_with = None;
        while let Some(Ok(message)) = broken.next().await {
            if let Message::Close(frame) = message {
                closed_with = frame.map(|f| u16::from(f.code));
                break;
            }
        }
        assert_eq!(closed_with, Some(1007), "broken UTF-8 on replica {replica}");
    }

    // Bob's answer arrived whole, in order, while all that went on.
    let events = tokio::time::timeout(Duration::from_secs(120), bob_done)
        .await
        .expect("bob's answer ended")
        .unwrap();
    assert_eq!(
        sluice_test_support::client::token_text(&events),
        expected_text(300)
    );
    assert_eq!(events.last().unwrap()["finish_reason"], "stop");

    // No replica restarted, and none grew without bound.
    for (i, pid) in pids.iter().enumerate() {
        assert_eq!(c.replica(i).pid(), *pid, "replica {i} restarted");
        let health = c.http.get(c.url(i, "/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let grown = rss_kib(*pid).saturating_sub(rss_before[i]);
        assert!(grown < 128 * 1024, "replica {i} grew {grown} KiB");
    }
}
