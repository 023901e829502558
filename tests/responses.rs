//! The Responses API (issue: "An agent that uses tools", item 7):
//! `POST /v1/responses` and `GET /v1/responses/{id}` over the provider's
//! chat completions, with `previous_response_id` served by another replica,
//! after the first one died. (The official SDK's `client.responses` is
//! exercised in `tests/sdk`.)

use serde_json::{Value, json};
use sluice_test_support::cluster::TestCluster;
use sluice_test_support::expected_text;
use sluice_test_support::harness::Harness;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SECRET: &str = "responses-test-secret-0123456789";

async fn post(base: &str, token: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/responses"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn get(base: &str, token: &str, id: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/responses/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().iter())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

#[tokio::test]
async fn a_conversation_continues_on_another_replica_after_the_first_died() {
    let mut c = TestCluster::start(BIN, 2, &[]);
    let (status, first) = post(
        &c.url(0, ""),
        "local",
        json!({"model": "fake:tokens=4", "input": "My name is Ada.", "instructions": "Be brief."}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "response");
    assert_eq!(first["status"], "completed");
    assert_eq!(text(&first), expected_text(4));
    assert_eq!(first["usage"]["output_tokens"], 4);
    let id = first["id"].as_str().unwrap().to_owned();

    // The replica that answered dies; the other one knows the response.
    c.kill(0);
    let (status, again) = get(&c.url(1, ""), "local", &id).await;
    assert_eq!(status, 200);
    assert_eq!(text(&again), expected_text(4));
    let (status, second) = post(
        &c.url(1, ""),
        "local",
        json!({"model": "fake:tokens=2", "input": "What is my name?", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], id.as_str());
    // The provider got the whole conversation (the first turn's
    // instructions are not carried over, as OpenAI's are not).
    let asked = c.upstream.requests().last().unwrap()["messages"].clone();
    assert_eq!(
        asked,
        json!([
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": expected_text(4)},
            {"role": "user", "content": "What is my name?"},
        ])
    );
}

#[tokio::test]
async fn function_calls_go_to_the_client_and_its_outputs_come_back() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let tools = json!([{"type": "function", "name": "calc", "description": "arithmetic",
                        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}]);
    let script =
        json!({"steps": [[{"name": "calc", "arguments": {"expression": "6*7"}}]]}).to_string();
    let (status, called) = post(
        &base,
        "local",
        json!({"model": "fake:tools,tokens=2", "input": script, "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{called}");
    let call = called["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "function_call")
        .unwrap()
        .clone();
    assert_eq!(call["name"], "calc");
    assert_eq!(call["arguments"], "{\"expression\":\"6*7\"}");
    // The provider was offered the tool in chat-completions form.
    assert_eq!(
        h.upstream.requests()[0]["tools"][0]["function"]["name"],
        "calc"
    );
    let (status, answered) = post(
        &base,
        "local",
        json!({"model": "fake:tools,tokens=2", "tools": tools, "previous_response_id": called["id"],
               "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "42"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(text(&answered), expected_text(2));
    let asked = &h.upstream.requests()[1]["messages"];
    assert_eq!(asked[1]["tool_calls"][0]["id"], call["call_id"]);
    assert_eq!(
        asked[2],
        json!({"role": "tool", "tool_call_id": call["call_id"], "content": "42"})
    );
    // An output for a call nobody made is refused.
    let (status, refused) = post(
        &base,
        "local",
        json!({"model": "fake:tokens=1", "input": [{"type": "function_call_output", "call_id": "nope", "output": "1"}]}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
}

#[tokio::test]
async fn responses_are_their_users_own_and_unstored_ones_are_not_kept() {
    let h = Harness::start_with(BIN, &[("SLUICE_JWT_SECRET", SECRET)]);
    let base = h.url("");
    let mint = |sub: &str| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        sluice_web::auth::mint(SECRET, sub, exp).unwrap()
    };
    let (alice, bob) = (mint("alice"), mint("bob"));
    let (_, mine) = post(
        &base,
        &alice,
        json!({"model": "fake:tokens=2", "input": "secret"}),
    )
    .await;
    let id = mine["id"].as_str().unwrap();
    assert_eq!(get(&base, &alice, id).await.0, 200);
    assert_eq!(get(&base, &bob, id).await.0, 404);
    let (status, _) = post(
        &base,
        &bob,
        json!({"model": "fake:tokens=2", "input": "x", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 404);
    let (_, unstored) = post(
        &base,
        &alice,
        json!({"model": "fake:tokens=2", "input": "x", "store": false}),
    )
    .await;
    assert_eq!(unstored["store"], false);
    assert_eq!(
        get(&base, &alice, unstored["id"].as_str().unwrap()).await.0,
        404
    );
    for bad in [
        json!({"model": "fake:tokens=1"}),
        json!({"model": "fake:tokens=1", "input": 5}),
        json!({"model": "fake:tokens=1", "input": []}),
        json!({"model": "fake:tokens=1", "input": "x", "tools": [{"type": "web_search"}]}),
        json!({"model": "fake:tokens=1", "input": [{"role": "wizard", "content": "x"}]}),
        json!({"model": "fake:tokens=1", "input": "x", "previous_response_id": 7}),
    ] {
        assert_eq!(post(&base, &alice, bad.clone()).await.0, 400, "{bad}");
    }
    assert_eq!(get(&base, &alice, "resp_../../etc").await.0, 404);
}
