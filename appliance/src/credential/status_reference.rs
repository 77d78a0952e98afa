//! Where a credential points verifiers for its revocation status
//! ([`StatusReference`]), as both formats carry it.

/// Where a verifier checks the credential's revocation status (IETF Token
/// Status List): index `idx` in the list published at `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReference {
    /// Index in the list.
    pub idx: u64,
    /// The list's URI.
    pub uri: String,
}
