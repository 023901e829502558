//! Authentication as a client meets it (issue "Abuse-proof", item 4):
//! refusals say what is wrong in words, in the envelope; `nbf`, `iat`,
//! `iss` and `aud` are checked; the token comes as a query parameter only
//! on the WebSocket and SSE routes; static API keys name their user on the
//! OpenAI-compatible routes only.

use base64::Engine;
use serde_json::{Value, json};
use sluice_test_support::harness::Harness;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECRET: &str = "auth-test-secret-0123456789";
const API_KEY: &str = "sk-batch-0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn server() -> Harness {
    Harness::start_with(
        BIN,
        &[
            ("SLUICE_JWT_SECRET", SECRET),
            ("SLUICE_JWT_ISSUER", "https://id.example"),
            ("SLUICE_API_KEYS", &format!("batch-jobs={API_KEY}")),
        ],
    )
}

fn token(sub: &str) -> String {
    signed(json!({"sub": sub, "exp": now() + 600, "iss": "https://id.example"}))
}

/// `GET path` with `bearer`; the status and the envelope's message.
async fn get(h: &Harness, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = h.http.get(h.url(path));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn refusals_say_what_is_wrong_in_words() {
    let h = server();
    let good = token("alice");
    assert_eq!(get(&h, "/v1/sessions", Some(&good)).await.0, 200);
    let none = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[0] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"alg":"none","typ":"JWT"}"#);
        parts[2].clear();
        parts.join(".")
    };
    let later = now() + 3600;
    for (token, words) in [
        (none, "only HS256"),
        (
            signed(json!({"exp": later, "iss": "https://id.example"})),
            "no sub claim",
        ),
        (
            signed(json!({"sub": "a", "exp": later, "iss": "https://id.example", "nbf": later})),
            "not valid yet (nbf)",
        ),
        (
            signed(json!({"sub": "a", "exp": later, "iss": "https://id.example", "iat": later})),
            "issued in the future (iat)",
        ),
        (
            signed(json!({"sub": "a", "exp": later, "iss": "https://other.example"})),
            "issuer (iss)",
        ),
        (
            signed(json!({"sub": "a", "exp": now() - 120, "iss": "https://id.example"})),
            "expired",
        ),
        (
            signed(json!({"sub": "a\nb", "exp": later, "iss": "https://id.example"})),
            "without control characters",
        ),
    ] {
        let (status, message) = get(&h, "/v1/sessions", Some(&token)).await;
        assert_eq!(status, 401, "{words}");
        assert!(message.contains(words), "{words}: {message}");
        for jargon in ["JSON", "line 1", "variant", "column"] {
            assert!(!message.contains(jargon), "{message}");
        }
    }
}

#[tokio::test]
async fn the_query_token_is_taken_only_by_the_stream_routes() {
    let h = server();
    let alice = token("alice");
    let created: Value = h
        .http
        .post(h.url("/v1/sessions"))
        .bearer_auth(&alice)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let query = format!("?access_token={alice}");
    let response = h
        .http
        .get(h.url(&format!("/v1/sessions/{id}/events{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // Paths that end like a stream route, and every other route, want the header.
    for path in [
        format!("/v1/sessions{query}"),
        format!("/v1/sessions/ws{query}"),
        format!("/v1/sessions/events{query}"),
        format!("/v1/sessions/{id}{query}"),
    ] {
        assert_eq!(get(&h, &path, None).await.0, 401, "{path}");
    }
}

#[tokio::test]
async fn api_keys_name_their_user_on_the_openai_routes_only() {
    let h = server();
    let asked = |key: &'static str| {
        let h = &h;
        async move {
            h.http
                .post(h.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "fake:tokens=3", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(asked(API_KEY).await, 200);
    assert_eq!(get(&h, "/v1/models", Some(API_KEY)).await.0, 200);
    assert_eq!(
        asked("sk-batch-0123456789abcdef0123456789abcdeX").await,
        401
    );
    // Not a key for the session routes.
    let (status, message) = get(&h, "/v1/sessions", Some(API_KEY)).await;
    assert_eq!(status, 401);
    assert!(message.contains("invalid token"), "{message}");
}

/// API keys without JWT mode, or a short key, stop the start with one line.
#[test]
fn api_keys_need_jwt_mode_and_long_keys() {
    for (env, words) in [
        (
            vec![("SLUICE_API_KEYS", format!("a={API_KEY}"))],
            "SLUICE_JWT_SECRET",
        ),
        (
            vec![
                ("SLUICE_JWT_SECRET", SECRET.to_owned()),
                ("SLUICE_API_KEYS", "a=short".to_owned()),
            ],
            "at least 32 bytes",
        ),
        // Found by attack: /metrics and /ready would be served nowhere.
        (
            vec![("SLUICE_OPS_ENDPOINTS", "metrics-listener".to_owned())],
            "served nowhere",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(BIN)
            .env_clear()
            .env("SLUICE_DATA_DIR", dir.path())
            .env("SLUICE_ADDR", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(words), "{stderr}");
        assert!(!stderr.contains(API_KEY), "the key was repeated: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
