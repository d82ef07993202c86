//! `hnctl`'s logic as functions returning values, so that it runs against any
//! directory (tests use a temporary "host partition"): locating the host partition
//! and the image names, `status` (text and a stable JSON form), the boot log, and
//! the operations (`stage`, `unstage`, `revert`, `mark-good`) with their errors
//! classified into hnctl's exit codes. `src/bin/hnctl.rs` only parses arguments
//! and prints.

use crate::slots::bootlog::{self, utc, BOOT_LOG};
use crate::slots::trust_state;
use crate::slots::dir::{Dir, RealDir};
use crate::slots::{self, Names, Trial, TRIAL};
use crate::slots::stage::{self, RevertReport, StageOptions, StageReport, StageSource, UnstageReport};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_REFUSED: i32 = 3;
pub const EXIT_INTERRUPTED: i32 = 4;

/// Lines of `boot.log` shown by `status`.
pub const STATUS_LOG_LINES: usize = 10;
const MAX_READ_LOG: u64 = 4 << 20;
const MAX_SMALL: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operation failed (exit 1).
    Failed,
    /// Bad arguments (exit 2).
    Usage,
    /// Refused: not enough space, not a bootable image, digest mismatch (exit 3).
    Refused,
    /// A download was interrupted; its `.part` is kept and the same command resumes it (exit 4).
    Interrupted,
}

/// `<what was tried>: <what was found>`.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {found}")]
pub struct CtlError {
    pub what: String,
    pub found: String,
    pub kind: ErrorKind,
}

impl CtlError {
    pub fn failed(what: impl Into<String>, found: impl std::fmt::Display) -> CtlError {
        CtlError {
            what: what.into(),
            found: found.to_string(),
            kind: ErrorKind::Failed,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Failed => EXIT_FAILED,
            ErrorKind::Usage => EXIT_USAGE,
            ErrorKind::Refused => EXIT_REFUSED,
            ErrorKind::Interrupted => EXIT_INTERRUPTED,
        }
    }
}

/// Where hnctl looks on the running system; tests point these elsewhere.
#[derive(Clone, Debug)]
pub struct System {
    pub proc_cmdline: PathBuf,
    pub mountinfo: PathBuf,
    /// The sysfs root (`/sys`).
    pub sys: PathBuf,
    /// Tried in order when `--hostpart` is not given.
    pub hostpart_candidates: Vec<PathBuf>,
}

impl Default for System {
    fn default() -> Self {
        System {
            proc_cmdline: "/proc/cmdline".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            sys: "/sys".into(),
            hostpart_candidates: crate::layout::HOSTPART_CANDIDATES.iter().map(PathBuf::from).collect(),
        }
    }
}

/// The host partition and the image names on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub hostpart: PathBuf,
    /// `real_root=`, a path on the host partition (`/hn-root.img`).
    pub real_root: String,
    /// The directory holding the image and its siblings.
    pub images: PathBuf,
    pub names: Names,
}

impl Host {
    /// `<hostpart>/hn-state`.
    pub fn state_dir(&self) -> PathBuf {
        self.hostpart.join(crate::layout::STATE_DIR)
    }

    pub fn image_path(&self, name: &str) -> PathBuf {
        self.images.join(name)
    }

    fn open_images(&self) -> Result<RealDir, CtlError> {
        RealDir::open(&self.images, false)
            .map_err(|e| CtlError::failed(format!("opening the images directory {}", self.images.display()), e))
    }

    /// The state directory, created (0700) when `create`; `None` when it is missing.
    fn open_state(&self, create: bool) -> Result<Option<RealDir>, CtlError> {
        let dir = self.state_dir();
        match RealDir::open(&dir, create) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Ok(None),
            Err(e) => Err(CtlError::failed(
                format!("opening the state directory {}", dir.display()),
                e,
            )),
        }
    }
}

