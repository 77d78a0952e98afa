//! The API's side of an offline ceremony: an officer fetches the request
//! to carry to the offline IACA, and brings its response back. What is
//! checked is `keys::ceremony`'s; what is kept is the key manager's.

use time::OffsetDateTime;

use super::answers::ok;
use super::proposals::Officers;
use crate::keys::manager::ImportError;
use crate::refusal::{Answer, Class, Refusal, Reply};

impl Officers {
    /// `POST /v1/ceremony/requests`: a new request (JSON) for the
    /// spares waiting for a certificate and the revocations to list.
    pub fn ceremony_request(&self, client: &str) -> Answer {
        let now = OffsetDateTime::now_utc();
        let bytes = self.keys.ceremony_request(now).map_err(|detail| {
            Refusal::new(Class::Conflict, "no_ceremony", detail).with_rule("pki.iaca_custody")
        })?;
        tracing::info!(officer = %client, "ceremony request exported");
        Ok((Reply::Created, bytes))
    }

    /// `POST /v1/ceremony/responses`: imports a ceremony's response once
    /// verified; a refusal names the rule that refused it.
    pub fn ceremony_response(&self, client: &str, body: &[u8]) -> Answer {
        let now = OffsetDateTime::now_utc();
        match self.keys.import_ceremony(body, client, now) {
            Ok(summary) => ok(Reply::Ok, serde_json::json!({ "imported": summary })),
            Err(ImportError::Refused(why)) => {
                Err(
                    Refusal::new(Class::Unprocessable, "ceremony_refused", why.to_string())
                        .with_rule(why.rule()),
                )
            }
            Err(ImportError::Failed(why)) => {
                Err(
                    Refusal::new(Class::Unavailable, "ceremony_not_imported", why)
                        .with_rule("ceremony.import"),
                )
            }
        }
    }
}
