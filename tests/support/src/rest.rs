//! REST calls every test harness makes, against any Sluice base URL
//! (`http://host:port`: one server, a replica, or nginx).

use std::time::Duration;

use serde_json::{Value, json};

/// Creates a session using `model`; returns its id (asserting 201).
pub async fn create_session(http: &reqwest::Client, base: &str, model: &str) -> String {
    let response = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"model": model}))
        .send()
        .await
        .expect("create session");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// `GET /v1/sessions/{id}` as JSON (asserting 200).
pub async fn get_session(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let response = http
        .get(format!("{base}/v1/sessions/{id}"))
        .send()
        .await
        .expect("get session");
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The session's last message but its tool messages (the answer) once it
/// is no longer `streaming` (a hang guard of 30 s, not a timing check).
pub async fn settled_answer(http: &reqwest::Client, base: &str, id: &str) -> Value {
    for _ in 0..600 {
        let session = get_session(http, base, id).await;
        let last = session["messages"]
            .as_array()
            .and_then(|m| m.iter().rfind(|m| m["role"] != "tool"))
            .cloned()
            .expect("a message");
        if last["status"] != "streaming" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the answer never settled");
}

/// Asserts that `response` refuses a send because the session store is down:
/// 503 with `Retry-After` and an `overloaded` error naming the store.
pub async fn assert_store_unavailable(response: reqwest::Response) {
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("session store unavailable"),
        "{body}"
    );
}

/// `GET /ready` until it answers `status` (a check started just before a
/// backend went down may still say it is up); the body then.
pub async fn ready_when(http: &reqwest::Client, base: &str, status: u16) -> Value {
    crate::wait_until(&format!("/ready to answer {status}"), || async {
        let response = http
            .get(format!("{base}/ready"))
            .send()
            .await
            .expect("GET /ready");
        if response.status() != status {
            return None;
        }
        Some(response.json().await.expect("a JSON body"))
    })
    .await
}
