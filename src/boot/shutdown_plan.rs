//! The shutdown program's decisions, pure: which mounts of the old root hold
//! the host partition (so they are moved out before the old root is
//! unmounted), and what the outcome line says. `shutdown.rs` does the syscalls.
//!
//! Where the host partition is at that point depends on the init that hands
//! over to `/run/initramfs/shutdown`:
//! * hninit moved it to `/hostpart` (or `/run/hninit/hostpart`) at boot, and
//!   systemd 252 (Debian 12) leaves it there: it is `/oldroot/hostpart`.
//! * systemd ≥ 253 (Debian 13 has 257) moves every mount it cannot unmount and
//!   that has nothing mounted below it to `/run/shutdown/mounts/<16 hex digits>`
//!   before pivoting (systemd pull request 25168, `src/shutdown/umount.c`), so
//!   that its parent can be unmounted. The host partition is such a mount: the
//!   loop device of the root holds `hn-root.img` open for writing, so both its
//!   unmount and its read-only remount fail with EBUSY. After the pivot it is
//!   `/oldroot/run/shutdown/mounts/<id>`, inside the old `/run` tmpfs, which
//!   therefore stays busy, and the old root with it.
//!
//! So the host partition is found by what it holds, not by a path: the mount
//! under the old root containing a loop device's backing file (sysfs prints
//! that path as seen from the shutdown program's root). Every mount systemd
//! parked in `run/shutdown/mounts/` and hninit's own two paths are taken out
//! too, so a kernel without loop sysfs attributes or an init that moves things
//! elsewhere still ends with the old root unmountable.

use super::shutdown::MountEntry;

/// Where systemd ≥ 253 parks the mounts it could not unmount, relative to the root.
pub const SYSTEMD_PARKED: &str = "run/shutdown/mounts";

/// hninit's own places for the host partition, relative to the root (`handoff::move_hostpart`).
pub const HNINIT_HOSTPART: [&str; 2] = ["hostpart", "run/hninit/hostpart"];

fn below(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// The mount of `mounts` that contains `file`: the longest mount point that is
/// `file`'s directory or one of its parents (the last one mounted wins a tie,
/// as it hides the others).
pub fn mount_holding<'a>(mounts: &'a [MountEntry], file: &str) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for m in mounts {
        let mp = m.mountpoint.as_str();
        if (mp == "/" || below(file, mp)) && best.is_none_or(|b| mp.len() >= b.mountpoint.len()) {
            best = Some(m);
        }
    }
    best
}

/// A mount to take out of the old root before unmounting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveOut {
    pub mountpoint: String,
    /// It holds a loop device's backing file or is at one of hninit's host
    /// partition paths: when it stays busy it is made clean on disk
    /// (read-only remount, else freeze); any other is only detached lazily.
    pub hostpart: bool,
}

/// The mounts to move out of `root` before unmounting it, shallowest first and
/// none inside another (moving a mount carries what is mounted below it):
/// the mounts strictly below `root` holding one of `backing_files` (the loop
/// devices' files) or at hninit's host partition paths, and the mounts systemd
/// parked in `root/run/shutdown/mounts/`.
pub fn mounts_to_move_out(mounts: &[MountEntry], root: &str, backing_files: &[String]) -> Vec<MoveOut> {
    let root = root.trim_end_matches('/');
    let mut wanted: Vec<MoveOut> = Vec::new();
    for f in backing_files {
        if let Some(m) = mount_holding(mounts, f) {
            if below(&m.mountpoint, root) {
                wanted.push(MoveOut { mountpoint: m.mountpoint.clone(), hostpart: true });
            }
        }
    }
    let parked = format!("{root}/{SYSTEMD_PARKED}");
    for m in mounts {
        let mp = &m.mountpoint;
        let hninit = HNINIT_HOSTPART.iter().any(|h| *mp == format!("{root}/{h}"));
        // Directly in the parking directory: systemd's own names, one level.
        let parked_here = below(mp, &parked) && !mp[parked.len() + 1..].contains('/');
        if hninit || parked_here {
            wanted.push(MoveOut { mountpoint: mp.clone(), hostpart: hninit });
        }
    }
    crate::util::sort_by(&mut wanted, &|a, b| {
        a.mountpoint.matches('/').count().cmp(&b.mountpoint.matches('/').count())
    });
    let mut out: Vec<MoveOut> = Vec::new();
    for w in wanted {
        match out.iter_mut().find(|o| o.mountpoint == w.mountpoint || below(&w.mountpoint, &o.mountpoint)) {
            // Moved with `o`; the host partition's care goes to what is moved.
            Some(o) => o.hostpart |= w.hostpart,
            None => out.push(w),
        }
    }
    out
}

