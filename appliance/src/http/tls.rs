//! TLS for the listeners (rustls with the ring provider): the API requires a
//! client certificate from the configured CAs and checks it against their
//! CRLs; the public listener only authenticates the server. Everything is
//! read from files so that SIGHUP can build a new configuration and swap it
//! in whole, or refuse it and keep the old one.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::{ApiListener, PublicListener};

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The file (or setting) at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, e))?;
    if certs.is_empty() {
        return Err(error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| error(path, format!("private key: {e}")))
}

fn crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| error(path, e))?;
    if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(&bytes).map_err(|e| error(path, e))
    } else {
        Ok(CertificateRevocationListDer::from(bytes))
    }
}

/// A listener's TLS: the rustls configuration, and the officers' own CA
/// certificates when the API keeps officers apart (empty otherwise).
#[derive(Clone)]
pub struct ListenerTls {
    /// The rustls server configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// Certificates of `server.api.officer_ca`.
    pub officer_cas: Arc<Vec<openssl::x509::X509>>,
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The API listener's configuration: mTLS, CRLs, TLS 1.3 (1.2 if allowed),
/// and the officers' own CA if there is one.
pub fn api_config(api: &ApiListener) -> Result<ListenerTls, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in certificates(&api.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| error(&api.client_ca, format!("client CA: {e}")))?;
    }
    let mut officer_cas = Vec::new();
    if let Some(path) = &api.officer_ca {
        let spki = |cert: &openssl::x509::X509| cert.public_key()?.public_key_to_der();
        let services: Vec<Vec<u8>> = certificates(&api.client_ca)?
            .iter()
            .filter_map(|c| spki(&openssl::x509::X509::from_der(c).ok()?).ok())
            .collect();
        for ca in certificates(path)? {
            let cert = openssl::x509::X509::from_der(&ca)
                .map_err(|e| error(path, format!("officer CA: {e}")))?;
            let key = spki(&cert).map_err(|e| error(path, format!("officer CA: {e}")))?;
            if services.contains(&key) {
                return Err(error(
                    path,
                    "the officers' CA shares a key with client_ca: it would make every service an officer",
                ));
            }
            officer_cas.push(cert);
            roots
                .add(ca)
                .map_err(|e| error(path, format!("officer CA: {e}")))?;
        }
    }
    let crls = api
        .client_crls
        .iter()
        .map(|p| crl(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        // A CRL past its nextUpdate refuses every client: a stale list would
        // let a revoked client in.
        verifier = verifier.with_crls(crls).enforce_revocation_expiration();
    }
    let verifier = verifier
        .build()
        .map_err(|e| error(&api.client_ca, format!("client verifier: {e}")))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if api.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| error(&api.certificate, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates(&api.certificate)?,
            private_key(&api.private_key)?,
        )
        .map_err(|e| error(&api.private_key, format!("certificate and key: {e}")))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(ListenerTls {
        config: Arc::new(config),
        officer_cas: Arc::new(officer_cas),
    })
}

/// The public listener's configuration, or `None` for plain HTTP.
pub fn public_config(public: &PublicListener) -> Result<Option<ListenerTls>, TlsError> {
    let (Some(cert), Some(key)) = (&public.certificate, &public.private_key) else {
        return Ok(None);
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| error(cert, e))?
        .with_no_client_auth()
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| error(key, format!("certificate and key: {e}")))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Some(ListenerTls {
        config: Arc::new(config),
        officer_cas: Arc::new(Vec::new()),
    }))
}
