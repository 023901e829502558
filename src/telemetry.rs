//! Logging through `tracing`: pretty for people, JSON for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// The HTTP framework's connection handler logs every request it cannot
/// parse, and every connection a client breaks, as an ERROR ("stream
/// error: ..."): a client could fill the error log at will. Unless the
/// filter names it, it is silenced; such a request is answered `400`
/// (`431`, `408`) all the same.
const CLIENT_NOISE: &str = "actix_http::h1::dispatcher=off";

/// The filter: the configured one, with [`CLIENT_NOISE`] unless it speaks
/// of `actix_http` itself.
fn filter_text(configured: &str) -> String {
    if configured.contains("actix_http") {
        configured.to_owned()
    } else {
        format!("{configured},{CLIENT_NOISE}")
    }
}

/// Installs the global subscriber.
pub fn init(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter_text(&config.log_level))
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
