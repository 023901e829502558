//! The Responses API (issue: "An agent that uses tools", item 7):
//! `POST /v1/responses` (whole and streamed), `GET` and `DELETE
//! /v1/responses/{id}` over the provider's chat completions, with
//! `previous_response_id` served by another replica after the first one
//! died, conversations bounded rather than cut, and each response's
//! events consistent with the object it ends with. (The official SDK's
//! `client.responses` is exercised in `tests/sdk`.)

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

/// A streamed response's events, `(type, event)`.
async fn post_streamed(base: &str, body: Value) -> Vec<(String, Value)> {
    let mut body = body;
    body["stream"] = true.into();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/responses"))
        .bearer_auth("local")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let kind = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            let event: Value = serde_json::from_str(data).unwrap();
            assert_eq!(event["type"], kind);
            (kind.to_owned(), event)
        })
        .collect()
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
    assert_eq!(again, first, "GET answers what POST did");
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
    // Fields Sluice does not know are neither kept nor repeated.
    let mut with_junk = tools.clone();
    with_junk[0]["junk"] = "x".repeat(1000).into();
    let (status, called) = post(
        &base,
        "local",
        json!({"model": "fake:tools,tokens=2", "input": script, "tools": with_junk,
               "text": {"format": {"type": "text"}, "junk": "x".repeat(1000)}}),
    )
    .await;
    assert_eq!(status, 200, "{called}");
    assert_eq!(called["tools"], tools);
    assert_eq!(called["text"], json!({"format": {"type": "text"}}));
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
        json!({"model": "fake:tokens=1", "input": "x", "temperature": 9}),
        json!({"model": "fake:tokens=1", "input": "x", "max_output_tokens": -1}),
        json!({"model": "fake:tokens=1", "input": "x", "stream": "yes"}),
        json!({"model": "fake:tokens=1", "input": "x", "background": true}),
        json!({"model": "fake:tokens=1", "input": "x", "metadata": {"k": 1}}),
        json!({"model": "fake:tokens=1", "input": "x", "text": {"format": {"type": "yaml"}}}),
        json!({"model": "fake:tokens=1", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}),
    ] {
        assert_eq!(post(&base, &alice, bad.clone()).await.0, 400, "{bad}");
    }
    for odd in [
        "resp_..%2F..%2Fetc".to_owned(),
        format!("resp_{}", "9".repeat(5000)),
        "resp_%E2%9C%93".to_owned(),
    ] {
        let (status, body) = get(&base, &alice, &odd).await;
        assert_eq!(status, 404, "{odd:.60}");
        assert!(body["error"]["message"].as_str().unwrap().len() < 100);
    }
    let delete = |token: &str, id: &str| {
        reqwest::Client::new()
            .delete(format!("{base}/v1/responses/{id}"))
            .bearer_auth(token.to_owned())
            .send()
    };
    assert_eq!(delete(&bob, id).await.unwrap().status(), 404);
    assert_eq!(get(&base, &alice, id).await.0, 200);
    assert_eq!(delete(&alice, id).await.unwrap().status(), 200);
    assert_eq!(get(&base, &alice, id).await.0, 404);
}

fn of_kind<'a>(events: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, e)| e)
        .collect()
}

