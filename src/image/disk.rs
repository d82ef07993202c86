//! GPT disk images without root: an EFI system partition (FAT32 `EFI-BOOT`
//! with the standalone GRUB and its menu) and host partitions (ext4 or btrfs
//! holding the root images), each filesystem made in its own file and copied
//! in at its partition's offset.

use super::grub;
use super::tools::{self as util, cmd};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

pub use super::grub::grub_efi;

/// Filesystem of a host partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostFs {
    #[default]
    Ext4,
    Btrfs,
    /// Made empty (mkfs.xfs here cannot fill it without root): for tests of
    /// what happens before files are read.
    Xfs,
}

impl HostFs {
    /// The name `mount -t` and `/proc/mounts` use.
    pub fn name(self) -> &'static str {
        match self {
            HostFs::Ext4 => "ext4",
            HostFs::Btrfs => "btrfs",
            HostFs::Xfs => "xfs",
        }
    }
}

/// The whole disk.
#[derive(Debug, Clone, Default)]
pub struct DiskSpec {
    /// EFI system partition (partition 1) when present.
    pub esp: Option<EspSpec>,
    /// The host partition (right after the ESP).
    pub hostpart: HostpartSpec,
    /// More host partitions after it (e.g. a second one with the same label).
    pub extra_hostparts: Vec<HostpartSpec>,
}

/// EFI system partition contents: GRUB at `/EFI/BOOT/BOOTX64.EFI`, this menu
/// at `/EFI/hninit/grub.cfg`.
#[derive(Debug, Clone, Default)]
pub struct EspSpec {
    pub grub_cfg: String,
    /// `/EFI/hninit/grubenv` (GRUB's boot counter); an empty block when `None`.
    pub grubenv: Option<Vec<u8>>,
}

/// One host partition.
#[derive(Debug, Clone)]
pub struct HostpartSpec {
    pub fs: HostFs,
    /// Filesystem label (default `hostpart`).
    pub label: String,
    /// GPT partition name (default `hostpart`).
    pub partlabel: String,
    /// Filesystem UUID; random when `None` (the layout reports it).
    pub fs_uuid: Option<String>,
    /// GPT partition unique GUID; random when `None`.
    pub part_uuid: Option<String>,
    /// Files to copy in: (path inside the filesystem, source file).
    pub files: Vec<(String, PathBuf)>,
    /// Directories to create (parents included).
    pub dirs: Vec<String>,
    pub size_mib: u64,
}

impl Default for HostpartSpec {
    fn default() -> Self {
        HostpartSpec {
            fs: HostFs::Ext4,
            label: "hostpart".into(),
            partlabel: "hostpart".into(),
            fs_uuid: None,
            part_uuid: None,
            files: Vec::new(),
            dirs: Vec::new(),
            size_mib: DEFAULT_HOSTPART_MIB,
        }
    }
}

/// Default host partition size (sparse in the disk file).
pub const DEFAULT_HOSTPART_MIB: u64 = 256;
/// ESP size: large enough for a real FAT32.
pub const ESP_MIB: u64 = 64;
/// Filesystem label of the ESP.
pub const ESP_LABEL: &str = "EFI-BOOT";
/// Smallest btrfs mkfs.btrfs accepts comfortably.
const BTRFS_MIN_MIB: u64 = 128;
/// Smallest filesystem mkfs.xfs (xfsprogs 6) makes.
const XFS_MIN_MIB: u64 = 300;
const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PartRole {
    Esp,
    Hostpart,
    /// `extra_hostparts[i]`.
    ExtraHostpart(usize),
}

/// One partition as made.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    /// GPT partition number (1-based): `/dev/vda<number>`, GRUB `(hd0,gpt<number>)`.
    pub number: u32,
    pub role: PartRole,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// GPT partition name.
    pub partlabel: String,
    /// GPT partition unique GUID (lower case).
    pub part_uuid: String,
    /// `vfat`, `ext4` or `btrfs`.
    pub fs_type: String,
    pub fs_label: String,
    /// Filesystem UUID (for vfat the volume id `XXXX-XXXX`).
    pub fs_uuid: String,
}

/// The disk as made by [`build_disk`].
#[derive(Debug, Clone, Serialize)]
pub struct DiskLayout {
    pub size_bytes: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionInfo>,
}

impl DiskLayout {
    pub fn esp(&self) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.role == PartRole::Esp)
    }
    pub fn hostpart(&self) -> &PartitionInfo {
        self.partitions
            .iter()
            .find(|p| p.role == PartRole::Hostpart)
            .expect("every disk has a host partition")
    }
}

