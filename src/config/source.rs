//! Where a host's configuration comes from at boot, first found wins:
//!
//! 1. `hn.config=` on the command line ([`ConfigArg`]): a block device
//!    (`LABEL=`, `UUID=`, `PARTLABEL=`, `PARTUUID=`, `/dev/…`) with an optional
//!    `@OFFSET` (a tar archive at that byte offset; without it, JSON at byte 0 if
//!    the device starts with `{`, else a tar archive at byte 524288), or a path on
//!    the host partition (`hn.config=/hn-state/custom.json`). Given and not
//!    readable is an error on a fresh host (no fallback).
//! 2. The Xen/Gandi swap device: the candidates of [`choose_candidates`] in order
//!    (PARTLABEL `gandiswap`, a swap with LABEL `swap`, `/dev/xvdz1`, `/dev/xvdz`,
//!    `/dev/sdb`, `/dev/xvda2`, `/dev/vdb`; only a device with a swap signature
//!    is one); the first whose block at byte 524288 is a tar header is read
//!    (1 MiB at most) and its member `gandi/config` (or `config`) is the JSON.
//! 3. `<hostpart>/hn-state/host.json` (bare metal).
//! 4. `<hostpart>/hn-state/config.json`, the last configuration applied, so that
//!    every later image is instantiated as the same host once the source is gone.
//!
//! A source that exists but cannot be read or parsed is an error on a host not
//! yet instantiated, never "no configuration, so a fresh host"; on an
//! instantiated host (`hn-state/config.json` exists) it is a warning and the
//! stored configuration is used, and a configuration on removable media is
//! ignored unless `hn.config=` names it ([`trust`], docs/config.md). A found [`Source`] can [`Source::wipe`] a
//! device archive (its secrets) once the configuration is applied; files are the
//! operator's and are left alone.

use crate::config::parse::{self as configparse, ConfigError, Parsed, MAX_CONFIG};
use crate::sys::devspec::{BlockDev, DevSpec};
use crate::slots::dir::{self as hostdir, Dir};
use crate::sys::probe::{self, FsType, Superblock};
use crate::config::tar::{self as ustar, TarError, BLOCK, MAX_ARCHIVE};
use crate::config::trust;
use crate::sys::saferead::{Follow, SafeDir};
use sha2::Digest;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Byte offset of the configuration archive on the swap device.
pub const ARCHIVE_OFFSET: u64 = 524288;
/// Member names of the configuration in the archive (`./` prefixes are ignored).
pub const MEMBERS: &[&str] = &["gandi/config", "config"];
/// The bare-metal configuration, relative to the host partition.
pub const HOST_JSON: &str = crate::layout::HOST_JSON;
/// The last configuration applied, relative to the host partition.
pub const LAST_APPLIED: &str = crate::layout::LAST_APPLIED;
/// [`LAST_APPLIED`]'s name inside the `hn-state` directory.
pub const LAST_APPLIED_NAME: &str = "config.json";
/// PARTLABEL of Gandi's swap partition.
pub const SWAP_PARTLABEL: &str = "gandiswap";
/// LABEL of a swap device that may hold the archive.
pub const SWAP_LABEL: &str = "swap";
/// Fixed device paths tried after the labels, in order.
pub const SWAP_PATHS: &[&str] = &["/dev/xvdz1", "/dev/xvdz", "/dev/sdb", "/dev/xvda2", "/dev/vdb"];
/// The largest swap page size: a wipe never touches a swap header below it.
const MAX_PAGE: u64 = 65536;

/// Why no configuration could be read. Each names the device or file.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("hn.config={value:?}: {reason}")]
    Arg { value: String, reason: String },
    #[error("config device {spec}: no block device matches")]
    NotFound { spec: String },
    #[error("config device {spec} is ambiguous: {} all match", devices.join(" and "))]
    Ambiguous { spec: String, devices: Vec<String> },
    #[error("{what}: {error}")]
    Io {
        what: String,
        #[source]
        error: io::Error,
    },
    #[error("{what}: {error}")]
    Tar {
        what: String,
        #[source]
        error: TarError,
    },
    #[error("{what}: {error}")]
    Config {
        what: String,
        #[source]
        error: ConfigError,
    },
    #[error("{what}: {reason}")]
    Missing { what: String, reason: String },
    #[error("{what}: not wiped: {reason}")]
    Wipe { what: String, reason: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let what = what.into();
    move |error| SourceError::Io { what, error }
}

