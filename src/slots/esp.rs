//! The EFI system partition and GRUB's boot counter on it. hninit's GRUB menu
//! (`grub/grub.cfg.in`) loads `hn_trial` and `hn_tries` from
//! `/EFI/hninit/grubenv` and spends one try per boot of an image on trial; this
//! module sets and clears that counter from PID 1 (after a rotation or revert)
//! and from `hnctl` in the running system.
//!
//! The ESP is a vfat block device whose GPT partition type is
//! [`ESP_TYPE_GUID`], or else a vfat filesystem labelled [`ESP_LABEL`]
//! (hninit's own disks); of those, the first (in [`order_esps`] order) that has
//! `/EFI/hninit/grub.cfg` or `/EFI/hninit/grubenv` is the one used. It is used
//! where it is already mounted (e.g. `/boot/efi`) or mounted privately at
//! [`MOUNT_POINT`] and unmounted again. At boot the `vfat` module must be
//! loadable: pass a loader with [`EspAccess::load_module`], or rely on the
//! kernel's `fs-vfat` request, which hninit's `/sbin/modprobe` serves.
//!
//! The file is updated in place (1024 bytes written at offset 0, fsync), never
//! replaced by a rename: GRUB's `save_env` writes through the blocks the file
//! occupies, so they must stay the file's blocks.
//!
//! The pure parts (GPT partition type, ranking the candidates, mountinfo,
//! editing the block) are separate from the few system calls and unit-tested.

use crate::sys::devspec::BlockDev;
use crate::slots::grubenv::{self, GrubEnv, GrubEnvError, BLOCK_SIZE};
use crate::sys::probe::FsType;
use rustix::mount::{unmount, MountFlags, UnmountFlags};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// GPT partition type of an EFI system partition.
pub const ESP_TYPE_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Filesystem label of the ESP on hninit's disks (`cargo xtask disk`).
pub const ESP_LABEL: &str = "EFI-BOOT";
/// hninit's directory on the ESP (relative to its root).
pub const HNINIT_DIR: &str = "EFI/hninit";
/// The environment block GRUB's menu reads (relative to the ESP's root).
pub const GRUBENV: &str = "EFI/hninit/grubenv";
/// Where the ESP is mounted when it is not mounted already.
pub const MOUNT_POINT: &str = crate::layout::ESP_MOUNT;
/// Variable: "1" while the current image is on trial.
pub const VAR_TRIAL: &str = "hn_trial";
/// Variable: tries left, "0".."9"; GRUB decrements it before each trial boot.
pub const VAR_TRIES: &str = "hn_tries";
/// Largest `hn_tries` the GRUB menu can count down from.
pub const MAX_TRIES: u32 = 9;
/// Most bytes read of an existing grubenv (a real one is 1024).
const MAX_READ: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Env {
        path: String,
        #[source]
        source: GrubEnvError,
    },
    #[error("{dev}: {reason}")]
    Mount { dev: String, reason: String },
    #[error("the ESP {dev} is mounted read-only at {at}")]
    ReadOnly { dev: String, at: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> EspError {
    let what = what.into();
    move |source| EspError::Io { what, source }
}

// ---------------------------------------------------------------- the counter (pure)

/// GRUB's boot counter as the menu sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// `hn_trial=1`: the current image is on trial.
    pub trial: bool,
    /// `hn_tries`: boots of it still allowed (0 when absent or not a number,
    /// which the menu treats as exhausted).
    pub tries: u32,
}

/// The counter in `env`.
pub fn counter(env: &GrubEnv) -> Counter {
    Counter {
        trial: env.get(VAR_TRIAL) == Some("1"),
        tries: env.get(VAR_TRIES).and_then(|t| t.parse().ok()).unwrap_or(0),
    }
}

/// `hn_tries` for a trial of `tries` boots: this boot is the first, so
/// `tries - 1` are left, at most [`MAX_TRIES`].
pub fn tries_left_for(tries: u32) -> u32 {
    tries.saturating_sub(1).min(MAX_TRIES)
}

