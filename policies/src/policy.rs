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
        if file.name.trim().is_empty() || file.version.trim().is_empty() {
            return Err(invalid("name and version must not be empty".into()));
        }
        if !(1..=120).contains(&file.holder.minimum_age) {
            return Err(invalid("holder.minimum_age must be 1 to 120".into()));
        }
        if !(1..=10).contains(&file.document.validity_years) {
            return Err(invalid("document.validity_years must be 1 to 10".into()));
        }
        if file.channels.is_empty() {
            return Err(invalid("at least one [channels.NAME] is required".into()));
        }
        if file.profiles.is_empty() {
            return Err(invalid("at least one [profiles.NAME] is required".into()));
        }
        if file.limits.requests_per_minute == 0 {
            return Err(invalid(
                "limits.requests_per_minute must be positive".into(),
            ));
        }
        let first_day = to_date(&file.pilot.start)
            .ok_or_else(|| invalid("pilot.start must be a date (YYYY-MM-DD)".into()))?;
        if !(1..=24).contains(&file.pilot.months) {
            return Err(invalid("pilot.months must be 1 to 24".into()));
        }
        let last_day = last_day_of_months(first_day, file.pilot.months)
            .ok_or_else(|| invalid("pilot window out of range".into()))?;
        for code in &file.pilot.municipalities {
            if code.len() != 10 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(format!(
                    "pilot.municipalities: {code:?} is not a 10-digit administrative district code"
                )));
            }
        }
        if file.pilot.enabled && file.pilot.municipalities.is_empty() {
            return Err(invalid(
                "pilot.enabled is true but pilot.municipalities is empty: set the participating codes".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for client in &file.clients {
            if client.identity.is_empty() || !seen.insert(client.identity.as_str()) {
                return Err(invalid(format!(
                    "clients: identity {:?} is empty or listed twice",
                    client.identity
                )));
            }
            if client.roles.is_empty() {
                return Err(invalid(format!(
                    "clients: {:?} has no roles",
                    client.identity
                )));
            }
            for profile in &client.profiles {
                if !file.profiles.contains_key(profile) {
                    return Err(invalid(format!(
                        "clients: {:?} names unknown profile {profile:?}",
                        client.identity
                    )));
                }
            }
        }
        let digest = openssl::sha::Sha256::new();
        let mut digest = digest;
        digest.update(text.as_bytes());
        let hash = digest.finish().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Policy {
            name: file.name,
            version: file.version,
            hash,
            minimum_age: file.holder.minimum_age,
            citizens_only: file.holder.citizens_only,
            validity_years: file.document.validity_years,
            channels: file.channels,
            free_quota: file.free_issuance.quota,
            pilot: Pilot {
                enabled: file.pilot.enabled,
                first_day,
                last_day,
                municipalities: file.pilot.municipalities,
            },
            requests_per_minute: file.limits.requests_per_minute,
            clients: file.clients,
            profiles: file.profiles,
        })
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