/// Finds the host partition (`--hostpart`, else the first candidate directory) and
/// the image (`--real-root`, else `real_root=` of the kernel command line, else
/// `/hn-root.img`).
pub fn locate(hostpart: Option<&Path>, real_root: Option<&str>, sys: &System) -> Result<Host, CtlError> {
    let hostpart = match hostpart {
        Some(p) if p.is_dir() => p.to_path_buf(),
        Some(p) => {
            return Err(CtlError::failed(
                "locating the host partition",
                format!("{} is not a directory", p.display()),
            ))
        }
        None => sys
            .hostpart_candidates
            .iter()
            .find(|p| p.is_dir())
            .cloned()
            .ok_or_else(|| {
                let tried: Vec<String> = sys
                    .hostpart_candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                CtlError::failed(
                    "locating the host partition",
                    format!("none of {} is a directory (give --hostpart DIR)", tried.join(", ")),
                )
            })?,
    };
    let real_root = match real_root {
        Some(r) => crate::cmdline::check_image_path(r).map_err(|found| CtlError {
            what: "--real-root".into(),
            found,
            kind: ErrorKind::Usage,
        })?,
        None => match std::fs::read_to_string(&sys.proc_cmdline) {
            // parse() validates real_root= and keeps the default when it is malformed.
            Ok(text) => crate::cmdline::parse(&text).0.real_root,
            Err(_) => crate::cmdline::Cmdline::default().real_root,
        },
    };
    let rel = Path::new(real_root.trim_start_matches('/'));
    let file = rel.file_name().and_then(|f| f.to_str()).unwrap_or("hn-root.img");
    let images = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => hostpart.join(p),
        _ => hostpart.clone(),
    };
    Ok(Host {
        names: Names::new(file),
        hostpart,
        real_root,
        images,
    })
}

/// Which image the running system booted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booted {
    /// The slot's file name when the root's backing file is one of the images,
    /// else the backing file, else `"unknown"` (root not on a loop device).
    pub image: String,
    /// The root's loop device (`/dev/loop0`).
    pub device: Option<String>,
    /// The loop device's backing file as the kernel reports it.
    pub backing_file: Option<String>,
}

/// One image file present on the host partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// `current`, `staged`, `previous`, `broken`, `rejected` or `partial` (an
    /// interrupted stage's `.part`, removed at the next boot).
    pub role: String,
    pub name: String,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// The same as `YYYY-MM-DDTHH:MM:SSZ`.
    pub mtime_utc: String,
    /// The image's signature sidecar (`NAME.minisig`), when present.
    #[serde(default)]
    pub signature: Option<SlotSignature>,
}

/// What a slot's `.minisig` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSignature {
    pub key_id: String,
    /// The trusted comment is signed by a key trusted (and not revoked) in
    /// `/etc/hninit`; otherwise the values below are shown unverified.
    pub trusted_key: bool,
    pub version: Option<String>,
    pub compat: Option<String>,
    /// The whole trusted comment.
    pub comment: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialInfo {
    pub image: String,
    /// Boots still allowed after the current one.
    pub tries_left: u32,
    pub tries: u32,
}

/// `hnctl status --json`. Fields are only ever added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub hostpart: String,
    pub images_dir: String,
    pub real_root: String,
    pub booted: Booted,
    pub slots: Vec<SlotInfo>,
    /// `None`: not on trial.
    pub trial: Option<TrialInfo>,
    pub revert_requested: bool,
    /// The staged image's sha256 (`hn-root-new.img.sha256`), when present.
    pub staged_digest: Option<String>,
    /// The last lines of `hn-state/boot.log`.
    pub boot_log: Vec<String>,
    /// The anti-rollback floor (`hn-state/trust.json`): the highest version marked good.
    #[serde(default)]
    pub anti_rollback_floor: Option<String>,
    /// A download being staged (or interrupted) from its resume record.
    #[serde(default)]
    pub stage_in_progress: Option<StageInProgress>,
}

/// What `hn-root-new.img.part.json` (the resume record of `hnctl stage URL`) says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageInProgress {
    pub url: String,
    /// Image bytes durable in the `.part`.
    pub written: u64,
    /// Bytes of the file on the server reached (compressed bytes for zstd).
    pub offset: u64,
    /// The size of the file on the server, when known.
    pub remote_len: Option<u64>,
    pub zstd: bool,
}

