//! The agent (issue: "An agent that uses tools"): the fake provider is
//! scripted to call tools, with the built-ins and the tools of a real MCP
//! server (the official Python SDK's) on loopback. Each test reads the
//! events a client sees, the stored messages, and what the provider was
//! asked.

use serde_json::{Value, json};
use sluice_test_support::client::{SseClient, WsClient, token_text};
use sluice_test_support::cluster::TestCluster;
use sluice_test_support::harness::Harness;
use sluice_test_support::mcp::TestMcp;
use sluice_test_support::rest::settled_answer;
use sluice_test_support::{expected_text, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A user message that scripts the fake's tool calls, step by step.
fn script(steps: Value) -> String {
    json!({ "steps": steps }).to_string()
}

/// The bearer token the test MCP server wants.
const MCP_TOKEN: &str = "s3cret-token";

/// The environment that names the MCP server `mcp` as `test`, with its token.
fn mcp_env(mcp: &TestMcp) -> [(&'static str, String); 2] {
    [
        ("SLUICE_MCP_SERVERS", format!("test={}", mcp.url())),
        ("SLUICE_MCP_TOKENS", format!("test={MCP_TOKEN}")),
    ]
}

/// Sluice with the MCP server `mcp`, and `extra` environment.
fn with_mcp(mcp: &TestMcp, extra: &[(&str, &str)]) -> Harness {
    let named = mcp_env(mcp);
    let mut env: Vec<(&str, &str)> = named.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra);
    Harness::start_with(BIN, &env)
}

/// Two replicas (Redis, PostgreSQL, nginx) with the MCP server `mcp`, once
/// each lists its tools.
async fn mcp_cluster(mcp: &TestMcp) -> TestCluster {
    let named = mcp_env(mcp);
    let env: Vec<(&str, &str)> = named.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = TestCluster::start(BIN, 2, &env);
    for i in 0..2 {
        mcp_listed(|| c.metrics(i)).await;
    }
    c
}

/// Waits until the replica whose metrics `metrics` reads lists the MCP
/// server's tools.
async fn mcp_listed<F, Fut>(metrics: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    wait_until("the MCP server's tools listed", || async {
        metrics()
            .await
            .contains("sluice_mcp_tools{server=\"test\"} 3")
            .then_some(())
    })
    .await;
}

/// Sends `content` on a new session of `model` over WebSocket and returns
/// the session and every event up to `generation_end`.
async fn run(h: &Harness, model: &str, content: &str) -> (String, Vec<Value>) {
    let (id, mut ws) = h.session_with_ws(model, content).await;
    let events = ws.until("generation_end").await;
    (id, events)
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn tool_messages(session: &Value) -> Vec<Value> {
    session["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_tool_step_is_streamed_stored_and_given_back_to_the_model() {
    let h = Harness::start(BIN);
    let content = script(json!([[{"name": "calculator", "arguments": {"expression": "6*7"}}]]));
    let (id, events) = run(&h, "fake:tools,preamble=1,tokens=3", &content).await;

    // The client sees the step: its text, the call, the result, then the answer.
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "user_message",
            "title",
            "generation_start",
            "token",
            "tool_call",
            "tool_result",
            "token",
            "token",
            "token",
            "generation_end"
        ]
    );
    let call = of_type(&events, "tool_call")[0];
    assert_eq!(call["name"], "calculator");
    assert_eq!(call["call_id"], "call_0_0");
    assert_eq!(call["arguments"], json!({"expression": "6*7"}));
    let result = of_type(&events, "tool_result")[0];
    assert_eq!(result["content"], "42");
    assert!(result.get("is_error").is_none());
    let end = events.last().unwrap();
    assert_eq!(end["finish_reason"], "stop");
    // Usage adds up over both provider requests.
    assert_eq!(end["usage"]["completion_tokens"], 1 + 3);
    assert_eq!(
        token_text(&events),
        format!("(step 0) {}", expected_text(3))
    );

    // Stored: one answer, and the call as a `tool` message with its result.
    let session = h.session(&id).await;
    let answer = settled_answer(&h.http, &h.url(""), &id).await;
    assert_eq!(answer["status"], "complete");
    assert_eq!(answer["content"], format!("(step 0) {}", expected_text(3)));
    let tools = tool_messages(&session);
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["status"], "complete");
    assert_eq!(tools[0]["content"], "42");
    assert_eq!(tools[0]["tool_call"]["name"], "calculator");
    assert_eq!(tools[0]["generation_id"], end["generation_id"]);
    // The time between tokens is measured within a step, never across the
    // tool call: 0 gaps in step 0's one token, 2 in step 1's three.
    let metrics = h.metrics().await;
    let gaps = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_inter_token_seconds_count{path=\"session\"} "))
        .expect("the inter-token histogram");
    assert_eq!(gaps, "2");

    // The model was asked again with the step in OpenAI's shape.
    let requests = h.upstream.requests();
    assert_eq!(requests.len(), 2);
    let offered: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["calculator", "current_time", "search_files"]);
    let second = requests[1]["messages"].as_array().unwrap();
    let n = second.len();
    assert_eq!(second[n - 2]["role"], "assistant");
    assert_eq!(second[n - 2]["content"], "(step 0) ");
    assert_eq!(second[n - 2]["tool_calls"][0]["id"], "call_0_0");
    assert_eq!(
        second[n - 1],
        json!({"role": "tool", "tool_call_id": "call_0_0", "content": "42"})
    );

    // A resume from the start replays the same steps from the log (SSE).
    let mut sse = SseClient::connect(&h.events_url(&id, ""), Some(0)).await;
    let replayed = sse.until("generation_end").await;
    let replayed: Vec<Value> = replayed
        .into_iter()
        .map(|e| e.data)
        .filter(|e| e["seq"].is_u64())
        .collect();
    assert_eq!(replayed, events);

    // A next turn sends the earlier step along with its result.
    let sent = h.send(&id, "thanks", None).await;
    assert_eq!(sent.status(), 202);
    wait_until("the second answer", || async {
        (h.upstream.requests().len() == 3).then_some(())
    })
    .await;
    let third = &h.upstream.requests()[2]["messages"];
    assert!(
        third
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "tool")
    );
}

