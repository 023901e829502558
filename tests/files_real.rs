//! Files on the production backends, all real on loopback: S3 (the
//! workspace's s3s-fs server, SigV4), Chroma (the PyPI server), and, for
//! the cluster, PostgreSQL, Redis and two replicas.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_test_support::chroma::TestChroma;
use sluice_test_support::cluster::{ClusterOptions, TestCluster};
use sluice_test_support::files::{settled_file, upload, uploaded};
use sluice_test_support::harness::Harness;
use sluice_test_support::rest::settled_answer;
use sluice_test_support::s3::TestS3;
use sluice_test_support::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

const BUCKET: &str = "sluice-files";

fn document(topic: &str, fact: &str) -> Vec<u8> {
    let mut text = format!("# Notes on {topic}\n\n");
    for i in 0..12 {
        text.push_str(&format!(
            "Paragraph {i} about {topic}: routine entries, nothing of note.\n\n"
        ));
    }
    text.push_str(fact);
    text.into_bytes()
}

fn env_of(s3: &TestS3, chroma: &TestChroma) -> Vec<(String, String)> {
    let mut env = s3.env(BUCKET);
    env.push(("SLUICE_CHROMA_URL".into(), chroma.url()));
    env
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Every chunk in Chroma, over all its collections.
async fn chroma_chunks(chroma: &TestChroma) -> u64 {
    let http = reqwest::Client::new();
    let base = format!(
        "{}/api/v2/tenants/default_tenant/databases/default_database/collections",
        chroma.url()
    );
    let collections: Value = http.get(&base).send().await.unwrap().json().await.unwrap();
    let mut total = 0;
    for collection in collections.as_array().unwrap() {
        let id = collection["id"].as_str().unwrap();
        let count: Value = http
            .get(format!("{base}/{id}/count"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        total += count.as_u64().unwrap();
    }
    total
}

async fn metric_sum(c: &TestCluster, line: &str) -> u64 {
    let mut sum = 0;
    for i in 0..c.replicas.len() {
        let text = c.metrics(i).await;
        sum += text
            .lines()
            .find_map(|l| {
                l.strip_prefix(line)
                    .map(|v| v.trim().parse::<u64>().unwrap_or(0))
            })
            .unwrap_or(0);
    }
    sum
}

#[tokio::test]
async fn files_uploaded_on_one_replica_ground_answers_on_another_and_are_indexed_once() {
    let s3 = TestS3::start();
    let chroma = TestChroma::start();
    let env = env_of(&s3, &chroma);
    let c = TestCluster::start_with(
        BIN,
        2,
        ClusterOptions {
            env: &borrowed(&env),
            ..ClusterOptions::default()
        },
    );
    let (r0, r1) = (c.url(0, ""), c.url(1, ""));

    // Six files through both replicas, each indexed by exactly one.
    let mut ids = Vec::new();
    for i in 0..6 {
        let base = if i % 2 == 0 { &r0 } else { &r1 };
        let fact = format!("The berth {i} warden is called Warden{i}son.");
        let file = uploaded(
            &c.http,
            base,
            None,
            &format!("berth{i}.md"),
            document(&format!("berth {i}"), &fact),
        )
        .await;
        ids.push(file["id"].as_str().unwrap().to_owned());
    }
    let mut chunks = 0;
    for id in &ids {
        let file = settled_file(&c.http, &r1, None, id).await;
        assert_eq!(file["status"], "indexed", "{file}");
        chunks += file["chunks"].as_u64().unwrap();
    }
    assert_eq!(
        metric_sum(&c, "sluice_indexing_total{outcome=\"indexed\"}").await,
        6
    );
    assert_eq!(metric_sum(&c, "sluice_chunks_indexed_total").await, chunks);
    // The bytes are in the bucket, whole, and readable from either replica.
    let object = s3.bucket_dir(BUCKET).join("files").join(&ids[0]);
    assert_eq!(
        std::fs::read(&object).unwrap(),
        document("berth 0", "The berth 0 warden is called Warden0son.")
    );
    let content = c
        .http
        .get(c.url(1, &format!("/v1/files/{}/content", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(
        content.bytes().await.unwrap().as_ref(),
        std::fs::read(&object).unwrap()
    );

    // A session on replica 1 asks about a file uploaded through replica 0.
    let session = c.create_session(1, "fake:tokens=3").await;
    let response = c
        .post(
            &r1,
            &session,
            "messages",
            json!({"content": "Who is the berth 4 warden?", "attachments": [ids[4], ids[1]]}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let answer = settled_answer(&c.http, &r0, &session).await;
    assert_eq!(answer["status"], "complete");
    let prompt = c.upstream.requests().last().unwrap()["messages"].to_string();
    assert!(prompt.contains("Warden4son"), "{prompt}");
    assert!(
        !prompt.contains("Warden0son"),
        "only the attached files are searched: {prompt}"
    );

    // Deleted through replica 1: gone from the bucket, the index and the list.
    let deleted_chunks = settled_file(&c.http, &r0, None, &ids[4]).await["chunks"]
        .as_u64()
        .unwrap();
    assert_eq!(chroma_chunks(&chroma).await, chunks);
    let response = c
        .http
        .delete(c.url(1, &format!("/v1/files/{}", ids[4])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(chroma_chunks(&chroma).await, chunks - deleted_chunks);
    assert!(!s3.bucket_dir(BUCKET).join("files").join(&ids[4]).exists());
    let listed: Value = c
        .http
        .get(c.url(0, "/v1/files"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 5);
    c.post(
        &r0,
        &session,
        "messages",
        json!({"content": "Who is the berth 4 warden?"}),
    )
    .await;
    settled_answer(&c.http, &r0, &session).await;
    let prompt = c.upstream.requests().last().unwrap()["messages"].to_string();
    assert!(!prompt.contains("Warden4son"), "{prompt}");
    let ready: Value = c
        .http
        .get(c.url(0, "/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["backends"]["objects"]["kind"], "s3");
    assert_eq!(ready["backends"]["vectors"]["kind"], "chroma");
}

async fn ready_says(h: &Harness, backend: &str, state: &str) {
    wait_until(&format!("/ready to say {backend} is {state}"), || async {
        let ready: Value = h.get_json(&h.url("/ready")).await;
        (ready["backends"][backend]["state"] == state).then_some(())
    })
    .await;
}

async fn assert_overloaded(response: reqwest::Response) {
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
}

#[tokio::test]
async fn with_s3_or_chroma_down_ready_says_which_files_answer_503_and_chat_goes_on() {
    let mut s3 = TestS3::start();
    let mut chroma = TestChroma::start();
    let env = env_of(&s3, &chroma);
    let h = Harness::start_with(BIN, &borrowed(&env));
    let base = h.url("");
    let file = uploaded(
        &h.http,
        &base,
        None,
        "dock.md",
        document("the dock", "The dock master is Ingrid."),
    )
    .await;
    let id = file["id"].as_str().unwrap().to_owned();
    settled_file(&h.http, &base, None, &id).await;
    let session = h.create_session("fake:tokens=3").await;
    // The conversation has a document from before the outage.
    let response = h
        .http
        .post(h.url(&format!("/v1/sessions/{session}/messages")))
        .json(&json!({"content": "Who is the dock master?", "attachments": [id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    settled_answer(&h.http, &base, &session).await;

    s3.stop();
    ready_says(&h, "objects", "down").await;
    assert_overloaded(upload(&h.http, &base, None, "late.md", b"too late".to_vec()).await).await;
    assert_overloaded(
        h.http
            .get(h.url(&format!("/v1/files/{id}/content")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Nothing half-stored: the upload left no row.
    let files: Value = h.get_json(&h.url("/v1/files")).await;
    assert_eq!(files["data"].as_array().unwrap().len(), 1);
    // Chat without attachments goes on.
    assert_eq!(h.send(&session, "plain question", None).await.status(), 202);
    assert_eq!(
        settled_answer(&h.http, &base, &session).await["status"],
        "complete"
    );

    chroma.stop();
    ready_says(&h, "vectors", "down").await;
    let response = h
        .http
        .post(h.url(&format!("/v1/sessions/{session}/messages")))
        .json(&json!({"content": "Who is the dock master?", "attachments": [id]}))
        .send()
        .await
        .unwrap();
    assert_overloaded(response).await;
    // Chat goes on, in a conversation whose earlier message has a document:
    // its passages are left out while the index is down.
    assert_eq!(
        h.send(&session, "another plain question", None)
            .await
            .status(),
        202
    );
    assert_eq!(
        settled_answer(&h.http, &base, &session).await["status"],
        "complete"
    );
    let prompt = h.upstream.requests().last().unwrap()["messages"].to_string();
    assert!(!prompt.contains("Ingrid"), "{prompt}");
    // The replica itself stays ready: chat does not need them.
    assert_eq!(
        h.http.get(h.url("/ready")).send().await.unwrap().status(),
        200
    );

    s3.resume();
    chroma.resume();
    ready_says(&h, "objects", "up").await;
    ready_says(&h, "vectors", "up").await;
    let late = uploaded(
        &h.http,
        &base,
        None,
        "late.md",
        b"The tug is named Bruno.".to_vec(),
    )
    .await;
    settled_file(&h.http, &base, None, late["id"].as_str().unwrap()).await;
    let response = h
        .http
        .post(h.url(&format!("/v1/sessions/{session}/messages")))
        .json(&json!({"content": "Who is the dock master?", "attachments": [id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    settled_answer(&h.http, &base, &session).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let prompt = h.upstream.requests().last().unwrap()["messages"].to_string();
    assert!(prompt.contains("Ingrid"), "{prompt}");
}
