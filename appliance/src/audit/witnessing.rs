//! This node's side of c2sp.org/tlog-witness: each new checkpoint goes to
//! the configured witnesses with a consistency proof from the size each
//! holds; the cosignatures that verify under their keys are added to the
//! stored checkpoint (so every node, the public `/checkpoint` and the
//! mirror publish them). Whether the latest checkpoint has its quorum shows
//! in readiness and in metrics; a witness refusing a checkpoint as a fork
//! is counted and logged as one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;

use super::log::AuditLog;
use super::witness::{AddCheckpoint, CosignerKey};
use crate::config::{AuditSettings, WitnessSettings};
use crate::metrics::Metrics;
use crate::node::LoadError;
use crate::store::Registry;

/// How long one witness may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a checkpoint that missed a witness is sent again (doubled
/// after each round that missed one, up to [`MAX_RETRY`]).
const RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(16);
/// The largest answer read from a witness.
const MAX_ANSWER: usize = 16 * 1024;

/// One configured witness.
struct Witness {
    key: CosignerKey,
    host: String,
    port: u16,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The size it said it holds (`None`: not asked yet; 0 is sent).
    holds: Mutex<Option<u64>>,
}

/// What the last round made of the latest checkpoint.
#[derive(Debug, Clone, Default)]
struct Round {
    size: u64,
    cosigned: Vec<String>,
    refused: Vec<(String, String)>,
    at: Option<Instant>,
    /// Rounds in a row that missed a witness.
    misses: u32,
}

/// The witnesses of this node's log.
pub struct Witnesses {
    witnesses: Vec<Witness>,
    quorum: usize,
    required: bool,
    last: Mutex<Round>,
}

