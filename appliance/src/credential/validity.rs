//! The issuer signature's validity window ([`SignatureValidity`]), which
//! every format carries and which never outlives the DS certificate.
//!
//! Its times say when a credential was signed to the day only: the exact
//! second would single a holder out among those issued that day (a
//! verifier or a colluding office could match it to a counter visit).

use time::{OffsetDateTime, Time, UtcOffset};

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
    /// Signed at the start of `now`'s day in Asia/Seoul (never before the
    /// DS certificate's notBefore, never after `now`), valid for `days`
    /// from then, cut at the certificate's notAfter. `certificate` is the
    /// DS certificate's (notBefore, notAfter).
    pub fn starting(
        now: OffsetDateTime,
        days: u32,
        certificate: (OffsetDateTime, OffsetDateTime),
    ) -> Result<Self, CredentialError> {
        let (not_before, limit) = certificate;
        let signed = seoul_day_start(now).max(not_before).min(now);
        let signed = signed.replace_nanosecond(0).unwrap_or(signed);
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

/// Asia/Seoul: UTC+9 all year (no daylight saving since 1988).
const SEOUL: UtcOffset = time::macros::offset!(+9);

/// Midnight in Seoul of the day `at` falls on, as an instant.
fn seoul_day_start(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(SEOUL).replace_time(Time::MIDNIGHT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_signing_time_is_the_seoul_day_never_after_now_nor_before_the_certificate() {
        let cert = (
            datetime!(2026-01-01 0:00 UTC),
            datetime!(2027-01-01 0:00 UTC),
        );
        // 2026-06-10 14:37:21 UTC is 23:37:21 in Seoul: that Seoul day began
        // at 2026-06-09 15:00 UTC.
        let v =
            SignatureValidity::starting(datetime!(2026-06-10 14:37:21.5 UTC), 90, cert).unwrap();
        assert_eq!(v.signed, datetime!(2026-06-09 15:00 UTC));
        assert_eq!(v.valid_from, v.signed);
        assert_eq!(v.valid_until, datetime!(2026-09-07 15:00 UTC));
        // 15:10 UTC is the next Seoul day.
        let v = SignatureValidity::starting(datetime!(2026-06-10 15:10 UTC), 90, cert).unwrap();
        assert_eq!(v.signed, datetime!(2026-06-10 15:00 UTC));
        // A certificate issued that morning: signed from its notBefore.
        let fresh = (datetime!(2026-06-10 16:30:05 UTC), cert.1);
        let v = SignatureValidity::starting(datetime!(2026-06-10 18:00 UTC), 90, fresh).unwrap();
        assert_eq!(v.signed, fresh.0);
        // Cut at the certificate's end; refused past it.
        let ending = (cert.0, datetime!(2026-07-01 0:00 UTC));
        let v = SignatureValidity::starting(datetime!(2026-06-10 3:00 UTC), 90, ending).unwrap();
        assert_eq!(v.valid_until, ending.1);
        assert!(SignatureValidity::starting(datetime!(2026-07-02 0:00 UTC), 90, ending).is_err());
    }
}
