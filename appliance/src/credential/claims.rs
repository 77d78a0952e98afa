//! The claims of a Korean mobile resident registration card, derived from
//! the holder's data at issuance. Names are normalised to Unicode NFC so
//! that a name typed in NFD (e.g. on macOS) yields the same credential.
//!
//! The full resident number goes in and only its masked form
//! (`YYMMDD-G******`) comes out: the full number is never a claim.

use dojang_policies::calendar;
use dojang_policies::resident_number::{Registrant, ResidentNumber};
use time::Date;
use unicode_normalization::UnicodeNormalization;

use super::CredentialError;

/// Longest name or address accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 200;
/// Largest portrait accepted (JPEG bytes).
pub const MAX_PORTRAIT_BYTES: usize = 256 * 1024;

/// What the issuing office knows about the holder.
#[derive(Clone)]
pub struct HolderData {
    /// Family name (Hangul), any normalisation form.
    pub family_name: String,
    /// Given name (Hangul), any normalisation form.
    pub given_name: String,
    /// The resident registration number.
    pub resident_number: ResidentNumber,
    /// Registered address.
    pub address: String,
    /// Portrait (JPEG), optional.
    pub portrait: Option<Vec<u8>>,
}

impl std::fmt::Debug for HolderData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HolderData(<personal data redacted>)")
    }
}

/// The claims every format carries. Personal data: `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ResidentCardClaims {
    /// Family name, NFC.
    pub family_name: String,
    /// Given name, NFC.
    pub given_name: String,
    /// Birth date (from the resident number).
    pub birth_date: Date,
    /// 17 or older on the issue date (Seoul).
    pub age_over_17: bool,
    /// 18 or older on the issue date (Seoul).
    pub age_over_18: bool,
    /// `YYMMDD-G******`.
    pub resident_number_masked: String,
    /// Registered address, NFC.
    pub address: String,
    /// Issue date of the document (Seoul).
    pub issue_date: Date,
    /// Last day the document is valid.
    pub expiry_date: Date,
    /// Issuing authority, NFC.
    pub issuing_authority: String,
    /// ISO 3166 alpha-2, "KR".
    pub issuing_country: String,
    /// Portrait (JPEG), optional.
    pub portrait: Option<Vec<u8>>,
}

/// A Korean address in its parts, where it reads as one: the province or
/// metropolitan city (`…도`, `…특별시`, `…광역시`, `…특별자치시/도`), the
/// city, county or district (`…시`, `…군`, `…구`), and the rest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AddressParts<'a> {
    /// 시/도: `서울특별시`.
    pub region: &'a str,
    /// 시/군/구: `종로구`.
    pub locality: &'a str,
    /// The rest: `세종대로 209`.
    pub street: &'a str,
}

const REGION_ENDINGS: [&str; 2] = ["도", "시"];
const LOCALITY_ENDINGS: [&str; 3] = ["시", "군", "구"];

impl ResidentCardClaims {
    /// The address in its parts, so each can be disclosed apart; `None`
    /// for an address that does not read as region, locality and street
    /// (it is still disclosed whole).
    pub fn address_parts(&self) -> Option<AddressParts<'_>> {
        let mut words = self.address.splitn(3, ' ');
        let (region, locality, street) = (words.next()?, words.next()?, words.next()?.trim());
        let ends = |word: &str, endings: &[&str]| endings.iter().any(|e| word.ends_with(e));
        (ends(region, &REGION_ENDINGS) && ends(locality, &LOCALITY_ENDINGS) && !street.is_empty())
            .then_some(AddressParts {
                region,
                locality,
                street,
            })
    }
}

impl std::fmt::Debug for ResidentCardClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResidentCardClaims(<personal data redacted>)")
    }
}

/// Unicode format characters (category Cf) a name or address never needs.
fn invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

fn clean(field: &str, value: &str) -> Result<String, CredentialError> {
    let nfc: String = value.trim().nfc().collect();
    if nfc.is_empty() || nfc.chars().count() > MAX_TEXT_CHARS {
        return Err(CredentialError::Invalid(format!(
            "{field} must be 1 to {MAX_TEXT_CHARS} characters"
        )));
    }
    if nfc.chars().any(char::is_control) {
        return Err(CredentialError::Invalid(format!(
            "{field} contains control characters"
        )));
    }
    // Invisible formatting (bidi overrides and isolates, zero-width
    // characters, the BOM) makes look-alike names: two holders' names that
    // read the same and differ in bytes.
    if nfc.chars().any(invisible_format) {
        return Err(CredentialError::Invalid(format!(
            "{field} contains invisible formatting characters (bidirectional or zero-width)"
        )));
    }
    Ok(nfc)
}

