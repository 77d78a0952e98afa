//! What a key blob says about its key: the public area, checked on every
//! load, and the [`KeyInfo`] read from it (purpose, algorithm, public key).

use tss_esapi::structures::Public;
use tss_esapi::traits::UnMarshall;

use super::blob::KeyBlob;
use super::classify::wrap;
use super::template::check_public;
use crate::algorithm::Algorithm;
use crate::backend::KeyInfo;
use crate::error::{Error, Result};
use crate::public_key::PublicKey;

fn public_key_of(algorithm: Algorithm, public: &Public) -> Result<Option<PublicKey>> {
    let coord_len = match algorithm {
        Algorithm::Es256 => 32,
        Algorithm::Es384 => 48,
        _ => return Ok(None),
    };
    let Public::Ecc { unique, .. } = public else {
        return Err(Error::Encoding("TPM key is not an ECC key".into()));
    };
    let mut point = vec![0x04];
    for coord in [unique.x().value(), unique.y().value()] {
        if coord.len() > coord_len {
            return Err(Error::Encoding("TPM ECC coordinate too long".into()));
        }
        point.extend(std::iter::repeat_n(0, coord_len - coord.len()));
        point.extend_from_slice(coord);
    }
    PublicKey::from_ec_point(algorithm, &point).map(Some)
}

/// The checked [`KeyInfo`] of the key `label` in `blob`.
pub(crate) fn key_info(label: &str, blob: &KeyBlob) -> Result<KeyInfo> {
    let public = Public::unmarshall(&blob.public).map_err(wrap("reading key blob"))?;
    check_public(label, &public)?;
    Ok(KeyInfo {
        label: label.to_owned(),
        purpose: blob.purpose,
        algorithm: blob.algorithm,
        public_key: public_key_of(blob.algorithm, &public)?,
    })
}