fn slot_roles(n: &Names) -> [(&'static str, &str); 6] {
    [
        ("current", &n.current),
        ("staged", &n.new),
        ("previous", &n.old),
        ("broken", &n.broken),
        ("rejected", &n.rejected),
        ("partial", &n.part),
    ]
}

/// Gathers the state of the host partition and of the running system.
pub fn status(host: &Host, sys: &System) -> Result<Status, CtlError> {
    let images = host.open_images()?;
    let store = crate::trust::KeyStore::load(Path::new(crate::trust::keystore::DEFAULT_ETC)).unwrap_or_default();
    let mut slots = Vec::new();
    for (role, name) in slot_roles(&host.names) {
        let path = host.image_path(name);
        match std::fs::symlink_metadata(&path) {
            Ok(md) => slots.push(SlotInfo {
                role: role.into(),
                name: name.to_string(),
                size: md.len(),
                mtime: md.mtime(),
                mtime_utc: utc(md.mtime().max(0) as u64),
                signature: slot_signature(&images, name, &store),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CtlError::failed(format!("reading {}", path.display()), e)),
        }
    }
    let trial = match host.open_state(false)? {
        Some(state) => current_trial(host, &images, &state)?,
        None => None,
    };
    let revert_requested = images.exists(&host.names.revert_flag).map_err(|e| {
        CtlError::failed(
            format!("reading {}", host.image_path(&host.names.revert_flag).display()),
            e,
        )
    })?;
    let staged_digest = images
        .read(&host.names.digest, MAX_SMALL)
        .map_err(|e| CtlError::failed(format!("reading {}", host.image_path(&host.names.digest).display()), e))?
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        });
    let stage_in_progress = images
        .read(&format!("{}.json", host.names.part), MAX_SMALL)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    // A missing or unreadable log only leaves this part empty (`hnctl log` says why).
    let boot_log = boot_log(host, Some(STATUS_LOG_LINES)).unwrap_or_default();
    let anti_rollback_floor = match host.open_state(false)? {
        Some(st) => match trust_state::read_floor(&st) {
            Ok(f) => f.map(|v| v.to_string()),
            Err(e) => Some(format!("unreadable: {e}")),
        },
        None => None,
    };
    Ok(Status {
        hostpart: host.hostpart.display().to_string(),
        images_dir: host.images.display().to_string(),
        real_root: host.real_root.clone(),
        booted: booted(sys, host),
        slots,
        trial,
        revert_requested,
        staged_digest,
        boot_log,
        anti_rollback_floor,
        stage_in_progress,
    })
}

fn slot_signature(images: &RealDir, name: &str, store: &crate::trust::KeyStore) -> Option<SlotSignature> {
    let raw = images.read(&Names::sig(name), crate::trust::minisign::MAX_SIGNATURE_FILE).ok()??;
    let sig = crate::trust::Signature::parse(&raw).ok()?;
    let trusted = trust_state::slot_meta(images, name, store);
    let meta = crate::trust::Meta::parse(&sig.trusted_comment).ok();
    Some(SlotSignature {
        key_id: sig.key_id.to_string(),
        trusted_key: trusted.is_some(),
        version: meta.as_ref().and_then(|m| m.version.as_ref()).map(|v| v.to_string()),
        compat: meta.as_ref().and_then(|m| m.compat.clone()),
        comment: String::from_utf8_lossy(&sig.trusted_comment).chars().filter(|c| !c.is_control()).collect(),
    })
}

/// The trial state when it is about the current image (a stale one is not shown).
fn current_trial(host: &Host, images: &RealDir, state: &RealDir) -> Result<Option<TrialInfo>, CtlError> {
    let raw = state
        .read(TRIAL, MAX_SMALL)
        .map_err(|e| CtlError::failed(format!("reading {}", host.state_dir().join(TRIAL).display()), e))?;
    let Some(t) = raw.and_then(|b| serde_json::from_slice::<Trial>(&b).ok()).map(Trial::clamped) else {
        return Ok(None);
    };
    let cur = images
        .id(&host.names.current)
        .map_err(|e| CtlError::failed(format!("reading {}", host.image_path(&host.names.current).display()), e))?;
    Ok((cur == Some(t.image)).then(|| TrialInfo {
        image: host.names.current.clone(),
        tries_left: t.tries_left,
        tries: t.tries,
    }))
}

