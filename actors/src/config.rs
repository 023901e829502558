//! Settings of the session layer. The binary fills them from its table of
//! environment variables, which holds every default once; nothing here has
//! a default of its own.

use std::time::Duration;

/// Settings that shape sessions, generations and subscribers.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This replica's name, shown in `hello.replica`.
    pub replica_id: String,
    /// The model used when a session or request names none.
    pub default_model: String,
    /// A session actor with no subscriber and nothing running stops after this.
    pub idle_timeout: Duration,
    /// Bytes queued for one subscriber before it is disconnected (it resumes
    /// from its cursor).
    pub subscriber_max_bytes: usize,
    /// How long graceful shutdown waits for running generations.
    pub shutdown_grace: Duration,
    /// Temperature sent with session generations (the provider's default if unset).
    pub temperature: Option<f64>,
    /// How a generation taken over from another replica is continued.
    pub continuation: Continuation,
    /// Most provider requests in one generation: after this many, the
    /// model must answer without tools.
    pub agent_max_steps: u32,
}

/// How the provider is asked to continue an answer that another replica
/// started (after a takeover or handover). Providers differ, and a provider
/// asked the wrong way answers anew, which would splice a second answer
/// onto the first; so the operator names the provider's way, and without
/// one a taken-over generation ends `interrupted` with its text kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuation {
    /// Never continue: end the generation `interrupted`.
    Off,
    /// The answer so far as a trailing `assistant` message (Ollama,
    /// llama.cpp's server, Anthropic's OpenAI layer).
    Prefill,
    /// A trailing `assistant` message with `"prefix": true` (Mistral,
    /// DeepSeek).
    Prefix,
    /// A trailing `assistant` message with `continue_final_message: true`
    /// and `add_generation_prompt: false` (vLLM).
    Vllm,
}

impl std::str::FromStr for Continuation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(Self::Off),
            "prefill" => Ok(Self::Prefill),
            "prefix" => Ok(Self::Prefix),
            "vllm" => Ok(Self::Vllm),
            _ => Err("must be one of off, prefill, prefix, vllm".into()),
        }
    }
}