/// Starts a trial of `tries` boots in `env`.
pub fn start_trial(env: &mut GrubEnv, tries: u32) -> Result<(), GrubEnvError> {
    env.set(VAR_TRIAL, "1")?;
    env.set(VAR_TRIES, &tries_left_for(tries).to_string())
}

/// Ends the trial in `env` (`hn_trial=0`, no `hn_tries`).
pub fn clear_trial(env: &mut GrubEnv) -> Result<(), GrubEnvError> {
    env.set(VAR_TRIAL, "0")?;
    env.remove(VAR_TRIES);
    Ok(())
}

/// What to do to the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    Start { tries: u32 },
    Clear,
}

/// The new block for `edit` applied to `old` (the file's bytes; `None` when
/// it does not exist). A malformed old block is replaced by a fresh one: GRUB
/// cannot load it either.
pub fn edit_block(old: Option<&[u8]>, edit: Edit) -> Result<Vec<u8>, GrubEnvError> {
    let mut env = old.and_then(|b| grubenv::parse(b).ok()).unwrap_or_default();
    match edit {
        Edit::Start { tries } => start_trial(&mut env, tries)?,
        Edit::Clear => clear_trial(&mut env)?,
    }
    match env.to_block() {
        Ok(b) => Ok(b),
        // Other variables fill the block: keep only ours rather than fail.
        Err(GrubEnvError::TooBig { .. }) => {
            let mut fresh = GrubEnv::new();
            match edit {
                Edit::Start { tries } => start_trial(&mut fresh, tries)?,
                Edit::Clear => clear_trial(&mut fresh)?,
            }
            fresh.to_block()
        }
        Err(e) => Err(e),
    }
}

/// The GPT partition type GUID of partition `partn`: see [`crate::sys::partition::gpt_partition_type`].
pub use crate::sys::partition::gpt_partition_type;

// ---------------------------------------------------------------- choosing the ESP (pure)

/// How good an ESP candidate `dev` is (lower is better), `None` if it is not
/// one: vfat with the ESP partition type and our label (0), the ESP type (1),
/// our label only (2).
pub fn esp_rank(dev: &BlockDev, part_type: Option<&str>) -> Option<u8> {
    let sb = dev.superblock.as_ref()?;
    if sb.fstype != FsType::Vfat {
        return None;
    }
    let esp_type = part_type.is_some_and(|t| t.eq_ignore_ascii_case(ESP_TYPE_GUID));
    let labelled = sb
        .label
        .as_deref()
        .is_some_and(|l| l.eq_ignore_ascii_case(ESP_LABEL));
    match (esp_type, labelled) {
        (true, true) => Some(0),
        (true, false) => Some(1),
        (false, true) => Some(2),
        (false, false) => None,
    }
}

/// The ESP candidates among `devs` (each with its GPT partition type, if
/// known), best first, ties by device name: indices into `devs`.
pub fn order_esps(devs: &[(BlockDev, Option<String>)]) -> Vec<usize> {
    let mut ranked: Vec<(u8, &str, usize)> = devs
        .iter()
        .enumerate()
        .filter_map(|(i, (d, t))| Some((esp_rank(d, t.as_deref())?, d.name.as_str(), i)))
        .collect();
    crate::util::sort(&mut ranked);
    ranked.into_iter().map(|(_, _, i)| i).collect()
}

// ---------------------------------------------------------------- mountinfo (pure)

/// A mount of a whole filesystem, from /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    pub mount_point: PathBuf,
    pub read_only: bool,
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|x| (b'0'..=b'7').contains(x)));
        match (c, digits) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, x| acc * 8 + u32::from(x - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the filesystem on device `major:minor` is mounted with its root
/// (`/`) visible: writable mounts first, then in mountinfo order.
pub fn mounts_of(mountinfo: &str, major: u32, minor: u32) -> Vec<Mounted> {
    let want = format!("{major}:{minor}");
    let mut out: Vec<Mounted> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            if *f.get(2)? != want || *f.get(3)? != "/" {
                return None;
            }
            let super_opts = post.split(' ').nth(2).unwrap_or("");
            let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
            Some(Mounted {
                mount_point: PathBuf::from(unescape_octal(f.get(4)?)),
                read_only: ro(f.get(5)?) || ro(super_opts),
            })
        })
        .collect();
    crate::util::sort_by(&mut out, &|a, b| a.read_only.cmp(&b.read_only));
    out
}

