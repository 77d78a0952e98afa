//! One witness of the log, over HTTP(S) (c2sp.org/tlog-witness): its
//! address and key from the configuration, the size it says it holds, and
//! one `add-checkpoint` exchange with it. The rounds over all witnesses,
//! the stored note and the quorum are [`super::witnessing`]'s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;

use super::log::AuditLog;
use super::witness::{AddCheckpoint, CosignerKey};
use crate::config::WitnessSettings;
use crate::node::LoadError;
use crate::store::Registry;

/// How long one witness may take to answer (both requests of an
/// exchange, connection and TLS included).
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a witness.
const MAX_ANSWER: usize = 16 * 1024;

/// One configured witness.
pub(super) struct Witness {
    pub(super) key: CosignerKey,
    host: String,
    port: u16,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The size it said it holds (`None`: not asked yet; 0 is sent).
    holds: Mutex<Option<u64>>,
}

/// Why a witness gave no cosignature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotCosigned {
    /// 422: the checkpoint does not extend what it holds.
    Inconsistent,
    /// 409 without a size: another tree of the same size.
    OtherRoot,
    /// 403: it does not trust the log's key.
    Forbidden,
    /// 404: it does not follow this log.
    UnknownLog,
    /// 409 naming a size beyond this log's latest checkpoint: the log was
    /// rolled back behind what the witness cosigned (or, for a moment, a
    /// newer checkpoint of another node was not read yet).
    Ahead,
    /// 400, or anything else.
    Refused,
    /// No answer, or not HTTP.
    Unreachable,
    /// 200 without a cosignature that verifies under its key.
    BadCosignature,
}

impl NotCosigned {
    pub(super) fn label(self) -> &'static str {
        match self {
            NotCosigned::Inconsistent => "inconsistent",
            NotCosigned::OtherRoot => "other_root",
            NotCosigned::Forbidden => "forbidden",
            NotCosigned::UnknownLog => "unknown_log",
            NotCosigned::Ahead => "ahead",
            NotCosigned::Refused => "refused",
            NotCosigned::Unreachable => "unreachable",
            NotCosigned::BadCosignature => "bad_cosignature",
        }
    }

    pub(super) fn explain(self) -> &'static str {
        match self {
            NotCosigned::Inconsistent => {
                "inconsistent: the checkpoint does not extend the one it holds (a fork)"
            }
            NotCosigned::OtherRoot => "another tree of the same size (a fork)",
            NotCosigned::Forbidden => "it does not trust the log's key",
            NotCosigned::UnknownLog => "it does not follow this log",
            NotCosigned::Ahead => {
                "it cosigned a larger tree than this log's latest checkpoint (a rollback?)"
            }
            NotCosigned::Refused => "refused the request",
            NotCosigned::Unreachable => "unreachable",
            NotCosigned::BadCosignature => "its cosignature does not verify",
        }
    }
}

