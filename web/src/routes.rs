//! The routes, one file per surface.

pub mod openai;
pub mod ops;
pub mod sessions;
pub mod sse;
pub mod ui;
pub mod ws;

use actix_web::web;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").route(web::get().to(ui::index)))
        .service(web::resource("/health").route(web::get().to(ops::health)))
        .service(web::resource("/ready").route(web::get().to(ops::ready)))
        .service(web::resource("/metrics").route(web::get().to(ops::metrics)))
        .service(
            web::resource("/v1/sessions")
                .route(web::post().to(sessions::create))
                .route(web::get().to(sessions::list)),
        )
        .service(
            web::resource("/v1/sessions/{id}")
                .route(web::get().to(sessions::get))
                .route(web::delete().to(sessions::delete)),
        )
        .service(web::resource("/v1/sessions/{id}/messages").route(web::post().to(sessions::send)))
        .service(web::resource("/v1/sessions/{id}/cancel").route(web::post().to(sessions::cancel)))
        .service(web::resource("/v1/sessions/{id}/ws").route(web::get().to(ws::connect)))
        .service(web::resource("/v1/sessions/{id}/events").route(web::get().to(sse::events)))
        .service(
            web::resource("/v1/chat/completions").route(web::post().to(openai::chat_completions)),
        )
        .service(web::resource("/v1/models").route(web::get().to(openai::models)))
        .service(web::resource("/v1/models/{id}").route(web::get().to(openai::model)));
}
