//! `hnctl install --esp DEV --hostpart-dev DEV --image IMG`: hninit on existing
//! partitions, without repartitioning (a server that already has an ESP).
//! Partition devices or plain files standing for partitions; nothing is
//! mounted (the ESP is written with mtools, the host partition made by mkfs
//! with its files).
//!
//! Decisions (docs/hnctl.md says the same):
//! - The ESP must already be FAT; anything else is refused, naming what was
//!   found. Only our files are written: `EFI/hninit/` (the menu, grubenv,
//!   `grubx64.efi`) and GRUB at the removable path `EFI/BOOT/BOOTX64.EFI`.
//!   When that path holds another OS's loader (no `EFI/hninit/grub.cfg`
//!   beside it), `--yes` is needed and the old loader is kept as
//!   `EFI/BOOT/BOOTX64.EFI.before-hninit`. Every other file stays.
//! - The host partition is always made anew (mkfs, label `hostpart`) with
//!   `hn-root.img`, `data/` and `hn-state/`; when it holds anything (even a
//!   host partition) `--yes` is needed. A running hninit system stages new
//!   images with `hnctl stage`/`hnctl pull` instead.
//! - The same refusals as `--disk`: mounted (or swap, or attached to a loop
//!   device), too small, data without `--yes`. Every check runs before any
//!   write.

use super::disk::HostFs;
use super::grub::{self, GrubVars};
use super::install::{in_use, inspect, min_hostpart_mib, Refused, Target};
use super::tools::{self as util, cmd};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
/// Bytes read to recognise a filesystem (btrfs's superblock is at 64 KiB).
const PROBE_BYTES: usize = 128 * 1024;
/// Where a foreign removable-path loader is kept.
pub const SAVED_LOADER: &str = "::/EFI/BOOT/BOOTX64.EFI.before-hninit";
/// The smallest btrfs host partition.
const BTRFS_MIN_MIB: u64 = 128;

/// What the first bytes of a partition hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Fat,
    Ntfs,
    Ext,
    Btrfs,
    Xfs,
    Swap,
    Luks,
    /// Only zero bytes.
    Nothing,
    Unknown,
}

impl Found {
    pub fn describe(self) -> &'static str {
        match self {
            Found::Fat => "a FAT filesystem",
            Found::Ntfs => "an NTFS filesystem",
            Found::Ext => "an ext2/3/4 filesystem",
            Found::Btrfs => "a btrfs filesystem",
            Found::Xfs => "an xfs filesystem",
            Found::Swap => "swap space",
            Found::Luks => "a LUKS encrypted volume",
            Found::Nothing => "no filesystem (only zero bytes)",
            Found::Unknown => "data of no known filesystem",
        }
    }
}

/// Recognises what the first bytes `head` of a partition hold: the
/// filesystems through the superblock probe hninit boots with
/// ([`crate::sys::probe`]), plus the two signatures it has no use for at boot
/// (NTFS, LUKS), and all-zero bytes.
pub fn probe(head: &[u8]) -> Found {
    use crate::sys::probe::FsType;
    let at = |off: usize, sig: &[u8]| head.get(off..off + sig.len()) == Some(sig);
    if at(3, b"NTFS    ") {
        return Found::Ntfs;
    }
    if at(0, b"LUKS\xba\xbe") {
        return Found::Luks;
    }
    match crate::sys::probe::probe(head).map(|sb| sb.fstype) {
        Some(FsType::Vfat) => Found::Fat,
        Some(FsType::Ext2 | FsType::Ext3 | FsType::Ext4) => Found::Ext,
        Some(FsType::Btrfs) => Found::Btrfs,
        Some(FsType::Xfs) => Found::Xfs,
        Some(FsType::Swap) => Found::Swap,
        Some(FsType::Squashfs | FsType::Erofs) => Found::Unknown,
        None if head.iter().all(|&b| b == 0) => Found::Nothing,
        None => Found::Unknown,
    }
}

/// What the ESP's `EFI/` directory already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EspFiles {
    /// `EFI/BOOT/BOOTX64.EFI` exists.
    pub removable_loader: bool,
    /// `EFI/hninit/grub.cfg` exists (an earlier hninit install).
    pub ours: bool,
}

/// What `--esp` leads to when allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderPlan {
    /// Nothing at the removable path, or our own GRUB: written.
    Write,
    /// Another OS's loader: renamed to [`SAVED_LOADER`], then ours written.
    SaveForeign,
}

