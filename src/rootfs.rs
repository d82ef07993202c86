//! Step 8: the chosen image becomes the new root: probe its filesystem, attach it
//! to a loop device (read-only when `ro`), mount it at /newroot and check that the
//! init to exec exists inside it and is executable (resolved inside the new root,
//! so absolute symlinks such as /sbin/init -> /lib/systemd/systemd work).

use crate::cmdline::{Cmdline, RootMode};
use crate::drivers::Drivers;
use crate::error::{sys, BootError, Result};
use crate::{loopdev, mounts, probe};
use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
use rustix::mount::MountFlags;
use std::path::{Path, PathBuf};

pub const NEWROOT: &str = "/newroot";

pub struct MountedRoot {
    pub image: PathBuf,
    pub loop_device: PathBuf,
    pub fstype: String,
    pub read_only: bool,
}

pub fn mount_image(cmd: &Cmdline, image: &Path, hostpart_dev: &str, drivers: &Drivers) -> Result<MountedRoot> {
    let meta = std::fs::metadata(image).map_err(|_| BootError::ImageMissing {
        path: cmd_path(image),
        dev: hostpart_dev.to_string(),
    })?;
    if !meta.is_file() {
        return Err(BootError::ImageBad {
            path: cmd_path(image),
            reason: "is not a regular file".into(),
        });
    }
    let fstype = match &cmd.rootfstype {
        Some(t) => t.clone(),
        None => match probe::probe_path(image) {
            Ok(Some(sb)) if sb.fstype != probe::FsType::Swap => sb.fstype.mount_type().to_string(),
            Ok(_) => {
                return Err(BootError::ImageBad {
                    path: cmd_path(image),
                    reason: format!(
                        "no filesystem recognised in its first {} bytes ({} bytes long); set rootfstype= if it is one hninit does not probe",
                        probe::PROBE_LEN,
                        meta.len()
                    ),
                })
            }
            Err(e) => return Err(sys(format!("read {}", image.display()))(e)),
        },
    };
    drivers.load_for_fs(&fstype);
    let read_only_device = cmd.root_mode == RootMode::Ro;
    let dev = loopdev::attach(image, read_only_device)?;
    debug!("{} attached to {} ({})", image.display(), dev.path.display(), if read_only_device { "read-only" } else { "read-write" });
    let ro = matches!(cmd.root_mode, RootMode::Ro | RootMode::Default);
    let flags = if ro { MountFlags::RDONLY } else { MountFlags::empty() };
    mounts::mount_fs(&dev.path, Path::new(NEWROOT), &fstype, &cmd.rootflags, flags)?;
    // The mount holds the device now; autoclear detaches it at unmount.
    let loop_device = dev.path.clone();
    drop(dev);
    check_init(Path::new(NEWROOT), &cmd.init).map_err(|reason| BootError::InitNotExecutable {
        init: cmd.init.clone(),
        image: cmd_path(image),
        reason,
    })?;
    Ok(MountedRoot {
        image: image.to_path_buf(),
        loop_device,
        fstype,
        read_only: ro,
    })
}

fn cmd_path(image: &Path) -> String {
    image.display().to_string()
}

/// Resolves `init` inside `root` (symlinks stay inside it) and checks it is an
/// executable regular file.
pub fn check_init(root: &Path, init: &str) -> std::result::Result<(), String> {
    let rootfd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    let fd = openat2(
        &rootfd,
        init.trim_start_matches('/'),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => "not found in the image".to_string(),
        e => format!("cannot resolve it: {e}"),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat it: {e}"))?;
    let mode = st.st_mode;
    if mode & 0o170000 != 0o100000 {
        return Err("is not a regular file".into());
    }
    if mode & 0o111 == 0 {
        return Err(format!("is not executable (mode {:o})", mode & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_checks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("sbin")).unwrap();
        std::fs::create_dir_all(r.join("lib/systemd")).unwrap();
        std::fs::write(r.join("lib/systemd/systemd"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(r.join("lib/systemd/systemd"), std::fs::Permissions::from_mode(0o755)).unwrap();
        // An absolute symlink must resolve inside the root, not on the host.
        std::os::unix::fs::symlink("/lib/systemd/systemd", r.join("sbin/init")).unwrap();
        assert_eq!(check_init(r, "/sbin/init"), Ok(()));
        std::fs::write(r.join("sbin/noexec"), "x").unwrap();
        assert!(check_init(r, "/sbin/noexec").unwrap_err().contains("not executable"));
        assert!(check_init(r, "/sbin/missing").unwrap_err().contains("not found"));
        assert!(check_init(r, "/sbin").unwrap_err().contains("not a regular file"));
        // /bin/sh exists on the host but not in the root.
        std::os::unix::fs::symlink("/bin/sh", r.join("sbin/hostsh")).unwrap();
        assert!(check_init(r, "/sbin/hostsh").is_err());
    }
}
