//! CBOR for the mdoc: a small writer for issuance and ciborium helpers for
//! verification.
//!
//! Issuance writes CBOR directly rather than through a `ciborium::Value`
//! tree: an mdoc is built once per issuance, and allocating and cloning a
//! value tree (the DS certificate included) cost more than the rest of the
//! build together. The writer emits preferred (shortest) encodings only; the
//! verifier and the independent verifiers in the tests read its output.

use ciborium::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

use super::CredentialError;
use super::verify::{VerifyError, malformed};

/// Appends CBOR data items to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Writer {
            bytes: Vec::with_capacity(capacity),
        }
    }

    #[inline]
    fn head(&mut self, major: u8, n: u64) {
        let major = major << 5;
        match n {
            0..=23 => self.bytes.push(major | n as u8),
            24..=0xff => self.bytes.extend_from_slice(&[major | 24, n as u8]),
            0x100..=0xffff => {
                self.bytes.push(major | 25);
                self.bytes.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.bytes.push(major | 26);
                self.bytes.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                self.bytes.push(major | 27);
                self.bytes.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    pub(crate) fn uint(&mut self, n: u64) -> &mut Self {
        self.head(0, n);
        self
    }

    /// A negative integer `-1 - n`.
    pub(crate) fn negative(&mut self, n: u64) -> &mut Self {
        self.head(1, n);
        self
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.head(2, b.len() as u64);
        self.bytes.extend_from_slice(b);
        self
    }

    pub(crate) fn text(&mut self, s: &str) -> &mut Self {
        self.head(3, s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }

    pub(crate) fn array(&mut self, len: usize) -> &mut Self {
        self.head(4, len as u64);
        self
    }

    pub(crate) fn map(&mut self, len: usize) -> &mut Self {
        self.head(5, len as u64);
        self
    }

    pub(crate) fn tag(&mut self, tag: u64) -> &mut Self {
        self.head(6, tag);
        self
    }

    pub(crate) fn bool(&mut self, b: bool) -> &mut Self {
        self.bytes.push(if b { 0xf5 } else { 0xf4 });
        self
    }

    /// Already-encoded CBOR, copied as is.
    pub(crate) fn raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(encoded);
        self
    }

    /// tdate, `#6.0`: "YYYY-MM-DDTHH:MM:SSZ" in UTC, no fractions.
    pub(crate) fn tdate(&mut self, t: OffsetDateTime) -> &mut Self {
        let t = t.to_offset(UtcOffset::UTC);
        let [h1, h2] = two_digits(t.hour());
        let [m1, m2] = two_digits(t.minute());
        let [s1, s2] = two_digits(t.second());
        let time = [b'T', h1, h2, b':', m1, m2, b':', s1, s2, b'Z'];
        self.tag(0).head(3, 20);
        self.bytes.extend_from_slice(&date_text(t.date()));
        self.bytes.extend_from_slice(&time);
        self
    }

    /// full-date, `#6.1004`: "YYYY-MM-DD".
    pub(crate) fn full_date(&mut self, d: Date) -> &mut Self {
        self.tag(1004).head(3, 10);
        self.bytes.extend_from_slice(&date_text(d));
        self
    }
}

// Dates are formatted by hand: `format!` was a tenth of an mdoc's build time.
/// `n` (below 100) as two ASCII digits.
fn two_digits(n: u8) -> [u8; 2] {
    [b'0' + n / 10, b'0' + n % 10]
}

/// "YYYY-MM-DD"; years outside 0..=9999 are clamped, which claims
/// validation rules out long before.
pub(crate) fn date_text(d: Date) -> [u8; 10] {
    let year = d.year().clamp(0, 9999) as u16;
    let [c1, c2] = two_digits((year / 100) as u8);
    let [y1, y2] = two_digits((year % 100) as u8);
    let [m1, m2] = two_digits(u8::from(d.month()));
    let [d1, d2] = two_digits(d.day());
    [c1, c2, y1, y2, b'-', m1, m2, b'-', d1, d2]
}

pub(crate) fn encode(value: &Value) -> Result<Vec<u8>, CredentialError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| CredentialError::Encoding(e.to_string()))?;
    Ok(out)
}

