//! SHA-2 digests for the signing paths.
//!
//! OpenSSL 3's one-shot `SHA256()` goes through `EVP_Q_digest`, which
//! fetches the algorithm from the provider on every call (name lookups and
//! locks): measured at several microseconds, more than the hashing itself.
//! The `SHA256_Init`/`Update`/`Final` context used here does no fetch.

use hmac::{Hmac, KeyInit, Mac};
use openssl::sha::{Sha256, Sha384};

/// HMAC-SHA256 of `data` under `key`, in software: only for keys the HSM
/// derived (a holder's claims secret, a node's audit seal key). OpenSSL's
/// EVP path builds a key object and fetches a context on every call
/// (~8 µs here, three times an issuance); this is ~0.5 µs.
/// (`None` never happens: HMAC takes a key of any length.)
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Option<[u8; 32]> {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(data);
    Some(mac.finalize().into_bytes().into())
}

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

    #[test]
    #[allow(clippy::disallowed_methods)] // the function's own test
    fn hmac_matches_rfc_4231() {
        let mac = super::hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
