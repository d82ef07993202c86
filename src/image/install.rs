//! `hnctl install --disk DEV|FILE --image IMG`: a bootable hninit layout on a
//! whole disk or a disk image file, without root for a file: a GPT with an ESP
//! (FAT32 `EFI-BOOT`, GRUB at the removable path, the hninit menu, grubenv) and
//! a host partition (`hostpart`, ext4 or btrfs) holding the image as
//! `hn-root.img` ([`super::disk::build_disk`], the code `cargo xtask disk` uses);
//! with `--bios` also GRUB for i386-pc in a BIOS boot partition and the MBR
//! ([`super::biosboot`]): one disk that boots under UEFI and legacy BIOS.
//!
//! Before anything is written, [`check`] (pure) refuses: a disk with a mounted
//! partition (or a file attached to a loop device), a disk too small for the
//! image, and erasing a disk that holds data without `--yes`.

use super::biosboot::{install_bios_grub, BiosBoot};
use super::disk::{build_disk, device_size, is_block_device, DiskLayout, DiskSpec, EspSpec, HostFs, HostpartSpec, ESP_MIB};
use super::grub::GrubVars;
use anyhow::{Context, Result};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// A refusal (hnctl exit code 3): nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What [`check`] knows of the target disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    /// The path given (`/dev/sdb`, `vm.img`).
    pub path: String,
    pub exists: bool,
    pub is_block: bool,
    /// Size in bytes (0 when it does not exist).
    pub size: u64,
    /// Its first MiB has a non-zero byte (a partition table, a filesystem…).
    pub has_data: bool,
    /// Mount points of the disk or its partitions.
    pub mounted: Vec<String>,
    /// Loop devices backed by the file.
    pub loops: Vec<String>,
}

/// The smallest host partition for an image of `image_bytes`: the image plus
/// a quarter (a staged image next to it needs more: that is the operator's
/// choice of disk) plus 32 MiB of filesystem overhead, whole MiB.
pub fn min_hostpart_mib(image_bytes: u64) -> u64 {
    image_bytes.div_ceil(MIB) * 5 / 4 + 32
}

/// The disk size for a host partition of `hostpart_mib`: 1 MiB before the
/// ESP, the ESP, the host partition, 1 MiB for the backup GPT.
pub fn disk_mib(hostpart_mib: u64) -> u64 {
    1 + ESP_MIB + hostpart_mib + 1
}

/// Refuses a target that is mounted (or swap) or attached to a loop device;
/// `--disk` and `--esp`/`--hostpart-dev` share it.
pub(super) fn in_use(t: &Target) -> Result<(), Refused> {
    if !t.mounted.is_empty() {
        return Err(Refused(format!("{} is in use: mounted at {}; unmount it first", t.path, t.mounted.join(", "))));
    }
    if !t.loops.is_empty() {
        return Err(Refused(format!("{} is in use: attached to {}; detach it first (losetup -d)", t.path, t.loops.join(", "))));
    }
    Ok(())
}

/// The pure decision: the host partition size to make (MiB), or why not.
/// `size_mib` is `--size` for a file that is made; an existing disk is used
/// whole.
pub fn check(t: &Target, image_bytes: u64, size_mib: Option<u64>, yes: bool) -> Result<u64, Refused> {
    in_use(t)?;
    let need = min_hostpart_mib(image_bytes);
    let total_mib = match (t.exists && (t.is_block || t.size > 0), size_mib) {
        (true, _) if t.is_block => t.size / MIB,
        (_, Some(s)) => s,
        (true, None) => t.size / MIB,
        (false, None) => disk_mib(need),
    };
    let host = total_mib.saturating_sub(disk_mib(0));
    if host < need {
        return Err(Refused(format!(
            "{} is too small: {total_mib} MiB, the image needs {} MiB ({} MiB host partition + {ESP_MIB} MiB ESP + 2 MiB GPT)",
            t.path,
            disk_mib(need),
            need
        )));
    }
    if t.has_data && !yes {
        return Err(Refused(format!(
            "{} holds data (a partition table or a filesystem): everything on it would be erased; add --yes to do so",
            t.path
        )));
    }
    Ok(host)
}

/// Reads what [`check`] needs about `disk` from the system.
pub fn inspect(disk: &Path) -> Result<Target> {
    let mut t = Target { path: disk.display().to_string(), ..Target::default() };
    let Ok(meta) = fs::metadata(disk) else { return Ok(t) };
    t.exists = true;
    t.is_block = is_block_device(disk);
    t.size = if t.is_block { device_size(disk)? } else { meta.len() };
    let mut head = vec![0u8; MIB as usize];
    let n = fs::File::open(disk)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("reading {}", disk.display()))?;
    t.has_data = head[..n].iter().any(|&b| b != 0);
    if t.is_block {
        use std::os::unix::fs::MetadataExt;
        let rdev = meta.rdev();
        let (maj, min) = (libc::major(rdev), libc::minor(rdev));
        let mut devs = vec![format!("{maj}:{min}")];
        // Its partitions: /sys/dev/block/M:m/<name>N/dev.
        if let Ok(rd) = fs::read_dir(format!("/sys/dev/block/{maj}:{min}")) {
            for e in rd.filter_map(|e| e.ok()) {
                if let Ok(d) = fs::read_to_string(e.path().join("dev")) {
                    devs.push(d.trim().to_string());
                }
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        t.mounted = mounted_at(&mountinfo, &devs);
        let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
        let name = disk.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for l in swaps.lines().skip(1) {
            let dev = l.split_whitespace().next().unwrap_or("");
            if dev.strip_prefix("/dev/").is_some_and(|d| d.starts_with(&name)) {
                t.mounted.push(format!("swap ({dev})"));
            }
        }
    } else {
        let me = fs::canonicalize(disk)?;
        if let Ok(rd) = fs::read_dir("/sys/block") {
            for e in rd.filter_map(|e| e.ok()) {
                if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) {
                    if Path::new(b.trim()) == me {
                        t.loops.push(format!("/dev/{}", e.file_name().to_string_lossy()));
                    }
                }
            }
        }
        t.loops.sort();
    }
    Ok(t)
}

