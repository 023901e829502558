//! What browsers are allowed and told.
//!
//! - **CORS** is off unless `SLUICE_CORS_ORIGINS` lists origins: then
//!   `actix-cors` answers their preflights and marks their answers readable
//!   (the methods and headers this API uses; `Retry-After`, `X-Request-Id`
//!   and `X-Sluice-Cache` exposed). Other origins get no CORS headers, so
//!   their pages cannot read the answers.
//! - **A WebSocket's `Origin`** (browsers always send one, and the
//!   handshake is not subject to CORS) must be this server's own or a
//!   listed one, in every mode; a client that is not a browser sends none.
//! - **Headers**: every answer says `X-Content-Type-Options: nosniff`; the
//!   chat page also gets a strict `Content-Security-Policy` (its inline
//!   script and style allowed by their hashes, nothing else inline, no
//!   framing), `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`.
//! - **Every error in the envelope**: an error answer made by the framework
//!   or a middleware rather than a handler (CORS, a malformed path) is
//!   rewritten into the envelope, keeping its status and headers.

use std::sync::Arc;

use actix_cors::Cors;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::{Condition, Next};
use actix_web::{HttpResponse, web};
use base64::Engine;
use sha2::{Digest, Sha256};
use sluice_protocol::{ErrorBody, ErrorCode};

use crate::local::{origin_authority, same_authority};
use crate::state::AppState;

/// The origins whose pages may call this server (`SLUICE_CORS_ORIGINS`),
/// each `scheme://host[:port]`.
#[derive(Debug, Clone, Default)]
pub struct BrowserPolicy {
    origins: Arc<Vec<String>>,
}

impl BrowserPolicy {
    /// A policy allowing `origins` (none: CORS off).
    pub fn new(origins: Vec<String>) -> Self {
        Self {
            origins: Arc::new(origins),
        }
    }

    /// Whether `origin` is listed (compared as browsers write it: scheme,
    /// host and port, the default port implied).
    pub fn lists(&self, origin: &str) -> bool {
        let Some(authority) = origin_authority(origin) else {
            return false;
        };
        let scheme = |o: &str| o.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        self.origins.iter().any(|listed| {
            scheme(listed) == scheme(origin) && origin_authority(listed) == Some(authority.clone())
        })
    }

    /// The CORS middleware: on only when origins are listed.
    pub fn cors(&self) -> Condition<Cors> {
        let mut cors = Cors::default()
            .allowed_methods(["GET", "POST", "DELETE"])
            .allowed_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-sluice-cache"),
            ])
            .max_age(600);
        // The same comparison as everywhere else (`lists`), rather than
        // actix-cors's byte for byte one.
        let policy = self.clone();
        cors = cors.allowed_origin_fn(move |origin, _| {
            origin.to_str().is_ok_and(|origin| policy.lists(origin))
        });
        Condition::new(!self.origins.is_empty(), cors)
    }

    /// Whether a WebSocket handshake with `origin`, sent to `host`, may
    /// open: no `Origin` (not a browser), this server's own, or a listed one.
    pub fn allows_websocket(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let own = host.is_some_and(|host| {
            origin_authority(origin).is_some_and(|authority| same_authority(authority, host))
        });
        own || self.lists(origin)
    }
}

/// Checks an origin as `SLUICE_CORS_ORIGINS` takes it: `http` or `https`,
/// a host, an optional port, nothing after.
pub fn valid_origin(origin: &str) -> bool {
    origin_authority(origin).is_some()
        && origin
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains(['/', '?', '#', '@']))
}

/// The chat page's `Content-Security-Policy`: only its own inline script
/// and style (by hash), connections to this server, images it made itself.
pub fn page_policy(html: &str) -> String {
    let hash = |tag: &str| {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let start = html.find(&open).map(|i| i + open.len());
        let end = html.find(&close);
        match (start, end) {
            (Some(start), Some(end)) if start <= end => {
                let digest = Sha256::digest(&html.as_bytes()[start..end]);
                format!(
                    "'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest)
                )
            }
            _ => "'none'".to_owned(),
        }
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        hash("script"),
        hash("style")
    )
}

/// The middleware: `nosniff` on every answer, and an error answer that is
/// not in the envelope put in it.
pub async fn browser_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let mut response = next.call(req).await?;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !json {
        let code = ErrorCode::from_status(status.as_u16());
        let (req, old) = response.into_parts();
        let (old, body) = old.into_parts();
        // The framework's own words, if short and plain, else the reason.
        let said = actix_web::body::to_bytes_limited(body, 512)
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty() && !text.chars().any(char::is_control));
        let message = said.unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
        });
        let mut answer = HttpResponse::build(status).json(ErrorBody::new(code, message));
        for (name, value) in old.headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                answer.headers_mut().append(name.clone(), value.clone());
            }
        }
        let mut rewritten = ServiceResponse::new(req, answer).map_into_right_body();
        nosniff(rewritten.headers_mut());
        return Ok(rewritten);
    }
    nosniff(response.headers_mut());
    Ok(response.map_into_left_body())
}

fn nosniff(headers: &mut header::HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// The policy of the app, from its state.
pub fn policy(req: &actix_web::HttpRequest) -> BrowserPolicy {
    req.app_data::<web::Data<AppState>>()
        .map(|state| state.browser.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_origins_and_the_servers_own_open_websockets() {
        let policy = BrowserPolicy::new(vec!["https://chat.example".into()]);
        assert!(policy.allows_websocket(None, Some("api.example")));
        assert!(policy.allows_websocket(Some("https://api.example"), Some("api.example")));
        assert!(policy.allows_websocket(Some("https://chat.example"), Some("api.example")));
        assert!(policy.allows_websocket(Some("https://chat.example:443"), Some("api.example")));
        for foreign in [
            "https://evil.example",
            "http://chat.example",
            "https://chat.example:8443",
            "null",
            "",
        ] {
            assert!(
                !policy.allows_websocket(Some(foreign), Some("api.example")),
                "{foreign}"
            );
        }
        assert!(!BrowserPolicy::default().lists("https://chat.example"));
    }

    #[test]
    fn origins_are_checked_as_configured() {
        for good in [
            "https://chat.example",
            "http://localhost:3000",
            "https://[::1]:8443",
        ] {
            assert!(valid_origin(good), "{good}");
        }
        for bad in [
            "chat.example",
            "https://chat.example/",
            "https://chat.example/path",
            "ftp://chat.example",
            "https://",
            "*",
            "https://user@chat.example",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
    }

    #[test]
    fn the_page_policy_allows_its_own_inline_code_only() {
        let html = "<html><style>p{}</style><script>go()</script></html>";
        let policy = page_policy(html);
        assert!(policy.contains("default-src 'none'"));
        assert!(policy.contains("frame-ancestors 'none'"));
        assert!(!policy.contains("unsafe-inline"));
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
    }
}
