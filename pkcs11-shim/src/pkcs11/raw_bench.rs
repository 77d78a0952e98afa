//! The baseline the shim is measured against: a bare cryptoki loop
//! (SHA-256 in software, then C_Sign with CKM_ECDSA), one session per thread,
//! no pool, no cache, no checks. Used only by the benchmarks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use secrecy::SecretString;

use super::classify::ck;
use super::connection::init_args;
use crate::error::{Error, Result};

/// One raw signing run.
pub struct RawBenchmark {
    /// PKCS#11 module path.
    pub module: PathBuf,
    /// Token label.
    pub token_label: String,
    /// User PIN.
    pub pin: SecretString,
    /// Label of an existing P-256 private key.
    pub key_label: String,
    /// Signing threads.
    pub threads: usize,
    /// How long to sign.
    pub duration: Duration,
}

/// Signatures per second of a bare cryptoki ES256 loop. Initialises and
/// finalises its own context: run it while no backend is open in the process.
pub fn raw_sign_rate(bench: &RawBenchmark, message: &[u8]) -> Result<f64> {
    let ctx = Pkcs11::new(&bench.module)
        .map_err(|e| Error::Config(format!("cannot load {}: {e}", bench.module.display())))?;
    ctx.initialize(init_args())
        .map_err(ck(Function::Initialize))?;
    let result = run(&ctx, bench, message);
    let _ = ctx.finalize();
    result
}

fn run(ctx: &Pkcs11, bench: &RawBenchmark, message: &[u8]) -> Result<f64> {
    let slot = ctx
        .get_slots_with_token()
        .map_err(ck(Function::GetSlotList))?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label().trim_end() == bench.token_label)
                .unwrap_or(false)
        })
        .ok_or_else(|| Error::TokenNotFound {
            selector: format!("label {:?}", bench.token_label),
            seen: "-".into(),
        })?;
    let anchor = ctx
        .open_rw_session(slot)
        .map_err(ck(Function::OpenSession))?;
    match anchor.login(UserType::User, Some(&bench.pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(ck(Function::Login)(e)),
    }
    let key = anchor
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(bench.key_label.as_bytes().to_vec()),
        ])
        .map_err(ck(Function::FindObjects))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::KeyNotFound {
            label: bench.key_label.clone(),
        })?;

    let signed = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + bench.duration;
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..bench.threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let session = ctx
                        .open_ro_session(slot)
                        .map_err(ck(Function::OpenSession))?;
                    let mut count = 0u64;
                    while Instant::now() < deadline {
                        let digest = crate::digest::sha256(message);
                        let _ = session
                            .sign(&Mechanism::Ecdsa, key, &digest)
                            .map_err(ck(Function::Sign))?;
                        count += 1;
                    }
                    let _ = signed.fetch_add(count, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| Error::Encoding("benchmark thread panicked".into()))??;
        }
        Ok(())
    })?;
    Ok(signed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
