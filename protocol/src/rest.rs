//! Session and message objects, and the REST request bodies (PROTOCOL.md §3).

use serde::{Deserialize, Serialize};

/// A session as the REST API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Opaque id (UUIDv7).
    pub id: String,
    /// Human title; may be empty.
    pub title: String,
    /// The model generations in this session ask for.
    pub model: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The highest `seq` of the session's events so far (0 before any).
    pub last_seq: u64,
    /// The tools its agent may use, when the session names them (every
    /// tool the server has when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
}

/// A session with its messages, as `GET /v1/sessions/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWithMessages {
    /// The session fields.
    #[serde(flatten)]
    pub session: Session,
    /// The system prompt, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Completed and in-progress messages, oldest first.
    pub messages: Vec<Message>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's output.
    Tool,
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Finished normally (user messages are always complete).
    Complete,
    /// Being generated now.
    Streaming,
    /// Stopped by a cancel.
    Cancelled,
    /// Stopped by an error; the content holds what came before it.
    Error,
    /// Stopped because the replica running it went away.
    Interrupted,
}

/// A message as the REST API and the `user_message` event carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Opaque id (UUIDv7).
    pub id: String,
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// File ids attached to it.
    #[serde(default)]
    pub attachments: Vec<String>,
    /// Where it is in its life.
    pub status: MessageStatus,
    /// RFC 3339.
    pub created_at: String,
    /// The generation it belongs to (assistant and tool messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    /// On a tool message: the call it answers (its `content` is the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<crate::tools::ToolCall>,
}

/// Body of `POST /v1/sessions`; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Human title.
    #[serde(default)]
    pub title: Option<String>,
    /// Model to use; the server default when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// System prompt sent first in every generation.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The tools the agent may use, by name; every tool when absent, none
    /// when empty.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
}

/// Body of `POST /v1/sessions/{id}/messages`, and the WS `send` frame's fields.
///
/// `content` is text, or an array of OpenAI content parts as clients of the
/// chat-completions API write them: `text` parts (joined with line breaks
/// into the message's text) and `image_url` parts whose URL is a `data:`
/// URL (kept in [`images`](Self::images), stored as the user's files and
/// attached before the message is saved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSendMessage")]
pub struct SendMessage {
    /// The user's text.
    pub content: String,
    /// File ids to attach.
    #[serde(default)]
    pub attachments: Vec<String>,
    /// Idempotency key: the same id twice makes one message and one generation.
    #[serde(default)]
    pub client_msg_id: Option<String>,
    /// Images sent inline as `data:` URLs, not yet stored. Never on the
    /// wire: read from `image_url` parts, and stored as attachments before
    /// the send goes anywhere.
    #[serde(skip_serializing)]
    pub images: Vec<String>,
}

/// A send as it arrives, before its content parts are read.
#[derive(Deserialize)]
struct RawSendMessage {
    content: RawContent,
    #[serde(default)]
    attachments: Vec<String>,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawContent {
    Text(String),
    Parts(Vec<serde_json::Value>),
}

/// Most content parts in one message.
pub const MAX_CONTENT_PARTS: usize = 64;

impl TryFrom<RawSendMessage> for SendMessage {
    type Error = String;

