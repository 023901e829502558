//! The minimal chat page, embedded in the binary.

use std::sync::LazyLock;

use actix_web::http::header::{self, EntityTag, Header, IfNoneMatch};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use sha2::{Digest, Sha256};

use crate::browser::page_policy;

/// The page: plain HTML and JavaScript, no build step.
const INDEX_HTML: &str = include_str!("../../static/index.html");

/// The page's `Content-Security-Policy`, with its inline code's hashes.
static POLICY: LazyLock<String> = LazyLock::new(|| page_policy(INDEX_HTML));

/// The page's entity tag: a digest of its bytes, so it changes with them.
static ETAG: LazyLock<EntityTag> = LazyLock::new(|| {
    let digest = Sha256::digest(INDEX_HTML.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    EntityTag::new_strong(hex)
});

/// `GET /`: the page, or `304` when the client (or a cache in front)
/// already holds this version. `no-cache` makes every use revalidate.
pub async fn index(req: HttpRequest) -> HttpResponse {
    let fresh = match IfNoneMatch::parse(&req) {
        Ok(IfNoneMatch::Any) => true,
        Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(&ETAG)),
        Err(_) => false,
    };
    if fresh {
        return headers(HttpResponse::NotModified()).finish();
    }
    headers(HttpResponse::Ok())
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

fn headers(mut response: HttpResponseBuilder) -> HttpResponseBuilder {
    response
        .insert_header(header::ETag(ETAG.clone()))
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("Content-Security-Policy", POLICY.as_str()))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"));
    response
}