/// The root filesystem's loop device and its backing file, from mountinfo and sysfs.
pub fn booted(sys: &System, host: &Host) -> Booted {
    let unknown = Booted {
        image: "unknown".into(),
        device: None,
        backing_file: None,
    };
    let Ok(mountinfo) = std::fs::read_to_string(&sys.mountinfo) else {
        return unknown;
    };
    let Some((majmin, source)) = root_mount(&mountinfo) else {
        return unknown;
    };
    let Some(name) = loop_name(sys, &majmin, &source) else {
        return unknown;
    };
    let device = Some(format!("/dev/{name}"));
    let backing = std::fs::read_to_string(sys.sys.join("block").join(&name).join("loop/backing_file"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
        .filter(|s| !s.is_empty());
    let Some(backing) = backing else {
        return Booted { device, ..unknown };
    };
    let image = slot_of(host, &backing).unwrap_or_else(|| backing.clone());
    Booted {
        image,
        device,
        backing_file: Some(backing),
    }
}

/// `(major:minor, source)` of the topmost mount on `/`.
fn root_mount(mountinfo: &str) -> Option<(String, String)> {
    mountinfo.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        if f.get(4) != Some(&"/") {
            return None;
        }
        Some((f.get(2)?.to_string(), f.get(sep + 2)?.to_string()))
    })
}