impl Witness {
    pub(super) fn new(settings: &WitnessSettings) -> Result<Self, LoadError> {
        let key = CosignerKey::from_vkey(&settings.key)
            .map_err(|e| LoadError(format!("server.audit.witnesses {:?}: {e}", settings.url)))?;
        let bad =
            |why: &str| LoadError(format!("server.audit.witnesses {:?}: {why}", settings.url));
        let (https, rest) = match settings.url.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            _ => return Err(bad("not an http(s) URL")),
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
            None => (authority, if https { 443 } else { 80 }),
        };
        let tls = match (&settings.ca, https) {
            (Some(ca), true) => Some(client_tls(ca).map_err(|e| bad(&e))?),
            (None, true) => return Err(bad("an https witness needs `ca`")),
            (_, false) => None,
        };
        let prefix = prefix.trim_end_matches('/');
        Ok(Witness {
            key,
            host: host.to_owned(),
            port,
            path: if prefix.is_empty() {
                "/add-checkpoint".into()
            } else {
                format!("/{prefix}/add-checkpoint")
            },
            tls,
            holds: Mutex::new(None),
        })
    }

    /// The size the witness said it holds (`None`: not asked since this
    /// process started, or its last answer was not a cosignature).
    pub(super) fn holds(&self) -> Option<u64> {
        self.holds.lock().ok().and_then(|h| *h)
    }

    /// Remembers the size the witness holds (`None`: ask it).
    pub(super) fn set_holds(&self, size: Option<u64>) {
        if let Ok(mut holds) = self.holds.lock() {
            *holds = size;
        }
    }

    /// [`Witness::cosign`] on a runtime of its own (each witness is asked
    /// on its own thread, so a slow one delays nobody else).
    pub(super) fn ask(
        &self,
        registry: &dyn Registry,
        size: u64,
        note: &str,
        body: &str,
    ) -> Result<String, NotCosigned> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| NotCosigned::Unreachable)?;
        // One deadline for the whole exchange (it may take two requests),
        // and nothing left behind on the runtime waits past it.
        let answer = runtime
            .block_on(async {
                tokio::time::timeout(TIMEOUT, self.cosign(registry, size, note, body)).await
            })
            .unwrap_or(Err(NotCosigned::Unreachable));
        runtime.shutdown_background();
        if answer.is_err() {
            // Asked afresh next time: it says what it holds.
            self.set_holds(None);
        }
        answer
    }

    /// Asks for a cosignature on checkpoint `size` (`note`, whose body is
    /// `body`); the verified cosignature line. A 409 naming the size the
    /// witness holds is answered once with a proof from that size.
    async fn cosign(
        &self,
        registry: &dyn Registry,
        size: u64,
        note: &str,
        body: &str,
    ) -> Result<String, NotCosigned> {
        for _ in 0..2 {
            let old = self.holds.lock().ok().and_then(|h| *h).unwrap_or(0);
            if old > size {
                return Err(NotCosigned::Ahead);
            }
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                AuditLog::consistency(registry, old, size).map_err(|_| NotCosigned::Refused)?
            };
            let request = AddCheckpoint {
                old,
                proof,
                note: note.to_owned(),
            };
            let (status, size_header, answer) = self
                .post(request.encode())
                .await
                .map_err(|_| NotCosigned::Unreachable)?;
            match status {
                200 => {
                    let lines = String::from_utf8_lossy(&answer);
                    self.set_holds(Some(size));
                    // One line of this witness's, the first that verifies.
                    return lines
                        .lines()
                        .find(|l| self.key.verify(body, l).is_ok())
                        .map(|l| format!("{l}\n"))
                        .ok_or(NotCosigned::BadCosignature);
                }
                409 if size_header => {
                    let held: u64 = String::from_utf8_lossy(&answer)
                        .trim()
                        .parse()
                        .map_err(|_| NotCosigned::Refused)?;
                    if held > size {
                        // Not kept (a lying witness must not silence
                        // itself), but said: a log behind its witness was
                        // rolled back.
                        return Err(NotCosigned::Ahead);
                    }
                    self.set_holds(Some(held));
                }
                409 => return Err(NotCosigned::OtherRoot),
                422 => return Err(NotCosigned::Inconsistent),
                403 => return Err(NotCosigned::Forbidden),
                404 => return Err(NotCosigned::UnknownLog),
                _ => return Err(NotCosigned::Refused),
            }
        }
        Err(NotCosigned::Refused)
    }

    /// One POST; (status, whether the answer is a `text/x.tlog.size`, body).
    async fn post(&self, body: String) -> Result<(u16, bool, Bytes), String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| e.to_string())?;
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                self.exchange(stream, body).await
            }
            None => self.exchange(tcp, body).await,
        }
    }

    async fn exchange<S>(&self, stream: S, body: String) -> Result<(u16, bool, Bytes), String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::post(&self.path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let size_header = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/x.tlog.size"));
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        driver.abort();
        Ok((status, size_header, bytes))
    }
}

/// A TLS client that trusts only `ca` (PEM).
fn client_tls(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{}: {e}", ca.display()))?
    {
        roots
            .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, key: &str) -> WitnessSettings {
        WitnessSettings {
            url: url.into(),
            key: key.into(),
            ca: None,
        }
    }

    #[test]
    fn witness_urls_and_keys_are_read_or_refused() {
        let key = CosignerKey::new("w.example/1", [9; 32]).unwrap().vkey();
        let w = Witness::new(&settings("http://127.0.0.1:7000/prefix/", &key)).unwrap();
        assert_eq!((w.host.as_str(), w.port), ("127.0.0.1", 7000));
        assert_eq!(w.path, "/prefix/add-checkpoint");
        let w = Witness::new(&settings("http://w.example", &key)).unwrap();
        assert_eq!((w.port, w.path.as_str()), (80, "/add-checkpoint"));
        for (url, vkey) in [
            ("https://w.example", key.as_str()),
            ("ftp://w.example", key.as_str()),
            ("http://w.example:port", key.as_str()),
            ("http://w.example", "w+00000000+AA=="),
        ] {
            assert!(Witness::new(&settings(url, vkey)).is_err(), "{url} {vkey}");
        }
    }
}
