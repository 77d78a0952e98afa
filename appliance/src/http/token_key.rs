//! The API's TLS server key held in the token (`server.api.
//! private_key_label`): rustls asks it to sign each handshake, the token
//! signs, and no key file exists that a host copy could use to impersonate
//! the appliance to the backends that send it residents' data.

use std::sync::Arc;

use pkcs11_shim::{KeyBackend, KeyPurpose, ecdsa_raw_to_der};
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

/// A `tls-server` key in the token (ES256).
#[derive(Clone)]
pub(super) struct TokenTlsKey {
    backend: &'static dyn KeyBackend,
    label: String,
    spki: Vec<u8>,
}

impl std::fmt::Debug for TokenTlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTlsKey({:?})", self.label)
    }
}

impl TokenTlsKey {
    /// The key `label`, which must be a `tls-server` P-256 key whose public
    /// half is the first certificate's in `chain`.
    pub(super) fn certified(
        backend: &'static dyn KeyBackend,
        label: &str,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<CertifiedKey, String> {
        let info = backend
            .find(label)
            .map_err(|e| format!("the TLS key {label:?} in the token: {e}"))?;
        if info.purpose != KeyPurpose::TlsServer || info.algorithm != pkcs11_shim::Algorithm::Es256
        {
            return Err(format!(
                "token key {label:?} is a {} {} key, not a tls-server ES256 key",
                info.purpose, info.algorithm
            ));
        }
        let spki = info
            .public_key
            .ok_or("the TLS key has no public half")?
            .spki_der()
            .to_vec();
        let leaf = chain.first().ok_or("no certificate")?;
        let certified = openssl::x509::X509::from_der(leaf)
            .and_then(|c| c.public_key())
            .and_then(|k| k.public_key_to_der())
            .map_err(|e| format!("certificate: {e}"))?;
        if certified != spki {
            return Err(format!(
                "the certificate is not for the token's key {label:?} (issue one for its public key)"
            ));
        }
        let key = TokenTlsKey {
            backend,
            label: label.to_owned(),
            spki,
        };
        Ok(CertifiedKey::new(chain, Arc::new(key)))
    }
}

impl SigningKey for TokenTlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for TokenTlsKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // The token hashes nothing: the shim hashes with SHA-256 and the
        // token signs the digest; TLS wants the signature in DER.
        let raw = self
            .backend
            .sign(&self.label, KeyPurpose::TlsServer, message)
            .map_err(|e| rustls::Error::General(format!("TLS key in the token: {e}")))?;
        ecdsa_raw_to_der(&raw).map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}