#[tokio::test]
async fn a_tool_call_fragment_naming_no_call_ends_the_answer_as_usual() {
    let h = Harness::start(BIN);
    let (_, events) = run(&h, "fake:empty_call=1,tokens=4", "hi").await;
    assert!(of_type(&events, "tool_call").is_empty());
    assert_eq!(events.last().unwrap()["finish_reason"], "stop");
    assert_eq!(token_text(&events), expected_text(4));
}

#[tokio::test]
async fn parallel_calls_run_at_once_and_failures_are_the_models_to_read() {
    let mcp = TestMcp::start(Some(MCP_TOKEN));
    let h = with_mcp(&mcp, &[]);
    mcp_listed(|| h.metrics()).await;
    // One step: a slow MCP call first, then quick ones, and three that fail
    // in different ways.
    let content = script(json!([[
        {"name": "test__slow", "arguments": {"key": "p", "seconds": 1.5}},
        {"name": "calculator", "arguments": {"expression": "2^10"}},
        {"name": "test__add", "arguments": {"a": 2, "b": 3}},
        {"name": "test__broken", "arguments": {"reason": "r"}},
        {"name": "calculator", "arguments": {"expression": "1 +"}},
        {"name": "no_such_tool", "arguments": {}},
    ]]));
    let (id, events) = run(&h, "fake:tools,tokens=2", &content).await;
    assert_eq!(events.last().unwrap()["finish_reason"], "stop");
    let results = of_type(&events, "tool_result");
    assert_eq!(results.len(), 6);
    // Run together: the slow call, asked first, answered last.
    assert_eq!(results.last().unwrap()["call_id"], "call_0_0");
    assert_eq!(results.last().unwrap()["content"], "slow p done");
    let by_call = |id: &str| *results.iter().find(|r| r["call_id"] == id).unwrap();
    assert_eq!(by_call("call_0_1")["content"], "1024");
    assert_eq!(by_call("call_0_2")["content"], "5");
    for failed in ["call_0_3", "call_0_4", "call_0_5"] {
        assert_eq!(by_call(failed)["is_error"], true, "{failed}");
    }
    assert!(
        by_call("call_0_4")["content"]
            .as_str()
            .unwrap()
            .contains("could not be evaluated")
    );
    assert!(
        by_call("call_0_5")["content"]
            .as_str()
            .unwrap()
            .contains("no tool named")
    );

    // Each ran once, on the MCP server with the bearer token.
    let mut calls = mcp.calls();
    calls.sort();
    assert_eq!(calls, ["add 2+3", "broken r", "slow p"]);

    let statuses: Vec<Value> = tool_messages(&h.session(&id).await)
        .iter()
        .map(|m| m["status"].clone())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "error").count(),
        3,
        "{statuses:?}"
    );
    // The model got every result, failures included.
    let last = h.upstream.requests().last().unwrap().clone();
    let results = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .count();
    assert_eq!(results, 6);
}