/// Mount points in `mountinfo` (`/proc/self/mountinfo` text) of the devices
/// `devs` (`major:minor`).
pub fn mounted_at(mountinfo: &str, devs: &[String]) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 4 && devs.iter().any(|d| d == f[2])).then(|| f[4].to_string())
        })
        .collect()
}

/// `hnctl install` options.
#[derive(Debug, Clone)]
pub struct InstallSpec {
    pub disk: PathBuf,
    pub image: PathBuf,
    pub hostpart_fs: HostFs,
    /// Size of a disk file to make (MiB); an existing disk is used whole.
    pub size_mib: Option<u64>,
    pub yes: bool,
    /// The kernel command line of the menu entries.
    pub cmdline: String,
    /// Also GRUB for BIOS (i386-pc): a BIOS boot partition and the MBR, so
    /// the disk boots under UEFI and legacy BIOS with one menu and counter.
    pub bios: bool,
}

/// What [`install`] made.
#[derive(Debug, Clone)]
pub struct Installed {
    pub layout: DiskLayout,
    /// With `--bios`: the BIOS boot partition and core.img.
    pub bios: Option<BiosBoot>,
}

/// Checks, then writes the layout. Returns the layout made.
pub fn install(spec: &InstallSpec) -> Result<Installed> {
    let img = fs::metadata(&spec.image).with_context(|| format!("reading the image {}", spec.image.display()))?;
    if !img.is_file() {
        return Err(Refused(format!("{} is not a regular file", spec.image.display())).into());
    }
    let target = inspect(&spec.disk)?;
    let host_mib = check(&target, img.len(), spec.size_mib, spec.yes)?;
    if spec.bios {
        // Before anything is erased: GRUB for i386-pc must be at hand.
        let boot = Path::new(super::grub::I386_PC_DIR).join("boot.img");
        if !boot.exists() {
            return Err(Refused(format!("--bios needs GRUB for i386-pc ({} is missing: install grub-pc-bin)", boot.display())).into());
        }
        super::grub::cached_grub_bios().context("making GRUB's core.img for --bios")?;
    }
    let disk = DiskSpec {
        esp: Some(EspSpec {
            grub_cfg: GrubVars { cmdline: spec.cmdline.clone(), ..GrubVars::default() }.render(),
            grubenv: None,
        }),
        hostpart: HostpartSpec {
            fs: spec.hostpart_fs,
            files: vec![("hn-root.img".into(), spec.image.clone())],
            dirs: vec!["data".into(), "hn-state".into()],
            size_mib: host_mib,
            ..Default::default()
        },
        extra_hostparts: Vec::new(),
    };
    let layout = build_disk(&disk, &spec.disk)?;
    let bios = if spec.bios { Some(install_bios_grub(&spec.disk).context("installing GRUB for BIOS")?) } else { None };
    Ok(Installed { layout, bios })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, has_data: bool) -> Target {
        Target { path: "vm.img".into(), exists: true, size, has_data, ..Target::default() }
    }

    #[test]
    fn sizes() {
        // A 100 MiB image: 157 MiB host partition, a 223 MiB disk.
        assert_eq!(min_hostpart_mib(100 * MIB), 157);
        assert_eq!(check(&Target { path: "new.img".into(), ..Target::default() }, 100 * MIB, None, false).unwrap(), 157);
        assert_eq!(check(&Target::default(), 100 * MIB, Some(1024), false).unwrap(), 1024 - 66);
        // An empty (all zero) file of 1 GiB is used whole without --yes.
        assert_eq!(check(&file(1 << 30, false), 100 * MIB, None, false).unwrap(), 1024 - 66);
    }

    #[test]
    fn refusals_name_the_reason() {
        let e = check(&file(200 * MIB, false), 100 * MIB, None, true).unwrap_err().0;
        assert!(e.contains("too small: 200 MiB, the image needs 223 MiB"), "{e}");
        let e = check(&file(1 << 30, true), 100 * MIB, None, false).unwrap_err().0;
        assert!(e.contains("holds data") && e.contains("--yes"), "{e}");
        assert!(check(&file(1 << 30, true), 100 * MIB, None, true).is_ok());
        let mut t = file(1 << 30, true);
        t.is_block = true;
        t.mounted = vec!["/mnt".into()];
        let e = check(&t, 100 * MIB, None, true).unwrap_err().0;
        assert!(e.contains("mounted at /mnt"), "{e}");
        let mut t = file(1 << 30, false);
        t.loops = vec!["/dev/loop3".into()];
        assert!(check(&t, 100 * MIB, None, true).unwrap_err().0.contains("attached to /dev/loop3"));
    }

    #[test]
    fn mountinfo_devices() {
        let mi = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
                  30 22 259:1 / /boot/efi rw shared:2 - vfat /dev/nvme0n1p1 rw\n\
                  31 22 8:17 / /mnt rw shared:3 - ext4 /dev/sdb1 rw\n";
        assert_eq!(mounted_at(mi, &["8:16".into(), "8:17".into()]), ["/mnt"]);
        assert!(mounted_at(mi, &["8:32".into()]).is_empty());
    }
}
