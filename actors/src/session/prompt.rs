//! What the provider is asked for a session's generation: the system
//! prompt, the recent conversation with the agent's tool calls and their
//! results, the tools it may call, and, continuing an answer another
//! replica started, that answer so far in the provider's own way
//! ([`Continuation`]).
//!
//! An answer is one assistant message, whatever the number of steps its
//! generation took; each of its tool messages records the step that made
//! the call and how much of the answer's text came before it. The
//! provider sees each step as OpenAI's schema has it: an `assistant`
//! message with that step's text and `tool_calls`, then one `tool` message
//! per call.

use std::collections::HashMap;

use serde_json::{Value, json};
use sluice_backends::store::{MessageRecord, SessionRecord};
use sluice_protocol::Role;
use sluice_protocol::openai::{ChatRequest, StreamOptions};
use sluice_protocol::tools::{arguments_for_history, name_for_history};

use crate::{Continuation, SessionConfig};

/// Messages of history sent to the model with each generation (tool
/// messages ride with their answer and are not counted).
pub(super) const HISTORY_MESSAGES: usize = 40;

/// Bytes of earlier answers' tool results sent with a request: the newest
/// answers' are sent whole while they fit; older ones' results are left
/// out, saying so (an answer's own results are always sent).
pub(super) const EARLIER_RESULTS_BYTES: usize = 256 * 1024;

/// What the model reads in place of an earlier result left out.
const LEFT_OUT: &str = "[This earlier tool result is left out to keep the conversation short.]";

/// A generation's request, and the files its messages carry, which
/// [`Files::ground`](crate::files::Files::ground) works in before it goes
/// to the provider.
pub struct Prompt {
    /// The request, text only.
    pub request: ChatRequest,
    /// (index in `request.messages`, the file ids attached to that message).
    pub attachments: Vec<(usize, Vec<String>)>,
}

/// The tools a request offers.
pub(super) struct Offer {
    /// The `tools` field (a JSON array; empty: none offered).
    pub definitions: Value,
    /// The generation's last step: the model must answer in text
    /// (`tool_choice: "none"`).
    pub last_step: bool,
}

