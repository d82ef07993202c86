//! The Gandi swap disk enabled as swap after first boot. The disk carries the
//! configuration archive at byte 524288 (inside the swap area); the first boot
//! wipes it (unless `hn.config.keep=1`). Swapping on a disk whose archive is
//! still there would destroy it silently, so [`decide`] refuses unless the
//! archive's first block is zeros. The device is the first swap candidate of
//! `config::source` (PARTLABEL `gandiswap`, LABEL `swap`, the fixed paths).

use crate::config::source::ARCHIVE_OFFSET;

/// Bytes checked at [`ARCHIVE_OFFSET`]: a tar header block.
pub const CHECKED: usize = 512;

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// `swapon` it.
    Enable,
    /// Already active (listed in /proc/swaps).
    Active,
    /// Not enabled, and why.
    Refuse(String),
}

/// `active`: the device is in /proc/swaps; `block`: the bytes at
/// [`ARCHIVE_OFFSET`] (fewer when the device is smaller).
pub fn decide(enabled: bool, active: bool, block: &[u8]) -> Decision {
    if !enabled {
        return Decision::Refuse("swap is switched off (hninit.swap.enabled)".into());
    }
    if active {
        return Decision::Active;
    }
    if block.len() < CHECKED {
        return Decision::Refuse(format!("the device is smaller than {} bytes", ARCHIVE_OFFSET + CHECKED as u64));
    }
    if block.iter().any(|&b| b != 0) {
        let what = if block.get(257..262) == Some(b"ustar") { "the configuration archive" } else { "data" };
        return Decision::Refuse(format!(
            "{what} at byte {ARCHIVE_OFFSET} is not wiped (hn.config.keep=1, or no first boot yet): not enabled as swap, which would overwrite it"
        ));
    }
    Decision::Enable
}

/// Whether `/proc/swaps` lists `dev` (a `/dev/…` path).
pub fn listed(proc_swaps: &str, dev: &str) -> bool {
    proc_swaps.lines().skip(1).any(|l| l.split_whitespace().next() == Some(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_wiped_archive_becomes_swap() {
        let zeros = [0u8; CHECKED];
        assert_eq!(decide(true, false, &zeros), Decision::Enable);
        assert_eq!(decide(true, true, &zeros), Decision::Active);
        assert!(matches!(decide(false, false, &zeros), Decision::Refuse(r) if r.contains("switched off")));
        let mut tar = [0u8; CHECKED];
        tar[..12].copy_from_slice(b"gandi/config");
        tar[257..262].copy_from_slice(b"ustar");
        assert!(matches!(decide(true, false, &tar), Decision::Refuse(r) if r.starts_with("the configuration archive at byte 524288 is not wiped")));
        assert!(matches!(decide(true, false, &[0u8; 10]), Decision::Refuse(_)));
        assert!(listed("Filename\tType\tSize\tUsed\tPriority\n/dev/vdb                                partition\t1048572\t0\t-2\n", "/dev/vdb"));
        assert!(!listed("Filename\tType\tSize\tUsed\tPriority\n", "/dev/vdb"));
    }
}
