//! Key lookup in the token and the checks every load runs: the one private
//! or secret key with a label, its attributes (a Dojang `CKA_ID`, born in
//! the token, never extractable), and its public half: the one public
//! object with the same label and id, born in the token, and proven to
//! match by signing a random challenge.

use cryptoki::context::Function;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::classify::ck;
use super::sign::sign_with;
use super::template::{self, check_key_flags};
use crate::algorithm::{Algorithm, KeyPurpose};
use crate::backend::KeyInfo;
use crate::error::{Error, Result};
use crate::public_key::{PublicKey, unwrap_ec_point};

/// A key found in the token, cached per connection (handles die with it).
#[derive(Debug)]
pub(crate) struct CachedKey {
    /// The private or secret key object.
    pub(crate) handle: ObjectHandle,
    /// What the checks found it to be.
    pub(crate) info: KeyInfo,
}

/// The objects a label names: one private or secret key, and the public
/// objects that carry the same label.
struct Labelled {
    key: ObjectHandle,
    class: Option<ObjectClass>,
    publics: Vec<ObjectHandle>,
}

/// What a key's own attributes say, once they passed the checks.
struct Checked {
    purpose: KeyPurpose,
    algorithm: Algorithm,
    id: Vec<u8>,
}

fn refuse(label: &str, attribute: &'static str, actual: &str, required: &str) -> Error {
    Error::KeyPolicy {
        label: label.to_owned(),
        attribute,
        actual: actual.to_owned(),
        required: required.to_owned(),
    }
}

/// Handles of objects with `label` (both halves of a pair share it).
pub(crate) fn objects_labelled(session: &Session, label: &str) -> Result<Vec<ObjectHandle>> {
    session
        .find_objects(&[
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(ck(Function::FindObjects))
}

/// Every token object, for listing.
pub(crate) fn token_objects(session: &Session) -> Result<Vec<ObjectHandle>> {
    session
        .find_objects(&[Attribute::Token(true)])
        .map_err(ck(Function::FindObjects))
}

/// The label of `handle` if it is a private or secret key with a Dojang
/// `CKA_ID`; `None` for anything else in the token.
pub(crate) fn dojang_key_label(session: &Session, handle: ObjectHandle) -> Result<Option<String>> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::Class,
                AttributeType::Label,
                AttributeType::Id,
            ],
        )
        .map_err(ck(Function::GetAttributeValue))?;
    let mut is_key = false;
    let mut label = None;
    let mut ours = false;
    for attr in attrs {
        match attr {
            Attribute::Class(c) => {
                is_key = c == ObjectClass::PRIVATE_KEY || c == ObjectClass::SECRET_KEY;
            }
            Attribute::Label(l) => label = String::from_utf8(l).ok(),
            Attribute::Id(id) => ours = template::purpose_of_id(&id).is_some(),
            _ => {}
        }
    }
    Ok(match (is_key, ours, label) {
        (true, true, Some(label)) => Some(label),
        _ => None,
    })
}

fn class_of(session: &Session, handle: ObjectHandle) -> Result<Option<ObjectClass>> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::Class])
        .map_err(ck(Function::GetAttributeValue))?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Class(c) => Some(c),
        _ => None,
    }))
}

/// Finds the private or secret key `label`, checks it, and reads its
/// public half: the one public object with the same label and id, born
/// in the token, and proven to match by signing a random challenge.
pub(crate) fn load_key(session: &Session, label: &str) -> Result<CachedKey> {
    let objects = find_labelled(session, label)?;
    let checked = check_key(session, label, objects.key, objects.class)?;
    let public_key = if checked.algorithm.is_signature() {
        Some(read_public_half(
            session,
            label,
            &objects.publics,
            &checked,
        )?)
    } else {
        None
    };
    let key = CachedKey {
        handle: objects.key,
        info: KeyInfo {
            label: label.to_owned(),
            purpose: checked.purpose,
            algorithm: checked.algorithm,
            public_key,
        },
    };
    prove_possession(session, &key)?;
    Ok(key)
}

/// Sorts the objects labelled `label` into the key (exactly one private or
/// secret key) and the public objects beside it.
fn find_labelled(session: &Session, label: &str) -> Result<Labelled> {
    let mut key_handle = None;
    let mut publics = Vec::new();
    for handle in objects_labelled(session, label)? {
        let class = class_of(session, handle)?;
        if class == Some(ObjectClass::PRIVATE_KEY) || class == Some(ObjectClass::SECRET_KEY) {
            if key_handle.replace((handle, class)).is_some() {
                return Err(refuse(
                    label,
                    "CKA_LABEL",
                    "shared by several keys",
                    "unique",
                ));
            }
        } else if class == Some(ObjectClass::PUBLIC_KEY) {
            publics.push(handle);
        }
    }
    let (key, class) = key_handle.ok_or_else(|| Error::KeyNotFound {
        label: label.to_owned(),
    })?;
    Ok(Labelled {
        key,
        class,
        publics,
    })
}

