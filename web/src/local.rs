//! Local mode's guard against other web sites.
//!
//! In local mode every request is user `local`, with no token, and the
//! server listens on loopback only. That keeps other machines out, but not
//! the web pages a local browser opens: a page can make the browser send
//! requests to `127.0.0.1` (a form post, a WebSocket, a `fetch` in no-cors
//! mode), and a page whose host name it re-points at `127.0.0.1` (DNS
//! rebinding) can even read the answers. So, in local mode only:
//! - the `Host` must name a loopback host (`localhost`, `*.localhost`,
//!   `127.0.0.0/8`, `[::1]`), which a rebound name is not;
//! - an `Origin`, when sent, must be this server's own (same scheme-less
//!   host and port as `Host`); `Origin: null` is refused.
//!
//! An origin listed in `SLUICE_CORS_ORIGINS` passes too: the operator asked
//! for its pages to call this server.
//!
//! Either failure is `403 forbidden` in the envelope, before any handler
//! runs (for a WebSocket, before the upgrade). JWT mode needs none of this:
//! a browser cannot attach another site's bearer token.

use std::net::IpAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use sluice_protocol::ErrorCode;

use crate::auth::Auth;
use crate::error::ApiError;

/// The middleware: refuses requests from other sites in local mode.
pub async fn local_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let local = req
        .app_data::<web::Data<Auth>>()
        .is_some_and(|auth| auth.is_local());
    let origin = header(&req, "origin");
    // An origin the operator listed (`SLUICE_CORS_ORIGINS`) is let in.
    let listed = origin.is_some_and(|o| crate::browser::policy(req.request()).lists(o));
    let origin = if listed { None } else { origin };
    if local && let Err(refusal) = check(header(&req, "host"), origin) {
        return Ok(req.error_response(refusal).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn header<'a>(req: &'a ServiceRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// Checks a request's `Host` and `Origin` in local mode.
fn check(host: Option<&str>, origin: Option<&str>) -> Result<(), ApiError> {
    let forbidden = |message: String| ApiError::new(ErrorCode::Forbidden, message);
    if let Some(host) = host
        && !is_loopback_host(host)
    {
        return Err(forbidden(format!(
            "local mode answers only requests for a loopback host, not {:?}; set SLUICE_JWT_SECRET to serve others",
            clip(host)
        )));
    }
    let Some(origin) = origin else {
        return Ok(());
    };
    let same =
        host.is_some_and(|host| origin_authority(origin).is_some_and(|a| same_authority(a, host)));
    if same {
        Ok(())
    } else {
        Err(forbidden(format!(
            "local mode refuses requests from another site (Origin {:?})",
            clip(origin)
        )))
    }
}

/// At most 100 characters of a client's header, for a message.
fn clip(text: &str) -> String {
    text.chars().take(100).collect()
}

/// Splits an authority (`host[:port]`, `[v6][:port]`) into its host, in
/// lower case, and its port (`default` if it names none). Only the forms a
/// browser writes are taken: the port in plain decimal digits, nothing
/// after an IPv6 address's bracket but the port.
fn split_authority(authority: &str, default: u16) -> Option<(String, u16)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (host, port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        None => default,
        Some(port) => {
            let canonical = !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (port == "0" || !port.starts_with('0'));
            if !canonical {
                return None;
            }
            port.parse().ok()?
        }
    };
    Some((host.to_ascii_lowercase(), port))
}

fn is_loopback_host(authority: &str) -> bool {
    split_authority(authority, 0).is_some_and(|(host, _)| {
        host == "localhost"
            || host
                .strip_suffix(".localhost")
                .is_some_and(|labels| labels.split('.').all(is_label))
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// A DNS label: letters, digits and inner hyphens.
fn is_label(label: &str) -> bool {
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The host and port of a serialized origin (`scheme://host[:port]`), with
/// the scheme's default port made explicit.
pub(crate) fn origin_authority(origin: &str) -> Option<(String, u16)> {
    let (scheme, authority) = origin.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    split_authority(authority, default)
}

/// Whether an origin's host and port are those of the `Host` the request
/// was sent to. A `Host` without a port is taken to have the origin's
/// default one. (The scheme cannot be compared: `Host` does not carry it,
/// and a TLS proxy in front changes it.)
pub(crate) fn same_authority((origin_host, origin_port): (String, u16), host: &str) -> bool {
    split_authority(host, origin_port)
        .is_some_and(|(host, port)| host == origin_host && port == origin_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ok(host: Option<&str>, origin: Option<&str>, ok: bool) {
        assert_eq!(
            check(host, origin).is_ok(),
            ok,
            "Host {host:?}, Origin {origin:?}"
        );
    }

    #[test]
    fn loopback_hosts_and_their_own_origins_pass() {
        for host in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "app.localhost:3",
            "[::1]:8080",
            "127.9.9.9",
        ] {
            check_ok(Some(host), None, true);
        }
        check_ok(None, None, true);
        check_ok(Some("127.0.0.1:8080"), Some("http://127.0.0.1:8080"), true);
        check_ok(Some("localhost"), Some("http://localhost"), true);
        check_ok(Some("[::1]:8080"), Some("http://[::1]:8080"), true);
        // Behind a TLS proxy the page's scheme is https; Host cannot tell.
        check_ok(Some("localhost"), Some("https://localhost:443"), true);
    }

    #[test]
    fn other_sites_are_refused() {
        for host in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "[::2]:80",
            "localhost.evil",
            "[::1]x",
            ".localhost",
            "..localhost",
            "-.localhost",
            "localhost:+80",
            "localhost:",
        ] {
            check_ok(Some(host), None, false);
        }
        for origin in [
            "https://evil.example",
            "null",
            "http://127.0.0.1:9999",
            "http://localhost:8080",
            "http://127.0.0.1:08080",
            "http://127.0.0.1:+8080",
            "file://",
            "",
        ] {
            check_ok(Some("127.0.0.1:8080"), Some(origin), false);
        }
        check_ok(None, Some("http://127.0.0.1:8080"), false);
        let e = check(Some("evil.example"), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
    }
}