impl ResidentCardClaims {
    /// Derives the claims for a document issued on `issue_date` (Seoul) and
    /// valid `validity_years`.
    pub fn derive(
        holder: &HolderData,
        issue_date: Date,
        validity_years: u16,
        issuing_authority: &str,
    ) -> Result<Self, CredentialError> {
        if holder.resident_number.registrant() != Registrant::Citizen {
            return Err(CredentialError::Invalid(
                "the resident number is a foreign registration number; the card is for citizens"
                    .into(),
            ));
        }
        let birth_date = holder.resident_number.birth_date();
        if birth_date > issue_date {
            return Err(CredentialError::Invalid(
                "the birth date is after the issue date".into(),
            ));
        }
        if let Some(portrait) = &holder.portrait
            && (portrait.is_empty() || portrait.len() > MAX_PORTRAIT_BYTES)
        {
            return Err(CredentialError::Invalid(format!(
                "portrait must be 1 to {MAX_PORTRAIT_BYTES} bytes"
            )));
        }
        let age = calendar::age_on(birth_date, issue_date);
        Ok(ResidentCardClaims {
            family_name: clean("family_name", &holder.family_name)?,
            given_name: clean("given_name", &holder.given_name)?,
            birth_date,
            age_over_17: age >= 17,
            age_over_18: age >= 18,
            resident_number_masked: holder.resident_number.masked(),
            address: clean("address", &holder.address)?,
            issue_date,
            expiry_date: calendar::expiry_date(issue_date, validity_years)
                .ok_or_else(|| CredentialError::Invalid("expiry date out of range".into()))?,
            issuing_authority: clean("issuing_authority", issuing_authority)?,
            issuing_country: "KR".into(),
            portrait: holder.portrait.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn holder(family: &str, given: &str) -> HolderData {
        HolderData {
            family_name: family.into(),
            given_name: given.into(),
            resident_number: ResidentNumber::parse("091227-3123456").unwrap(),
            address: "서울특별시 종로구 세종대로 209".into(),
            portrait: None,
        }
    }

    #[test]
    fn nfd_and_nfc_names_give_the_same_claims() {
        let nfc = holder("김", "민준");
        let nfd = holder(
            &"김".nfd().collect::<String>(),
            &"민준".nfd().collect::<String>(),
        );
        assert_ne!(nfc.given_name, nfd.given_name);
        let a = ResidentCardClaims::derive(&nfc, date!(2026 - 12 - 27), 3, "종로구청장").unwrap();
        let b = ResidentCardClaims::derive(&nfd, date!(2026 - 12 - 27), 3, "종로구청장").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn ages_and_expiry_come_from_the_issue_date() {
        let h = holder("김", "민준");
        let on_birthday = ResidentCardClaims::derive(&h, date!(2026 - 12 - 27), 3, "a").unwrap();
        assert!(on_birthday.age_over_17 && !on_birthday.age_over_18);
        let parts = on_birthday.address_parts().unwrap();
        assert_eq!(
            (parts.region, parts.locality, parts.street),
            ("서울특별시", "종로구", "세종대로 209")
        );
        let mut elsewhere = on_birthday.clone();
        for address in [
            "세종대로 209",
            "서울특별시 세종대로 209",
            "Hauptstraße 1 Köln",
            "서울특별시 종로구",
        ] {
            elsewhere.address = address.into();
            assert!(elsewhere.address_parts().is_none(), "{address}");
        }
        assert_eq!(on_birthday.expiry_date, date!(2029 - 12 - 27));
        assert_eq!(on_birthday.resident_number_masked, "091227-3******");
        let day_before = ResidentCardClaims::derive(&h, date!(2026 - 12 - 26), 3, "a").unwrap();
        assert!(!day_before.age_over_17);
    }

    #[test]
    fn bad_values_are_refused() {
        let mut h = holder("", "민준");
        assert!(ResidentCardClaims::derive(&h, date!(2026 - 12 - 27), 3, "a").is_err());
        h = holder("김", "민\u{0}준");
        assert!(ResidentCardClaims::derive(&h, date!(2026 - 12 - 27), 3, "a").is_err());
        h = holder("김", "민준");
        h.resident_number = ResidentNumber::parse("091227-7123456").unwrap();
        let err = ResidentCardClaims::derive(&h, date!(2026 - 12 - 27), 3, "a").unwrap_err();
        assert!(err.to_string().contains("foreign"));
        assert!(!format!("{h:?}").contains("091227"));
    }
}
