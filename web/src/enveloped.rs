//! [`Enveloped`]: a connection whose framework-made error answers get the
//! envelope too.
//!
//! A request the HTTP parser refuses (no request line, a header it cannot
//! read, a request head over its limit or one that stalls) is answered by
//! actix-http itself, before any Sluice code runs, with an empty `400`,
//! `431` or `408` and the connection closed; there is no hook for it. Every
//! other error answer of this server carries the envelope, so an error
//! answer with `content-length: 0` can only be one of those. This wrapper
//! recognises such an answer as it is written, and writes it with the
//! envelope instead; every other byte passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use sluice_protocol::{ErrorBody, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's I/O, with the framework's bare error answers put in the
/// envelope.
pub struct Enveloped<T> {
    io: T,
    /// A rewritten answer still being written.
    pending: Option<Bytes>,
}

impl<T> Enveloped<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Self { io, pending: None }
    }
}

/// The answer `buf` holds, with the envelope, if it is a bare error answer
/// of the framework: a whole `4xx` head with an empty body.
fn enveloped(buf: &[u8]) -> Option<Bytes> {
    // Cheap first: every other write (events, frames, answers) is passed on
    // after looking at its first bytes only.
    if !(buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.0 4")) || buf.len() > 1024 {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_end != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    if !(400..500).contains(&status) {
        return None;
    }
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let empty = headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"));
    if !empty {
        return None;
    }
    let (code, message) = match status {
        431 => (
            ErrorCode::BadRequest,
            "the request's headers are too large".to_owned(),
        ),
        408 => (
            ErrorCode::RequestTimeout,
            "the request's head did not arrive in time".to_owned(),
        ),
        _ => (
            ErrorCode::from_status(status),
            "the request is not HTTP this server can read".to_owned(),
        ),
    };
    let body = serde_json::to_vec(&ErrorBody::new(code, message)).ok()?;
    let mut out = format!("{status_line}\r\n");
    for header in headers
        .iter()
        .filter(|h| !h.to_ascii_lowercase().starts_with("content-length:"))
    {
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\nx-content-type-options: nosniff\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    Some(Bytes::from(bytes))
}

impl<T: AsyncWrite + Unpin> Enveloped<T> {
    /// Writes what is pending of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(pending) = &mut self.pending {
            if pending.is_empty() {
                self.pending = None;
                break;
            }
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            pending.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Enveloped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Enveloped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = enveloped(buf) {
            // Taken whole; written by this and the next calls.
            self.pending = Some(answer);
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_error_answers_are_rewritten() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n";
        let answer = enveloped(bare).unwrap();
        let text = std::str::from_utf8(&answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"));
        assert!(text.contains("\"code\":\"bad_request\""), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(!head.contains("content-length: 0"));
        let timeout =
            enveloped(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(
            std::str::from_utf8(&timeout)
                .unwrap()
                .contains("request_timeout")
        );
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 10\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"garbage",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(
                enveloped(other).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
