//! Tool calls: how a model's streamed `tool_calls` fragments become whole
//! calls, and the call as messages and events show it (PROTOCOL.md §4).
//!
//! The provider streams each call of a step in pieces: the first fragment
//! of call `index` carries its `id` and the function's name, later ones
//! append to its `arguments`, a JSON text cut anywhere (even inside a
//! UTF-8 character's escape). [`ToolCallAssembler`] joins them, bounded in
//! calls and bytes, so a provider cannot grow a step without limit.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::openai::ToolCallDelta;

/// Most tool calls the model may make in one step.
pub const MAX_TOOL_CALLS_PER_STEP: usize = 16;

/// Largest arguments text of one call, in bytes.
pub const MAX_TOOL_ARGUMENTS_BYTES: usize = 64 * 1024;

/// Largest tool name, in bytes (OpenAI allows 64 characters).
pub const MAX_TOOL_NAME_BYTES: usize = 128;

/// Most tool calls in one generation, over all its steps.
pub const MAX_TOOL_CALLS_PER_GENERATION: usize = 64;

/// Largest tool result kept and given to the model, in bytes; a longer one
/// is cut (at a character boundary) and says so.
pub const MAX_TOOL_RESULT_BYTES: usize = 32 * 1024;

/// A tool call as stored messages and the REST API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, as the model gave it.
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments: the JSON the model wrote, or the raw text as a string
    /// when it was not valid JSON.
    pub arguments: Value,
}

/// One whole call of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledCall {
    /// The call's id (empty if the provider sent none).
    pub id: String,
    /// The tool's name (empty if the provider sent none).
    pub name: String,
    /// The arguments' JSON text, as the model wrote it.
    pub arguments: String,
}

impl AssembledCall {
    /// The arguments as JSON, or the raw text as a JSON string when they do
    /// not parse (the tool's result then says so).
    pub fn arguments_json(&self) -> Value {
        parse_arguments(&self.arguments).unwrap_or_else(|_| Value::String(self.arguments.clone()))
    }
}

/// The arguments' JSON text as a value; an empty text is `{}` (a call of a
/// tool without parameters).
pub fn parse_arguments(text: &str) -> Result<Value, serde_json::Error> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(text)
}

/// Why a step's tool calls could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    /// A fragment named a call index past [`MAX_TOOL_CALLS_PER_STEP`].
    #[error("the model called more than {MAX_TOOL_CALLS_PER_STEP} tools in one step")]
    TooManyCalls,
    /// A call's arguments grew past [`MAX_TOOL_ARGUMENTS_BYTES`].
    #[error("a tool call's arguments are longer than {MAX_TOOL_ARGUMENTS_BYTES} bytes")]
    ArgumentsTooLong,
    /// A name grew past [`MAX_TOOL_NAME_BYTES`].
    #[error("a tool name is longer than {MAX_TOOL_NAME_BYTES} bytes")]
    NameTooLong,
    /// A call id is longer than [`MAX_TOOL_NAME_BYTES`].
    #[error("a tool call id is longer than {MAX_TOOL_NAME_BYTES} bytes")]
    IdTooLong,
}

/// Joins the streamed fragments of one step's tool calls.
#[derive(Debug, Default, Clone)]
pub struct ToolCallAssembler {
    calls: Vec<AssembledCall>,
}

