//! The signature algorithms a credential may carry ([`SignatureAlgorithm`]),
//! and their JOSE, COSE and key-layer names.

use pkcs11_shim::Algorithm;

use super::CredentialError;

/// Signature algorithms a credential may carry. There is no `none` and no
/// MAC: they cannot be requested, so they cannot be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// ECDSA P-256 / SHA-256.
    Es256,
    /// ECDSA P-384 / SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl SignatureAlgorithm {
    /// The JOSE `alg`.
    pub fn jose(self) -> &'static str {
        match self {
            SignatureAlgorithm::Es256 => "ES256",
            SignatureAlgorithm::Es384 => "ES384",
            SignatureAlgorithm::EdDsa => "EdDSA",
        }
    }

    /// The COSE algorithm.
    pub fn cose(self) -> coset::iana::Algorithm {
        match self {
            SignatureAlgorithm::Es256 => coset::iana::Algorithm::ES256,
            SignatureAlgorithm::Es384 => coset::iana::Algorithm::ES384,
            SignatureAlgorithm::EdDsa => coset::iana::Algorithm::EdDSA,
        }
    }

    /// From a key's algorithm; refuses what is not a signature algorithm.
    /// The key algorithm that makes these signatures.
    pub fn key_algorithm(self) -> Algorithm {
        match self {
            SignatureAlgorithm::Es256 => Algorithm::Es256,
            SignatureAlgorithm::Es384 => Algorithm::Es384,
            SignatureAlgorithm::EdDsa => Algorithm::EdDsa,
        }
    }

    /// The signature algorithm of a key.
    pub fn of_key(algorithm: Algorithm) -> Result<Self, CredentialError> {
        match algorithm {
            Algorithm::Es256 => Ok(SignatureAlgorithm::Es256),
            Algorithm::Es384 => Ok(SignatureAlgorithm::Es384),
            Algorithm::EdDsa => Ok(SignatureAlgorithm::EdDsa),
            other => Err(CredentialError::Invalid(format!(
                "{other} keys cannot sign credentials"
            ))),
        }
    }
}
