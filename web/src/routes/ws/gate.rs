//! [`FrameGate`]: lets a client's WebSocket bytes through one frame at a
//! time, and refuses a frame over the limit as soon as its header says so.
//!
//! actix-web-actors reads everything the socket has before it decodes a
//! frame, and actix-http's decoder checks a frame's size only once the whole
//! frame has arrived, so a client streaming one huge frame (or a flood of
//! tiny ones) grew the server's buffer as fast as it could send. Between
//! the socket and the decoder, this gate reads frame headers: a frame
//! announced over the limit ends the stream at once, and after each whole
//! frame the gate pauses for one poll, so the decoder takes that frame
//! before more is read. What a connection buffers is about one frame. A
//! bonus: frames that arrived just before the client closed its side are
//! decoded before the end of the stream is, so none is lost.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures::Stream;

/// Where the bytes passed so far reach in the current frame.
enum Position {
    /// In its header: the bytes of it seen so far (at most 14).
    Header { bytes: [u8; 14], seen: usize },
    /// In its payload: the bytes of it still to pass.
    Payload { remaining: u64 },
}

const FRAME_START: Position = Position::Header {
    bytes: [0; 14],
    seen: 0,
};

/// The client's bytes, gated (see the module's doc).
pub struct FrameGate<S> {
    inner: S,
    max_frame: u64,
    position: Position,
    /// The part of a chunk after a frame's end, passed on the next poll.
    leftover: Option<Bytes>,
    /// A frame just ended: the next poll pauses once.
    pause: bool,
    /// A frame was refused: the stream has ended, whoever polls it again.
    refused: bool,
    /// Set when a frame over the limit ended the stream, so the connection
    /// can close with 1009 rather than as a protocol error.
    oversized: Rc<Cell<bool>>,
}

impl<S> FrameGate<S> {
    /// Gates `inner`, refusing frames over `max_frame` bytes; `oversized` is
    /// set when one is refused.
    pub fn new(inner: S, max_frame: usize, oversized: Rc<Cell<bool>>) -> Self {
        Self {
            inner,
            max_frame: max_frame as u64,
            position: FRAME_START,
            leftover: None,
            pause: false,
            refused: false,
            oversized,
        }
    }

    /// Reads `chunk`'s bytes into the frame position: how many of them
    /// belong to the current frame, and whether it ends with them. `Err` if
    /// a header announces a frame over the limit.
    fn advance(&mut self, chunk: &[u8]) -> Result<(usize, bool), ()> {
        let mut i = 0;
        while i < chunk.len() {
            match &mut self.position {
                Position::Header { bytes, seen } => {
                    if *seen == bytes.len() {
                        // A header is at most 14 bytes: one longer is none.
                        return Err(());
                    }
                    bytes[*seen] = chunk[i];
                    *seen += 1;
                    i += 1;
                    let header = &bytes[..*seen];
                    if header_length(header) != Some(*seen) {
                        continue;
                    }
                    let length = payload_length(header);
                    if length > self.max_frame {
                        return Err(());
                    }
                    if length == 0 {
                        self.position = FRAME_START;
                        return Ok((i, true));
                    }
                    self.position = Position::Payload { remaining: length };
                }
                Position::Payload { remaining } => {
                    let taken = (*remaining).min((chunk.len() - i) as u64);
                    *remaining -= taken;
                    i += taken as usize;
                    if *remaining == 0 {
                        self.position = FRAME_START;
                        return Ok((i, true));
                    }
                }
            }
        }
        Ok((i, false))
    }
}

/// A frame header's length, once its first two bytes tell it.
fn header_length(header: &[u8]) -> Option<usize> {
    let second = *header.get(1)?;
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + extended + mask)
}

/// The payload length a whole frame header announces.
fn payload_length(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes(header[2..10].try_into().expect("eight bytes")),
        short => u64::from(short),
    }
}

impl<S> Stream for FrameGate<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.refused {
            return Poll::Ready(None);
        }
        if this.pause {
            // The reader stops reading and decodes what it has; then it is
            // woken to read on.
            this.pause = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut chunk = match this.leftover.take() {
            Some(chunk) => chunk,
            None => match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(chunk)) => chunk,
                other => return Poll::Ready(other),
            },
        };
        match this.advance(&chunk) {
            Err(()) => {
                this.oversized.set(true);
                this.refused = true;
                this.leftover = None;
                Poll::Ready(Some(Err(PayloadError::Overflow)))
            }
            Ok((taken, ended)) => {
                let rest = chunk.split_off(taken);
                if !rest.is_empty() {
                    this.leftover = Some(rest);
                }
                this.pause = ended;
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// A masked client text frame carrying `len` bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut out = header(len as u64);
        out.extend(std::iter::repeat_n(b'x', len));
        out
    }

    /// The header of a masked client text frame of `len` bytes.
    fn header(len: u64) -> Vec<u8> {
        let mut out = vec![0x81];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out
    }

    /// What the gate passes for `chunks`, up to the first error.
    async fn passed(chunks: Vec<Vec<u8>>, max: usize) -> (Vec<Vec<u8>>, bool) {
        let oversized = Rc::new(Cell::new(false));
        let inner = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, PayloadError>(Bytes::from(c))),
        );
        let gate = FrameGate::new(inner, max, oversized.clone());
        let out: Vec<_> = gate
            .take_while(|item| futures::future::ready(item.is_ok()))
            .map(|item| item.unwrap().to_vec())
            .collect()
            .await;
        (out, oversized.get())
    }

    #[tokio::test]
    async fn frames_pass_one_at_a_time_whatever_the_chunks() {
        let (a, b, c) = (frame(3), frame(0), frame(200));
        let all: Vec<u8> = [a.clone(), b.clone(), c.clone()].concat();
        // One chunk holding three frames comes out as three.
        let (out, oversized) = passed(vec![all.clone()], 1000).await;
        assert_eq!(out, vec![a.clone(), b.clone(), c.clone()]);
        assert!(!oversized);
        // Byte by byte, each frame still ends a piece.
        let bytes: Vec<Vec<u8>> = all.iter().map(|b| vec![*b]).collect();
        let (out, _) = passed(bytes, 1000).await;
        assert_eq!(out.concat(), all);
    }

    /// Polled again after refusing (actix does, as the connection stops),
    /// with more of the refused frame already read, the gate has ended.
    #[tokio::test]
    async fn a_refused_frame_ends_the_stream_however_it_is_polled() {
        let oversized = Rc::new(Cell::new(false));
        let mut refused = header(1 << 40);
        refused.extend_from_slice(&[b'x'; 64]);
        let inner = futures::stream::iter([refused, vec![b'y'; 64]].map(|c| Ok(Bytes::from(c))));
        let mut gate = FrameGate::new(inner, 1000, oversized.clone());
        assert!(matches!(gate.next().await, Some(Err(_))));
        assert!(gate.next().await.is_none());
        assert!(gate.next().await.is_none());
        assert!(oversized.get());
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_by_its_header() {
        let (out, oversized) = passed(vec![frame(10), header(1 << 40)], 1000).await;
        assert_eq!(out, vec![frame(10)], "nothing of the huge frame passes");
        assert!(oversized);
        let (_, oversized) = passed(vec![frame(1001)], 1000).await;
        assert!(oversized);
    }
}
