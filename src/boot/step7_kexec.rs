//! Step 7, kernel handover after a rotation: when the image now current carries
//! another kernel than the one running, load it with `kexec_file_load` (its own
//! /boot/initramfs, the same command line marked `hn.kexec=1` so the next boot
//! does not rotate or count again) and reboot into it.

use crate::sys::loopmount;
use crate::sys::saferead::{Follow, SafeDir};
use rustix::mount::MountFlags;
use std::ffi::CString;
use std::path::Path;

/// The version string a bzImage carries in its setup header, if any.
pub fn bzimage_version(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*head.get(0x20E)?, *head.get(0x20F)?]) as usize;
    if ptr == 0 {
        return None;
    }
    let start = ptr + 0x200;
    let bytes = head.get(start..head.len().min(start + 512))?;
    let end = bytes.iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Whether a bzImage version string names the running kernel
/// (`osrelease` = `uname -r`, `version` = `uname -v`).
pub fn is_running_kernel(bz_version: &str, osrelease: &str, version: &str) -> bool {
    bz_version.split_whitespace().next() == Some(osrelease) && bz_version.contains(version.trim())
}

/// The command line for the kexec'd kernel: ours without the one-shot keys, plus `hn.kexec=1`.
pub fn next_cmdline(current: &str) -> String {
    let mut out: Vec<String> = crate::cmdline::split(current)
        .into_iter()
        .filter(|p| {
            let key = p.split('=').next().unwrap_or("");
            !matches!(key, "hn.revert" | "hn.tries_by" | "hn.kexec" | "BOOT_IMAGE")
        })
        .map(|p| if p.contains(char::is_whitespace) { match p.split_once('=') { Some((k, v)) if !k.contains(char::is_whitespace) => format!("{k}=\"{v}\""), _ => format!("\"{p}\"") } } else { p })
        .collect();
    out.push("hn.kexec=1".into());
    out.join(" ")
}

/// The image's kernel and initramfs, relative to its root.
pub const KERNEL: &str = "boot/kernel";
pub const INITRAMFS: &str = "boot/initramfs";

/// Reads the version of the image's kernel (its first 64 KiB), resolved inside
/// the image `root`.
pub fn kernel_version_of(root: &SafeDir) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut head = Vec::new();
    root.open_file(KERNEL, Follow::InRoot)?.take(65536).read_to_end(&mut head)?;
    Ok(bzimage_version(&head))
}

