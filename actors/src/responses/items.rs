//! A Responses conversation's items: what a request's `input` may hold,
//! checked and bounded, in the canonical form they are stored in, and
//! the chat-completions messages they become.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_protocol::tools::{
    MAX_TOOL_ARGUMENTS_BYTES, MAX_TOOL_NAME_BYTES, arguments_for_history, name_for_history,
};

use crate::SessionError;

/// Most items in one request's `input`.
pub const MAX_INPUT_ITEMS: usize = 1000;

/// Largest text of one item (a message's text, a function call's output),
/// and of `instructions`, in bytes.
pub const MAX_ITEM_BYTES: usize = 256 * 1024;

/// Most content parts in one message item.
const MAX_PARTS: usize = 64;

/// One item of a conversation, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    /// A message's text.
    Message {
        /// Who said it.
        role: Speaker,
        /// Its text parts, joined.
        text: String,
    },
    /// A function call the model made (or the client replays).
    FunctionCall {
        /// The call's id, which its output names.
        call_id: String,
        /// The function's name.
        name: String,
        /// The arguments' JSON text.
        arguments: String,
    },
    /// The client's result of a function call.
    FunctionCallOutput {
        /// The call it answers.
        call_id: String,
        /// The result's text.
        output: String,
    },
}

/// A message item's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// The user.
    User,
    /// The model.
    Assistant,
    /// The system (or `developer`, which most providers do not know).
    System,
}

fn bad(message: String) -> SessionError {
    SessionError::BadRequest(message)
}

/// A short, printable excerpt of what a client sent, for an error message.
fn excerpt(text: &str) -> &str {
    &text[..sluice_protocol::tools::floor_char_boundary(text, 40)]
}

/// A text field of at most `limit` bytes.
fn bounded_text(value: &Value, field: &str, limit: usize) -> Result<String, SessionError> {
    let text = value
        .as_str()
        .ok_or_else(|| bad(format!("{field} must be a string")))?;
    if text.len() > limit {
        return Err(bad(format!(
            "{field} is {} bytes, over the limit of {limit}",
            text.len()
        )));
    }
    Ok(text.to_owned())
}

/// An id or a name: 1 to [`MAX_TOOL_NAME_BYTES`] bytes.
fn short_text(value: &Value, field: &str) -> Result<String, SessionError> {
    let text = bounded_text(value, field, MAX_TOOL_NAME_BYTES)?;
    if text.is_empty() {
        return Err(bad(format!("{field} must not be empty")));
    }
    Ok(text)
}

/// A content (a string, or a list of text parts) as one text.
fn content_text(content: &Value, field: &str) -> Result<String, SessionError> {
    let text = match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            if parts.len() > MAX_PARTS {
                return Err(bad(format!("{field} has more than {MAX_PARTS} parts")));
            }
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match part["type"].as_str() {
                    Some("input_text" | "output_text" | "text") => {
                        text.push_str(
                            part["text"].as_str().ok_or_else(|| {
                                bad(format!("{field}[{j}].text must be a string"))
                            })?,
                        );
                    }
                    Some(other) => {
                        return Err(bad(format!(
                            "{field}[{j}]: parts of type {:?} are not supported (input_text is)",
                            excerpt(other)
                        )));
                    }
                    None => return Err(bad(format!("{field}[{j}] needs a type"))),
                }
            }
            text
        }
        _ => {
            return Err(bad(format!("{field} must be a string or a list of parts")));
        }
    };
    if text.len() > MAX_ITEM_BYTES {
        return Err(bad(format!(
            "{field} is {} bytes, over the limit of {MAX_ITEM_BYTES}",
            text.len()
        )));
    }
    Ok(text)
}

