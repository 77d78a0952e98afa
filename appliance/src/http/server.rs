//! Serving connections: accept with a connection limit, TLS handshake with a
//! timeout, HTTP/1.1 or HTTP/2 by ALPN with a header-read timeout
//! ([`HeaderDeadline`]), an idle timeout, and graceful shutdown. What a request means is the router's
//! business ([`Router`]).

use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::handshakes::Handshakes;
use super::header_deadline::HeaderDeadline;
use super::identity::{ClientCa, NoIdentity};
use super::tls::ListenerTls;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::refusal::{Class, Refusal};

/// How long an idle connection told to close may take to do so.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// Response body type.
pub type Body = Full<Bytes>;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's identity from its certificate, with the certificate's
    /// fingerprint (mTLS listeners only), or why its certificate gives none.
    pub identity: Result<crate::node::Caller, NoIdentity>,
    /// Which CA issued that certificate, when officers have their own.
    pub ca: ClientCa,
}

/// Answers requests on one listener.
pub trait Router: Send + Sync + 'static {
    /// The listener's name in metrics and logs.
    fn listener(&self) -> &'static str;
    /// Answers one request.
    fn route(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
}

/// A TLS configuration SIGHUP can swap; `None` serves plain HTTP.
pub type TlsSlot = Arc<RwLock<Option<ListenerTls>>>;

/// A request in progress on a connection; when it ends (answered, or
/// dropped by a reset stream) the connection's idle clock restarts.
struct Busy {
    epoch: Instant,
    last: Arc<AtomicU64>,
    active: Arc<AtomicUsize>,
}

impl Busy {
    fn new(epoch: Instant, last: Arc<AtomicU64>, active: Arc<AtomicUsize>) -> Self {
        let _ = active.fetch_add(1, Ordering::AcqRel);
        Busy {
            epoch,
            last,
            active,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let _ = self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: TlsSlot,
    router: Arc<dyn Router>,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    rekey: watch::Receiver<u64>,
) {
    let name = router.listener();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Handshakes::new(limits.max_handshakes);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let tls = tls.read().ok().and_then(|t| t.clone());
        // A plain connection takes its connection place now; a TLS one a
        // handshake place, and its connection place once the handshake is
        // done (in `accept`).
        let plain_place = if tls.is_none() {
            let Ok(place) = connections.clone().try_acquire_owned() else {
                metrics.connections_refused.with_label_values(&[name]).inc();
                drop(stream);
                continue;
            };
            Some(place)
        } else {
            None
        };
        let _ = stream.set_nodelay(true);
        let context = Context {
            name,
            router: router.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            rekey: rekey.clone(),
            connections: connections.clone(),
            handshakes: handshakes.clone(),
        };
        // Detached: the task ends with its connection (or the process).
        drop(tokio::spawn(async move {
            accept(stream, tls, plain_place, context).await;
        }));
    }
    // Stopping: the connections finish their responses (each closes once
    // its requests are answered, or at the drain deadline).
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        Duration::from_millis(limits.drain_timeout_ms) + IDLE_GRACE,
        connections.acquire_many(all),
    )
    .await;
}

/// What a connection's task takes along.
struct Context {
    name: &'static str,
    router: Arc<dyn Router>,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    rekey: watch::Receiver<u64>,
    /// Places for connections past their handshake.
    connections: Arc<Semaphore>,
    handshakes: Arc<Handshakes>,
}

