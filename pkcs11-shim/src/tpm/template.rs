//! What a Dojang key looks like in a TPM: the algorithms offered, the fixed
//! primary key template, the key templates, and the attributes every key
//! blob must carry to be used.

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, KeyedHashScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SymmetricDefinitionObject,
};

use super::classify::wrap;
use crate::algorithm::Algorithm;
use crate::error::{Error, Result};

/// Algorithms a TPM 2.0 offers Dojang (TPMs have no EdDSA).
pub(crate) const TPM_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::Es256, Algorithm::Es384, Algorithm::HmacSha256];

/// The primary key's template: the TCG "SRK" shape on P-256, fixed so the
/// same primary is derived every time from the owner seed.
pub(crate) fn primary_template() -> Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(wrap("primary template"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(wrap("primary template"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(wrap("primary template"))
}

fn key_attributes() -> Result<ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
        .map_err(wrap("key template"))
}

/// The template of a new key for `algorithm` (no EdDSA: the TPM has none).
pub(crate) fn key_template(algorithm: Algorithm) -> Result<Public> {
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(key_attributes()?);
    let (hash, curve) = match algorithm {
        Algorithm::Es256 => (HashingAlgorithm::Sha256, EccCurve::NistP256),
        Algorithm::Es384 => (HashingAlgorithm::Sha384, EccCurve::NistP384),
        Algorithm::HmacSha256 => {
            return builder
                .with_public_algorithm(PublicAlgorithm::KeyedHash)
                .with_keyed_hash_parameters(PublicKeyedHashParameters::new(
                    KeyedHashScheme::HMAC_SHA_256,
                ))
                .with_keyed_hash_unique_identifier(Digest::default())
                .build()
                .map_err(wrap("key template"));
        }
        other => {
            return Err(Error::Unsupported {
                algorithm: other.to_string(),
                backend: "the TPM backend (TPM 2.0 has no EdDSA)".into(),
            });
        }
    };
    builder
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(hash)),
                curve,
            )
            .build()
            .map_err(wrap("key template"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(wrap("key template"))
}

/// Refuses a blob whose public area says the key could leave the TPM, was
/// imported, or can decrypt.
pub(crate) fn check_public(label: &str, public: &Public) -> Result<()> {
    let attrs = public.object_attributes();
    let checks = [
        ("fixedTPM", attrs.fixed_tpm(), true),
        ("fixedParent", attrs.fixed_parent(), true),
        ("sensitiveDataOrigin", attrs.sensitive_data_origin(), true),
        ("sign", attrs.sign_encrypt(), true),
        ("decrypt", attrs.decrypt(), false),
    ];
    for (name, actual, required) in checks {
        if actual != required {
            return Err(Error::KeyPolicy {
                label: label.to_owned(),
                attribute: name,
                actual: actual.to_string(),
                required: required.to_string(),
            });
        }
    }
    Ok(())
}
