//! Issuance policy files (TOML), as an officer would propose one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = dojang_policies::Policy::parse("fuzzed.toml", text);
    }
});
