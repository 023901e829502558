//! Logging through `tracing`: pretty for people, JSON for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Installs the global subscriber.
pub fn init(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("SLUICE_LOG_LEVEL={:?}: {e}", config.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if config.log_json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
