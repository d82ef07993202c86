//! Superblock probe: recognises the filesystem (or swap) at the start of a block
//! device or image from its first [`PROBE_LEN`] bytes and extracts its label and
//! UUID, the way `blkid` reports them. Parsing ([`probe`]) is pure and never panics
//! on any input; [`probe_path`] only reads the bytes.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// A filesystem (or swap) type the probe recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    Ext2,
    Ext3,
    Ext4,
    Btrfs,
    Xfs,
    Vfat,
    Swap,
    Squashfs,
    Erofs,
}

impl FsType {
    /// The type to pass to `mount(2)`; ext2/ext3 are mounted by the ext4 driver.
    /// Swap is not mountable; it yields `"swap"` like fstab.
    pub fn mount_type(&self) -> &'static str {
        match self {
            FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => "ext4",
            FsType::Btrfs => "btrfs",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::Swap => "swap",
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
        }
    }

    /// The name `blkid` would print as `TYPE=`.
    pub fn name(&self) -> &'static str {
        match self {
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Btrfs => "btrfs",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::Swap => "swap",
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the probe found: the type, and the label and UUID when the format has them
/// (and they are set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub fstype: FsType,
    pub label: Option<String>,
    pub uuid: Option<String>,
}

/// Bytes [`probe`] needs to see every supported type: btrfs's superblock sits at
/// 64 KiB and its label ends at 66091.
pub const PROBE_LEN: usize = 69632;

// ---------------------------------------------------------------- byte helpers

fn bytes(buf: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    buf.get(off..off.checked_add(len)?)
}

fn arr<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    bytes(buf, off, N)?.try_into().ok()
}

fn u8_at(buf: &[u8], off: usize) -> Option<u8> {
    buf.get(off).copied()
}

fn le16(buf: &[u8], off: usize) -> Option<u16> {
    arr(buf, off).map(u16::from_le_bytes)
}

fn le32(buf: &[u8], off: usize) -> Option<u32> {
    arr(buf, off).map(u32::from_le_bytes)
}

fn be32(buf: &[u8], off: usize) -> Option<u32> {
    arr(buf, off).map(u32::from_be_bytes)
}

fn magic_at(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    bytes(buf, off, magic.len()) == Some(magic)
}

/// A label field: cut at the first NUL, trailing spaces and NULs trimmed, lossy
/// UTF-8; empty → `None`.
fn label_at(buf: &[u8], off: usize, len: usize) -> Option<String> {
    let raw = bytes(buf, off, len)?;
    let raw = raw.split(|&b| b == 0).next().unwrap_or(&[]);
    let end = raw
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |p| p + 1);
    let raw = raw.get(..end)?;
    if raw.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(raw).into_owned())
}

/// Formats 16 bytes, in on-disk order, as a lower-case canonical UUID.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

/// A 16-byte UUID field; all zeroes (unset) → `None`, as blkid does.
fn uuid_at(buf: &[u8], off: usize) -> Option<String> {
    let b: [u8; 16] = arr(buf, off)?;
    if b.iter().all(|&x| x == 0) {
        return None;
    }
    Some(format_uuid(&b))
}

// ---------------------------------------------------------------- the formats

fn probe_btrfs(buf: &[u8]) -> Option<Superblock> {
    const SB: usize = 65536;
    if !magic_at(buf, SB + 64, b"_BHRfS_M") {
        return None;
    }
    Some(Superblock {
        fstype: FsType::Btrfs,
        label: label_at(buf, SB + 299, 256),
        uuid: uuid_at(buf, SB + 32),
    })
}

fn probe_xfs(buf: &[u8]) -> Option<Superblock> {
    if !magic_at(buf, 0, b"XFSB") {
        return None;
    }
    // sb_blocksize: a power of two between 512 B and 64 KiB on every real XFS.
    let bs = be32(buf, 4)?;
    if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
        return None;
    }
    Some(Superblock {
        fstype: FsType::Xfs,
        label: label_at(buf, 108, 12),
        uuid: uuid_at(buf, 32),
    })
}

fn probe_ext(buf: &[u8]) -> Option<Superblock> {
    const SB: usize = 1024;
    if le16(buf, SB + 56)? != 0xEF53 {
        return None;
    }
    let compat = le32(buf, SB + 0x5C)?;
    let incompat = le32(buf, SB + 0x60)?;
    let ro_compat = le32(buf, SB + 0x64)?;
    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    // Features ext3 knows (blkid's EXT3_FEATURE_*_SUPP); anything else is ext4.
    const INCOMPAT_EXT3: u32 = 0x2 /* filetype */ | 0x4 /* recover */ | 0x10 /* meta_bg */;
    const RO_COMPAT_EXT3: u32 = 0x1 /* sparse_super */ | 0x2 /* large_file */ | 0x4 /* btree_dir */;
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        // An external journal device, not a mountable filesystem.
        return None;
    }
    let fstype = if incompat & !INCOMPAT_EXT3 != 0 || ro_compat & !RO_COMPAT_EXT3 != 0 {
        FsType::Ext4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        FsType::Ext3
    } else {
        FsType::Ext2
    };
    Some(Superblock {
        fstype,
        label: label_at(buf, SB + 120, 16),
        uuid: uuid_at(buf, SB + 104),
    })
}