impl ToolCallAssembler {
    /// Adds the fragments of one chunk.
    pub fn push(&mut self, fragments: &[ToolCallDelta]) -> Result<(), AssembleError> {
        for fragment in fragments {
            if fragment.index >= MAX_TOOL_CALLS_PER_STEP {
                return Err(AssembleError::TooManyCalls);
            }
            while self.calls.len() <= fragment.index {
                self.calls.push(AssembledCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let call = &mut self.calls[fragment.index];
            if let Some(id) = fragment.id.as_deref().filter(|id| !id.is_empty()) {
                if id.len() > MAX_TOOL_NAME_BYTES {
                    return Err(AssembleError::IdTooLong);
                }
                id.clone_into(&mut call.id);
            }
            let Some(function) = &fragment.function else {
                continue;
            };
            if let Some(name) = &function.name {
                // Some providers repeat the whole name on every fragment.
                if call.name != *name {
                    call.name.push_str(name);
                }
                if call.name.len() > MAX_TOOL_NAME_BYTES {
                    return Err(AssembleError::NameTooLong);
                }
            }
            if let Some(arguments) = &function.arguments {
                call.arguments.push_str(arguments);
                if call.arguments.len() > MAX_TOOL_ARGUMENTS_BYTES {
                    return Err(AssembleError::ArgumentsTooLong);
                }
            }
        }
        Ok(())
    }

    /// Whether any fragment arrived.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The whole calls, in index order; indexes the provider skipped (or
    /// named with nothing) are dropped.
    pub fn finish(self) -> Vec<AssembledCall> {
        self.calls
            .into_iter()
            .filter(|c| !(c.id.is_empty() && c.name.is_empty() && c.arguments.is_empty()))
            .collect()
    }
}

/// `text` without NUL characters (which no store keeps), cut to at most
/// [`MAX_TOOL_RESULT_BYTES`] at a character boundary, saying so when it was
/// cut.
pub fn bounded_result(mut text: String) -> String {
    if text.contains('\0') {
        text.retain(|c| c != '\0');
    }
    if text.len() <= MAX_TOOL_RESULT_BYTES {
        return text;
    }
    text.truncate(floor_char_boundary(&text, MAX_TOOL_RESULT_BYTES));
    text.push_str("\n[cut: the tool's result was longer than this]");
    text
}

/// The largest index at most `at` that is a character boundary of `text`.
pub fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// A tool name as it is sent back to the provider in later requests: the
/// model's when OpenAI's rule allows it (1 to 64 letters, digits, `_` or
/// `-`), else `invalid_tool_name` (the call's result told the model there
/// was no such tool), so a provider that checks the history never refuses
/// it.
pub fn name_for_history(name: &str) -> &str {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid { name } else { "invalid_tool_name" }
}

/// The arguments' JSON text as it is sent back to the provider in later
/// requests: what the model wrote when it parses, else `{}` (the call's
/// result told the model what was wrong), so a provider that parses the
/// history never refuses it.
pub fn arguments_for_history(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => text.to_owned(),
        _ => "{}".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::FunctionDelta;

    fn fragment(index: usize, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(Into::into),
            function: Some(FunctionDelta {
                name: name.map(Into::into),
                arguments: Some(args.into()),
            }),
        }
    }

    #[test]
    fn fragments_of_parallel_calls_join_into_whole_calls() {
        let mut a = ToolCallAssembler::default();
        a.push(&[fragment(0, Some("c0"), Some("calculator"), "")])
            .unwrap();
        a.push(&[fragment(0, None, None, "{\"expr")]).unwrap();
        a.push(&[fragment(1, Some("c1"), Some("current_time"), "{}")])
            .unwrap();
        a.push(&[fragment(0, None, None, "ession\": \"1+1\"}")])
            .unwrap();
        let calls = a.finish();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id, "c0");
        assert_eq!(calls[0].name, "calculator");
        assert_eq!(
            calls[0].arguments_json(),
            serde_json::json!({"expression": "1+1"})
        );
        assert_eq!(calls[1].name, "current_time");
    }

    #[test]
    fn a_name_repeated_on_every_fragment_is_kept_once() {
        let mut a = ToolCallAssembler::default();
        a.push(&[fragment(0, Some("c"), Some("calc"), "{")])
            .unwrap();
        a.push(&[fragment(0, None, Some("calc"), "}")]).unwrap();
        assert_eq!(a.finish()[0].name, "calc");
    }

    #[test]
    fn missing_ids_stay_empty_and_bad_json_is_kept_as_text() {
        let mut a = ToolCallAssembler::default();
        a.push(&[fragment(0, None, Some("t"), "{not json")])
            .unwrap();
        let call = &a.finish()[0];
        assert_eq!(call.id, "");
        assert_eq!(call.arguments_json(), Value::String("{not json".into()));
        assert!(parse_arguments("").unwrap().is_object());
        assert_eq!(arguments_for_history("{not json"), "{}");
        assert_eq!(arguments_for_history(""), "{}");
        assert_eq!(arguments_for_history("[1]"), "{}");
        assert_eq!(arguments_for_history("{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(name_for_history("calc_1-x"), "calc_1-x");
        for bad in ["", "multi_tool_use.parallel", "../x y", &"n".repeat(65)] {
            assert_eq!(name_for_history(bad), "invalid_tool_name", "{bad}");
        }
    }

    #[test]
    fn a_step_is_bounded_in_calls_and_bytes() {
        let mut a = ToolCallAssembler::default();
        assert_eq!(
            a.push(&[fragment(MAX_TOOL_CALLS_PER_STEP, Some("c"), Some("t"), "")]),
            Err(AssembleError::TooManyCalls)
        );
        let big = "x".repeat(MAX_TOOL_ARGUMENTS_BYTES / 2 + 1);
        a.push(&[fragment(0, Some("c"), Some("t"), &big)]).unwrap();
        assert_eq!(
            a.push(&[fragment(0, None, None, &big)]),
            Err(AssembleError::ArgumentsTooLong)
        );
        assert_eq!(
            a.push(&[fragment(1, None, Some(&"n".repeat(200)), "")]),
            Err(AssembleError::NameTooLong)
        );
    }

    #[test]
    fn long_results_are_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_TOOL_RESULT_BYTES);
        let cut = bounded_result(text);
        assert!(cut.len() < MAX_TOOL_RESULT_BYTES + 100);
        assert!(cut.ends_with("longer than this]"));
        assert_eq!(bounded_result("short".into()), "short");
        assert_eq!(bounded_result("a\0b".into()), "ab");
    }
}
