//! The per-thread pool of CSPRNG bytes that salts and IDs are drawn from
//! ([`random`]).

use super::CredentialError;

/// Bytes drawn from OpenSSL's CSPRNG ahead of use, per thread. A credential
/// needs dozens of salts and IDs, and each RAND call costs about a
/// microsecond of locking and provider lookups: drawing 4 KiB at a time
/// makes that once per ~50 credentials. The bytes are salts and IDs that
/// the credential publishes anyway, never key material.
const POOL_BYTES: usize = 4096;

thread_local! {
    static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// Random bytes for salts and IDs, from the per-thread pool.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], CredentialError> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (buffer, used) = &mut *pool;
        if buffer.len() < *used + N {
            buffer.resize(POOL_BYTES.max(N), 0);
            openssl::rand::rand_bytes(buffer)
                .map_err(|e| CredentialError::Encoding(e.to_string()))?;
            *used = 0;
        }
        let Some(bytes) = buffer.get_mut(*used..*used + N) else {
            return Err(CredentialError::Encoding(format!(
                "random pool holds {} bytes, {N} wanted at {used}",
                buffer.len()
            )));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        // Never hand the same bytes out twice.
        bytes.fill(0);
        *used += N;
        Ok(out)
    })
}