/// The value of `hn.config=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigArg {
    /// A block device. `offset`: a tar archive at that byte offset; `None`: JSON
    /// at byte 0 if the device starts with `{`, else a tar archive at 524288.
    Device { spec: DevSpec, offset: Option<u64> },
    /// A file on the host partition, relative to its root (no leading `/`).
    HostFile(String),
}

impl ConfigArg {
    pub fn parse(s: &str) -> Result<ConfigArg, SourceError> {
        let bad = |reason: &str| SourceError::Arg {
            value: s.chars().take(256).collect(),
            reason: reason.to_string(),
        };
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_control()) {
            return Err(bad("empty, too long or has a control character"));
        }
        let device = ["LABEL=", "UUID=", "PARTUUID=", "PARTLABEL=", "/dev/"]
            .iter()
            .any(|p| s.starts_with(p));
        if device {
            let (spec, offset) = match s.rsplit_once('@') {
                Some((spec, off)) if !off.is_empty() && off.bytes().all(|b| b.is_ascii_digit()) => {
                    let n = off
                        .parse::<u64>()
                        .ok()
                        .filter(|n| n % BLOCK as u64 == 0 && *n <= 1 << 40)
                        .ok_or_else(|| bad("@OFFSET must be a multiple of 512 bytes, at most 1 TiB"))?;
                    (spec, Some(n))
                }
                _ => (s, None),
            };
            let spec = DevSpec::parse(spec).map_err(|e| bad(&e.to_string()))?;
            return Ok(ConfigArg::Device { spec, offset });
        }
        if let Some(rel) = s.strip_prefix('/') {
            let ok = !rel.is_empty()
                && !rel.ends_with('/')
                && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
            if !ok {
                return Err(bad(
                    "a path on the host partition must name a file, without '.' or '..' components",
                ));
            }
            return Ok(ConfigArg::HostFile(rel.to_string()));
        }
        Err(bad(
            "expected LABEL=, UUID=, PARTUUID=, PARTLABEL= or /dev/… (optionally @OFFSET), or /PATH on the host partition",
        ))
    }
}

impl fmt::Display for ConfigArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigArg::Device { spec, offset: Some(o) } => write!(f, "{spec}@{o}"),
            ConfigArg::Device { spec, offset: None } => write!(f, "{spec}"),
            ConfigArg::HostFile(p) => write!(f, "/{p}"),
        }
    }
}

/// Which rule found the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `hn.config=`.
    Explicit,
    /// The Xen/Gandi swap device.
    SwapDevice,
    /// `hn-state/host.json`.
    HostJson,
    /// `hn-state/config.json`.
    LastApplied,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Explicit => "hn.config",
            Origin::SwapDevice => "swap device",
            Origin::HostJson => "host config",
            Origin::LastApplied => "last applied config",
        })
    }
}

/// Where a configuration was read; `Display` is one line for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub origin: Origin,
    /// The device or file read.
    pub path: PathBuf,
    /// How it was found and where in it the configuration was
    /// (`LABEL=swap, tar archive at byte 524288, member gandi/config`).
    pub detail: String,
    wipe: Option<WipePlan>,
}