impl Witnesses {
    /// The witnesses `settings` names (none: a node without witnesses).
    pub fn new(settings: &AuditSettings) -> Result<Self, LoadError> {
        let witnesses = settings
            .witnesses
            .iter()
            .map(Witness::new)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, w) in witnesses.iter().enumerate() {
            if witnesses
                .iter()
                .take(i)
                .any(|o| o.key.name() == w.key.name())
            {
                return Err(LoadError(format!(
                    "server.audit.witnesses names {} twice: one witness would count twice",
                    w.key.name()
                )));
            }
        }
        Ok(Witnesses {
            witnesses,
            quorum: settings.quorum(),
            required: settings.require_witness_quorum,
            last: Mutex::new(Round::default()),
        })
    }

    /// Whether any witness is configured.
    pub fn any(&self) -> bool {
        !self.witnesses.is_empty()
    }

    /// Sends the latest checkpoint to each witness that has not cosigned
    /// it yet, all at once (again after a back-off if one did not), and
    /// stores the cosignatures that verify, one per witness.
    pub fn round(&self, registry: &dyn Registry, metrics: &Metrics) {
        if self.witnesses.is_empty() {
            return;
        }
        let Ok(Some((size, note))) = registry.latest_checkpoint() else {
            return;
        };
        let Some((body, signatures)) = note.split_once("\n\n") else {
            return;
        };
        let body = format!("{body}\n");
        let has = |w: &Witness| w.key.verify(&body, signatures).is_ok();
        let misses = match self.last.lock() {
            Ok(last) if last.size == size => {
                let wait = RETRY.saturating_mul(1 << last.misses.min(3)).min(MAX_RETRY);
                if self.witnesses.iter().all(has) || last.at.is_some_and(|at| at.elapsed() < wait) {
                    return;
                }
                last.misses
            }
            _ => 0,
        };
        let missing: Vec<&Witness> = self.witnesses.iter().filter(|w| !has(w)).collect();
        let asked = ask_all(&missing, registry, size, &note, &body);
        let mut round = Round {
            size,
            at: Some(Instant::now()),
            ..Round::default()
        };
        let mut added = Vec::new();
        for (w, answer) in asked {
            match answer {
                Ok(line) => added.push((w, line)),
                Err(reason) => {
                    tracing::warn!(witness = %w.key.name(), size, reason = reason.explain(), "a witness did not cosign the audit checkpoint");
                    metrics
                        .audit_witness_refusals
                        .with_label_values(&[w.key.name(), reason.label()])
                        .inc();
                    round
                        .refused
                        .push((w.key.name().to_owned(), reason.explain().to_owned()));
                }
            }
        }
        let stored = self.store(registry, size, &note, &added);
        let stored_signatures = stored.split_once("\n\n").map_or("", |(_, s)| s);
        for w in &self.witnesses {
            let cosigned = w.key.verify(&body, stored_signatures).is_ok();
            if cosigned {
                round.cosigned.push(w.key.name().to_owned());
            }
            metrics
                .audit_witness_cosigned
                .with_label_values(&[w.key.name()])
                .set(i64::from(cosigned));
        }
        metrics
            .audit_witness_quorum_met
            .set(i64::from(round.cosigned.len() >= self.quorum));
        round.misses = if round.cosigned.len() < self.witnesses.len() {
            misses.saturating_add(1)
        } else {
            0
        };
        if let Ok(mut last) = self.last.lock() {
            *last = round;
        }
    }

    /// Stores the note with `added` cosignatures if it is still `note`;
    /// the note as stored. Only cosignatures stored count: another node
    /// may have changed it meanwhile (the next round reads it again).
    fn store(
        &self,
        registry: &dyn Registry,
        size: u64,
        note: &str,
        added: &[(&Witness, String)],
    ) -> String {
        let Some((body, signatures)) = note.split_once("\n\n") else {
            return note.to_owned();
        };
        if added.is_empty() {
            return note.to_owned();
        }
        let cosigned = self.merged(&format!("{body}\n"), signatures, added);
        match registry.cosign_checkpoint(size, note, &cosigned) {
            Ok(true) => cosigned,
            Ok(false) => note.to_owned(),
            Err(e) => {
                tracing::warn!(error = %e, "storing the witnesses' cosignatures");
                note.to_owned()
            }
        }
    }

    /// The note with `added` cosignatures: the log's own lines and those of
    /// keys it does not know kept, at most one valid line per configured
    /// witness (a planted line under a witness's name that does not verify
    /// is dropped, so nobody can make the note grow round after round).
    fn merged(&self, body: &str, signatures: &str, added: &[(&Witness, String)]) -> String {
        let mut kept: Vec<&str> = Vec::new();
        let mut present: Vec<&str> = Vec::new();
        for line in signatures.lines() {
            match self.witnesses.iter().find(|w| w.key.claims(line)) {
                None => kept.push(line),
                Some(w) if !present.contains(&w.key.name()) && w.key.verify(body, line).is_ok() => {
                    present.push(w.key.name());
                    kept.push(line);
                }
                Some(_) => {}
            }
        }
        for (w, line) in added {
            if !present.contains(&w.key.name()) {
                present.push(w.key.name());
                kept.push(line.trim_end());
            }
        }
        let mut note = format!("{body}\n");
        for line in kept {
            note.push_str(line);
            note.push('\n');
        }
        note
    }

    /// For readiness: whether the latest checkpoint sent has its quorum,
    /// and what each witness said (`None` without witnesses).
    pub fn status(&self) -> Option<(bool, String)> {
        if self.witnesses.is_empty() {
            return None;
        }
        let last = self.last.lock().ok()?.clone();
        if last.at.is_none() {
            return Some((true, "no checkpoint sent to the witnesses yet".into()));
        }
        let mut detail = format!(
            "checkpoint {}: cosigned by {} of {} witnesses (quorum {})",
            last.size,
            last.cosigned.len(),
            self.witnesses.len(),
            self.quorum
        );
        for (name, why) in &last.refused {
            detail.push_str(&format!("; {name}: {why}"));
        }
        let met = last.cosigned.len() >= self.quorum;
        if !met && !self.required {
            // Not a failure: a witness down must not stop issuance unless
            // the operator says so (`require_witness_quorum`).
            detail = format!("WARNING: quorum not met: {detail}");
        }
        Some((met || !self.required, detail))
    }
}

/// Asks each of `witnesses` at once, each on a thread of its own.
fn ask_all<'w>(
    witnesses: &[&'w Witness],
    registry: &dyn Registry,
    size: u64,
    note: &str,
    body: &str,
) -> Vec<(&'w Witness, Result<String, NotCosigned>)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = witnesses
            .iter()
            .map(|w| (*w, scope.spawn(|| w.ask(registry, size, note, body))))
            .collect();
        handles
            .into_iter()
            .map(|(w, h)| (w, h.join().unwrap_or(Err(NotCosigned::Unreachable))))
            .collect()
    })
}

