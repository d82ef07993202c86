//! The demo/test root image (`hn-root.img`): a small ext4 filesystem with a
//! static busybox, the image's own `/boot/kernel` + `/boot/initramfs`, an
//! image id, and a `/sbin/init` script that reports on the console (lines
//! starting `HNROOT:`) what hninit handed over, then powers off.

use crate::util;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// What goes into a root image.
#[derive(Debug, Clone)]
pub struct RootImageSpec {
    /// `(vmlinuz, initramfs)` installed as `/boot/kernel` and `/boot/initramfs`.
    pub kernel: Option<(PathBuf, PathBuf)>,
    /// Written to `/etc/hn-image-id` (followed by a newline) and echoed at boot.
    pub image_id: String,
    /// Install the reporting `/sbin/init` script (false: an image without init).
    pub with_init: bool,
    /// Extra files: (absolute path in the image, contents, permission bits).
    /// Scripts placed at `/etc/hnroot.d/*.sh` are sourced by the init script
    /// after its report, before power-off.
    pub extra_files: Vec<(String, Vec<u8>, u32)>,
    /// Filesystem size.
    pub size_mib: u64,
}

impl Default for RootImageSpec {
    fn default() -> Self {
        RootImageSpec {
            kernel: None,
            image_id: "demo".into(),
            with_init: true,
            extra_files: Vec::new(),
            size_mib: DEFAULT_ROOT_SIZE_MIB,
        }
    }
}

/// Default root image size: kernel (~8 MiB) + initramfs + busybox with room.
pub const DEFAULT_ROOT_SIZE_MIB: u64 = 48;

/// Filesystem label of root images.
pub const ROOT_LABEL: &str = "hnroot";

/// Busybox applets linked into `/bin` of the image.
const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "echo",
    "printf",
    "test",
    "[",
    "true",
    "false",
    "mount",
    "umount",
    "sync",
    "poweroff",
    "reboot",
    "halt",
    "sleep",
    "ls",
    "mkdir",
    "rm",
    "rmdir",
    "cp",
    "mv",
    "ln",
    "touch",
    "chmod",
    "head",
    "tail",
    "grep",
    "sed",
    "awk",
    "cut",
    "tr",
    "wc",
    "stat",
    "df",
    "du",
    "dmesg",
    "uname",
    "readlink",
    "hexdump",
    "od",
    "dd",
    "find",
    "losetup",
    "pivot_root",
    "blkid",
    "setsid",
    "cttyhack",
    "sha256sum",
    "md5sum",
    "id",
    "hostname",
    "date",
    "env",
    "ps",
    "kill",
    "xargs",
    "basename",
    "dirname",
    "truncate",
    "sort",
    "uniq",
    "tee",
    "timeout",
    "xxd",
    "realpath",
    "cmp",
    "mknod",
    "sha1sum",
    "expr",
    "seq",
    "lsmod",
    "free",
    "uptime",
    "vi",
    "less",
    "mountpoint",
    "blkid",
];

/// The image's `/sbin/init`. /proc, /sys, /dev and /run are already mounted by
/// hninit; it mounts them itself only if they are missing.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
# hninit demo root: report what hninit handed over, then power off.
# Console lines start with "HNROOT:"; /dev/kmsg gets the same as "hnroot:".
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
say() {
    echo "HNROOT: $*" > /dev/console
    echo "hnroot: $*" > /dev/kmsg 2> /dev/null
}
[ -r /proc/mounts ] || mount -t proc proc /proc
[ -e /dev/console ] || mount -t devtmpfs devtmpfs /dev
id=unknown
[ -r /etc/hn-image-id ] && read -r id < /etc/hn-image-id
say "booted image=$id"
root=""
hostpart=""
while read -r dev mnt fstype opts rest; do
    case "$mnt" in
        /) root="$dev $fstype ${opts%%,*}" ;;
        /hostpart) hostpart="$dev $fstype $opts" ;;
    esac
