//! Responses kept under idempotency keys hold the credential, which is
//! personal data; the registry must not. They are stored sealed with
//! AES-256-GCM under a key derived in the HSM from the request itself
//! (HMAC, under the response-seal key, of the client, the idempotency key
//! and the SHA-256 of the body):
//! only a client replaying the very same request, through the HSM, can open
//! the stored response again.

use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use pkcs11_shim::KeyBackend;

const CONTEXT: &[u8] = b"dojang-idempotency-v1\0";
const NONCE: usize = 12;
const TAG: usize = 16;

/// A response sealing key for one request.
pub(crate) struct SealKey([u8; 32]);

impl SealKey {
    /// Derives the key for (client, key, body hash) with the response-seal
    /// HMAC key `label`.
    // Seal keys come from the HSM HMAC of the request itself.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn derive(
        backend: &dyn KeyBackend,
        label: &str,
        client: &str,
        idempotency_key: &str,
        request_hash: &[u8; 32],
    ) -> Result<Self, pkcs11_shim::Error> {
        let mut input =
            Vec::with_capacity(CONTEXT.len() + client.len() + idempotency_key.len() + 34);
        input.extend_from_slice(CONTEXT);
        input.extend_from_slice(client.as_bytes());
        input.push(0);
        input.extend_from_slice(idempotency_key.as_bytes());
        input.push(0);
        input.extend_from_slice(request_hash);
        backend
            .hmac_sha256(label, pkcs11_shim::KeyPurpose::ResponseSeal, &input)
            .map(SealKey)
    }

    /// nonce ‖ ciphertext ‖ tag.
    // The one place responses are encrypted (AES-256-GCM).
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut nonce = [0u8; NONCE];
        openssl::rand::rand_bytes(&mut nonce)?;
        let mut tag = [0u8; TAG];
        let ciphertext = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(&nonce),
            CONTEXT,
            plaintext,
            &mut tag,
        )?;
        let mut out = Vec::with_capacity(NONCE + ciphertext.len() + TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what [`SealKey::seal`] produced; `None` if it does not authenticate.
    // The one place responses are decrypted (AES-256-GCM).
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE + TAG {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(nonce),
            CONTEXT,
            ciphertext,
            tag,
        )
        .ok()
    }
}

impl Drop for SealKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let key = SealKey([7; 32]);
        let sealed = key.seal(b"{\"credential\":\"x\"}").unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"credential"));
        assert_eq!(key.open(&sealed).unwrap(), b"{\"credential\":\"x\"}");
        let mut bad = sealed.clone();
        bad[14] ^= 1;
        assert!(key.open(&bad).is_none());
        assert!(SealKey([8; 32]).open(&sealed).is_none());
        assert!(key.open(&sealed[..20]).is_none());
    }
}
