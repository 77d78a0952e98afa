//! The policy file: parsed strictly (unknown keys refused with their line),
//! validated, and identified by the SHA-256 of its bytes.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::{Date, Month};

use crate::calendar;

/// A policy file that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not valid TOML for the schema; the message names the line.
    #[error("{source_name}: {message}")]
    Parse {
        /// File name (or other source label).
        source_name: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Valid TOML, inconsistent values.
    #[error("{source_name}: {message}")]
    Invalid {
        /// File name.
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

/// How the holder's physical card was checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// For people reading the file.
    pub description: String,
    /// Fee in KRW (waived for a free first-time copy).
    pub fee_krw: u32,
}

/// One client identity and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRule {
    /// URI SAN (else DNS SAN) of the client certificate.
    pub identity: String,
    /// `issuer`, `revoker`, `officer`, `auditor`.
    pub roles: Vec<Role>,
    /// Profiles it may request (issuers).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// An officer's approval key, pinned: base64 of the DER
    /// SubjectPublicKeyInfo of a P-256 key held in the officer's own token
    /// (`dojangctl officer enroll` prints it). Required for officers, refused
    /// for anyone else.
    #[serde(default)]
    pub signing_key: Option<String>,
}

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Issue and refresh credentials.
    Issuer,
    /// Revoke, suspend, reinstate.
    Revoker,
    /// Key ceremonies and approvals.
    Officer,
    /// Read the audit log.
    Auditor,
}

/// A credential profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRule {
    /// `mso_mdoc` or `dc+sd-jwt`.
    pub format: CredentialFormat,
}