/// `loopN` for the root device, from its mount source or its device number.
fn loop_name(sys: &System, majmin: &str, source: &str) -> Option<String> {
    let is_loop = |n: &str| {
        n.strip_prefix("loop")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(n) = source.strip_prefix("/dev/").filter(|n| is_loop(n)) {
        return Some(n.to_string());
    }
    // A partition of a loop device resolves to …/loopN/loopNpM: take the disk.
    let target = std::fs::read_link(sys.sys.join("dev/block").join(majmin)).ok()?;
    target
        .components()
        .rev()
        .filter_map(|c| c.as_os_str().to_str())
        .find(|c| is_loop(c))
        .map(str::to_string)
}

/// The slot whose file is `backing` (same inode, else same path).
fn slot_of(host: &Host, backing: &str) -> Option<String> {
    if backing.ends_with(" (deleted)") {
        return None;
    }
    let b = std::fs::metadata(backing).ok();
    slot_roles(&host.names).iter().map(|(_, n)| n.to_string()).find(|n| {
        let p = host.image_path(n);
        match (&b, std::fs::metadata(&p)) {
            (Some(b), Ok(s)) => b.dev() == s.dev() && b.ino() == s.ino(),
            _ => Path::new(backing) == p,
        }
    })
}

/// The last `n` lines of `hn-state/boot.log` (all of it for `None`).
pub fn boot_log(host: &Host, n: Option<usize>) -> Result<Vec<String>, CtlError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = host.state_dir().join(BOOT_LOG);
    let what = || format!("reading {}", path.display());
    let mut f = crate::sys::saferead::open_path(&path).map_err(|e| CtlError::failed(what(), e))?;
    let len = f.metadata().map_err(|e| CtlError::failed(what(), e))?.len();
    // The log is bounded; should it not be, only its end is read.
    let skip = len.saturating_sub(MAX_READ_LOG);
    f.seek(SeekFrom::Start(skip)).map_err(|e| CtlError::failed(what(), e))?;
    let mut buf = Vec::new();
    f.take(MAX_READ_LOG)
        .read_to_end(&mut buf)
        .map_err(|e| CtlError::failed(what(), e))?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if skip > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    let from = n.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    Ok(lines[from..].iter().map(|l| l.to_string()).collect())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Status {
    /// What `hnctl status` prints.
    pub fn render_text(&self, names: &Names) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "host partition  {}", self.hostpart);
        if self.images_dir != self.hostpart {
            let _ = writeln!(s, "images in       {}", self.images_dir);
        }
        let booted = match (&self.booted.device, &self.booted.backing_file) {
            (Some(d), Some(b)) if *b != self.booted.image => {
                format!("{} (loop device {d}, backing file {b})", self.booted.image)
            }
            (Some(d), _) => format!("{} (loop device {d})", self.booted.image),
            _ => "unknown (the root filesystem is not on a loop device)".into(),
        };
        let _ = writeln!(s, "booted          {booted}");
        let _ = writeln!(s, "images");
        if self.slots.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for slot in &self.slots {
            let _ = writeln!(
                s,
                "  {:<9} {:<28} {:>10}  {}",
                slot.role,
                slot.name,
                human(slot.size),
                slot.mtime_utc
            );
            match &slot.signature {
                Some(g) => {
                    let _ = writeln!(
                        s,
                        "            signed by key {}{}: version={} compat={}",
                        g.key_id,
                        if g.trusted_key { " (trusted)" } else { " (not trusted here: unverified)" },
                        g.version.as_deref().unwrap_or("-"),
                        g.compat.as_deref().unwrap_or("-")
                    );
                }
                None if slot.role != "partial" => {
                    let _ = writeln!(s, "            unsigned");
                }
                None => {}
            }
        }
        let _ = writeln!(
            s,
            "anti-rollback   {}",
            match &self.anti_rollback_floor {
                Some(f) => format!("floor {f} (a staged image below it is refused)"),
                None => "no floor yet (set by mark-good of a signed image)".into(),
            }
        );
        let trial = match &self.trial {
            Some(t) => format!(
                "{} on trial: {} of {} tries left; `hnctl mark-good` ends it",
                t.image, t.tries_left, t.tries
            ),
            None => "not on trial".into(),
        };
        let _ = writeln!(s, "trial           {trial}");
        let has = |role: &str| self.slots.iter().any(|x| x.role == role);
        let revert = match (self.revert_requested, has("previous")) {
            (false, _) => "not requested".to_string(),
            (true, true) => format!("requested: the next boot reverts to {}", names.old),
            (true, false) => format!("requested, but there is no {}: the next boot clears it", names.old),
        };
        let _ = writeln!(s, "revert          {revert}");
        let digest = match &self.staged_digest {
            Some(d) => format!("{} {d}", names.digest),
            None => "none".into(),
        };
        let _ = writeln!(s, "staged digest   {digest}");
        if let Some(p) = &self.stage_in_progress {
            let of = match p.remote_len {
                Some(n) if !p.zstd => format!(" of {}", human(n)),
                Some(n) => format!(" ({} of {} compressed)", human(p.offset), human(n)),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "staging         {} from {}: {}{of} written (`hnctl stage` of the same URL resumes it)",
                names.part,
                p.url,
                human(p.written)
            );
        }
        if self.boot_log.is_empty() {
            let _ = writeln!(s, "boot.log        (empty or missing)");
        } else {
            let _ = writeln!(s, "boot.log (last {} lines)", self.boot_log.len());
            for l in &self.boot_log {
                let _ = writeln!(s, "  {l}");
            }
        }
        s
    }
}