    fn try_from(raw: RawSendMessage) -> Result<Self, String> {
        let mut images = Vec::new();
        let content = match raw.content {
            RawContent::Text(text) => text,
            RawContent::Parts(parts) => {
                if parts.len() > MAX_CONTENT_PARTS {
                    return Err(format!("content has more than {MAX_CONTENT_PARTS} parts"));
                }
                let mut texts = Vec::new();
                for part in parts {
                    match part["type"].as_str() {
                        Some("text") => texts.push(
                            part["text"]
                                .as_str()
                                .ok_or("a text part needs a string `text`")?
                                .to_owned(),
                        ),
                        Some("image_url") => {
                            let url = part["image_url"]["url"]
                                .as_str()
                                .or_else(|| part["image_url"].as_str())
                                .ok_or("an image_url part needs `image_url.url`")?;
                            if !url.starts_with("data:") {
                                return Err(
                                    "an image_url must be a data: URL here; upload the image \
                                            with POST /v1/files and attach its id"
                                        .into(),
                                );
                            }
                            images.push(url.to_owned());
                        }
                        Some(other) => {
                            return Err(format!(
                                "content parts of type {other:?} are not accepted (text and image_url are)"
                            ));
                        }
                        None => return Err("a content part needs a `type`".into()),
                    }
                }
                texts.join("\n")
            }
        };
        Ok(Self {
            content,
            attachments: raw.attachments,
            client_msg_id: raw.client_msg_id,
            images,
        })
    }
}

impl SendMessage {
    /// Checks the sizes of the fields against the limits.
    pub fn validate(&self) -> Result<(), crate::ProtocolError> {
        use crate::limits::{MAX_CLIENT_MSG_ID_BYTES, MAX_MESSAGE_BYTES};
        if self.content.len() > MAX_MESSAGE_BYTES {
            return Err(crate::ProtocolError::TooLarge {
                what: "content",
                size: self.content.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        if self.content.trim().is_empty() && self.attachments.is_empty() && self.images.is_empty() {
            return Err(crate::ProtocolError::Malformed(
                "content must not be empty".into(),
            ));
        }
        if let Some(id) = &self.client_msg_id
            && (id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_BYTES)
        {
            return Err(crate::ProtocolError::Malformed(format!(
                "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

/// Answer of `POST /v1/sessions/{id}/messages` (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAccepted {
    /// The user message's id.
    pub message_id: String,
    /// The generation started for it.
    pub generation_id: String,
    /// This send was a retry (the same `client_msg_id`) of one already
    /// accepted: nothing new was started. Sent only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// Answer of `GET /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    /// Newest first.
    pub data: Vec<Session>,
    /// Whether older sessions exist (pass the last id as `before`).
    pub has_more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_message_defaults_and_limits() {
        let m: SendMessage = serde_json::from_str(r#"{"content":"hi"}"#).unwrap();
        assert_eq!(m.attachments, Vec::<String>::new());
        assert!(m.validate().is_ok());
        let big = SendMessage {
            content: "x".repeat(crate::limits::MAX_MESSAGE_BYTES + 1),
            attachments: vec![],
            client_msg_id: None,
            images: vec![],
        };
        assert!(matches!(
            big.validate(),
            Err(crate::ProtocolError::TooLarge { .. })
        ));
        let empty: SendMessage = serde_json::from_str(r#"{"content":"  "}"#).unwrap();
        assert!(empty.validate().is_err());
        assert!(serde_json::from_str::<SendMessage>(r#"{"content":3}"#).is_err());
    }

    #[test]
    fn content_may_be_openai_content_parts() {
        let m: SendMessage = serde_json::from_str(
            r#"{"content":[{"type":"text","text":"what is"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},{"type":"text","text":"this?"}]}"#,
        )
        .unwrap();
        assert_eq!(m.content, "what is\nthis?");
        assert_eq!(m.images, ["data:image/png;base64,AAAA"]);
        assert!(m.validate().is_ok());
        let image_only: SendMessage = serde_json::from_str(
            r#"{"content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}"#,
        )
        .unwrap();
        assert!(image_only.validate().is_ok());
        for bad in [
            r#"{"content":[{"type":"image_url","image_url":{"url":"https://example.com/x.png"}}]}"#,
            r#"{"content":[{"type":"audio","data":"x"}]}"#,
            r#"{"content":[{"text":"no type"}]}"#,
            r#"{"content":[{"type":"text","text":3}]}"#,
            r#"{"content":{"type":"text"}}"#,
        ] {
            assert!(serde_json::from_str::<SendMessage>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_session_rejects_unknown_fields() {
        assert!(serde_json::from_str::<CreateSession>(r#"{"titel":"x"}"#).is_err());
        let c: CreateSession = serde_json::from_str("{}").unwrap();
        assert_eq!(c, CreateSession::default());
    }

    #[test]
    fn message_round_trips() {
        let m = Message {
            id: "m1".into(),
            role: Role::Assistant,
            content: "hello".into(),
            attachments: vec![],
            status: MessageStatus::Interrupted,
            created_at: "2026-01-01T00:00:00Z".into(),
            generation_id: None,
            tool_call: None,
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["role"], "assistant");
        assert_eq!(json["status"], "interrupted");
        assert_eq!(serde_json::from_value::<Message>(json).unwrap(), m);
    }
}