#[tokio::test]
async fn the_step_limit_makes_the_model_answer_in_text() {
    let h = Harness::start_with(BIN, &[("SLUICE_AGENT_MAX_STEPS", "3")]);
    let step = json!([{"name": "calculator", "arguments": {"expression": "1+1"}}]);
    let content = script(json!([step, step, step, step, step]));
    let (id, events) = run(&h, "fake:tools,tokens=2", &content).await;
    // Two steps of calls, then the third request may not call tools.
    assert_eq!(of_type(&events, "tool_call").len(), 2);
    assert_eq!(events.last().unwrap()["finish_reason"], "stop");
    let requests = h.upstream.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[..2].iter().all(|r| r.get("tool_choice").is_none()));
    assert_eq!(requests[2]["tool_choice"], "none");
    assert_eq!(
        settled_answer(&h.http, &h.url(""), &id).await["content"],
        expected_text(2)
    );

    // A provider that calls tools anyway: the calls are not run, and the
    // answer ends `length`.
    let (id, events) = run(&h, "fake:tools,tokens=2,ignore_tool_choice=1", &content).await;
    assert_eq!(of_type(&events, "tool_call").len(), 2);
    assert_eq!(events.last().unwrap()["finish_reason"], "length");
    assert_eq!(tool_messages(&h.session(&id).await).len(), 2);
}

#[tokio::test]
async fn cancel_during_a_tool_stops_it_and_the_loop() {
    let mcp = TestMcp::start(Some(MCP_TOKEN));
    let h = with_mcp(&mcp, &[]);
    mcp_listed(|| h.metrics()).await;
    let content =
        script(json!([[{"name": "test__slow", "arguments": {"key": "c", "seconds": 60}}]]));
    let (id, mut ws) = h.session_with_ws("fake:tools", &content).await;
    ws.until("tool_call").await;
    wait_until("the tool to start", || async {
        (!mcp.calls().is_empty()).then_some(())
    })
    .await;
    ws.send_json(json!({"type": "cancel"})).await;
    let rest = ws.until("generation_end").await;
    let result = rest.iter().find(|e| e["type"] == "tool_result").unwrap();
    assert_eq!(result["is_error"], true);
    assert_eq!(result["content"], "The tool call was cancelled.");
    assert_eq!(rest.last().unwrap()["finish_reason"], "cancelled");
    let tools = tool_messages(&h.session(&id).await);
    assert_eq!(tools[0]["status"], "cancelled");
    // The provider was not asked again.
    assert_eq!(h.upstream.requests().len(), 1);
    ws.close().await;
}

