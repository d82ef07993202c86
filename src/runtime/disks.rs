//! `hnctl platform disk DEV`, run by `hninit-disk@DEV.service` (which the udev
//! rule wants for every block device added, at boot and on hot-add): gathers
//! the block devices ([`to_disks`], pure: sysfs scan + `/proc/self/mountinfo`),
//! asks `datadisk::plan`, and for a disk to mount runs `fsck.<type> -a` (exit 4 or
//! more: not mounted, and the error says so, in the journal) then
//! `systemd-mount --automount` with the idle timeout (a plain mount when it is
//! 0). Without the filesystem's checker installed the disk is mounted
//! unchecked, and the journal says so. The mount point chosen is recorded in `/run/hninit/datadisk/DEV` so
//! that another disk's plan sees an idle automount as taken.
//!
//! Never touched: the host partition and its disk (found as what is mounted at
//! `/hostpart` or `/run/hninit/hostpart`), loop devices (the root image), and
//! the Gandi swap/config device (swap signatures are skipped; the swap
//! candidates of `config::source` are reserved).

use crate::config::platform::Platform;
use crate::runtime::datadisk::{plan, Decision, Disk, Policy, Reserved};
use crate::sys::devspec::BlockDev;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const RECORD_DIR: &str = "/run/hninit/datadisk";

