//! `dojang.toml`: one module per table, each parsed strictly and validated
//! before anything touches a device. A leaf: it imports nothing else of
//! the appliance.

mod file;
pub mod pki;
pub mod server;
mod store;
pub mod wallet;

pub use self::file::{Config, ConfigError, CredentialConfig, DEFAULT_CONFIG_PATH};
pub use self::pki::{IacaCustody, PkiConfig};
pub use self::server::{
    ApiListener, AuditSettings, Limits, OpsListener, PublicListener, ServerConfig, ServiceKeys,
    WitnessSettings,
};
pub use self::store::{SQLITE_LOG_FILE_MIB, StoreConfig};
pub use self::wallet::WalletListener;
pub use pkcs11_shim::BackendConfig;