/// Loads the image's kernel + initramfs (regular files resolved inside the
/// image `root`) with `cmdline` for the next `reboot(KEXEC)`.
pub fn load(root: &SafeDir, cmdline: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let k = root.open_file(KERNEL, Follow::InRoot)?;
    let i = root.open_file(INITRAMFS, Follow::InRoot)?;
    let c = CString::new(cmdline).map_err(|_| std::io::Error::other("NUL in command line"))?;
    // rustix has no kexec_file_load wrapper: the one raw syscall of hninit.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            k.as_raw_fd(),
            i.as_raw_fd(),
            c.as_bytes_with_nul().len(),
            c.as_ptr(),
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Executes the loaded kernel. Only returns on failure.
pub fn exec() -> std::io::Error {
    rustix::fs::sync();
    match rustix::system::reboot(rustix::system::RebootCommand::Kexec) {
        Ok(()) => std::io::Error::other("reboot(KEXEC) returned"),
        Err(e) => e.into(),
    }
}

/// Step 7 after a rotation: mounts the now-current image read-only, and when its
/// /boot/kernel is not the running kernel, kexecs it (or reboots) per
/// `hn.after_rotate`. Returns when the boot should simply go on.
pub fn handover(cmd: &crate::cmdline::Cmdline, image: &Path, drivers: &crate::modules::drivers::Drivers) {
    use crate::cmdline::AfterRotate;
    if cmd.after_rotate == AfterRotate::Continue {
        info!("rotated; hn.after_rotate=continue: booting the new image on the running kernel");
        return;
    }
    let mnt = Path::new(crate::layout::NEXT_MOUNT);
    let req = loopmount::Request { fstype: None, options: &Default::default(), flags: MountFlags::RDONLY, read_only_device: true };
    if let Err(e) = loopmount::mount_image_file(image, mnt, &req, drivers) {
        warn!("cannot mount the new image to look at its kernel ({e}); continuing on the running kernel");
        return;
    }
    let kernel = mnt.join(KERNEL);
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let version = rustix::system::uname().version().to_string_lossy().into_owned();
    let umount = || {
        crate::log::ignored(
            rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::empty()),
            &format!("umount {}", mnt.display()),
            "a read-only mount left behind costs a loop device until the handoff",
        );
    };
    // Before kexec or reboot: the host partition goes clean; a failure leaves it
    // to the journal's replay, as a power cut would.
    let umount_hostpart = || {
        crate::log::ignored(
            rustix::mount::unmount(crate::layout::HOSTPART, rustix::mount::UnmountFlags::empty()),
            "umount /hostpart",
            "the next boot replays its journal, as after a power cut",
        );
    };
    let root = match SafeDir::open(mnt) {
        Ok(r) => r,
        Err(e) => {
            warn!("cannot open the new image's root {} ({e}); continuing on the running kernel", mnt.display());
            umount();
            return;
        }
    };
    let theirs = match kernel_version_of(&root) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            // Step 6 checked it; should it have changed since, it is not loaded.
            warn!("the new image's kernel is unusable ({e}); continuing on the running kernel");
            drop(root);
            umount();
            return;
        }
    };
    match &theirs {
        Some(v) if is_running_kernel(v, &release, &version) => {
            info!("the new image's kernel is the running one ({release}): no kexec needed");
            drop(root);
            umount();
            return;
        }
        Some(v) => info!("the new image's kernel is {v}; running {release}"),
        None => info!("the new image's kernel version is unknown; running {release}"),
    }
    if cmd.after_rotate == AfterRotate::Kexec {
        let line = next_cmdline(std::fs::read_to_string("/proc/cmdline").unwrap_or_default().trim());
        let loaded = load(&root, &line);
        // The image's root fd keeps its mount busy: closed before the unmount.
        drop(root);
        match loaded {
            Ok(()) => {
                umount();
                umount_hostpart();
                info!("kexec into the new image's kernel with: {line}");
                let e = exec();
                warn!("kexec failed ({e}); rebooting instead");
            }
            Err(e) => warn!("kexec_file_load of {} failed ({e}); rebooting instead", kernel.display()),
        }
    } else {
        drop(root);
        info!("rebooting into the new image's kernel (hn.after_rotate=reboot)");
    }
    umount();
    umount_hostpart();
    crate::boot::failure::reboot(std::time::Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_setup_header_version() {
        let mut h = vec![0u8; 0x4000];
        h[0x202..0x206].copy_from_slice(b"HdrS");
        h[0x20E..0x210].copy_from_slice(&0x1000u16.to_le_bytes());
        let v = b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.153-1 (2025-09-20)\0";
        h[0x1200..0x1200 + v.len()].copy_from_slice(v);
        let s = bzimage_version(&h).unwrap();
        assert!(is_running_kernel(&s, "6.1.0-56-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.153-1 (2025-09-20)\n"));
        assert!(!is_running_kernel(&s, "6.1.0-56-cloud-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.153-1 (2025-09-20)"));
        assert!(!is_running_kernel(&s, "6.1.0-56-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.160-1 (2026-01-01)"));
        assert_eq!(bzimage_version(&h[..0x300]), None);
        assert_eq!(bzimage_version(&[0u8; 10]), None);
    }

    #[test]
    fn next_cmdline_keeps_hn_kexec_whatever_the_quoting() {
        // Found by the cmdline fuzz target: an unbalanced quote made a parameter
        // with a space before its '='; quoting only the value split it at "--".
        for line in ["a b\" -- c=1", "x=\"1 2\" \"k l=m\" rw", "\"-- x=1\"", "a\tb=c\" d"] {
            let next = next_cmdline(line);
            let parts = crate::cmdline::split(&next);
            assert_eq!(parts.last().map(String::as_str), Some("hn.kexec=1"), "{line:?} -> {next:?}");
            let want: Vec<String> = crate::cmdline::split(line);
            assert_eq!(&parts[..parts.len() - 1], &want[..], "{line:?} -> {next:?}");
        }
    }

    #[test]
    fn next_cmdline_drops_one_shot_keys() {
        assert_eq!(
            next_cmdline("BOOT_IMAGE=(loop)/boot/kernel real_root=/hn-root.img hn.revert=1 hn.tries_by=grub \"loopdev_hostpart=PARTLABEL=a b\" rw"),
            "real_root=/hn-root.img loopdev_hostpart=\"PARTLABEL=a b\" rw hn.kexec=1"
        );
    }
}
