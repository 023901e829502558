//! The WebSocket connection actor (PROTOCOL.md §5), on actix-web-actors.
//!
//! The subscription is made before the upgrade, so an unknown session is a
//! plain `404` and the first frame is always `hello`. Outgoing frames come
//! from the session's bounded subscriber queue; incoming frames are parsed
//! with the protocol's size limit. A malformed frame gets an `error` frame
//! and the connection stays; an oversized one closes it with 1009.
//!
//! Commands (`send`, `cancel`, `resume`) run one after another, in the
//! order they came, on a queue of the connection's own: a `cancel` right
//! after a `send` reaches the session after it. The actor itself never
//! waits for them, so while a command takes its time (its session's owner
//! died, say), the connection keeps writing events, answering pings and
//! reading frames.

mod gate;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws::{self, CloseCode, CloseReason as WsCloseReason};
use serde::Deserialize;
use sluice_actors::limits::SlotGuard;
use sluice_actors::metrics::GaugeGuard;
use sluice_actors::subscriber::CloseReason;
use sluice_actors::{Limits, Outgoing, SessionError, Sessions, Subscription};
use sluice_protocol::limits::{MAX_SEQ, MAX_WS_FRAME_BYTES};
use sluice_protocol::rest::SendMessage;
use sluice_protocol::{ClientFrame, Control, ErrorCode, parse_client_frame};
use tokio::sync::{mpsc, watch};

use crate::auth::User;
use crate::error::ApiError;
use crate::state::AppState;

/// How often the server pings.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// A connection silent for this long is closed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Commands a connection may have waiting; more are refused until some end.
const MAX_PENDING_COMMANDS: usize = 16;

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
    // A request that is no WebSocket handshake is told so in the envelope.
    ws::handshake(&req)
        .map_err(|e| ApiError::bad_request(format!("not a WebSocket handshake: {e}")))?;
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
    };
    if !state
        .browser
        .allows_websocket(header("origin"), header("host"))
    {
        return Err(ApiError::new(
            sluice_protocol::ErrorCode::Forbidden,
            "a WebSocket from another site's page: its origin is not in SLUICE_CORS_ORIGINS",
        )
        .into());
    }
    let session_id = id.into_inner();
    let stream_slot = state
        .limits
        .open_stream(&user.0)
        .await
        .map_err(ApiError::from)?;
    let subscription = state
        .sessions
        .subscribe(&user.0, &session_id, query.after, "ws")
        .await
        .map_err(ApiError::from)?;
    let (commands, pending) = mpsc::channel(MAX_PENDING_COMMANDS);
    let oversized = Rc::new(Cell::new(false));
    let stream = gate::FrameGate::new(stream, MAX_WS_FRAME_BYTES, oversized.clone());
    let connection = WsConnection {
        sessions: state.sessions.clone(),
        user_id: user.0,
        session_id,
        last_heard: Instant::now(),
        initial: Some(subscription),
        outgoing: None,
        resumes: 0,
        commands,
        pending: Some(pending),
        limits: state.limits.clone(),
        _stream_slot: stream_slot,
        fragments: None,
        oversized,
        shutdown: state.shutdown.clone(),
        _live: GaugeGuard::new(state.metrics.live_connections.with_label_values(&["ws"])),
    };
    ws::WsResponseBuilder::new(connection, &req, stream)
        .frame_size(MAX_WS_FRAME_BYTES)
        .start()
}

/// One WebSocket client.
pub struct WsConnection {
    /// To run commands and re-subscribe on `resume`.
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
    /// `resume` frames so far: only the latest one's subscription attaches.
    resumes: u64,
    /// The connection's command queue, run in order by its own task.
    commands: mpsc::Sender<Command>,
    /// The queue's other end until `started` hands it to the task.
    pending: Option<mpsc::Receiver<Command>>,
    /// Each command counts as a request of the user.
    limits: Limits,
    /// The user's stream slot this connection holds.
    _stream_slot: Option<SlotGuard>,
    /// A fragmented text message being reassembled, as bytes: a character
    /// may be split across fragments. Bounded by the frame limit.
    fragments: Option<Vec<u8>>,
    /// Set by the frame gate when it refused a frame over the limit.
    oversized: Rc<Cell<bool>>,
    /// Flips at shutdown: close with 1001 so clients go elsewhere and resume.
    shutdown: watch::Receiver<bool>,
    /// Keeps `sluice_live_connections{transport="ws"}` counting this one.
    _live: GaugeGuard,
}

/// A command from the client, for the connection's queue.
enum Command {
    Send(SendMessage),
    Cancel,
    /// The connection's `number`th `resume`.
    Resume {
        after: u64,
        number: u64,
    },
}

/// How a command ended, told back to the connection.
#[derive(Message)]
#[rtype(result = "()")]
enum CommandDone {
    /// It succeeded and has nothing to say (its events are the answer).
    Quiet,
    /// It failed: the client gets an `error` frame.
    Failed(SessionError),
    /// The `number`th `resume` joined again: its subscription replaces the
    /// old one, if no later `resume` came meanwhile.
    Resumed {
        number: u64,
        subscription: Subscription,
    },
    /// The `number`th `resume` failed.
    ResumeFailed { number: u64, error: SessionError },
}

