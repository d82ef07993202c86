//! Fuzz target: the superblock probe (ext2/3/4, btrfs, xfs, FAT, swap, squashfs,
//! erofs) on arbitrary bytes never panics; a label or UUID it returns is text.

#![no_main]

use hninit::sys::probe::probe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(sb) = probe(data) {
        let _ = sb.fstype.mount_type();
        if let Some(l) = &sb.label {
            assert!(l.len() <= 256);
        }
        let _ = format!("{} {:?} {:?}", sb.fstype, sb.label, sb.uuid);
    }
});