/// Builds the GPT disk image `out` (replaced) from `spec`.
pub fn build_disk(spec: &DiskSpec, out: &Path) -> Result<DiskLayout> {
    let work = work_dir(spec, out, is_block_device(out));
    util::remove_any(&work)?;
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let res = build_disk_in(spec, out, &work);
    util::remove_any(&work).ok();
    res.with_context(|| format!("building disk image {}", out.display()))
}

/// Where the partition images are made: beside a disk file (same
/// filesystem, its space). For a block device, beside the host partition's
/// first file (the image to install): the image is hard-linked into the
/// staging tree instead of copied, and the partition image needs about its
/// size there; the temporary directory only when there is no file. Not
/// `/tmp` for an image: Debian 13 mounts a tmpfs there, half the RAM, and an
/// image twice over does not fit.
fn work_dir(spec: &DiskSpec, out: &Path, block_device: bool) -> PathBuf {
    let name = out.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let suffix = util::unique_suffix();
    if !block_device {
        return out.with_file_name(format!(".{name}.work-{suffix}"));
    }
    match spec.hostpart.files.first().map(|(_, src)| src.parent().unwrap_or(Path::new(""))) {
        Some(d) if d.as_os_str().is_empty() => PathBuf::from(format!(".hninit-{name}.work-{suffix}")),
        Some(d) => d.join(format!(".hninit-{name}.work-{suffix}")),
        None => std::env::temp_dir().join(format!("hninit-{name}.work-{suffix}")),
    }
}

fn build_disk_in(spec: &DiskSpec, out: &Path, work: &Path) -> Result<DiskLayout> {
    // Plan: 1 MiB aligned partitions in order, 1 MiB spare at the end for the backup GPT.
    let mut plan: Vec<(PartRole, u64)> = Vec::new();
    if spec.esp.is_some() {
        plan.push((PartRole::Esp, ESP_MIB));
    }
    plan.push((PartRole::Hostpart, spec.hostpart.size_mib));
    for (i, h) in spec.extra_hostparts.iter().enumerate() {
        plan.push((PartRole::ExtraHostpart(i), h.size_mib));
    }
    let host = |role: PartRole| -> &HostpartSpec {
        match role {
            PartRole::ExtraHostpart(i) => &spec.extra_hostparts[i],
            _ => &spec.hostpart,
        }
    };

    let mut parts = Vec::new();
    let mut images: Vec<PathBuf> = Vec::new();
    let mut next = MIB;
    for (i, &(role, mib)) in plan.iter().enumerate() {
        let number = i as u32 + 1;
        let img = work.join(format!("part{number}.img"));
        let info = match role {
            PartRole::Esp => {
                let esp = spec.esp.as_ref().expect("planned only with an ESP");
                let vol = make_esp(esp, &img, work)?;
                PartitionInfo {
                    number,
                    role,
                    start_bytes: next,
                    size_bytes: mib * MIB,
                    partlabel: ESP_LABEL.into(),
                    part_uuid: util::random_uuid()?,
                    fs_type: "vfat".into(),
                    fs_label: ESP_LABEL.into(),
                    fs_uuid: vol,
                }
            }
            _ => {
                let h = host(role);
                let fs_uuid = match &h.fs_uuid {
                    Some(u) => u.to_lowercase(),
                    None => util::random_uuid()?,
                };
                let size = match h.fs {
                    HostFs::Btrfs => mib.max(BTRFS_MIN_MIB),
                    HostFs::Xfs => mib.max(XFS_MIN_MIB),
                    HostFs::Ext4 => mib,
                };
                make_hostpart(h, &fs_uuid, size, &img, work)?;
                PartitionInfo {
                    number,
                    role,
                    start_bytes: next,
                    size_bytes: size * MIB,
                    partlabel: h.partlabel.clone(),
                    part_uuid: match &h.part_uuid {
                        Some(u) => u.to_lowercase(),
                        None => util::random_uuid()?,
                    },
                    fs_type: h.fs.name().into(),
                    fs_label: h.label.clone(),
                    fs_uuid,
                }
            }
        };
        next += info.size_bytes;
        parts.push(info);
        images.push(img);
    }
    let size_bytes = next + MIB;

    let disk_guid = util::random_uuid()?;
    if is_block_device(out) {
        // A whole disk (`hnctl install --disk /dev/sdX`): written in place.
        let have = device_size(out)?;
        if have < size_bytes {
            bail!("{} has {have} bytes; the layout needs {size_bytes}", out.display());
        }
    } else {
        util::remove_any(out)?;
        if let Some(d) = out.parent() {
            fs::create_dir_all(d)?;
        }
        let f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        f.set_len(size_bytes)?;
    }
    let mut sg = cmd("sgdisk");
    sg.args(["-o", "-U", &disk_guid]);
    for p in &parts {
        let (first, last) = (
            p.start_bytes / SECTOR,
            (p.start_bytes + p.size_bytes) / SECTOR - 1,
        );
        let n = p.number;
        let ty = if p.role == PartRole::Esp {
            "EF00"
        } else {
            "8300"
        };
        sg.arg(format!("-n{n}:{first}:{last}"))
            .arg(format!("-t{n}:{ty}"))
            .arg(format!("-c{n}:{}", p.partlabel))
            .arg(format!("-u{n}:{}", p.part_uuid));
    }
    sg.arg(out);
    util::run(&mut sg).context("writing the GPT with sgdisk")?;

    let mut f = fs::OpenOptions::new().write(true).open(out)?;
    for (p, img) in parts.iter().zip(&images) {
        let n = util::copy_into_at(img, &mut f, p.start_bytes)?;
        if n > p.size_bytes {
            bail!(
                "filesystem of partition {} ({n} bytes) exceeds its partition",
                p.number
            );
        }
    }
    f.sync_all()?;
    Ok(DiskLayout {
        size_bytes,
        disk_guid,
        partitions: parts,
    })
}

