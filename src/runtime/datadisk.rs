//! Which data disk is mounted where, decided as pure data (the Gandi VM's
//! `manage_data_disk.py`, done the way systemd wants it today: udev only tags
//! a disk, a unit asks `hnctl` for the decision and mounts with
//! `systemd-mount --automount`). Nothing here touches a device: the caller
//! gathers [`Disk`]s (kernel name, probed filesystem and label, what is mounted)
//! and runs each [`Decision`].
//!
//! The rules, in order (the first that applies decides):
//! 1. data disks switched off (`data_disks.enabled: false`): nothing is mounted;
//! 2. a device the boot owns is never touched: the host partition, the disk it
//!    is on, the loop device of the root image and the swap/config device;
//! 3. a kind of device that is no data disk (`loop*`, `ram*`, `zram*`, `sr*`,
//!    `md*`, `dm-*`, `nbd*`, `fd*`) is left alone;
//! 4. a whole disk with partitions: its partitions are the candidates;
//! 5. no recognised filesystem, or swap: not mounted, and said so;
//! 6. already mounted (by the operator, fstab …): left where it is;
//! 7. the mount point is `<root>/<label>`; a label that cannot be one path
//!    component (empty, `.`, `..`, a `/`, white space or a control character,
//!    over 64 bytes) gives `<root>/<device name>` instead; when two disks want
//!    the same name, the one whose device name sorts first keeps it and the
//!    other gets `<root>/<device name>` (both said so); a label that is another
//!    device's name is not used (device names always name their own device);
//!    a mount point already in use gets `-N` appended.

use std::collections::BTreeMap;
use std::fmt;

/// The longest label used as a directory name.
pub const MAX_LABEL: usize = 64;

/// What the configuration says about data disks (the `hninit.data_disks` object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub enabled: bool,
    /// Where disks are mounted (absolute, normalised).
    pub root: String,
    /// Mount options on top of the filesystem's defaults.
    pub options: String,
    /// Seconds without access after which a disk is unmounted (so that it can be
    /// detached); `None`: never.
    pub idle_timeout: Option<u32>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { enabled: true, root: "/srv".into(), options: "nosuid,nodev".into(), idle_timeout: Some(600) }
    }
}

/// One block device as the caller found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`vdb`, `xvdc1`, `nvme1n1p2`).
    pub name: String,
    /// The whole disk this is a partition of, if it is one.
    pub parent: Option<String>,
    /// A whole disk that has partitions.
    pub has_partitions: bool,
    /// Filesystem type as probed (`ext4`, `btrfs`, `swap` …), `None` if unknown.
    pub fstype: Option<String>,
    pub label: Option<String>,
    /// Where it is mounted already, if anywhere.
    pub mounted_at: Option<String>,
}

/// Devices the boot owns (kernel names), and mount points in use that no
/// device in the list accounts for (another disk's idle automount).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    pub names: Vec<String>,
    pub in_use: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    Disabled,
    Reserved,
    NotADataDisk,
    HasPartitions,
    NoFilesystem,
    Swap,
    AlreadyMounted(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Disabled => write!(f, "data disks are switched off (data_disks.enabled)"),
            SkipReason::Reserved => write!(f, "the boot owns it (host partition, its disk, the root image or the config device)"),
            SkipReason::NotADataDisk => write!(f, "not a data disk"),
            SkipReason::HasPartitions => write!(f, "it has partitions; they are mounted instead"),
            SkipReason::NoFilesystem => write!(f, "no filesystem recognised: not mounted"),
            SkipReason::Swap => write!(f, "swap space, not a filesystem"),
            SkipReason::AlreadyMounted(at) => write!(f, "already mounted at {at}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Mount {
        name: String,
        at: String,
        fstype: String,
        options: String,
        /// Why the mount point is not `<root>/<label>`, when it is not.
        note: Option<String>,
    },
    Skip {
        name: String,
        reason: SkipReason,
    },
}

impl Decision {
    pub fn name(&self) -> &str {
        match self {
            Decision::Mount { name, .. } | Decision::Skip { name, .. } => name,
        }
    }
}

const NOT_DATA: &[&str] = &["loop", "ram", "zram", "sr", "md", "dm-", "nbd", "fd"];

