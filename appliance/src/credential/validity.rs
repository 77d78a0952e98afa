//! The issuer signature's validity window ([`SignatureValidity`]), which
//! every format carries and which never outlives the DS certificate.

use time::OffsetDateTime;

use super::CredentialError;

/// When the issuer's signature is valid (MSO `validityInfo`, JWT `iat`/`nbf`/`exp`).
/// Distinct from the document's own three-year validity, which is a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureValidity {
    /// When the credential was signed.
    pub signed: OffsetDateTime,
    /// Not valid before.
    pub valid_from: OffsetDateTime,
    /// Not valid after; never later than the DS certificate's notAfter.
    pub valid_until: OffsetDateTime,
}

impl SignatureValidity {
    /// From `now` for `days`, cut at `limit` (the DS certificate's notAfter).
    pub fn starting(
        now: OffsetDateTime,
        days: u32,
        limit: OffsetDateTime,
    ) -> Result<Self, CredentialError> {
        let signed = now.replace_nanosecond(0).unwrap_or(now);
        let wanted = signed + time::Duration::days(i64::from(days));
        let valid_until = wanted.min(limit);
        if valid_until <= signed {
            return Err(CredentialError::Invalid(
                "the document-signer certificate has expired: issue a new one".into(),
            ));
        }
        Ok(SignatureValidity {
            signed,
            valid_from: signed,
            valid_until,
        })
    }
}
