//! Server-Sent Events (PROTOCOL.md §6).

use std::convert::Infallible;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde::Deserialize;
use sluice_actors::Outgoing;
use sluice_actors::metrics::GaugeGuard;
use sluice_actors::subscriber::CloseReason;
use sluice_protocol::{Control, ErrorCode, sse};

use crate::auth::User;
use crate::error::ApiError;
use crate::state::AppState;

/// A `: ping` comment goes out this often, so proxies and browsers keep the
/// connection and a dead one is noticed.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// How long a browser's `EventSource` waits before it reconnects (and
/// resumes with `Last-Event-ID`) once the stream ends; its own default is
/// about 3 s.
pub const RECONNECT_MS: u64 = 1000;

/// Query of the events route.
#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<u64>,
}

/// `GET /v1/sessions/{id}/events[?after=N]`; `Last-Event-ID` counts as `after`.
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let header_cursor = match req.headers().get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(sse::parse_cursor)
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a seq number"))?,
        ),
        None => None,
    };
    // An `EventSource` reconnecting sends where it got to as
    // `Last-Event-ID`, while its URL still holds the cursor it started from.
    let after = header_cursor.or(query.after);
    let slot = state.limits.open_stream(&user.0).await?;
    let mut subscription = state.sessions.subscribe(&user.0, &id, after, "sse").await?;
    let live = GaugeGuard::new(state.metrics.live_connections.with_label_values(&["sse"]));
    let mut shutdown = state.shutdown.clone();
    let stream = async_stream::stream! {
        let _live = live;
        let _slot = slot;
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        yield Ok::<_, Infallible>(Bytes::from(sse::retry(RECONNECT_MS)));
        loop {
            // `Subscription::next_batch` is cancel-safe: it takes frames in one step.
            tokio::select! {
                frames = subscription.next_batch() => match frames {
                    // Whatever is ready goes out as one chunk.
                    Ok(frames) => {
                        let mut chunk = String::new();
                        for frame in frames {
                            chunk.push_str(&match frame {
                                Outgoing::Control(c) => sse::encode(None, c.type_name(), &c.to_json()),
                                Outgoing::Event(e) => sse::encode(Some(e.seq()), e.event.type_name(), &e.json),
                            });
                        }
                        yield Ok(Bytes::from(chunk));
                        // Let the server write this batch now: it fills its
                        // write buffer for as long as a body has more ready,
                        // so a burst would hold every event back until 32 KiB
                        // of them had come.
                        tokio::task::yield_now().await;
                    }
                    // Said before the stream ends, so the client does not
                    // reconnect to a session that is gone.
                    Err(CloseReason::Deleted) => {
                        let deleted = Control::Error {
                            code: ErrorCode::NotFound,
                            message: "the session was deleted".into(),
                        };
                        yield Ok(Bytes::from(sse::encode(None, deleted.type_name(), &deleted.to_json())));
                        break;
                    }
                    // Lagged or ended: the client reconnects with Last-Event-ID.
                    Err(_) => break,
                },
                _ = ping.tick() => yield Ok(Bytes::from_static(sse::PING_COMMENT.as_bytes())),
                _ = shutdown.changed() => break,
            }
        }
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}
