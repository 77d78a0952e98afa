//! [`Issuer`]: the one path by which a credential is signed. It owns what
//! issuance needs beyond the node's handles: the credential settings, the
//! pseudonym key's label and the per-client request counts; it reads the
//! policy and the signing key from their owners as one [`Current`]
//! snapshot per request.

use std::sync::Arc;

use dojang_policies::{CredentialFormat, Policy};

use super::ratelimit::RateCounter;
use crate::config::CredentialConfig;
use crate::credential::claims::ResidentCardClaims;
use crate::credential::{DocumentSigner, SignatureValidity, StatusReference, mdoc, sdjwt};
use crate::errors::credential_refusal;
use crate::keys::manager::KeyManager;
use crate::keys::view::KeyView;
use crate::node::Node;
use crate::policy::PolicyState;
use crate::refusal::Refusal;
use crate::status::StatusPublisher;

/// The policy and the keys in force, read once for a request.
pub struct Current {
    /// The issuance policy.
    pub policy: Arc<Policy>,
    /// Who signs, and what verifiers fetch.
    pub keys: Arc<KeyView>,
}

impl Current {
    /// The DS key that signs at `now`, or why none can.
    pub fn signer(
        &self,
        now: time::OffsetDateTime,
    ) -> Result<&Arc<DocumentSigner<'static>>, String> {
        self.keys.signer(now)
    }
}

/// Issues, refreshes and changes the state of credentials.
pub struct Issuer {
    pub(super) node: Node,
    pub(super) policy: Arc<PolicyState>,
    pub(super) keys: Arc<KeyManager>,
    pub(super) status: Arc<StatusPublisher>,
    pub(super) credential: CredentialConfig,
    /// The HMAC key holder pseudonyms come from.
    pub(super) pseudonym_key: String,
    /// The HMAC key stored responses are sealed under.
    pub(super) response_seal_key: String,
    pub(super) rate: RateCounter,
}

impl Issuer {
    /// An issuer over its owners.
    pub fn new(
        node: Node,
        policy: Arc<PolicyState>,
        keys: Arc<KeyManager>,
        status: Arc<StatusPublisher>,
        credential: CredentialConfig,
        labels: &crate::config::ServiceKeys,
    ) -> Self {
        Issuer {
            node,
            policy,
            keys,
            status,
            credential,
            pseudonym_key: labels.pseudonym.clone(),
            response_seal_key: labels.response_seal.clone(),
            rate: RateCounter::default(),
        }
    }

    /// The policy and keys in force now.
    pub fn current(&self) -> Current {
        Current {
            policy: self.policy.current(),
            keys: self.keys.view(),
        }
    }

    /// Where a credential of `format` finds its status: an mdoc the CBOR
    /// form (what ISO 18013-5 readers fetch), an SD-JWT VC the JWT form.
    pub(super) fn status_reference(
        &self,
        format: CredentialFormat,
        list: u32,
        index: u64,
    ) -> StatusReference {
        StatusReference {
            idx: index,
            uri: self.status.uri_of(list, status_form(format)),
        }
    }

    /// The status list URI a stored credential carries: the form of its
    /// profile's format under the policy in force (a profile the policy
    /// no longer has: the JWT form, which every reader of the Token Status
    /// List can fetch).
    pub(super) fn stored_status_uri(&self, profile: &str, list: u32) -> String {
        let format = self
            .current()
            .policy
            .profiles
            .get(profile)
            .map_or(CredentialFormat::SdJwtVc, |p| p.format);
        self.status.uri_of(list, status_form(format))
    }

    /// Builds and signs a credential of `format`; its format name and text.
    pub(super) fn sign_credential(
        &self,
        signer: &DocumentSigner<'static>,
        format: CredentialFormat,
        claims: &ResidentCardClaims,
        device: &pkcs11_shim::PublicKey,
        validity: &SignatureValidity,
        status: &StatusReference,
    ) -> Result<(&'static str, String), Refusal> {
        let metrics = &self.node.metrics;
        let signed = match format {
            CredentialFormat::Mdoc => metrics
                .hsm("sign", || {
                    mdoc::issue(signer, claims, device, validity, Some(status))
                })
                .map(|cbor| ("mso_mdoc", mdoc::to_base64url(&cbor))),
            CredentialFormat::SdJwtVc => metrics
                .hsm("sign", || {
                    sdjwt::issue(
                        signer,
                        claims,
                        device,
                        validity,
                        Some(status),
                        &self.credential.issuer,
                    )
                })
                .map(|jwt| ("dc+sd-jwt", jwt)),
        };
        if signed.is_ok() {
            // Usage limits count signatures, committed or not.
            self.keys
                .count_signature(signer.label(), validity.valid_until.unix_timestamp());
        }
        signed.map_err(credential_refusal)
    }
}

/// The status token form a credential of `format` names: an mdoc the CBOR
/// form (what ISO 18013-5 readers fetch), an SD-JWT VC the JWT form.
fn status_form(format: CredentialFormat) -> crate::status::TokenForm {
    match format {
        CredentialFormat::Mdoc => crate::status::TokenForm::Cwt,
        CredentialFormat::SdJwtVc => crate::status::TokenForm::Jwt,
    }
}
