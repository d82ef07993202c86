//! GRUB for BIOS (i386-pc) on a GPT disk image, without root, loop devices or
//! `grub-bios-setup` (not installable beside the EFI GRUB package): a BIOS boot
//! partition (type EF02) in the gap before the first partition holds `core.img`,
//! and GRUB's `boot.img` goes into the MBR with the few bytes grub-bios-setup
//! patches. `core.img` finds `/EFI/hninit/grub.cfg` (the ESP of the disk) and
//! runs it, so BIOS and UEFI boot the same menu with the same grubenv counter.
//!
//! The offsets come from GRUB 2.06's `include/grub/i386/pc/boot.h` (boot.img)
//! and `grub-core/boot/i386/pc/diskboot.S` (the blocklist at the end of
//! core.img's first sector), as written by `util/setup.c`.

use super::grub::{cached_grub_bios, I386_PC_DIR};
use super::tools::{self as util, cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const SECTOR: usize = 512;
/// First sector after a standard GPT (header at 1, 128 entries at 2..33).
pub const BIOS_BOOT_FIRST_LBA: u64 = 34;
/// Last sector before the first 1 MiB-aligned partition of `build_disk`.
pub const BIOS_BOOT_LAST_LBA: u64 = 2047;
/// GPT type code of a BIOS boot partition (sgdisk's short code).
pub const BIOS_BOOT_TYPE: &str = "EF02";
/// GPT name of the partition.
pub const BIOS_BOOT_NAME: &str = "BIOS-BOOT";

/// boot.img: start and end of the BIOS parameter block kept from the old sector.
const BPB_START: usize = 0x03;
const BPB_END: usize = 0x5a;
/// boot.img: LBA (u64 LE) of core.img's first sector.
const KERNEL_SECTOR: usize = 0x5c;
/// boot.img: boot drive (0xff: the one the BIOS passes in DL).
const BOOT_DRIVE: usize = 0x64;
/// boot.img: the 2-byte jump over the drive check; NOPs on hard disks.
const DRIVE_CHECK: usize = 0x66;
/// boot.img: the Windows NT disk signature and the partition table, kept.
const WINDOWS_NT_MAGIC: usize = 0x1b8;
const PART_END: usize = 0x1fe;
/// core.img (diskboot.S): the blocklist entry at the end of the first sector:
/// start LBA (u64), sector count (u16), load segment (u16).
const BLOCKLIST: usize = SECTOR - 12;
/// The segment diskboot loads the rest of core.img to (0x800 + 0x20).
const CORE_SEGMENT: u16 = 0x0820;

/// What [`install_bios_grub`] did.
#[derive(Debug, Clone)]
pub struct BiosBoot {
    /// GPT partition number of the BIOS boot partition.
    pub partition: u32,
    /// core.img size in bytes.
    pub core_bytes: u64,
}

/// GRUB's `boot.img` made into this disk's MBR: `boot` with the BPB and the
/// partition table (and NT signature) of `old`, core.img at `core_lba`, the
/// BIOS boot drive, and the drive check disabled (a hard disk).
pub fn patch_mbr(boot: &[u8], old: &[u8], core_lba: u64) -> Result<[u8; SECTOR]> {
    if boot.len() != SECTOR || old.len() != SECTOR {
        bail!("boot.img and the MBR must be 512 bytes (got {} and {})", boot.len(), old.len());
    }
    if boot[510..] != [0x55, 0xaa] {
        bail!("boot.img has no 55 AA signature");
    }
    let mut m = [0u8; SECTOR];
    m.copy_from_slice(boot);
    m[BPB_START..BPB_END].copy_from_slice(&old[BPB_START..BPB_END]);
    m[WINDOWS_NT_MAGIC..PART_END].copy_from_slice(&old[WINDOWS_NT_MAGIC..PART_END]);
    m[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    m[BOOT_DRIVE] = 0xff;
    m[DRIVE_CHECK] = 0x90;
    m[DRIVE_CHECK + 1] = 0x90;
    Ok(m)
}

/// Points the blocklist of `core` (core.img, written contiguously at
/// `core_lba`) at its sectors after the first. grub-mkimage already set the
/// count and the segment; they are checked against the image's size.
pub fn patch_core(core: &mut [u8], core_lba: u64) -> Result<()> {
    if core.len() < 2 * SECTOR {
        bail!("core.img is only {} bytes", core.len());
    }
    let b = &mut core[BLOCKLIST..SECTOR];
    let len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let seg = u16::from_le_bytes([b[10], b[11]]);
    let rest = core.len().div_ceil(SECTOR) - 1;
    if seg != CORE_SEGMENT || len != rest {
        bail!("core.img's blocklist says {len} sectors at segment {seg:#x}, expected {rest} at {CORE_SEGMENT:#x} (not an i386-pc core.img from grub-mkimage?)");
    }
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok(())
}

/// Installs GRUB for BIOS on the GPT disk image `disk` (made by `build_disk`,
/// which leaves sectors 34..2047 free): adds the BIOS boot partition there,
/// writes the patched core.img into it and boot.img into the MBR. The menu
/// GRUB then runs is `/EFI/hninit/grub.cfg` of the disk's ESP.
pub fn install_bios_grub(disk: &Path) -> Result<BiosBoot> {
    let core_path = cached_grub_bios()?;
    let mut core = fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
    let room = (BIOS_BOOT_LAST_LBA - BIOS_BOOT_FIRST_LBA + 1) as usize * SECTOR;
    if core.len() > room {
        bail!("core.img is {} bytes, the BIOS boot partition only {room}", core.len());
    }
    let boot = fs::read(Path::new(I386_PC_DIR).join("boot.img")).context("reading GRUB's boot.img (install grub-pc-bin)")?;

    // Partition number 0: sgdisk takes the first free one; -p tells which.
    util::run(
        cmd("sgdisk")
            .args(["-a", "1"])
            .arg(format!("-n0:{BIOS_BOOT_FIRST_LBA}:{BIOS_BOOT_LAST_LBA}"))
            .arg(format!("-t0:{BIOS_BOOT_TYPE}"))
            .arg(format!("-c0:{BIOS_BOOT_NAME}"))
            .arg(disk),
    )
    .context("adding the BIOS boot partition with sgdisk")?;
    let table = util::run_stdout(cmd("sgdisk").arg("-p").arg(disk))?;
    let partition = table
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 2 && w[1] == BIOS_BOOT_FIRST_LBA.to_string()).then(|| w[0].parse::<u32>().ok()).flatten()
        })
        .with_context(|| format!("the BIOS boot partition is not in sgdisk's table:\n{table}"))?;

    patch_core(&mut core, BIOS_BOOT_FIRST_LBA)?;
    let mut f = fs::OpenOptions::new().read(true).write(true).open(disk)?;
    let mut old = [0u8; SECTOR];
    f.read_exact(&mut old)?;
    let mbr = patch_mbr(&boot, &old, BIOS_BOOT_FIRST_LBA)?;
    f.seek(SeekFrom::Start(BIOS_BOOT_FIRST_LBA * SECTOR as u64))?;
    f.write_all(&core)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr)?;
    f.sync_all()?;
    Ok(BiosBoot { partition, core_bytes: core.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_img() -> Vec<u8> {
        let mut b = vec![0xccu8; SECTOR];
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn mbr_keeps_the_partition_table_and_points_at_core() {
        let mut old = vec![0u8; SECTOR];
        old[0x1be..0x1ce].copy_from_slice(&[0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        old[0x1fe] = 0x55;
        old[0x1ff] = 0xaa;
        old[0x10] = 0x42; // in the BPB
        let m = patch_mbr(&boot_img(), &old, 34).unwrap();
        assert_eq!(&m[0x1b8..0x200], &old[0x1b8..0x200]);
        assert_eq!(m[0x10], 0x42);
        assert_eq!(&m[0x5c..0x64], &34u64.to_le_bytes());
        assert_eq!(m[0x64], 0xff);
        assert_eq!(&m[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(m[0], 0xcc);
        assert_eq!(m[0x5a], 0xcc);
        assert!(patch_mbr(&old[..100], &old, 34).is_err());
    }

    #[test]
    fn core_blocklist_points_at_the_following_sectors() {
        let mut core = vec![0u8; 5 * SECTOR + 10];
        core[SECTOR - 4..SECTOR - 2].copy_from_slice(&5u16.to_le_bytes());
        core[SECTOR - 2..SECTOR].copy_from_slice(&0x0820u16.to_le_bytes());
        patch_core(&mut core, 34).unwrap();
        assert_eq!(&core[SECTOR - 12..SECTOR - 4], &35u64.to_le_bytes());
        let mut wrong = core.clone();
        wrong.truncate(3 * SECTOR);
        assert!(patch_core(&mut wrong, 34).is_err());
    }

    /// The real core.img from grub-mkimage has the blocklist where diskboot.S
    /// puts it, and a disk made by build_disk gets the BIOS boot partition.
    #[test]
    fn real_core_img_and_disk() {
        let tools = ["grub-mkimage", "sgdisk", "mkfs.vfat", "mcopy", "grub-mkstandalone", "mkfs.ext4"];
        if !Path::new(I386_PC_DIR).join("boot.img").exists() || tools.iter().any(|t| util::find_program(t).is_none()) {
            eprintln!("grub-pc-bin or disk tools missing; skipping");
            return;
        }
        let mut core = fs::read(cached_grub_bios().unwrap()).unwrap();
        patch_core(&mut core, 34).unwrap();
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        let spec = super::super::disk::DiskSpec {
            esp: Some(super::super::disk::EspSpec { grub_cfg: super::super::grub::GrubVars::default().render(), grubenv: None }),
            hostpart: super::super::disk::HostpartSpec { size_mib: 16, ..Default::default() },
            extra_hostparts: vec![],
        };
        super::super::disk::build_disk(&spec, &disk).unwrap();
        let b = install_bios_grub(&disk).unwrap();
        assert_eq!(b.partition, 3);
        let info = util::run_stdout(cmd("sgdisk").arg("-i3").arg(&disk)).unwrap();
        assert!(info.contains("BIOS boot partition") && info.contains("First sector: 34 "), "{info}");
        let v = util::run_stdout(cmd("sgdisk").arg("-v").arg(&disk)).unwrap();
        assert!(v.contains("No problems found"), "{v}");
        let bytes = fs::read(&disk).unwrap();
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        assert_eq!(&bytes[0x5c..0x64], &34u64.to_le_bytes());
        assert_eq!(bytes[0x1c2], 0xee, "the protective MBR entry is kept");
        assert_eq!(&bytes[34 * 512..34 * 512 + core.len()], &core[..]);
    }
}