#[tokio::test]
async fn streamed_events_agree_with_the_response_they_end_with() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let tools = json!([
        {"type": "function", "name": "calc", "parameters": {"type": "object"}},
        {"type": "function", "name": "clock", "parameters": {"type": "object"}},
    ]);
    let script = json!({"steps": [[
        {"name": "calc", "arguments": {"expression": "6*7"}},
        {"name": "clock", "arguments": {"zone": "UTC"}},
    ]]})
    .to_string();
    let events = post_streamed(
        &base,
        json!({"model": "fake:tools,preamble=1,tokens=2", "input": script, "tools": tools}),
    )
    .await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    for (i, (_, event)) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i);
    }
    let done = events.last().unwrap().1["response"].clone();
    let output = done["output"].as_array().unwrap();
    let types: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["message", "function_call", "function_call"]);
    // Each item opens once and closes once, numbered in the order it
    // opened, with the id and content it ends with.
    let added = of_kind(&events, "response.output_item.added");
    let closed = of_kind(&events, "response.output_item.done");
    assert_eq!(added.len(), 3);
    for (i, item) in output.iter().enumerate() {
        assert_eq!(added[i]["output_index"], i);
        assert_eq!(added[i]["item"]["id"], item["id"]);
        assert_eq!(closed[i]["output_index"], i);
        assert_eq!(&closed[i]["item"], item);
    }
    let said: String = of_kind(&events, "response.output_text.delta")
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(said, text(&done));
    assert_eq!(said, "(step 0) ");
    let arguments = of_kind(&events, "response.function_call_arguments.done");
    assert_eq!(arguments.len(), 2);
    for (done_args, item) in arguments.iter().zip(&output[1..]) {
        assert_eq!(done_args["item_id"], item["id"]);
        assert_eq!(done_args["arguments"], item["arguments"]);
    }
    assert_eq!(output[1]["name"], "calc");
    assert_eq!(output[2]["arguments"], "{\"zone\":\"UTC\"}");
    // What GET answers is what the stream ended with.
    let (status, stored) = get(&base, "local", done["id"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(stored, done);

    // A provider's fragment that names no call makes no call.
    let events = post_streamed(
        &base,
        json!({"model": "fake:empty_call=1,tokens=3", "input": "hi", "tools": tools}),
    )
    .await;
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["output"].as_array().unwrap().len(), 1);
    assert_eq!(text(done), expected_text(3));
    assert!(of_kind(&events, "response.function_call_arguments.done").is_empty());
}

