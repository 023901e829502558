//! The agent's tools: what a model may call during a generation.
//!
//! Each tool is a [`Tool`], one per file: the built-ins [`calculator`],
//! [`current_time`] and [`search_files`], and the tools of the configured
//! MCP servers ([`mcp`]), listed at start and on reconnect. [`Tools`] holds
//! them all; a session names the ones its agent may use (every tool when it
//! names none), and [`Tools::run`] runs one call with a timeout, turning
//! every failure into a result the model reads.

pub mod calculator;
pub mod current_time;
pub mod mcp;
pub mod search_files;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use sluice_protocol::tools::{MAX_TOOL_NAME_BYTES, bounded_result, parse_arguments};

use crate::Files;
use crate::metrics::Metrics;

/// Most tool names a session may list.
pub const MAX_SESSION_TOOLS: usize = 64;

/// What a tool call may draw on: the caller, and the services a built-in
/// needs.
#[derive(Clone)]
pub struct ToolContext {
    /// The session's owner: a tool sees only what this user may see.
    pub user_id: String,
    /// The user's files (for `search_files`).
    pub files: Files,
}

/// One tool the model can call.
pub trait Tool: Send + Sync + 'static {
    /// Its name, as the model calls it (MCP tools: `<server>__<tool>`).
    fn name(&self) -> &str;

    /// What it does, for the model.
    fn description(&self) -> &str;

    /// Its arguments, as a JSON Schema object.
    fn parameters(&self) -> Value;

    /// Runs a call. `Err` is a failure the model is told about in words
    /// (bad arguments, the tool's own error); it is never fatal.
    fn call(
        &self,
        context: ToolContext,
        arguments: Value,
    ) -> BoxFuture<'static, Result<String, String>>;
}

/// What a call gave: the text the model reads, and whether it is a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The result, or what went wrong.
    pub content: String,
    /// The call failed, timed out or was refused.
    pub is_error: bool,
}

impl Outcome {
    /// A failure the model is told about.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            content: message.into(),
            is_error: true,
        }
    }
}

/// What the model is told of a call that was running when its replica
/// stopped: it ran once at most, and nobody knows whether it finished.
pub const INTERRUPTED: &str = "The tool call was interrupted: the server running it stopped. \
     It may or may not have taken effect; it was not run again.";

/// What the model is told of a call stopped by a cancel.
pub const CANCELLED: &str = "The tool call was cancelled.";

/// Every tool of this replica. Cloning shares it.
#[derive(Clone)]
pub struct Tools {
    inner: Arc<Inner>,
}

struct Inner {
    builtins: Vec<Arc<dyn Tool>>,
    /// The MCP servers' tools, replaced whenever a server's list changes.
    mcp: RwLock<Vec<Arc<dyn Tool>>>,
    /// Name prefixes of the configured MCP servers (`<server>__`): a session
    /// may name their tools even while a server is down.
    mcp_prefixes: Vec<String>,
    /// The tools of a session that names none (`None`: every tool).
    default: Option<Vec<String>>,
    /// Longest a call may run.
    timeout: Duration,
    metrics: Metrics,
}

