//! Clients that misbehave on purpose, for the overload tests: HTTP/2
//! requests whose bodies arrive a byte at a time, and TCP connections that
//! never start their TLS handshake.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::https::Target;

/// A request body of `left` bytes sent one at a time, every `every`.
pub struct Trickle {
    left: u64,
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Trickle {
    /// `length` bytes, one every `every`.
    pub fn new(length: u64, every: Duration) -> Self {
        Trickle {
            left: length,
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
        }
    }
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let next = tokio::time::Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b" ")))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Opens one HTTP/2 connection to `target` (which must be TLS with h2) and
/// starts `streams` POSTs of JSON to `path` at once, each body trickled;
/// the status of each answer that came within `wait` (`None`: no answer).
pub async fn trickled_posts(
    target: &Target,
    path: &str,
    streams: usize,
    wait: Duration,
) -> Result<Vec<Option<u16>>, String> {
    let (addr, config) = target.tls_parts().ok_or("a TLS target")?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut answers = Vec::new();
    for _ in 0..streams {
        let mut sender = sender.clone();
        let request = Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Trickle::new(4096, Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        answers.push(tokio::spawn(async move {
            sender.ready().await.ok()?;
            let response = sender.send_request(request).await.ok()?;
            Some(response.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    for answer in answers {
        let status = tokio::time::timeout_at(deadline, answer)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        statuses.push(status);
    }
    driver.abort();
    Ok(statuses)
}
