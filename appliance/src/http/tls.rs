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

use rustls::sign::SingleCertAndKey;

use super::token_key::TokenTlsKey;
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
    /// What was loaded, as the audit log names it: `role sha256:HEX` for
    /// each CA certificate, CRL and the server's certificate (never a
    /// path: entries say what, not where on a host).
    pub loaded: Vec<String>,
}

/// `role sha256:HEX` of a DER object.
fn fingerprint(role: &str, der: &[u8]) -> String {
    format!(
        "{role} sha256:{}",
        crate::keys::view::hex(&openssl::sha::sha256(der))
    )
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The API listener's configuration: mTLS, CRLs, TLS 1.3 (1.2 if allowed),
/// and the officers' own CA if there is one. A server key in the token
/// (`private_key_label`) needs the `backend`; without one (`dojangd
/// validate` without `--probe`) only its certificate is read.
pub fn api_config(
    api: &ApiListener,
    backend: Option<&'static dyn pkcs11_shim::KeyBackend>,
) -> Result<ListenerTls, TlsError> {
    let provider = provider();
    let ClientTrust {
        verifier,
        officer_cas,
        mut loaded,
    } = client_verifier(api, &provider)?;
    let versions: &[&rustls::SupportedProtocolVersion] = if api.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| error(&api.certificate, e))?
        .with_client_cert_verifier(verifier);
    let chain = certificates(&api.certificate)?;
    loaded.extend(chain.first().map(|c| fingerprint("api-certificate", c)));
    let mut config = match (&api.private_key, &api.private_key_label, backend) {
        (Some(path), _, _) => builder
            .with_single_cert(chain, private_key(path)?)
            .map_err(|e| error(path, format!("certificate and key: {e}")))?,
        (None, Some(label), Some(backend)) => {
            let key = TokenTlsKey::certified(backend, label, chain)
                .map_err(|e| error(&api.certificate, e))?;
            builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(key)))
        }
        (None, Some(label), None) => {
            return Err(error(
                &api.certificate,
                format!("the TLS key {label:?} is in the token, which is not open here"),
            ));
        }
        (None, None, _) => {
            return Err(error(
                &api.certificate,
                "server.api needs private_key or private_key_label",
            ));
        }
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // No resumption: a resumed session would skip the client certificate's
    // check against the CRLs in force now (and against a reload since).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(ListenerTls {
        config: Arc::new(config),
        officer_cas: Arc::new(officer_cas),
        loaded,
    })
}

/// Whom the API trusts: the verifier of client certificates, the
/// officers' CA certificates, and fingerprints of what was read.
struct ClientTrust {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    officer_cas: Vec<openssl::x509::X509>,
    loaded: Vec<String>,
}

/// The API's client verifier: the services' CA, the officers' own if
/// configured, and the CRLs.
fn client_verifier(
    api: &ApiListener,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientTrust, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut loaded = Vec::new();
    for ca in certificates(&api.client_ca)? {
        loaded.push(fingerprint("client-ca", &ca));
        roots
            .add(ca)
            .map_err(|e| error(&api.client_ca, format!("client CA: {e}")))?;
    }
    let officer_cas = match &api.officer_ca {
        Some(path) => officers_ca(path, &api.client_ca, &mut roots)?,
        None => Vec::new(),
    };
    for ca in &officer_cas {
        if let Ok(der) = ca.to_der() {
            loaded.push(fingerprint("officer-ca", &der));
        }
    }
    let crls = api
        .client_crls
        .iter()
        .map(|p| crl(p))
        .collect::<Result<Vec<_>, _>>()?;
    loaded.extend(crls.iter().map(|c| fingerprint("client-crl", c)));
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
    Ok(ClientTrust {
        verifier,
        officer_cas,
        loaded,
    })
}

/// The officers' own CA certificates (`path`), added to `roots`; refused
/// if one shares a key with the services' CA (`client_ca`).
fn officers_ca(
    path: &Path,
    client_ca: &Path,
    roots: &mut RootCertStore,
) -> Result<Vec<openssl::x509::X509>, TlsError> {
    let spki = |cert: &openssl::x509::X509| cert.public_key()?.public_key_to_der();
    let services: Vec<Vec<u8>> = certificates(client_ca)?
        .iter()
        .filter_map(|c| spki(&openssl::x509::X509::from_der(c).ok()?).ok())
        .collect();
    let mut officer_cas = Vec::new();
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
    Ok(officer_cas)
}

/// The public listener's configuration, or `None` for plain HTTP.
pub fn public_config(public: &PublicListener) -> Result<Option<ListenerTls>, TlsError> {
    let (Some(cert), Some(key)) = (&public.certificate, &public.private_key) else {
        return Ok(None);
    };
    server_only(cert, key, "public-certificate").map(Some)
}

/// The wallet listener's TLS: TLS 1.3 or 1.2, no client certificate.
pub fn wallet_config(wallet: &crate::config::WalletListener) -> Result<ListenerTls, TlsError> {
    server_only(
        &wallet.certificate,
        &wallet.private_key,
        "wallet-certificate",
    )
}

/// A server certificate and key, no client authentication.
fn server_only(cert: &Path, key: &Path, name: &str) -> Result<ListenerTls, TlsError> {
    let chain = certificates(cert)?;
    let loaded = chain
        .first()
        .map(|c| fingerprint(name, c))
        .into_iter()
        .collect();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| error(cert, e))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key(key)?)
        .map_err(|e| error(key, format!("certificate and key: {e}")))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(ListenerTls {
        config: Arc::new(config),
        officer_cas: Arc::new(Vec::new()),
        loaded,
    })
}
