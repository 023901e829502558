//! Sluice behind nginx as in production (`nginx/production.conf`), over
//! TLS with a certificate from `scripts/tls-cert`, in front of real
//! replicas: HTTP moves to HTTPS, the security headers are on every
//! answer, streams still stream, the per-address limits answer 429 in
//! Sluice's envelope, uploads of up to 100 MiB pass and larger ones are
//! refused in the envelope, the chat page is cached, and no replica is a
//! 503 `overloaded`.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sluice_test_support::client::{SseClient, token_text};
use sluice_test_support::cluster::TestCluster;
use sluice_test_support::expected_text;
use sluice_test_support::files::upload;
use sluice_test_support::nginx::{self, TestNginx};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn make_cert(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tls-cert");
    let status = Command::new(script)
        .arg(dir)
        .status()
        .expect("run scripts/tls-cert");
    assert!(status.success());
}

/// A client that trusts the self-signed certificate and follows no
/// redirects.
fn client(cert_dir: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert_dir.join("fullchain.pem")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The security headers production.conf puts on every answer.
fn assert_security_headers(response: &reqwest::Response) {
    for (name, value) in [
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ),
    ] {
        let values: Vec<_> = response.headers().get_all(name).iter().collect();
        assert_eq!(
            values,
            [value],
            "{name} on {} {}",
            response.status(),
            response.url()
        );
    }
}

async fn envelope(response: reqwest::Response) -> (u16, Value) {
    assert_security_headers(&response);
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, value)
}

#[test]
fn the_production_config_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    make_cert(dir.path());
    let conf = nginx::render_production(
        dir.path(),
        dir.path(),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        &[
            "127.0.0.1:3".parse().unwrap(),
            "127.0.0.1:4".parse().unwrap(),
        ],
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    nginx::check(dir.path(), &path).unwrap_or_else(|e| panic!("nginx -t: {e}"));
}

