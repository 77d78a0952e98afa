//! SHA-2 digests for the signing paths.
//!
//! OpenSSL 3's one-shot `SHA256()` goes through `EVP_Q_digest`, which
//! fetches the algorithm from the provider on every call (name lookups and
//! locks): measured at several microseconds, more than the hashing itself.
//! The `SHA256_Init`/`Update`/`Final` context used here does no fetch.

use openssl::sha::{Sha256, Sha384};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(data);
    hasher.finish()
}

/// SHA-384 of `data`.
pub fn sha384(data: &[u8]) -> [u8; 48] {
    let mut hasher = Sha384::new();
    hasher.update(data);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_one_shot_functions() {
        for data in [&b""[..], b"abc", &[0x5a; 1000][..]] {
            assert_eq!(super::sha256(data), openssl::sha::sha256(data));
            assert_eq!(super::sha384(data), openssl::sha::sha384(data));
        }
    }
}
