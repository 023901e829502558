//! Builds the app, serves it, and shuts it down gracefully.
//!
//! Shutdown on SIGTERM or SIGINT: stop accepting, flip the shutdown signal
//! (WebSockets close with 1001 and SSE streams end, so clients reconnect and
//! resume), drain the sessions (running generations get the grace period,
//! then end as `interrupted`; everything is flushed to the store), stop.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{HttpService, Protocol};
use actix_service::{ServiceFactoryExt, fn_service, map_config};
use actix_web::body::MessageBody;
use actix_web::dev::AppConfig;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, HttpServer, web};
use tokio::sync::watch;

use crate::auth::Auth;
use crate::browser::browser_headers;
use crate::context::request_context;
use crate::enveloped::Enveloped;
use crate::error::ApiError;
use crate::local::local_guard;
use crate::routes;
use crate::state::AppState;
use crate::unread::hold_unread_bodies;

/// Connections that may wait to be accepted; the kernel caps it at
/// `net.core.somaxconn` (4096 by default). The standard library's listener
/// asks for 128, which a burst of clients overflows (every client of a
/// stopped replica reconnects at once): the kernel drops the excess SYNs and
/// those clients wait a second or more before they retry.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr` to serve on, with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // As the standard library does: a restarted server can bind at once.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// How the server runs.
pub struct ServerOptions {
    /// HTTP worker threads.
    pub workers: usize,
    /// Where `/metrics` is also served, if set.
    pub metrics_listener: Option<TcpListener>,
    /// How long in-flight requests may take once shutdown begins.
    pub shutdown_grace: Duration,
}

/// The application with every route, the local-mode guard, CORS, the
/// browser headers (which put any error answer in the envelope) and the
/// request-context middleware (outermost, so it sees every answer).
pub fn app(
    state: AppState,
    auth: web::Data<Auth>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let cors = state.browser.cors();
    App::new()
        .app_data(web::Data::new(state))
        .app_data(auth)
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| ApiError::bad_request(format!("invalid query: {e}")).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| ApiError::bad_request(format!("invalid path: {e}")).into()),
        )
        .configure(routes::configure)
        .default_service(web::to(not_found))
        .wrap(from_fn(hold_unread_bodies))
        .wrap(from_fn(local_guard))
        .wrap(cors)
        .wrap(from_fn(browser_headers))
        .wrap(from_fn(request_context))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

/// Serves `state` on `listener` until SIGTERM or SIGINT, then shuts down
/// gracefully. `shutdown` is the sender of `state.shutdown`.
pub async fn run(
    state: AppState,
    auth: Auth,
    listener: TcpListener,
    options: ServerOptions,
    shutdown: watch::Sender<bool>,
) -> std::io::Result<()> {
    let app_state = state.clone();
    let auth = web::Data::new(auth);
    let app_auth = auth.clone();
    let local_addr = listener.local_addr()?;
    // actix-server and actix-http directly rather than `HttpServer`, for
    // one thing `HttpServer` cannot do: wrap each connection's I/O
    // (`Enveloped`), so that the answers actix-http makes itself carry the
    // envelope too.
    let server = actix_server::Server::build()
        .workers(options.workers)
        .disable_signals()
        .shutdown_timeout(options.shutdown_grace.as_secs().max(1))
        .listen("sluice", listener, move || {
            let app = app(app_state.clone(), app_auth.clone());
            let stopping = app_state.shutdown.clone();
            let http = HttpService::build()
                // Once shutdown begins, idle keep-alive connections close
                // and busy ones close after their answer (as `HttpServer`
                // does; the hook is actix-http's own, hidden from its
                // docs): a proxy holding a pooled connection to this
                // replica must not send a reconnecting client back here.
                .graceful_shutdown_signal(move || {
                    let mut stopping = stopping.clone();
                    async move {
                        let _ = stopping.wait_for(|stopping| *stopping).await;
                    }
                })
                // A client that closes its side is gone: its stream (SSE, a
                // streamed completion) ends at once, freeing its socket and
                // its user's stream slot, instead of at the second write
                // after it left (30 s for an idle SSE stream). No client of
                // this API sends a request and then waits with its side
                // half-closed.
                .h1_allow_half_closed(false)
                .local_addr(local_addr)
                .finish(map_config(app, |_| AppConfig::default()));
            fn_service(|io: actix_rt::net::TcpStream| async move {
                // Tokens are small writes that must leave at once: without
                // this, Nagle's algorithm holds each one until the client's
                // (delayed) ACK of the previous one, up to 40 ms.
                io.set_nodelay(true)?;
                let peer = io.peer_addr().ok();
                Ok::<_, DispatchError>((Enveloped::new(io), Protocol::Http1, peer))
            })
            .and_then(http)
        })?
        .run();
    let handle = server.handle();

    let metrics_server = match options.metrics_listener {
        Some(listener) => {
            let state = state.clone();
            let auth = auth.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(auth.clone())
                    .app_data(web::Data::new(state.clone()))
                    .route("/metrics", web::get().to(routes::ops::metrics_here))
                    .route("/ready", web::get().to(routes::ops::ready_here))
                    .default_service(web::to(not_found))
                    .wrap(from_fn(local_guard))
                    .wrap(from_fn(browser_headers))
            })
            .workers(1)
            .disable_signals()
            .listen(listener)?
            .run();
            Some(server)
        }
        None => None,
    };
    let metrics_handle = metrics_server.as_ref().map(|s| s.handle());
    if let Some(server) = metrics_server {
        actix_rt::spawn(server);
    }

    let sessions = state.sessions.clone();
    let stopping = shutdown.subscribe();
    let on_signal = actix_rt::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: closing streams, draining sessions");
        // Streams close (WebSockets with 1001) and the listener closes, so a
        // proxy sends reconnecting clients to another replica at once, while
        // running generations finish (or are handed over) in the background.
        let _ = shutdown.send(true);
        futures::future::join(handle.stop(true), sessions.drain()).await;
        if let Some(metrics_handle) = metrics_handle {
            metrics_handle.stop(true).await;
        }
    });
    let result = server.await;
    if *stopping.borrow() {
        // The server stopped accepting; wait for the drain to end too.
        let _ = on_signal.await;
    } else {
        on_signal.abort();
    }
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; shutdown will not be graceful");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    /// Far more connections than the standard library's backlog of 128 all
    /// complete while nothing accepts them yet, as a burst of reconnecting
    /// clients does while the server is busy. With a backlog of 128, the
    /// 130th connect would get no answer and time out (the `expect` fails).
    #[test]
    fn the_listener_queues_a_burst_of_connections() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Held open, so each connect needs a place of its own in the queue.
        let mut held = Vec::new();
        for i in 0..500 {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"));
            held.push(stream);
        }
    }
}