#[tokio::test]
async fn over_tls_streams_stream_and_the_limits_answer_in_the_envelope() {
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path());
    let mut c = TestCluster::start(BIN, 2, &[]);
    let nginx = TestNginx::start_production(c.addrs(), certs.path());
    let http = client(certs.path());

    // Plain HTTP answers only with the way to HTTPS (308: a POST stays one),
    // on the public host name, whatever Host the request named.
    let plain_url = format!("http://127.0.0.1:{}/v1/sessions?x=1", nginx.addr.port());
    for host in ["localhost", "evil.example"] {
        let plain = http
            .post(&plain_url)
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(plain.status(), 308);
        assert_security_headers(&plain);
        assert_eq!(
            plain.headers()["location"],
            nginx.https_url("/v1/sessions?x=1").as_str()
        );
    }

    // Plain HTTP sent to the TLS port, and nginx's internal error routes
    // asked for from outside: the envelope too.
    let wrong_port = http
        .get(format!(
            "http://127.0.0.1:{}/health",
            nginx.https_addr.unwrap().port()
        ))
        .send()
        .await
        .unwrap();
    let (status, body) = envelope(wrong_port).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let internal = http
        .get(nginx.https_url("/_sluice/bad-request"))
        .send()
        .await
        .unwrap();
    assert!(internal.headers().contains_key("x-request-id"));
    let (status, body) = envelope(internal).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // The security headers, on an answer of Sluice's.
    let health = http.get(nginx.https_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert_security_headers(&health);
    assert!(health.headers().contains_key("x-request-id"));

    // The chat page: cached at the edge, revalidated by its ETag; a cached
    // answer carries each request's own id.
    let page = http.get(nginx.https_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_security_headers(&page);
    let etag = page.headers()["etag"].clone();
    let again = http
        .get(nginx.https_url("/"))
        .header("x-request-id", "second-look")
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["x-cache-status"], "HIT");
    assert_eq!(again.headers()["x-request-id"], "second-look");
    assert_security_headers(&again);
    let revalidated = http
        .get(nginx.https_url("/"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);

    // An answer streams through TLS and HTTP/2 token by token: the first
    // token arrives while the replica is still writing the answer.
    let id = c.create_session(0, "fake:tokens=40,delay_ms=50").await;
    let events = http
        .get(nginx.https_url(&format!("/v1/sessions/{id}/events")))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert!(!events.headers().contains_key("content-encoding"));
    let mut sse = SseClient::from_response(events);
    sse.until("snapshot").await;
    let sent = http
        .post(nginx.https_url(&format!("/v1/sessions/{id}/messages")))
        .json(&json!({"content": "go"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let mut frames: Vec<Value> = sse
        .until("token")
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let owner = c.owner(&id).expect("an owner");
    let session = c.session(&c.url(owner, ""), &id).await;
    assert_eq!(session["messages"][1]["status"], "streaming");
    frames.extend(
        sse.until("generation_end")
            .await
            .into_iter()
            .map(|e| e.data),
    );
    assert_eq!(token_text(&frames), expected_text(40));

    // Streamed completions too.
    let completion = http
        .post(nginx.https_url("/v1/chat/completions"))
        .json(&json!({"model": "fake:tokens=5", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(completion.status(), 200);
    let body = completion.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");

    // An upload above the JSON bodies' 2 MiB passes (streamed through).
    let big = upload(
        &http,
        &nginx.https_url(""),
        None,
        "big.txt",
        vec![b'a'; 3 << 20],
    )
    .await;
    assert_eq!(big.status(), 201);
    // One over nginx's cap is refused in the envelope, from its length.
    let huge = http
        .post(nginx.https_url("/v1/files"))
        .header("content-type", "multipart/form-data; boundary=x")
        .header("content-length", (200u64 << 20).to_string())
        .body(vec![0u8; 1 << 16])
        .send()
        .await
        .expect("an answer before the body is sent");
    let (status, body) = envelope(huge).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Uploads: 1 a second per address, bursts of 5.
    let uploads = (0..10).map(|i| {
        let http = http.clone();
        let base = nginx.https_url("");
        async move { upload(&http, &base, None, &format!("f{i}.txt"), b"x".to_vec()).await }
    });
    let mut limited = 0;
    for response in futures::future::join_all(uploads).await {
        if response.status() == 429 {
            assert_eq!(response.headers()["retry-after"], "1");
            let (_, body) = envelope(response).await;
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            assert_eq!(body["error"]["type"], "rate_limited");
            limited += 1;
        } else {
            assert_eq!(response.status(), 201);
        }
    }
    assert!(limited >= 4, "{limited} of 10 uploads at once were limited");

    // The API: 10 a second per address, bursts of 20; /health is not
    // limited.
    let gets = |path: &'static str| {
        let requests = (0..40).map(|_| http.get(nginx.https_url(path)).send());
        futures::future::join_all(requests)
    };
    let statuses: Vec<u16> = gets("/v1/models")
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 15, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let health: Vec<u16> = gets("/health")
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(health.iter().all(|s| *s == 200), "{health:?}");

    // A request line too long for nginx: the envelope too (HTTP/1.1; over
    // HTTP/2 nginx ends the connection instead).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let http1 = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(
                &std::fs::read(certs.path().join("fullchain.pem")).unwrap(),
            )
            .unwrap(),
        )
        .http1_only()
        .build()
        .unwrap();
    let long = http1
        .get(nginx.https_url(&format!("/v1/models?q={}", "x".repeat(10_000))))
        .send()
        .await
        .unwrap();
    let (status, body) = envelope(long).await;
    assert_eq!(status, 414);
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    // Every request was logged as one JSON line with its request id.
    let log = nginx.access_log();
    let line: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert!(
        line["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{line}"
    );

    // No replica answers: 503 overloaded, in the envelope, with Retry-After.
    c.kill(0);
    c.kill(1);
    let gone = http
        .get(nginx.https_url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.headers()["retry-after"], "1");
    let (status, body) = envelope(gone).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
}
