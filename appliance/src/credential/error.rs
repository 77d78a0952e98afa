//! The one error of building or signing a credential ([`CredentialError`]).

/// An error building or signing a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The input was refused (bad device key, bad claim value…).
    #[error("{0}")]
    Invalid(String),
    /// Encoding failed (a bug, or a value CBOR/JSON cannot carry).
    #[error("encoding the credential: {0}")]
    Encoding(String),
    /// The key layer failed to sign.
    #[error(transparent)]
    Key(#[from] pkcs11_shim::Error),
}
