//! The routes, one file per surface.

pub mod files;
pub mod openai;
pub mod ops;
pub mod sessions;
pub mod sse;
pub mod ui;
pub mod ws;

use actix_web::{HttpResponse, Resource, ResponseError, web};
use sluice_protocol::ErrorCode;

use crate::error::ApiError;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // HEAD on the page and /health: what load balancers and uptime checks
    // send (the framework leaves the body out).
    cfg.service(
        resource("/", "GET, HEAD")
            .route(web::get().to(ui::index))
            .route(web::head().to(ui::index)),
    )
    .service(
        resource("/health", "GET, HEAD")
            .route(web::get().to(ops::health))
            .route(web::head().to(ops::health)),
    )
    .service(resource("/ready", "GET").route(web::get().to(ops::ready)))
    .service(resource("/metrics", "GET").route(web::get().to(ops::metrics)))
    .service(
        resource("/v1/sessions", "GET, POST")
            .route(web::post().to(sessions::create))
            .route(web::get().to(sessions::list)),
    )
    .service(
        resource("/v1/sessions/{id}", "GET, DELETE")
            .route(web::get().to(sessions::get))
            .route(web::delete().to(sessions::delete)),
    )
    .service(resource("/v1/sessions/{id}/messages", "POST").route(web::post().to(sessions::send)))
    .service(resource("/v1/sessions/{id}/cancel", "POST").route(web::post().to(sessions::cancel)))
    .service(resource("/v1/sessions/{id}/ws", "GET").route(web::get().to(ws::connect)))
    .service(resource("/v1/sessions/{id}/events", "GET").route(web::get().to(sse::events)))
    .service(
        resource("/v1/chat/completions", "POST").route(web::post().to(openai::chat_completions)),
    )
    .service(
        resource("/v1/files", "GET, POST")
            .route(web::post().to(files::upload))
            .route(web::get().to(files::list)),
    )
    .service(
        resource("/v1/files/{id}", "GET, DELETE")
            .route(web::get().to(files::get))
            .route(web::delete().to(files::delete)),
    )
    .service(resource("/v1/files/{id}/content", "GET").route(web::get().to(files::content)))
    .service(resource("/v1/embeddings", "POST").route(web::post().to(openai::embeddings)))
    .service(resource("/v1/responses", "POST").route(web::post().to(openai::create_response)))
    .service(
        resource("/v1/responses/{id}", "GET, DELETE")
            .route(web::get().to(openai::get_response))
            .route(web::delete().to(openai::delete_response)),
    )
    .service(resource("/v1/models", "GET").route(web::get().to(openai::models)))
    .service(resource("/v1/models/{id}", "GET").route(web::get().to(openai::model)));
}

/// A resource whose other methods are answered `405 method_not_allowed` in
/// the envelope, with `Allow` listing `allowed`.
fn resource(path: &str, allowed: &'static str) -> Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut response = ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("this route takes {allowed}"),
        )
        .error_response();
        if let Ok(value) = allowed.parse() {
            response
                .headers_mut()
                .insert(actix_web::http::header::ALLOW, value);
        }
        Ok::<HttpResponse, actix_web::Error>(response)
    }))
}
