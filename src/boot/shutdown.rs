//! Clean poweroff of a loop root: at handoff hninit leaves a copy of itself at
//! `/run/initramfs/shutdown`; systemd-shutdown (or any init doing the same)
//! pivots into /run/initramfs and runs it as `shutdown reboot|poweroff|halt|kexec`.
//! It then moves the host partition out of the old root (found by the loop root's
//! backing file, wherever systemd left it: `shutdown_plan` has the decisions),
//! unmounts everything under /oldroot (the loop root last; a lazy detach only
//! when nothing else moves), detaches the loop devices backed by files on the
//! host partition, unmounts the host partition (remounted read-only, else frozen,
//! and synced if it stays busy) and only then reboots, so no journal replay is
//! needed on the next boot.

use rustix::mount::{mount_change, mount_move, unmount, MountPropagationFlags, UnmountFlags};
use super::shutdown_plan::{HostpartEnd, RootEnd};
use rustix::system::RebootCommand;
use std::path::Path;

pub const DIR: &str = crate::layout::SHUTDOWN_DIR;

/// At handoff: install ourselves as /run/initramfs/shutdown.
pub fn prepare() -> std::io::Result<()> {
    let dir = Path::new(DIR);
    std::fs::create_dir_all(dir.join("oldroot"))?;
    let dest = dir.join("shutdown");
    std::fs::copy("/init", &dest)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One line of /proc/self/mountinfo, the fields used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
}

/// Parses /proc/self/mountinfo (octal escapes in paths decoded).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let unescape = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
            if let (b'\\', Some(d)) = (b[i], octal) {
                let v = (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32;
                out.push(v.min(255) as u8);
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mountpoint = unescape(pre.split(' ').nth(4)?);
            let mut p = post.split(' ');
            let fstype = p.next()?.to_string();
            let source = unescape(p.next()?);
            Some(MountEntry { mountpoint, fstype, source })
        })
        .collect()
}

/// The order to unmount the mounts under `root`: deepest first, except the ones in `keep`.
pub fn unmount_order(mounts: &[MountEntry], root: &str, keep: &[String]) -> Vec<String> {
    let prefix = format!("{}/", root.trim_end_matches('/'));
    let mut v: Vec<String> = mounts
        .iter()
        .map(|m| m.mountpoint.clone())
        .filter(|p| (p == root || p.starts_with(&prefix)) && !keep.contains(p))
        .collect();
    // Deepest first, otherwise in mount order.
    crate::util::sort_by(&mut v, &|a, b| b.matches('/').count().cmp(&a.matches('/').count()));
    v.dedup();
    v
}

