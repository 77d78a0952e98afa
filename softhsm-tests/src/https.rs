//! A small HTTP client for driving the real daemon: HTTPS with or without a
//! client certificate (rustls), HTTP/1.1 keep-alive or HTTP/2, or plain
//! HTTP. The async [`Connection`] is what the load benchmark uses; the
//! blocking [`Client`] is what tests use.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How to reach a listener.
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    h2: bool,
}

impl Target {
    /// Plain HTTP.
    pub fn plain(addr: SocketAddr) -> Self {
        Target {
            addr,
            tls: None,
            h2: false,
        }
    }

    /// HTTPS trusting `ca`, presenting `client` (certificate, key) if given.
    pub fn tls(addr: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>, h2: bool) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .expect("client certificate file")
                        .collect::<Result<Vec<_>, _>>()
                        .expect("client certificate PEM"),
                    PrivateKeyDer::from_pem_file(key).expect("client key"),
                )
                .expect("client certificate and key"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Target {
            addr,
            tls: Some(Arc::new(config)),
            h2,
        }
    }

    /// Makes `n` TLS connections with this target's one client
    /// configuration (which keeps session tickets), each sending one
    /// HTTP/1.1 request and reading the answer to its end (tickets arrive
    /// after the handshake); how many handshakes resumed a session.
    pub fn resumed_handshakes(&self, n: usize) -> usize {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let config = self.tls.clone().expect("a TLS target");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut resumed = 0;
            for _ in 0..n {
                let tcp = TcpStream::connect(self.addr).await.expect("connect");
                let name = ServerName::try_from("localhost").expect("server name");
                let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .expect("TLS handshake");
                tls.write_all(b"GET /v1/credentials/nope HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                    .await
                    .expect("request");
                let mut answer = Vec::new();
                let _ = tls.read_to_end(&mut answer).await;
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    resumed += 1;
                }
            }
            resumed
        })
    }

    /// The address and TLS configuration (`None` for plain HTTP).
    pub fn tls_parts(&self) -> Option<(SocketAddr, Arc<rustls::ClientConfig>)> {
        self.tls.clone().map(|config| (self.addr, config))
    }

    /// Opens a connection (TCP, TLS handshake, HTTP handshake).
    pub async fn connect(&self) -> Result<Connection, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some(config) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let name = ServerName::try_from("localhost").expect("server name");
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?,
                )
            }
            None => Box::new(tcp),
        };
        let io = TokioIo::new(io);
        let sender = if self.h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            drop(tokio::spawn(conn));
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            drop(tokio::spawn(conn));
            Sender::H1(sender)
        };
        Ok(Connection { sender })
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One connection; requests go one after another (keep-alive).
pub struct Connection {
    sender: Sender,
}

impl Connection {
    /// Sends a request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(request).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(request).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// A blocking client with one kept-alive connection, reopened when lost.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    target: Target,
    connection: Option<Connection>,
    /// Gives up on an answer after this long (a peer whose network
    /// vanished never answers nor resets).
    timeout: Option<std::time::Duration>,
}

impl Client {
    /// A client for `target`.
    pub fn new(target: Target) -> Self {
        Client {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            target,
            connection: None,
            timeout: None,
        }
    }

    /// The same client, giving up on any answer after `timeout`.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends a request; `Err` if the connection or the TLS handshake failed.
    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let target = self.target.clone();
        let mut connection = self.connection.take();
        let timeout = self.timeout;
        let result = self.runtime.block_on(async {
            let exchange = async {
                let mut conn = match connection.take() {
                    Some(c) => c,
                    None => target.connect().await?,
                };
                let reply = conn.send(method, path, headers, body).await?;
                Ok::<_, String>((reply, conn))
            };
            match timeout {
                Some(limit) => tokio::time::timeout(limit, exchange)
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer in {limit:?}"))),
                None => exchange.await,
            }
        });
        match result {
            Ok((reply, conn)) => {
                self.connection = Some(conn);
                Ok(reply)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a request; panics if there is no answer.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        self.try_send(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// GET.
    pub fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, &[], Vec::new())
    }

    /// POST a JSON body.
    pub fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, serde_json::to_vec(body).expect("JSON"))
    }
}

/// A blocking TLS socket for byte-level tests (slow headers, oversized
/// bodies): OpenSSL, trusting `ca`, presenting `client` if given.
pub fn raw_tls(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> openssl::ssl::SslStream<std::net::TcpStream> {
    raw_tls_alpn(addr, ca, client, b"\x08http/1.1")
}

/// [`raw_tls`] offering the ALPN protocols `alpn` (wire format).
pub fn raw_tls_alpn(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> openssl::ssl::SslStream<std::net::TcpStream> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
    let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    builder.set_ca_file(ca).expect("CA");
    if let Some((cert, key)) = client {
        builder.set_certificate_chain_file(cert).expect("cert");
        builder
            .set_private_key_file(key, SslFiletype::PEM)
            .expect("key");
    }
    builder.set_alpn_protos(alpn).expect("ALPN");
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    builder
        .build()
        .connect("localhost", tcp)
        .expect("TLS handshake")
}

/// Reads what the server sends until it closes (or the read times out).
pub fn read_all(stream: &mut impl std::io::Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(buf.get(..n).expect("read returns at most buf.len() bytes"))
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