/// Makes the FAT32 ESP image; returns its volume id as `XXXX-XXXX`.
fn make_esp(esp: &EspSpec, img: &Path, work: &Path) -> Result<String> {
    let efi = grub::grub_efi(&work.join("BOOTX64.EFI"))?;
    let cfg = work.join("grub.cfg");
    fs::write(&cfg, &esp.grub_cfg)?;
    let vol = u32::from_str_radix(&util::random_uuid()?[..8], 16)?;
    util::run(
        cmd("mkfs.vfat")
            .args([
                "-C",
                "-F",
                "32",
                "-n",
                ESP_LABEL,
                "-i",
                &format!("{vol:08X}"),
            ])
            .arg(img)
            .arg((ESP_MIB * 1024).to_string()),
    )
    .context("making the ESP filesystem")?;
    let mtools = |args: &[&str], files: &[&Path]| -> Result<()> {
        let mut c = cmd(args[0]);
        c.env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(img)
            .args(&args[1..])
            .args(files);
        util::run(&mut c)
    };
    mtools(&["mmd", "::/EFI", "::/EFI/BOOT", "::/EFI/hninit"], &[])?;
    let mut c = cmd("mcopy");
    c.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(img)
        .arg(&efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI");
    util::run(&mut c).context("copying GRUB onto the ESP")?;
    let mut c = cmd("mcopy");
    c.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(img)
        .arg(&cfg)
        .arg(format!("::{}", grub::ESP_GRUB_CFG));
    util::run(&mut c).context("copying grub.cfg onto the ESP")?;
    // GRUB's save_env rewrites the file in place: it must exist with its 1024 bytes.
    let env = work.join("grubenv");
    fs::write(&env, esp.grubenv.clone().unwrap_or_else(crate::slots::grubenv::empty_block))?;
    let mut c = cmd("mcopy");
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(img).arg(&env).arg("::/EFI/hninit/grubenv");
    util::run(&mut c).context("copying grubenv onto the ESP")?;
    Ok(format!("{:04X}-{:04X}", vol >> 16, vol & 0xffff))
}

/// Makes a host partition filesystem image with its files and directories.
fn make_hostpart(
    h: &HostpartSpec,
    fs_uuid: &str,
    size_mib: u64,
    img: &Path,
    work: &Path,
) -> Result<()> {
    let stage = work.join(format!(
        "stage-{}",
        img.file_stem().unwrap_or_default().to_string_lossy()
    ));
    fs::create_dir_all(&stage)?;
    for d in &h.dirs {
        let rel = checked_rel(d)?;
        fs::create_dir_all(stage.join(rel)).with_context(|| format!("creating directory {d}"))?;
    }
    for (dst, src) in &h.files {
        let p = stage.join(checked_rel(dst)?);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        // A FIFO (hostile-input scenarios) is made anew: copying one would block.
        if fs::symlink_metadata(src).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type())) {
            util::run(cmd("mkfifo").arg(&p)).with_context(|| format!("making the FIFO {dst}"))?;
            continue;
        }
        // A hard link avoids copying large images twice; fall back to a copy.
        if fs::hard_link(src, &p).is_err() {
            fs::copy(src, &p).with_context(|| format!("copying {} to {dst}", src.display()))?;
        }
    }
    match h.fs {
        HostFs::Ext4 => make_ext4(&stage, &h.label, Some(fs_uuid), size_mib, img)?,
        HostFs::Btrfs => {
            util::remove_any(img)?;
            fs::File::create(img)?.set_len(size_mib * MIB)?;
            let mut c = if util::running_as_root() {
                cmd("mkfs.btrfs")
            } else {
                let mut c = cmd("fakeroot");
                c.arg(util::program("mkfs.btrfs")?);
                c
            };
            c.args(["-q", "-f", "-L", &h.label, "-U", fs_uuid, "--rootdir"])
                .arg(&stage)
                .arg(img);
            util::run(&mut c)
                .with_context(|| format!("making btrfs host partition ({size_mib} MiB)"))?;
        }
        HostFs::Xfs => {
            if !h.files.is_empty() || !h.dirs.is_empty() {
                bail!("xfs host partitions are made empty (no files or directories)");
            }
            util::remove_any(img)?;
            fs::File::create(img)?.set_len(size_mib * MIB)?;
            util::run(
                cmd("mkfs.xfs")
                    .args(["-q", "-f", "-L", &h.label, "-m"])
                    .arg(format!("uuid={fs_uuid}"))
                    .arg(img),
            )
            .with_context(|| format!("making xfs host partition ({size_mib} MiB)"))?;
        }
    }
    util::remove_any(&stage)
}