/// The request for a generation of `session` over `history` (oldest
/// first): its system prompt, the last [`HISTORY_MESSAGES`] messages with
/// text, attachments or tool calls, each answer's steps with their tool
/// results, and the tools `offer`ed. The answer of the generation
/// `running` (if in `history`) is sent up to its last step; with
/// `continuation`, its text after that goes last, as the configured
/// [`Continuation`] asks for it.
pub(super) fn chat_request(
    session: &SessionRecord,
    history: &[&MessageRecord],
    config: &SessionConfig,
    running: Option<&str>,
    continuation: bool,
    offer: &Offer,
) -> Prompt {
    let mut messages = Vec::new();
    let mut attachments = Vec::new();
    if let Some(system) = &session.system_prompt {
        messages.push(ChatRequest::text_message("system", system));
    }
    let mut calls: HashMap<&str, Vec<&MessageRecord>> = HashMap::new();
    for m in history
        .iter()
        .filter(|m| m.role == Role::Tool && m.tool.is_some())
    {
        if let Some(generation) = &m.generation_id {
            calls.entry(generation.as_str()).or_default().push(m);
        }
    }
    for steps in calls.values_mut() {
        steps.sort_by_key(|m| m.tool.as_ref().map(|t| t.step));
    }
    let kept: Vec<&MessageRecord> = history
        .iter()
        .copied()
        .filter(|m| m.role != Role::Tool)
        .filter(|m| {
            !m.content.is_empty()
                || !m.attachments.is_empty()
                || m.generation_id
                    .as_deref()
                    .is_some_and(|g| calls.contains_key(g))
        })
        .collect();
    let start = kept.len().saturating_sub(HISTORY_MESSAGES);
    // Earlier answers' tool results share a budget, newest first; the
    // running answer's are always sent whole.
    let mut budget = EARLIER_RESULTS_BYTES;
    let mut whole: Vec<&str> = Vec::new();
    for m in kept[start..]
        .iter()
        .rev()
        .filter(|m| m.role == Role::Assistant)
    {
        let Some(generation) = m.generation_id.as_deref() else {
            continue;
        };
        let Some(tools) = calls.get(generation) else {
            continue;
        };
        let size: usize = tools.iter().map(|t| t.content.len()).sum();
        if Some(generation) == running || size <= budget {
            budget = budget.saturating_sub(size);
            whole.push(generation);
        }
    }
    let mut so_far = None;
    for m in &kept[start..] {
        let tools = m.generation_id.as_deref().and_then(|g| calls.get(g));
        if m.role == Role::Assistant {
            let is_running = running.is_some() && m.generation_id.as_deref() == running;
            let results_whole = m
                .generation_id
                .as_deref()
                .is_some_and(|g| whole.contains(&g));
            let tail = push_steps(
                &mut messages,
                m,
                tools.map_or(&[][..], Vec::as_slice),
                results_whole,
            );
            if is_running {
                so_far = Some(tail);
            } else if !tail.is_empty() {
                messages.push(ChatRequest::text_message("assistant", tail));
            }
            continue;
        }
        if !m.attachments.is_empty() {
            attachments.push((messages.len(), m.attachments.clone()));
        }
        messages.push(ChatRequest::text_message("user", &m.content));
    }
    let mut extra = serde_json::Map::new();
    if let Some(t) = config.temperature {
        extra.insert("temperature".into(), t.into());
    }
    if offer.definitions.as_array().is_some_and(|d| !d.is_empty()) {
        extra.insert("tools".into(), offer.definitions.clone());
        if offer.last_step {
            extra.insert("tool_choice".into(), "none".into());
        }
    }
    // Nothing generated yet: there is nothing to continue, so ask anew.
    if let Some(so_far) = so_far.filter(|s| continuation && !s.is_empty()) {
        let mut answer = ChatRequest::text_message("assistant", so_far);
        match config.continuation {
            Continuation::Prefill | Continuation::Off => {}
            Continuation::Prefix => {
                answer["prefix"] = true.into();
            }
            Continuation::Vllm => {
                extra.insert("continue_final_message".into(), true.into());
                extra.insert("add_generation_prompt".into(), false.into());
            }
        }
        messages.push(answer);
    }
    let request = ChatRequest {
        model: Some(session.model.clone()),
        messages,
        stream: true,
        // Usage is recorded on the assistant message and in `generation_end`.
        stream_options: Some(StreamOptions {
            include_usage: true,
        }),
        extra,
    };
    Prompt {
        request,
        attachments,
    }
}

