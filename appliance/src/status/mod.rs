//! Revocation status as an IETF Token Status List: the lists themselves and
//! their signed tokens ([`list`]), which registry changes they must reflect
//! ([`changes`]), and the publisher that allocates positions and serves
//! signed lists ([`publisher`]).

pub mod changes;
mod list;
pub mod publisher;

pub use self::changes::StatusChanges;
pub use self::list::*;
pub use self::publisher::StatusPublisher;
