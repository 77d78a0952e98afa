//! The `[server.wallet]` table: the listener phones reach for OpenID4VCI
//! issuance (docs/wallet.md). TLS always (a wallet sends its proofs and
//! receives personal data), no client certificate, limits of its own.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The wallet-facing listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletListener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The credential issuer identifier: the https URL wallets reach this
    /// listener at, without a trailing slash (metadata, `aud` of proofs and
    /// every endpoint start with it).
    pub base_url: String,
    /// Server certificate chain (PEM).
    pub certificate: PathBuf,
    /// Its private key (PEM).
    pub private_key: PathBuf,
    /// Seconds an offer's pre-authorized code may be redeemed.
    #[serde(default = "default_offer_ttl")]
    pub offer_ttl_s: u64,
    /// Wrong transaction codes an offer survives; the next kills it.
    #[serde(default = "default_tx_code_attempts")]
    pub tx_code_attempts: u32,
    /// Seconds an access token may be used.
    #[serde(default = "default_token_ttl")]
    pub access_token_ttl_s: u64,
    /// Seconds a `c_nonce` may be used in a proof.
    #[serde(default = "default_nonce_ttl")]
    pub nonce_ttl_s: u64,
    /// Offers, tokens and nonces held at once (each kind); beyond it new
    /// ones are refused until old ones expire.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Bytes of offer requests (holder data, portraits) held at once.
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: usize,
    /// Credentials one request may ask for, each bound to its own proved
    /// phone key (OpenID4VCI batch issuance; 1 to 10, 1: no batches).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Card CA certificates (PEM files) the policy's channels may name by
    /// SHA-256 (`card_ca_sha256`): the IC-card channel proved by the chip.
    #[serde(default)]
    pub card_cas: Vec<PathBuf>,
    /// Open connections on this listener.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request body (proofs are small).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_offer_ttl() -> u64 {
    600
}
fn default_tx_code_attempts() -> u32 {
    3
}
fn default_token_ttl() -> u64 {
    300
}
fn default_nonce_ttl() -> u64 {
    300
}
fn default_max_pending() -> usize {
    100_000
}
fn default_batch_size() -> usize {
    1
}
fn default_max_pending_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_body() -> usize {
    16 * 1024
}

impl WalletListener {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let url = self.base_url.as_str();
        if !url.starts_with("https://") || url.ends_with('/') || url.contains(['?', '#']) {
            return Err(
                "server.wallet.base_url must be an https URL without a trailing slash, query or fragment"
                    .into(),
            );
        }
        if !(5..=3600).contains(&self.offer_ttl_s) {
            return Err("server.wallet.offer_ttl_s must be 5 to 3600".into());
        }
        if !(1..=10).contains(&self.tx_code_attempts) {
            return Err("server.wallet.tx_code_attempts must be 1 to 10".into());
        }
        if !(30..=3600).contains(&self.access_token_ttl_s)
            || !(30..=3600).contains(&self.nonce_ttl_s)
        {
            return Err("server.wallet token and nonce lifetimes must be 30 to 3600 s".into());
        }
        if !(1..=10).contains(&self.batch_size) {
            return Err("server.wallet.batch_size must be 1 to 10".into());
        }
        if self.max_pending == 0
            || self.max_pending_bytes == 0
            || self.max_connections == 0
            || self.max_body_bytes < 1024
        {
            return Err(
                "server.wallet limits must be positive (max_body_bytes at least 1024)".into(),
            );
        }
        Ok(())
    }
}
