//! rcgen's view of a key in the token: certificates and CRLs are signed by
//! the backend, never by a key in memory.

use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose, PublicKey, ecdsa_raw_to_der};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};

use super::error::PkiError;

/// A token key as an rcgen signer. X.509 carries DER ECDSA signatures, so
/// the raw `r || s` from the token is converted here.
pub struct HsmKey<'a> {
    backend: &'a dyn KeyBackend,
    label: String,
    purpose: KeyPurpose,
    public: PublicKey,
    algorithm: &'static SignatureAlgorithm,
}

impl<'a> HsmKey<'a> {
    /// Looks the key up in the token; it must have been made for
    /// `purpose` (the IACA signs certificates and CRLs, a DS key only its
    /// own certificate request).
    pub fn find(
        backend: &'a dyn KeyBackend,
        label: &str,
        purpose: KeyPurpose,
    ) -> Result<Self, PkiError> {
        let info = backend.find(label)?;
        if info.purpose != purpose {
            return Err(pkcs11_shim::Error::WrongPurpose {
                label: label.to_owned(),
                actual: info.purpose.name(),
                expected: purpose.name(),
            }
            .into());
        }
        pkcs11_shim::prove_possession(backend, &info)?;
        let public = info
            .public_key
            .ok_or_else(|| PkiError::Invalid(format!("key {label:?} is not a signing key")))?;
        let algorithm = signature_algorithm(info.algorithm)?;
        Ok(HsmKey {
            backend,
            label: label.to_owned(),
            purpose,
            public,
            algorithm,
        })
    }

    /// The key's public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The key's label.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// The key a certificate is issued for, known by its public half only:
/// a DS key in the online token, certified at an offline ceremony from
/// its certificate request.
pub struct SubjectKey {
    public: PublicKey,
    algorithm: &'static SignatureAlgorithm,
}

fn signature_algorithm(algorithm: Algorithm) -> Result<&'static SignatureAlgorithm, PkiError> {
    match algorithm {
        Algorithm::Es256 => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
        Algorithm::Es384 => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
        Algorithm::EdDsa => Ok(&rcgen::PKCS_ED25519),
        other => Err(PkiError::Invalid(format!(
            "{other} cannot sign certificates"
        ))),
    }
}

impl SubjectKey {
    /// The key `public`.
    pub fn new(public: PublicKey) -> Result<Self, PkiError> {
        let algorithm = signature_algorithm(public.algorithm())?;
        Ok(SubjectKey { public, algorithm })
    }

    /// Its public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        self.public.raw()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl PublicKeyData for HsmKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.public.raw()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl SigningKey for HsmKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let raw = self
            .backend
            .sign(&self.label, self.purpose, msg)
            .map_err(|e| {
                // rcgen's error cannot carry ours; keep the cause in the log.
                tracing::error!(error = %e, "signing a certificate in the token failed");
                rcgen::Error::RemoteKeyError
            })?;
        match self.public.algorithm() {
            Algorithm::EdDsa => Ok(raw),
            _ => ecdsa_raw_to_der(&raw).map_err(|_| rcgen::Error::RemoteKeyError),
        }
    }
}
