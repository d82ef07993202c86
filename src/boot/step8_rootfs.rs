//! Step 8: the chosen image becomes the new root: probe its filesystem, attach it
//! to a loop device (read-only when `ro`), mount it at /newroot and check that the
//! init to exec exists inside it and is executable (resolved inside the new root,
//! so absolute symlinks such as /sbin/init -> /lib/systemd/systemd work).

use crate::cmdline::{Cmdline, RootMode};
use crate::modules::drivers::Drivers;
use crate::error::{sys, BootError, Result};
use crate::sys::loopmount;
use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
use rustix::mount::MountFlags;
use std::path::{Path, PathBuf};

pub use crate::layout::NEWROOT;

pub struct MountedRoot {
    pub image: PathBuf,
    pub loop_device: PathBuf,
    pub fstype: String,
    pub read_only: bool,
}

/// What step 8 needs of the command line to mount the root.
#[derive(Clone, Copy)]
pub struct RootOptions<'a> {
    /// `rootfstype=`, else probed.
    pub fstype: Option<&'a str>,
    /// `rootflags=`.
    pub flags: &'a crate::sys::mounts::MountOptions,
    /// `ro` / `rw` / neither.
    pub mode: RootMode,
    /// `init=`, checked inside the mounted image.
    pub init: &'a str,
}

impl<'a> RootOptions<'a> {
    pub fn from_cmdline(cmd: &'a Cmdline) -> Self {
        RootOptions {
            fstype: cmd.rootfstype.as_deref(),
            flags: &cmd.rootflags,
            mode: cmd.root_mode,
            init: &cmd.init,
        }
    }
}

pub fn mount_image(opts: &RootOptions, image: &Path, hostpart_dev: &str, drivers: &Drivers) -> Result<MountedRoot> {
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
    let ro = matches!(opts.mode, RootMode::Ro | RootMode::Default);
    let req = loopmount::Request {
        fstype: opts.fstype,
        options: opts.flags,
        flags: if ro { MountFlags::RDONLY } else { MountFlags::empty() },
        read_only_device: opts.mode == RootMode::Ro,
    };
    let mounted = loopmount::mount_image_file(image, Path::new(NEWROOT), &req, drivers).map_err(|e| match e {
        loopmount::Error::NoFilesystem { probed } => BootError::ImageBad {
            path: cmd_path(image),
            reason: format!(
                "no filesystem recognised in its first {probed} bytes ({} bytes long); set rootfstype= if it is one hninit does not probe",
                meta.len()
            ),
        },
        loopmount::Error::Read(e) => sys(format!("read {}", image.display()))(e),
        loopmount::Error::Sys(e) => e,
    })?;
    check_init(Path::new(NEWROOT), opts.init).map_err(|reason| BootError::InitNotExecutable {
        init: opts.init.to_string(),
        image: cmd_path(image),
        reason,
    })?;
    Ok(MountedRoot {
        image: image.to_path_buf(),
        loop_device: mounted.loop_device,
        fstype: mounted.fstype,
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