/// `mkfs.ext4` of `size_mib` from the directory `stage` into the file `out`
/// (replaced), every file owned by root (fakeroot when not run as root).
pub fn make_ext4(
    stage: &Path,
    label: &str,
    uuid: Option<&str>,
    size_mib: u64,
    out: &Path,
) -> Result<()> {
    util::remove_any(out)?;
    if let Some(d) = out.parent() {
        fs::create_dir_all(d)?;
    }
    let mkfs = util::program("mkfs.ext4")?;
    let mut c = if util::running_as_root() {
        std::process::Command::new(&mkfs)
    } else {
        let mut c = cmd("fakeroot");
        c.arg(&mkfs);
        c
    };
    c.args(["-q", "-F", "-L", label]);
    if let Some(u) = uuid {
        c.args(["-U", u]);
    }
    c.arg("-d")
        .arg(stage)
        .args(["-E", "root_owner=0:0"])
        .arg(out)
        .arg(format!("{size_mib}M"));
    util::run(&mut c)
        .with_context(|| format!("making ext4 filesystem {} ({size_mib} MiB)", out.display()))
}

/// True when `p` is a block device (a whole disk for `hnctl install`).
pub fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// Size in bytes of a disk file or block device (seek to its end).
pub fn device_size(p: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    f.seek(SeekFrom::End(0)).with_context(|| format!("finding the size of {}", p.display()))
}

