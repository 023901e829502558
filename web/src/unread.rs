//! A request body the server does not read to its end closes its
//! connection after the response, whatever its framing.
//!
//! actix-http closes the connection after answering a request whose
//! `Content-Length` body was not read, but it drains a *chunked* body whose
//! reader was dropped, for as long as the client takes: a client that sends
//! the start of a chunked body and then nothing would hold its connection
//! forever, on any route (one that reads no body, or the JSON extractor
//! giving up after [`BODY_TIMEOUT`](crate::body::BODY_TIMEOUT)). This
//! middleware keeps every request body alive until its response has been
//! written, so actix sees a body still unread and closes.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::HttpMessage;
use actix_web::body::{BodySize, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use bytes::Bytes;
use futures::Stream;

/// The middleware.
pub async fn hold_unread_bodies<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B, Holding<B>>>, actix_web::Error> {
    if !has_body(&req) {
        let response = next.call(req).await?;
        return Ok(response.map_body(|_, body| EitherBody::left(body)));
    }
    let payload = Rc::new(RefCell::new(req.take_payload()));
    req.set_payload(Payload::from(
        Box::pin(Shared(payload.clone())) as actix_http::BoxedPayloadStream
    ));
    let response = next.call(req).await?;
    Ok(response.map_body(|_, body| {
        EitherBody::right(Holding {
            body: Box::pin(body),
            _payload: payload,
        })
    }))
}

/// Whether the request says a body follows.
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The request's body, read by the handler through this while the
/// middleware holds it too.
struct Shared(Rc<RefCell<Payload>>);

impl Stream for Shared {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_next(cx)
    }
}

/// A response body that holds its request's body until it is dropped.
pub struct Holding<B> {
    body: Pin<Box<B>>,
    _payload: Rc<RefCell<Payload>>,
}

impl<B: MessageBody> MessageBody for Holding<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.body.as_mut().poll_next(cx)
    }
}