/// The formats Dojang issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CredentialFormat {
    /// ISO 18013-5 mdoc.
    #[serde(rename = "mso_mdoc")]
    Mdoc,
    /// SD-JWT VC.
    #[serde(rename = "dc+sd-jwt")]
    SdJwtVc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HolderRule {
    minimum_age: u16,
    citizens_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentRule {
    validity_years: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FreeIssuanceRule {
    quota: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PilotFile {
    enabled: bool,
    start: toml::value::Datetime,
    months: u8,
    municipalities: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsRule {
    requests_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct KeysFile {
    rotate_every: String,
    max_signatures: u64,
    prepublish: String,
    retention_margin: String,
    on_ds_revocation: DsRevocation,
}

impl Default for KeysFile {
    fn default() -> Self {
        KeysFile {
            rotate_every: "90d".into(),
            max_signatures: 50_000_000,
            prepublish: "7d".into(),
            retention_margin: "30d".into(),
            on_ds_revocation: DsRevocation::Suspend,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OfficersFile {
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

/// What an emergency revocation of a DS key does to the credentials it signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsRevocation {
    /// Revoke them: holders must be issued again.
    Revoke,
    /// Suspend them: a refresh re-signs them with the new key, and a
    /// revoker may reinstate them.
    Suspend,
    /// Leave their status alone (the CRL alone tells verifiers).
    Keep,
}

/// The key lifecycle rules (`[keys]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRules {
    /// Rotate a signing key after it has signed this long.
    pub rotate_every: time::Duration,
    /// Rotate after this many signatures.
    pub max_signatures: u64,
    /// Publish a new key this long before it signs.
    pub prepublish: time::Duration,
    /// Keep a retired key published this long after the last thing it
    /// signed expired.
    pub retention_margin: time::Duration,
    /// What a DS key's emergency revocation does to what it signed.
    pub on_ds_revocation: DsRevocation,
}

/// Dual control of officer operations (`[officers]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfficerRules {
    /// Distinct officers who must approve, the proposer included (M of N).
    pub approvals_required: usize,
    /// How long a proposal stays open.
    pub proposal_lifetime: time::Duration,
}

/// Parses `90d`, `12h`, `30m` or `45s` (one number, one unit).
pub fn parse_duration(text: &str) -> Option<time::Duration> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    if number <= 0 {
        return None;
    }
    let seconds = match unit {
        'd' => number.checked_mul(86_400)?,
        'h' => number.checked_mul(3_600)?,
        'm' => number.checked_mul(60)?,
        's' => number,
        _ => return None,
    };
    Some(time::Duration::seconds(seconds))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    version: String,
    holder: HolderRule,
    document: DocumentRule,
    channels: BTreeMap<String, ChannelRule>,
    free_issuance: FreeIssuanceRule,
    pilot: PilotFile,
    limits: LimitsRule,
    clients: Vec<ClientRule>,
    profiles: BTreeMap<String, ProfileRule>,
    #[serde(default)]
    keys: KeysFile,
    #[serde(default)]
    officers: OfficersFile,
}

/// The pilot: a date window and the participating municipalities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pilot {
    /// Whether the pilot limits issuance.
    pub enabled: bool,
    /// First day (Seoul).
    pub first_day: Date,
    /// Last day (Seoul), inclusive.
    pub last_day: Date,
    /// Administrative district codes.
    pub municipalities: Vec<String>,
}

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy's name.
    pub name: String,
    /// Its version string.
    pub version: String,
    /// Hex SHA-256 of the file's bytes: recorded with every decision.
    pub hash: String,
    /// Minimum age on the issue date.
    pub minimum_age: u16,
    /// Only Korean nationals.
    pub citizens_only: bool,
    /// Document validity.
    pub validity_years: u16,
    /// Channels by name.
    pub channels: BTreeMap<String, ChannelRule>,
    /// Free first-time copies, counted globally.
    pub free_quota: u64,
    /// The pilot.
    pub pilot: Pilot,
    /// Requests per client per minute.
    pub requests_per_minute: u32,
    /// Client identities and their rights.
    pub clients: Vec<ClientRule>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, ProfileRule>,
    /// Key lifecycle rules.
    pub keys: KeyRules,
    /// Dual control of officer operations.
    pub officers: OfficerRules,
    /// Each officer's pinned approval key (DER SubjectPublicKeyInfo).
    officer_keys: BTreeMap<String, Vec<u8>>,
}

fn to_date(dt: &toml::value::Datetime) -> Option<Date> {
    match (dt.date, dt.time, dt.offset) {
        (Some(d), None, None) => {
            Date::from_calendar_date(i32::from(d.year), Month::try_from(d.month).ok()?, d.day).ok()
        }
        _ => None,
    }
}

/// The last day of a period of `months` starting on (and counting) `first`:
/// the day before the corresponding day (Civil Act arts. 159-160).
fn last_day_of_months(first: Date, months: u8) -> Option<Date> {
    let index = i32::from(u8::from(first.month())) - 1 + i32::from(months);
    let year = first.year() + index.div_euclid(12);
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).ok()?).ok()?;
    let corresponding = Date::from_calendar_date(year, month, first.day())
        // No such day (e.g. 31st): the period ends on the month's last day.
        .or_else(|_| {
            Date::from_calendar_date(year, month, 1)
                .map(|d| d.replace_day(month.length(year)).unwrap_or(d))
                .map(|d| d.next_day().unwrap_or(d))
        })
        .ok()?;
    corresponding.previous_day()
}

impl PolicyFile {
    /// The top-level checks: name and version, `[holder]`, `[document]`,
    /// non-empty `[channels]` and `[profiles]`, `[limits]`.
    fn check_scalars(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.version.trim().is_empty() {
            return Err("name and version must not be empty".into());
        }
        if !(1..=120).contains(&self.holder.minimum_age) {
            return Err("holder.minimum_age must be 1 to 120".into());
        }
        if !(1..=10).contains(&self.document.validity_years) {
            return Err("document.validity_years must be 1 to 10".into());
        }
        if self.channels.is_empty() {
            return Err("at least one [channels.NAME] is required".into());
        }
        if self.profiles.is_empty() {
            return Err("at least one [profiles.NAME] is required".into());
        }
        if self.limits.requests_per_minute == 0 {
            return Err("limits.requests_per_minute must be positive".into());
        }
        Ok(())
    }
}

impl PilotFile {
    /// `[pilot]`: the window from its start date and the municipality codes.
    fn read(self) -> Result<Pilot, String> {
        let first_day = to_date(&self.start).ok_or("pilot.start must be a date (YYYY-MM-DD)")?;
        if !(1..=24).contains(&self.months) {
            return Err("pilot.months must be 1 to 24".into());
        }
        let last_day =
            last_day_of_months(first_day, self.months).ok_or("pilot window out of range")?;
        for code in &self.municipalities {
            if code.len() != 10 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "pilot.municipalities: {code:?} is not a 10-digit administrative district code"
                ));
            }
        }
        if self.enabled && self.municipalities.is_empty() {
            return Err(
                "pilot.enabled is true but pilot.municipalities is empty: set the participating codes".into(),
            );
        }
        Ok(Pilot {
            enabled: self.enabled,
            first_day,
            last_day,
            municipalities: self.municipalities,
        })
    }
}

impl KeysFile {
    /// `[keys]`: durations parsed, a positive signature budget, prepublication
    /// shorter than the rotation period.
    fn read(&self) -> Result<KeyRules, String> {
        let keys = KeyRules {
            rotate_every: duration("keys.rotate_every", &self.rotate_every)?,
            max_signatures: self.max_signatures,
            prepublish: duration("keys.prepublish", &self.prepublish)?,
            retention_margin: duration("keys.retention_margin", &self.retention_margin)?,
            on_ds_revocation: self.on_ds_revocation,
        };
        if keys.max_signatures == 0 {
            return Err("keys.max_signatures must be positive".into());
        }
        if keys.prepublish >= keys.rotate_every {
            return Err("keys.prepublish must be shorter than keys.rotate_every".into());
        }
        Ok(keys)
    }
}

