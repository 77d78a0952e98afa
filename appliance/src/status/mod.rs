//! Revocation status as an IETF Token Status List: the lists themselves and
//! their signed tokens ([`list`], and [`cwt`] for the CBOR form), which registry changes they must reflect
//! ([`changes`]), and the publisher that allocates positions and serves
//! signed lists ([`publisher`]).

pub mod changes;
mod cwt;
mod list;
mod positions;
pub mod publisher;

pub use self::changes::StatusChanges;
pub use self::cwt::{CWT_TYPE, sign_cwt, verify_cwt};
pub use self::list::*;
pub use self::publisher::{BACKGROUND_LISTS_PER_ROUND, StatusPublisher, TokenForm};