/// The pure decision for the ESP.
pub fn check_esp(t: &Target, found: Found, files: EspFiles, yes: bool) -> Result<LoaderPlan, Refused> {
    if !t.exists {
        return Err(Refused(format!("{} does not exist", t.path)));
    }
    in_use(t)?;
    if found != Found::Fat {
        return Err(Refused(format!(
            "{} is not a FAT EFI system partition: found {}; give the ESP (or use --disk to make one)",
            t.path,
            found.describe()
        )));
    }
    match (files.removable_loader, files.ours, yes) {
        (false, _, _) | (true, true, _) => Ok(LoaderPlan::Write),
        (true, false, true) => Ok(LoaderPlan::SaveForeign),
        (true, false, false) => Err(Refused(format!(
            "{}: EFI/BOOT/BOOTX64.EFI belongs to another system; add --yes to replace it (it is kept as EFI/BOOT/BOOTX64.EFI.before-hninit)",
            t.path
        ))),
    }
}

/// The pure decision for the host partition.
pub fn check_hostpart(t: &Target, found: Found, fs: HostFs, image_bytes: u64, yes: bool) -> Result<(), Refused> {
    if !t.exists {
        return Err(Refused(format!("{} does not exist", t.path)));
    }
    in_use(t)?;
    let need = match fs {
        HostFs::Btrfs => min_hostpart_mib(image_bytes).max(BTRFS_MIN_MIB),
        _ => min_hostpart_mib(image_bytes),
    };
    let have = t.size / MIB;
    if have < need {
        return Err(Refused(format!("{} is too small: {have} MiB, the image needs {need} MiB", t.path)));
    }
    if found != Found::Nothing && !yes {
        return Err(Refused(format!(
            "{} holds {}: it would be erased (made a new host partition); add --yes to do so",
            t.path,
            found.describe()
        )));
    }
    Ok(())
}

/// The first [`PROBE_BYTES`] of `p` (fewer when it is shorter).
fn head(p: &Path) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; PROBE_BYTES];
    let mut f = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let n = util::read_full(&mut f, &mut buf).with_context(|| format!("reading {}", p.display()))?;
    buf.truncate(n);
    Ok(buf)
}

fn mtools(name: &str, esp: &Path) -> std::process::Command {
    let mut c = cmd(name);
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(esp);
    c
}

/// Lists `EFI/` of the FAT image `esp` (lower case, `::/efi/...`).
fn esp_listing(esp: &Path) -> Result<String> {
    let o = mtools("mdir", esp).args(["-/", "-b", "::/EFI"]).stdin(std::process::Stdio::null()).output().context("running mdir")?;
    // No EFI directory yet: an empty listing.
    Ok(if o.status.success() { String::from_utf8_lossy(&o.stdout).to_lowercase() } else { String::new() })
}

fn esp_files(listing: &str) -> EspFiles {
    let has = |f: &str| listing.lines().any(|l| l.trim() == f);
    EspFiles { removable_loader: has("::/efi/boot/bootx64.efi"), ours: has("::/efi/hninit/grub.cfg") }
}

/// `hnctl install --esp --hostpart-dev` options.
#[derive(Debug, Clone)]
pub struct PartsSpec {
    pub esp: PathBuf,
    pub hostpart: PathBuf,
    pub image: PathBuf,
    pub hostpart_fs: HostFs,
    pub yes: bool,
    pub cmdline: String,
}

/// What [`install_parts`] did.
#[derive(Debug, Clone)]
pub struct PartsReport {
    /// The foreign loader was kept as [`SAVED_LOADER`].
    pub saved_foreign: bool,
    pub hostpart_mib: u64,
}

