//! Fuzz target: trimming `hn-state/boot.log` (whatever it holds) never panics,
//! keeps at most half the bound, and starts after a line end.

#![no_main]

use hninit::slots::bootlog::kept_tail;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = data.first().map(|b| *b as usize * 16).unwrap_or(0);
    let kept = kept_tail(data, max);
    assert!(kept.len() <= max / 2);
    assert!(data.ends_with(kept));
    if !kept.is_empty() && kept.len() < data.len() {
        assert_eq!(data[data.len() - kept.len() - 1], b'\n');
    }
});
