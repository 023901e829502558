//! The WebSocket connection actor (PROTOCOL.md §5), on actix-web-actors.
//!
//! The subscription is made before the upgrade, so an unknown session is a
//! plain `404` and the first frame is always `hello`. Outgoing frames come
//! from the session's bounded subscriber queue; incoming frames are parsed
//! with the protocol's size limit. A malformed frame gets an `error` frame
//! and the connection stays; an oversized one closes it with 1009.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws::{self, CloseCode, CloseReason as WsCloseReason};
use serde::Deserialize;
use sluice_actors::metrics::GaugeGuard;
use sluice_actors::subscriber::CloseReason;
use sluice_actors::{Outgoing, SessionError, Sessions, Subscription};
use sluice_protocol::limits::MAX_WS_FRAME_BYTES;
use sluice_protocol::{ClientFrame, Control, ErrorCode, parse_client_frame};
use tokio::sync::watch;

use crate::auth::User;
use crate::error::ApiError;
use crate::state::AppState;

/// How often the server pings.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// A connection silent for this long is closed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Query of the WS route.
#[derive(Deserialize)]
pub struct WsQuery {
    after: Option<u64>,
}

/// `GET /v1/sessions/{id}/ws[?after=N]`.
pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
    query: web::Query<WsQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    let session_id = id.into_inner();
    let subscription = state
        .sessions
        .subscribe(&user.0, &session_id, query.after, "ws")
        .await
        .map_err(ApiError::from)?;
    let connection = WsConnection {
        sessions: state.sessions.clone(),
        user_id: user.0,
        session_id,
        last_heard: Instant::now(),
        initial: Some(subscription),
        outgoing: None,
        fragments: None,
        shutdown: state.shutdown.clone(),
        _live: GaugeGuard::new(
            state
                .sessions
                .metrics()
                .live_connections
                .with_label_values(&["ws"]),
        ),
    };
    ws::WsResponseBuilder::new(connection, &req, stream)
        .frame_size(MAX_WS_FRAME_BYTES)
        .start()
}

/// One WebSocket client.
pub struct WsConnection {
    /// To send commands and re-subscribe on `resume`.
    sessions: Sessions,
    /// The authenticated caller.
    user_id: String,
    /// The session this connection follows.
    session_id: String,
    /// Last time the client sent anything; silence past [`CLIENT_TIMEOUT`] closes.
    last_heard: Instant,
    /// The subscription made before the upgrade, attached in `started`.
    initial: Option<Subscription>,
    /// The running subscription stream, replaced on `resume`.
    outgoing: Option<SpawnHandle>,
    /// A fragmented message being reassembled (bounded by the frame limit).
    fragments: Option<String>,
    /// Flips at shutdown: close with 1001 so clients go elsewhere and resume.
    shutdown: watch::Receiver<bool>,
    /// Keeps `sluice_live_connections{transport="ws"}` counting this one.
    _live: GaugeGuard,
}

/// What the subscription stream yields: frames ready to go (written in one
/// go), or why it ended.
type Delivery = Result<Vec<Outgoing>, CloseReason>;

impl WsConnection {
    fn send_error(&self, ctx: &mut ws::WebsocketContext<Self>, code: ErrorCode, message: String) {
        ctx.text(Control::Error { code, message }.to_json());
    }

    fn close(ctx: &mut ws::WebsocketContext<Self>, code: CloseCode, description: &str) {
        ctx.close(Some(WsCloseReason {
            code,
            description: Some(description.to_owned()),
        }));
        ctx.stop();
    }

    fn reject(&self, ctx: &mut ws::WebsocketContext<Self>, code: ErrorCode, message: String) {
        self.sessions
            .metrics()
            .rejected_frames_total
            .with_label_values(&["ws"])
            .inc();
        self.send_error(ctx, code, message);
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let frame = match parse_client_frame(text, MAX_WS_FRAME_BYTES) {
            Ok(frame) => frame,
            Err(e) => return self.reject(ctx, e.code(), e.to_string()),
        };
        let sessions = self.sessions.clone();
        let user = self.user_id.clone();
        let id = self.session_id.clone();
        match frame {
            ClientFrame::Ping => ctx.text(Control::Pong.to_json()),
            // Commands wait in order (a `cancel` right after a `send` must
            // reach the session after it); events keep queueing meanwhile.
            ClientFrame::Send(message) => ctx.wait(
                async move { sessions.send(&user, &id, message).await }
                    .into_actor(self)
                    .map(|result, act, ctx| {
                        if let Err(e) = result {
                            act.send_error(ctx, e.code(), e.to_string());
                        }
                    }),
            ),
            ClientFrame::Cancel => ctx.wait(
                async move { sessions.cancel(&user, &id).await }
                    .into_actor(self)
                    .map(|result, act, ctx| {
                        if let Err(e) = result {
                            act.send_error(ctx, e.code(), e.to_string());
                        }
                    }),
            ),
            ClientFrame::Resume { after } => {
                if let Some(handle) = self.outgoing.take() {
                    ctx.cancel_future(handle);
                }
                ctx.wait(
                    async move { sessions.subscribe(&user, &id, Some(after), "ws").await }
                        .into_actor(self)
                        .map(
                            |result: Result<Subscription, SessionError>, act, ctx| match result {
                                Ok(subscription) => act.attach(subscription, ctx),
                                Err(e) => act.send_error(ctx, e.code(), e.to_string()),
                            },
                        ),
                );
            }
        }
    }

