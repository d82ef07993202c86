//! Fuzz target: the GPT/MBR readers (PARTUUID of partition N, GPT type GUID)
//! on an arbitrary disk head never panic nor loop.

#![no_main]

use hninit::sys::partition::{gpt_partition_type, partuuid};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let n = data.first().copied().unwrap_or(1) as u32;
    for partn in [1, 2, n, 128, 129] {
        let _ = partuuid(&mut Cursor::new(data), partn);
        let _ = gpt_partition_type(&mut Cursor::new(data), partn);
    }
});
