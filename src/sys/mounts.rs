//! Mounting: the API filesystems of step 1, mount option strings
//! (`noatime,compress=zstd` → flags + data), and one `mount_fs` used for the
//! host partition and the image.

use crate::error::{sys, BootError, Result};
use rustix::mount::{mount, MountFlags};
use std::path::Path;

/// A mount option string, parsed once: as given (for messages), the generic
/// flags, and what the filesystem gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// The options as given (`noatime,compress=zstd`).
    pub text: String,
    pub flags: MountFlags,
    /// Options the kernel passes to the filesystem (comma-separated).
    pub data: String,
}

/// Splits an fstab-style option string into generic mount flags and filesystem data.
pub fn parse_options(s: &str) -> MountOptions {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for opt in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match opt {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" => flags -= MountFlags::RDONLY,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "defaults" | "suid" | "dev" | "exec" | "async" | "atime" | "auto" | "noauto" | "nofail" => {}
            other => data.push(other),
        }
    }
    MountOptions {
        text: s.to_string(),
        flags,
        data: data.join(","),
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { text: String::new(), flags: MountFlags::empty(), data: String::new() }
    }
}

impl MountOptions {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

impl std::fmt::Display for MountOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Compares the options as given.
impl PartialEq<&str> for MountOptions {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

pub fn ensure_dir(path: &Path) -> Result<()> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(sys(format!("mkdir {}", path.display()))(e)),
    }
}

/// Mounts /proc, /sys, /dev (devtmpfs) and /run (tmpfs). Already-mounted is fine.
pub fn mount_api_filesystems() -> Result<()> {
    let nse = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let table: [(&str, &str, MountFlags, &str); 4] = [
        ("/proc", "proc", nse, ""),
        ("/sys", "sysfs", nse, ""),
        ("/dev", "devtmpfs", MountFlags::NOSUID, "mode=0755"),
        ("/run", "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, "mode=0755"),
    ];
    for (target, fstype, flags, data) in table {
        ensure_dir(Path::new(target))?;
        let data = std::ffi::CString::new(data).unwrap_or_default();
        match mount(fstype, target, fstype, flags, Some(data.as_c_str())) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => return Err(sys(format!("mount -t {fstype} {fstype} {target}"))(e)),
        }
    }
    Ok(())
}

/// Mounts `source` on `target` with the given type and option string plus `extra` flags.
pub fn mount_fs(source: &Path, target: &Path, fstype: &str, o: &MountOptions, extra: MountFlags) -> Result<()> {
    ensure_dir(target)?;
    let data = std::ffi::CString::new(o.data.as_str()).unwrap_or_default();
    mount(source, target, fstype, o.flags | extra, Some(data.as_c_str())).map_err(|e| {
        if e == rustix::io::Errno::NODEV && !kernel_knows(&std::fs::read_to_string("/proc/filesystems").unwrap_or_default(), fstype) {
            return BootError::FsUnsupported { dev: source.display().to_string(), fstype: fstype.to_string() };
        }
        sys(format!(
            "mount -t {fstype} -o {} {} {}",
            if o.is_empty() { "defaults" } else { o.text.as_str() },
            source.display(),
            target.display()
        ))(e)
    })
}

/// Whether `/proc/filesystems` text lists `fstype` (`nodev\tsysfs`, `\text4`).
fn kernel_knows(proc_filesystems: &str, fstype: &str) -> bool {
    proc_filesystems.lines().any(|l| l.rsplit('\t').next() == Some(fstype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_filesystems() {
        let t = "nodev\tsysfs\nnodev\ttmpfs\n\text3\n\text4\n\tvfat\n";
        assert!(kernel_knows(t, "ext4"));
        assert!(kernel_knows(t, "tmpfs"));
        assert!(!kernel_knows(t, "xfs"));
        assert!(!kernel_knows(t, "ext"));
    }

    #[test]
    fn splits_flags_from_data() {
        let o = parse_options("noatime,compress=zstd,ro,,subvol=@");
        assert_eq!(o.flags, MountFlags::NOATIME | MountFlags::RDONLY);
        assert_eq!(o.data, "compress=zstd,subvol=@");
        let o = parse_options("ro,rw");
        assert_eq!(o.flags, MountFlags::empty());
        assert_eq!(parse_options("").data, "");
    }
}
