//! Status lists end to end: credentials in the registry are revoked and
//! suspended, the list is signed by the status-list key in SoftHSM, and a
//! verifier decoding the published token sees the bits. The signature is
//! checked by the openssl command and the list decompressed by Python's
//! zlib, not only by our code.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use dojang::status::{sign_token, verify_token, StatusList, TokenFields};
use dojang::store::{CredentialState, Pseudonym, Registry, SqliteRegistry};
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose};
use softhsm_tests::SoftHsmToken;

#[test]
fn revoked_and_suspended_bits_reach_a_verifier_through_a_signed_token() {
    let token = SoftHsmToken::new("dojang-status");
    let backend = common::open(&token);
    let key = backend
        .generate("status-1", KeyPurpose::StatusList, Algorithm::Es256)
        .unwrap();
    let _ = backend
        .generate("ds-1", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();

    let registry = SqliteRegistry::open(&token.scratch().join("registry.db")).unwrap();
    let block = registry.reserve_status_indexes(8).unwrap();
    let mut ids = Vec::new();
    for n in 0..8u64 {
        let mut holder = [0u8; 32];
        holder[0] = n as u8;
        let commit = common::issuance(
            &format!("cred-{n}"),
            Pseudonym(holder),
            &format!("phone-{n}"),
            block.list,
            block.indexes[n as usize],
        );
        let _ = registry
            .commit_issuance("client", commit, Box::new(|_| Vec::new()))
            .unwrap();
        ids.push(format!("cred-{n}"));
    }
    let _ = registry
        .set_state(
            &ids[2],
            CredentialState::Revoked,
            common::decision("revoke"),
        )
        .unwrap();
    let _ = registry
        .set_state(
            &ids[5],
            CredentialState::Suspended,
            common::decision("suspend"),
        )
        .unwrap();

    let entries = registry.status_entries(block.list).unwrap();
    let list = StatusList::from_entries(1 << 20, &entries).unwrap();
    let uri = "https://id.example.kr/status/1";
    let fields = TokenFields {
        uri,
        keys_uri: "https://id.example.kr/status/jwks.json",
        iat: 1_800_000_000,
        exp: 1_800_086_400,
        ttl: 3600,
        certificate: None,
    };
    let jwt = sign_token(&backend, "status-1", &list, &fields).unwrap();

    // Our verifier.
    let public = key.public_key.clone().unwrap();
    let published = verify_token(&jwt, &public).unwrap();
    assert_eq!(published.uri, uri);
    assert_eq!(published.list.len(), 1 << 20);
    for n in 0..8u64 {
        let expected = match n {
            2 => 1,
            5 => 2,
            _ => 0,
        };
        assert_eq!(
            published.list.get(block.indexes[n as usize]),
            Some(expected),
            "index {n}"
        );
    }
    // A tampered token is refused.
    let mut tampered = jwt.clone().into_bytes();
    let i = jwt.find('.').unwrap() + 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    assert!(verify_token(std::str::from_utf8(&tampered).unwrap(), &public).is_err());
    // A document-signer key may not sign status lists.
    assert!(sign_token(&backend, "ds-1", &list, &fields).is_err());

    // Independently: openssl checks the ES256 signature over the JWS input…
    let (input, signature) = jwt.rsplit_once('.').unwrap();
    let dir = token.scratch();
    std::fs::write(dir.join("input"), input).unwrap();
    std::fs::write(
        dir.join("sig.der"),
        pkcs11_shim::ecdsa_raw_to_der(&B64URL.decode(signature).unwrap()).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("key.pem"), public.to_pem().unwrap()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.join("key.pem"))
        .arg("-signature")
        .arg(dir.join("sig.der"))
        .arg(dir.join("input"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // …and Python's zlib reads the bits.
    let payload: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(input.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let lst = payload["status_list"]["lst"].as_str().unwrap();
    let script = format!(
        "import base64,zlib\nb=zlib.decompress(base64.urlsafe_b64decode('{lst}'+'='*(-len('{lst}')%4)))\n\
         print(','.join(str((b[i//4]>>((i%4)*2))&3) for i in [{positions}]))",
        positions = block
            .indexes
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = std::process::Command::new(common::python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0,0,1,0,0,2,0,0"
    );
}

#[test]
fn pseudonyms_come_from_the_hsm_and_do_not_reveal_the_number() {
    use dojang_policies::resident_number::ResidentNumber;
    let token = SoftHsmToken::new("dojang-pseudonym");
    let backend = common::open(&token);
    let _ = backend
        .generate("pseudonym", KeyPurpose::Pseudonym, Algorithm::HmacSha256)
        .unwrap();
    let a = ResidentNumber::parse("000515-3012345").unwrap();
    let same = ResidentNumber::parse("0005153012345").unwrap();
    let b = ResidentNumber::parse("000515-3012346").unwrap();
    let holder = dojang::issuance::pseudonym(&backend, "pseudonym", &a).unwrap();
    let pa = holder.pseudonym;
    assert_eq!(
        pa,
        dojang::issuance::pseudonym(&backend, "pseudonym", &same)
            .unwrap()
            .pseudonym
    );
    assert_ne!(
        pa,
        dojang::issuance::pseudonym(&backend, "pseudonym", &b)
            .unwrap()
            .pseudonym
    );
    // The claims MAC depends on the holder's secret, which is not stored.
    let other = dojang::issuance::pseudonym(&backend, "pseudonym", &b).unwrap();
    assert_ne!(
        holder.claims_mac(b"claims").unwrap(),
        other.claims_mac(b"claims").unwrap()
    );
    assert!(!format!("{holder:?}").contains("000515"));
    // Not a plain hash of the number: the key matters.
    assert_ne!(pa.0, pkcs11_shim::digest::sha256(a.digits()));
    assert!(!format!("{pa:?}").contains("000515"));
    // A signing key cannot stand in for the pseudonym key.
    let _ = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    assert!(dojang::issuance::pseudonym(&backend, "ds", &a).is_err());
}
