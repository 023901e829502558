//! What the provider is asked for a session's generation: the system
//! prompt, the recent conversation, and, continuing an answer another
//! replica started, that answer so far in the provider's own way
//! ([`Continuation`]).

use sluice_backends::store::{MessageRecord, SessionRecord};
use sluice_protocol::Role;
use sluice_protocol::openai::{ChatRequest, StreamOptions};

use crate::{Continuation, SessionConfig};

/// Messages of history sent to the model with each generation.
pub(super) const HISTORY_MESSAGES: usize = 40;

/// A generation's request, and the files its messages carry, which
/// [`Files::ground`](crate::files::Files::ground) works in before it goes
/// to the provider.
pub struct Prompt {
    /// The request, text only.
    pub request: ChatRequest,
    /// (index in `request.messages`, the file ids attached to that message).
    pub attachments: Vec<(usize, Vec<String>)>,
}

/// The request for a generation of `session`: its system prompt, the last
/// [`HISTORY_MESSAGES`] messages of `history` with text or attachments, and
/// with `so_far` (a continuation) the answer so far as the configured
/// [`Continuation`] asks for it.
pub(super) fn chat_request<'a>(
    session: &SessionRecord,
    history: impl Iterator<Item = &'a MessageRecord>,
    config: &SessionConfig,
    so_far: Option<&str>,
) -> Prompt {
    let mut messages = Vec::new();
    let mut attachments = Vec::new();
    if let Some(system) = &session.system_prompt {
        messages.push(ChatRequest::text_message("system", system));
    }
    let history: Vec<_> = history
        .filter(|m| !m.content.is_empty() || !m.attachments.is_empty())
        .collect();
    let start = history.len().saturating_sub(HISTORY_MESSAGES);
    for m in &history[start..] {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        if !m.attachments.is_empty() {
            attachments.push((messages.len(), m.attachments.clone()));
        }
        messages.push(ChatRequest::text_message(role, &m.content));
    }
    let mut extra = serde_json::Map::new();
    if let Some(t) = config.temperature {
        extra.insert("temperature".into(), t.into());
    }
    // Nothing generated yet: there is nothing to continue, so ask anew.
    if let Some(so_far) = so_far.filter(|s| !s.is_empty()) {
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
        }
    }

    fn request(continuation: Continuation, so_far: Option<&str>) -> Value {
        let history = [message(Role::User, "hi"), message(Role::Assistant, "")];
        let request =
            chat_request(&session(), history.iter(), &config(continuation), so_far).request;
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
        let request =
            chat_request(&session(), history.iter(), &config(Continuation::Off), None).request;
        assert_eq!(request.messages.len(), HISTORY_MESSAGES + 1);
        assert_eq!(request.messages.last().unwrap()["content"], "99");
    }
}