    fn attach(&mut self, subscription: Subscription, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(handle) = self.outgoing.take() {
            ctx.cancel_future(handle);
        }
        let frames = futures::stream::unfold(subscription, |mut sub| async move {
            let next = sub.next_batch().await;
            Some((next, sub))
        });
        self.outgoing = Some(ctx.add_stream(frames));
    }
}

impl Actor for WsConnection {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(subscription) = self.initial.take() {
            self.attach(subscription, ctx);
        }
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_heard.elapsed() > CLIENT_TIMEOUT {
                tracing::debug!(session_id = %act.session_id, "closing a silent WebSocket");
                Self::close(ctx, CloseCode::Normal, "no frames for 60 s");
                return;
            }
            ctx.ping(b"");
        });
        let mut shutdown = self.shutdown.clone();
        ctx.spawn(
            async move {
                // Resolves when shutdown begins (or the sender is gone).
                let _ = shutdown.wait_for(|stopping| *stopping).await;
            }
            .into_actor(self)
            .map(|_, _, ctx| {
                Self::close(
                    ctx,
                    CloseCode::Away,
                    "server shutting down; reconnect and resume",
                )
            }),
        );
    }
}

impl StreamHandler<Delivery> for WsConnection {
    fn handle(&mut self, item: Delivery, ctx: &mut Self::Context) {
        match item {
            Ok(frames) => {
                for frame in frames {
                    match frame {
                        Outgoing::Event(event) => ctx.text(event.json.clone()),
                        Outgoing::Control(control) => ctx.text(control.to_json()),
                    }
                }
            }
            Err(CloseReason::Lagged) => Self::close(
                ctx,
                CloseCode::Again,
                "too slow to keep up; reconnect and resume from your cursor",
            ),
            Err(CloseReason::Ended) => Self::close(ctx, CloseCode::Normal, "session ended"),
            Err(CloseReason::Resume) => Self::close(
                ctx,
                CloseCode::Restart,
                "the stream moved; reconnect and resume from your cursor",
            ),
            Err(CloseReason::Gone) => ctx.stop(),
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The stream never ends on its own (it yields its close reason
        // first); a replaced stream must not stop the connection.
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsConnection {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        let message = match item {
            Ok(message) => message,
            Err(ws::ProtocolError::Overflow) => {
                self.sessions
                    .metrics()
                    .rejected_frames_total
                    .with_label_values(&["ws"])
                    .inc();
                return Self::close(
                    ctx,
                    CloseCode::Size,
                    &format!("frame over {MAX_WS_FRAME_BYTES} bytes"),
                );
            }
            Err(e) => return Self::close(ctx, CloseCode::Protocol, &e.to_string()),
        };
        match message {
            ws::Message::Text(text) => self.on_text(&text, ctx),
            ws::Message::Binary(_) => self.reject(
                ctx,
                ErrorCode::BadRequest,
                "binary frames are not supported; send JSON text frames".into(),
            ),
            ws::Message::Continuation(item) => self.on_continuation(item, ctx),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl WsConnection {
    fn on_continuation(
        &mut self,
        item: actix_http::ws::Item,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let (bytes, last) = match item {
            actix_http::ws::Item::FirstText(bytes) => {
                self.fragments = Some(String::new());
                (bytes, false)
            }
            actix_http::ws::Item::FirstBinary(_) => {
                self.fragments = None;
                return self.reject(
                    ctx,
                    ErrorCode::BadRequest,
                    "binary frames are not supported".into(),
                );
            }
            actix_http::ws::Item::Continue(bytes) => (bytes, false),
            actix_http::ws::Item::Last(bytes) => (bytes, true),
        };
        let Some(buffer) = self.fragments.as_mut() else {
            return;
        };
        if buffer.len() + bytes.len() > MAX_WS_FRAME_BYTES {
            self.fragments = None;
            return Self::close(
                ctx,
                CloseCode::Size,
                &format!("message over {MAX_WS_FRAME_BYTES} bytes"),
            );
        }
        match std::str::from_utf8(&bytes) {
            Ok(text) => buffer.push_str(text),
            Err(_) => {
                self.fragments = None;
                return self.reject(ctx, ErrorCode::BadRequest, "invalid UTF-8".into());
            }
        }
        if last && let Some(text) = self.fragments.take() {
            self.on_text(&text, ctx);
        }
    }
}
