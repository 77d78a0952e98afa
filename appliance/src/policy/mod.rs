//! The issuance policy in force on this node: the file, loaded only if
//! officers adopted it, and the adoption as the registry records it.

mod state;

pub use self::state::PolicyState;
