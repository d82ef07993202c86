//! Step 10, the switch to the new root: move the host partition and the API
//! filesystems into it, delete the initramfs contents (never crossing into
//! another filesystem, and only if / really is an initramfs), move the new root
//! over /, chroot and exec its init.

use crate::error::{sys, BootError, Result};
use crate::layout::{HOSTPART, RUN_HOSTPART};
use crate::sys::mounts;
use rustix::mount::mount_move;
use std::convert::Infallible;
use std::os::unix::fs::MetadataExt;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const RAMFS_MAGIC: i64 = 0x858458f6;
const TMPFS_MAGIC: i64 = 0x01021994;

/// Moves `/hostpart` to `<newroot>/hostpart`, or to `<newroot>/run/hninit/hostpart`
/// when the image has no such directory and cannot get one (read-only image).
/// Returns where it is, seen from the new root.
pub fn move_hostpart(newroot: &Path) -> Result<PathBuf> {
    let wanted = newroot.join("hostpart");
    let target = if wanted.is_dir() || std::fs::create_dir(&wanted).is_ok() {
        PathBuf::from(HOSTPART)
    } else {
        warn!("the image has no {HOSTPART} directory and is read-only; the host partition is at {RUN_HOSTPART}");
        let fallback = newroot.join(RUN_HOSTPART.trim_start_matches('/'));
        mounts::ensure_dir(&fallback)?;
        PathBuf::from(RUN_HOSTPART)
    };
    let dest = newroot.join(target.strip_prefix("/").unwrap_or(&target));
    mount_move(HOSTPART, &dest).map_err(sys(format!("mount --move {HOSTPART} {}", dest.display())))?;
    Ok(target)
}

/// Moves /dev, /proc, /sys and /run under the new root.
pub fn move_api_filesystems(newroot: &Path) -> Result<()> {
    for dir in ["/dev", "/proc", "/sys", "/run"] {
        let dest = newroot.join(&dir[1..]);
        if !dest.is_dir() && std::fs::create_dir(&dest).is_err() {
            // A root without the directory: leave the mount behind and detach it.
            warn!("the image has no {dir} directory; {dir} is not carried over");
            crate::log::ignored(
                rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH),
                &format!("umount -l {dir}"),
                "the switch leaves it unreachable anyway",
            );
            continue;
        }
        mount_move(dir, &dest).map_err(sys(format!("mount --move {dir} {}", dest.display())))?;
    }
    Ok(())
}

/// Deletes everything on the initramfs filesystem under `/` except `keep`.
pub fn delete_initramfs(keep: &Path) -> Result<()> {
    let st = rustix::fs::statfs("/").map_err(sys("statfs /"))?;
    let magic = st.f_type as i64;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        warn!("/ is not an initramfs (filesystem magic {magic:#x}); not deleting anything");
        return Ok(());
    }
    let root_dev = std::fs::symlink_metadata("/").map_err(sys("stat /"))?.dev();
    let mut freed = 0u64;
    remove_tree(Path::new("/"), root_dev, keep, &mut freed);
    debug!("freed {} KiB of initramfs", freed / 1024);
    Ok(())
}

fn remove_tree(dir: &Path, root_dev: u64, keep: &Path, freed: &mut u64) {
    // Deleting the initramfs only frees memory: whatever cannot be read or
    // removed stays, unreachable after the switch (as in systemd's switch-root).
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let path = entry.path();
        if path == keep {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.dev() != root_dev {
            continue; // a mount point: another filesystem
        }
        if meta.is_dir() {
            remove_tree(&path, root_dev, keep, freed);
            crate::log::ignored(std::fs::remove_dir(&path), &format!("rmdir {}", path.display()), "only frees memory");
        } else {
            *freed += meta.len();
            crate::log::ignored(std::fs::remove_file(&path), &format!("rm {}", path.display()), "only frees memory");
        }
    }
}

/// Makes `newroot` the root: MS_MOVE it onto /, chroot, chdir.
pub fn enter_root(newroot: &Path) -> Result<()> {
    std::env::set_current_dir(newroot).map_err(sys(format!("chdir {}", newroot.display())))?;
    rustix::mount::mount_move(".", "/").map_err(sys(format!("mount --move {} /", newroot.display())))?;
    rustix::process::chroot(".").map_err(sys("chroot ."))?;
    std::env::set_current_dir("/").map_err(sys("chdir /"))?;
    Ok(())
}

/// Replaces this process with the new root's init, passing on our arguments.
pub fn exec_init(init: &str) -> Result<Infallible> {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let err = Argv::new(init, &args).map_or_else(|e| e, |argv| argv.exec());
    Err(BootError::Sys {
        what: format!("exec {init}"),
        source: err,
    })
}

/// A program and its arguments ready for `execv` (built before a `fork`, so
/// the child does not allocate). `std::process::Command` would bring its
/// spawning machinery, ~30 KB, into /init for the two places that start a program.
pub struct Argv {
    _strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl Argv {
    /// `[path, args…]`; an error if one of them contains a NUL byte.
    pub fn new(path: &str, args: &[OsString]) -> std::io::Result<Argv> {
        let mut strings = Vec::with_capacity(args.len() + 1);
        strings.push(CString::new(path)?);
        for a in args {
            strings.push(CString::new(a.as_bytes())?);
        }
        let mut pointers: Vec<*const libc::c_char> = strings.iter().map(|c| c.as_ptr()).collect();
        pointers.push(std::ptr::null());
        Ok(Argv { _strings: strings, pointers })
    }

    /// `execv` with our environment; returns only on failure. Does not allocate.
    /// Like `Command`, it first gives the program the signal state it expects:
    /// an empty signal mask and SIGPIPE at its default (Rust ignores SIGPIPE,
    /// and an ignored signal would be inherited by every process of the system).
    pub fn exec(&self) -> std::io::Error {
        // SAFETY: sigemptyset fills the set it is given; sigprocmask and signal
        // change this process's signal state only. Every pointer passed to execv
        // is a NUL-terminated string owned by `self` (heap buffers, which do not
        // move with the Vec), and the array ends with a null pointer.
        unsafe {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::execv(self.pointers[0], self.pointers.as_ptr());
        }
        std::io::Error::last_os_error()
    }
}