#[tokio::test]
async fn a_session_uses_only_the_tools_it_names() {
    let mcp = TestMcp::start(Some(MCP_TOKEN));
    let h = with_mcp(&mcp, &[("SLUICE_TOOLS", "calculator,test__add")]);
    mcp_listed(|| h.metrics()).await;
    let create = |body: Value| {
        let http = h.http.clone();
        let url = h.url("/v1/sessions");
        async move { http.post(url).json(&body).send().await.unwrap() }
    };
    // Unknown names are refused, naming them.
    let refused = create(json!({"tools": ["calculator", "rm_rf"]})).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("rm_rf"));

    // The server's default set, then a session's own.
    let (_, _) = run(&h, "fake:tokens=1", "hi").await;
    let offered = |r: &Value| -> Vec<String> {
        r["tools"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        offered(&h.upstream.requests()[0]),
        ["calculator", "test__add"]
    );
    let created = create(json!({"model": "fake:tools,tokens=1", "tools": ["current_time"]})).await;
    assert_eq!(created.status(), 201);
    let session: Value = created.json().await.unwrap();
    assert_eq!(session["tools"], json!(["current_time"]));
    let id = session["id"].as_str().unwrap();
    let mut ws = WsClient::connect(&h.ws_url(id, "")).await.unwrap();
    ws.until("snapshot").await;
    // A call of a tool the session does not have is refused to the model.
    let content = script(json!([[{"name": "test__add", "arguments": {"a": 1, "b": 1}}]]));
    ws.send_json(json!({"type": "send", "content": content}))
        .await;
    let events = ws.until("generation_end").await;
    assert_eq!(
        offered(h.upstream.requests().last().unwrap()),
        ["current_time"]
    );
    let result = events.iter().find(|e| e["type"] == "tool_result").unwrap();
    assert_eq!(result["is_error"], true);
    assert!(mcp.calls().is_empty());
    // No tools at all: nothing is offered.
    let created = create(json!({"model": "fake:tokens=1", "tools": []})).await;
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = h.upstream.requests().len();
    h.send(&id, "hi", None).await;
    settled_answer(&h.http, &h.url(""), &id).await;
    assert!(h.upstream.requests()[before].get("tools").is_none());
}

/// `kill -9` of the owner while a tool runs: another replica takes the
/// answer over, tells the model (and clients) the call was interrupted,
/// never runs it again, and the answer completes there.
#[tokio::test]
async fn a_tool_running_when_its_owner_dies_is_never_run_again() {
    let mcp = TestMcp::start(Some(MCP_TOKEN));
    let mut c = mcp_cluster(&mcp).await;
    let id = c.create_session(0, "fake:tools,tokens=3").await;
    let path = format!("/v1/sessions/{id}/ws");
    let mut ws = WsClient::connect(&c.ws_url(0, &path)).await.unwrap();
    ws.until("snapshot").await;
    let owner = c.owner(&id).expect("replica 0 owns it");
    let content = script(json!([
        [{"name": "test__slow", "arguments": {"key": "once", "seconds": 3}}],
        [{"name": "calculator", "arguments": {"expression": "1+2"}}],
    ]));
    ws.send_json(json!({"type": "send", "content": content}))
        .await;
    let before = ws.until("tool_call").await;
    wait_until("the tool to start", || async {
        (!mcp.calls().is_empty()).then_some(())
    })
    .await;
    c.kill(owner);

    // A client resumes on the other replica from its cursor.
    let other = 1 - owner;
    let cursor = before.last().unwrap()["seq"].as_u64().unwrap();
    let url = c.url(other, &format!("/v1/sessions/{id}/events"));
    let mut sse = SseClient::connect(&url, Some(cursor)).await;
    let after: Vec<Value> = sse
        .until("generation_end")
        .await
        .into_iter()
        .map(|e| e.data)
        .filter(|e| e["seq"].is_u64())
        .collect();
    assert_eq!(after[0]["seq"].as_u64().unwrap(), cursor + 1, "{after:#?}");
    let results = of_type(&after, "tool_result");
    assert_eq!(results[0]["call_id"], "call_0_0");
    assert_eq!(results[0]["is_error"], true);
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    // The loop went on there: the next step's call ran, and the answer ended.
    assert_eq!(results[1]["content"], "3");
    assert!(of_type(&after, "generation_start").is_empty());
    let end = after.last().unwrap();
    assert_eq!(end["finish_reason"], "stop");
    assert_eq!(token_text(&after), expected_text(3));

    // The slow tool ran once, whatever the wait.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let slow: Vec<String> = mcp
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("slow"))
        .collect();
    assert_eq!(slow, ["slow once"]);
    let session = c.session(&c.url(other, ""), &id).await;
    let tools = tool_messages(&session);
    assert_eq!(tools.len(), 2);
    assert_eq!(tools[0]["status"], "interrupted");
    assert_eq!(tools[1]["status"], "complete");
    let answer = settled_answer(&c.http, &c.url(other, ""), &id).await;
    assert_eq!(answer["status"], "complete");
    // The model read the interruption as the call's result.
    let asked = c.upstream.requests();
    let told = asked.iter().any(|r| {
        r["messages"].as_array().unwrap().iter().any(|m| {
            m["role"] == "tool" && m["content"].as_str().unwrap_or("").contains("interrupted")
        })
    });
    assert!(told);
}