/// Runs the connection's commands in order until the connection is gone.
async fn run_commands(
    mut pending: mpsc::Receiver<Command>,
    sessions: Sessions,
    limits: Limits,
    user_id: String,
    session_id: String,
    connection: Addr<WsConnection>,
) {
    let (user, id) = (user_id.as_str(), session_id.as_str());
    while let Some(command) = pending.recv().await {
        if let Err(e) = limits.request(user).await {
            // Refused like any command: an `error` frame, the connection stays.
            let done = match command {
                Command::Resume { number, .. } => CommandDone::ResumeFailed { number, error: e },
                _ => CommandDone::Failed(e),
            };
            connection.do_send(done);
            continue;
        }
        let done = match command {
            Command::Send(message) => match sessions.send(user, id, message).await {
                Ok(_) => CommandDone::Quiet,
                Err(e) => CommandDone::Failed(e),
            },
            Command::Cancel => match sessions.cancel(user, id).await {
                Ok(()) => CommandDone::Quiet,
                Err(e) => CommandDone::Failed(e),
            },
            Command::Resume { after, number } => {
                match sessions.subscribe(user, id, Some(after), "ws").await {
                    Ok(subscription) => CommandDone::Resumed {
                        number,
                        subscription,
                    },
                    Err(error) => CommandDone::ResumeFailed { number, error },
                }
            }
        };
        connection.do_send(done);
    }
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
        let command = match frame {
            ClientFrame::Ping => return ctx.text(Control::Pong.to_json()),
            ClientFrame::Send(message) => Command::Send(message),
            ClientFrame::Cancel => Command::Cancel,
            ClientFrame::Resume { after } if after > MAX_SEQ => {
                // The client's mistake: its stream goes on as it was.
                return self.reject(
                    ctx,
                    ErrorCode::BadRequest,
                    format!("a cursor is a seq from 0 to {MAX_SEQ}"),
                );
            }
            ClientFrame::Resume { after } => Command::Resume {
                after,
                number: self.resumes + 1,
            },
        };
        let resume = matches!(command, Command::Resume { .. });
        if self.commands.try_send(command).is_err() {
            return self.reject(
                ctx,
                ErrorCode::RateLimited,
                format!("{MAX_PENDING_COMMANDS} commands are already waiting on this connection; wait for them"),
            );
        }
        if resume {
            // Nothing of the old subscription goes out after this frame.
            self.resumes += 1;
            if let Some(handle) = self.outgoing.take() {
                ctx.cancel_future(handle);
            }
        }
    }

    fn attach(&mut self, subscription: Subscription, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(handle) = self.outgoing.take() {
            ctx.cancel_future(handle);
        }
        // Before each batch after the first, two turns: the first ends the
        // context's poll with the last batch's frames, the second a poll
        // with none, which is when the server writes what it has. Without
        // them, a burst of events would fill the write buffer (32 KiB)
        // before a single one went out.
        let frames = futures::stream::unfold((subscription, true), |(mut sub, first)| async move {
            if !first {
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
            }
            let next = sub.next_batch().await;
            Some((next, (sub, false)))
        });
        self.outgoing = Some(ctx.add_stream(frames));
    }

    fn on_continuation(
        &mut self,
        item: actix_http::ws::Item,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let (bytes, last) = match item {
            actix_http::ws::Item::FirstText(bytes) => {
                self.fragments = Some(Vec::new());
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
        buffer.extend_from_slice(&bytes);
        if !last {
            return;
        }
        // UTF-8 is checked on the whole message, once it is whole.
        let Some(message) = self.fragments.take() else {
            return;
        };
        match String::from_utf8(message) {
            Ok(text) => self.on_text(&text, ctx),
            Err(_) => self.reject(ctx, ErrorCode::BadRequest, "invalid UTF-8".into()),
        }
    }
}

impl Actor for WsConnection {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(subscription) = self.initial.take() {
            self.attach(subscription, ctx);
        }
        if let Some(pending) = self.pending.take() {
            actix_rt::spawn(run_commands(
                pending,
                self.sessions.clone(),
                self.limits.clone(),
                self.user_id.clone(),
                self.session_id.clone(),
                ctx.address(),
            ));
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

impl Handler<CommandDone> for WsConnection {
    type Result = ();

    fn handle(&mut self, done: CommandDone, ctx: &mut Self::Context) {
        match done {
            CommandDone::Quiet => {}
            CommandDone::Failed(e) => self.send_error(ctx, e.code(), e.client_message()),
            // A later `resume` replaces this one; its subscription drops.
            CommandDone::Resumed { number, .. } | CommandDone::ResumeFailed { number, .. }
                if number != self.resumes => {}
            CommandDone::Resumed { subscription, .. } => self.attach(subscription, ctx),
            CommandDone::ResumeFailed { error, .. } => {
                // The old subscription is gone: without a new one the
                // connection would stay open and silent.
                self.send_error(ctx, error.code(), error.client_message());
                Self::close(
                    ctx,
                    CloseCode::Again,
                    "resume failed; reconnect and resume from your cursor",
                );
            }
        }
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
            Err(CloseReason::Deleted) => {
                // Said before the close, so the client does not reconnect.
                self.send_error(ctx, ErrorCode::NotFound, "the session was deleted".into());
                Self::close(ctx, CloseCode::Normal, "session deleted");
            }
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
            // Over the limit: refused by the gate at its header, or by the
            // decoder (a fragmented message's whole).
            Err(e) if self.oversized.get() || matches!(e, ws::ProtocolError::Overflow) => {
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
            // A text frame that is not UTF-8 (RFC 6455: 1007). actix-web-actors
            // reports it only as an I/O error carrying the UTF-8 error's words.
            Err(ws::ProtocolError::Io(e)) if e.to_string().contains("utf-8") => {
                return Self::close(ctx, CloseCode::Invalid, "a text frame that is not UTF-8");
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