fn checked_rel(p: &str) -> Result<&str> {
    let rel = p.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        bail!("bad path inside a host partition: {p:?}");
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    #[test]
    fn work_dir_beside_the_image_for_a_block_device() {
        let spec = |files: Vec<(String, PathBuf)>| DiskSpec {
            esp: None,
            hostpart: HostpartSpec { files, ..Default::default() },
            extra_hostparts: Vec::new(),
        };
        let img = spec(vec![("hn-root.img".into(), PathBuf::from("/srv/big/hn-root.img"))]);
        let in_dir = |w: PathBuf, d: &str, prefix: &str| {
            assert_eq!(w.parent().unwrap(), Path::new(d), "{}", w.display());
            assert!(w.file_name().unwrap().to_string_lossy().starts_with(prefix), "{}", w.display());
        };
        in_dir(work_dir(&img, Path::new("/dev/vdc"), true), "/srv/big", ".hninit-vdc.work-");
        in_dir(work_dir(&img, Path::new("/vm/disk.img"), false), "/vm", ".disk.img.work-");
        let rel = spec(vec![("hn-root.img".into(), PathBuf::from("hn-root.img"))]);
        in_dir(work_dir(&rel, Path::new("/dev/vdc"), true), "", ".hninit-vdc.work-");
        in_dir(work_dir(&spec(Vec::new()), Path::new("/dev/vdc"), true), &std::env::temp_dir().to_string_lossy(), "hninit-vdc.work-");
    }

    use super::*;
    use std::process::Command;

    fn tools() -> bool {
        [
            "sgdisk",
            "mkfs.ext4",
            "mkfs.vfat",
            "mcopy",
            "grub-mkstandalone",
            "grub-fstest",
        ]
        .iter()
        .all(|t| util::find_program(t).is_some())
    }

    fn fstest(disk: &Path, args: &[&str]) -> String {
        util::run_stdout(Command::new("grub-fstest").arg(disk).args(args)).unwrap()
    }

    #[test]
    fn esp_and_ext4_hostpart_seen_by_grub() {
        if !tools() {
            eprintln!("disk tools missing; skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let payload = d.path().join("payload");
        fs::write(&payload, b"an image\n").unwrap();
        let spec = DiskSpec {
            esp: Some(EspSpec {
                grub_cfg: grub::GrubVars::default().render(),
                grubenv: None,
            }),
            hostpart: HostpartSpec {
                files: vec![("images/hn-root.img".into(), payload.clone())],
                dirs: vec!["data".into(), "hn-state".into()],
                fs_uuid: Some("0A1B2C3D-0000-4000-8000-000000000001".into()),
                size_mib: 32,
                ..Default::default()
            },
            extra_hostparts: vec![HostpartSpec {
                partlabel: "second".into(),
                size_mib: 8,
                ..Default::default()
            }],
        };
        let disk = d.path().join("disk.img");
        let layout = build_disk(&spec, &disk).unwrap();
        assert_eq!(layout.partitions.len(), 3);
        assert_eq!(layout.hostpart().number, 2);
        assert_eq!(
            layout.hostpart().fs_uuid,
            "0a1b2c3d-0000-4000-8000-000000000001"
        );
        assert_eq!(layout.esp().unwrap().start_bytes, MIB);

        let root = fstest(&disk, &["ls", "(loop0,gpt2)/"]);
        assert!(root.contains("images/") && root.contains("data/"), "{root}");
        assert_eq!(
            fstest(&disk, &["cat", "(loop0,gpt2)/images/hn-root.img"]),
            "an image\n"
        );
        let esp = fstest(&disk, &["ls", "(loop0,gpt1)/EFI/"]);
        let esp = esp.to_lowercase(); // FAT is case-insensitive; mtools keeps 8.3 names lower case
        assert!(esp.contains("boot/") && esp.contains("hninit/"), "{esp}");
        let cfg = fstest(&disk, &["cat", "(loop0,gpt1)/EFI/hninit/grub.cfg"]);
        assert!(cfg.contains("menuentry \"hninit: current image\""));
        let sg = util::run_stdout(Command::new("sgdisk").arg("-i2").arg(&disk)).unwrap();
        assert!(sg.contains("Partition name: 'hostpart'"), "{sg}");
        assert!(
            sg.to_lowercase().contains(&layout.hostpart().part_uuid),
            "{sg}"
        );
        let sg3 = util::run_stdout(Command::new("sgdisk").arg("-i3").arg(&disk)).unwrap();
        assert!(sg3.contains("Partition name: 'second'"), "{sg3}");
        let ty = util::run_stdout(Command::new("sgdisk").arg("-i1").arg(&disk)).unwrap();
        assert!(ty.contains("EFI system partition"), "{ty}");
    }

    #[test]
    fn btrfs_hostpart_without_esp() {
        if !tools() || util::find_program("mkfs.btrfs").is_none() {
            eprintln!("disk tools missing; skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let payload = d.path().join("payload");
        fs::write(&payload, b"btrfs payload\n").unwrap();
        let spec = DiskSpec {
            esp: None,
            hostpart: HostpartSpec {
                fs: HostFs::Btrfs,
                label: "otherlabel".into(),
                files: vec![("hn-root.img".into(), payload)],
                ..Default::default()
            },
            extra_hostparts: vec![],
        };
        let disk = d.path().join("disk.img");
        let layout = build_disk(&spec, &disk).unwrap();
        assert_eq!(layout.hostpart().number, 1);
        assert_eq!(layout.hostpart().fs_type, "btrfs");
        assert_eq!(
            fstest(&disk, &["cat", "(loop0,gpt1)/hn-root.img"]),
            "btrfs payload\n"
        );
        // The disk file stays sparse.
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(&disk).unwrap();
        assert!(
            m.blocks() * 512 < m.len() / 2,
            "disk not sparse: {} of {}",
            m.blocks() * 512,
            m.len()
        );
    }
}
