//! Signing and HMAC with a key already found and checked: the mechanism
//! each algorithm uses (raw `CKM_ECDSA` over a digest computed in software,
//! pure EdDSA, `CKM_SHA256_HMAC`) and the length checks on what the token
//! returns.

use cryptoki::context::Function;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use super::classify::ck;
use crate::algorithm::Algorithm;
use crate::backend::KeyInfo;
use crate::error::{Error, Result};

/// Signs `message` with the key object `handle` (described by `key`);
/// returns the raw signature (`r || s` for ECDSA).
pub(crate) fn sign_with(
    session: &Session,
    handle: ObjectHandle,
    key: &KeyInfo,
    message: &[u8],
) -> Result<Vec<u8>> {
    let algorithm = key.algorithm;
    let signature = match algorithm {
        Algorithm::Es256 => {
            session.sign(&Mechanism::Ecdsa, handle, &crate::digest::sha256(message))
        }
        Algorithm::Es384 => {
            session.sign(&Mechanism::Ecdsa, handle, &crate::digest::sha384(message))
        }
        Algorithm::EdDsa => session.sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            handle,
            message,
        ),
        Algorithm::HmacSha256 => {
            return Err(Error::WrongKeyType {
                label: key.label.clone(),
                actual: "HMAC".into(),
                expected: "signing".into(),
            });
        }
    }
    .map_err(ck(Function::Sign))?;
    if signature.len() != algorithm.signature_len() {
        return Err(Error::Encoding(format!(
            "token returned a {}-byte {algorithm} signature, expected {}",
            signature.len(),
            algorithm.signature_len()
        )));
    }
    Ok(signature)
}

/// HMAC-SHA256 of `data` under the secret key object `handle` (described
/// by `key`).
pub(crate) fn hmac_with(
    session: &Session,
    handle: ObjectHandle,
    key: &KeyInfo,
    data: &[u8],
) -> Result<[u8; 32]> {
    if key.algorithm != Algorithm::HmacSha256 {
        return Err(Error::WrongKeyType {
            label: key.label.clone(),
            actual: key.algorithm.to_string(),
            expected: "HMAC".into(),
        });
    }
    let mac = session
        .sign(&Mechanism::Sha256Hmac, handle, data)
        .map_err(ck(Function::Sign))?;
    mac.as_slice()
        .try_into()
        .map_err(|_| Error::Encoding(format!("token returned a {}-byte HMAC", mac.len())))
}
