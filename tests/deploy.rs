//! The deployment as an operator meets it (issue "Production deployment"):
//! the seed guide's whole `.env.production` starts a replica, every
//! variable honoured or warned about once; `sluice healthcheck` answers for
//! a container's HEALTHCHECK; logs are JSON lines naming the request,
//! session, user and replica.

use std::process::Command;

use serde_json::{Value, json};
use sluice_test_support::chroma::TestChroma;
use sluice_test_support::fake_upstream::FakeUpstream;
use sluice_test_support::postgres::TestPostgres;
use sluice_test_support::process::{Sluice, SluiceBuilder};
use sluice_test_support::redis::TestRedis;
use sluice_test_support::{free_port, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The seed deployment's `.env.production`, as `(name, value)` pairs.
fn seed_env() -> Vec<(String, String)> {
    include_str!("fixtures/seed.env.production")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("NAME=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn seed_value(name: &str) -> String {
    seed_env()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} is in the seed file"))
}

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(seed_value("JWT_SECRET").as_bytes()),
    )
    .unwrap()
}

fn logs(server: &Sluice) -> Vec<Value> {
    server
        .logs
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect()
}

/// The services the seed names by host (`postgres`, `redis`, `chroma`) are
/// throwaway servers on loopback here; every one of its twenty variables is
/// set, with only the hosts (and the listening ports) changed. The log
/// format, level and workers are the seed's, not the test harness's.
#[tokio::test]
async fn the_seed_environment_file_starts_a_replica() {
    let redis = TestRedis::start();
    let postgres = TestPostgres::start();
    let chroma = TestChroma::start();
    let upstream = FakeUpstream::start();
    let data = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let chroma_port = chroma.url().rsplit(':').next().unwrap().to_owned();
    let mut builder = SluiceBuilder::new(BIN, data.path())
        .unset("SLUICE_LOG_FORMAT")
        .unset("SLUICE_LOG_LEVEL")
        .unset("SLUICE_WORKERS");
    for (name, value) in seed_env() {
        let value = match name.as_str() {
            "POSTGRES_URL" => postgres.url(),
            "REDIS_URL" => redis.url(),
            "CHROMA_HOST" => "127.0.0.1".into(),
            "CHROMA_PORT" => chroma_port.clone(),
            "METRICS_PORT" => metrics_port.to_string(),
            _ => value,
        };
        builder = builder.env(&name, value);
    }
    // Ark stands in for the fake provider; the seed's key goes to it.
    let server = builder
        .env("SLUICE_LLM_BASE_URL", upstream.base_url())
        .start();

    // ENV=production: JSON lines, at the seed's LOG_LEVEL=INFO, each
    // naming the replica once it is known.
    let lines = logs(&server);
    let listening = lines
        .iter()
        .find(|l| l["message"] == "listening")
        .expect("a listening line");
    assert!(listening["replica"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(lines.iter().all(|l| l["level"] != "DEBUG"));
    // The ignored variables: one warning each, naming it and saying why.
    for name in ["SECRET_KEY", "SENTRY_DSN"] {
        let warned: Vec<&Value> = lines
            .iter()
            .filter(|l| l["level"] == "WARN")
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(&format!("{name} is ignored: ")))
            })
            .collect();
        assert_eq!(warned.len(), 1, "{name}: {lines:#?}");
    }

    let http = reqwest::Client::new();
    // JWT_SECRET: a request without a token is refused, one with a token
    // signed by it is served.
    let anonymous = http.get(server.url("/v1/sessions")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let bearer = token("alice");
    let created: Value = http
        .post(server.url("/v1/sessions"))
        .bearer_auth(&bearer)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("a session id").to_owned();
    assert_eq!(created["model"], "doubao-pro-32k", "OPENAI_MODEL");
    let secret_text = "the launch code is tangerine";
    let sent = http
        .post(server.url(&format!("/v1/sessions/{id}/messages")))
        .bearer_auth(&bearer)
        .json(&json!({"content": secret_text}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    wait_until("the answer", || async {
        let session: Value = http
            .get(server.url(&format!("/v1/sessions/{id}")))
            .bearer_auth(&bearer)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let messages = session["messages"].as_array()?;
        (messages.len() == 2 && messages[1]["status"] == "complete").then_some(())
    })
    .await;
    // ARK_API_KEY, OPENAI_MODEL and OPENAI_TEMPERATURE reach the provider.
    let request = upstream.requests().pop().expect("the provider was asked");
    assert_eq!(request["model"], "doubao-pro-32k");
    assert_eq!(request["temperature"], 0.7);
    assert_eq!(
        request["_authorization"],
        format!("Bearer {}", seed_value("ARK_API_KEY"))
    );
    // ENCRYPTION_KEY (a passphrase): the message is sealed in PostgreSQL.
    let stored = postgres.psql(&format!(
        "SELECT content FROM messages WHERE session_id = '{id}' AND role = 'user'"
    ));
    assert!(
        !stored.is_empty() && !stored.contains("tangerine"),
        "{stored}"
    );

    // POSTGRES_URL, REDIS_URL, CHROMA_HOST/PORT: the backends in use.
    let metrics_addr = server.metrics_addr.expect("METRICS_PORT opens a listener");
    assert_eq!(metrics_addr.port(), metrics_port);
    let ready: Value = http
        .get(server.url("/ready"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<(&str, &str)> = ready["backends"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, b)| (name.as_str(), b["kind"].as_str().unwrap_or("")))
        .collect();
    for expected in [
        ("store", "postgres"),
        ("redis", "redis"),
        ("vectors", "chroma"),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} in {kinds:?}");
    }
    // PROMETHEUS_ENABLED=true, METRICS_PORT: /metrics on the second listener.
    let metrics = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sluice_build_info{version="), "{metrics}");
    let gaps: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_inter_token_seconds_count{path=\"session\"} "))
        .and_then(|n| n.parse().ok())
        .expect("the time between tokens, measured");
    assert!(gaps > 0, "the answer's tokens were timed");
    drop(chroma);
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let data = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let server = SluiceBuilder::new(BIN, data.path())
        .env("PROMETHEUS_ENABLED", "false")
        .env("METRICS_PORT", metrics_port.to_string())
        .start();
    let http = reqwest::Client::new();
    for url in [
        server.url("/metrics"),
        format!("http://127.0.0.1:{metrics_port}/metrics"),
    ] {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 404, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    let ready = http
        .get(format!("http://127.0.0.1:{metrics_port}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "readiness is still served");
}

#[tokio::test]
async fn the_healthcheck_command_tells_a_serving_replica_from_a_gone_one() {
    let data = tempfile::tempdir().unwrap();
    let mut server = SluiceBuilder::new(BIN, data.path()).start();
    let check = |addr: String| {
        Command::new(BIN)
            .env_clear()
            .env("SLUICE_ADDR", addr)
            .env("SLUICE_JWT_SECRET", "a-secret-of-16-bytes-at-least")
            .arg("healthcheck")
            .output()
            .expect("run sluice healthcheck")
    };
    let healthy = check(server.addr.to_string());
    assert!(healthy.status.success(), "{healthy:?}");
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("200"));
    // Listening on every interface, it is reached on loopback.
    let any = check(format!("0.0.0.0:{}", server.addr.port()));
    assert!(any.status.success(), "{any:?}");
    server.terminate();
    let gone = check(server.addr.to_string());
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("unhealthy"));
}

/// Something that is not Sluice on the port: an answer that is not HTTP's
/// 200 fails the check, and so does one that trickles in forever.
#[test]
fn the_healthcheck_command_trusts_only_an_http_200() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let answers: [&[u8]; 2] = [b"XYZZY 200 whatever\r\n\r\n", b"H"];
        for answer in answers {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(answer);
            if answer == b"H" {
                // One byte, then silence: the check must give up by itself.
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
        }
    });
    for _ in 0..2 {
        let out = Command::new(BIN)
            .env_clear()
            .env("SLUICE_ADDR", addr.to_string())
            .arg("healthcheck")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unhealthy"),
            "{out:?}"
        );
    }
    server.join().unwrap();
}

