//! Several replicas as one on a Redis Cluster (issue "Production
//! deployment", item 9): three masters started on loopback, the same
//! cross-replica and takeover checks as on one Redis
//! (tests/checks/cluster.rs), and what makes them hold on a cluster: a
//! session's keys share one hash slot (its Lua scripts touch only them),
//! sessions spread over the masters, and events travel by sharded pub/sub
//! on the node that owns the session.

include!("checks/cluster.rs");

fn start(replicas: usize, env: &[(&str, &str)]) -> TestCluster {
    TestCluster::start_with(
        BIN,
        replicas,
        ClusterOptions {
            env,
            redis_cluster: true,
            ..ClusterOptions::default()
        },
    )
}

/// The hash slot of `key`, as the cluster computes it.
fn slot(c: &TestCluster, key: &str) -> u16 {
    c.redis
        .cli(&["CLUSTER", "KEYSLOT", key])
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_sessions_keys_share_a_slot_sessions_spread_and_events_are_sharded() {
    let c = start(2, &[]);
    let mut ids = Vec::new();
    for _ in 0..12 {
        let id = c.create_session(0, "fake:tokens=3").await;
        let sent = c
            .post(&c.url(0, ""), &id, "messages", json!({"content": "go"}))
            .await;
        assert_eq!(sent.status(), 202);
        ids.push(id);
    }
    for id in &ids {
        settled_answer(&c.http, &c.url(1, ""), id).await;
    }
    // Every key of a session is in its slot: the log, its epoch and fence,
    // the lease.
    let id = &ids[0];
    let keys = c.redis.cli(&["KEYS", &format!("*{id}*")]);
    let expected_slot = slot(&c, &format!("{{{id}}}"));
    let on_its_node: Vec<String> = c
        .redis
        .cli_each(&["KEYS", &format!("*{id}*")])
        .into_iter()
        .flatten()
        .flat_map(|out| out.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|k| !k.is_empty())
        .collect();
    assert!(
        on_its_node.iter().any(|k| k.ends_with(":log")),
        "{keys:?} {on_its_node:?}"
    );
    for key in &on_its_node {
        assert_eq!(slot(&c, key), expected_slot, "{key}");
    }
    // Sessions are spread over the masters (twelve sessions' logs all on
    // one of three would be a hash tag gone wrong).
    let holding = c
        .redis
        .cli_each(&["KEYS", "sluice:{*}:log"])
        .into_iter()
        .filter(|keys| keys.as_deref().is_some_and(|k| !k.is_empty()))
        .count();
    assert!(holding >= 2, "sessions' logs on {holding} master(s)");

    // A subscriber on a replica that does not own the session listens on
    // the session's shard channel (SSUBSCRIBE), not on classic pub/sub.
    let id = &ids[1];
    let mut sse = SseClient::connect(&c.url(1, &format!("/v1/sessions/{id}/events")), None).await;
    sse.until("snapshot").await;
    let channel = format!("sluice:{{{id}}}:events");
    let sharded = wait_until("a shard subscription", || async {
        let counts = c.redis.cli_each(&["PUBSUB", "SHARDNUMSUB", &channel]);
        counts.into_iter().flatten().find_map(|out| {
            out.lines()
                .nth(1)?
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
        })
    })
    .await;
    assert!(sharded >= 1);
    let classic = c.redis.cli_each(&["PUBSUB", "NUMSUB", &channel]);
    for out in classic.into_iter().flatten() {
        assert_eq!(out.lines().nth(1).map(str::trim), Some("0"), "{out}");
    }
    // And it hears a new answer through it.
    let sent = c
        .post(&c.url(0, ""), id, "messages", json!({"content": "again"}))
        .await;
    assert_eq!(sent.status(), 202);
    let frames: Vec<Value> = sse
        .until("generation_end")
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(token_text(&frames), expected_text(3));
}
