//! Key labels: the one name a key has in every backend and in the registry.

use crate::error::{Error, Result};

/// Longest label accepted.
pub const MAX_LABEL_LEN: usize = 64;

/// Checks a key label: 1–64 characters of `A–Z a–z 0–9 . _ -`, not starting
/// with `.` (labels become file names in the TPM backend).
pub fn validate_label(label: &str) -> Result<()> {
    let ok_chars = label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if label.is_empty() || label.len() > MAX_LABEL_LEN || !ok_chars || label.starts_with('.') {
        return Err(Error::InvalidInput(format!(
            "key label {:?} must be 1 to {MAX_LABEL_LEN} characters of A-Z a-z 0-9 . _ - and not start with '.'",
            label.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        for good in ["ds-2026-1", "iaca.root", "A_b-9"] {
            assert!(validate_label(good).is_ok(), "{good}");
        }
        let too_long = "x".repeat(65);
        for bad in ["", ".hidden", "a/b", "a b", "키", too_long.as_str()] {
            assert!(validate_label(bad).is_err(), "{bad}");
        }
    }
}
