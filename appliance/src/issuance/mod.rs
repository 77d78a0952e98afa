//! The issuer: the one path by which a credential is signed, refreshed or
//! changes state. Requests are checked ([`request`]), the holder becomes a
//! pseudonym in the HSM ([`holder`]), the policy decides, the credential is
//! signed and committed with its audit entry ([`issue`], [`refresh`],
//! [`state`]); answers stored under idempotency keys are sealed ([`seal`]).

mod batch;
mod holder;
mod issue;
mod issuer;
mod offer;
mod presented;
mod ratelimit;
mod refresh;
mod request;
mod response;
mod seal;
mod signed;
mod state;

pub use self::batch::MAX_BATCH;
pub use self::holder::{HolderSecret, pseudonym, pseudonym_key_check};
pub use self::issuer::{Current, Issuer};
pub use self::offer::Offered;
pub use self::request::{check_issue_body, check_refresh_body, private_jwk_member};
