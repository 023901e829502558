//! Logging through `tracing`: pretty for people, JSON for log pipelines.
//!
//! A JSON line carries the event's own fields, the request's span
//! (`request_id`, `method`, `route`, and `session_id` and `user` once
//! known), and `replica`, the replica's id, once it is known (after the
//! listener is bound): one line per event, ready for Loki or ELK. (So no
//! event has a field of its own named `replica`.)

use std::sync::OnceLock;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::registry::LookupSpan;

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
    if let Some(id) = &config.replica_id {
        set_replica(id);
    }
    let result = if config.log_json {
        let format = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        builder
            .fmt_fields(JsonFields::new())
            .event_format(WithReplica(format))
            .try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// This replica's id, for every JSON line from when it is known.
static REPLICA: OnceLock<String> = OnceLock::new();

/// Names this replica in every later log line.
pub fn set_replica(id: &str) {
    let _ = REPLICA.set(serde_json::to_string(id).unwrap_or_default());
}

/// The JSON format with `"replica"` first.
struct WithReplica(Format<Json>);

impl<S> FormatEvent<S, JsonFields> for WithReplica
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(replica) = REPLICA.get() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"replica\":{replica},{rest}"),
            None => writer.write_str(&line),
        }
    }
}