/// The bytes [`Source::wipe`] zeroes, and what must still be true when it does.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WipePlan {
    offset: u64,
    len: u64,
    /// sha256 of those bytes when they were read: a changed device is not wiped.
    sha256: [u8; 32],
    /// The probe before; the same result is required after.
    before: Option<Superblock>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.origin, self.path.display())?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl Source {
    fn file(origin: Origin, path: PathBuf) -> Source {
        Source {
            origin,
            path,
            detail: String::new(),
            wipe: None,
        }
    }

    /// The byte range [`Source::wipe`] would zero (`offset`, `len`); `None` for a file.
    pub fn wipe_range(&self) -> Option<(u64, u64)> {
        self.wipe.as_ref().map(|w| (w.offset, w.len))
    }

    /// Zeroes the configuration on a device (the tar archive through its end
    /// marker, or the JSON text rounded up to 512 bytes), fsyncs, and verifies:
    /// the bytes read back as zeros and the device probes as before (a swap keeps
    /// its header, type, label and UUID). Refused if the bytes changed since they
    /// were read. A file source is left alone. Returns the bytes zeroed.
    pub fn wipe(&self) -> Result<u64, SourceError> {
        let Some(plan) = &self.wipe else { return Ok(0) };
        let what = self.to_string();
        let fail = |reason: String| SourceError::Wipe {
            what: what.clone(),
            reason,
        };
        let len = usize::try_from(plan.len)
            .ok()
            .filter(|l| *l <= MAX_ARCHIVE)
            .ok_or_else(|| fail(format!("{} bytes is more than 1 MiB", plan.len)))?;
        if matches!(&plan.before, Some(sb) if sb.fstype == FsType::Swap) && plan.offset < MAX_PAGE {
            return Err(fail(format!("byte {} is inside the swap header", plan.offset)));
        }
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| fail(format!("cannot open for writing: {e}")))?;
        let current = read_at_most(&dev, plan.offset, len).map_err(|e| fail(format!("cannot read back: {e}")))?;
        if current.len() != len || sha256(&current) != plan.sha256 {
            return Err(fail("the configuration changed on the device since it was read".into()));
        }
        dev.write_all_at(&vec![0u8; len], plan.offset)
            .map_err(|e| fail(format!("writing {len} zero bytes at byte {}: {e}", plan.offset)))?;
        dev.sync_all().map_err(|e| fail(format!("fsync: {e}")))?;
        drop(dev);
        let check = File::open(&self.path).map_err(|e| fail(format!("cannot reopen to verify: {e}")))?;
        let back = read_at_most(&check, plan.offset, len).map_err(|e| fail(format!("cannot read back: {e}")))?;
        if back.len() != len || back.iter().any(|&b| b != 0) {
            return Err(fail("the bytes did not read back as zeros".into()));
        }
        let after = probe::probe_path(&self.path).map_err(|e| fail(format!("cannot probe afterwards: {e}")))?;
        if after != plan.before {
            return Err(fail(format!(
                "the device probes differently afterwards ({} before, {} after)",
                describe_sb(&plan.before),
                describe_sb(&after)
            )));
        }
        Ok(plan.len)
    }
}

fn describe_sb(sb: &Option<Superblock>) -> String {
    match sb {
        None => "nothing recognised".into(),
        Some(s) => format!("{} label {:?} uuid {:?}", s.fstype, s.label, s.uuid),
    }
}

/// A configuration and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub parsed: Parsed,
    pub source: Source,
}

/// The configuration for this boot: `hn.config=` (`arg`), else the swap device
/// among `devs`, else `hn-state/host.json`, else the last applied one on the host
/// partition mounted at `hostpart`. `Ok(None)`: none anywhere (a host without
/// configuration). `devs` should carry PARTUUIDs when `arg` uses `PARTUUID=`.
///
/// Which source is trusted, and what one that fails does, follows
/// [`trust::decide`] (the table in docs/config.md): once the host is
/// instantiated (`hn-state/config.json` exists) a failing source is a warning
/// and the stored configuration is used, and a configuration on removable media
/// is ignored unless `hn.config=` names it.
pub fn find_config(arg: Option<&str>, devs: &[BlockDev], hostpart: &Path) -> Result<Option<Found>, SourceError> {
    let instantiated = is_instantiated(hostpart);
    // A source that failed: the error, or (instantiated) a warning and the stored config.
    let failed = |kind: trust::Kind, e: SourceError| match trust::decide(kind, instantiated, trust::Read::Failed) {
        trust::Outcome::KeepStored => {
            warn!("config: {e}; the host is instantiated: booting with its stored configuration {LAST_APPLIED}");
            load_last_applied(hostpart)
        }
        _ => Err(e),
    };
    if let Some(a) = arg {
        return match ConfigArg::parse(a).and_then(|arg| read_explicit(&arg, devs, hostpart)) {
            Ok(f) => Ok(Some(f)),
            Err(e) => failed(trust::Kind::Explicit, e),
        };
    }
    match read_swap_trusted(devs, instantiated) {
        Ok(Some(f)) => return Ok(Some(f)),
        Ok(None) => {}
        Err(e) => return failed(trust::Kind::SwapDevice { removable: false }, e),
    }
    match read_host_file(hostpart, HOST_JSON, Origin::HostJson) {
        Ok(Some(f)) => return Ok(Some(f)),
        Ok(None) => {}
        Err(e) => return failed(trust::Kind::HostJson, e),
    }
    load_last_applied(hostpart)
}

