//! Certificate requests for DS keys born in the online token: the request
//! is signed by the key itself (proof of possession), so the offline
//! ceremony certifies only keys the daemon's token holds.

use openssl::x509::X509Req;
use pkcs11_shim::PublicKey;
use rcgen::{CertificateParams, DistinguishedName, DnType};

use super::error::PkiError;
use super::signer::HsmKey;

/// A PKCS#10 request (DER) for `key`, signed by it; the subject names its
/// label (the certificate's subject is the ceremony's to write).
pub fn certificate_request(key: &HsmKey<'_>) -> Result<Vec<u8>, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, key.label());
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(key)
        .map_err(|e| PkiError::Build(format!("certificate request for {}: {e}", key.label())))?;
    Ok(csr.der().to_vec())
}

/// The public key of a request whose signature verifies with that key;
/// an error for anything else.
pub fn requested_key(der: &[u8]) -> Result<PublicKey, PkiError> {
    let request = X509Req::from_der(der)
        .map_err(|e| PkiError::Invalid(format!("not a certificate request: {e}")))?;
    let key = request
        .public_key()
        .map_err(|e| PkiError::Invalid(format!("certificate request key: {e}")))?;
    if !request.verify(&key).unwrap_or(false) {
        return Err(PkiError::Invalid(
            "the certificate request's signature does not verify with its own key (no proof of possession)"
                .into(),
        ));
    }
    let spki = key
        .public_key_to_der()
        .map_err(|e| PkiError::Invalid(e.to_string()))?;
    PublicKey::from_spki_der(&spki).map_err(|e| PkiError::Invalid(e.to_string()))
}
