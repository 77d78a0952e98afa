//! The `[officers]` table and the officers' pinned approval keys: dual
//! control's M of N, how long a proposal stays open, and the one P-256 key
//! each officer signs approvals with.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::clients::{ClientRule, Role};
use crate::duration::duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OfficersFile {
    approvals_required: usize,
    proposal_lifetime: String,
}

impl Default for OfficersFile {
    fn default() -> Self {
        OfficersFile {
            approvals_required: 2,
            proposal_lifetime: "24h".into(),
        }
    }
}

/// Dual control of officer operations (`[officers]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfficerRules {
    /// Distinct officers who must approve, the proposer included (M of N).
    pub approvals_required: usize,
    /// How long a proposal stays open.
    pub proposal_lifetime: time::Duration,
}

impl OfficersFile {
    /// `[officers]`: an M of N that dual control can meet, given the
    /// officer clients.
    pub(crate) fn read(&self, clients: &[ClientRule]) -> Result<OfficerRules, String> {
        let officers = clients
            .iter()
            .filter(|c| c.roles.contains(&Role::Officer))
            .count();
        let required = self.approvals_required;
        // Fewer than two is no dual control; more than the officers listed
        // could never be met (zero officers: no officer operation at all).
        if required < 2 || (officers > 0 && required > officers) {
            return Err(format!(
                "officers.approvals_required must be 2 to the number of officer clients ({officers}), got {required}"
            ));
        }
        let proposal_lifetime = duration("officers.proposal_lifetime", &self.proposal_lifetime)?;
        // A proposal open for months is a signature waiting for a
        // forgotten context; officers propose again instead.
        if proposal_lifetime > time::Duration::days(30) {
            return Err("officers.proposal_lifetime must be at most 30d".into());
        }
        Ok(OfficerRules {
            approvals_required: required,
            proposal_lifetime,
        })
    }
}

