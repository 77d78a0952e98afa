//! What a Dojang key looks like in a PKCS#11 token: the generation templates,
//! the attributes a key must carry to be used, and how its purpose is kept.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

use crate::algorithm::{Algorithm, KeyPurpose};
use crate::error::{Error, Result};

/// DER OID of P-256 (prime256v1).
pub(crate) const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID of P-384 (secp384r1).
pub(crate) const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER OID of Ed25519 (id-Ed25519).
pub(crate) const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString "edwards25519", the older spelling some tokens use.
const NAME_ED25519: &[u8] = b"\x13\x0cedwards25519";

/// `CKA_ID` layout: magic, version, purpose code, then random bytes. The
/// purpose travels with the key so it survives restarts and re-lookups.
const ID_MAGIC: &[u8; 2] = b"DJ";
const ID_VERSION: u8 = 1;
pub(crate) const ID_RANDOM_LEN: usize = 12;

pub(crate) fn key_id(purpose: KeyPurpose, random: &[u8; ID_RANDOM_LEN]) -> Vec<u8> {
    let mut id = Vec::with_capacity(4 + ID_RANDOM_LEN);
    id.extend_from_slice(ID_MAGIC);
    id.push(ID_VERSION);
    id.push(purpose.code());
    id.extend_from_slice(random);
    id
}

/// The purpose encoded in a `CKA_ID`, or `None` for keys Dojang did not make.
pub(crate) fn purpose_of_id(id: &[u8]) -> Option<KeyPurpose> {
    match id {
        [m0, m1, ID_VERSION, code, rest @ ..]
            if [*m0, *m1] == *ID_MAGIC && rest.len() == ID_RANDOM_LEN =>
        {
            KeyPurpose::from_code(*code)
        }
        _ => None,
    }
}

/// The generation mechanism and the mechanism each algorithm signs with.
pub(crate) fn generation_mechanism(algorithm: Algorithm) -> Mechanism<'static> {
    match algorithm {
        Algorithm::Es256 | Algorithm::Es384 => Mechanism::EccKeyPairGen,
        Algorithm::EdDsa => Mechanism::EccEdwardsKeyPairGen,
        Algorithm::HmacSha256 => Mechanism::GenericSecretKeyGen,
    }
}

/// Mechanisms the token must list for `algorithm` to be offered.
pub(crate) fn required_mechanisms(algorithm: Algorithm) -> [MechanismType; 2] {
    match algorithm {
        Algorithm::Es256 | Algorithm::Es384 => {
            [MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA]
        }
        Algorithm::EdDsa => [
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
        ],
        Algorithm::HmacSha256 => [
            MechanismType::GENERIC_SECRET_KEY_GEN,
            MechanismType::SHA256_HMAC,
        ],
    }
}

fn curve_params(algorithm: Algorithm) -> &'static [u8] {
    match algorithm {
        Algorithm::Es384 => OID_P384,
        Algorithm::EdDsa => OID_ED25519,
        _ => OID_P256,
    }
}

