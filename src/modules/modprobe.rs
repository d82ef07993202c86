//! The kernel's module helper. The initramfs has `/sbin/modprobe -> /init`; when
//! the kernel needs a module (a filesystem type, a crypto algorithm such as
//! `crypto-crc32c`, an nls table) it runs `/sbin/modprobe -q -- NAME`, and this
//! loads it from the initramfs with its dependencies. What cannot be found is
//! recorded in /run/hninit/modprobe-missing for the failure diagnosis.

use crate::modules::drivers::Drivers;
use std::io::Write;

pub const MISSING_FILE: &str = crate::layout::MODPROBE_MISSING;

/// Runs as `modprobe [-q] [-b] [--] NAME...`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let names: Vec<String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    if names.is_empty() {
        return 1;
    }
    let drivers = Drivers::open_quiet();
    let mut code = 0;
    for name in names {
        if !drivers.load_requested(&name) {
            code = 1;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(MISSING_FILE) {
                let _ = writeln!(f, "{name}");
            }
        }
    }
    code
}
