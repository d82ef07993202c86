//! Fuzz target: the bzImage setup-header version reader (an image's
//! /boot/kernel, first 64 KiB) never panics; a version is at most 512 bytes.

#![no_main]

use hninit::boot::step7_kexec::{bzimage_version, is_running_kernel};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(v) = bzimage_version(data) {
        assert!(v.len() <= 512 * 3);
        let _ = is_running_kernel(&v, "6.1.0-57-amd64", "#1 SMP");
    }
});
