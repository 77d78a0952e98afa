//! Officer operations under dual control: proposals and approvals
//! ([`Officers`]), what may be proposed and when it can be carried out
//! (`check`), and carrying approved operations out (`execute`).

mod answers;
mod ceremony;
mod check;
mod execute;
mod proposals;

pub use self::answers::Requested;
pub use self::proposals::{Officers, Reload};