done < /proc/mounts
say "root ${root:-missing}"
say "hostpart ${hostpart:-missing}"
say "pid=$$"
read -r cmdline < /proc/cmdline
say "cmdline $cmdline"
for f in /etc/hnroot.d/*.sh; do
    [ -f "$f" ] && . "$f"
done
case " $cmdline " in
    *" hntest.shell "*|*" hntest.shell="*)
        say "shell"
        exec setsid cttyhack sh -l ;;
esac
case " $cmdline " in
    *" hntest.park_hostpart "*)
        # What systemd >= 253's shutdown does with a mount it cannot unmount
        # (the host partition: the loop root holds its image file open).
        mkdir -p /run/shutdown/mounts/0123456789abcdef
        mount -o move /hostpart /run/shutdown/mounts/0123456789abcdef && say "hostpart parked" ;;
esac
case " $cmdline " in
    *" hntest.busy_root "*)
        # A process that outlives the handover, holding a file of the root
        # open: the old root can then only be detached lazily.
        sleep 100000 < /etc/hn-image-id &
        say "root held busy" ;;
esac
sync
mount -o remount,ro / 2> /dev/null
sync
# Like systemd-shutdown: hand over to the initramfs's shutdown program, which
# unmounts the loop root and then the host partition before powering off.
if [ -x /run/initramfs/shutdown ]; then
    say "poweroff via /run/initramfs/shutdown"
    mount --bind /run/initramfs /run/initramfs
    cd /run/initramfs && pivot_root . oldroot && exec /shutdown poweroff
fi
say "poweroff"
exec busybox poweroff -f
"#;

/// Builds the ext4 root image `out` (label `hnroot`) from `spec`.
pub fn build_root_image(spec: &RootImageSpec, out: &Path) -> Result<()> {
    let stage = util::scratch_dir("stage-root")?;
    let res = stage_root(spec, &stage)
        .and_then(|_| make_ext4(&stage, ROOT_LABEL, None, spec.size_mib, out));
    util::remove_any(&stage).ok();
    res.with_context(|| format!("building root image {}", out.display()))
}

/// Fills `stage` with the image's tree.
fn stage_root(spec: &RootImageSpec, stage: &Path) -> Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "boot", "proc", "sys", "dev", "run", "tmp",
        "hostpart", "root", "var", "mnt",
    ] {
        fs::create_dir_all(stage.join(d))
            .with_context(|| format!("creating {d} in {}", stage.display()))?;
    }
    fs::set_permissions(stage.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(stage.join("root"), fs::Permissions::from_mode(0o700))?;
    let bb = Path::new("/bin/busybox");
    if !util::is_static_elf(bb).unwrap_or(false) {
        bail!(
            "{} is missing or not static (install busybox-static)",
            bb.display()
        );
    }
    fs::copy(bb, stage.join("bin/busybox")).context("copying /bin/busybox")?;
    let have = util::run_stdout(std::process::Command::new(bb).arg("--list"))?;
    let have: Vec<&str> = have.lines().collect();
    for a in APPLETS.iter().filter(|a| have.contains(a)) {
        symlink("busybox", stage.join("bin").join(a))?;
    }
    symlink("/hostpart/data", stage.join("data0"))?;
    fs::write(
        stage.join("etc/hn-image-id"),
        format!("{}\n", spec.image_id),
    )?;
    if let Some((k, i)) = &spec.kernel {
        fs::copy(k, stage.join("boot/kernel"))
            .with_context(|| format!("copying kernel {}", k.display()))?;
        fs::copy(i, stage.join("boot/initramfs"))
            .with_context(|| format!("copying initramfs {}", i.display()))?;
    }
    if spec.with_init {
        let p = stage.join("sbin/init");
        fs::write(&p, INIT_SCRIPT)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    for (path, data, mode) in &spec.extra_files {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            bail!("bad path for an extra file in the image: {path:?}");
        }
        let p = stage.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        util::remove_any(&p)?;
        fs::write(&p, data).with_context(|| format!("writing {path} into the image"))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

pub(crate) use hninit::image::disk::make_ext4;

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn image_has_init_id_and_boot_files() {
        if util::find_program("debugfs").is_none() || !Path::new("/bin/busybox").exists() {
            eprintln!("e2fsprogs/busybox missing; skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (k, i) = (d.path().join("k"), d.path().join("i"));
        fs::write(&k, b"KERNEL").unwrap();
        fs::write(&i, b"INITRAMFS").unwrap();
        let img = d.path().join("root.img");
        let spec = RootImageSpec {
            kernel: Some((k, i)),
            image_id: "test-42".into(),
            extra_files: vec![("/etc/hnroot.d/x.sh".into(), b"say extra\n".to_vec(), 0o644)],
            size_mib: 16,
            ..Default::default()
        };
        build_root_image(&spec, &img).unwrap();
        let cat = |p: &str| {
            util::run_stdout(
                Command::new("debugfs")
                    .arg("-R")
                    .arg(format!("cat {p}"))
                    .arg(&img),
            )
            .unwrap()
        };
        assert_eq!(cat("/etc/hn-image-id"), "test-42\n");
        assert_eq!(cat("/boot/kernel"), "KERNEL");
        assert_eq!(cat("/etc/hnroot.d/x.sh"), "say extra\n");
        assert!(cat("/sbin/init").starts_with("#!/bin/sh"));
        let st = util::run_stdout(
            Command::new("debugfs")
                .arg("-R")
                .arg("stat /sbin/init")
                .arg(&img),
        )
        .unwrap();
        assert!(st.contains("Mode:  0755"), "{st}");
        assert!(st.contains("User:     0"), "{st}");
        let st = util::run_stdout(
            Command::new("debugfs")
                .arg("-R")
                .arg("stat /data0")
                .arg(&img),
        )
        .unwrap();
        assert!(st.contains("Fast link dest: \"/hostpart/data\""), "{st}");
    }

    #[test]
    fn script_is_valid_sh() {
        if let Some(sh) = util::find_program("sh") {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("init");
            fs::write(&p, INIT_SCRIPT).unwrap();
            util::run(Command::new(sh).arg("-n").arg(&p)).unwrap();
        }
    }
}
