//! Who may call the appliance: one `[[clients]]` entry per certificate
//! identity, its roles, and (officers) the approval key it signs with.

use serde::Deserialize;

/// One client identity and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRule {
    /// URI SAN (else DNS SAN) of the client certificate.
    pub identity: String,
    /// `issuer`, `revoker`, `officer`, `auditor`.
    pub roles: Vec<Role>,
    /// Profiles it may request (issuers).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// An officer's approval key, pinned: base64 of the DER
    /// SubjectPublicKeyInfo of a P-256 key held in the officer's own token
    /// (`dojangctl officer enroll` prints it). Required for officers, refused
    /// for anyone else.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// The districts (10-digit codes) an issuer issues for: an ID office's
    /// counter names its own, and a request naming another district is
    /// refused (`client.municipality`). Empty: any (a central service).
    #[serde(default)]
    pub municipalities: Vec<String>,
}

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Issue and refresh credentials.
    Issuer,
    /// Revoke, suspend, reinstate.
    Revoker,
    /// Key ceremonies and approvals.
    Officer,
    /// Read the audit log.
    Auditor,
}