fn probe_swap(buf: &[u8]) -> Option<Superblock> {
    // The signature ends the first page; try the page sizes Linux uses.
    for page in [4096usize, 8192, 16384, 32768, 65536] {
        let off = page - 10;
        if magic_at(buf, off, b"SWAPSPACE2") {
            // Version-1 header: version u32 @1024, uuid @1036, label @1052.
            let v1 = le32(buf, 1024) == Some(1) || be32(buf, 1024) == Some(1);
            return Some(Superblock {
                fstype: FsType::Swap,
                label: if v1 { label_at(buf, 1052, 16) } else { None },
                uuid: if v1 { uuid_at(buf, 1036) } else { None },
            });
        }
        if magic_at(buf, off, b"SWAP-SPACE") {
            return Some(Superblock {
                fstype: FsType::Swap,
                label: None,
                uuid: None,
            });
        }
    }
    None
}

fn probe_squashfs(buf: &[u8]) -> Option<Superblock> {
    if !magic_at(buf, 0, b"hsqs") {
        return None;
    }
    Some(Superblock {
        fstype: FsType::Squashfs,
        label: None,
        uuid: None,
    })
}

fn probe_erofs(buf: &[u8]) -> Option<Superblock> {
    const SB: usize = 1024;
    if le32(buf, SB)? != 0xE0F5_E1E2 {
        return None;
    }
    let blkszbits = u8_at(buf, SB + 12)?;
    if !(9..=16).contains(&blkszbits) {
        return None;
    }
    Some(Superblock {
        fstype: FsType::Erofs,
        label: label_at(buf, SB + 64, 16),
        uuid: uuid_at(buf, SB + 48),
    })
}

fn probe_fat(buf: &[u8]) -> Option<Superblock> {
    if bytes(buf, 510, 2)? != [0x55, 0xAA] {
        return None;
    }
    let bytes_per_sector = le16(buf, 11)?;
    if !bytes_per_sector.is_power_of_two() || !(512..=4096).contains(&bytes_per_sector) {
        return None;
    }
    let sectors_per_cluster = u8_at(buf, 13)?;
    if !sectors_per_cluster.is_power_of_two() {
        return None;
    }
    let reserved = le16(buf, 14)?;
    let fats = u8_at(buf, 16)?;
    let media = u8_at(buf, 21)?;
    if reserved == 0 || fats == 0 || !(media == 0xF0 || media >= 0xF8) {
        return None;
    }
    let fat32 = le16(buf, 22)? == 0;
    // A FAT has sectors and a FAT size (the FAT32 one when the FAT16 one is 0).
    let total = u32::from(le16(buf, 19)?).max(le32(buf, 32)?);
    if total == 0 || (fat32 && le32(buf, 36)? == 0) {
        return None;
    }
    let (sig_off, id_off, label_off) = if fat32 { (66, 67, 71) } else { (38, 39, 43) };
    let (label, uuid) = if matches!(u8_at(buf, sig_off)?, 0x28 | 0x29) {
        let id = le32(buf, id_off)?;
        let label = label_at(buf, label_off, 11).filter(|l| l != "NO NAME");
        (label, Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)))
    } else {
        (None, None)
    };
    Some(Superblock {
        fstype: FsType::Vfat,
        label,
        uuid,
    })
}

/// Identifies the filesystem whose first bytes are `head` (ideally [`PROBE_LEN`]
/// of them; a shorter buffer only means fewer types can match). Pure.
pub fn probe(head: &[u8]) -> Option<Superblock> {
    // Distinctive magics first: a FAT-looking boot sector can coexist with them.
    probe_btrfs(head)
        .or_else(|| probe_xfs(head))
        .or_else(|| probe_ext(head))
        .or_else(|| probe_swap(head))
        .or_else(|| probe_squashfs(head))
        .or_else(|| probe_erofs(head))
        .or_else(|| probe_fat(head))
}

/// Reads up to [`PROBE_LEN`] bytes of `path` (a device or an image file; shorter
/// is fine) and probes them.
pub fn probe_path(path: &Path) -> io::Result<Option<Superblock>> {
    probe_file(File::open(path)?)
}

/// Probes the first [`PROBE_LEN`] bytes of an open file (from its current position).
pub fn probe_file(file: File) -> io::Result<Option<Superblock>> {
    let mut head = Vec::with_capacity(PROBE_LEN);
    file.take(PROBE_LEN as u64).read_to_end(&mut head)?;
    Ok(probe(&head))
}
