//! CBOR helpers shared by the mdoc builder and verifier.

use ciborium::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

use super::CredentialError;

pub(crate) fn encode(value: &Value) -> Result<Vec<u8>, CredentialError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| CredentialError::Encoding(e.to_string()))?;
    Ok(out)
}

pub(crate) fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// `#6.24(bstr .cbor value)`.
pub(crate) fn tag24(bytes: Vec<u8>) -> Value {
    Value::Tag(24, Box::new(Value::Bytes(bytes)))
}

/// tdate, `#6.0`: RFC 3339 in UTC without fractions ("YYYY-MM-DDTHH:MM:SSZ").
pub(crate) fn tdate(t: OffsetDateTime) -> Result<Value, CredentialError> {
    let utc = t
        .to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    let s = utc
        .format(&Rfc3339)
        .map_err(|e| CredentialError::Encoding(e.to_string()))?;
    Ok(Value::Tag(0, Box::new(Value::Text(s))))
}

/// full-date, `#6.1004`: "YYYY-MM-DD".
pub(crate) fn full_date(d: Date) -> Value {
    Value::Tag(
        1004,
        Box::new(Value::Text(format!(
            "{:04}-{:02}-{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        ))),
    )
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