/// One line of `/proc/self/mountinfo`: device number, mount point, type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLine {
    pub dev: (u32, u32),
    pub at: String,
    pub fstype: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo`.
pub fn mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (a, b) = f.get(2)?.split_once(':')?;
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountLine { dev: (a.parse().ok()?, b.parse().ok()?), at: unescape(f.get(4)?), fstype: f.get(sep + 1)?.to_string() })
        })
        .collect()
}

/// The planner's view of the system. `own`: the mount point recorded for the
/// device being handled (its own idle automount is not "in use").
pub fn to_disks(devs: &[BlockDev], mounts: &[MountLine], swap_candidates: &[PathBuf], own: Option<&str>) -> (Vec<Disk>, Reserved) {
    let mut reserved = Reserved::default();
    let disks = devs
        .iter()
        .map(|d| {
            let mounted: Vec<&MountLine> = mounts.iter().filter(|m| m.dev == (d.major, d.minor)).collect();
            if mounted.iter().any(|m| crate::layout::HOSTPART_CANDIDATES.contains(&m.at.as_str()) || m.at == "/") {
                reserved.names.push(d.name.clone());
            }
            if swap_candidates.contains(&d.path) {
                reserved.names.push(d.name.clone());
            }
            Disk {
                name: d.name.clone(),
                parent: d.parent.clone(),
                has_partitions: devs.iter().any(|p| p.parent.as_deref() == Some(d.name.as_str())),
                fstype: d.superblock.as_ref().map(|s| s.fstype.name().to_string()),
                label: d.superblock.as_ref().and_then(|s| s.label.clone()),
                mounted_at: mounted.first().map(|m| m.at.clone()),
            }
        })
        .collect();
    for m in mounts.iter().filter(|m| m.fstype == "autofs" && Some(m.at.as_str()) != own) {
        reserved.in_use.push((m.at.clone(), "an automount".into()));
    }
    (disks, reserved)
}

pub fn policy(p: &Platform) -> Policy {
    Policy {
        enabled: p.data_disks,
        root: p.mount_root.clone(),
        options: p.options.clone(),
        idle_timeout: (p.idle_timeout > 0).then_some(p.idle_timeout),
    }
}

/// The `systemd-mount` arguments for a decision to mount `name` at `at`.
pub fn mount_args(name: &str, at: &str, fstype: &str, options: &str, idle: Option<u32>) -> Vec<String> {
    let mut a = vec!["--no-ask-password".to_string(), "--fsck=no".into(), "-t".into(), fstype.into(), "-o".into(), options.into()];
    if let Some(s) = idle {
        a.push("--automount=yes".into());
        a.push(format!("--timeout-idle-sec={s}"));
    }
    a.push(format!("/dev/{name}"));
    a.push(at.into());
    a
}

/// What `fsck -a`'s exit status means for mounting: `Ok` to mount (0 clean,
/// 1 corrected, 2 corrected and a reboot suggested), `Err` not.
pub fn fsck_verdict(status: Option<i32>) -> Result<&'static str, String> {
    match status {
        Some(0) => Ok("clean"),
        Some(1) | Some(2) => Ok("errors corrected"),
        Some(n) if n & 4 != 0 => Err(format!("fsck -a exited {n}: errors left uncorrected")),
        Some(n) => Err(format!("fsck -a exited {n}: fsck itself failed")),
        None => Err("fsck -a was killed by a signal".into()),
    }
}

/// The filesystem's own checker (`fsck.ext4` …), if installed: the `fsck`
/// wrapper exits 8 when it is missing, which would look like a broken disk.
pub fn fsck_helper(fstype: &str) -> Option<String> {
    ["/usr/sbin", "/sbin"].iter().map(|d| format!("{d}/fsck.{fstype}")).find(|p| Path::new(p).is_file())
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {name}: not mounted: {why}")]
    NotMounted { name: String, why: String },
    #[error("disk {name}: no such block device")]
    Unknown { name: String },
}

/// Handles one device; returns the lines for the journal.
pub fn handle(name: &str, p: &Platform) -> Result<String, DiskError> {
    let devs = crate::sys::devices::BlockScanner::default().scan(false);
    let mounts = mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let swaps = crate::config::source::choose_candidates(&devs);
    let record = Path::new(RECORD_DIR).join(name);
    let own = std::fs::read_to_string(&record).ok();
    let (disks, reserved) = to_disks(&devs, &mounts, &swaps, own.as_deref().map(str::trim));
    let pol = policy(p);
    let decision = plan(&disks, &reserved, &pol).into_iter().find(|d| d.name() == name).ok_or_else(|| DiskError::Unknown { name: name.into() })?;
    match decision {
        Decision::Skip { reason, .. } => Ok(format!("disk {name}: left alone: {reason}\n")),
        Decision::Mount { at, fstype, options, note, .. } => {
            let mut log = String::new();
            if let Some(n) = note {
                log.push_str(&format!("disk {name}: {n}: using {at}\n"));
            }
            let not_mounted = |why: String| DiskError::NotMounted { name: name.into(), why };
            match fsck_helper(&fstype) {
                None => log.push_str(&format!("disk {name}: not checked: no fsck.{fstype} in /usr/sbin or /sbin (install its tools, e2fsprogs for ext4)\n")),
                Some(helper) => {
                    let out = Command::new(&helper).args(["-a", &format!("/dev/{name}")]).output().map_err(|e| not_mounted(format!("{helper}: {e}")))?;
                    let verdict = fsck_verdict(out.status.code()).map_err(|e| {
                        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                        not_mounted(format!("{e} ({})", said.trim().replace('\n', "; ")))
                    })?;
                    log.push_str(&format!("disk {name}: {helper}: {verdict}\n"));
                }
            }
            let args = mount_args(name, &at, &fstype, &options, pol.idle_timeout);
            let out = Command::new("systemd-mount").args(&args).output().map_err(|e| not_mounted(format!("systemd-mount: {e}")))?;
            if !out.status.success() {
                return Err(not_mounted(format!("systemd-mount {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
            }
            let _ = std::fs::create_dir_all(RECORD_DIR).and_then(|_| std::fs::write(&record, &at));
            let how = match pol.idle_timeout {
                Some(s) => format!("automount, unmounted after {s} s idle"),
                None => "mounted, never unmounted for idleness".into(),
            };
            log.push_str(&format!("disk {name}: at {at} ({fstype}, {options}; {how})\n"));
            Ok(log)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::probe::{FsType, Superblock};

    fn dev(name: &str, minor: u32, parent: Option<&str>, fs: Option<(FsType, Option<&str>)>) -> BlockDev {
        BlockDev {
            name: name.into(),
            path: PathBuf::from(format!("/dev/{name}")),
            major: 254,
            minor,
            parent: parent.map(Into::into),
            superblock: fs.map(|(fstype, label)| Superblock { fstype, label: label.map(Into::into), uuid: None }),
            ..Default::default()
        }
    }

    const MOUNTINFO: &str = "\
22 1 254:1 / /hostpart rw,relatime shared:1 - ext4 /dev/vda1 rw
23 1 7:0 / / ro,relatime shared:2 - ext4 /dev/loop0 ro
40 23 0:50 / /srv/www rw,relatime shared:30 - autofs systemd-1 rw,fd=50
41 23 0:51 / /srv/my\\040disk rw - autofs systemd-1 rw
";

    #[test]
    fn the_boot_s_devices_are_reserved_and_automounts_taken() {
        let m = mountinfo(MOUNTINFO);
        assert_eq!(m[3].at, "/srv/my disk");
        let devs = [
            dev("vda", 0, None, None),
            dev("vda1", 1, Some("vda"), Some((FsType::Ext4, Some("hostpart")))),
            dev("vdb", 16, None, Some((FsType::Swap, Some("swap")))),
            dev("vdc", 32, None, Some((FsType::Ext4, Some("www")))),
            dev("vdd", 48, None, Some((FsType::Xfs, None))),
        ];
        let (disks, reserved) = to_disks(&devs, &m, &[PathBuf::from("/dev/vdb")], None);
        assert_eq!(reserved.names, ["vda1", "vdb"]);
        assert!(disks[0].has_partitions && !disks[2].has_partitions);
        let d = plan(&disks, &reserved, &policy(&Platform::default()));
        let at = |n: &str| d.iter().find_map(|x| match x {
            Decision::Mount { name, at, .. } if name == n => Some(at.clone()),
            _ => None,
        });
        // /srv/www is an automount of another disk: vdc falls back to its name.
        assert_eq!(at("vdc").as_deref(), Some("/srv/vdc"));
        assert_eq!(at("vdd").as_deref(), Some("/srv/vdd"));
        assert_eq!(at("vda"), None);
        assert_eq!(at("vdb"), None);
        // Its own automount (recorded) is not in the way.
        let (disks, reserved) = to_disks(&devs, &m, &[], Some("/srv/www"));
        let d = plan(&disks, &reserved, &policy(&Platform::default()));
        assert!(d.iter().any(|x| matches!(x, Decision::Mount { name, at, .. } if name == "vdc" && at == "/srv/www")), "{d:?}");
    }

    #[test]
    fn mount_arguments_and_fsck_verdicts() {
        assert_eq!(
            mount_args("vdc", "/srv/www", "ext4", "nosuid,nodev", Some(600)).join(" "),
            "--no-ask-password --fsck=no -t ext4 -o nosuid,nodev --automount=yes --timeout-idle-sec=600 /dev/vdc /srv/www"
        );
        assert!(!mount_args("vdc", "/srv/www", "ext4", "ro", None).iter().any(|a| a.contains("automount")));
        assert!(fsck_verdict(Some(0)).is_ok() && fsck_verdict(Some(1)).is_ok());
        assert_eq!(fsck_verdict(Some(4)).unwrap_err(), "fsck -a exited 4: errors left uncorrected");
        assert!(fsck_verdict(Some(8)).is_err() && fsck_verdict(None).is_err());
        assert_eq!(policy(&Platform { idle_timeout: 0, ..Platform::default() }).idle_timeout, None);
    }
}