// ---------------------------------------------------------------- system calls

/// Where and how the ESP is reached; [`EspAccess::default`] scans
/// `/sys/class/block`, mounts at [`MOUNT_POINT`] and loads no module itself.
pub struct EspAccess<'a> {
    pub mount_point: PathBuf,
    /// Called with `"vfat"` before the ESP is mounted (PID 1: `Drivers::load_for_fs`).
    pub load_module: Option<&'a dyn Fn(&str)>,
}

impl Default for EspAccess<'_> {
    fn default() -> Self {
        EspAccess {
            mount_point: PathBuf::from(MOUNT_POINT),
            load_module: None,
        }
    }
}

/// The counter found (after the change, for the writing calls) and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The ESP's device node.
    pub device: PathBuf,
    pub counter: Counter,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write(Edit),
}

impl<'a> EspAccess<'a> {
    pub fn with_module_loader(load_module: &'a dyn Fn(&str)) -> EspAccess<'a> {
        EspAccess {
            load_module: Some(load_module),
            ..Default::default()
        }
    }

    /// Starts a trial of `tries` boots (`hn_trial=1`, `hn_tries=tries-1`,
    /// at most 9), creating the grubenv if the ESP has `/EFI/hninit/` without it.
    /// `Ok(None)`: no ESP of hninit's GRUB.
    pub fn start_trial_counter(&self, tries: u32) -> Result<Option<Found>, EspError> {
        self.run(Op::Write(Edit::Start { tries }))
    }

    /// Ends the trial (`hn_trial=0`, `hn_tries` removed). `Ok(None)`: no ESP
    /// of hninit's GRUB, or no grubenv on it (nothing to clear).
    pub fn clear_trial_counter(&self) -> Result<Option<Found>, EspError> {
        self.run(Op::Write(Edit::Clear))
    }

    /// The counter. `Ok(None)`: no ESP of hninit's GRUB or no grubenv on it.
    pub fn read_counter(&self) -> Result<Option<Found>, EspError> {
        self.run(Op::Read)
    }

    fn run(&self, op: Op) -> Result<Option<Found>, EspError> {
        let devs = candidates();
        let mut first_err = None;
        for i in order_esps(&devs) {
            let Some((dev, _)) = devs.get(i) else {
                continue;
            };
            match self.on_device(dev, op) {
                Ok(Some(Some(counter))) => {
                    return Ok(Some(Found {
                        device: dev.path.clone(),
                        counter,
                    }))
                }
                // Ours, but no grubenv to read or clear.
                Ok(Some(None)) => return Ok(None),
                // Not ours: try the next one.
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// `Ok(None)`: this ESP has no `/EFI/hninit/`; `Ok(Some(None))`: it has,
    /// but no grubenv (read or clear).
    fn on_device(&self, dev: &BlockDev, op: Op) -> Result<Option<Option<Counter>>, EspError> {
        let devname = dev.path.display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some(m) = mounts_of(&mountinfo, dev.major, dev.minor)
            .into_iter()
            .next()
        {
            if m.read_only && op != Op::Read {
                return Err(EspError::ReadOnly {
                    dev: devname,
                    at: m.mount_point.display().to_string(),
                });
            }
            return on_root(&m.mount_point, op);
        }
        if let Some(load) = self.load_module {
            load("vfat");
        }
        let target = self.mount_point.as_path();
        let flags = MountFlags::NOSUID
            | MountFlags::NODEV
            | MountFlags::NOEXEC
            | if op == Op::Read {
                MountFlags::RDONLY
            } else {
                MountFlags::empty()
            };
        crate::sys::mounts::mount_fs(&dev.path, target, "vfat", &Default::default(), flags).map_err(|e| {
            EspError::Mount {
                dev: devname.clone(),
                reason: e.to_string(),
            }
        })?;
        let res = on_root(target, op);
        if unmount(target, UnmountFlags::empty()).is_err() {
            let _ = unmount(target, UnmountFlags::DETACH);
        }
        res
    }
}

/// vfat block devices in `/sys/class/block`, with their GPT partition types.
fn candidates() -> Vec<(BlockDev, Option<String>)> {
    let mut types: HashMap<(String, u32), Option<String>> = HashMap::new();
    crate::sys::devices::BlockScanner::default()
        .scan(false)
        .into_iter()
        .filter(|d| {
            d.superblock
                .as_ref()
                .is_some_and(|s| s.fstype == FsType::Vfat)
        })
        .map(|d| {
            let t = match (&d.parent, d.partn) {
                (Some(parent), Some(partn)) => types
                    .entry((parent.clone(), partn))
                    .or_insert_with(|| {
                        let mut f = File::open(Path::new("/dev").join(parent)).ok()?;
                        gpt_partition_type(&mut f, partn).ok().flatten()
                    })
                    .clone(),
                _ => None,
            };
            (d, t)
        })
        .collect()
}

/// The operation on the ESP mounted at `root`.
fn on_root(root: &Path, op: Op) -> Result<Option<Option<Counter>>, EspError> {
    let dir = root.join(HNINIT_DIR);
    let path = root.join(GRUBENV);
    let shown = path.display().to_string();
    if !dir.is_dir() {
        return Ok(None);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(op != Op::Read)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // GRUB's menu would find nothing to load either.
            let has_menu = dir.join("grub.cfg").is_file();
            return match op {
                Op::Write(edit @ Edit::Start { .. }) => {
                    let block = edit_block(None, edit).map_err(|source| EspError::Env {
                        path: shown.clone(),
                        source,
                    })?;
                    create_synced(&dir, &path, &block)?;
                    let env = grubenv::parse(&block).map_err(|source| EspError::Env {
                        path: shown,
                        source,
                    })?;
                    Ok(Some(Some(counter(&env))))
                }
                _ if has_menu => Ok(Some(None)),
                _ => Ok(None),
            };
        }
        Err(e) => return Err(io_err(format!("open {shown}"))(e)),
    };
    let mut old = Vec::new();
    (&mut file)
        .take(MAX_READ)
        .read_to_end(&mut old)
        .map_err(io_err(format!("read {shown}")))?;
    let Op::Write(edit) = op else {
        let env = grubenv::parse(&old).map_err(|source| EspError::Env {
            path: shown,
            source,
        })?;
        return Ok(Some(Some(counter(&env))));
    };
    let block = edit_block(Some(&old), edit).map_err(|source| EspError::Env {
        path: shown.clone(),
        source,
    })?;
    if block != old {
        // In place: GRUB's save_env writes to these very blocks.
        file.write_all_at(&block, 0)
            .map_err(io_err(format!("write {shown}")))?;
        if old.len() != BLOCK_SIZE {
            file.set_len(BLOCK_SIZE as u64)
                .map_err(io_err(format!("truncate {shown}")))?;
        }
        file.sync_all().map_err(io_err(format!("fsync {shown}")))?;
    }
    let env = grubenv::parse(&block).map_err(|source| EspError::Env {
        path: shown,
        source,
    })?;
    Ok(Some(Some(counter(&env))))
}

/// Creates `path` (which must not exist) holding `data`, fsyncs it and `dir`.
fn create_synced(dir: &Path, path: &Path, data: &[u8]) -> Result<(), EspError> {
    let shown = path.display().to_string();
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(format!("create {shown}")))?;
    file.write_all_at(data, 0)
        .map_err(io_err(format!("write {shown}")))?;
    file.sync_all().map_err(io_err(format!("fsync {shown}")))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync {}", dir.display())))
}

/// Starts GRUB's trial counter for a freshly rotated image of `tries` boots.
/// `Ok(false)`: no ESP with hninit's GRUB (not an error: the machine may not
/// boot through it; hninit counts the tries itself then). The caller loads
/// `vfat` first or relies on the kernel's `fs-vfat` request.
pub fn start_trial_counter(tries: u32) -> Result<bool, String> {
    EspAccess::default()
        .start_trial_counter(tries)
        .map(|f| f.is_some())
        .map_err(|e| e.to_string())
}

/// Ends GRUB's trial (after `hnctl mark-good` or a revert). `Ok(false)`: no
/// ESP with hninit's GRUB or no grubenv on it.
pub fn clear_trial_counter() -> Result<bool, String> {
    EspAccess::default()
        .clear_trial_counter()
        .map(|f| f.is_some())
        .map_err(|e| e.to_string())
}

/// GRUB's counter: `Some((on trial, tries left))`, `None` without an ESP
/// with hninit's GRUB and a grubenv.
pub fn read_counter() -> Result<Option<(bool, u32)>, String> {
    EspAccess::default()
        .read_counter()
        .map(|f| f.map(|f| (f.counter.trial, f.counter.tries)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use crate::sys::partition::crc32;
    use super::*;
    use crate::sys::probe::Superblock;
    use std::io::Cursor;

    fn vfat(name: &str, label: Option<&str>) -> BlockDev {
        BlockDev {
            name: name.into(),
            path: PathBuf::from("/dev").join(name),
            superblock: Some(Superblock {
                fstype: FsType::Vfat,
                label: label.map(Into::into),
                uuid: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ranks_candidates() {
        let esp = Some(ESP_TYPE_GUID.to_string());
        let other = Some("0fc63daf-8483-4772-8e79-3d69d8477de4".to_string());
        let mut ext4 = vfat("vda3", Some("EFI-BOOT"));
        if let Some(sb) = ext4.superblock.as_mut() {
            sb.fstype = FsType::Ext4;
        }
        let devs = vec![
            (vfat("vdb1", None), other.clone()),           // 0: not an ESP
            (vfat("vdb2", Some("efi-boot")), None),        // 1: label only
            (vfat("vda1", None), esp.clone()),             // 2: type only
            (ext4, esp.clone()),                           // 3: not vfat
            (vfat("vdc1", Some("EFI-BOOT")), esp.clone()), // 4: both
            (vfat("sda1", None), Some(ESP_TYPE_GUID.to_uppercase())), // 5: type only
        ];
        assert_eq!(order_esps(&devs), vec![4, 5, 2, 1]);
        assert_eq!(order_esps(&[]), Vec::<usize>::new());
    }

    #[test]
    fn edits_blocks() {
        let b = edit_block(None, Edit::Start { tries: 3 }).unwrap();
        let env = grubenv::parse(&b).unwrap();
        assert_eq!(env.get("hn_trial"), Some("1"));
        assert_eq!(env.get("hn_tries"), Some("2"));
        assert_eq!(
            counter(&env),
            Counter {
                trial: true,
                tries: 2
            }
        );
        for (tries, left) in [(0, 0), (1, 0), (2, 1), (10, 9), (u32::MAX, 9)] {
            let b = edit_block(Some(&b), Edit::Start { tries }).unwrap();
            assert_eq!(
                counter(&grubenv::parse(&b).unwrap()),
                Counter {
                    trial: true,
                    tries: left
                }
            );
        }
        // Other variables survive; the trial is cleared.
        let mut other = GrubEnv::new();
        other.set("saved_entry", "x").unwrap();
        start_trial(&mut other, 5).unwrap();
        let cleared = edit_block(Some(&other.to_block().unwrap()), Edit::Clear).unwrap();
        let env = grubenv::parse(&cleared).unwrap();
        assert_eq!(env.get("saved_entry"), Some("x"));
        assert_eq!(env.get("hn_trial"), Some("0"));
        assert_eq!(env.get("hn_tries"), None);
        assert_eq!(counter(&env), Counter::default());
        // Garbage is replaced by a fresh block.
        for junk in [&b""[..], b"garbage", &[0u8; 1024][..]] {
            let b = edit_block(Some(junk), Edit::Start { tries: 3 }).unwrap();
            assert_eq!(
                counter(&grubenv::parse(&b).unwrap()),
                Counter {
                    trial: true,
                    tries: 2
                }
            );
        }
        // A full block keeps only our variables rather than failing.
        let mut full = GrubEnv::new();
        full.set("big", &"x".repeat(BLOCK_SIZE - 40)).unwrap();
        let b = edit_block(Some(&full.to_block().unwrap()), Edit::Start { tries: 2 }).unwrap();
        let env = grubenv::parse(&b).unwrap();
        assert_eq!(env.get("big"), None);
        assert_eq!(
            counter(&env),
            Counter {
                trial: true,
                tries: 1
            }
        );
    }

    #[test]
    fn counter_tolerates_garbage() {
        let mut env = GrubEnv::new();
        env.set("hn_trial", "yes").unwrap();
        env.set("hn_tries", "many").unwrap();
        assert_eq!(
            counter(&env),
            Counter {
                trial: false,
                tries: 0
            }
        );
    }

    #[test]
    fn parses_mountinfo() {
        let mi = "\
22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
30 22 8:1 /EFI /mnt/sub rw,relatime - vfat /dev/sda1 rw
31 22 8:1 / /boot/efi ro,relatime shared:5 - vfat /dev/sda1 ro,fmask=0077
32 22 8:1 / /mnt/with\\040space rw,relatime - vfat /dev/sda1 rw
33 22 8:10 / /x rw - vfat /dev/sda10 rw
bad line
34 22 8:1
";
        assert_eq!(
            mounts_of(mi, 8, 1),
            vec![
                Mounted {
                    mount_point: "/mnt/with space".into(),
                    read_only: false
                },
                Mounted {
                    mount_point: "/boot/efi".into(),
                    read_only: true
                },
            ]
        );
        assert!(mounts_of(mi, 9, 9).is_empty());
        assert_eq!(unescape_octal("a\\777b\\01"), "a?b\\01");
    }

    /// A disk image with a protective MBR and a GPT (primary and backup)
    /// holding `types` as partitions 1, 2, …
    fn gpt_disk(types: &[[u8; 16]], sectors: u64) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * 512) as usize];
        d[446 + 4] = 0xEE;
        d[510] = 0x55;
        d[511] = 0xAA;
        let mut array = vec![0u8; 128 * 128];
        for (i, t) in types.iter().enumerate() {
            array[i * 128..i * 128 + 16].copy_from_slice(t);
            array[i * 128 + 16] = i as u8 + 1; // unique GUID
        }
        let header = |lba: u64, entries: u64| {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&lba.to_le_bytes());
            h[72..80].copy_from_slice(&entries.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
            let c = crc32(&h);
            h[16..20].copy_from_slice(&c.to_le_bytes());
            h
        };
        d[512..512 + 92].copy_from_slice(&header(1, 2));
        d[1024..1024 + array.len()].copy_from_slice(&array);
        let last = sectors - 1;
        let bk_entries = last - 32;
        let off = (bk_entries * 512) as usize;
        d[off..off + array.len()].copy_from_slice(&array);
        let off = (last * 512) as usize;
        d[off..off + 92].copy_from_slice(&header(last, bk_entries));
        d
    }

    const ESP_BYTES: [u8; 16] = [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];
    const LINUX_BYTES: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];

    #[test]
    fn reads_gpt_types() {
        let d = gpt_disk(&[ESP_BYTES, LINUX_BYTES], 100);
        let t = |d: &[u8], n| gpt_partition_type(&mut Cursor::new(d.to_vec()), n).unwrap();
        assert_eq!(t(&d, 1).as_deref(), Some(ESP_TYPE_GUID));
        assert_eq!(
            t(&d, 2).as_deref(),
            Some("0fc63daf-8483-4772-8e79-3d69d8477de4")
        );
        assert_eq!(t(&d, 3), None);
        assert_eq!(t(&d, 0), None);
        assert_eq!(t(&d, 129), None);
        // Primary header destroyed: the backup is used.
        let mut b = d.clone();
        b[512] = 0;
        assert_eq!(t(&b, 1).as_deref(), Some(ESP_TYPE_GUID));
        // Entry array corrupt in both copies: no GPT.
        let mut c = b.clone();
        c[1024 + 5] ^= 1;
        c[(100 - 1 - 32) * 512 + 5] ^= 1;
        assert_eq!(t(&c, 1), None);
        // No protective MBR: not read as GPT.
        let mut m = d.clone();
        m[446 + 4] = 0x83;
        assert_eq!(t(&m, 1), None);
        // Truncations and garbage never panic.
        for len in [0, 1, 511, 512, 600, 1024, 2048, 17000] {
            let _ = t(&d[..len.min(d.len())], 1);
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200 {
            let mut g = d.clone();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % g.len() as u64) as usize;
                g[i] = (x >> 32) as u8;
            }
            let _ = t(&g, 1);
        }
    }

    #[test]
    fn reads_sgdisk_tables() {
        let Ok(out) = std::process::Command::new("sgdisk")
            .arg("--version")
            .output()
        else {
            eprintln!("sgdisk missing; skipping");
            return;
        };
        if !out.status.success() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, vec![0u8; 8 << 20]).unwrap();
        let st = std::process::Command::new("sgdisk")
            .args([
                "-n",
                "1:2048:+2M",
                "-t",
                "1:ef00",
                "-n",
                "2:0:0",
                "-t",
                "2:8300",
            ])
            .arg(&p)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        let mut f = File::open(&p).unwrap();
        assert_eq!(
            gpt_partition_type(&mut f, 1).unwrap().as_deref(),
            Some(ESP_TYPE_GUID)
        );
        assert_eq!(
            gpt_partition_type(&mut f, 2).unwrap().as_deref(),
            Some("0fc63daf-8483-4772-8e79-3d69d8477de4")
        );
    }

    #[test]
    fn updates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // No /EFI/hninit: not ours.
        assert!(on_root(root, Op::Write(Edit::Start { tries: 3 }))
            .unwrap()
            .is_none());
        std::fs::create_dir_all(root.join(HNINIT_DIR)).unwrap();
        // No grubenv: read and clear find nothing, start creates it.
        assert_eq!(on_root(root, Op::Read).unwrap(), None);
        std::fs::write(root.join(HNINIT_DIR).join("grub.cfg"), "").unwrap();
        assert_eq!(on_root(root, Op::Read).unwrap(), Some(None));
        assert_eq!(on_root(root, Op::Write(Edit::Clear)).unwrap(), Some(None));
        let c = on_root(root, Op::Write(Edit::Start { tries: 3 })).unwrap();
        assert_eq!(
            c,
            Some(Some(Counter {
                trial: true,
                tries: 2
            }))
        );
        let path = root.join(GRUBENV);
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(std::fs::read(&path).unwrap().len(), BLOCK_SIZE);
        let c = on_root(root, Op::Write(Edit::Clear)).unwrap();
        assert_eq!(c, Some(Some(Counter::default())));
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            ino,
            "replaced, not updated in place"
        );
        assert_eq!(
            on_root(root, Op::Read).unwrap(),
            Some(Some(Counter::default()))
        );
        // An oversized file is rewritten and cut to 1024 bytes, in place.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"xx", 5000)
            .unwrap();
        on_root(root, Op::Write(Edit::Start { tries: 4 })).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), BLOCK_SIZE as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        assert_eq!(
            on_root(root, Op::Read).unwrap(),
            Some(Some(Counter {
                trial: true,
                tries: 3
            }))
        );
        // A malformed block is an error to read, but is repaired by a write.
        std::fs::write(&path, b"junk").unwrap();
        assert!(on_root(root, Op::Read).is_err());
        assert!(on_root(root, Op::Write(Edit::Clear)).is_ok());
    }
}
