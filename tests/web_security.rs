//! Browsers and operational endpoints (issue "Abuse-proof", items 5 and 6):
//! CORS off by default and an allow-list that answers preflights; a
//! WebSocket's `Origin` checked in JWT mode too; the chat page's security
//! headers and `nosniff` everywhere; errors the framework answers put in
//! the envelope; `/metrics` and `/ready` behind a token or on the metrics
//! listener only, `/health` open.

use serde_json::Value;
use sluice_test_support::harness::Harness;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECRET: &str = "web-security-secret-0123456789";
const SITE: &str = "https://chat.example";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    sluice_web::auth::mint(SECRET, sub, exp).unwrap()
}

async fn preflight(h: &Harness, origin: &str) -> reqwest::Response {
    h.http
        .request(reqwest::Method::OPTIONS, h.url("/v1/sessions"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

async fn envelope_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("an envelope");
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_listed() {
    let off = Harness::start_with(BIN, &[("SLUICE_JWT_SECRET", SECRET)]);
    let response = preflight(&off, SITE).await;
    assert_eq!(response.status(), 405);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    assert_eq!(envelope_code(response).await, "method_not_allowed");

    let on = Harness::start_with(
        BIN,
        &[("SLUICE_JWT_SECRET", SECRET), ("SLUICE_CORS_ORIGINS", SITE)],
    );
    let response = preflight(&on, SITE).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], SITE);
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");

    let listed = on
        .http
        .get(on.url("/v1/sessions"))
        .header("Origin", SITE)
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], SITE);
    let exposed = listed.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");

    // Another site: no preflight answer it could use, in the envelope.
    let foreign = preflight(&on, "https://evil.example").await;
    assert_eq!(foreign.status(), 400);
    assert!(
        !foreign
            .headers()
            .contains_key("access-control-allow-origin")
    );
    assert_eq!(envelope_code(foreign).await, "bad_request");
}

#[tokio::test]
async fn websockets_from_other_sites_are_refused_in_jwt_mode_too() {
    let h = Harness::start_with(
        BIN,
        &[("SLUICE_JWT_SECRET", SECRET), ("SLUICE_CORS_ORIGINS", SITE)],
    );
    let alice = token("alice");
    let created: Value = h
        .http
        .post(h.url("/v1/sessions"))
        .bearer_auth(&alice)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let open = |origin: Option<&'static str>| {
        let url = format!("{}?access_token={alice}", h.ws_url(id, ""));
        async move {
            let mut request = url.into_client_request().unwrap();
            if let Some(origin) = origin {
                request
                    .headers_mut()
                    .insert("Origin", origin.parse().unwrap());
            }
            tokio_tungstenite::connect_async(request).await
        }
    };
    assert!(open(None).await.is_ok(), "a client that is not a browser");
    assert!(open(Some(SITE)).await.is_ok(), "a listed origin");
    let own = format!("http://{}", h.sluice.addr);
    let own: &'static str = Box::leak(own.into_boxed_str());
    assert!(open(Some(own)).await.is_ok(), "the server's own page");
    match open(Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "forbidden");
        }
        other => panic!("another site's WebSocket: {other:?}"),
    }
}

#[tokio::test]
async fn the_chat_page_and_the_api_send_security_headers() {
    let h = Harness::start(BIN);
    let page = h.http.get(h.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers();
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    for path in ["/v1/sessions", "/health", "/no/such/route"] {
        let response = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
    }
}

#[tokio::test]
async fn metrics_and_ready_want_a_token_or_their_own_listener() {
    let h = Harness::start_with(BIN, &[("SLUICE_JWT_SECRET", SECRET)]);
    for path in ["/metrics", "/ready"] {
        let anonymous = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
        assert_eq!(envelope_code(anonymous).await, "unauthorized");
        let with_token = h
            .http
            .get(h.url(path))
            .bearer_auth(token("ops"))
            .send()
            .await
            .unwrap();
        assert_eq!(with_token.status(), 200, "{path}");
    }
    let health = h.http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let h = Harness::start_with(
        BIN,
        &[
            ("SLUICE_JWT_SECRET", SECRET),
            ("SLUICE_OPS_ENDPOINTS", "metrics-listener"),
            ("SLUICE_METRICS_ADDR", "127.0.0.1:0"),
        ],
    );
    let metrics_addr = h.sluice.metrics_addr.expect("a metrics listener");
    for path in ["/metrics", "/ready"] {
        let main = h
            .http
            .get(h.url(path))
            .bearer_auth(token("ops"))
            .send()
            .await
            .unwrap();
        assert_eq!(main.status(), 404, "{path}");
        let own = h
            .http
            .get(format!("http://{metrics_addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), 200, "{path}");
    }
    let elsewhere = h
        .http
        .get(format!("http://{metrics_addr}/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);
    assert_eq!(envelope_code(elsewhere).await, "not_found");
}
