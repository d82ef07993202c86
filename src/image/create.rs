//! `hnctl image create --from DIR --out FILE`: an hninit image from a root tree
//! (a mounted backup, a chroot, or `/` of a running Debian system).
//!
//! 1. Copy: GNU `tar` (`--one-file-system`, owners, modes, hard links, ACLs,
//!    xattrs) into a staging directory beside `--out`; other filesystems
//!    mounted under DIR are left out (`/proc`, `/sys`, `/dev`, `/run`, the
//!    ESP…) except `/boot` when it is a filesystem of its own; the contents
//!    of `/proc /sys /dev /run /tmp /var/tmp` (a chroot's included) and the
//!    staging directory and output themselves when they are under DIR.
//! 2. Generalize like the factory ([`super::generalize::generalize`]).
//! 3. Make it an hninit image: `/etc/fstab` without the old mounts (kept as
//!    comments), `/hostpart`, `/data0 -> /hostpart/data`, the `hostpart.mount`
//!    drop-in, `hninit-mark-good.service` and `hninit-ssh-hostkeys.service`
//!    enabled when installed (the host keys were removed), and
//!    `/boot/kernel` + `/boot/initramfs` for the newest kernel
//!    ([`super::bootpair::update`], what the kernel hooks run).
//! 4. An ext4 image sized to the content plus headroom (`mkfs.ext4 -d`).

use super::bootpair::{self, RealBootFs};
use super::cli::{spec_for, ModuleArgs};
use super::disk::make_ext4;
use super::generalize::{generalize, has_unit, link, put};
use super::initramfs::build_initramfs_data;
use super::tools as util;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Filesystem label of images made here (the factory's too).
pub const IMAGE_LABEL: &str = "hnroot";

/// Directories whose contents never go into an image.
pub const EMPTIED: &[&str] = &["proc", "sys", "dev", "run", "tmp", "var/tmp"];

const FSTAB_HEAD: &str = "\
# /etc/fstab of an hninit image (hnctl image create).
#
# No entry for /: the root is this image, loop-mounted by hninit from the host
# partition. The host partition is mounted by hninit too and moved to
# /hostpart; /data0 -> /hostpart/data. The source system's entries follow,
# commented out: its disks are not this machine's.
#
# <file system> <mount point> <type> <options> <dump> <pass>
";

const HOSTPART_MOUNT_DROPIN: &str = "\
# hninit: the host partition holds the image that is the root filesystem;
# it is unmounted by hninit's shutdown program after the root, not by systemd.
[Unit]
DefaultDependencies=no
";

/// What `image create` makes.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub from: PathBuf,
    pub out: PathBuf,
    /// Free space in the image beyond its content, MiB.
    pub headroom_mib: u64,
    pub modules: ModuleArgs,
}

#[derive(Debug, Clone)]
pub struct CreateReport {
    pub release: String,
    pub size_mib: u64,
    pub content_mib: u64,
}

/// The `tar` exclusions for copying `from`: the emptied directories' contents
/// and `extra` paths (absolute) that lie under `from`.
pub fn excludes(from: &Path, extra: &[&Path]) -> Vec<String> {
    let mut v: Vec<String> = EMPTIED.iter().map(|d| format!("--exclude=./{d}/*")).collect();
    for p in extra {
        if let Ok(rel) = p.strip_prefix(from) {
            if !rel.as_os_str().is_empty() {
                v.push(format!("--exclude=./{}", rel.display()));
            }
        }
    }
    v
}

/// The size of an image for `content_bytes` of files: the content plus 10 %
/// (ext4 metadata, the journal) plus `headroom_mib`, at least 64 MiB.
pub fn image_mib(content_bytes: u64, headroom_mib: u64) -> u64 {
    (content_bytes.div_ceil(1 << 20) * 11 / 10 + 16 + headroom_mib).max(64)
}

/// Bytes the files under `dir` occupy (allocated blocks; hard links once).
fn allocated(dir: &Path) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            total += m.blocks() * 512;
        }
    }
    Ok(total)
}