/// Pushes the steps of `answer` that called tools (its text before each
/// step's calls, the calls, their results, or a note in their place unless
/// `results_whole`) and returns its text after the last of them.
fn push_steps<'a>(
    messages: &mut Vec<Value>,
    answer: &'a MessageRecord,
    tools: &[&MessageRecord],
    results_whole: bool,
) -> &'a str {
    let text = answer.content.as_str();
    let slice = |from: usize, to: usize| text.get(from..to.min(text.len())).unwrap_or("");
    let mut from = 0;
    let mut i = 0;
    while i < tools.len() {
        let step = tools[i].tool.as_ref().map_or(0, |t| t.step);
        let group: Vec<&MessageRecord> = tools[i..]
            .iter()
            .copied()
            .take_while(|m| m.tool.as_ref().map_or(0, |t| t.step) == step)
            .collect();
        i += group.len();
        let offset = group[0].tool.as_ref().map_or(from, |t| t.offset).max(from);
        let before = slice(from, offset);
        let tool_calls: Vec<Value> = group
            .iter()
            .filter_map(|m| m.tool.as_ref())
            .map(|t| {
                json!({
                    "id": t.call_id,
                    "type": "function",
                    "function": {
                        "name": name_for_history(&t.name),
                        "arguments": arguments_for_history(&t.arguments),
                    },
                })
            })
            .collect();
        messages.push(json!({
            "role": "assistant",
            "content": if before.is_empty() { Value::Null } else { before.into() },
            "tool_calls": tool_calls,
        }));
        for m in &group {
            let call_id = m.tool.as_ref().map_or("", |t| t.call_id.as_str());
            let content = if results_whole {
                m.content.as_str()
            } else {
                LEFT_OUT
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
        }
        from = offset.min(text.len());
    }
    slice(from, text.len())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use sluice_protocol::MessageStatus;

    use super::*;

    fn config(continuation: Continuation) -> SessionConfig {
        SessionConfig {
            replica_id: "r".into(),
            default_model: "m".into(),
            idle_timeout: Duration::from_secs(60),
            subscriber_max_bytes: 1 << 20,
            shutdown_grace: Duration::from_secs(1),
            temperature: Some(0.5),
            continuation,
            agent_max_steps: 4,
        }
    }

    fn session() -> SessionRecord {
        SessionRecord {
            id: "s".into(),
            user_id: "u".into(),
            title: String::new(),
            model: "model-x".into(),
            system_prompt: Some("be brief".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            last_seq: 0,
            fence: 1,
            tools: None,
        }
    }

    fn message(role: Role, content: &str) -> MessageRecord {
        MessageRecord {
            id: content.into(),
            session_id: "s".into(),
            role,
            content: content.into(),
            attachments: vec![],
            status: MessageStatus::Complete,
            created_at: "2026-01-01T00:00:00Z".into(),
            client_msg_id: None,
            generation_id: None,
            usage: None,
            tool: None,
        }
    }

    fn no_tools() -> Offer {
        Offer {
            definitions: json!([]),
            last_step: false,
        }
    }

    fn request(continuation: Continuation, so_far: Option<&str>) -> Value {
        let mut answer = message(Role::Assistant, so_far.unwrap_or(""));
        answer.generation_id = Some("g".into());
        let history = [message(Role::User, "hi"), answer];
        let refs: Vec<&MessageRecord> = history.iter().collect();
        let request = chat_request(
            &session(),
            &refs,
            &config(continuation),
            Some("g"),
            so_far.is_some(),
            &no_tools(),
        )
        .request;
        serde_json::to_value(request).unwrap()
    }

    #[test]
    fn a_generation_asks_with_the_system_prompt_and_the_non_empty_history() {
        let r = request(Continuation::Off, None);
        assert_eq!(
            r["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        );
        assert_eq!(r["model"], "model-x");
        assert_eq!(r["temperature"], 0.5);
        assert_eq!(r["stream_options"], json!({"include_usage": true}));
    }

    /// Each provider's way to continue an answer, and none for an empty one.
    #[test]
    fn a_continuation_asks_in_the_configured_way() {
        let last = |r: &Value| r["messages"].as_array().unwrap().last().unwrap().clone();
        let prefill = request(Continuation::Prefill, Some("<0><1>"));
        assert_eq!(
            last(&prefill),
            json!({"role": "assistant", "content": "<0><1>"})
        );
        let prefix = request(Continuation::Prefix, Some("<0><1>"));
        assert_eq!(
            last(&prefix),
            json!({"role": "assistant", "content": "<0><1>", "prefix": true})
        );
        let vllm = request(Continuation::Vllm, Some("<0><1>"));
        assert_eq!(
            last(&vllm),
            json!({"role": "assistant", "content": "<0><1>"})
        );
        assert_eq!(vllm["continue_final_message"], true);
        assert_eq!(vllm["add_generation_prompt"], false);
        let empty = request(Continuation::Vllm, Some(""));
        assert_eq!(last(&empty)["role"], "user");
        assert!(empty.get("continue_final_message").is_none());
    }

    #[test]
    fn the_history_is_bounded() {
        let history: Vec<_> = (0..100)
            .map(|i| message(Role::User, &i.to_string()))
            .collect();
        let refs: Vec<&MessageRecord> = history.iter().collect();
        let request = chat_request(
            &session(),
            &refs,
            &config(Continuation::Off),
            None,
            false,
            &no_tools(),
        )
        .request;
        assert_eq!(request.messages.len(), HISTORY_MESSAGES + 1);
        assert_eq!(request.messages.last().unwrap()["content"], "99");
    }

    fn call(generation: &str, id: &str, step: u32, offset: usize, result: &str) -> MessageRecord {
        let mut m = message(Role::Tool, result);
        m.id = id.into();
        m.generation_id = Some(generation.into());
        m.tool = Some(sluice_backends::store::ToolRecord {
            call_id: id.into(),
            name: "calculator".into(),
            arguments: "{}".into(),
            step,
            offset,
        });
        m
    }

    /// An answer's steps: its text before each step's calls, the calls and
    /// their results in OpenAI's shape, then its text after them; the
    /// running answer's text after its last step is left out unless it is
    /// continued.
    #[test]
    fn an_answer_is_sent_as_its_steps_with_their_results() {
        let mut answer = message(Role::Assistant, "Let me see. Two tools. Done: 42");
        answer.generation_id = Some("g".into());
        let history = [
            message(Role::User, "q"),
            answer,
            call("g", "c1", 0, 11, "r1"),
            call("g", "c2", 1, 22, "r2"),
            call("g", "c3", 1, 22, "r3"),
        ];
        let refs: Vec<&MessageRecord> = history.iter().collect();
        let offer = Offer {
            definitions: json!([{"type": "function"}]),
            last_step: true,
        };
        let ask = |running, continuation| {
            let r = chat_request(
                &session(),
                &refs,
                &config(Continuation::Prefill),
                running,
                continuation,
                &offer,
            );
            serde_json::to_value(r.request).unwrap()
        };
        let done = ask(None, false);
        let m = done["messages"].as_array().unwrap();
        assert_eq!(m.len(), 8, "{m:#?}");
        assert_eq!(m[2]["content"], "Let me see.");
        assert_eq!(m[2]["tool_calls"][0]["id"], "c1");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "r1"})
        );
        assert_eq!(m[4]["content"], " Two tools.");
        assert_eq!(m[4]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(m[6]["tool_call_id"], "c3");
        assert_eq!(m[7], json!({"role": "assistant", "content": " Done: 42"}));
        assert_eq!(done["tools"], json!([{"type": "function"}]));
        assert_eq!(done["tool_choice"], "none");
        let next_step = ask(Some("g"), false);
        assert_eq!(next_step["messages"].as_array().unwrap().len(), 7);
        assert_eq!(next_step["messages"][6]["role"], "tool");
        let continued = ask(Some("g"), true);
        assert_eq!(continued["messages"][7]["content"], " Done: 42");
    }

    /// Earlier answers' results are sent whole while they fit the budget,
    /// newest first; the running answer's always are.
    #[test]
    fn earlier_tool_results_share_a_budget() {
        let big = "r".repeat(EARLIER_RESULTS_BYTES / 3 + 1);
        let mut history = Vec::new();
        for g in ["g1", "g2", "g3"] {
            // A user message names the generation it started too.
            let mut question = message(Role::User, &format!("q {g}"));
            question.generation_id = Some(g.into());
            history.push(question);
            let mut answer = message(Role::Assistant, &format!("a {g}"));
            answer.generation_id = Some(g.into());
            history.push(answer);
            history.push(call(g, &format!("c_{g}"), 0, 0, &big));
        }
        let refs: Vec<&MessageRecord> = history.iter().collect();
        let results = |running| {
            let r = chat_request(
                &session(),
                &refs,
                &config(Continuation::Off),
                running,
                false,
                &no_tools(),
            );
            r.request
                .messages
                .iter()
                .filter(|m| m["role"] == "tool")
                .map(|m| m["content"].as_str().unwrap() == big)
                .collect::<Vec<bool>>()
        };
        // Two answers' results fit, the oldest's do not.
        assert_eq!(results(None), [false, true, true]);
        assert_eq!(results(Some("g1")), [true, true, true]);
    }
}
