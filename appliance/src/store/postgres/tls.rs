//! TLS to PostgreSQL: verified on the network, optional on this host.

use postgres::config::{Host, SslMode};
use postgres_openssl::MakeTlsConnector;

use crate::store::StoreError;

/// Whether every way `config` reaches the server stays on this host: a
/// Unix socket or the loopback names, and no `hostaddr` (which libpq and
/// tokio-postgres connect to whatever `host` says).
pub fn is_local(config: &postgres::Config) -> bool {
    !config.get_hosts().is_empty()
        && config.get_hostaddrs().is_empty()
        && config.get_hosts().iter().all(|h| match h {
            Host::Unix(_) => true,
            Host::Tcp(name) => matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1"),
        })
}

pub(super) fn tls_for(
    config: &postgres::Config,
    ca_file: Option<&std::path::Path>,
) -> Result<Option<MakeTlsConnector>, StoreError> {
    let local = is_local(config);
    if !local && config.get_ssl_mode() != SslMode::Require {
        return Err(StoreError::Internal(
            "store.postgres: a server on the network needs sslmode=require (verified TLS)".into(),
        ));
    }
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
        .map_err(|e| StoreError::Internal(format!("TLS for PostgreSQL: {e}")))?;
    if let Some(ca) = ca_file {
        builder
            .set_ca_file(ca)
            .map_err(|e| StoreError::Internal(format!("{}: {e}", ca.display())))?;
    }
    // Local traffic never leaves the host: TLS only when asked for.
    Ok((config.get_ssl_mode() == SslMode::Require).then(|| MakeTlsConnector::new(builder.build())))
}
