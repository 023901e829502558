//! Isolation as a matrix (issue "Abuse-proof", item 10): for every route
//! and both transports, and for the Responses API, files, attachments and
//! the cache, user B cannot read, resume, cancel, send to, delete, attach
//! or retrieve user A's things, nor learn that they exist: each answer to B
//! about A's id is exactly the answer about an id that does not exist.

use serde_json::{Value, json};
use sluice_test_support::client::WsClient;
use sluice_test_support::harness::Harness;
use sluice_test_support::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECRET: &str = "isolation-secret-0123456789";
/// An id of the right form that names nothing.
const NOBODYS: &str = "01a23aef-0000-7000-8000-000000000000";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    sluice_web::auth::mint(SECRET, sub, exp).unwrap()
}

/// A request as `who`: its status and body (the body's ids replaced by
/// `<id>` so that answers about two ids compare).
async fn ask(
    h: &Harness,
    who: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = h.http.request(method, h.url(path)).bearer_auth(token(who));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, text)
}

/// Asserts that B's answer about A's `id` is the answer about an id that
/// does not exist, and is a `404`.
async fn same_as_nothing(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    id: &str,
    body: Option<Value>,
) {
    let (status, text) = ask(h, "bob", method.clone(), path, body.clone()).await;
    let (none_status, none_text) = ask(
        h,
        "bob",
        method.clone(),
        &path.replace(id, NOBODYS),
        body.map(|b| serde_json::from_str(&b.to_string().replace(id, NOBODYS)).unwrap()),
    )
    .await;
    assert_eq!(status, 404, "{method} {path}: {text}");
    assert_eq!(
        (status, text.replace(id, "<id>")),
        (none_status, none_text.replace(NOBODYS, "<id>")),
        "{method} {path} tells A's id from nobody's"
    );
}

#[tokio::test]
async fn another_user_cannot_reach_or_detect_anything_of_yours() {
    let h = Harness::start_with(BIN, &[("SLUICE_JWT_SECRET", SECRET)]);
    let alice = token("alice");
    use reqwest::Method as M;

    // Alice's session with an answer, her file, her stored response, and a
    // cached answer.
    let (status, created) = ask(
        &h,
        "alice",
        M::POST,
        "/v1/sessions",
        Some(json!({"model": "fake:tokens=3"})),
    )
    .await;
    assert_eq!(status, 201);
    let session: Value = serde_json::from_str(&created).unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();
    let mut ws = WsClient::connect(&format!("{}?access_token={alice}", h.ws_url(&sid, "")))
        .await
        .unwrap();
    ws.until("snapshot").await;
    ws.send_json(json!({"type": "send", "content": "alice's secret"}))
        .await;
    ws.until("generation_end").await;
    let file = sluice_test_support::files::uploaded(
        &h.http,
        &h.url(""),
        Some(&alice),
        "alice.txt",
        b"alice's private notes about the merger".to_vec(),
    )
    .await;
    let fid = file["id"].as_str().unwrap().to_owned();
    wait_until("alice's file is indexed", || async {
        let (_, file) = ask(&h, "alice", M::GET, &format!("/v1/files/{fid}"), None).await;
        file.contains("\"indexed\"").then_some(())
    })
    .await;
    let (status, response) = ask(
        &h,
        "alice",
        M::POST,
        "/v1/responses",
        Some(json!({"model": "fake:tokens=3", "input": "remember this", "store": true})),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    let rid = serde_json::from_str::<Value>(&response).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deterministic = json!({"model": "fake:tokens=4", "temperature": 0,
                               "messages": [{"role": "user", "content": "cache me"}]});
    let cached = h
        .http
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(&alice)
        .json(&deterministic)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.headers()["x-sluice-cache"], "miss");

    // Sessions, over REST.
    for (method, path, body) in [
        (M::GET, format!("/v1/sessions/{sid}"), None),
        (M::DELETE, format!("/v1/sessions/{sid}"), None),
        (
            M::POST,
            format!("/v1/sessions/{sid}/messages"),
            Some(json!({"content": "hi"})),
        ),
        (M::POST, format!("/v1/sessions/{sid}/cancel"), None),
        (M::GET, format!("/v1/sessions/{sid}/events"), None),
        (M::GET, format!("/v1/sessions/{sid}/events?after=0"), None),
    ] {
        same_as_nothing(&h, method, &path, &sid, body).await;
    }
    // The streams: the WebSocket handshake is refused as for nothing.
    let bob = token("bob");
    for id in [sid.as_str(), NOBODYS] {
        let refused = WsClient::connect(&format!("{}?access_token={bob}", h.ws_url(id, ""))).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 404, "{id}");
            }
            other => panic!("bob's WebSocket to {id}: {:?}", other.map(|_| ())),
        }
    }
    let (_, listed) = ask(&h, "bob", M::GET, "/v1/sessions", None).await;
    assert!(!listed.contains(&sid), "{listed}");

    // Files, and attaching or retrieving from them.
    for (method, path) in [
        (M::GET, format!("/v1/files/{fid}")),
        (M::GET, format!("/v1/files/{fid}/content")),
        (M::DELETE, format!("/v1/files/{fid}")),
    ] {
        same_as_nothing(&h, method, &path, &fid, None).await;
    }
    let (_, files) = ask(&h, "bob", M::GET, "/v1/files", None).await;
    assert!(!files.contains(&fid), "{files}");
    let (status, bobs) = ask(
        &h,
        "bob",
        M::POST,
        "/v1/sessions",
        Some(json!({"model": "fake:tokens=3"})),
    )
    .await;
    assert_eq!(status, 201);
    let bob_sid = serde_json::from_str::<Value>(&bobs).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    same_as_nothing(
        &h,
        M::POST,
        &format!("/v1/sessions/{bob_sid}/messages"),
        &fid,
        Some(json!({"content": "summarize", "attachments": [fid]})),
    )
    .await;

    // Stored responses: read, delete, or continue.
    for (method, path, body) in [
        (M::GET, format!("/v1/responses/{rid}"), None),
        (M::DELETE, format!("/v1/responses/{rid}"), None),
        (
            M::POST,
            "/v1/responses".to_owned(),
            Some(json!({"model": "fake:tokens=3", "input": "and?", "previous_response_id": rid})),
        ),
    ] {
        same_as_nothing(&h, method, &path, &rid, body).await;
    }

    // The cache: Bob's identical request is asked of the provider anew.
    let asked = h.upstream.requests().len();
    let bobs_answer = h
        .http
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(&bob)
        .json(&deterministic)
        .send()
        .await
        .unwrap();
    assert_eq!(bobs_answer.headers()["x-sluice-cache"], "miss");
    assert_eq!(h.upstream.requests().len(), asked + 1);

    // And everything of Alice's is still hers, untouched.
    let (status, mine) = ask(&h, "alice", M::GET, &format!("/v1/sessions/{sid}"), None).await;
    assert_eq!(status, 200);
    assert!(mine.contains("alice's secret"));
    let (status, _) = ask(
        &h,
        "alice",
        M::GET,
        &format!("/v1/files/{fid}/content"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = ask(&h, "alice", M::GET, &format!("/v1/responses/{rid}"), None).await;
    assert_eq!(status, 200);
}
