//! Fuzz target: `hn-state/trial.json` and the staged digest sidecar, as step 6
//! reads them: never a panic; a trial read back is clamped (tries_left <= tries,
//! tries >= 1), and counting a boot on it never underflows.

#![no_main]

use hninit::boot::step6_slots::parse_digest;
use hninit::slots::Trial;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = serde_json::from_slice::<Trial>(data) {
        let t = t.clamped();
        assert!(t.tries >= 1 && t.tries_left <= t.tries);
        let _ = t.tries - t.tries_left.saturating_sub(1);
    }
    if let Ok(d) = parse_digest(data) {
        assert_eq!(d.len(), 64);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
});