/// One accepted connection: the TLS handshake within its timeout (the
/// client's identity from its certificate), then requests until it ends.
/// A plain connection comes with its connection place.
async fn accept(
    stream: tokio::net::TcpStream,
    tls: Option<ListenerTls>,
    plain_place: Option<OwnedSemaphorePermit>,
    c: Context,
) {
    let Context {
        name,
        router,
        limits,
        metrics,
        shutdown,
        rekey,
        connections,
        handshakes,
    } = c;
    let open = metrics.connections.with_label_values(&[name]);
    open.inc();
    match tls {
        Some(ListenerTls {
            config,
            officer_cas,
            ..
        }) => {
            let Some(tls_stream) =
                handshake(stream, config, &handshakes, &limits, &metrics, name).await
            else {
                open.dec();
                return;
            };
            let Ok(_place) = connections.try_acquire_owned() else {
                metrics.connections_refused.with_label_values(&[name]).inc();
                open.dec();
                return;
            };
            let (_, session) = tls_stream.get_ref();
            let chain = session.peer_certificates().unwrap_or_default();
            let identity = chain.first().map_or(Err(NoIdentity::Missing), |c| {
                super::identity::client_identity(c)
                    .map(|identity| crate::node::Caller::new(identity, c))
            });
            let ca = super::identity::issuing_ca(chain, &officer_cas);
            let h2 = session.alpn_protocol() == Some(b"h2");
            let peer = Arc::new(Peer { identity, ca });
            connection(tls_stream, h2, peer, router, &limits, shutdown, rekey).await;
        }
        None => {
            let peer = Arc::new(Peer {
                identity: Err(NoIdentity::Missing),
                ca: ClientCa::Shared,
            });
            connection(stream, false, peer, router, &limits, shutdown, rekey).await;
            drop(plain_place);
        }
    }
    open.dec();
}