fn mounts() -> Vec<MountEntry> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Runs as PID 1 in /run/initramfs after the pivot. Never returns.
pub fn main(args: &[String]) -> ! {
    // (void) Before /dev exists nothing can be logged, and these usually fail
    // only because systemd left them mounted (EBUSY/EEXIST). A /proc that
    // cannot be had leaves the plan empty and the outcome line says so.
    let _ = std::fs::create_dir_all("/proc");
    let _ = rustix::mount::mount("proc", "/proc", "proc", rustix::mount::MountFlags::empty(), None);
    let _ = std::fs::create_dir_all("/dev");
    let _ = rustix::mount::mount("devtmpfs", "/dev", "devtmpfs", rustix::mount::MountFlags::empty(), None);
    if !Path::new("/sys/block").is_dir() {
        let _ = std::fs::create_dir_all("/sys");
        let _ = rustix::mount::mount("sysfs", "/sys", "sysfs", rustix::mount::MountFlags::empty(), None);
    }
    crate::log::open_kmsg();
    let verb = args.get(1).map(String::as_str).unwrap_or("reboot");
    // systemd marks mounts shared; a move out of a shared parent fails.
    crate::log::ignored(
        mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC),
        "shutdown: making / private",
        "only the moves below can fail for it, and each says so",
    );

    let root = "/oldroot";
    // What holds the loop root's backing file (the host partition), wherever
    // the init that handed over left it: take it out of the way first.
    let plan = super::shutdown_plan::mounts_to_move_out(&mounts(), root, &loop_backing_files());
    let mut kept = Vec::new();
    for (i, out) in plan.iter().enumerate() {
        let from = &out.mountpoint;
        let to = match (out.hostpart, kept.iter().any(|(_, h)| *h)) {
            (true, false) => "/hostpart".to_string(),
            (true, true) => format!("/hostpart.{i}"),
            (false, _) => format!("/moved.{i}"),
        };
        crate::log::ignored(std::fs::create_dir_all(&to), &format!("shutdown: mkdir {to}"), "the move below fails and says so");
        match mount_move(from.as_str(), to.as_str()) {
            Ok(()) => {
                info!("shutdown: {from} moved out of the old root to {to}");
                kept.push((to, out.hostpart));
            }
            Err(e) => warn!("shutdown: cannot move {from} out of the old root: {e}"),
        }
    }
    let root_end = unmount_old_root(root);
    detach_loops();
    let mut host_end = HostpartEnd::NotFound;
    for (mp, hostpart) in &kept {
        let end = release_moved(mp, *hostpart);
        if *hostpart && (host_end == HostpartEnd::NotFound || end != HostpartEnd::Unmounted) {
            host_end = end;
        }
    }
    let (clean, line) = super::shutdown_plan::outcome(root_end, host_end);
    if clean {
        info!("shutdown: {line}");
    } else {
        warn!("shutdown: {line}");
    }
    rustix::fs::sync();
    let cmd = match verb {
        "poweroff" => RebootCommand::PowerOff,
        "halt" => RebootCommand::Halt,
        "kexec" => RebootCommand::Kexec,
        _ => RebootCommand::Restart,
    };
    info!("shutdown: {verb}");
    // reboot(2) returns only when it failed: say so, then try a plain restart.
    if let Err(e) = rustix::system::reboot(cmd) {
        crit!("shutdown: {verb} failed: {e}; restarting instead");
    }
    if let Err(e) = rustix::system::reboot(RebootCommand::Restart) {
        crit!("shutdown: restart failed: {e}; halting here");
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Unmounts everything at and below `root`, deepest first, pass after pass
/// while passes make progress; returns what is still busy (empty: all gone).
fn unmount_all(root: &str) -> Vec<(String, rustix::io::Errno)> {
    loop {
        let order = unmount_order(&mounts(), root, &[]);
        let mut busy = Vec::new();
        for m in &order {
            if let Err(e) = unmount(m.as_str(), UnmountFlags::empty()) {
                busy.push((m.clone(), e));
            }
        }
        if busy.is_empty() || busy.len() == order.len() {
            return busy;
        }
    }
}

/// The old root: unmounted, or, as the last resort, what stays busy detached lazily.
fn unmount_old_root(root: &str) -> RootEnd {
    let busy = unmount_all(root);
    if busy.is_empty() {
        return RootEnd::Unmounted;
    }
    for (m, e) in &busy {
        warn!("shutdown: {m} busy ({e}); detaching it lazily");
        let _ = unmount(m.as_str(), UnmountFlags::DETACH);
    }
    RootEnd::DetachedLazily
}

/// Unmounts a mount moved out of the old root (waiting a little for the loop
/// devices to let go of their files). When the host partition stays busy:
/// remounted read-only, else frozen, after a sync, so that it is clean on disk
/// anyway; any other mount that stays busy is detached lazily.
fn release_moved(hp: &str, hostpart: bool) -> HostpartEnd {
    for _ in 0..50 {
        if unmount_all(hp).is_empty() {
            return HostpartEnd::Unmounted;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        detach_loops();
    }
    if !hostpart {
        warn!("shutdown: {hp} busy; detaching it lazily");
        let _ = unmount(hp, UnmountFlags::DETACH);
        return HostpartEnd::SyncedOnly;
    }
    rustix::fs::sync();
    let Err(e) = rustix::mount::mount_remount(hp, rustix::mount::MountFlags::RDONLY, "") else {
        return HostpartEnd::RemountedReadOnly;
    };
    warn!("shutdown: {hp}: read-only remount refused ({e}); freezing it");
    match freeze(hp) {
        Ok(()) => HostpartEnd::Frozen,
        Err(e) => {
            warn!("shutdown: {hp}: freeze refused ({e})");
            HostpartEnd::SyncedOnly
        }
    }
}

/// `_IOWR('X', 119, int)`.
const FIFREEZE: u32 = 0xC004_5877;

/// FIFREEZE: the filesystem writes everything out and blocks new writes; ext4
/// flushes its journal and clears needs_recovery on disk.
fn freeze(dir: &str) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    // SAFETY: FIFREEZE takes no argument (the pointer is ignored); the fd is valid.
    let r = unsafe { libc::ioctl(rustix::fd::AsRawFd::as_raw_fd(&fd), FIFREEZE as _, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The backing files of the loop devices, as paths seen from our root.
fn loop_backing_files() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .map(|s| s.trim_end_matches('\n').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Clears every loop device (autoclear makes a busy one go when released).
fn detach_loops() {
    let Ok(rd) = std::fs::read_dir("/sys/block") else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") || !e.path().join("loop/backing_file").exists() {
            continue;
        }
        let _ = crate::sys::loopdev::detach(Path::new("/dev").join(&name).as_path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:20 / /oldroot rw,relatime shared:1 - ext4 /dev/loop0 rw
23 22 0:5 / /oldroot/dev rw,nosuid shared:2 - devtmpfs devtmpfs rw
24 22 253:1 / /oldroot/hostpart rw,relatime shared:3 - ext4 /dev/vda1 rw
25 23 0:21 / /oldroot/dev/pts rw - devpts devpts rw
26 1 0:22 / /oldroot/mnt/with\\040space rw - tmpfs tmpfs rw
27 1 0:23 / /run/initramfs rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_mountinfo_with_escapes() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[0], MountEntry { mountpoint: "/oldroot".into(), fstype: "ext4".into(), source: "/dev/loop0".into() });
        assert_eq!(m[4].mountpoint, "/oldroot/mnt/with space");
        assert!(parse_mountinfo("garbage\n\n1 2 3").is_empty());
        // Out-of-range octal escapes and truncated ones never panic.
        let odd = parse_mountinfo("1 2 0:1 / /a\\777\\4 rw - ext4 /dev/x\\ rw");
        assert_eq!(odd[0].mountpoint, "/a\u{fffd}\\4");
    }

    #[test]
    fn unmounts_deepest_first_and_the_root_last() {
        let m = parse_mountinfo(INFO);
        let order = unmount_order(&m, "/oldroot", &["/oldroot/hostpart".into()]);
        assert_eq!(order.last().map(String::as_str), Some("/oldroot"));
        let pos = |p: &str| order.iter().position(|x| x == p).unwrap();
        assert!(pos("/oldroot/dev/pts") < pos("/oldroot/dev"));
        assert!(!order.contains(&"/oldroot/hostpart".to_string()));
        assert!(!order.contains(&"/run/initramfs".to_string()));
    }
}
