//! Helpers shared by the test binaries: opening the shim on a fixture, and
//! verifying signatures with the `openssl` command (an implementation that
//! shares nothing with the token or the shim).

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

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

/// A token with a PKI made by `pki init`, and the configs to use it.
pub struct PkiFixture {
    pub token: SoftHsmToken,
    pub backend: Pkcs11Backend,
    pub pki: dojang::pki::PkiConfig,
    pub store: dojang::pki::PkiStore,
}

pub fn pki_config(dir: &Path, ds_validity_days: u32) -> dojang::pki::PkiConfig {
    let toml = format!(
        r#"
        dir = "{}"
        organization = "Ministry of the Interior and Safety"
        iaca_common_name = "Dojang Test IACA"
        issuer_alt_name = "https://id.example.kr"
        crl_url = "https://id.example.kr/iaca.crl"
        ds_validity_days = {ds_validity_days}
        "#,
        dir.display()
    );
    toml::from_str(&toml).unwrap()
}

impl PkiFixture {
    pub fn new(ds_validity_days: u32) -> Self {
        let token = SoftHsmToken::new("dojang-pki");
        let backend = open(&token);
        let pki = pki_config(&token.scratch().join("pki"), ds_validity_days);
        let _ = dojang::pki::ceremony::init(
            &backend,
            &pki,
            "ds-1",
            Algorithm::Es256,
            time::OffsetDateTime::now_utc(),
        )
        .expect("pki init");
        let store = dojang::pki::PkiStore::new(&pki.dir);
        PkiFixture {
            token,
            backend,
            pki,
            store,
        }
    }

    pub fn iaca_der(&self) -> Vec<u8> {
        self.store.iaca().unwrap().0
    }

    pub fn signer(&self) -> dojang::credential::DocumentSigner<'_> {
        let cert = self
            .store
            .ds_for_signing(None, time::OffsetDateTime::now_utc())
            .unwrap();
        dojang::credential::DocumentSigner::new(&self.backend, cert).unwrap()
    }
}

/// A fresh software P-256 key standing in for the holder's phone.
pub fn phone_key() -> PublicKey {
    use openssl::bn::BigNumContext;
    use openssl::ec::{EcGroup, EcKey, PointConversionForm};
    use openssl::nid::Nid;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = EcKey::generate(&group).unwrap();
    let mut ctx = BigNumContext::new().unwrap();
    let point = key
        .public_key()
        .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
        .unwrap();
    PublicKey::from_ec_point(Algorithm::Es256, &point).unwrap()
}

/// The workspace's Python venv with the independent verifiers.
pub fn python() -> std::path::PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make deps` (it creates the venv with pymdoccbor and sd-jwt)",
        python.display()
    );
    python
}

/// Runs one of the Python verifiers; returns (success, stdout).
pub fn python_verify(script: &str, args: &[&Path]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A decision record as the tests record them.
pub fn decision(action: &str) -> dojang::store::DecisionRecord {
    dojang::store::DecisionRecord {
        node: "test".into(),
        at: 1_800_000_000,
        actor: "spiffe://test/client".into(),
        action: action.into(),
        outcome: "allow".into(),
        rule: None,
        policy_hash: "00".repeat(32),
        ..Default::default()
    }
}

/// An issuance commit for `holder` on `device` at `index` of status `list`.
pub fn issuance(
    id: &str,
    holder: dojang::store::Pseudonym,
    device: &str,
    list: u32,
    index: u64,
) -> dojang::store::IssuanceCommit {
    dojang::store::IssuanceCommit {
        credential: dojang::store::NewCredential {
            id: id.to_owned(),
            holder,
            device: device.to_owned(),
            profile: "mdoc".into(),
            kid: "kid-1".into(),
            status_list: list,
            status_index: index,
            issued_at: 1_800_000_000,
            valid_until: 1_808_000_000,
            document_expiry: "2029-12-27".into(),
            claims_mac: [0; 32],
            has_portrait: false,
        },
        supersede: false,
        want_free_copy: false,
        idempotency: None,
        decision: decision("issue"),
        copies: Vec::new(),
    }
}
