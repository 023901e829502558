//! Tools of Model Context Protocol servers, over streamable HTTP, through
//! the official Rust SDK (`rmcp`).
//!
//! Each configured server has a task ([`supervise`]) that connects, lists
//! the server's tools and offers them as `<server>__<tool>`, then watches
//! the connection: it lists again when the server says its tools changed
//! and every [`RELIST_INTERVAL`], and when the connection fails it
//! withdraws the tools and connects again, backing off. A call goes to the
//! server's live connection; while there is none it fails at once, in
//! words the model reads.

mod http;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use rmcp::model::{CallToolRequestParams, ClientConfig, ContentBlock, PaginatedRequestParams};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;
use sluice_backends::secret::Secret;
use sluice_protocol::tools::floor_char_boundary;
use tokio::sync::Notify;

use super::{Tool, ToolContext, Tools};
use crate::metrics::Metrics;

pub use http::McpHttp;

/// Most tools taken from one server.
pub const MAX_TOOLS_PER_SERVER: usize = 128;

/// Most pages of a server's tool list read.
const MAX_LIST_PAGES: usize = 8;

/// Longest description kept of a server's tool, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 4096;

/// Largest input schema kept of a server's tool, in bytes of JSON (a
/// larger one is offered as "any object").
const MAX_SCHEMA_BYTES: usize = 16 * 1024;

/// How often a server's tools are listed again while connected.
pub const RELIST_INTERVAL: Duration = Duration::from_secs(60);

/// Longest wait before connecting again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One configured MCP server.
#[derive(Clone)]
pub struct McpServer {
    /// Its name, which prefixes its tools' (`<name>__<tool>`).
    pub name: String,
    /// Its streamable-HTTP endpoint.
    pub url: String,
    /// A bearer token, if it wants one.
    pub token: Option<Secret>,
}

impl McpServer {
    /// The prefix of its tools' names.
    pub fn prefix(&self) -> String {
        format!("{}__", self.name)
    }
}

/// A server's live connection, shared by its tools.
#[derive(Default)]
struct Link {
    service: RwLock<Option<Arc<RunningService<RoleClient, Watcher>>>>,
}

/// Our side of the connection: told when the server's tools change.
#[derive(Clone)]
struct Watcher {
    changed: Arc<Notify>,
}

impl ClientHandler for Watcher {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }

    fn on_tool_list_changed(
        &self,
        _: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        self.changed.notify_one();
        std::future::ready(())
    }
}

/// Starts one task per server that keeps its tools in `tools`.
pub fn start(tools: &Tools, servers: Vec<McpServer>, client: reqwest::Client, metrics: Metrics) {
    for server in servers {
        let tools = tools.clone();
        let http = McpHttp::new(client.clone());
        let metrics = metrics.clone();
        actix_rt::spawn(supervise(tools, server, http, metrics));
    }
}

