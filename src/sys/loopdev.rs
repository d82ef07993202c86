//! Loop devices: a free one from /dev/loop-control, configured in one
//! `LOOP_CONFIGURE` ioctl (backing fd, read-only flag, autoclear, direct I/O) so
//! no other process can race between set-fd and set-status. Direct I/O reads the
//! image straight into the loop device's cache instead of through the host
//! partition's too (the kernel falls back to buffered I/O where it cannot). The returned handle keeps the
//! device open: with autoclear, closing it before the mount would detach it.

use crate::error::{sys, Result};
use linux_raw_sys::loop_device as ld;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{open, Mode, OFlags};
use rustix::ioctl::{ioctl, Ioctl, IoctlOutput, Opcode};
use std::ffi::c_void;
use std::path::{Path, PathBuf};

pub struct LoopDevice {
    pub path: PathBuf,
    /// Held until the filesystem on it is mounted.
    pub fd: OwnedFd,
}

struct GetFree;

unsafe impl Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        ld::LOOP_CTL_GET_FREE as Opcode
    }
    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }
    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<u32> {
        Ok(out as u32)
    }
}

struct Configure(ld::loop_config);

unsafe impl Ioctl for Configure {
    type Output = ();
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        ld::LOOP_CONFIGURE as Opcode
    }
    fn as_ptr(&mut self) -> *mut c_void {
        (&mut self.0 as *mut ld::loop_config).cast()
    }
    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Attaches `backing` to a free loop device. `read_only` makes both the backing
/// file descriptor and the device read-only.
///
/// Direct I/O is asked for unless the image lives on btrfs: btrfs checksums
/// O_DIRECT writes from the caller's pages, and a page the upper filesystem
/// changes while the write is in flight leaves a checksum mismatch (EIO on a
/// later read) in the image — for an image file that is the root of a host, not
/// a risk worth 50 ms.
pub fn attach(backing: &Path, read_only: bool) -> Result<LoopDevice> {
    let access = if read_only { OFlags::RDONLY } else { OFlags::RDWR };
    let file = open(backing, access | OFlags::CLOEXEC, Mode::empty())
        .map_err(sys(format!("open {}", backing.display())))?;
    let direct_io = direct_io_safe(&file);
    let ctl = open("/dev/loop-control", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(sys("open /dev/loop-control (is the loop module loaded?)"))?;
    // Another process may take the device between GET_FREE and CONFIGURE: retry.
    let mut last = None;
    for _ in 0..8 {
        let n = unsafe { ioctl(&ctl, GetFree) }.map_err(sys("LOOP_CTL_GET_FREE"))?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = open(&path, access | OFlags::CLOEXEC, Mode::empty())
            .map_err(sys(format!("open {}", path.display())))?;
        let mut cfg: ld::loop_config = unsafe { std::mem::zeroed() };
        cfg.fd = file.as_fd().as_raw_fd_u32();
        cfg.info.lo_flags = ld::LO_FLAGS_AUTOCLEAR as u32
            | if direct_io { ld::LO_FLAGS_DIRECT_IO as u32 } else { 0 }
            | if read_only { ld::LO_FLAGS_READ_ONLY as u32 } else { 0 };
        let name = backing.as_os_str().as_encoded_bytes();
        let len = name.len().min(cfg.info.lo_file_name.len() - 1);
        cfg.info.lo_file_name[..len].copy_from_slice(&name[..len]);
        match unsafe { ioctl(&dev, Configure(cfg)) } {
            Ok(()) => return Ok(LoopDevice { path, fd: dev }),
            Err(rustix::io::Errno::BUSY) => last = Some(rustix::io::Errno::BUSY),
            Err(e) => {
                return Err(sys(format!("LOOP_CONFIGURE {} on {}", backing.display(), path.display()))(e))
            }
        }
    }
    Err(sys(format!("LOOP_CONFIGURE {}: every free loop device was taken", backing.display()))(
        last.unwrap_or(rustix::io::Errno::BUSY),
    ))
}

struct ClearFd;

unsafe impl Ioctl for ClearFd {
    type Output = ();
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        ld::LOOP_CLR_FD as Opcode
    }
    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }
    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Detaches a loop device (if it is still in use, the kernel detaches it on last close).
pub fn detach(dev: &Path) -> Result<()> {
    let fd = open(dev, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(sys(format!("open {}", dev.display())))?;
    unsafe { ioctl(&fd, ClearFd) }.map_err(sys(format!("LOOP_CLR_FD {}", dev.display())))
}

trait RawFdU32 {
    fn as_raw_fd_u32(&self) -> u32;
}

impl RawFdU32 for rustix::fd::BorrowedFd<'_> {
    fn as_raw_fd_u32(&self) -> u32 {
        use rustix::fd::AsRawFd;
        self.as_raw_fd() as u32
    }
}

/// False when `file` is on btrfs (see [`attach`]) or its filesystem is unknown.
fn direct_io_safe(file: &impl AsFd) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    match rustix::fs::fstatfs(file) {
        // f_type is i64 on glibc but not on every libc rustix builds for.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => st.f_type as i64 != BTRFS_SUPER_MAGIC,
        Err(_) => false,
    }
}
