//! Fuzz target: the kernel command line parser (quoting, every key) never
//! panics, and the kexec command line it derives parses again.

#![no_main]

use hninit::boot::step7_kexec::next_cmdline;
use hninit::cmdline::{parse, split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = split(text);
    let (c, warnings) = parse(text);
    for w in &warnings {
        let _ = w.to_string();
    }
    let _ = c.real_root.len();
    let next = next_cmdline(text);
    let _ = parse(&next);
    assert!(split(&next).iter().any(|p| p == "hn.kexec=1"));
});