/// Looks up a text key in a CBOR map.
pub(crate) fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// Parses a tdate (`#6.0`).
pub(crate) fn parse_tdate(value: &Value) -> Option<OffsetDateTime> {
    match value {
        Value::Tag(0, inner) => OffsetDateTime::parse(inner.as_text()?, &Rfc3339).ok(),
        _ => None,
    }
}

/// Parses exactly one CBOR data item: trailing bytes are refused.
pub(crate) fn parse_cbor(bytes: &[u8], what: &str) -> Result<Value, VerifyError> {
    let mut rest = bytes;
    let value = ciborium::from_reader(&mut rest)
        .map_err(|e| malformed(format!("{what} is not CBOR: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{what} has {} bytes after its CBOR item",
            rest.len()
        )));
    }
    Ok(value)
}

/// The entries of a CBOR map; `what` names it in the error.
pub(crate) fn as_map<'a>(
    value: &'a Value,
    what: &str,
) -> Result<&'a [(Value, Value)], VerifyError> {
    value
        .as_map()
        .map(Vec::as_slice)
        .ok_or_else(|| malformed(format!("{what} is not a map")))
}

/// The bytes an embedded CBOR item (`#6.24(bstr)`) wraps.
pub(crate) fn tag24_bytes<'a>(value: &'a Value, what: &str) -> Result<&'a [u8], VerifyError> {
    match value {
        Value::Tag(24, inner) => inner
            .as_bytes()
            .map(Vec::as_slice)
            .ok_or_else(|| malformed(format!("{what}: tag 24 must wrap a byte string"))),
        _ => Err(malformed(format!("{what} is not a #6.24 item"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn parse(bytes: &[u8]) -> Value {
        ciborium::from_reader(bytes).unwrap()
    }

    #[test]
    fn the_writer_agrees_with_ciborium() {
        let mut w = Writer::default();
        let _ = w
            .map(3)
            .text("n")
            .uint(70000)
            .text("neg")
            .negative(34)
            .text("items")
            .array(3)
            .bytes(&[1, 2, 3])
            .bool(true)
            .tag(24)
            .bytes(&[0xa0]);
        let expected = Value::Map(vec![
            (Value::Text("n".into()), Value::Integer(70000.into())),
            (Value::Text("neg".into()), Value::Integer((-35).into())),
            (
                Value::Text("items".into()),
                Value::Array(vec![
                    Value::Bytes(vec![1, 2, 3]),
                    Value::Bool(true),
                    Value::Tag(24, Box::new(Value::Bytes(vec![0xa0]))),
                ]),
            ),
        ]);
        assert_eq!(parse(&w.bytes), expected);
        assert_eq!(
            w.bytes,
            encode(&expected).unwrap(),
            "shortest encodings, as ciborium"
        );
    }

    #[test]
    fn lengths_cross_every_size_boundary() {
        for len in [0usize, 23, 24, 255, 256, 65535, 65536] {
            let mut w = Writer::default();
            let data = vec![7u8; len];
            let _ = w.bytes(&data);
            assert_eq!(parse(&w.bytes), Value::Bytes(data));
        }
    }

    #[test]
    fn dates_are_tagged_as_iso_18013_5_wants() {
        let mut w = Writer::default();
        let _ = w
            .array(2)
            .tdate(datetime!(2026-12-27 09:30:05.999 +9))
            .full_date(date!(2029 - 12 - 27));
        assert_eq!(
            parse(&w.bytes),
            Value::Array(vec![
                Value::Tag(0, Box::new(Value::Text("2026-12-27T00:30:05Z".into()))),
                Value::Tag(1004, Box::new(Value::Text("2029-12-27".into()))),
            ])
        );
        assert_eq!(
            parse_tdate(&parse(&w.bytes).as_array().unwrap()[0]),
            Some(datetime!(2026-12-27 00:30:05 UTC))
        );
    }
}
