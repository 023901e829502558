//! The minimal chat page, embedded in the binary.

use std::sync::LazyLock;

use actix_web::HttpResponse;

use crate::browser::page_policy;

/// The page: plain HTML and JavaScript, no build step.
const INDEX_HTML: &str = include_str!("../../static/index.html");

/// The page's `Content-Security-Policy`, with its inline code's hashes.
static POLICY: LazyLock<String> = LazyLock::new(|| page_policy(INDEX_HTML));

/// `GET /`.
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("Content-Security-Policy", POLICY.as_str()))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(INDEX_HTML)
}
