//! Several replicas as one (issue: "Many replicas as one"): Redis, PostgreSQL,
//! three replicas and nginx, all real, on loopback. Clients on different
//! replicas see one event sequence; commands reach the owner from anywhere;
//! the owner can be killed, stopped, or lose Redis or PostgreSQL, and every
//! token still arrives exactly once.
//!
//! The checks that hold on a Redis Cluster too are in tests/checks/cluster.rs;
//! the ones here need one Redis (restarted, or cut off through a proxy).

use sluice_test_support::fake_upstream::FakeOptions;
use sluice_test_support::rest::{assert_store_unavailable, ready_when};

include!("checks/cluster.rs");

fn start(replicas: usize, env: &[(&str, &str)]) -> TestCluster {
    TestCluster::start(BIN, replicas, env)
}

#[tokio::test]
async fn a_redis_restart_keeps_the_owners_clients_streaming_and_others_resume() {
    let mut c = TestCluster::start(BIN, 3, &[]);
    let id = c
        .create_session(0, "fake:tokens=600,delay_ms=5,api=ollama")
        .await;
    let mut ws = WsClient::connect(&c.ws_url(0, &ws_path(&id)))
        .await
        .unwrap();
    let mut on_ws = Followed::default();
    on_ws.take(ws.next_json().await);
    assert_eq!(c.owner(&id), Some(0));
    let sse_url = c.url(1, &events_path(&id));
    let mut sse = SseClient::connect(&sse_url, None).await;
    sse.until("snapshot").await;
    let sent = c
        .post(&c.url(0, ""), &id, "messages", json!({"content": "go"}))
        .await;
    assert_eq!(sent.status(), 202);
    read_tokens(&mut ws, &mut on_ws, 100).await;

    c.redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.redis.resume(); // empty: Redis here keeps nothing on disk

    let mut on_sse = Followed::default();
    tokio::join!(
        follow_ws(
            ws,
            || unreachable!("the owner's client is not cut"),
            &mut on_ws
        ),
        follow_sse(sse, &sse_url, &mut on_sse),
    );
    on_ws.assert_exactly_once();
    assert_eq!(on_ws.text, expected_text(600));
    assert_eq!(on_ws.events.last().unwrap()["finish_reason"], "stop");
    assert!(on_sse.reconnects >= 1, "the other replica's client resumed");
    assert_eq!(
        on_sse.text,
        expected_text(600),
        "and shows the whole answer"
    );
    let answer = settled_answer(&c.http, &c.url(2, ""), &id).await;
    assert_eq!(answer["content"], expected_text(600));
    assert_eq!(c.owner(&id), Some(0), "the owner kept its session");
    let lost = metric_sum(&c, &[0, 1, 2], "sluice_lease_losses_total").await;
    assert_eq!(lost, 0);
    assert!(logged(&c, 1, "the lease store lost its leases"));
    // Everything works again: a new message through another replica.
    let sent = c
        .post(&c.url(2, ""), &id, "messages", json!({"content": "again"}))
        .await;
    assert_eq!(sent.status(), 202);
}
fn logged(c: &TestCluster, replica: usize, text: &str) -> bool {
    let sluice = c.replicas[replica].as_ref().unwrap();
    sluice.logs.lock().unwrap().iter().any(|l| l.contains(text))
}
#[tokio::test]
async fn a_redis_connection_blip_is_survived_without_holding_leases() {
    let c = TestCluster::start(BIN, 2, &[]);
    let id = c.create_session(0, "fake:tokens=30").await;
    // Redis keeps its data; every client connection is cut.
    for kind in ["normal", "pubsub"] {
        assert!(c.redis.cli(&["CLIENT", "KILL", "TYPE", kind]).is_some());
    }
    for i in 0..2 {
        let reconnects = "sluice_backend_reconnects_total{backend=\"redis\"}";
        wait_until(&format!("replica {i} to reconnect"), || async {
            (metric_sum(&c, &[i], reconnects).await > 0).then_some(())
        })
        .await;
    }
    let mut ws = connect_ws(&c.ws_url(1, &ws_path(&id))).await;
    ws.until("snapshot").await;
    let sent = c
        .post(&c.url(0, ""), &id, "messages", json!({"content": "go"}))
        .await;
    assert_eq!(sent.status(), 202);
    let frames = ws.until("generation_end").await;
    assert_eq!(token_text(&frames), expected_text(30));
    for i in 0..2 {
        assert!(!logged(&c, i, "the lease store lost its leases"));
    }
}
#[tokio::test]
async fn with_postgres_down_sends_are_overloaded_and_service_returns() {
    let mut c = TestCluster::start(BIN, 3, &[]);
    let id = c.create_session(0, "fake:tokens=5").await;
    // A subscriber keeps the session's actor live through the outage.
    let mut watcher = WsClient::connect(&c.nginx.ws_url(&ws_path(&id)))
        .await
        .unwrap();
    watcher.until("snapshot").await;
    c.postgres.stop();
    let response = c
        .post(&c.nginx.url(""), &id, "messages", json!({"content": "x"}))
        .await;
    assert_store_unavailable(response).await;
    // The provider is asked while a send is saved, but after a failed save
    // the next send waits for its own: an outage costs at most one request.
    for _ in 0..3 {
        let again = c
            .post(&c.nginx.url(""), &id, "messages", json!({"content": "x"}))
            .await;
        assert_eq!(again.status(), 503);
    }
    let asked = c.upstream.requests().len();
    assert!(asked <= 1, "the provider was asked {asked} times");
    for i in 0..3 {
        let ready = ready_when(&c.http, &c.url(i, ""), 503).await;
        assert_eq!(ready["backends"]["store"]["state"], "down");
        assert_eq!(ready["backends"]["redis"]["state"], "up");
    }
    assert!(
        c.metrics(0)
            .await
            .contains("sluice_backend_up{backend=\"store\"} 0")
    );
    c.postgres.resume();
    for i in 0..3 {
        ready_when(&c.http, &c.url(i, ""), 200).await;
    }
    let metrics = c.metrics(0).await;
    for line in [
        "sluice_backend_up{backend=\"store\"} 1",
        "sluice_backend_up{backend=\"redis\"} 1",
        "sluice_backend_pool_connections{backend=\"store\",state=\"open\"}",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let mut ws = WsClient::connect(&c.nginx.ws_url(&ws_path(&id)))
        .await
        .unwrap();
    ws.until("snapshot").await;
    let response = c
        .post(&c.nginx.url(""), &id, "messages", json!({"content": "y"}))
        .await;
    assert_eq!(response.status(), 202);
    let frames = ws.until("generation_end").await;
    assert_eq!(token_text(&frames), expected_text(5));
    let session = c.session(&c.nginx.url(""), &id).await;
    assert_eq!(session["messages"].as_array().unwrap().len(), 2);
}
/// An owner cut off from Redis mid-answer keeps streaming from its
/// provider and writing to PostgreSQL, unaware that its lease expired. The
/// replica that takes the session over claims it in the store first, which
/// fences the old owner off: nothing it writes afterwards lands, and its
/// first refused write stops it. The stored answer is the new owner's.
///
/// The old owner's provider is three times slower, so without the fence
/// its last write would come after the new owner's and overwrite it; each
/// owner's provider tags its text (the new one's tokens end in `b`), so
/// the stored answer shows who wrote what.
#[tokio::test]
async fn an_owner_cut_off_from_redis_is_fenced_off_by_the_next_owner() {
    let c = TestCluster::start_with(
        BIN,
        2,
        ClusterOptions {
            proxied_redis: &[0],
            own_upstream: &[
                (
                    0,
                    FakeOptions {
                        slowdown: 3,
                        ..FakeOptions::default()
                    },
                ),
                (
                    1,
                    FakeOptions {
                        suffix: "b".into(),
                        ..FakeOptions::default()
                    },
                ),
            ],
            ..ClusterOptions::default()
        },
    );
    let tokens = 300;
    let id = c
        .create_session(0, &format!("fake:tokens={tokens},delay_ms=10,api=ollama"))
        .await;
    let mut on_old = WsClient::connect(&c.ws_url(0, &ws_path(&id)))
        .await
        .unwrap();
    on_old.until("snapshot").await;
    assert_eq!(c.owner(&id), Some(0));
    let sent = c
        .post(&c.url(0, ""), &id, "messages", json!({"content": "go"}))
        .await;
    assert_eq!(sent.status(), 202);
    let mut seen = Followed::default();
    read_tokens(&mut on_old, &mut seen, 40).await;
    c.redis_proxies[0].as_ref().unwrap().cut();

    // A client of the other replica gets the session there once the old
    // owner's lease has expired; that replica takes the answer over.
    let url = c.ws_url(1, &ws_path(&id));
    let mut on_new = Followed::default();
    follow_ws(connect_ws(&url).await, || url.clone(), &mut on_new).await;
    let answer = settled_answer(&c.http, &c.url(1, ""), &id).await;
    assert_eq!(answer["status"], "complete");

    // The old owner found out at its next write, and stopped.
    wait_until("the old owner to stop", || async {
        (metric_sum(&c, &[0], "sluice_lease_losses_total").await > 0).then_some(())
    })
    .await;
    // It has stopped, so nothing more can come from it: the stored answer
    // is the old owner's text up to the claim, then the new owner's, every
    // token once.
    let answer = settled_answer(&c.http, &c.url(1, ""), &id).await;
    let content = answer["content"].as_str().unwrap();
    let pieces: Vec<&str> = content.split('<').skip(1).collect();
    assert_eq!(pieces.len(), tokens, "{content}");
    let handed_at = pieces
        .iter()
        .position(|p| p.ends_with(">b"))
        .expect("the new owner wrote the end");
    for (i, piece) in pieces.iter().enumerate() {
        let tag = if i < handed_at { "" } else { "b" };
        assert_eq!(*piece, format!("{i}>{tag}"), "token {i} of {content}");
    }
    assert!(
        handed_at > 0,
        "the old owner's text up to the claim is kept"
    );
}
/// `/ready` names each backend's state from its own check: with Redis
/// down, Redis and the event log on it are down, the store is up.
#[tokio::test]
async fn ready_reports_each_backend_from_its_own_check() {
    let mut c = TestCluster::start(BIN, 1, &[]);
    let ready = ready_when(&c.http, &c.url(0, ""), 200).await;
    assert_eq!(
        ready["backends"]["event_log"],
        json!({"kind": "redis", "state": "up"})
    );
    c.redis.stop();
    let ready = ready_when(&c.http, &c.url(0, ""), 503).await;
    for backend in ["redis", "event_log"] {
        assert_eq!(
            ready["backends"][backend]["state"], "down",
            "{backend}: {ready}"
        );
    }
    assert_eq!(ready["backends"]["store"]["state"], "up");
    c.redis.resume();
    ready_when(&c.http, &c.url(0, ""), 200).await;
}
