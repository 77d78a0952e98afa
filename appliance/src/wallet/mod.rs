//! OpenID4VCI 1.0 issuance to the holder's wallet (docs/wallet.md): the
//! counter makes an offer over the mTLS API (`offers.rs`), the phone scans
//! its QR code (`qr.rs`), reads the metadata (`metadata.rs`), redeems the
//! pre-authorized code with the transaction code (`token.rs`), proves its
//! key (`proof.rs`; on the IC-card channel the card's chip signs too,
//! `card.rs`) and receives the credential (`credential.rs`). What is
//! pending lives in memory only (`book.rs`); errors take OAuth's form
//! (`oauth_error.rs`).

mod book;
mod card;
mod credential;
mod expiring;
mod form;
mod metadata;
mod oauth_error;
mod offers;
pub mod proof;
pub mod qr;
mod refresh;
mod service;
mod token;

pub use self::credential::check_wallet_input;
pub use self::metadata::{PRE_AUTHORIZED_GRANT, authorization_server_metadata, issuer_metadata};
pub use self::oauth_error::OAuthError;
pub use self::offers::wallet_not_configured;
pub use self::service::{Wallet, WalletReply};
