//! The issuance policy in force on this node: the file, loaded only if
//! officers adopted it, and the adoption as the registry records it,
//! checked against the officers' signatures (`adoption`).

mod adoption;
mod state;

pub use self::adoption::{adopted_policy, verify_adoption, verify_past_order};
pub use self::state::PolicyState;