impl Tools {
    /// The built-ins and, once [`mcp::connect`] has listed them, the MCP
    /// servers' tools. `default` is what a session naming no tools gets
    /// (`None`: all of them).
    pub fn new(
        builtins: Vec<Arc<dyn Tool>>,
        mcp_prefixes: Vec<String>,
        default: Option<Vec<String>>,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                builtins,
                mcp: RwLock::new(Vec::new()),
                mcp_prefixes,
                default,
                timeout,
                metrics,
            }),
        }
    }

    /// The three built-ins.
    pub fn builtins() -> Vec<Arc<dyn Tool>> {
        vec![
            Arc::new(calculator::Calculator),
            Arc::new(current_time::CurrentTime),
            Arc::new(search_files::SearchFiles),
        ]
    }

    /// Replaces the tools of the MCP server whose names start with `prefix`.
    pub(crate) fn set_mcp_tools(&self, prefix: &str, tools: Vec<Arc<dyn Tool>>) {
        let mut all = self.inner.mcp.write().expect("tool list lock");
        all.retain(|t| !t.name().starts_with(prefix));
        all.extend(tools);
    }

    /// Every tool there is now.
    pub fn all(&self) -> Vec<Arc<dyn Tool>> {
        let mcp = self.inner.mcp.read().expect("tool list lock");
        self.inner
            .builtins
            .iter()
            .chain(mcp.iter())
            .cloned()
            .collect()
    }

    /// Checks the tool names a session asks for: each must be a built-in,
    /// or a tool of a configured MCP server (which may be down now).
    pub fn check_names(&self, names: &[String]) -> Result<(), String> {
        if names.len() > MAX_SESSION_TOOLS {
            return Err(format!("tools lists more than {MAX_SESSION_TOOLS} names"));
        }
        let all = self.all();
        let unknown: Vec<&str> = names
            .iter()
            .filter(|name| {
                name.len() > MAX_TOOL_NAME_BYTES
                    || !(all.iter().any(|t| t.name() == name.as_str())
                        || self
                            .inner
                            .mcp_prefixes
                            .iter()
                            .any(|p| name.starts_with(p.as_str())))
            })
            .map(|name| truncated(name))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown tools: {}", unknown.join(", ")))
        }
    }

    /// The tools a session may use now: those it names, or the default.
    pub fn for_session(&self, named: Option<&[String]>) -> Vec<Arc<dyn Tool>> {
        let named = named.or(self.inner.default.as_deref());
        let mut tools = self.all();
        if let Some(names) = named {
            tools.retain(|t| names.iter().any(|n| n == t.name()));
        }
        tools
    }

    /// The `tools` field of a chat-completions request offering `tools`.
    pub fn definitions(tools: &[Arc<dyn Tool>]) -> Value {
        tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name(),
                        "description": t.description(),
                        "parameters": t.parameters(),
                    },
                })
            })
            .collect()
    }

    /// Runs one call of the tool `name` with the arguments' JSON text, if
    /// the session may use it, within the timeout. Every failure is an
    /// [`Outcome`] the model reads.
    pub async fn run(
        &self,
        allowed: Option<&[String]>,
        context: ToolContext,
        name: &str,
        arguments: &str,
    ) -> Outcome {
        let metrics = &self.inner.metrics;
        let tool = self
            .for_session(allowed)
            .into_iter()
            .find(|t| t.name() == name);
        let Some(tool) = tool else {
            metrics
                .tool_calls_total
                .with_label_values(&["unknown"])
                .inc();
            return Outcome::error(format!(
                "There is no tool named {:?} here. Use one of the tools offered.",
                truncated(name)
            ));
        };
        let arguments = match parse_arguments(arguments) {
            Ok(value) => value,
            Err(e) => {
                metrics.tool_calls_total.with_label_values(&["error"]).inc();
                return Outcome::error(format!("The arguments are not valid JSON: {e}"));
            }
        };
        let started = std::time::Instant::now();
        let outcome =
            match tokio::time::timeout(self.inner.timeout, tool.call(context, arguments)).await {
                Ok(Ok(content)) => Outcome {
                    content: bounded_result(content),
                    is_error: false,
                },
                Ok(Err(message)) => Outcome::error(bounded_result(message)),
                Err(_) => Outcome::error(format!(
                    "The tool did not answer within {} s.",
                    self.inner.timeout.as_secs_f64()
                )),
            };
        let label = match (&outcome, started.elapsed() >= self.inner.timeout) {
            (o, _) if !o.is_error => "ok",
            (_, true) => "timeout",
            _ => "error",
        };
        metrics.tool_calls_total.with_label_values(&[label]).inc();
        metrics
            .tool_call_seconds
            .observe(started.elapsed().as_secs_f64());
        outcome
    }
}

/// The built-ins, for tests.
#[cfg(test)]
pub(crate) fn for_tests() -> Tools {
    Tools::new(
        Tools::builtins(),
        Vec::new(),
        None,
        Duration::from_secs(5),
        Metrics::unregistered(),
    )
}

/// A name as an error message may quote it: at most 64 bytes.
fn truncated(name: &str) -> &str {
    &name[..sluice_protocol::tools::floor_char_boundary(name, 64)]
}

/// The string argument `key` of a call, or a failure naming it.
pub(crate) fn string_argument<'a>(arguments: &'a Value, key: &str) -> Result<&'a str, String> {
    arguments
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("The argument {key:?} (a string) is required."))
}
