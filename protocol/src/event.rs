//! The session event stream (PROTOCOL.md §4): events with a `seq`, and
//! control frames without one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Message};

/// One event of a session. `seq` is strictly increasing per session, starts
/// at 1 and is the resume cursor on both transports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Per-session sequence number.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// The wire name of the event's type (the SSE `event:` field).
    pub fn type_name(&self) -> &'static str {
        self.body.type_name()
    }

    /// The JSON object sent on the wire.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string
        // keys and no custom serialisers.
        serde_json::to_string(self).expect("event serialises")
    }
}

/// The kinds of session events, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A user message was persisted.
    UserMessage {
        /// The persisted message.
        message: Message,
    },
    /// A generation started.
    GenerationStart {
        /// The generation's id.
        generation_id: String,
        /// The assistant message it writes.
        message_id: String,
        /// The model asked.
        model: String,
    },
    /// Text from the model; several upstream tokens may be coalesced.
    Token {
        /// The generation it belongs to: one copy shared by all of its
        /// tokens, not one per token.
        generation_id: Arc<str>,
        /// The text.
        delta: String,
    },
    /// The model called a tool.
    ToolCall {
        /// The generation it belongs to.
        generation_id: String,
        /// The call's id.
        call_id: String,
        /// The tool's name.
        name: String,
        /// The arguments, as JSON.
        arguments: serde_json::Value,
    },
    /// A tool answered.
    ToolResult {
        /// The generation it belongs to.
        generation_id: String,
        /// The call's id.
        call_id: String,
        /// The tool's output, or what went wrong (then `is_error`).
        content: String,
        /// The tool failed, timed out or was interrupted; `content` says
        /// how, and the model was told the same.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
    /// A generation ended.
    GenerationEnd {
        /// The generation's id.
        generation_id: String,
        /// The assistant message it wrote.
        message_id: String,
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts, when the provider reported them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// What went wrong, when `finish_reason` is `error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<EventError>,
        /// The user's files whose passages the answer was given (absent
        /// when none were).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sources: Vec<Source>,
        /// The answer was replayed from the response cache (absent when it
        /// was not).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cached: bool,
    },
    /// The session was renamed.
    Title {
        /// The new title.
        title: String,
    },
}

impl EventBody {
    /// The wire name of the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::UserMessage { .. } => "user_message",
            Self::GenerationStart { .. } => "generation_start",
            Self::Token { .. } => "token",
            Self::ToolCall { .. } => "tool_call",
            Self::ToolResult { .. } => "tool_result",
            Self::GenerationEnd { .. } => "generation_end",
            Self::Title { .. } => "title",
        }
    }
}

/// A file an answer drew on, and which of its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The file's id.
    pub file_id: String,
    /// Its name, as the answer cites it.
    pub filename: String,
    /// The chunks used (from 0), best first.
    pub chunks: Vec<u32>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished.
    Stop,
    /// The model hit its token limit.
    Length,
    /// A client cancelled it.
    Cancelled,
    /// The provider failed.
    Error,
    /// The replica running it went away and it could not be continued.
    Interrupted,
}

/// Token counts of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

/// The `error` of a `generation_end` or of an `error` control frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventError {
    /// Same codes as HTTP errors.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// The text so far of a running generation, sent in a `snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The running generation.
    pub generation_id: String,
    /// The assistant message it writes.
    pub message_id: String,
    /// Everything generated up to the snapshot's `last_seq`.
    pub content: String,
}

/// Frames that carry no `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// First frame of a connection.
    Hello {
        /// The session.
        session_id: String,
        /// The replica answering.
        replica: String,
        /// The session's highest `seq` now.
        last_seq: u64,
        /// Whether a generation is running.
        generating: bool,
        /// Identity of the event log; it changes only if the log was lost.
        epoch: String,
    },
    /// State for a client that joins without a cursor.
    Snapshot {
        /// Live events follow from `last_seq + 1`.
        last_seq: u64,
        /// The running generation's text so far.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partial: Option<Partial>,
    },
    /// Events after the client's cursor are no longer retained.
    Gap {
        /// The first seq the client would have needed.
        from_seq: u64,
    },
    /// Something the client sent was refused.
    Error {
        /// Same codes as HTTP errors.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Answer to a client `ping`.
    Pong,
}

impl Control {
    /// The wire name of the type (the SSE `event:` field).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Snapshot { .. } => "snapshot",
            Self::Gap { .. } => "gap",
            Self::Error { .. } => "error",
            Self::Pong => "pong",
        }
    }

    /// The JSON object sent on the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("control frame serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(event: Event, expected: serde_json::Value) {
        let encoded: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(encoded, expected);
        let back: Event = serde_json::from_value(expected).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn events_have_type_and_seq_on_the_top_level() {
        check(
            Event {
                seq: 7,
                body: EventBody::Token {
                    generation_id: "g".into(),
                    delta: "hi".into(),
                },
            },
            json!({"type": "token", "seq": 7, "generation_id": "g", "delta": "hi"}),
        );
        check(
            Event {
                seq: 9,
                body: EventBody::GenerationEnd {
                    generation_id: "g".into(),
                    message_id: "m".into(),
                    finish_reason: FinishReason::Stop,
                    usage: Some(Usage {
                        prompt_tokens: 3,
                        completion_tokens: 4,
                    }),
                    error: None,
                    sources: vec![],
                    cached: false,
                },
            },
            json!({"type": "generation_end", "seq": 9, "generation_id": "g", "message_id": "m",
                   "finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        );
        check(
            Event {
                seq: 10,
                body: EventBody::GenerationEnd {
                    generation_id: "g".into(),
                    message_id: "m".into(),
                    finish_reason: FinishReason::Stop,
                    usage: None,
                    error: None,
                    sources: vec![Source {
                        file_id: "f".into(),
                        filename: "a.pdf".into(),
                        chunks: vec![3, 0],
                    }],
                    cached: true,
                },
            },
            json!({"type": "generation_end", "seq": 10, "generation_id": "g", "message_id": "m",
                   "finish_reason": "stop", "cached": true,
                   "sources": [{"file_id": "f", "filename": "a.pdf", "chunks": [3, 0]}]}),
        );
        check(
            Event {
                seq: 1,
                body: EventBody::Title { title: "t".into() },
            },
            json!({"type": "title", "seq": 1, "title": "t"}),
        );
    }

    #[test]
    fn control_frames_have_no_seq() {
        let hello = Control::Hello {
            session_id: "s".into(),
            replica: "r".into(),
            last_seq: 3,
            generating: false,
            epoch: "e".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&hello.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"type": "hello", "session_id": "s", "replica": "r", "last_seq": 3, "generating": false, "epoch": "e"})
        );
        assert_eq!(Control::Pong.to_json(), r#"{"type":"pong"}"#);
        let snap = Control::Snapshot {
            last_seq: 0,
            partial: None,
        };
        assert_eq!(snap.to_json(), r#"{"type":"snapshot","last_seq":0}"#);
    }
}