fn copy_tree(from: &Path, stage: &Path, out: &Path) -> Result<()> {
    let from = fs::canonicalize(from).with_context(|| format!("--from {}", from.display()))?;
    let stage_abs = fs::canonicalize(stage)?;
    let out_abs = fs::canonicalize(out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?
        .join(out.file_name().unwrap_or_default());
    let mut members = vec![".".to_string()];
    let root_dev = fs::metadata(&from)?.dev();
    if fs::metadata(from.join("boot")).is_ok_and(|m| m.dev() != root_dev) {
        members.push("./boot".into()); // /boot on its own partition
    }
    let mut create = Command::new("tar");
    create
        .arg("-C")
        .arg(&from)
        .args(["--one-file-system", "--numeric-owner", "--acls", "--xattrs", "--xattrs-include=*", "-cf", "-"])
        .args(excludes(&from, &[&stage_abs, &out_abs]))
        .args(&members)
        .stdout(std::process::Stdio::piped());
    let mut c = create.spawn().context("running tar (copying the tree)")?;
    let st = Command::new("tar")
        .arg("-C")
        .arg(stage)
        .args(["--numeric-owner", "--acls", "--xattrs", "--xattrs-include=*", "-xpf", "-"])
        .stdin(c.stdout.take().expect("piped"))
        .status()
        .context("running tar (extracting the copy)")?;
    let cs = c.wait()?;
    // tar exits 1 when a file changed while it was read (a live system): the
    // copy is still complete.
    if !st.success() || !(cs.success() || cs.code() == Some(1)) {
        bail!("copying {} with tar failed (create: {cs}, extract: {st})", from.display());
    }
    for d in EMPTIED {
        fs::create_dir_all(stage.join(d))?;
    }
    Ok(())
}

/// The image-specific configuration (see the module doc, step 3).
fn configure(stage: &Path) -> Result<()> {
    let old = fs::read_to_string(stage.join("etc/fstab")).unwrap_or_default();
    let mut fstab = FSTAB_HEAD.to_string();
    for l in old.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
        fstab.push_str(&format!("# (source system) {l}\n"));
    }
    put(stage, "etc/fstab", &fstab, 0o644)?;
    fs::create_dir_all(stage.join("hostpart"))?;
    link(stage, "data0", "/hostpart/data")?;
    put(stage, "etc/systemd/system/hostpart.mount.d/hninit.conf", HOSTPART_MOUNT_DROPIN, 0o644)?;
    // The package's units: generalize removed the ssh host keys, so without
    // hninit-ssh-hostkeys.service (ordered before ssh.service) sshd would not
    // start on the image's first boot.
    for unit in ["hninit-mark-good.service", "hninit-ssh-hostkeys.service"] {
        if has_unit(stage, unit) {
            link(
                stage,
                &format!("etc/systemd/system/multi-user.target.wants/{unit}"),
                &format!("/lib/systemd/system/{unit}"),
            )?;
        }
    }
    // initramfs-tools' initrds are never used: hninit's is /boot/initramfs.
    if let Ok(rd) = fs::read_dir(stage.join("boot")) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with("initrd.img-") {
                fs::remove_file(e.path())?;
            }
        }
    }
    for l in ["initrd.img", "initrd.img.old"] {
        let p = stage.join(l);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Makes the image (see the module doc).
pub fn create(spec: &CreateSpec) -> Result<CreateReport> {
    if !spec.from.join("etc").is_dir() {
        bail!("--from {}: not a root filesystem (no etc/)", spec.from.display());
    }
    let name = spec.out.file_name().context("--out needs a file name")?.to_string_lossy().into_owned();
    let stage = spec.out.with_file_name(format!(".{name}.stage-{}", util::unique_suffix()));
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let res = (|| {
        copy_tree(&spec.from, &stage, &spec.out)?;
        generalize(&stage)?;
        configure(&stage)?;
        let r = bootpair::update(&RealBootFs(stage.clone()), None, &|release| {
            Ok(build_initramfs_data(&spec_for(&stage, release, &spec.modules)?)?.0)
        })
        .context("setting /boot/kernel and /boot/initramfs")?;
        let content = allocated(&stage)?;
        let size_mib = image_mib(content, spec.headroom_mib);
        let tmp = util::tmp_sibling(&spec.out);
        make_ext4(&stage, IMAGE_LABEL, None, size_mib, &tmp)?;
        fs::rename(&tmp, &spec.out)?;
        Ok(CreateReport { release: r.release, size_mib, content_mib: content >> 20 })
    })();
    util::remove_any(&stage).ok();
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_and_size() {
        let e = excludes(Path::new("/"), &[Path::new("/var/tmp/x.stage"), Path::new("/srv/out.img"), Path::new("/")]);
        assert!(e.contains(&"--exclude=./proc/*".to_string()) && e.contains(&"--exclude=./var/tmp/*".to_string()));
        assert!(e.contains(&"--exclude=./srv/out.img".to_string()) && e.contains(&"--exclude=./var/tmp/x.stage".to_string()));
        assert_eq!(excludes(Path::new("/mnt/backup"), &[Path::new("/srv/out.img")]).len(), EMPTIED.len());
        assert_eq!(image_mib(1000 << 20, 256), 1100 + 16 + 256);
        assert_eq!(image_mib(0, 0), 64);
    }
}