/// Whether `label` can be one path component under the mount root.
pub fn usable_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && label != "."
        && label != ".."
        && !label.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control())
}

/// Decides every disk; the result is in the order of the device names.
pub fn plan(disks: &[Disk], reserved: &Reserved, policy: &Policy) -> Vec<Decision> {
    let mut sorted: Vec<&Disk> = disks.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let is_reserved = |d: &Disk| {
        reserved.names.iter().any(|r| *r == d.name || d.parent.as_deref() == Some(r.as_str()))
            // the disk that holds a reserved partition
            || disks.iter().any(|p| p.parent.as_deref() == Some(d.name.as_str()) && reserved.names.contains(&p.name))
    };
    let root = policy.root.trim_end_matches('/');
    // Mount point -> device: what is mounted already counts as taken.
    let mut taken: BTreeMap<String, String> =
        disks.iter().filter_map(|d| Some((d.mounted_at.clone()?, d.name.clone()))).collect();
    for (at, by) in &reserved.in_use {
        taken.entry(at.clone()).or_insert_with(|| by.clone());
    }
    let mut out = Vec::with_capacity(sorted.len());
    for d in sorted {
        let skip = |reason| Decision::Skip { name: d.name.clone(), reason };
        if !policy.enabled {
            out.push(skip(SkipReason::Disabled));
            continue;
        }
        if is_reserved(d) {
            out.push(skip(SkipReason::Reserved));
            continue;
        }
        if NOT_DATA.iter().any(|p| d.name.starts_with(p)) {
            out.push(skip(SkipReason::NotADataDisk));
            continue;
        }
        if d.has_partitions {
            out.push(skip(SkipReason::HasPartitions));
            continue;
        }
        let fstype = match d.fstype.as_deref() {
            None => {
                out.push(skip(SkipReason::NoFilesystem));
                continue;
            }
            Some("swap") => {
                out.push(skip(SkipReason::Swap));
                continue;
            }
            Some(t) => t.to_string(),
        };
        if let Some(at) = &d.mounted_at {
            out.push(skip(SkipReason::AlreadyMounted(at.clone())));
            continue;
        }
        let by_name = format!("{root}/{}", d.name);
        let (at, note) = match d.label.as_deref() {
            Some(l) if usable_label(l) && disks.iter().any(|o| o.name == l && o.name != d.name) => {
                (by_name, Some(format!("label {l:?} is another device's name")))
            }
            Some(l) if usable_label(l) => {
                let want = format!("{root}/{l}");
                match taken.get(&want) {
                    Some(other) => (by_name, Some(format!("label {l:?} is {other}'s already"))),
                    None => (want, None),
                }
            }
            Some(l) => (by_name, Some(format!("label {l:?} cannot be a directory name"))),
            None => (by_name, None),
        };
        // Device names are unique and a label never takes one, so this is only
        // a mount point already used by a mount of the operator's.
        let (at, note) = if taken.contains_key(&at) {
            (format!("{root}/{}-{}", d.name, out.len()), Some(format!("{at} is in use")))
        } else {
            (at, note)
        };
        taken.insert(at.clone(), d.name.clone());
        out.push(Decision::Mount { name: d.name.clone(), at, fstype, options: policy.options.clone(), note });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, fstype: Option<&str>, label: Option<&str>) -> Disk {
        Disk { name: name.into(), fstype: fstype.map(Into::into), label: label.map(Into::into), ..Default::default() }
    }

    fn mounts(ds: &[Decision]) -> Vec<(String, String)> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Mount { name, at, .. } => Some((name.clone(), at.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn labels_name_mount_points_and_unlabelled_disks_use_their_device_name() {
        let d = plan(&[disk("xvdc1", Some("ext4"), None), disk("xvdb", Some("ext4"), Some("www"))], &Reserved::default(), &Policy::default());
        assert_eq!(mounts(&d), [("xvdb".into(), "/srv/www".into()), ("xvdc1".into(), "/srv/xvdc1".into())]);
    }

    #[test]
    fn two_disks_with_one_label_the_first_keeps_it() {
        let d = plan(&[disk("vdc", Some("ext4"), Some("www")), disk("vdb", Some("xfs"), Some("www"))], &Reserved::default(), &Policy::default());
        assert_eq!(mounts(&d), [("vdb".into(), "/srv/www".into()), ("vdc".into(), "/srv/vdc".into())]);
        match &d[1] {
            Decision::Mount { note: Some(n), .. } => assert!(n.contains("vdb"), "{n}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn labels_that_are_no_directory_name_fall_back_to_the_device() {
        for bad in ["..", ".", "a/b", "a b", "", "x\u{1b}[2J", &"l".repeat(65)] {
            let d = plan(&[disk("vdb", Some("ext4"), Some(bad))], &Reserved::default(), &Policy::default());
            assert_eq!(mounts(&d), [("vdb".into(), "/srv/vdb".into())], "{bad:?}");
        }
        assert!(usable_label("www-data_1"));
    }

    #[test]
    fn a_label_equal_to_another_device_name_does_not_take_its_place() {
        for disks in [
            [disk("vdb", Some("ext4"), None), disk("vdc", Some("ext4"), Some("vdb"))],
            [disk("vdc", Some("ext4"), None), disk("vdb", Some("ext4"), Some("vdc"))],
        ] {
            let m = mounts(&plan(&disks, &Reserved::default(), &Policy::default()));
            assert_eq!(m, [("vdb".into(), "/srv/vdb".into()), ("vdc".into(), "/srv/vdc".into())]);
        }
    }

    #[test]
    fn a_mount_point_in_use_is_not_mounted_over() {
        let mut busy = disk("vdb", Some("ext4"), None);
        busy.mounted_at = Some("/srv/www".into());
        let d = plan(&[busy, disk("vdc", Some("ext4"), Some("www"))], &Reserved::default(), &Policy::default());
        assert_eq!(mounts(&d), [("vdc".into(), "/srv/vdc".into())]);
    }

    #[test]
    fn the_boot_s_devices_and_non_data_devices_are_never_touched() {
        let mut part = disk("vda1", Some("ext4"), Some("hostpart"));
        part.parent = Some("vda".into());
        let mut whole = disk("vda", None, None);
        whole.has_partitions = true;
        let disks = [part, whole, disk("loop0", Some("ext4"), None), disk("xvdz", Some("swap"), None), disk("sr0", Some("iso9660"), None)];
        let reserved = Reserved { names: vec!["vda1".into(), "loop0".into()], ..Default::default() };
        let d = plan(&disks, &reserved, &Policy::default());
        assert!(mounts(&d).is_empty(), "{d:?}");
        let reason = |n: &str| d.iter().find(|x| x.name() == n).map(|x| match x {
            Decision::Skip { reason, .. } => reason.clone(),
            _ => unreachable!(),
        });
        assert_eq!(reason("vda1"), Some(SkipReason::Reserved));
        assert_eq!(reason("vda"), Some(SkipReason::Reserved));
        assert_eq!(reason("loop0"), Some(SkipReason::Reserved));
        assert_eq!(reason("xvdz"), Some(SkipReason::Swap));
        assert_eq!(reason("sr0"), Some(SkipReason::NotADataDisk));
    }

    #[test]
    fn unknown_filesystems_mounted_disks_and_the_switch() {
        let mut m = disk("vdc", Some("ext4"), Some("db"));
        m.mounted_at = Some("/var/lib/db".into());
        let d = plan(&[disk("vdb", None, None), m.clone()], &Reserved::default(), &Policy::default());
        assert_eq!(d[0], Decision::Skip { name: "vdb".into(), reason: SkipReason::NoFilesystem });
        assert_eq!(d[1], Decision::Skip { name: "vdc".into(), reason: SkipReason::AlreadyMounted("/var/lib/db".into()) });
        let off = Policy { enabled: false, ..Policy::default() };
        let d = plan(&[disk("vdb", Some("ext4"), Some("www"))], &Reserved::default(), &off);
        assert_eq!(d[0], Decision::Skip { name: "vdb".into(), reason: SkipReason::Disabled });
        let other_root = Policy { root: "/data/".into(), ..Policy::default() };
        let d = plan(&[disk("vdb", Some("ext4"), Some("www"))], &Reserved::default(), &other_root);
        assert_eq!(mounts(&d), [("vdb".into(), "/data/www".into())]);
    }
}
