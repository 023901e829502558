//! `search_files`: retrieval over the caller's own uploaded documents
//! (whether or not the conversation attached them), through the same
//! embedder and vector index as attachments.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Tool, ToolContext, string_argument};

/// Passages returned when the model asks for no number.
const DEFAULT_K: u64 = 5;

/// Most passages one call returns.
const MAX_K: u64 = 10;

/// The file-search tool.
pub struct SearchFiles;

impl Tool for SearchFiles {
    fn name(&self) -> &str {
        "search_files"
    }

    fn description(&self) -> &str {
        "Searches the user's uploaded documents and returns the passages most relevant \
         to the query, each with its file name. Cite the file name in brackets."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for, in words."},
                "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "description": "How many passages (default 5)."}
            },
            "required": ["query"],
            "additionalProperties": false,
        })
    }

    fn call(
        &self,
        context: ToolContext,
        arguments: Value,
    ) -> BoxFuture<'static, Result<String, String>> {
        let query = string_argument(&arguments, "query").map(str::to_owned);
        let k = match arguments.get("top_k") {
            None | Some(Value::Null) => Ok(DEFAULT_K),
            Some(v) => v
                .as_u64()
                .filter(|k| (1..=MAX_K).contains(k))
                .ok_or_else(|| {
                    format!("The argument \"top_k\" must be an integer from 1 to {MAX_K}.")
                }),
        };
        Box::pin(async move {
            let (query, k) = (query?, k?);
            if query.trim().is_empty() {
                return Err("The query is empty.".into());
            }
            let passages = context
                .files
                .search(&context.user_id, &query, k as usize)
                .await
                .map_err(|e| format!("The search failed: {}", e.client_message()))?;
            if passages.is_empty() {
                return Ok(
                    "No passages found: the user has no indexed documents that match.".into(),
                );
            }
            let results: Vec<Value> = passages
                .into_iter()
                .map(|(filename, hit)| {
                    json!({
                        "file_id": hit.file_id,
                        "filename": filename,
                        "part": hit.ordinal + 1,
                        "score": (f64::from(hit.score) * 1000.0).round() / 1000.0,
                        "text": hit.text,
                    })
                })
                .collect();
            Ok(Value::Array(results).to_string())
        })
    }
}
