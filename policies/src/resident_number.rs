//! Resident registration numbers (주민등록번호): `YYMMDD-GNNNNNN`.
//!
//! Only the structure is checked: six digits of birth date, then a digit
//! `G` giving century and sex, then six more. The old check digit is not
//! checked: numbers issued since October 2020 do not carry one. Values of
//! this type are personal data: `Debug` is redacted, and nothing here
//! writes one anywhere.

use std::fmt;

use time::{Date, Month};

/// Why a resident number was refused. Messages never contain the number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResidentNumberError {
    /// Not 13 digits (with or without the hyphen after the sixth).
    #[error("a resident registration number is 13 digits, YYMMDD-GNNNNNN")]
    Format,
    /// The 7th digit is not a known century/sex code.
    #[error("the 7th digit of the resident registration number is not a valid century/sex code")]
    CenturyCode,
    /// The first six digits are not a real date in that century.
    #[error("the first six digits of the resident registration number are not a valid birth date")]
    BirthDate,
}

/// Whose number it is, from the 7th digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registrant {
    /// A Korean national (codes 9, 0, 1, 2, 3, 4).
    Citizen,
    /// A foreign resident's registration number (codes 5, 6, 7, 8).
    Foreigner,
}

/// A structurally valid resident registration number.
#[derive(Clone, PartialEq, Eq)]
pub struct ResidentNumber {
    digits: [u8; 13],
    birth_date: Date,
    registrant: Registrant,
}

impl fmt::Debug for ResidentNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResidentNumber(<redacted>)")
    }
}

impl ResidentNumber {
    /// Parses `YYMMDD-GNNNNNN` or `YYMMDDGNNNNNN`.
    pub fn parse(text: &str) -> Result<Self, ResidentNumberError> {
        let bytes = text.as_bytes();
        let compact: Vec<u8> = match bytes.split_at_checked(6) {
            Some((date, [b'-', serial @ ..])) if serial.len() == 7 => {
                date.iter().chain(serial).copied().collect()
            }
            _ => bytes.to_vec(),
        };
        let digits: [u8; 13] = compact
            .try_into()
            .map_err(|_| ResidentNumberError::Format)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(ResidentNumberError::Format);
        }
        let [y1, y2, m1, m2, d1, d2, g, ..] = digits.map(|b| u16::from(b - b'0'));
        let (century, registrant) = match g {
            9 | 0 => (1800, Registrant::Citizen),
            1 | 2 => (1900, Registrant::Citizen),
            3 | 4 => (2000, Registrant::Citizen),
            5 | 6 => (1900, Registrant::Foreigner),
            7 | 8 => (2000, Registrant::Foreigner),
            _ => return Err(ResidentNumberError::CenturyCode),
        };
        let year = i32::from(century + y1 * 10 + y2);
        let month =
            Month::try_from((m1 * 10 + m2) as u8).map_err(|_| ResidentNumberError::BirthDate)?;
        let day = (d1 * 10 + d2) as u8;
        let birth_date = Date::from_calendar_date(year, month, day)
            .map_err(|_| ResidentNumberError::BirthDate)?;
        Ok(ResidentNumber {
            digits,
            birth_date,
            registrant,
        })
    }

    /// The birth date the number encodes.
    pub fn birth_date(&self) -> Date {
        self.birth_date
    }

    /// Citizen or foreign resident.
    pub fn registrant(&self) -> Registrant {
        self.registrant
    }

    /// The first seven digits as shown on the card, the rest masked:
    /// `YYMMDD-G******`.
    pub fn masked(&self) -> String {
        let shown = std::str::from_utf8(&self.digits[..7]).unwrap_or("");
        format!("{}-{}******", &shown[..6], &shown[6..])
    }

    /// The 13 digits, for the HSM pseudonym only (never stored or logged).
    pub fn digits(&self) -> &[u8; 13] {
        &self.digits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn parses_each_century() {
        let n = ResidentNumber::parse("091227-3123456").unwrap();
        assert_eq!(n.birth_date(), date!(2009 - 12 - 27));
        assert_eq!(n.registrant(), Registrant::Citizen);
        assert_eq!(n.masked(), "091227-3******");
        assert_eq!(
            ResidentNumber::parse("8001012123456").unwrap().birth_date(),
            date!(1980 - 01 - 01)
        );
        assert_eq!(
            ResidentNumber::parse("990101-0123456")
                .unwrap()
                .birth_date(),
            date!(1899 - 01 - 01)
        );
        assert_eq!(
            ResidentNumber::parse("000229-7123456")
                .unwrap()
                .registrant(),
            Registrant::Foreigner
        );
    }

    #[test]
    fn refuses_bad_numbers_without_echoing_them() {
        for (text, err) in [
            ("12345", ResidentNumberError::Format),
            ("09122731234567", ResidentNumberError::Format),
            ("0912a7-3123456", ResidentNumberError::Format),
            ("091227+3123456", ResidentNumberError::Format),
            ("091232-3123456", ResidentNumberError::BirthDate),
            ("010229-3123456", ResidentNumberError::BirthDate), // 2001 is not a leap year
            ("001301-3123456", ResidentNumberError::BirthDate),
        ] {
            let got = ResidentNumber::parse(text).unwrap_err();
            assert_eq!(got, err, "{text}");
            assert!(
                !got.to_string().contains(&text[..text.len().min(6)]),
                "{got}"
            );
        }
        // 2000-02-29 exists (code 3 or 4), 1900-02-29 does not (code 1 or 2).
        assert!(ResidentNumber::parse("000229-3123456").is_ok());
        assert_eq!(
            ResidentNumber::parse("000229-1123456").unwrap_err(),
            ResidentNumberError::BirthDate
        );
    }

    #[test]
    fn debug_is_redacted() {
        let n = ResidentNumber::parse("091227-3123456").unwrap();
        assert_eq!(format!("{n:?}"), "ResidentNumber(<redacted>)");
    }
}