/// A request's `input` as items.
pub fn parse_input(input: Option<&Value>) -> Result<Vec<Item>, SessionError> {
    let items = match input {
        None | Some(Value::Null) => return Err(bad("input is required".into())),
        Some(text @ Value::String(_)) => {
            return Ok(vec![Item::Message {
                role: Speaker::User,
                text: content_text(text, "input")?,
            }]);
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("input must be a string or a list of items".into())),
    };
    if items.is_empty() || items.len() > MAX_INPUT_ITEMS {
        return Err(bad(format!("input must have 1 to {MAX_INPUT_ITEMS} items")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_item(item, i))
        .collect()
}

fn parse_item(item: &Value, i: usize) -> Result<Item, SessionError> {
    let field = |name: &str| format!("input[{i}].{name}");
    if !item.is_object() {
        return Err(bad(format!("input[{i}] must be an object")));
    }
    match item.get("type").map_or(Some("message"), Value::as_str) {
        Some("message") => {
            let role = match item["role"].as_str() {
                Some("user") => Speaker::User,
                Some("assistant") => Speaker::Assistant,
                Some("system" | "developer") => Speaker::System,
                _ => {
                    return Err(bad(format!(
                        "{} must be user, assistant, system or developer",
                        field("role")
                    )));
                }
            };
            let text = content_text(&item["content"], &field("content"))?;
            Ok(Item::Message { role, text })
        }
        Some("function_call") => Ok(Item::FunctionCall {
            call_id: short_text(&item["call_id"], &field("call_id"))?,
            name: short_text(&item["name"], &field("name"))?,
            arguments: bounded_text(
                &item["arguments"],
                &field("arguments"),
                MAX_TOOL_ARGUMENTS_BYTES,
            )?,
        }),
        Some("function_call_output") => Ok(Item::FunctionCallOutput {
            call_id: short_text(&item["call_id"], &field("call_id"))?,
            output: content_text(&item["output"], &field("output"))?,
        }),
        Some(other) => Err(bad(format!(
            "input[{i}]: items of type {:?} are not supported (message, function_call and \
             function_call_output are)",
            excerpt(other)
        ))),
        None => Err(bad(format!("{} must be a string", field("type")))),
    }
}

/// Checks that the conversation pairs its calls and outputs as a
/// chat-completions provider requires: the model's calls come together
/// (with its text, if any), then one output for each, before anything
/// else; by the end, every call is answered. A call id need only be
/// unique among the calls still open.
pub fn check_pairs(items: &[Item]) -> Result<(), SessionError> {
    let mut open: Vec<&str> = Vec::new();
    // Some of the open calls are answered: only outputs may follow.
    let mut answering = false;
    let unanswered = |id: &str| {
        bad(format!(
            "no function_call_output for function call {:?} before the next item",
            excerpt(id)
        ))
    };
    for item in items {
        match item {
            Item::FunctionCall { call_id, .. } => {
                if answering {
                    return Err(unanswered(open[0]));
                }
                if open.contains(&call_id.as_str()) {
                    return Err(bad(format!(
                        "function call {:?} appears twice",
                        excerpt(call_id)
                    )));
                }
                open.push(call_id);
            }
            Item::FunctionCallOutput { call_id, .. } => {
                let Some(at) = open.iter().position(|id| id == call_id) else {
                    return Err(bad(format!(
                        "function_call_output {:?} answers no open function call",
                        excerpt(call_id)
                    )));
                };
                open.remove(at);
                answering = !open.is_empty();
            }
            Item::Message { role, .. } => {
                if answering || (!open.is_empty() && *role != Speaker::Assistant) {
                    return Err(unanswered(open[0]));
                }
            }
        }
    }
    match open.first() {
        Some(id) => Err(unanswered(id)),
        None => Ok(()),
    }
}

/// The conversation as chat-completions messages: the model's consecutive
/// messages and calls join in one assistant message (its text, then its
/// `tool_calls`), each output is a `tool` message. Names and arguments
/// go as [`name_for_history`] and [`arguments_for_history`] have them, so
/// a provider that checks the history never refuses it.
pub fn chat_messages(instructions: Option<&str>, items: &[Item]) -> Vec<Value> {
    let mut messages = Vec::with_capacity(items.len() + 1);
    if let Some(instructions) = instructions {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    // The model's turn being gathered: its text and its calls.
    let mut turn: Option<(String, Vec<Value>)> = None;
    let flush = |messages: &mut Vec<Value>, turn: &mut Option<(String, Vec<Value>)>| {
        if let Some((text, calls)) = turn.take() {
            let mut message = json!({"role": "assistant", "content": text});
            if !calls.is_empty() {
                if text.is_empty() {
                    message["content"] = Value::Null;
                }
                message["tool_calls"] = calls.into();
            }
            messages.push(message);
        }
    };
    for item in items {
        match item {
            Item::Message {
                role: Speaker::Assistant,
                text,
            } => {
                // Two messages of the model stay two (its calls join the
                // message before them).
                if turn.as_ref().is_some_and(|(said, _)| !said.is_empty()) {
                    flush(&mut messages, &mut turn);
                }
                turn.get_or_insert_default().0.push_str(text);
            }
            Item::FunctionCall {
                call_id,
                name,
                arguments,
            } => turn.get_or_insert_default().1.push(json!({
                "id": call_id,
                "type": "function",
                "function": {"name": name_for_history(name), "arguments": arguments_for_history(arguments)},
            })),
            Item::FunctionCallOutput { call_id, output } => {
                flush(&mut messages, &mut turn);
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            Item::Message { role, text } => {
                flush(&mut messages, &mut turn);
                let role = if *role == Speaker::User {
                    "user"
                } else {
                    "system"
                };
                messages.push(json!({"role": role, "content": text}));
            }
        }
    }
    flush(&mut messages, &mut turn);
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> Item {
        Item::FunctionCall {
            call_id: id.into(),
            name: "lookup".into(),
            arguments: "{\"q\":1}".into(),
        }
    }

    fn output(id: &str) -> Item {
        Item::FunctionCallOutput {
            call_id: id.into(),
            output: format!("result of {id}"),
        }
    }

    fn said(role: Speaker, text: &str) -> Item {
        Item::Message {
            role,
            text: text.into(),
        }
    }

    #[test]
    fn input_is_a_string_or_checked_items() {
        assert_eq!(
            parse_input(Some(&json!("hi"))).unwrap(),
            [said(Speaker::User, "hi")]
        );
        let items = parse_input(Some(&json!([
            {"role": "developer", "content": "be brief"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ])))
        .unwrap();
        assert_eq!(
            items,
            [
                said(Speaker::System, "be brief"),
                said(Speaker::User, "ab"),
                Item::FunctionCall {
                    call_id: "c1".into(),
                    name: "lookup".into(),
                    arguments: "{}".into()
                },
                Item::FunctionCallOutput {
                    call_id: "c1".into(),
                    output: "42".into()
                },
            ]
        );
        for (input, says) in [
            (json!(null), "input is required"),
            (json!([]), "1 to 1000 items"),
            (json!(7), "string or a list"),
            (json!([{"role": "tool", "content": "x"}]), "input[0].role"),
            (
                json!([{"role": "user", "content": [{"type": "input_image"}]}]),
                "input_image",
            ),
            (
                json!([{"type": "item_reference", "id": "x"}]),
                "item_reference",
            ),
            (
                json!([{"type": "function_call", "call_id": "", "name": "f", "arguments": "{}"}]),
                "input[0].call_id must not be empty",
            ),
            (
                json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "x".repeat(MAX_TOOL_ARGUMENTS_BYTES + 1)}]),
                "input[0].arguments is 65537 bytes",
            ),
            (
                json!([{"role": "user", "content": "x".repeat(MAX_ITEM_BYTES + 1)}]),
                "over the limit of 262144",
            ),
            (
                json!(vec![
                    json!({"role": "user", "content": "x"});
                    MAX_INPUT_ITEMS + 1
                ]),
                "1 to 1000 items",
            ),
        ] {
            let e = parse_input(Some(&input)).unwrap_err().to_string();
            assert!(e.contains(says), "{e} should say {says}");
        }
    }

    #[test]
    fn calls_and_outputs_must_pair() {
        assert!(check_pairs(&[call("a"), call("b"), output("b"), output("a")]).is_ok());
        // The model's text between a call and its output is fine.
        assert!(check_pairs(&[call("a"), said(Speaker::Assistant, "so"), output("a")]).is_ok());
        // An id answered may come back in a later turn (providers that
        // number calls per turn).
        assert!(
            check_pairs(&[
                call("a"),
                output("a"),
                said(Speaker::User, "again"),
                call("a"),
                output("a")
            ])
            .is_ok()
        );
        for items in [
            vec![call("a")],
            vec![call("a"), said(Speaker::User, "next")],
            vec![output("a")],
            vec![call("a"), output("a"), output("a")],
            vec![call("a"), call("a"), output("a")],
            // Interleaved: the chat form would have a call without its
            // output right after it.
            vec![
                call("a"),
                call("b"),
                output("a"),
                call("c"),
                output("b"),
                output("c"),
            ],
            vec![
                call("a"),
                call("b"),
                output("a"),
                said(Speaker::Assistant, "x"),
                output("b"),
            ],
        ] {
            assert!(check_pairs(&items).is_err(), "{items:?}");
        }
    }

    #[test]
    fn the_models_text_and_calls_join_in_one_assistant_message() {
        let messages = chat_messages(
            Some("be brief"),
            &[
                said(Speaker::User, "weather?"),
                said(Speaker::Assistant, "Looking."),
                call("a"),
                Item::FunctionCall {
                    call_id: "b".into(),
                    name: "no such name!".into(),
                    arguments: "not json".into(),
                },
                output("a"),
                output("b"),
                said(Speaker::Assistant, "Sunny."),
                said(Speaker::Assistant, "Warm, too."),
                said(Speaker::System, "be briefer"),
            ],
        );
        assert_eq!(
            messages,
            [
                json!({"role": "system", "content": "be brief"}),
                json!({"role": "user", "content": "weather?"}),
                json!({"role": "assistant", "content": "Looking.", "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}},
                    {"id": "b", "type": "function", "function": {"name": "invalid_tool_name", "arguments": "{}"}},
                ]}),
                json!({"role": "tool", "tool_call_id": "a", "content": "result of a"}),
                json!({"role": "tool", "tool_call_id": "b", "content": "result of b"}),
                json!({"role": "assistant", "content": "Sunny."}),
                json!({"role": "assistant", "content": "Warm, too."}),
                json!({"role": "system", "content": "be briefer"}),
            ]
        );
        // Calls alone have no text.
        assert_eq!(chat_messages(None, &[call("a")])[0]["content"], Value::Null);
    }
}
