//! The header-read timeout, for both protocols. HTTP/2 (hyper has none):
//! the inbound frames are followed (frame headers only, nothing is
//! decoded) and a connection on which a frame other than DATA, or a header
//! block (HEADERS then CONTINUATIONs), stays incomplete for longer than the
//! limit is failed; DATA frames are bodies, the body timeout rules them.
//! HTTP/1.1 (hyper's runs while a kept-alive connection waits for its next
//! request, so it cut idles): the clock starts at the first byte that
//! arrives with no request in progress and stops when one is.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where the inbound byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Preface {
        seen: usize,
    },
    FrameHeader {
        bytes: [u8; FRAME_HEADER_LEN],
        seen: usize,
    },
    Payload {
        remaining: usize,
        kind: u8,
        flags: u8,
    },
}

/// Follows HTTP/2 frame boundaries in what the client sends.
#[derive(Debug, Clone)]
pub(super) struct FrameTracker {
    at: At,
    /// Frames other than DATA completed so far: each restarts the clock.
    completed: u64,
    /// A HEADERS (or PUSH_PROMISE) without END_HEADERS is waiting for its
    /// CONTINUATIONs.
    open_block: bool,
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker {
            at: At::Preface { seen: 0 },
            completed: 0,
            open_block: false,
        }
    }
}

impl FrameTracker {
    /// Takes the next bytes the client sent.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let taken = match &mut self.at {
                At::Preface { seen } => {
                    let take = (PREFACE_LEN - *seen).min(bytes.len());
                    *seen += take;
                    if *seen == PREFACE_LEN {
                        self.at = next_frame();
                    }
                    take
                }
                At::FrameHeader {
                    bytes: header,
                    seen,
                } => {
                    let take = (FRAME_HEADER_LEN - *seen).min(bytes.len());
                    let (head, _) = bytes.split_at(take);
                    for (slot, byte) in header.iter_mut().skip(*seen).zip(head) {
                        *slot = *byte;
                    }
                    *seen += take;
                    if *seen == FRAME_HEADER_LEN {
                        let [l0, l1, l2, kind, flags, ..] = *header;
                        let length = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                        self.at = At::Payload {
                            remaining: length,
                            kind,
                            flags,
                        };
                        if length == 0 {
                            self.frame_ended(kind, flags);
                        }
                    }
                    take
                }
                At::Payload {
                    remaining,
                    kind,
                    flags,
                } => {
                    let take = (*remaining).min(bytes.len());
                    *remaining -= take;
                    if *remaining == 0 {
                        let (kind, flags) = (*kind, *flags);
                        self.frame_ended(kind, flags);
                    }
                    take
                }
            };
            bytes = bytes.get(taken..).unwrap_or_default();
        }
    }

    fn frame_ended(&mut self, kind: u8, flags: u8) {
        if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
            self.open_block = flags & END_HEADERS == 0;
        }
        if kind != DATA && !self.open_block {
            self.completed += 1;
        }
        self.at = next_frame();
    }

    /// Whether the client is part-way through something that is not a body:
    /// the preface, a frame header, a non-DATA frame, or a header block.
    pub(super) fn incomplete(&self) -> bool {
        self.open_block
            || match self.at {
                At::Preface { seen } => seen > 0,
                At::FrameHeader { seen, .. } => seen > 0,
                At::Payload { kind, .. } => kind != DATA,
            }
    }
}

fn next_frame() -> At {
    At::FrameHeader {
        bytes: [0; FRAME_HEADER_LEN],
        seen: 0,
    }
}

/// What a connection's client is part-way through.
enum Progress {
    Http2(FrameTracker),
    Http1 {
        /// Requests in progress (counted by the server's service).
        active: Arc<AtomicUsize>,
        /// Bytes arrived while none was.
        waiting: bool,
    },
}

impl Progress {
    /// Takes bytes the client sent; whether they finished something (a
    /// frame other than DATA, outside a header block), which restarts the
    /// clock.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        match self {
            Progress::Http2(frames) => {
                let before = frames.completed;
                frames.feed(bytes);
                frames.completed != before
            }
            Progress::Http1 { active, waiting } => {
                if !bytes.is_empty() && active.load(Ordering::Acquire) == 0 {
                    *waiting = true;
                }
                false
            }
        }
    }

    /// The server wrote: an HTTP/1.1 server writes only to answer, so
    /// bytes that came before (a refused request's body) are not a new
    /// request's headers.
    fn answered(&mut self) {
        if let Progress::Http1 { waiting, .. } = self {
            *waiting = false;
        }
    }

    fn incomplete(&mut self) -> bool {
        match self {
            Progress::Http2(frames) => frames.incomplete(),
            Progress::Http1 { active, waiting } => {
                if active.load(Ordering::Acquire) > 0 {
                    *waiting = false;
                }
                *waiting
            }
        }
    }
}

