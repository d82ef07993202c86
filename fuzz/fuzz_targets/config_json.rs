//! Fuzz target: `configparse::parse` on arbitrary bytes never panics, and an
//! accepted configuration's canonical form parses back to the same
//! configuration and digest (normalisation is idempotent).

#![no_main]

use hninit::config::parse::{canonical_json, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(p) => {
            let canon = canonical_json(&p.config);
            let again = match parse(&canon) {
                Ok(a) => a,
                Err(e) => panic!("canonical form refused: {e}\n{}", String::from_utf8_lossy(&canon)),
            };
            assert_eq!(again.config, p.config);
            assert_eq!(again.digest, p.digest);
            assert!(again.warnings.is_empty());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