#[tokio::test]
async fn a_cut_answer_is_incomplete_and_a_failed_one_is_not_kept() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let (status, cut) = post(
        &base,
        "local",
        json!({"model": "fake:tokens=3,finish=length", "input": "hi", "max_output_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{cut}");
    assert_eq!(cut["status"], "incomplete");
    assert_eq!(cut["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(cut["max_output_tokens"], 3);
    assert_eq!(h.upstream.requests()[0]["max_tokens"], 3);
    let events = post_streamed(
        &base,
        json!({"model": "fake:tokens=3,finish=length", "input": "hi"}),
    )
    .await;
    let (kind, last) = events.last().unwrap();
    assert_eq!(kind, "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");

    // The provider breaks off: the stream says so, and nothing is stored.
    let events = post_streamed(
        &base,
        json!({"model": "fake:tokens=9,drop_after=2", "input": "hi"}),
    )
    .await;
    let (kind, last) = events.last().unwrap();
    assert_eq!(kind, "response.failed");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "upstream_error");
    // The message it had begun is closed, with what was said, as the
    // failed object shows it.
    let message = &last["response"]["output"][0];
    assert_eq!(message["status"], "incomplete");
    assert_eq!(message["content"][0]["text"], expected_text(2));
    let closed = of_kind(&events, "response.output_item.done");
    assert_eq!(closed.len(), 1);
    assert_eq!(&closed[0]["item"], message);
    let id = last["response"]["id"].as_str().unwrap();
    assert_eq!(get(&base, "local", id).await.0, 404);
    let (status, failed) = post(
        &base,
        "local",
        json!({"model": "fake:tokens=9,drop_after=2", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 502, "{failed}");
    assert_eq!(failed["error"]["code"], "upstream_error");

    // An answer longer than 1 MiB is kept to 1 MiB, and incomplete.
    let (status, long) = post(
        &base,
        "local",
        json!({"model": "fake:tokens=1100,pad=1000", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(long["status"], "incomplete");
    assert_eq!(long["output"][0]["status"], "incomplete");
    assert_eq!(text(&long).len(), 1024 * 1024);
}

#[tokio::test]
async fn a_provider_that_numbers_calls_per_turn_cannot_stall_a_conversation() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let tools = json!([{"type": "function", "name": "calc", "parameters": {"type": "object"}}]);
    let script = json!({"steps": [[{"name": "calc", "arguments": {"x": 1}}]]}).to_string();
    let mut previous: Option<String> = None;
    let mut call_ids = Vec::new();
    // Two user turns, each calling a tool: the fake provider names both
    // calls `call_0_0`.
    for _ in 0..2 {
        let mut body = json!({"model": "fake:tools,tokens=1", "input": script, "tools": tools});
        if let Some(id) = &previous {
            body["previous_response_id"] = id.as_str().into();
        }
        let (status, called) = post(&base, "local", body).await;
        assert_eq!(status, 200, "{called}");
        let call_id = called["output"][0]["call_id"].as_str().unwrap().to_owned();
        let (status, answered) = post(
            &base,
            "local",
            json!({"model": "fake:tools,tokens=1", "tools": tools, "previous_response_id": called["id"],
                   "input": [{"type": "function_call_output", "call_id": call_id, "output": "2"}]}),
        )
        .await;
        assert_eq!(status, 200, "{answered}");
        call_ids.push(call_id);
        previous = Some(answered["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(call_ids[0], call_ids[1]);
    assert!(call_ids.iter().all(|id| id.starts_with("call_")));
}

#[tokio::test]
async fn a_conversation_is_bounded_not_cut_and_forks_stay_apart() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let turn = |previous: Option<&str>, input: String| {
        let mut body = json!({"model": "fake:tokens=1", "input": input});
        if let Some(id) = previous {
            body["previous_response_id"] = id.into();
        }
        body
    };
    // Forks from one response each see their own branch only.
    let (_, root) = post(&base, "local", turn(None, "root".into())).await;
    let root = root["id"].as_str().unwrap().to_owned();
    let (_, left) = post(&base, "local", turn(Some(&root), "left".into())).await;
    let (_, right) = post(&base, "local", turn(Some(&root), "right".into())).await;
    let (status, _) = post(
        &base,
        "local",
        turn(Some(right["id"].as_str().unwrap()), "after right".into()),
    )
    .await;
    assert_eq!(status, 200);
    let said: Vec<Value> = h.upstream.requests().last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(said, ["root", "right", "after right"]);

    // A conversation grows whole until it reaches its bytes' limit; the
    // turn past it is refused before the provider is asked.
    let big = "x".repeat(200 * 1024);
    let mut previous: Option<String> = None;
    let mut turns = 0;
    let refused = loop {
        let asked = h.upstream.requests().len();
        let (status, body) = post(&base, "local", turn(previous.as_deref(), big.clone())).await;
        if status != 200 {
            assert_eq!(
                h.upstream.requests().len(),
                asked,
                "a refused turn asks nobody"
            );
            break (status, body);
        }
        turns += 1;
        let messages = h.upstream.requests().last().unwrap()["messages"].clone();
        assert_eq!(
            messages.as_array().unwrap().len(),
            2 * turns - 1,
            "nothing is left out"
        );
        previous = Some(body["id"].as_str().unwrap().to_owned());
        assert!(turns < 20, "the conversation was never bounded");
    };
    assert_eq!(turns, 10);
    assert_eq!(refused.0, 400, "{}", refused.1);
    let message = refused.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("over its limit"), "{message}");

    // A response deleted from the middle of a chain: what follows it can
    // no longer be continued, and says why.
    let (status, deleted) = reqwest::Client::new()
        .delete(format!(
            "{base}/v1/responses/{}",
            left["id"].as_str().unwrap()
        ))
        .bearer_auth("local")
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(deleted.json::<Value>().await.unwrap()["deleted"], true);
    assert_eq!(
        get(&base, "local", left["id"].as_str().unwrap()).await.0,
        404
    );
    let (status, after_root) = post(&base, "local", turn(Some(&root), "again".into())).await;
    assert_eq!(
        status, 200,
        "deleting a branch leaves its parent: {after_root}"
    );
    let middle = after_root["id"].as_str().unwrap();
    let (_, tail) = post(&base, "local", turn(Some(middle), "tail".into())).await;
    reqwest::Client::new()
        .delete(format!("{base}/v1/responses/{middle}"))
        .bearer_auth("local")
        .send()
        .await
        .unwrap();
    let (status, broken) = post(
        &base,
        "local",
        turn(Some(tail["id"].as_str().unwrap()), "x".into()),
    )
    .await;
    assert_eq!(status, 400, "{broken}");
    assert!(
        broken["error"]["message"]
            .as_str()
            .unwrap()
            .contains("was deleted")
    );
}
