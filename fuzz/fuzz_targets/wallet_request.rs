//! What anonymous wallets send: token forms, credential requests with
//! their proof JWTs and card proofs, notifications.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    dojang::wallet::check_wallet_input(bytes);
});