/// Why a witness gave no cosignature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotCosigned {
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
    fn label(self) -> &'static str {
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

    fn explain(self) -> &'static str {
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
    fn new(settings: &WitnessSettings) -> Result<Self, LoadError> {
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

    /// [`Witness::cosign`] on a runtime of its own (each witness is asked
    /// on its own thread, so a slow one delays nobody else).
    fn ask(
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
        let answer = runtime.block_on(self.cosign(registry, size, note, body));
        if answer.is_err()
            && let Ok(mut holds) = self.holds.lock()
        {
            // Asked afresh next time: it says what it holds.
            *holds = None;
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
            let (status, size_header, answer) =
                tokio::time::timeout(TIMEOUT, self.post(request.encode()))
                    .await
                    .map_err(|_| NotCosigned::Unreachable)?
                    .map_err(|_| NotCosigned::Unreachable)?;
            match status {
                200 => {
                    let lines = String::from_utf8_lossy(&answer);
                    if let Ok(mut holds) = self.holds.lock() {
                        *holds = Some(size);
                    }
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
                    if let Ok(mut holds) = self.holds.lock() {
                        *holds = Some(held);
                    }
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

    fn signed_line(
        key: &openssl::pkey::PKey<openssl::pkey::Private>,
        w: &CosignerKey,
        body: &str,
    ) -> String {
        let message = super::super::witness::cosigned_message(body, 1_800_000_000);
        let signature = openssl::sign::Signer::new_without_digest(key)
            .unwrap()
            .sign_oneshot_to_vec(&message)
            .unwrap();
        w.line(1_800_000_000, &signature)
    }

    #[test]
    fn a_note_keeps_one_valid_line_per_witness_and_drops_planted_ones() {
        let private = openssl::pkey::PKey::generate_ed25519().unwrap();
        let public: [u8; 32] = private.raw_public_key().unwrap().try_into().unwrap();
        let key = CosignerKey::new("w.example/1", public).unwrap();
        let settings = AuditSettings {
            witnesses: vec![settings("http://w.example", &key.vkey())],
            ..AuditSettings::default()
        };
        let witnesses = Witnesses::new(&settings).unwrap();
        let body = "log\n2\nAAAA\n";
        let log_line = "\u{2014} log AAAAAAAA";
        let planted = key.line(5, &[0; 64]);
        let good = signed_line(&private, &key, body);
        let signatures = format!("{log_line}\n{planted}");
        let added = [(&witnesses.witnesses[0], good.clone())];
        let note = witnesses.merged(body, &signatures, &added);
        assert_eq!(note, format!("{body}\n{log_line}\n{good}"));
        // Already there: nothing more is added, however often it is asked.
        let again = witnesses.merged(body, note.split_once("\n\n").unwrap().1, &added);
        assert_eq!(again, note);
    }

    #[test]
    fn a_missed_quorum_warns_unless_the_operator_requires_it() {
        let key = CosignerKey::new("w.example/1", [9; 32]).unwrap();
        for required in [false, true] {
            let settings = AuditSettings {
                witnesses: vec![settings("http://w.example", &key.vkey())],
                require_witness_quorum: required,
                ..AuditSettings::default()
            };
            let witnesses = Witnesses::new(&settings).unwrap();
            assert_eq!(
                witnesses.status().map(|s| s.0),
                Some(true),
                "before any round"
            );
            *witnesses.last.lock().unwrap() = Round {
                size: 7,
                refused: vec![("w.example/1".into(), "unreachable".into())],
                at: Some(Instant::now()),
                ..Round::default()
            };
            let (ok, detail) = witnesses.status().unwrap();
            assert_eq!(ok, !required, "{detail}");
            assert!(detail.contains("w.example/1: unreachable"), "{detail}");
            assert_eq!(detail.starts_with("WARNING"), !required, "{detail}");
        }
        let twice = AuditSettings {
            witnesses: vec![
                settings("http://a", &key.vkey()),
                settings("http://b", &key.vkey()),
            ],
            ..AuditSettings::default()
        };
        assert!(Witnesses::new(&twice).is_err());
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
