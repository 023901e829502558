//! A test harness: a fake upstream and a `sluice` pointed at it, with REST
//! helpers.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::client::WsClient;
use crate::fake_upstream::FakeUpstream;
use crate::process::{Sluice, SluiceBuilder};

/// A fake upstream plus a running `sluice`.
pub struct Harness {
    /// The fake provider.
    pub upstream: FakeUpstream,
    /// The server under test.
    pub sluice: Sluice,
    /// An HTTP client.
    pub http: reqwest::Client,
    builder: SluiceBuilder,
    _data: tempfile::TempDir,
}

impl Harness {
    /// Starts both with the default settings.
    pub fn start(bin: &str) -> Self {
        Self::start_with(bin, &[])
    }

    /// Starts both, with extra environment for `sluice`.
    pub fn start_with(bin: &str, env: &[(&str, &str)]) -> Self {
        let upstream = FakeUpstream::start();
        let data = tempfile::tempdir().expect("temp dir");
        let mut builder = SluiceBuilder::new(PathBuf::from(bin), data.path())
            .env("SLUICE_LLM_BASE_URL", upstream.base_url())
            .env("SLUICE_LLM_API_KEY", "upstream-key")
            .env("SLUICE_LLM_MODEL", "fake:tokens=20");
        for (k, v) in env {
            builder = builder.env(k, *v);
        }
        let sluice = builder.start();
        Self {
            upstream,
            sluice,
            http: reqwest::Client::new(),
            builder,
            _data: data,
        }
    }

    /// Starts a new `sluice` on the same data directory (after the old one
    /// was stopped or killed).
    pub fn restart(&mut self) {
        self.sluice.kill();
        self.sluice = self.builder.start();
    }

    /// Kills `sluice` and starts it again on the same data directory, with
    /// `env` changed.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.sluice.kill();
        for (k, v) in env {
            self.builder.set_env(k, *v);
        }
        self.sluice = self.builder.start();
    }

    /// The data directory `sluice` runs on.
    pub fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        self.sluice.url(path)
    }

    /// `ws://addr/v1/sessions/{id}/ws{query}`.
    pub fn ws_url(&self, id: &str, query: &str) -> String {
        self.sluice.ws_url(&format!("/v1/sessions/{id}/ws{query}"))
    }

    /// `http://addr/v1/sessions/{id}/events{query}`.
    pub fn events_url(&self, id: &str, query: &str) -> String {
        self.url(&format!("/v1/sessions/{id}/events{query}"))
    }

    /// Creates a session using `model`; returns its id.
    pub async fn create_session(&self, model: &str) -> String {
        crate::rest::create_session(&self.http, &self.url(""), model).await
    }

    /// Creates a session using `model`, follows it over WebSocket (past
    /// `hello` and `snapshot`) and sends `content`; returns the session id
    /// and the connection.
    pub async fn session_with_ws(&self, model: &str, content: &str) -> (String, WsClient) {
        let id = self.create_session(model).await;
        let mut ws = WsClient::connect(&self.ws_url(&id, ""))
            .await
            .expect("connect");
        ws.until("snapshot").await;
        ws.send_json(json!({"type": "send", "content": content}))
            .await;
        (id, ws)
    }

    /// `POST /v1/sessions/{id}/messages`.
    pub async fn send(
        &self,
        id: &str,
        content: &str,
        client_msg_id: Option<&str>,
    ) -> reqwest::Response {
        let mut body = json!({"content": content});
        if let Some(c) = client_msg_id {
            body["client_msg_id"] = json!(c);
        }
        self.http
            .post(self.url(&format!("/v1/sessions/{id}/messages")))
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    /// `GET url` as JSON, whatever the status.
    pub async fn get_json(&self, url: &str) -> Value {
        let response = self.http.get(url).send().await.expect("GET");
        response.json().await.expect("a JSON body")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        response.text().await.expect("metrics text")
    }

    /// `GET /v1/sessions/{id}` as JSON (asserting 200).
    pub async fn session(&self, id: &str) -> Value {
        crate::rest::get_session(&self.http, &self.url(""), id).await
    }
}
