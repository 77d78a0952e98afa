//! What the API answers about a credential: the issuance (also what an
//! idempotent replay returns) and its metadata, never personal data beyond
//! the credential itself.

use serde::Serialize;
use time::OffsetDateTime;

use crate::node::rfc3339;
use crate::store::CredentialMeta;

/// The issuance response (also what an idempotent replay returns).
#[derive(Serialize)]
pub(super) struct IssueResponse<'a> {
    pub(super) id: &'a str,
    pub(super) profile: &'a str,
    pub(super) format: &'a str,
    pub(super) credential: &'a str,
    pub(super) kid: &'a str,
    pub(super) key_label: &'a str,
    pub(super) valid_from: String,
    pub(super) valid_until: String,
    pub(super) document_expiry: String,
    pub(super) status: StatusOut<'a>,
    pub(super) fee_krw: u32,
    pub(super) free_copy: bool,
    pub(super) superseded: &'a [String],
    /// A batch's other credentials (none outside a batch).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) copies: &'a [CopyOut],
}

/// A copy of a batch in the issuance response.
#[derive(Serialize)]
pub(super) struct CopyOut {
    pub(super) id: String,
    pub(super) credential: String,
    pub(super) status: StatusOwned,
}

/// A status reference, owned.
#[derive(Serialize)]
pub(super) struct StatusOwned {
    pub(super) uri: String,
    pub(super) idx: u64,
}

#[derive(Serialize)]
pub(super) struct StatusOut<'a> {
    pub(super) uri: &'a str,
    pub(super) idx: u64,
}

/// Metadata, never personal data.
#[derive(Serialize)]
struct MetaOut<'a> {
    id: &'a str,
    profile: &'a str,
    kid: &'a str,
    state: &'a str,
    status: StatusOut<'a>,
    issued_at: String,
    valid_until: String,
    document_expiry: &'a str,
}

/// A credential's metadata as JSON.
pub(super) fn meta_json(meta: &CredentialMeta, uri: &str) -> Vec<u8> {
    let out = MetaOut {
        id: &meta.id,
        profile: &meta.profile,
        kid: &meta.kid,
        state: meta.state.as_str(),
        status: StatusOut {
            uri,
            idx: meta.status_index,
        },
        issued_at: OffsetDateTime::from_unix_timestamp(meta.issued_at)
            .map(rfc3339)
            .unwrap_or_default(),
        valid_until: OffsetDateTime::from_unix_timestamp(meta.valid_until)
            .map(rfc3339)
            .unwrap_or_default(),
        document_expiry: &meta.document_expiry,
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
