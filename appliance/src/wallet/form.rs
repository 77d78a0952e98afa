//! `application/x-www-form-urlencoded` bodies (the token request, RFC 6749
//! §4.1.3): name=value pairs, `+` a space, percent-escapes decoded.

use std::collections::HashMap;

/// The pairs of `body`; `None` if an escape or the UTF-8 is broken, or a
/// name is given twice (RFC 6749 §3.2: parameters must not repeat).
pub(super) fn parse(body: &[u8]) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let mut halves = pair.splitn(2, |b| *b == b'=');
        let name = decode(halves.next().unwrap_or_default())?;
        let value = decode(halves.next().unwrap_or_default())?;
        if out.insert(name, value).is_some() {
            return None;
        }
    }
    Some(out)
}

fn decode(raw: &[u8]) -> Option<String> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = raw.iter();
    while let Some(b) = i.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = [*i.next()?, *i.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            _ => bytes.push(*b),
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn pairs_are_decoded_and_repeats_refused() {
        let form = parse(b"grant_type=urn%3Aietf%3Aa&tx_code=12+34&empty=").unwrap_or_default();
        assert_eq!(
            form.get("grant_type").map(String::as_str),
            Some("urn:ietf:a")
        );
        assert_eq!(form.get("tx_code").map(String::as_str), Some("12 34"));
        assert_eq!(form.get("empty").map(String::as_str), Some(""));
        assert!(parse(b"a=1&a=2").is_none());
        assert!(parse(b"a=%zz").is_none());
        assert!(parse(b"a=%f0%28").is_none(), "not UTF-8");
    }
}
