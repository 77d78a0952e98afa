//! A credential signed and waiting for its commit (one per phone key of a
//! batch): what the response and the registry row are built from.

use crate::credential::{SignatureValidity, StatusReference};

/// A signed credential waiting for its commit.
pub(super) struct Signed {
    pub(super) id: String,
    /// Its phone key's thumbprint.
    pub(super) device: String,
    pub(super) credential: String,
    pub(super) format_name: &'static str,
    pub(super) validity: SignatureValidity,
    pub(super) status: StatusReference,
    pub(super) list: u32,
    pub(super) claims_mac: [u8; 32],
    pub(super) has_portrait: bool,
}