/// Checks both partitions, then makes the host partition and writes our
/// files onto the ESP.
pub fn install_parts(spec: &PartsSpec) -> Result<PartsReport> {
    let img = fs::metadata(&spec.image).with_context(|| format!("reading the image {}", spec.image.display()))?;
    if !img.is_file() {
        return Err(Refused(format!("{} is not a regular file", spec.image.display())).into());
    }
    if spec.hostpart_fs == HostFs::Xfs {
        return Err(Refused("--hostpart-fs xfs: the host partition is ext4 or btrfs".into()).into());
    }
    if fs::canonicalize(&spec.esp).ok().is_some_and(|e| fs::canonicalize(&spec.hostpart).ok() == Some(e)) {
        return Err(Refused(format!("--esp and --hostpart-dev are the same: {}", spec.esp.display())).into());
    }
    let esp_t = inspect(&spec.esp)?;
    let esp_found = if esp_t.exists { probe(&head(&spec.esp)?) } else { Found::Nothing };
    let files = if esp_found == Found::Fat { esp_files(&esp_listing(&spec.esp)?) } else { EspFiles::default() };
    let plan = check_esp(&esp_t, esp_found, files, spec.yes)?;
    let host_t = inspect(&spec.hostpart)?;
    let host_found = if host_t.exists { probe(&head(&spec.hostpart)?) } else { Found::Nothing };
    check_hostpart(&host_t, host_found, spec.hostpart_fs, img.len(), spec.yes)?;

    make_hostpart(spec).with_context(|| format!("making the host partition on {}", spec.hostpart.display()))?;
    write_esp(spec, plan, files).with_context(|| format!("writing GRUB and the menu onto {}", spec.esp.display()))?;
    Ok(PartsReport { saved_foreign: plan == LoaderPlan::SaveForeign, hostpart_mib: host_t.size / MIB })
}

/// mkfs on the partition itself (its whole size) from a staging directory
/// holding a hard link to the image (a copy across filesystems).
fn make_hostpart(spec: &PartsSpec) -> Result<()> {
    let near = spec.image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = format!(".hninit-hostpart-stage-{}", util::unique_suffix());
    let stage = if fs::create_dir(near.join(&name)).is_ok() {
        near.join(&name)
    } else {
        let s = std::env::temp_dir().join(&name);
        fs::create_dir(&s).with_context(|| format!("creating {}", s.display()))?;
        s
    };
    let res = (|| -> Result<()> {
        fs::create_dir(stage.join("data"))?;
        fs::create_dir(stage.join("hn-state"))?;
        let dst = stage.join("hn-root.img");
        if fs::hard_link(&spec.image, &dst).is_err() {
            fs::copy(&spec.image, &dst).with_context(|| format!("copying {}", spec.image.display()))?;
        }
        let (prog, args): (&str, &[&str]) = match spec.hostpart_fs {
            HostFs::Btrfs => ("mkfs.btrfs", &["-q", "-f", "-L", "hostpart", "--rootdir"]),
            _ => ("mkfs.ext4", &["-q", "-F", "-L", "hostpart", "-E", "root_owner=0:0", "-d"]),
        };
        let mut c = if util::running_as_root() {
            cmd(prog)
        } else {
            let mut c = cmd("fakeroot");
            c.arg(util::program(prog)?);
            c
        };
        c.args(args).arg(&stage).arg(&spec.hostpart);
        util::run(&mut c)?;
        fs::OpenOptions::new().write(true).open(&spec.hostpart)?.sync_all()?;
        Ok(())
    })();
    util::remove_any(&stage).ok();
    res
}

/// Our files onto the FAT ESP: `EFI/hninit/` first, the removable path last.
fn write_esp(spec: &PartsSpec, plan: LoaderPlan, files: EspFiles) -> Result<()> {
    let work = std::env::temp_dir().join(format!("hninit-esp-{}", util::unique_suffix()));
    fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
    let res = write_esp_from(spec, plan, files, &work);
    util::remove_any(&work).ok();
    res
}