impl OfficersFile {
    /// `[officers]`: an M of N that dual control can meet, given the
    /// officer clients.
    fn read(&self, clients: &[ClientRule]) -> Result<OfficerRules, String> {
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

/// `[[clients]]`: unique non-empty identities, at least one role, known
/// profiles.
fn check_clients(
    clients: &[ClientRule],
    profiles: &BTreeMap<String, ProfileRule>,
) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for client in clients {
        if client.identity.is_empty() || !seen.insert(client.identity.as_str()) {
            return Err(format!(
                "clients: identity {:?} is empty or listed twice",
                client.identity
            ));
        }
        if client.roles.is_empty() {
            return Err(format!("clients: {:?} has no roles", client.identity));
        }
        for profile in &client.profiles {
            if !profiles.contains_key(profile) {
                return Err(format!(
                    "clients: {:?} names unknown profile {profile:?}",
                    client.identity
                ));
            }
        }
    }
    Ok(())
}

/// Each officer's `signing_key`: present, a P-256 public key, pinned for
/// one officer only (one key counted as two officers would be one person
/// approving twice); nobody else has one.
fn pinned_officer_keys(clients: &[ClientRule]) -> Result<BTreeMap<String, Vec<u8>>, String> {
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

/// A `[keys]` or `[officers]` duration, `name` naming it in the error.
fn duration(name: &str, text: &str) -> Result<time::Duration, String> {
    parse_duration(text).ok_or_else(|| {
        format!(
            "{name} {text:?} must be a positive number with a unit: d, h, m or s (e.g. \"90d\")"
        )
    })
}

/// Hex SHA-256 of the policy file's text.
fn sha256_hex(text: &str) -> String {
    let mut digest = openssl::sha::Sha256::new();
    digest.update(text.as_bytes());
    digest.finish().iter().map(|b| format!("{b:02x}")).collect()
}

impl Policy {
    /// Parses and validates a policy from `text`; `source_name` names it in errors.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| PolicyError::Invalid {
            source_name: source_name.to_owned(),
            message,
        };
        file.check_scalars().map_err(invalid)?;
        let pilot = file.pilot.read().map_err(invalid)?;
        check_clients(&file.clients, &file.profiles).map_err(invalid)?;
        let keys = file.keys.read().map_err(invalid)?;
        let officers = file.officers.read(&file.clients).map_err(invalid)?;
        let officer_keys = pinned_officer_keys(&file.clients).map_err(invalid)?;
        Ok(Policy {
            name: file.name,
            version: file.version,
            hash: sha256_hex(text),
            minimum_age: file.holder.minimum_age,
            citizens_only: file.holder.citizens_only,
            validity_years: file.document.validity_years,
            channels: file.channels,
            free_quota: file.free_issuance.quota,
            pilot,
            requests_per_minute: file.limits.requests_per_minute,
            clients: file.clients,
            profiles: file.profiles,
            keys,
            officers,
            officer_keys,
        })
    }

    /// The approval key pinned for officer `identity` (DER
    /// SubjectPublicKeyInfo of a P-256 key).
    pub fn officer_key(&self, identity: &str) -> Option<&[u8]> {
        self.officer_keys.get(identity).map(Vec::as_slice)
    }

    /// The client rule for `identity`.
    pub fn client(&self, identity: &str) -> Option<&ClientRule> {
        self.clients.iter().find(|c| c.identity == identity)
    }

    /// Whether `identity` holds `role`.
    pub fn has_role(&self, identity: &str, role: Role) -> bool {
        self.client(identity)
            .is_some_and(|c| c.roles.contains(&role))
    }

    /// The officer identities (N of the M-of-N rule).
    pub fn officers(&self) -> impl Iterator<Item = &str> {
        self.clients
            .iter()
            .filter(|c| c.roles.contains(&Role::Officer))
            .map(|c| c.identity.as_str())
    }

    /// The last day of the document issued on `issued`.
    pub fn document_expiry(&self, issued: Date) -> Option<Date> {
        calendar::expiry_date(issued, self.validity_years)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn the_pilot_runs_two_months_from_27_december() {
        assert_eq!(
            last_day_of_months(date!(2026 - 12 - 27), 2),
            Some(date!(2027 - 02 - 26))
        );
        // No corresponding day: to the end of the month.
        assert_eq!(
            last_day_of_months(date!(2026 - 12 - 31), 2),
            Some(date!(2027 - 02 - 28))
        );
        assert_eq!(
            last_day_of_months(date!(2027 - 01 - 01), 1),
            Some(date!(2027 - 01 - 31))
        );
    }

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
