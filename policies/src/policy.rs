//! The policy file: parsed strictly (unknown keys refused with their line),
//! validated, and identified by the SHA-256 of its bytes.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::{Date, Month};

use crate::calendar;
pub use crate::clients::{ClientRule, Role};
use crate::duration::duration;
use crate::officers::{OfficerRules, OfficersFile, pinned_officer_keys};

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
    /// SHA-256 (hex) of the card CA's certificate: on the wallet flow
    /// (OpenID4VCI) this channel then needs a signature by the card's chip
    /// over the nonce and the phone's key, with a certificate from that CA
    /// whose serial is the card the counter named.
    #[serde(default)]
    pub card_ca_sha256: Option<String>,
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
        for (name, channel) in &self.channels {
            if let Some(pin) = &channel.card_ca_sha256
                && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(format!(
                    "channels.{name}.card_ca_sha256 must be 64 hex digits"
                ));
            }
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
        if let Some(code) = client
            .municipalities
            .iter()
            .find(|c| c.len() != 10 || !c.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "clients: {:?}: municipality {code:?} is not a 10-digit district code",
                client.identity
            ));
        }
        if !client.municipalities.is_empty() && !client.roles.contains(&Role::Issuer) {
            return Err(format!(
                "clients: {:?} names municipalities but does not issue",
                client.identity
            ));
        }
    }
    Ok(())
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
}
