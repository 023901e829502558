//! Default size limits. Each is enforced at the edge that receives the bytes.

/// Largest WebSocket text frame (or reassembled message) a client may send.
pub const MAX_WS_FRAME_BYTES: usize = 64 * 1024;

/// Largest JSON request body on the REST and OpenAI-compatible routes.
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// Largest `content` of a user message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// Largest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 128;

/// Longest file name kept, in bytes.
pub const MAX_FILENAME_BYTES: usize = 255;

/// Longest model name, in bytes.
pub const MAX_MODEL_BYTES: usize = 200;

/// Most messages in one chat-completions request.
pub const MAX_CHAT_MESSAGES: usize = 2048;

/// Largest text of one chat-completions message (its string content, or
/// its text parts together), in bytes.
pub const MAX_CHAT_MESSAGE_BYTES: usize = 512 * 1024;

/// Most tools offered in one chat-completions request.
pub const MAX_CHAT_TOOLS: usize = 128;

/// Most choices (`n`) one chat-completions request may ask for.
pub const MAX_CHAT_CHOICES: u64 = 8;

/// Largest `max_tokens` (or `max_completion_tokens`) a request may ask for.
pub const MAX_CHAT_TOKENS: u64 = 1_000_000;

/// Largest session title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;

/// Largest system prompt, in bytes.
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 32 * 1024;

/// Largest `seq`, and so the largest resume cursor: sequence numbers are
/// stored as PostgreSQL `bigint`s. A cursor above it is refused.
pub const MAX_SEQ: u64 = i64::MAX as u64;