/// `hnctl stage`: `image` is a path or `-` (standard input); the signature is
/// `signature`, else `IMAGE.minisig` when it exists, checked against the key
/// store in `keys` (`/etc/hninit`) before the copy and over the copy before it
/// becomes `hn-root-new.img`.
#[allow(clippy::too_many_arguments)]
pub fn stage(
    host: &Host,
    image: &str,
    sha256: Option<[u8; 32]>,
    reflink: bool,
    signature: Option<&Path>,
    keys: &Path,
    allow_downgrade: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<StageReport, CtlError> {
    let what = format!("staging {image}");
    let refused = |found: String| CtlError { what: what.clone(), found, kind: ErrorKind::Refused };
    let store = crate::trust::KeyStore::load(keys).map_err(|e| refused(format!("the key store: {e}")))?;
    let sig_path = match signature {
        Some(p) => Some(p.to_path_buf()),
        None if image != "-" => Some(PathBuf::from(format!("{image}{}", crate::trust::SIG_SUFFIX))),
        None => None,
    };
    let raw_sig = match &sig_path {
        None => None,
        Some(p) => match std::fs::read(p) {
            Ok(b) if b.len() <= crate::trust::minisign::MAX_SIGNATURE_FILE => Some(b),
            Ok(b) => return Err(refused(format!("{}: {} bytes, not a signature", p.display(), b.len()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && signature.is_none() => None,
            Err(e) => return Err(CtlError::failed(format!("reading the signature {}", p.display()), e)),
        },
    };
    let mut source = if image == "-" {
        StageSource::stdin()
    } else {
        StageSource::open(Path::new(image))
    }
    .map_err(|e| CtlError::failed(what.clone(), e))?;
    let images = host.open_images()?;
    let free_bytes = stage::free_bytes(&host.images)
        .map_err(|e| CtlError::failed(format!("measuring the free space in {}", host.images.display()), e))?;
    let opts = StageOptions {
        sha256,
        reflink,
        free_bytes,
    };
    let (floor, compat) = stage_policy(host, &images, &store, &what)?;
    let parsed = raw_sig.as_deref().and_then(|r| crate::trust::Signature::parse(r).ok());
    let allowance = match (&parsed, allow_downgrade) {
        (Some(sig), true) => crate::trust::Meta::parse(&sig.trusted_comment)
            .ok()
            .and_then(|m| m.version)
            .map(|v| crate::trust::Allowance::for_signature(sig, v)),
        _ => None,
    };
    let context = crate::trust::Context { current_compat: compat.as_deref(), floor: floor.as_ref(), allowance: allowance.as_ref() };
    let trust = stage::StageTrust { store: &store, signature: raw_sig.clone(), context };
    let report = stage::stage_signed(&images, &host.names, &mut source, &opts, Some(&trust), progress).map_err(|e| CtlError {
        what: what.clone(),
        found: e.to_string(),
        kind: if e.is_refusal() {
            ErrorKind::Refused
        } else {
            ErrorKind::Failed
        },
    })?;
    // Recorded after the image is staged: a crash before leaves no allowance, and
    // the boot refuses the downgrade (the operator stages again).
    if let (Some(a), true) = (&allowance, floor.as_ref().is_some_and(|f| allowance.as_ref().is_some_and(|a| &a.version < f))) {
        record_allowance(host, a, &what)?;
    }
    Ok(report)
}

/// What the next boot will judge a staged image against, besides the keys: the
/// anti-rollback floor and the running image's `compat=` (also for `stage URL`).
pub fn stage_policy(
    host: &Host,
    images: &dyn Dir,
    store: &crate::trust::KeyStore,
    what: &str,
) -> Result<(Option<crate::trust::Version>, Option<String>), CtlError> {
    let state = host.open_state(false)?;
    let floor = match &state {
        Some(st) => trust_state::read_floor(st).map_err(|e| CtlError {
            what: what.to_string(),
            found: format!("the anti-rollback state: {e}"),
            kind: ErrorKind::Refused,
        })?,
        None => None,
    };
    let compat = trust_state::slot_meta(images, &host.names.current, store).and_then(|(_, m)| m.compat);
    Ok((floor, compat))
}

/// Records `--allow-downgrade` for a staged image below the floor.
pub fn record_allowance(host: &Host, a: &crate::trust::Allowance, what: &str) -> Result<(), CtlError> {
    let st = host.open_state(true)?.ok_or_else(|| CtlError::failed(what.to_string(), "no state directory"))?;
    trust_state::write_allowance(&st, a, &bootlog::now())
        .map_err(|e| CtlError::failed(format!("recording the downgrade allowance in {}", host.state_dir().display()), e))
}

/// `hnctl unstage`.
pub fn unstage(host: &Host) -> Result<UnstageReport, CtlError> {
    let images = host.open_images()?;
    stage::unstage(&images, &host.names).map_err(|e| CtlError::failed(format!("unstaging {}", host.names.new), e))
}

/// `hnctl revert`.
pub fn revert(host: &Host) -> Result<RevertReport, CtlError> {
    let images = host.open_images()?;
    stage::request_revert(&images, &host.names)
        .map_err(|e| CtlError::failed(format!("requesting a revert ({})", host.names.revert_flag), e))
}

/// Is a revert requested (the flag present)?
pub fn revert_requested(host: &Host) -> bool {
    host.image_path(&host.names.revert_flag).exists()
}

/// What `hnctl mark-good` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkGood {
    /// The trial that was ended; `None`: the image was not on trial.
    pub trial: Option<Trial>,
    /// GRUB's counter: `Ok(true)` a grubenv was updated, `Ok(false)` none found;
    /// `None`: left alone (`--no-grub`).
    pub grub: Option<Result<bool, String>>,
}

/// `hnctl mark-good`: ends the current image's trial, then (when `grub`) clears
/// GRUB's counter on the ESP.
pub fn mark_good(host: &Host, grub: bool) -> Result<MarkGood, CtlError> {
    let images = host.open_images()?;
    let state = host.open_state(true)?;
    let trial = match &state {
        Some(state) => slots::mark_good(&images, state, &host.names)
            .map_err(|e| CtlError::failed(format!("ending the trial of {}", host.names.current), e))?,
        None => None,
    };
    // The image marked good raises the anti-rollback floor to its signed version.
    if let (Some(state), Ok(store)) = (&state, crate::trust::KeyStore::load(Path::new(crate::trust::keystore::DEFAULT_ETC))) {
        if let Some(v) = trust_state::slot_meta(&images, &host.names.current, &store).and_then(|(_, m)| m.version) {
            trust_state::raise_floor(state, &v)
                .map_err(|e| CtlError::failed("raising the anti-rollback floor", e))?;
        }
    }
    let grub = grub.then(crate::slots::esp::clear_trial_counter);
    Ok(MarkGood { trial, grub })
}

/// Reads and checks a configuration file given to `hnctl` the safe way (a FIFO,
/// a device or a symlink is refused instead of blocking; at most the config size cap).
pub fn read_config_file(path: &Path) -> Result<crate::config::parse::Parsed, String> {
    let raw = crate::sys::saferead::read_path(path, crate::config::parse::MAX_CONFIG as u64).map_err(|e| e.to_string())?;
    crate::config::parse::parse(&raw).map_err(|e| e.to_string())
}

/// Creates `dir` and its missing parents, each 0700; an existing `dir` is kept as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// A directory of its own in the temporary directory (like `mkdtemp`: a random
/// name, created 0700 by one `mkdir` that fails if the name exists), removed
/// with its contents when dropped.
pub struct PrivateTempDir(PathBuf);

impl PrivateTempDir {
    pub fn new(prefix: &str) -> io::Result<PrivateTempDir> {
        use std::os::unix::fs::DirBuilderExt;
        for _ in 0..16 {
            let mut r = [0u8; 8];
            crate::firstboot::identity::fill_random(&mut r).map_err(io::Error::other)?;
            let p = std::env::temp_dir().join(format!("{prefix}-{}", crate::util::hex(&r)));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(PrivateTempDir(p)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free temporary directory name"))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateTempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys_in(root: &Path) -> System {
        System {
            proc_cmdline: root.join("cmdline"),
            mountinfo: root.join("mountinfo"),
            sys: root.join("sys"),
            hostpart_candidates: vec![root.join("hostpart"), root.join("run/hninit/hostpart")],
        }
    }

    #[test]
    fn locates_hostpart_and_names() {
        let t = tempfile::tempdir().unwrap();
        let sys = sys_in(t.path());
        assert!(locate(None, None, &sys).is_err());
        std::fs::create_dir_all(t.path().join("run/hninit/hostpart")).unwrap();
        let h = locate(None, None, &sys).unwrap();
        assert_eq!(h.hostpart, t.path().join("run/hninit/hostpart"));
        assert_eq!(h.real_root, "/hn-root.img");
        assert_eq!(h.images, h.hostpart);
        std::fs::write(&sys.proc_cmdline, "quiet real_root=/images/sys.img ro\n").unwrap();
        std::fs::create_dir_all(t.path().join("hostpart")).unwrap();
        let h = locate(None, None, &sys).unwrap();
        assert_eq!(h.hostpart, t.path().join("hostpart"));
        assert_eq!(h.images, t.path().join("hostpart/images"));
        assert_eq!(h.names.old, "sys-old.img");
        let h = locate(Some(t.path()), Some("/a/b/x.img"), &sys).unwrap();
        assert_eq!(h.images, t.path().join("a/b"));
        let e = locate(Some(t.path()), Some("rel.img"), &sys).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        let e = locate(Some(&t.path().join("nope")), None, &sys).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_FAILED);
    }

    #[test]
    fn finds_the_loop_backing_file_of_the_root() {
        let t = tempfile::tempdir().unwrap();
        let sys = sys_in(t.path());
        let hp = t.path().join("hostpart");
        std::fs::create_dir_all(&hp).unwrap();
        std::fs::write(hp.join("hn-root.img"), "A").unwrap();
        std::fs::write(hp.join("hn-root-old.img"), "B").unwrap();
        let host = locate(Some(&hp), Some("/hn-root.img"), &sys).unwrap();
        assert_eq!(booted(&sys, &host).image, "unknown");
        std::fs::write(
            &sys.mountinfo,
            "22 1 8:2 / / rw - ext4 /dev/sda2 rw\n\
             25 22 0:21 / /proc rw - proc proc rw\n\
             30 1 7:3 / / ro,relatime shared:1 - ext4 /dev/root ro\n",
        )
        .unwrap();
        assert_eq!(booted(&sys, &host).image, "unknown");
        let loop3 = sys.sys.join("devices/virtual/block/loop3");
        std::fs::create_dir_all(loop3.join("loop")).unwrap();
        std::fs::create_dir_all(sys.sys.join("dev/block")).unwrap();
        std::fs::create_dir_all(sys.sys.join("block")).unwrap();
        std::os::unix::fs::symlink(&loop3, sys.sys.join("dev/block/7:3")).unwrap();
        std::os::unix::fs::symlink(&loop3, sys.sys.join("block/loop3")).unwrap();
        let old = hp.join("hn-root-old.img");
        std::fs::write(loop3.join("loop/backing_file"), format!("{}\n", old.display())).unwrap();
        let b = booted(&sys, &host);
        assert_eq!(b.image, "hn-root-old.img");
        assert_eq!(b.device.as_deref(), Some("/dev/loop3"));
        std::fs::write(loop3.join("loop/backing_file"), "/elsewhere/x.img (deleted)\n").unwrap();
        assert_eq!(booted(&sys, &host).image, "/elsewhere/x.img (deleted)");
        // btrfs roots show an anonymous device number; the source names the loop device.
        std::fs::write(&sys.mountinfo, "30 1 0:45 / / rw - btrfs /dev/loop3 rw\n").unwrap();
        assert_eq!(booted(&sys, &host).device.as_deref(), Some("/dev/loop3"));
    }

    #[test]
    fn private_temp_dirs_are_0700_unpredictable_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let a = PrivateTempDir::new("hnctl-test").unwrap();
        let b = PrivateTempDir::new("hnctl-test").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(!a.path().to_string_lossy().contains(&std::process::id().to_string()) || a.path().to_string_lossy().len() > 30);
        assert_eq!(std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777, 0o700);
        let p = a.path().to_path_buf();
        std::fs::write(p.join("x"), "y").unwrap();
        drop(a);
        assert!(!p.exists());
    }

    #[test]
    fn boot_log_tail() {
        let t = tempfile::tempdir().unwrap();
        let sys = sys_in(t.path());
        let host = locate(Some(t.path()), Some("/hn-root.img"), &sys).unwrap();
        assert!(boot_log(&host, None).is_err());
        std::fs::create_dir_all(host.state_dir()).unwrap();
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(host.state_dir().join(BOOT_LOG), text).unwrap();
        assert_eq!(boot_log(&host, None).unwrap().len(), 30);
        assert_eq!(boot_log(&host, Some(2)).unwrap(), ["line 29", "line 30"]);
        assert_eq!(boot_log(&host, Some(100)).unwrap().len(), 30);
    }
}
