//! The minimal chat page, embedded in the binary.

use actix_web::HttpResponse;

/// The page: plain HTML and JavaScript, no build step.
const INDEX_HTML: &str = include_str!("../../static/index.html");

/// `GET /`.
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(INDEX_HTML)
}