/// Whether the host is instantiated: `hn-state/config.json` exists (whatever it is).
pub fn is_instantiated(hostpart: &Path) -> bool {
    std::fs::symlink_metadata(hostpart.join(LAST_APPLIED)).is_ok()
}

/// Reads the source `hn.config=` names; its absence is an error.
pub fn read_explicit(arg: &ConfigArg, devs: &[BlockDev], hostpart: &Path) -> Result<Found, SourceError> {
    match arg {
        ConfigArg::HostFile(rel) => {
            read_host_file(hostpart, rel, Origin::Explicit)?.ok_or_else(|| SourceError::Missing {
                what: format!("hn.config {}", hostpart.join(rel).display()),
                reason: "no such file".into(),
            })
        }
        ConfigArg::Device { spec, offset } => {
            let found: Vec<&BlockDev> = devs.iter().filter(|d| spec.matches(d)).collect();
            let path = match (found.as_slice(), spec) {
                ([one], _) => one.path.clone(),
                ([], DevSpec::Path(p)) => PathBuf::from(p),
                ([], _) => return Err(SourceError::NotFound { spec: spec.to_string() }),
                (many, _) => {
                    return Err(SourceError::Ambiguous {
                        spec: spec.to_string(),
                        devices: many.iter().map(|d| d.path.display().to_string()).collect(),
                    })
                }
            };
            let how = spec.to_string();
            match offset {
                Some(o) => {
                    read_device_archive(&path, *o, Origin::Explicit, &how)?.ok_or_else(|| SourceError::Missing {
                        what: format!("hn.config {} ({how})", path.display()),
                        reason: format!("no tar archive at byte {o}"),
                    })
                }
                None => {
                    if let Some(f) = read_device_json(&path, Origin::Explicit, &how)? {
                        return Ok(f);
                    }
                    read_device_archive(&path, ARCHIVE_OFFSET, Origin::Explicit, &how)?.ok_or_else(|| {
                        SourceError::Missing {
                            what: format!("hn.config {} ({how})", path.display()),
                            reason: format!("neither JSON at byte 0 nor a tar archive at byte {ARCHIVE_OFFSET}"),
                        }
                    })
                }
            }
        }
    }
}

/// The swap-device candidates among `devs`, in the order they are tried:
/// PARTLABEL `gandiswap`, swaps with LABEL `swap`, then the fixed paths
/// ([`SWAP_PATHS`]) that exist. A device whose probe found a filesystem other
/// than swap is never a candidate. Pure.
pub fn choose_candidates(devs: &[BlockDev]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    // Only a device with a swap signature: a data disk without a recognised
    // filesystem (a raw tar backup, a fresh disk) at /dev/sdb or /dev/vdb is not
    // a configuration source unless `hn.config=` names it.
    let eligible = |d: &BlockDev| d.superblock.as_ref().is_some_and(|s| s.fstype == FsType::Swap);
    let mut push = |p: &Path| {
        if !out.iter().any(|x| x == p) {
            out.push(p.to_path_buf());
        }
    };
    for d in devs
        .iter()
        .filter(|d| d.partname.as_deref() == Some(SWAP_PARTLABEL) && eligible(d))
    {
        push(&d.path);
    }
    for d in devs {
        if let Some(sb) = &d.superblock {
            if sb.fstype == FsType::Swap && sb.label.as_deref() == Some(SWAP_LABEL) {
                push(&d.path);
            }
        }
    }
    for p in SWAP_PATHS {
        for d in devs.iter().filter(|d| eligible(d)) {
            if d.path.as_os_str() == *p || d.aliases.iter().any(|a| a.as_os_str() == *p) {
                push(&d.path);
            }
        }
    }
    out
}