/// A connection's transport with the header-read timeout applied: once the
/// client has been part-way through a request's headers for `limit`, reads
/// fail with `TimedOut` and hyper drops the connection.
pub(super) struct HeaderDeadline<T> {
    inner: T,
    limit: Duration,
    progress: Progress,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> HeaderDeadline<T> {
    /// For an HTTP/2 connection.
    pub(super) fn http2(inner: T, limit: Duration) -> Self {
        Self::with(inner, limit, Progress::Http2(FrameTracker::default()))
    }

    /// For an HTTP/1.1 connection whose requests in progress are `active`.
    pub(super) fn http1(inner: T, limit: Duration, active: Arc<AtomicUsize>) -> Self {
        let progress = Progress::Http1 {
            active,
            waiting: false,
        };
        Self::with(inner, limit, progress)
    }

    fn with(inner: T, limit: Duration, progress: Progress) -> Self {
        HeaderDeadline {
            inner,
            limit,
            progress,
            deadline: None,
        }
    }

    /// Starts the clock when the client is part-way through headers, stops
    /// it when not.
    fn track(&mut self) {
        if !self.progress.incomplete() {
            self.deadline = None;
        } else if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.limit)));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeaderDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this
                    .progress
                    .feed(buf.filled().get(before..).unwrap_or_default())
                {
                    this.deadline = None;
                }
                this.track();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.track();
                this.expired(cx)
            }
            failed => failed,
        }
    }
}

impl<T> HeaderDeadline<T> {
    /// `TimedOut` once the clock has run out, else `Pending` (the timer
    /// wakes the task when it does).
    fn expired<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let expired = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if expired {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request headers not received within the header-read timeout",
            )))
        } else {
            Poll::Pending
        }
    }
}

impl<T> HeaderDeadline<T> {
    /// After a write: blocked, the clock still runs; done, it answered.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if written.is_pending() {
            return self.expired(cx);
        }
        self.progress.answered();
        written
    }
}

// Writes watch the clock too: a server blocked writing to a client that
// does not read (h2 stops reading until its pongs are flushed) must still
// end a connection whose headers never finish.
impl<T: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(cx, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.expired(cx),
            flushed => flushed,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn complete_frames_leave_nothing_pending_byte_by_byte_or_at_once() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        stream.extend(frame(HEADERS, END_HEADERS, &[0x82; 20]));
        stream.extend(frame(DATA, 0, &[]));
        let mut whole = FrameTracker::default();
        whole.feed(&stream);
        assert!(!whole.incomplete());
        assert_eq!(
            whole.completed, 2,
            "SETTINGS and HEADERS restart the clock, DATA does not"
        );
        let mut trickled = FrameTracker::default();
        for b in &stream[..PREFACE.len() + 15 + 12] {
            trickled.feed(&[*b]);
        }
        assert!(trickled.incomplete(), "part-way through the HEADERS frame");
        for b in &stream[PREFACE.len() + 15 + 12..] {
            trickled.feed(&[*b]);
        }
        assert!(!trickled.incomplete());
    }

    #[test]
    fn a_partial_headers_frame_or_open_block_is_incomplete_a_partial_body_is_not() {
        let mut t = FrameTracker::default();
        t.feed(PREFACE);
        assert!(!t.incomplete());
        let headers = frame(HEADERS, END_HEADERS, &[0x82; 20]);
        t.feed(&headers[..12]);
        assert!(t.incomplete(), "inside a HEADERS frame");
        t.feed(&headers[12..]);
        assert!(!t.incomplete());

        t.feed(&frame(HEADERS, 0, &[0x82; 4]));
        assert!(t.incomplete(), "a header block without END_HEADERS");
        t.feed(&frame(CONTINUATION, 0, &[0x82; 4]));
        assert!(t.incomplete(), "still open");
        t.feed(&frame(CONTINUATION, END_HEADERS, &[0x82; 4]));
        assert!(!t.incomplete());

        let data = frame(DATA, 0, &[7; 100]);
        t.feed(&data[..50]);
        assert!(!t.incomplete(), "a body is the body timeout's business");
        t.feed(&data[50..]);
        t.feed(&[0, 0]);
        assert!(t.incomplete(), "inside a frame header");
    }
}
