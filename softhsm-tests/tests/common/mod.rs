//! Helpers shared by the test binaries: opening the shim on a fixture, and
//! verifying signatures with the `openssl` command (an implementation that
//! shares nothing with the token or the shim).

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{ecdsa_raw_to_der, Algorithm, Pkcs11Config, PublicKey, SecretSource};
use softhsm_tests::SoftHsmToken;

pub fn config_for(token: &SoftHsmToken) -> Pkcs11Config {
    Pkcs11Config::new(
        softhsm_tests::softhsm_module(),
        token.label(),
        SecretSource::File(token.pin_file()),
    )
}

pub fn open(token: &SoftHsmToken) -> Pkcs11Backend {
    Pkcs11Backend::open(config_for(token)).expect("open SoftHSM token")
}

/// Verifies `signature` (raw, as the shim returns it) over `message` with the
/// openssl CLI, given the key's public half.
pub fn openssl_verifies(dir: &Path, public: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    let key = dir.join("verify-key.pem");
    let msg = dir.join("verify-msg.bin");
    let sig = dir.join("verify-sig.bin");
    std::fs::write(&key, public.to_pem().unwrap()).unwrap();
    std::fs::write(&msg, message).unwrap();
    let out = match public.algorithm() {
        Algorithm::EdDsa => {
            std::fs::write(&sig, signature).unwrap();
            Command::new("openssl")
                .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(&key)
                .arg("-in")
                .arg(&msg)
                .arg("-sigfile")
                .arg(&sig)
                .output()
        }
        alg => {
            std::fs::write(&sig, ecdsa_raw_to_der(signature).unwrap()).unwrap();
            let digest = if alg == Algorithm::Es384 {
                "-sha384"
            } else {
                "-sha256"
            };
            Command::new("openssl")
                .args(["dgst", digest, "-verify"])
                .arg(&key)
                .arg("-signature")
                .arg(&sig)
                .arg(&msg)
                .output()
        }
    }
    .expect("openssl");
    out.status.success()
}