/// Attributes every Dojang private or secret key is created with: in the
/// token, private, sensitive, never extractable, and usable only to sign.
fn private_common(label: &str, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// Public and private templates for an asymmetric key pair.
pub(crate) fn key_pair_templates(
    algorithm: Algorithm,
    label: &str,
    id: &[u8],
) -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::EcParams(curve_params(algorithm).to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let mut private = private_common(label, id);
    private.push(Attribute::SignRecover(false));
    (public, private)
}

/// Template for the HMAC secret key.
pub(crate) fn secret_key_template(label: &str, id: &[u8]) -> Vec<Attribute> {
    let mut t = private_common(label, id);
    t.extend([
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Verify(false),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
    ]);
    t
}

/// Attributes read back from every private/secret key and what each must be.
pub(crate) const REQUIRED_FLAGS: [(AttributeType, &str, bool); 11] = [
    (AttributeType::Token, "CKA_TOKEN", true),
    (AttributeType::Private, "CKA_PRIVATE", true),
    (AttributeType::Sensitive, "CKA_SENSITIVE", true),
    (AttributeType::Extractable, "CKA_EXTRACTABLE", false),
    (AttributeType::AlwaysSensitive, "CKA_ALWAYS_SENSITIVE", true),
    (
        AttributeType::NeverExtractable,
        "CKA_NEVER_EXTRACTABLE",
        true,
    ),
    (AttributeType::Local, "CKA_LOCAL", true),
    (AttributeType::Sign, "CKA_SIGN", true),
    (AttributeType::Decrypt, "CKA_DECRYPT", false),
    (AttributeType::Unwrap, "CKA_UNWRAP", false),
    // Derivation would turn a signing key into an ECDH oracle, and an HMAC
    // key into a source of derived (extractable) keys.
    (AttributeType::Derive, "CKA_DERIVE", false),
];

/// Further attributes of private (asymmetric) keys.
pub(crate) const PRIVATE_KEY_FLAGS: [(AttributeType, &str, bool); 1] =
    [(AttributeType::SignRecover, "CKA_SIGN_RECOVER", false)];

/// Further attributes of secret (HMAC) keys: MAC only, no cipher or wrapping use.
pub(crate) const SECRET_KEY_FLAGS: [(AttributeType, &str, bool); 3] = [
    (AttributeType::Encrypt, "CKA_ENCRYPT", false),
    (AttributeType::Wrap, "CKA_WRAP", false),
    (AttributeType::Verify, "CKA_VERIFY", false),
];

fn flag_of(attr: &Attribute) -> Option<(AttributeType, bool)> {
    Some(match attr {
        Attribute::Token(v) => (AttributeType::Token, *v),
        Attribute::Private(v) => (AttributeType::Private, *v),
        Attribute::Sensitive(v) => (AttributeType::Sensitive, *v),
        Attribute::Extractable(v) => (AttributeType::Extractable, *v),
        Attribute::AlwaysSensitive(v) => (AttributeType::AlwaysSensitive, *v),
        Attribute::NeverExtractable(v) => (AttributeType::NeverExtractable, *v),
        Attribute::Local(v) => (AttributeType::Local, *v),
        Attribute::Sign(v) => (AttributeType::Sign, *v),
        Attribute::Decrypt(v) => (AttributeType::Decrypt, *v),
        Attribute::Unwrap(v) => (AttributeType::Unwrap, *v),
        Attribute::Derive(v) => (AttributeType::Derive, *v),
        Attribute::SignRecover(v) => (AttributeType::SignRecover, *v),
        Attribute::Encrypt(v) => (AttributeType::Encrypt, *v),
        Attribute::Wrap(v) => (AttributeType::Wrap, *v),
        Attribute::Verify(v) => (AttributeType::Verify, *v),
        _ => return None,
    })
}

/// Refuses a key whose attributes say it could have left the token, was not
/// born in it, or can do more than sign.
pub(crate) fn check_key_flags(
    label: &str,
    attrs: &[Attribute],
    flags: &[(AttributeType, &'static str, bool)],
) -> Result<()> {
    for &(ty, name, required) in flags {
        let actual = attrs
            .iter()
            .filter_map(flag_of)
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| v);
        if actual != Some(required) {
            return Err(Error::KeyPolicy {
                label: label.to_owned(),
                attribute: name,
                actual: actual.map_or("unreadable".into(), |v| v.to_string()),
                required: required.to_string(),
            });
        }
    }
    Ok(())
}

/// The algorithm of a private/secret key from its key type and curve.
pub(crate) fn algorithm_of(
    label: &str,
    key_type: KeyType,
    ec_params: Option<&[u8]>,
) -> Result<Algorithm> {
    let unsupported = |what: &str| Error::KeyPolicy {
        label: label.to_owned(),
        attribute: "CKA_KEY_TYPE/CKA_EC_PARAMS",
        actual: what.to_owned(),
        required: "P-256, P-384, Ed25519 or a generic secret".into(),
    };
    if key_type == KeyType::GENERIC_SECRET {
        Ok(Algorithm::HmacSha256)
    } else if key_type == KeyType::EC {
        match ec_params {
            Some(OID_P256) => Ok(Algorithm::Es256),
            Some(OID_P384) => Ok(Algorithm::Es384),
            _ => Err(unsupported("an EC curve Dojang does not use")),
        }
    } else if key_type == KeyType::EC_EDWARDS {
        match ec_params {
            Some(OID_ED25519) | Some(NAME_ED25519) => Ok(Algorithm::EdDsa),
            _ => Err(unsupported("an Edwards curve other than Ed25519")),
        }
    } else {
        Err(unsupported(&format!("key type {key_type}")))
    }
}

/// Length of the public point `CKA_EC_POINT` wraps, per algorithm.
pub(crate) fn point_len(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::Es256 => 65,
        Algorithm::Es384 => 97,
        Algorithm::EdDsa => 32,
        Algorithm::HmacSha256 => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_purpose() {
        let id = key_id(KeyPurpose::Audit, &[7; ID_RANDOM_LEN]);
        assert_eq!(purpose_of_id(&id), Some(KeyPurpose::Audit));
        assert_eq!(purpose_of_id(b"foreign-key-id"), None);
        assert_eq!(purpose_of_id(&id[..10]), None);
    }

    #[test]
    fn a_key_missing_any_flag_is_refused() {
        let good: Vec<Attribute> = REQUIRED_FLAGS
            .iter()
            .map(|(ty, _, v)| match ty {
                AttributeType::Token => Attribute::Token(*v),
                AttributeType::Private => Attribute::Private(*v),
                AttributeType::Sensitive => Attribute::Sensitive(*v),
                AttributeType::Extractable => Attribute::Extractable(*v),
                AttributeType::AlwaysSensitive => Attribute::AlwaysSensitive(*v),
                AttributeType::NeverExtractable => Attribute::NeverExtractable(*v),
                AttributeType::Local => Attribute::Local(*v),
                AttributeType::Sign => Attribute::Sign(*v),
                AttributeType::Decrypt => Attribute::Decrypt(*v),
                AttributeType::Derive => Attribute::Derive(*v),
                _ => Attribute::Unwrap(*v),
            })
            .collect();
        check_key_flags("k", &good, &REQUIRED_FLAGS).unwrap();
        let mut imported = good.clone();
        imported[6] = Attribute::Local(false);
        let err = check_key_flags("k", &imported, &REQUIRED_FLAGS).unwrap_err();
        assert!(err.to_string().contains("CKA_LOCAL"), "{err}");
        let err = check_key_flags("k", &good[..3], &REQUIRED_FLAGS).unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }

    #[test]
    fn algorithms_are_recognised_from_curves() {
        assert_eq!(
            algorithm_of("k", KeyType::EC, Some(OID_P256)).unwrap(),
            Algorithm::Es256
        );
        assert_eq!(
            algorithm_of("k", KeyType::EC, Some(OID_P384)).unwrap(),
            Algorithm::Es384
        );
        assert_eq!(
            algorithm_of("k", KeyType::EC_EDWARDS, Some(NAME_ED25519)).unwrap(),
            Algorithm::EdDsa
        );
        assert!(algorithm_of("k", KeyType::RSA, None).is_err());
        assert!(algorithm_of("k", KeyType::EC, Some(OID_ED25519)).is_err());
    }
}