/// How the old root went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootEnd {
    /// Every mount under the old root unmounted.
    Unmounted,
    /// Some stayed busy and were detached lazily (MNT_DETACH).
    DetachedLazily,
}

/// How the host partition went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostpartEnd {
    /// Unmounted: clean on disk.
    Unmounted,
    /// Still busy (a file open for writing: the loop device of a lazily
    /// detached root) but remounted read-only, then synced: clean on disk.
    RemountedReadOnly,
    /// Not even remountable read-only: frozen (FIFREEZE flushes ext4's journal
    /// and clears needs_recovery), then synced.
    Frozen,
    /// Nothing worked: synced only, the next mount replays the journal.
    SyncedOnly,
    /// The host partition was not found under the old root.
    NotFound,
}

/// The line logged before poweroff (`warn` when not all clean).
pub fn outcome(root: RootEnd, hostpart: HostpartEnd) -> (bool, &'static str) {
    use HostpartEnd as H;
    match (root, hostpart) {
        (RootEnd::Unmounted, H::Unmounted) => (true, "old root and host partition unmounted cleanly"),
        (RootEnd::DetachedLazily, H::Unmounted) => {
            (false, "old root detached lazily, then the host partition unmounted cleanly")
        }
        (_, H::RemountedReadOnly) => (false, "host partition still busy: remounted read-only and synced (clean on disk)"),
        (_, H::Frozen) => (false, "host partition still busy and not remountable read-only: frozen and synced (journal flushed)"),
        (_, H::SyncedOnly) => (false, "host partition still busy, not remountable read-only, not freezable: synced only; the next mount replays its journal"),
        (RootEnd::Unmounted, H::NotFound) => (false, "old root unmounted; no host partition found under it"),
        (RootEnd::DetachedLazily, H::NotFound) => (false, "old root detached lazily; no host partition found under it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::shutdown::parse_mountinfo;

    /// What hninit's shutdown program finds after systemd 257's pivot
    /// (Debian 13): the host partition parked by systemd-shutdown.
    const TRIXIE: &str = "\
300 299 0:30 /initramfs / rw - tmpfs tmpfs rw
301 300 7:0 / /oldroot rw,relatime - ext4 /dev/loop0 rw
302 301 0:5 / /oldroot/dev rw,nosuid - devtmpfs devtmpfs rw
303 301 0:22 / /oldroot/sys rw - sysfs sysfs rw
304 301 0:30 / /oldroot/run rw - tmpfs tmpfs rw
305 304 254:1 / /oldroot/run/shutdown/mounts/5f3c1a9e0b7d2c41 rw,noatime - ext4 /dev/vda1 rw
306 300 0:30 / /run rw - tmpfs tmpfs rw
307 300 0:5 / /dev rw - devtmpfs devtmpfs rw
";

    /// systemd 252 (Debian 12): the host partition where hninit put it.
    const BOOKWORM: &str = "\
300 299 0:30 /initramfs / rw - tmpfs tmpfs rw
301 300 7:0 / /oldroot rw,relatime - ext4 /dev/loop0 rw
302 301 0:5 / /oldroot/dev rw,nosuid - devtmpfs devtmpfs rw
303 301 254:1 / /oldroot/hostpart rw,noatime - ext4 /dev/vda1 rw
304 301 0:30 / /oldroot/run rw - tmpfs tmpfs rw
";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn mv(v: &[(&str, bool)]) -> Vec<MoveOut> {
        v.iter().map(|(m, h)| MoveOut { mountpoint: m.to_string(), hostpart: *h }).collect()
    }

    #[test]
    fn finds_the_host_partition_parked_by_systemd_257() {
        let m = parse_mountinfo(TRIXIE);
        let files = s(&["/oldroot/run/shutdown/mounts/5f3c1a9e0b7d2c41/hn-root.img"]);
        assert_eq!(
            mounts_to_move_out(&m, "/oldroot", &files),
            mv(&[("/oldroot/run/shutdown/mounts/5f3c1a9e0b7d2c41", true)])
        );
        // Without loop sysfs attributes: moved out as a parked mount all the
        // same (so the old root can go), but not known to be the host partition.
        assert_eq!(
            mounts_to_move_out(&m, "/oldroot", &[]),
            mv(&[("/oldroot/run/shutdown/mounts/5f3c1a9e0b7d2c41", false)])
        );
    }

    #[test]
    fn finds_the_host_partition_where_hninit_put_it() {
        let m = parse_mountinfo(BOOKWORM);
        let files = s(&["/oldroot/hostpart/images/hn-root.img"]);
        assert_eq!(mounts_to_move_out(&m, "/oldroot", &files), mv(&[("/oldroot/hostpart", true)]));
        assert_eq!(mounts_to_move_out(&m, "/oldroot", &[]), mv(&[("/oldroot/hostpart", true)]));
    }

    #[test]
    fn only_mounts_below_the_old_root_and_none_inside_another() {
        let m = parse_mountinfo(
            "1 0 0:1 / / rw - tmpfs tmpfs rw\n\
             2 1 7:0 / /oldroot rw - ext4 /dev/loop0 rw\n\
             3 2 8:1 / /oldroot/srv/disk rw - xfs /dev/sdb1 rw\n\
             4 3 8:2 / /oldroot/srv/disk/inner rw - ext4 /dev/sdb2 rw\n\
             5 1 8:3 / /elsewhere rw - ext4 /dev/sdc rw\n\
             6 2 0:9 / /oldroot/run rw - tmpfs tmpfs rw\n\
             7 6 8:4 / /oldroot/run/shutdown/mounts/0123456789abcdef rw - ext4 /dev/sdd rw\n\
             8 7 8:5 / /oldroot/run/shutdown/mounts/0123456789abcdef/x rw - ext4 /dev/sde rw\n",
        );
        let files = s(&[
            "/oldroot/srv/disk/inner/a.img", // inside /oldroot/srv/disk: moved with it
            "/oldroot/srv/disk/b.img",
            "/elsewhere/c.img",   // not under the old root
            "/oldroot/d.img",     // on the old root itself: nothing to move
            "/nowhere-known.img", // held by / only
        ]);
        assert_eq!(
            mounts_to_move_out(&m, "/oldroot/", &files),
            mv(&[("/oldroot/srv/disk", true), ("/oldroot/run/shutdown/mounts/0123456789abcdef", false)])
        );
        // A parked mount holding the image is the host partition.
        let files = s(&["/oldroot/run/shutdown/mounts/0123456789abcdef/x/hn-root.img"]);
        assert_eq!(
            mounts_to_move_out(&m, "/oldroot", &files),
            mv(&[("/oldroot/run/shutdown/mounts/0123456789abcdef", true)])
        );
    }

    #[test]
    fn holding_mount_is_the_longest_prefix_on_a_path_boundary() {
        let m = parse_mountinfo(
            "1 0 0:1 / / rw - tmpfs tmpfs rw\n\
             2 1 0:2 / /oldroot/host rw - ext4 /dev/a rw\n\
             3 1 0:3 / /oldroot/hostpart rw - ext4 /dev/b rw\n",
        );
        assert_eq!(mount_holding(&m, "/oldroot/hostpart/x.img").unwrap().source, "/dev/b");
        assert_eq!(mount_holding(&m, "/oldroot/host/x.img").unwrap().source, "/dev/a");
        assert_eq!(mount_holding(&m, "/x.img").unwrap().mountpoint, "/");
        assert!(mount_holding(&[], "/x").is_none());
    }

    #[test]
    fn only_a_full_unmount_is_reported_clean() {
        let all = [
            HostpartEnd::Unmounted,
            HostpartEnd::RemountedReadOnly,
            HostpartEnd::Frozen,
            HostpartEnd::SyncedOnly,
            HostpartEnd::NotFound,
        ];
        for r in [RootEnd::Unmounted, RootEnd::DetachedLazily] {
            for h in all {
                let (clean, line) = outcome(r, h);
                assert_eq!(clean, r == RootEnd::Unmounted && h == HostpartEnd::Unmounted, "{r:?} {h:?}");
                assert_eq!(line.contains("unmounted cleanly") && !line.contains("lazily"), clean, "{line}");
            }
        }
    }
}
