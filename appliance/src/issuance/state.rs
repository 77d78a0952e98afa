//! A credential's metadata (`GET /v1/credentials/{id}`) and its state
//! changes (revoke, suspend, reinstate), each change an audit entry and a
//! change of the status lists.

use time::OffsetDateTime;

use super::issuer::Issuer;
use super::request::{StateChangeRequest, check_id};
use super::response::meta_json;
use crate::errors::{json_refusal, store_refusal};
use crate::refusal::{Answer, Class, Refusal, Reply};
use crate::store::{CredentialState, REINSTATE_KEY_REVOKED};

impl Issuer {
    /// `GET /v1/credentials/{id}`.
    pub fn metadata(&self, id: &str) -> Answer {
        check_id(id)?;
        let meta = self.node.registry.credential(id).map_err(store_refusal)?;
        Ok((
            Reply::Ok,
            meta_json(
                &meta,
                &self.stored_status_uri(&meta.profile, meta.status_list),
            ),
        ))
    }

    /// `POST /v1/credentials/{id}/{revoke,suspend,reinstate}`.
    pub fn change_state(
        &self,
        client: &crate::node::Caller,
        id: &str,
        action: &'static str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let policy_hash = self.policy.current().hash.clone();
        let answer = self.change_state_checked(client, id, action, body, now);
        self.node
            .audited(client, action, answer, &policy_hash, None, now)
    }

    fn change_state_checked(
        &self,
        client: &crate::node::Caller,
        id: &str,
        action: &'static str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let policy = self.policy.current();
        if !body.is_empty() {
            let _: StateChangeRequest =
                serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
        }
        check_id(id)?;
        let to = match action {
            "revoke" => CredentialState::Revoked,
            "suspend" => CredentialState::Suspended,
            _ => CredentialState::Active,
        };
        if to == CredentialState::Active {
            self.refuse_reinstating_a_revoked_key_s(id)?;
        }
        let decision = self
            .node
            .caller_decision(client, action, "allow", &policy.hash, now);
        let meta = self
            .node
            .registry
            .set_state(id, to, decision)
            .map_err(store_refusal)?;
        self.status.changed();
        Ok((
            Reply::Ok,
            meta_json(
                &meta,
                &self.stored_status_uri(&meta.profile, meta.status_list),
            ),
        ))
    }

    /// What a revoked DS key signed is never valid again (whatever the
    /// registry's mark says: the keys' view follows officers' orders); the
    /// holder has it refreshed instead.
    fn refuse_reinstating_a_revoked_key_s(&self, id: &str) -> Result<(), Refusal> {
        let meta = self.node.registry.credential(id).map_err(store_refusal)?;
        if self.current().keys.revoked_kids.contains(&meta.kid) {
            return Err(Refusal::new(
                Class::Conflict,
                "registry_conflict",
                "its DS key was revoked: it cannot be reinstated; refresh it to have it signed again",
            )
            .with_rule(REINSTATE_KEY_REVOKED));
        }
        Ok(())
    }
}