/// A line about a request names its request id, route, session and user;
/// every line names the replica.
#[tokio::test]
async fn log_lines_name_the_request_session_user_and_replica() {
    let data = tempfile::tempdir().unwrap();
    let upstream = FakeUpstream::start();
    let server = SluiceBuilder::new(BIN, data.path())
        .env("SLUICE_LOG_LEVEL", "debug")
        .env("SLUICE_REPLICA_ID", "replica-7")
        .env("SLUICE_LLM_BASE_URL", upstream.base_url())
        .start();
    let http = reqwest::Client::new();
    let created: Value = http
        .post(server.url("/v1/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let response = http
        .get(server.url(&format!("/v1/sessions/{id}")))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let served = wait_until("the request's log line", || async {
        logs(&server)
            .into_iter()
            .find(|l| l["span"]["request_id"] == "req-abc-123" && l["message"] == "served")
    })
    .await;
    assert_eq!(served["replica"], "replica-7");
    assert_eq!(served["span"]["session_id"], id.as_str());
    assert_eq!(served["span"]["user"], "local");
    assert_eq!(served["span"]["route"], "/v1/sessions/{id}");
    // A failed answer is logged with the provider's words as a field of
    // its own: no line has a key twice (Elasticsearch refuses those).
    let failing: Value = http
        .post(server.url("/v1/sessions"))
        .json(&json!({"model": "fake:status=500"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failing = failing["id"].as_str().unwrap().to_owned();
    http.post(server.url(&format!("/v1/sessions/{failing}/messages")))
        .json(&json!({"content": "go"}))
        .send()
        .await
        .unwrap();
    wait_until("the failure's log line", || async {
        logs(&server)
            .into_iter()
            .find(|l| l["message"] == "generation failed")
    })
    .await;
    let raw = server.logs.lock().unwrap().clone();
    for line in &raw {
        for key in ["\"message\":", "\"replica\":", "\"level\":"] {
            assert_eq!(line.matches(key).count(), 1, "{key} in {line}");
        }
    }
    // With SLUICE_REPLICA_ID set, every line names the replica, from the first.
    for line in logs(&server) {
        assert_eq!(line["replica"], "replica-7", "{line}");
    }
}
