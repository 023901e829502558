//! Frames a WebSocket client sends (PROTOCOL.md §5), and their parsing.

use serde::Deserialize;

use crate::ProtocolError;
use crate::rest::SendMessage;

/// A frame from a WebSocket client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send a user message (same fields as the REST call).
    Send(SendMessage),
    /// Stop the running generation.
    Cancel,
    /// Replay events after `after`, then continue live.
    Resume {
        /// The client's cursor.
        after: u64,
    },
    /// Keep-alive; answered by `pong`.
    Ping,
}

/// Parses one text frame, refusing it when it is over `max_bytes` or not a
/// known frame. The size is checked first, so an oversized frame is never parsed.
pub fn parse_client_frame(text: &str, max_bytes: usize) -> Result<ClientFrame, ProtocolError> {
    if text.len() > max_bytes {
        return Err(ProtocolError::TooLarge {
            what: "frame",
            size: text.len(),
            limit: max_bytes,
        });
    }
    let frame: ClientFrame = serde_json::from_str(text)
        .map_err(|e| ProtocolError::Malformed(format!("invalid frame: {e}")))?;
    if let ClientFrame::Send(send) = &frame {
        send.validate()?;
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<ClientFrame, &str>) {
        let got = parse_client_frame(input, 1024);
        match (got, expected) {
            (Ok(frame), Ok(want)) => assert_eq!(frame, want, "{input}"),
            (Err(e), Err(fragment)) => {
                assert!(e.to_string().contains(fragment), "{input}: {e}")
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn known_frames_parse() {
        check(r#"{"type":"ping"}"#, Ok(ClientFrame::Ping));
        check(r#"{"type":"cancel"}"#, Ok(ClientFrame::Cancel));
        check(
            r#"{"type":"resume","after":12}"#,
            Ok(ClientFrame::Resume { after: 12 }),
        );
        check(
            r#"{"type":"send","content":"hi","client_msg_id":"c1"}"#,
            Ok(ClientFrame::Send(SendMessage {
                content: "hi".into(),
                attachments: vec![],
                client_msg_id: Some("c1".into()),
                images: vec![],
            })),
        );
    }

    #[test]
    fn malformed_frames_are_refused() {
        check("not json", Err("invalid frame"));
        check(r#"{"type":"launch"}"#, Err("unknown variant"));
        check(r#"{"content":"hi"}"#, Err("missing field `type`"));
        check(r#"{"type":"resume","after":-1}"#, Err("invalid frame"));
        check(r#"{"type":"send"}"#, Err("missing field `content`"));
        check(r#"{"type":"send","content":""}"#, Err("must not be empty"));
        check(r#"[1,2]"#, Err("invalid frame"));
    }

    #[test]
    fn oversized_frames_are_refused_before_parsing() {
        let big = format!(r#"{{"type":"send","content":"{}"}}"#, "x".repeat(2000));
        let err = parse_client_frame(&big, 1024).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::PayloadTooLarge);
    }
}