/// `kill -9` of the owner after every call of a step answered, while it
/// waits for the next step's first token: the next owner goes on with the
/// next step (no second `generation_start`, no call run again) and the
/// answer completes.
#[tokio::test]
async fn an_owner_dying_between_steps_is_taken_over_at_the_next_step() {
    let mcp = TestMcp::start(Some(MCP_TOKEN));
    let mut c = mcp_cluster(&mcp).await;
    // The provider takes 2 s to start each text answer.
    let id = c
        .create_session(0, "fake:tools,preamble=1,tokens=3,first_delay_ms=2000")
        .await;
    let path = format!("/v1/sessions/{id}/ws");
    let mut ws = WsClient::connect(&c.ws_url(0, &path)).await.unwrap();
    ws.until("snapshot").await;
    let owner = c.owner(&id).expect("replica 0 owns it");
    let content = script(json!([[{"name": "test__add", "arguments": {"a": 1, "b": 2}}]]));
    ws.send_json(json!({"type": "send", "content": content}))
        .await;
    let before = ws.until("tool_result").await;
    assert_eq!(before.last().unwrap()["content"], "3");
    c.kill(owner);

    let other = 1 - owner;
    let cursor = before.last().unwrap()["seq"].as_u64().unwrap();
    let url = c.url(other, &format!("/v1/sessions/{id}/events"));
    let mut sse = SseClient::connect(&url, Some(cursor)).await;
    let after: Vec<Value> = sse
        .until("generation_end")
        .await
        .into_iter()
        .map(|e| e.data)
        .filter(|e| e["seq"].is_u64())
        .collect();
    assert_eq!(after[0]["seq"].as_u64().unwrap(), cursor + 1, "{after:#?}");
    assert!(of_type(&after, "generation_start").is_empty(), "{after:#?}");
    assert!(of_type(&after, "tool_call").is_empty());
    assert_eq!(after.last().unwrap()["finish_reason"], "stop");
    assert_eq!(token_text(&after), expected_text(3));
    assert_eq!(mcp.calls(), ["add 1+2"]);
    let answer = settled_answer(&c.http, &c.url(other, ""), &id).await;
    assert_eq!(answer["status"], "complete");
    assert_eq!(answer["content"], format!("(step 0) {}", expected_text(3)));
    let tools = tool_messages(&c.session(&c.url(other, ""), &id).await);
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["status"], "complete");
}