/// The TLS handshake in a handshake place, within its timeout; `None` if
/// it failed, timed out, found no place, or was ended for a newcomer.
async fn handshake(
    stream: tokio::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    handshakes: &Arc<Handshakes>,
    limits: &Limits,
    metrics: &Metrics,
    name: &'static str,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let (place, evicted) = handshakes.enter().await;
    if evicted {
        tracing::debug!(
            listener = name,
            "handshake places full: the oldest was ended"
        );
    }
    let Some(mut place) = place else {
        metrics.connections_refused.with_label_values(&[name]).inc();
        return None;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let outcome = tokio::select! {
        done = tokio::time::timeout(
            Duration::from_millis(limits.tls_handshake_timeout_ms),
            acceptor.accept(stream),
        ) => done,
        _ = &mut place.evicted => {
            metrics.handshake_failures.with_label_values(&[name]).inc();
            return None;
        }
    };
    match outcome {
        Ok(Ok(tls_stream)) => Some(tls_stream),
        Ok(Err(e)) => {
            metrics.handshake_failures.with_label_values(&[name]).inc();
            tracing::info!(listener = name, error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            metrics.handshake_failures.with_label_values(&[name]).inc();
            tracing::info!(listener = name, "TLS handshake timed out");
            None
        }
    }
}

// Serves `conn` until it ends. It is shut down gracefully when idle, at
// stop, or after a reload (connections made under the old TLS files and
// CRLs finish their requests and close, so a revoked client cannot
// stay); then the peer gets a grace period and the connection is dropped
// (an HTTP/2 peer that never acknowledges the GOAWAY ping would
// otherwise keep it open). A macro: the two connection types share no
// trait for `graceful_shutdown`.
macro_rules! drive {
    ($conn:ident, $idle_since:ident, $idle:ident, $idle_tick:ident, $drain:ident, $shutdown:ident, $rekey:ident) => {
        tokio::pin!($conn);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = $conn.as_mut() => break,
                _ = tokio::time::sleep($idle_tick), if deadline.is_none() => {
                    if $idle_since() >= $idle {
                        $conn.as_mut().graceful_shutdown();
                        deadline = Some(tokio::time::Instant::now() + IDLE_GRACE);
                    }
                }
                _ = $shutdown.changed(), if deadline.is_none() => {
                    $conn.as_mut().graceful_shutdown();
                    deadline = Some(tokio::time::Instant::now() + $drain);
                }
                _ = $rekey.changed(), if deadline.is_none() => {
                    $conn.as_mut().graceful_shutdown();
                    deadline = Some(tokio::time::Instant::now() + $drain);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => break,
            }
        }
    };
}

async fn connection<T>(
    io: T,
    h2: bool,
    peer: Arc<Peer>,
    router: Arc<dyn Router>,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
    mut rekey: watch::Receiver<u64>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Only reloads after this connection was made concern it.
    let _ = rekey.borrow_and_update();
    // Idle means no request in progress since the last one ended: bytes
    // alone (an HTTP/2 PING) do not keep a connection open.
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let io = if h2 {
        HeaderDeadline::http2(io, header_timeout)
    } else {
        HeaderDeadline::http1(io, header_timeout, active.clone())
    };
    let io = TokioIo::new(io);
    let service = {
        let (last, active) = (last.clone(), active.clone());
        hyper::service::service_fn(move |request| {
            let router = router.clone();
            let peer = peer.clone();
            let busy = Busy::new(epoch, last.clone(), active.clone());
            async move {
                let response = router.route(request, peer).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let drain = Duration::from_millis(limits.drain_timeout_ms);
    let idle_tick = (idle / 4).max(Duration::from_millis(50));
    let idle_since = || {
        if active.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(last.load(Ordering::Relaxed));
        epoch.elapsed().saturating_sub(last)
    };
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Bodies are buffered (up to max_body_bytes each): few streams
            // and small windows bound what one connection can make us hold.
            .max_concurrent_streams(16)
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(256 * 1024)
            .serve_connection(io, service);
        drive!(conn, idle_since, idle, idle_tick, drain, shutdown, rekey);
    } else {
        // hyper's own header timeout would also cut keep-alive idles (it
        // runs while waiting for the next request): ours starts with the
        // first byte of a request, and idles are the idle timeout's.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true)
            .serve_connection(io, service);
        drive!(conn, idle_since, idle, idle_tick, drain, shutdown, rekey);
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: Vec<u8>, request_id: &str) -> Response<Body> {
    respond(status, "application/json", body, request_id)
}

/// A response with a content type and the request id.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
    request_id: &str,
) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let _ = headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(request_id) {
        let _ = headers.insert("x-request-id", v);
    }
    let _ = headers.insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    response
}

/// A problem+json response.
pub fn problem(p: &Refusal, request_id: &str) -> Response<Body> {
    let mut response = respond(
        super::problem::status(p.class),
        "application/problem+json",
        super::problem::body(p, request_id),
        request_id,
    );
    if let Some(seconds) = p.retry_after {
        let _ = response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, seconds.into());
    }
    response
}

/// Reads a body of at most `max` bytes: 413 before reading when the
/// declared length is larger, or as soon as more arrives.
pub async fn read_body(request: Request<Incoming>, max: usize) -> Result<Bytes, Refusal> {
    let too_large = || {
        Refusal::new(
            Class::PayloadTooLarge,
            "body_too_large",
            format!("the request body is larger than {max} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(Refusal::bad_request(
            "malformed_request",
            "the request body could not be read",
        )),
    }
}

/// A new request id: 16 hex digits, a counter hashed with a key drawn at
/// start (std's SipHash with a random key). Ids look random, a client
/// holding two cannot tell how many requests came between them (a plain
/// counter would tell anyone the node's volume), and no draw from
/// OpenSSL's generator is made per request (its locks cost ~1% of the
/// daemon's CPU at saturation). Ids are not secrets.
pub fn request_id() -> String {
    static KEYED: OnceLock<(RandomState, AtomicU64)> = OnceLock::new();
    let (key, next) = KEYED.get_or_init(|| (RandomState::new(), AtomicU64::new(0)));
    keyed_id(key, next.fetch_add(1, Ordering::Relaxed))
}

fn keyed_id(key: &RandomState, n: u64) -> String {
    format!("{:016x}", key.hash_one(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::hash::RandomState;

    use super::{keyed_id, request_id};

    #[test]
    fn request_ids_are_sixteen_hex_digits_and_differ() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| {
            id.len() == 16
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }));
    }

    #[test]
    fn consecutive_request_ids_do_not_count_up() {
        // A counter would rise every time; hashed, about half rise.
        let ids: Vec<u64> = (0..1_000)
            .map(|_| u64::from_str_radix(&request_id(), 16).unwrap())
            .collect();
        let rising = ids.windows(2).filter(|w| w[1] > w[0]).count();
        assert!((350..650).contains(&rising), "{rising} of 999 rose");
    }

    #[test]
    fn an_id_depends_on_the_key_not_only_the_count() {
        // Without the key, no one can map an id back to its count.
        let (a, b) = (RandomState::new(), RandomState::new());
        assert!((0..100).all(|n| keyed_id(&a, n) != keyed_id(&b, n)));
    }
}