/// Tries the swap candidates in order; the first holding a tar archive at
/// [`ARCHIVE_OFFSET`] is the source (a damaged archive is an error). `Ok(None)`
/// when no candidate holds one (a swap in use has swap pages there, not a header).
pub fn read_swap(devs: &[BlockDev]) -> Result<Option<Found>, SourceError> {
    read_swap_trusted(devs, false)
}

/// [`read_swap`] on a host `instantiated` or not: a configuration found on
/// removable media of an instantiated host is ignored with a warning (see
/// [`trust::decide`]) and the next candidate is tried.
fn read_swap_trusted(devs: &[BlockDev], instantiated: bool) -> Result<Option<Found>, SourceError> {
    for d in devs.iter().filter(|d| d.superblock.is_none()) {
        if let Some(p) = SWAP_PATHS.iter().find(|p| d.path.as_os_str() == **p || d.aliases.iter().any(|a| a.as_os_str() == **p)) {
            info!("config: {p} has no swap signature: not a configuration source (hn.config={p} would read it)");
        }
    }
    for path in choose_candidates(devs) {
        let removable = devs.iter().any(|d| d.path == path && d.removable);
        let how = devs
            .iter()
            .find(|d| d.path == path)
            .map(|d| {
                if d.partname.as_deref() == Some(SWAP_PARTLABEL) {
                    format!("PARTLABEL={SWAP_PARTLABEL}")
                } else {
                    match &d.superblock {
                        Some(sb) => match &sb.label {
                            Some(l) => format!("{} LABEL={l}", sb.fstype),
                            None => sb.fstype.to_string(),
                        },
                        None => "no signature".to_string(),
                    }
                }
            })
            .unwrap_or_default();
        match read_device_archive(&path, ARCHIVE_OFFSET, Origin::SwapDevice, &how) {
            Ok(Some(f)) => match trust::decide(trust::Kind::SwapDevice { removable }, instantiated, trust::Read::Config) {
                trust::Outcome::Apply => return Ok(Some(f)),
                _ => warn!(
                    "config: {} is on removable media and the host is already instantiated: ignored (name it with hn.config= to apply it)",
                    f.source
                ),
            },
            Ok(None) => debug!(
                "config: {} ({how}): no archive at byte {ARCHIVE_OFFSET}",
                path.display()
            ),
            // A candidate that vanished or has no medium is not a source.
            Err(SourceError::Io { error, .. }) if gone(&error) => {
                debug!("config: {} ({how}): skipped: {error}", path.display())
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether an open/read error means the device is not there (rather than broken).
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::ENXIO) | Some(libc::ENODEV) | Some(libc::ENOMEDIUM)
        )
}

/// Reads up to `len` bytes at `offset` (fewer at the end of the file/device).
fn read_at_most(f: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let Some(rest) = buf.get_mut(done..) else { break };
        match f.read_at(rest, offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

/// Reads the tar archive at `offset` of `path` (at most 1 MiB) and its
/// configuration member. `Ok(None)` if the block there is not a tar header (zeros
/// or swap pages). An archive without the member, or a damaged one, is an error.
pub fn read_device_archive(path: &Path, offset: u64, origin: Origin, how: &str) -> Result<Option<Found>, SourceError> {
    let shown = path.display();
    let f = File::open(path).map_err(io_err(format!("{origin} {shown}: open")))?;
    let window = read_at_most(&f, offset, MAX_ARCHIVE).map_err(io_err(format!(
        "{origin} {shown}: reading {MAX_ARCHIVE} bytes at byte {offset}"
    )))?;
    if !ustar::looks_like_header(&window) {
        return Ok(None);
    }
    let where_ = format!("{origin} {shown} (tar archive at byte {offset})");
    let archive = ustar::read_archive(&window, MEMBERS).map_err(|error| SourceError::Tar {
        what: where_.clone(),
        error,
    })?;
    let Some(member) = archive.member else {
        return Err(SourceError::Missing {
            what: where_,
            reason: format!(
                "the archive ({} members) has no member gandi/config or config",
                archive.members
            ),
        });
    };
    let detail = format!("tar archive at byte {offset}, member {}", member.name);
    let used = window.get(..archive.len).unwrap_or(&window);
    found_on_device(path, origin, how, detail, member.data, offset, used).map(Some)
}

/// A configuration `text` read from the device `path`, whose bytes `region`
/// (from `offset`) are wiped after a successful first boot: parses it and
/// records the wipe plan with the device's current superblock. `how` (may be
/// empty) prefixes `detail` in messages.
fn found_on_device(
    path: &Path,
    origin: Origin,
    how: &str,
    detail: String,
    text: &[u8],
    offset: u64,
    region: &[u8],
) -> Result<Found, SourceError> {
    let shown = path.display();
    let detail = if how.is_empty() { detail } else { format!("{how}, {detail}") };
    let parsed = configparse::parse(text).map_err(|error| SourceError::Config {
        what: format!("{origin} {shown} ({detail})"),
        error,
    })?;
    let before = probe::probe_path(path).map_err(io_err(format!("{origin} {shown}: probe")))?;
    Ok(Found {
        parsed,
        source: Source {
            origin,
            path: path.to_path_buf(),
            detail,
            wipe: Some(WipePlan {
                offset,
                len: region.len() as u64,
                sha256: sha256(region),
                before,
            }),
        },
    })
}

/// JSON written at byte 0 of a device (after optional whitespace), ending at the
/// first NUL byte or the end of the device. `Ok(None)` if it does not start with `{`.
pub fn read_device_json(path: &Path, origin: Origin, how: &str) -> Result<Option<Found>, SourceError> {
    let shown = path.display();
    let f = File::open(path).map_err(io_err(format!("{origin} {shown}: open")))?;
    let head = read_at_most(&f, 0, MAX_CONFIG + 1).map_err(io_err(format!("{origin} {shown}: reading at byte 0")))?;
    let first = head.iter().take(4096).find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Ok(None);
    }
    let text_len = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    let text = head.get(..text_len).unwrap_or(&head);
    let len = text.len().div_ceil(BLOCK) * BLOCK;
    let region = read_at_most(&f, 0, len).map_err(io_err(format!("{origin} {shown}: reading at byte 0")))?;
    found_on_device(path, origin, how, "JSON at byte 0".into(), text, 0, &region).map(Some)
}

/// Reads a configuration file `rel` on the host partition at `hostpart`
/// (`Ok(None)` if it does not exist): through `saferead`, resolved inside the
/// host partition (no symlink out of it, no magic links), a regular file of at
/// most [`MAX_CONFIG`] bytes, never blocking on a FIFO.
pub fn read_host_file(hostpart: &Path, rel: &str, origin: Origin) -> Result<Option<Found>, SourceError> {
    let path = hostpart.join(rel);
    let what = format!("{origin} {}", path.display());
    if rel.split('/').any(|c| c == "..") {
        return Err(SourceError::Missing { what, reason: "path has a '..' component".into() });
    }
    let dir = SafeDir::open(hostpart).map_err(io_err(what.clone()))?;
    let buf = match dir.read(rel, Follow::InRoot, MAX_CONFIG as u64) {
        Ok(b) => b,
        Err(e) if e.is_absent() => return Ok(None),
        Err(e) => return Err(SourceError::Missing { what, reason: e.to_string() }),
    };
    let parsed = configparse::parse(&buf).map_err(|error| SourceError::Config { what, error })?;
    Ok(Some(Found {
        parsed,
        source: Source::file(origin, path),
    }))
}

/// The last configuration applied on this host (`hn-state/config.json`).
pub fn load_last_applied(hostpart: &Path) -> Result<Option<Found>, SourceError> {
    read_host_file(hostpart, LAST_APPLIED, Origin::LastApplied)
}

/// Keeps `raw_json` as the last applied configuration in the host's state
/// directory (`hn-state/`): validated first, then written 0600, atomically
/// (temp file, fsync, rename, fsync of the directory). Pass
/// [`configparse::canonical_json`] of the applied configuration, so that nothing
/// unvalidated is kept.
pub fn save_last_applied(state_dir: &dyn Dir, raw_json: &[u8]) -> Result<(), SourceError> {
    let what = format!("{}/{LAST_APPLIED_NAME}", state_dir.label());
    configparse::parse(raw_json).map_err(|error| SourceError::Config {
        what: what.clone(),
        error,
    })?;
    // A temporary left by a crash may have another mode: start afresh (0600).
    hostdir::remove_if_exists(state_dir, &format!("{LAST_APPLIED_NAME}.tmp")).map_err(io_err(what.clone()))?;
    hostdir::write_atomic(state_dir, LAST_APPLIED_NAME, raw_json).map_err(io_err(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(path: &str, fstype: Option<FsType>, label: Option<&str>, partname: Option<&str>) -> BlockDev {
        BlockDev {
            name: path.trim_start_matches("/dev/").to_string(),
            path: PathBuf::from(path),
            partname: partname.map(str::to_string),
            superblock: fstype.map(|t| Superblock {
                fstype: t,
                label: label.map(str::to_string),
                uuid: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn candidates_in_order() {
        let devs = vec![
            dev("/dev/vdb", None, None, None),
            dev("/dev/xvda1", Some(FsType::Ext4), Some("hostpart"), None),
            dev("/dev/xvda2", Some(FsType::Ext4), Some("swap"), None),
            dev("/dev/sdb", Some(FsType::Swap), None, None),
            dev("/dev/xvdz1", Some(FsType::Swap), Some("swap"), None),
            dev("/dev/sdc1", Some(FsType::Swap), Some("other"), Some("gandiswap")),
            dev("/dev/sdd", Some(FsType::Xfs), None, Some("gandiswap")),
            dev("/dev/sde", Some(FsType::Swap), Some("swap"), None),
        ];
        let got: Vec<String> = choose_candidates(&devs)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        // /dev/vdb has no signature, /dev/sdd (PARTLABEL gandiswap) holds xfs: neither is a source.
        assert_eq!(got, ["/dev/sdc1", "/dev/xvdz1", "/dev/sde", "/dev/sdb"]);
        assert!(choose_candidates(&[]).is_empty());
        assert!(choose_candidates(&[dev("/dev/vda1", Some(FsType::Ext4), None, None)]).is_empty());
    }

    #[test]
    fn config_args() {
        assert_eq!(
            ConfigArg::parse("LABEL=cfg@524288").unwrap(),
            ConfigArg::Device {
                spec: DevSpec::Label("cfg".into()),
                offset: Some(524288)
            }
        );
        assert_eq!(
            ConfigArg::parse("/dev/vdc").unwrap(),
            ConfigArg::Device {
                spec: DevSpec::Path("/dev/vdc".into()),
                offset: None
            }
        );
        assert_eq!(
            ConfigArg::parse("PARTLABEL=a@b").unwrap(),
            ConfigArg::Device {
                spec: DevSpec::PartLabel("a@b".into()),
                offset: None
            }
        );
        assert_eq!(
            ConfigArg::parse("/hn-state/custom.json").unwrap(),
            ConfigArg::HostFile("hn-state/custom.json".into())
        );
        assert_eq!(
            ConfigArg::parse("LABEL=cfg@1024").unwrap().to_string(),
            "LABEL=cfg@1024"
        );
        for bad in [
            "",
            "cfg",
            "LABEL=x@100",
            "/",
            "/a/../b",
            "/a/",
            "/dev/../etc/x",
            "LABEL=@512",
            "/a\n",
        ] {
            assert!(ConfigArg::parse(bad).is_err(), "{bad:?}");
        }
    }
}