/// Each officer's `signing_key`: present, a P-256 public key, pinned for
/// one officer only (one key counted as two officers would be one person
/// approving twice); nobody else has one.
pub(crate) fn pinned_officer_keys(
    clients: &[ClientRule],
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    use openssl::base64::decode_block;
    use openssl::ec::{EcKey, PointConversionForm};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    let mut keys = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for client in clients {
        let officer = client.roles.contains(&Role::Officer);
        let who = &client.identity;
        let text = match (&client.signing_key, officer) {
            (None, false) => continue,
            (Some(_), false) => {
                return Err(format!(
                    "clients: {who:?} has a signing_key but not the officer role: only officers sign approvals"
                ));
            }
            (None, true) => {
                return Err(format!(
                    "clients: officer {who:?} has no signing_key: pin the approval key of the officer's token \
                     (dojangctl officer enroll prints it)"
                ));
            }
            (Some(text), true) => text,
        };
        let bad = || {
            format!(
                "clients: officer {who:?}: signing_key is not a base64 P-256 public key (SubjectPublicKeyInfo)"
            )
        };
        let der = decode_block(text.trim()).map_err(|_| bad())?;
        let key = PKey::public_key_from_der(&der).map_err(|_| bad())?;
        let ec = key.ec_key().map_err(|_| bad())?;
        if ec.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
            return Err(bad());
        }
        // One encoding per key (uncompressed point, no trailing bytes), so
        // one key spelled two ways is still one officer's.
        let mut ctx = openssl::bn::BigNumContext::new().map_err(|_| bad())?;
        let point = ec
            .public_key()
            .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
            .map_err(|_| bad())?;
        let der = EcKey::from_public_key(ec.group(), ec.public_key())
            .and_then(PKey::from_ec_key)
            .and_then(|k| k.public_key_to_der())
            .map_err(|_| bad())?;
        if !seen.insert(point) {
            return Err(format!(
                "clients: officer {who:?} has the signing_key of another officer: each officer pins their own"
            ));
        }
        let _ = keys.insert(who.clone(), der);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use crate::{Policy, PolicyError};

    fn key(curve: openssl::nid::Nid) -> String {
        let group = openssl::ec::EcGroup::from_curve_name(curve).unwrap();
        let key = openssl::ec::EcKey::generate(&group).unwrap();
        let pkey = openssl::pkey::PKey::from_ec_key(key).unwrap();
        openssl::base64::encode_block(&pkey.public_key_to_der().unwrap())
    }

    fn with_officers(blocks: &[(&str, &str, Option<String>)]) -> Result<Policy, PolicyError> {
        let mut text = crate::SHIPPED_POLICY.to_owned();
        for (identity, role, signing_key) in blocks {
            text.push_str(&format!(
                "\n[[clients]]\nidentity = \"{identity}\"\nroles = [\"{role}\"]\n"
            ));
            if let Some(k) = signing_key {
                text.push_str(&format!("signing_key = \"{k}\"\n"));
            }
        }
        Policy::parse("test", &text)
    }

    #[test]
    fn officers_pin_one_p256_key_each_and_nobody_else_does() {
        use openssl::nid::Nid;
        let (a, b) = (key(Nid::X9_62_PRIME256V1), key(Nid::X9_62_PRIME256V1));
        let good = with_officers(&[
            ("o/kim", "officer", Some(a.clone())),
            ("o/lee", "officer", Some(b.clone())),
        ])
        .unwrap();
        assert_eq!(
            good.officer_key("o/kim"),
            Some(openssl::base64::decode_block(&a).unwrap().as_slice())
        );
        assert_eq!(good.officer_key("spiffe://mois.go.kr/office-counter"), None);
        let refused = |blocks: &[(&str, &str, Option<String>)], says: &str| {
            let e = with_officers(blocks).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        };
        refused(
            &[
                ("o/kim", "officer", None),
                ("o/lee", "officer", Some(b.clone())),
            ],
            "has no signing_key",
        );
        refused(
            &[
                ("o/kim", "officer", Some(a.clone())),
                ("o/lee", "officer", Some(a.clone())),
            ],
            "of another officer",
        );
        refused(
            &[
                ("o/kim", "officer", Some(a.clone())),
                ("o/lee", "officer", Some(b.clone())),
                ("o/x", "issuer", Some(key(Nid::X9_62_PRIME256V1))),
            ],
            "not the officer role",
        );
        refused(
            &[
                ("o/kim", "officer", Some(key(Nid::SECP384R1))),
                ("o/lee", "officer", Some(b.clone())),
            ],
            "P-256",
        );
        refused(
            &[
                ("o/kim", "officer", Some("bm90IGEga2V5".into())),
                ("o/lee", "officer", Some(b)),
            ],
            "P-256",
        );
        // One key spelled twice (compressed point) is still one officer's.
        let compressed = {
            let der = openssl::base64::decode_block(&a).unwrap();
            let key = openssl::pkey::PKey::public_key_from_der(&der).unwrap();
            let ec = key.ec_key().unwrap();
            let mut ctx = openssl::bn::BigNumContext::new().unwrap();
            let point = ec
                .public_key()
                .to_bytes(
                    ec.group(),
                    openssl::ec::PointConversionForm::COMPRESSED,
                    &mut ctx,
                )
                .unwrap();
            // SubjectPublicKeyInfo, id-ecPublicKey / prime256v1, compressed point.
            let mut spki = vec![
                0x30, 0x39, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x22, 0x00,
            ];
            spki.extend(point);
            openssl::base64::encode_block(&spki)
        };
        assert_ne!(compressed, a);
        refused(
            &[
                ("o/kim", "officer", Some(a.clone())),
                ("o/lee", "officer", Some(compressed)),
            ],
            "of another officer",
        );
        // A proposal cannot stay open for months.
        let long = crate::SHIPPED_POLICY
            .replace("proposal_lifetime = \"24h\"", "proposal_lifetime = \"31d\"");
        let e = Policy::parse("t", &long).unwrap_err().to_string();
        assert!(e.contains("at most 30d"), "{e}");
        // Fewer pinned officers than M: no quorum possible.
        refused(&[("o/kim", "officer", Some(a))], "approvals_required");
    }
}
