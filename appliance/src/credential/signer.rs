//! The one place credentials meet a key: a document-signer key in the
//! token with its certificate. The algorithm comes from the key, so a
//! credential can only ever name the algorithm its key really uses.

use pkcs11_shim::KeyBackend;
use time::OffsetDateTime;

use super::CredentialError;
use super::algorithm::SignatureAlgorithm;
use super::jws::JwsHeader;
use crate::pki::DsCertificate;

/// A document-signer key and its certificate.
pub struct DocumentSigner<'a> {
    backend: &'a dyn KeyBackend,
    certificate: DsCertificate,
    algorithm: SignatureAlgorithm,
    kid: String,
    jws_header: JwsHeader,
}

impl<'a> DocumentSigner<'a> {
    /// Pairs the key labelled like the certificate with it, checking that the
    /// certificate certifies this very key and the key is a DS key.
    pub fn new(
        backend: &'a dyn KeyBackend,
        certificate: DsCertificate,
    ) -> Result<Self, CredentialError> {
        let key = backend.find(&certificate.label)?;
        pkcs11_shim::prove_possession(backend, &key)?;
        if key.purpose != pkcs11_shim::KeyPurpose::DocumentSigner {
            return Err(CredentialError::Invalid(format!(
                "key {:?} is a {} key, not a document signer",
                key.label, key.purpose
            )));
        }
        let public = key
            .public_key
            .ok_or_else(|| CredentialError::Invalid("a DS key has a public key".into()))?;
        let cert_key = openssl::x509::X509::from_der(&certificate.der)
            .and_then(|c| c.public_key())
            .and_then(|k| k.public_key_to_der())
            .map_err(|e| CredentialError::Invalid(format!("DS certificate: {e}")))?;
        if cert_key != public.spki_der() {
            return Err(CredentialError::Invalid(format!(
                "the DS certificate {:?} does not certify the key of that label",
                certificate.label
            )));
        }
        let algorithm = SignatureAlgorithm::of_key(key.algorithm)?;
        let kid = public.kid();
        Ok(DocumentSigner {
            backend,
            jws_header: JwsHeader::new(algorithm, &kid, &certificate.der),
            algorithm,
            kid,
            certificate,
        })
    }

    /// Signs a signing input the builders produced; raw signature out.
    pub fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, CredentialError> {
        Ok(self.backend.sign(
            &self.certificate.label,
            pkcs11_shim::KeyPurpose::DocumentSigner,
            signing_input,
        )?)
    }

    /// The algorithm every signature of this signer uses.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// The DS certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate.der
    }

    /// The key's `kid` (JWK thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The SD-JWT VC header for this key, encoded.
    pub fn jws_header(&self) -> &JwsHeader {
        &self.jws_header
    }

    /// The key's label.
    pub fn label(&self) -> &str {
        &self.certificate.label
    }

    /// The DS certificate's notAfter: no signature may be valid longer.
    pub fn not_after(&self) -> OffsetDateTime {
        self.certificate.facts.not_after
    }

    /// The DS certificate's (notBefore, notAfter): no signature may claim
    /// a time outside it.
    pub fn certificate_window(&self) -> (OffsetDateTime, OffsetDateTime) {
        (
            self.certificate.facts.not_before,
            self.certificate.facts.not_after,
        )
    }
}