/// Keeps `server`'s tools offered while it is connected.
async fn supervise(tools: Tools, server: McpServer, http: McpHttp, metrics: Metrics) {
    let prefix = server.prefix();
    let gauge = metrics.mcp_tools.with_label_values(&[&server.name]);
    let link = Arc::new(Link::default());
    let mut backoff = Duration::from_millis(500);
    loop {
        let changed = Arc::new(Notify::new());
        match connect(&server, &http, changed.clone()).await {
            Ok(service) => {
                let service = Arc::new(service);
                *link.service.write().expect("link lock") = Some(service.clone());
                tracing::info!(server = %server.name, "connected to the MCP server");
                backoff = Duration::from_millis(500);
                loop {
                    match list(&service, &server, &link).await {
                        Ok(listed) => {
                            gauge.set(listed.len() as i64);
                            tools.set_mcp_tools(&prefix, listed);
                        }
                        Err(e) => {
                            tracing::warn!(server = %server.name, error = %e, "cannot list the MCP server's tools");
                            break;
                        }
                    }
                    tokio::select! {
                        () = changed.notified() => {}
                        () = tokio::time::sleep(RELIST_INTERVAL) => {}
                        () = closed(&service) => break,
                    }
                }
                *link.service.write().expect("link lock") = None;
                service.cancellation_token().cancel();
            }
            Err(e) => {
                tracing::warn!(server = %server.name, error = %e, "cannot connect to the MCP server");
            }
        }
        tools.set_mcp_tools(&prefix, Vec::new());
        gauge.set(0);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves once the connection has closed (rmcp offers no wait that
/// keeps the service, so it is looked at every second).
async fn closed(service: &RunningService<RoleClient, Watcher>) {
    while !service.is_closed() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn connect(
    server: &McpServer,
    http: &McpHttp,
    changed: Arc<Notify>,
) -> Result<RunningService<RoleClient, Watcher>, String> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(server.url.clone());
    if let Some(token) = &server.token {
        config = config.auth_header(token.expose().to_owned());
    }
    let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
    let handshake = Watcher { changed }.serve(transport);
    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(service)) => Ok(service),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the handshake took longer than 10 s".into()),
    }
}

/// The server's tools, as this replica offers them.
async fn list(
    service: &RunningService<RoleClient, Watcher>,
    server: &McpServer,
    link: &Arc<Link>,
) -> Result<Vec<Arc<dyn Tool>>, String> {
    // Page by page, and no further than the tools kept: a server cannot
    // make a listing grow without bound.
    let mut listed = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_LIST_PAGES {
        let params = PaginatedRequestParams::default().with_cursor(cursor.take());
        let page = tokio::time::timeout(
            Duration::from_secs(10),
            service.peer().list_tools(Some(params)),
        )
        .await
        .map_err(|_| "listing took longer than 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
        listed.extend(page.tools);
        cursor = page.next_cursor;
        if cursor.is_none() || listed.len() >= MAX_TOOLS_PER_SERVER {
            break;
        }
    }
    let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
    for tool in listed.into_iter().take(MAX_TOOLS_PER_SERVER) {
        let remote = tool.name.to_string();
        let name = format!("{}{}", server.prefix(), remote);
        // OpenAI's rule for function names.
        let valid = name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            tracing::warn!(server = %server.name, tool = %remote.chars().take(80).collect::<String>(), "skipping an MCP tool whose name cannot be offered");
            continue;
        }
        let description = tool.description.as_deref().unwrap_or_default();
        let description =
            description[..floor_char_boundary(description, MAX_DESCRIPTION_BYTES)].to_owned();
        let schema = Value::Object((*tool.input_schema).clone());
        let schema = if schema.to_string().len() <= MAX_SCHEMA_BYTES {
            schema
        } else {
            serde_json::json!({"type": "object"})
        };
        tools.push(Arc::new(McpTool {
            name,
            remote,
            description,
            schema,
            link: link.clone(),
        }));
    }
    Ok(tools)
}

/// One tool of an MCP server.
struct McpTool {
    name: String,
    /// Its name on the server.
    remote: String,
    description: String,
    schema: Value,
    link: Arc<Link>,
}

impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        self.schema.clone()
    }

    fn call(&self, _: ToolContext, arguments: Value) -> BoxFuture<'static, Result<String, String>> {
        let service = self.link.service.read().expect("link lock").clone();
        let remote = self.remote.clone();
        let remote_name = remote.clone();
        Box::pin(async move {
            let service = service.ok_or("The tool's server is not connected now.")?;
            let arguments = match arguments {
                Value::Object(map) => map,
                _ => return Err("The arguments must be a JSON object.".into()),
            };
            let mut params = CallToolRequestParams::new(remote);
            params.arguments = Some(arguments);
            let result = service.peer().call_tool(params).await.map_err(|e| {
                // The detail (URLs, the transport's types) is the operator's.
                tracing::warn!(tool = %remote_name, error = %e, "an MCP tool call failed");
                "The tool's server failed or could not be reached.".to_owned()
            })?;
            let text = result_text(&result.content, result.structured_content.as_ref());
            if result.is_error == Some(true) {
                Err(text)
            } else {
                Ok(text)
            }
        })
    }
}

/// A call's result as text: its text blocks, its structured content when
/// it has no text, and a note for each block of another kind.
fn result_text(content: &[ContentBlock], structured: Option<&Value>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for block in content {
        match block {
            ContentBlock::Text(text) => parts.push(text.text.clone()),
            ContentBlock::Image(_) => parts.push("[an image, not shown]".into()),
            ContentBlock::Audio(_) => parts.push("[audio, not shown]".into()),
            _ => parts.push("[a resource, not shown]".into()),
        }
    }
    if parts.is_empty()
        && let Some(value) = structured
    {
        parts.push(value.to_string());
    }
    parts.join("\n")
}