fn write_esp_from(spec: &PartsSpec, plan: LoaderPlan, files: EspFiles, work: &Path) -> Result<()> {
    let efi = grub::grub_efi(&work.join("grubx64.efi"))?;
    let cfg = work.join("grub.cfg");
    fs::write(&cfg, GrubVars { cmdline: spec.cmdline.clone(), ..GrubVars::default() }.render())?;
    let env = work.join("grubenv");
    fs::write(&env, crate::slots::grubenv::empty_block())?;
    for dir in ["::/EFI", "::/EFI/BOOT", "::/EFI/hninit"] {
        let exists = mtools("mdir", &spec.esp).args(["-b", dir]).output().context("running mdir")?.status.success();
        if !exists {
            util::run(mtools("mmd", &spec.esp).arg(dir)).with_context(|| format!("making {dir}"))?;
        }
    }
    let copy = |src: &Path, dst: &str| -> Result<()> {
        util::run(mtools("mcopy", &spec.esp).args(["-D", "o"]).arg(src).arg(dst)).with_context(|| format!("copying {dst}"))
    };
    copy(&efi, "::/EFI/hninit/grubx64.efi")?;
    copy(&cfg, &format!("::{}", grub::ESP_GRUB_CFG))?;
    copy(&env, "::/EFI/hninit/grubenv")?;
    if plan == LoaderPlan::SaveForeign && files.removable_loader {
        util::run(mtools("mdel", &spec.esp).arg(SAVED_LOADER)).ok();
        util::run(mtools("mren", &spec.esp).arg("::/EFI/BOOT/BOOTX64.EFI").arg(SAVED_LOADER))
            .context("keeping the other system's EFI/BOOT/BOOTX64.EFI")?;
    }
    copy(&efi, "::/EFI/BOOT/BOOTX64.EFI")?;
    fs::OpenOptions::new().write(true).open(&spec.esp)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(size: u64) -> Target {
        Target { path: "p".into(), exists: true, size, ..Target::default() }
    }

    #[test]
    fn probes() {
        let mut b = vec![0u8; PROBE_BYTES];
        assert_eq!(probe(&b), Found::Nothing);
        // A FAT32 boot sector: 512-byte sectors, 1 per cluster, 32 reserved,
        // 2 FATs, media F8, no FAT16 size, 131072 sectors, a FAT32 size.
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 1;
        b[14..16].copy_from_slice(&32u16.to_le_bytes());
        b[16] = 2;
        b[21] = 0xF8;
        b[32..36].copy_from_slice(&131072u32.to_le_bytes());
        b[36..40].copy_from_slice(&1009u32.to_le_bytes());
        b[82..87].copy_from_slice(b"FAT32");
        b[510] = 0x55;
        b[511] = 0xAA;
        assert_eq!(probe(&b), Found::Fat);
        let mut e = vec![0u8; PROBE_BYTES];
        e[1080] = 0x53;
        e[1081] = 0xEF;
        assert_eq!(probe(&e), Found::Ext);
        assert_eq!(probe(b"hello"), Found::Unknown);
    }

    #[test]
    fn esp_decisions() {
        let none = EspFiles::default();
        let e = check_esp(&t(64 * MIB), Found::Ext, none, true).unwrap_err().0;
        assert!(e.contains("not a FAT EFI system partition: found an ext2/3/4 filesystem"), "{e}");
        assert_eq!(check_esp(&t(64 * MIB), Found::Fat, none, false).unwrap(), LoaderPlan::Write);
        let foreign = EspFiles { removable_loader: true, ours: false };
        let e = check_esp(&t(64 * MIB), Found::Fat, foreign, false).unwrap_err().0;
        assert!(e.contains("belongs to another system; add --yes"), "{e}");
        assert_eq!(check_esp(&t(64 * MIB), Found::Fat, foreign, true).unwrap(), LoaderPlan::SaveForeign);
        let ours = EspFiles { removable_loader: true, ours: true };
        assert_eq!(check_esp(&t(64 * MIB), Found::Fat, ours, false).unwrap(), LoaderPlan::Write);
        let mut m = t(64 * MIB);
        m.mounted = vec!["/boot/efi".into()];
        assert!(check_esp(&m, Found::Fat, none, true).unwrap_err().0.contains("mounted at /boot/efi"));
    }

    #[test]
    fn hostpart_decisions() {
        let e = check_hostpart(&t(100 * MIB), Found::Nothing, HostFs::Ext4, 100 * MIB, true).unwrap_err().0;
        assert!(e.contains("too small: 100 MiB, the image needs 157 MiB"), "{e}");
        assert!(check_hostpart(&t(200 * MIB), Found::Nothing, HostFs::Ext4, 100 * MIB, false).is_ok());
        let e = check_hostpart(&t(200 * MIB), Found::Ext, HostFs::Ext4, 100 * MIB, false).unwrap_err().0;
        assert!(e.contains("holds an ext2/3/4 filesystem") && e.contains("--yes"), "{e}");
        assert!(check_hostpart(&t(200 * MIB), Found::Ext, HostFs::Ext4, 100 * MIB, true).is_ok());
        let e = check_hostpart(&t(100 * MIB), Found::Nothing, HostFs::Btrfs, MIB, true).unwrap_err().0;
        assert!(e.contains("needs 128 MiB"), "{e}");
    }
}
