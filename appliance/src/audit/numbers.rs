//! Where each node's numbers stand at a checkpoint, signed with it: the
//! integrity check ([`super::integrity`]) of the next entries starts from
//! here, never from database columns an insider could set.
//!
//! One extension line: `dojang-numbers sealed|unsealed TAG=NEXT …` — whether
//! a sealed entry came before the checkpoint's size, and for each node that
//! wrote entries, its next number. Nodes are named by a tag (the first 8
//! bytes of SHA-256 of the node name, base64url): the note is public, host
//! names need not be.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

/// The extension line's keyword.
pub const NUMBERS: &str = "dojang-numbers";

/// A node as the line names it.
pub type NodeTag = [u8; 8];

/// The tag of node `node`.
pub fn tag(node: &str) -> NodeTag {
    let digest = pkcs11_shim::digest::sha256(node.as_bytes());
    let mut tag = [0u8; 8];
    tag.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    tag
}

/// Each node's next number, and whether the log is sealed from here on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numbers {
    /// A sealed entry came before: every later entry must be sealed.
    pub sealed: bool,
    /// Each node's next number.
    pub next: BTreeMap<NodeTag, u64>,
}

impl Numbers {
    /// The extension line.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{NUMBERS} {}",
            if self.sealed { "sealed" } else { "unsealed" }
        );
        for (tag, next) in &self.next {
            line.push_str(&format!(" {}={next}", B64URL.encode(tag)));
        }
        line
    }

    /// The numbers a checkpoint's extension lines carry: `None` for a
    /// checkpoint an earlier build signed (no such line).
    pub fn from_extensions(extensions: &[String]) -> Result<Option<Self>, String> {
        let mut lines = extensions
            .iter()
            .filter(|l| l.split(' ').next() == Some(NUMBERS));
        let Some(line) = lines.next() else {
            return Ok(None);
        };
        if lines.next().is_some() {
            return Err(format!("two {NUMBERS} lines"));
        }
        let mut words = line.split(' ').skip(1);
        let sealed = match words.next() {
            Some("sealed") => true,
            Some("unsealed") => false,
            _ => return Err(format!("{NUMBERS}: sealed or unsealed?")),
        };
        let mut next = BTreeMap::new();
        for word in words {
            let parsed = word.split_once('=').and_then(|(tag, n)| {
                let tag = NodeTag::try_from(B64URL.decode(tag).ok()?).ok()?;
                let canonical = !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && (n == "0" || !n.starts_with('0'));
                Some((tag, canonical.then(|| n.parse::<u64>().ok()).flatten()?))
            });
            let Some((tag, n)) = parsed else {
                return Err(format!("{NUMBERS}: {word:?} is not TAG=NUMBER"));
            };
            if next.insert(tag, n).is_some() {
                return Err(format!("{NUMBERS}: a node named twice"));
            }
        }
        Ok(Some(Numbers { sealed, next }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_round_trips_and_names_nodes_by_tag_only() {
        let numbers = Numbers {
            sealed: true,
            next: BTreeMap::from([(tag("seoul-1"), 41), (tag("dojangctl"), 0)]),
        };
        let line = numbers.line();
        assert!(!line.contains("seoul"), "{line}");
        let parsed = Numbers::from_extensions(&["dojang-handover x".into(), line]).unwrap();
        assert_eq!(parsed, Some(numbers));
        assert_eq!(Numbers::from_extensions(&[]).unwrap(), None);
    }

    #[test]
    fn malformed_lines_are_refused() {
        let t = B64URL.encode(tag("a"));
        for bad in [
            NUMBERS.to_string(),
            format!("{NUMBERS} maybe"),
            format!("{NUMBERS} sealed {t}"),
            format!("{NUMBERS} sealed {t}=01"),
            format!("{NUMBERS} sealed {t}=+1"),
            format!("{NUMBERS} sealed {t}=1 {t}=2"),
            format!("{NUMBERS} sealed AAAA=1"),
        ] {
            assert!(
                Numbers::from_extensions(std::slice::from_ref(&bad)).is_err(),
                "{bad}"
            );
        }
        let twice = vec![format!("{NUMBERS} sealed"), format!("{NUMBERS} sealed")];
        assert!(Numbers::from_extensions(&twice).is_err());
    }
}