/// Reads the key's attributes and checks them: a Dojang id, the flags every
/// key and its class must carry, and a key type Dojang uses.
fn check_key(
    session: &Session,
    label: &str,
    handle: ObjectHandle,
    class: Option<ObjectClass>,
) -> Result<Checked> {
    let class_flags: &[(AttributeType, &'static str, bool)] =
        if class == Some(ObjectClass::SECRET_KEY) {
            &template::SECRET_KEY_FLAGS
        } else {
            &template::PRIVATE_KEY_FLAGS
        };

    let mut wanted: Vec<AttributeType> = template::REQUIRED_FLAGS
        .iter()
        .chain(class_flags)
        .map(|f| f.0)
        .collect();
    wanted.extend([
        AttributeType::KeyType,
        AttributeType::Id,
        AttributeType::EcParams,
    ]);
    let attrs = session
        .get_attributes(handle, &wanted)
        .map_err(ck(Function::GetAttributeValue))?;
    let mut key_type = None;
    let mut id = Vec::new();
    let mut ec_params = None;
    for attr in &attrs {
        match attr {
            Attribute::KeyType(t) => key_type = Some(*t),
            Attribute::Id(v) => id.clone_from(v),
            Attribute::EcParams(v) => ec_params = Some(v.clone()),
            _ => {}
        }
    }
    let purpose = template::purpose_of_id(&id).ok_or_else(|| {
        refuse(
            label,
            "CKA_ID",
            "not a Dojang key id",
            "a key generated by Dojang",
        )
    })?;
    check_key_flags(label, &attrs, &template::REQUIRED_FLAGS)?;
    check_key_flags(label, &attrs, class_flags)?;
    let key_type =
        key_type.ok_or_else(|| refuse(label, "CKA_KEY_TYPE", "unreadable", "a key type"))?;
    let algorithm = template::algorithm_of(label, key_type, ec_params.as_deref())?;
    Ok(Checked {
        purpose,
        algorithm,
        id,
    })
}

/// The key's public half: exactly one public object with the label, the
/// same `CKA_ID`, and generated in the token (`CKA_LOCAL`).
fn read_public_half(
    session: &Session,
    label: &str,
    publics: &[ObjectHandle],
    key: &Checked,
) -> Result<PublicKey> {
    let [public] = publics else {
        return Err(refuse(
            label,
            "CKO_PUBLIC_KEY",
            &format!("{} public objects with this label", publics.len()),
            "exactly one",
        ));
    };
    let public_attrs = session
        .get_attributes(*public, &[AttributeType::Id, AttributeType::Local])
        .map_err(ck(Function::GetAttributeValue))?;
    let same_id = public_attrs
        .iter()
        .any(|a| matches!(a, Attribute::Id(v) if *v == key.id));
    let local = public_attrs
        .iter()
        .any(|a| matches!(a, Attribute::Local(true)));
    if !same_id || !local {
        return Err(refuse(
            label,
            "CKO_PUBLIC_KEY",
            "a public object not generated with this key",
            "the public half generated with it (same CKA_ID, CKA_LOCAL)",
        ));
    }
    read_public(session, *public, key.algorithm)
}

fn read_public(session: &Session, handle: ObjectHandle, algorithm: Algorithm) -> Result<PublicKey> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .map_err(ck(Function::GetAttributeValue))?;
    let value = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| Error::Encoding("public key without CKA_EC_POINT".into()))?;
    let point = unwrap_ec_point(&value, template::point_len(algorithm))?;
    match algorithm {
        Algorithm::EdDsa => PublicKey::from_ed25519(point),
        _ => PublicKey::from_ec_point(algorithm, point),
    }
}

/// Proof of possession: a public object can be replaced without the PIN,
/// and a certificate for someone else's key would let them sign.
fn prove_possession(session: &Session, key: &CachedKey) -> Result<()> {
    if let Some(public) = &key.info.public_key {
        let mut challenge = [0u8; 32];
        session
            .generate_random_slice(&mut challenge)
            .map_err(ck(Function::GenerateRandom))?;
        let signature = sign_with(session, key.handle, &key.info, &challenge)?;
        if !public.verify(&challenge, &signature).unwrap_or(false) {
            return Err(refuse(
                &key.info.label,
                "CKO_PUBLIC_KEY",
                "does not verify the private key's signature",
                "the private key's own public half",
            ));
        }
    }
    Ok(())
}
