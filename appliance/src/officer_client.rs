//! The officer side of the mTLS API, for `dojangctl`: one HTTP/1.1 request
//! per call, the officer's client certificate, the daemon's CA. Errors come
//! back as the daemon's problem+json, put in one line.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where the API is and who the officer is.
pub struct OfficerClient {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl OfficerClient {
    /// `url` is `https://HOST[:PORT]`; `cert`/`key` the officer's client
    /// certificate and key (PEM); `ca` the CA of the daemon's certificate.
    pub fn new(url: &str, cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("--api {url:?} must start with https://"))?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse()
                    .with_context(|| format!("--api {url:?}: bad port"))?,
            ),
            None => (rest.to_owned(), 443),
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
            roots
                .add(c.with_context(|| format!("{}", ca.display()))?)
                .with_context(|| format!("{}", ca.display()))?;
        }
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("{}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}", cert.display()))?;
        let key =
            PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}", key.display()))?;
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the officer certificate and key do not match")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(OfficerClient {
            host,
            port,
            tls: Arc::new(config),
        })
    }

    /// Sends one request; the JSON body of a 2xx answer, else an error
    /// naming the problem's code and rule.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes = self.call_bytes(method, path, body)?;
        Ok(serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// [`call`](Self::call), answering the body's bytes as sent (a
    /// ceremony request is named by the SHA-256 of exactly these).
    pub fn call_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Bytes> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (status, bytes) = runtime.block_on(self.send(method, path, body))?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
        bail!(
            "refused: {status} {}{}: {}",
            field("code"),
            match field("rule") {
                "" => String::new(),
                rule => format!(" (rule {rule})"),
            },
            field("detail")
        )
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let address = format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(&address),
        )
        .await
        .with_context(|| format!("connecting to {address}: timed out"))?
        .with_context(|| format!("connecting to {address}"))?;
        let name = ServerName::try_from(self.host.clone()).context("server name")?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake (is this the daemon's api listener and CA?)")?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP handshake")?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        let bytes = match body {
            Some(body) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let response = sender
            .send_request(request.body(Full::new(bytes))?)
            .await
            .context("sending the request")?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    }
}
