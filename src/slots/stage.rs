//! Staging a new image next to the current one (`hnctl stage`), and the two other
//! requests the running system makes of the next boot: `unstage` and
//! `request_revert`. Owns the checks a staged image must pass; the copy
//! engine behind [`Dir::create_from`] is `slots::copy`.
//!
//! Crash safety: the image is written as `hn-root-new.img.part`, fsynced, checked,
//! and only then renamed to `hn-root-new.img` (its sidecars: below); so `hn-root-new.img` only ever names a complete
//! image, and the boot (`slots::settle`) removes a leftover `.part` (one with a download resume record is kept: `remote`). Every mutating
//! step is one `Dir` operation, which `tests/stage_crash.rs` interrupts in turn.
//!
//! Signatures ([`stage_signed`]): the policy is applied to the signature before
//! the copy (a refusal copies nothing); the copy engine's tap feeds every byte
//! it writes to the signature check, so the image is verified in the one pass
//! that copies it (a reflink is read back once instead); a mismatch removes the
//! `.part` before any rename. The signature and the digest are written as
//! `hn-root-new.img.part.minisig` and `.part.sha256` before the rename of `.part`
//! (the commit) and renamed over `hn-root-new.img.minisig` and `.sha256` after it;
//! the boot (`slots::settle`) removes them beside a `.part` and completes them
//! without one. So a power cut at any step leaves either what was staged before,
//! with its own sidecars, or the new image with its own. (A stage without a
//! signature or digest removes a stale one before the commit: a crash leaves the
//! staged image without it — unsigned, which a boot with keys rejects — never
//! with another image's.)

use crate::slots::dir::{remove_if_exists, write_atomic, CopyInfo, CopyMethod, CopyOpts, Dir};
use crate::sys::probe::{self, FsType};
use crate::slots::Names;
use rustix::fs::{self as rfs, FileType};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;

/// The smallest image accepted (a filesystem smaller than this is not a root).
pub const MIN_IMAGE: u64 = 1 << 20;
/// Kept free on top of the image and its 1 %.
pub const SPACE_MARGIN: u64 = 16 << 20;

/// The space staging an image of `size` bytes needs: the image, 1 % and 16 MiB.
pub fn required_space(size: u64) -> u64 {
    size.saturating_add(size / 100).saturating_add(SPACE_MARGIN)
}

/// Free bytes for an unprivileged writer in the filesystem of `dir` (statvfs).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = rfs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub use crate::util::hex;

/// A sha256 given as 64 hex digits (either case).
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{text:?} is not a sha256 (64 hex digits)"));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Where the image to stage comes from.
#[derive(Debug)]
pub struct StageSource {
    file: File,
    label: String,
    len: Option<u64>,
    /// A stream (stdin): read/write only.
    stream: bool,
}

impl StageSource {
    /// An image file (or block device) by path.
    /// A FIFO or socket is refused at once instead of blocking in `open`
    /// (`hnctl stage -` reads a pipe on standard input).
    pub fn open(path: &Path) -> io::Result<StageSource> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
        let ft = FileType::from_raw_mode(rfs::fstat(&file)?.st_mode);
        if !matches!(ft, FileType::RegularFile | FileType::BlockDevice) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file or block device (a pipe goes on standard input: hnctl stage -)"));
        }
        let fl = rfs::fcntl_getfl(&file)?;
        rfs::fcntl_setfl(&file, fl - rfs::OFlags::NONBLOCK)?;
        Self::from_file(file, path.display().to_string(), false)
    }

    /// Standard input (`hnctl stage -`): copied by read/write.
    pub fn stdin() -> io::Result<StageSource> {
        let fd = rustix::io::fcntl_dupfd_cloexec(std::io::stdin().as_fd(), 0)?;
        Self::from_file(File::from(fd), "standard input".into(), true)
    }

    /// Any open file; `stream` restricts the copy to read/write.
    pub fn from_file(file: File, label: String, stream: bool) -> io::Result<StageSource> {
        let st = rfs::fstat(&file)?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Directory {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
        let len = (ft == FileType::RegularFile).then_some(st.st_size as u64);
        Ok(StageSource {
            file,
            label,
            len,
            stream,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The size, when known before reading (a regular file).
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct StageOptions {
    /// The expected sha256 (`--sha256`): checked, then kept as `hn-root-new.img.sha256`.
    pub sha256: Option<[u8; 32]>,
    /// Allow a reflink and `copy_file_range` (`--no-reflink` clears it: read/write only).
    pub reflink: bool,
    /// Free bytes in the images directory's filesystem before staging ([`free_bytes`]).
    pub free_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StageReport {
    /// The staged name (`hn-root-new.img`).
    pub name: String,
    pub bytes: u64,
    pub method: CopyMethod,
    /// Hex sha256 of the staged bytes, when computed (`--sha256`, or a read/write copy).
    pub sha256: Option<String>,
    /// The digest file written next to it (with `--sha256`).
    pub digest_file: Option<String>,
    /// The filesystem found in the image.
    pub fstype: String,
    /// A previously staged image was replaced.
    pub replaced: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("not enough space in {dir}: staging needs {need} bytes ({}, the image's {size} bytes + 1% + 16 MiB), {free} bytes ({}) are free", mib(*need), mib(*free))]
    NoSpace {
        dir: String,
        size: u64,
        need: u64,
        free: u64,
    },
    #[error("the filesystem of {dir} filled up after {done} bytes of the copy")]
    DiskFull { dir: String, done: u64 },
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("the image is only {size} bytes; an image is at least 1 MiB")]
    TooSmall { size: u64 },
    #[error("the image is {size} bytes, not a whole number of 512-byte sectors (truncated?)")]
    Truncated { size: u64 },
    #[error("no filesystem recognised in the image (not ext4, btrfs, xfs, squashfs, erofs or vfat)")]
    NoFilesystem,
    #[error("the image is a swap area, not a filesystem")]
    Swap,
    #[error("sha256 mismatch: expected {expected}, the image has {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("signature {0}")]
    Signature(Box<crate::trust::Verdict>),
    #[error("{step} in {dir}: {source}")]
    Io {
        step: String,
        dir: String,
        #[source]
        source: io::Error,
    },
}

impl StageError {
    /// The image or the space was refused (as opposed to an operation that failed).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, StageError::Io { .. })
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn io_err(dir: &dyn Dir, step: String) -> impl FnOnce(io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        step,
        dir: dir.label(),
        source,
    }
}

/// Writes `source` as the staged image `names.new` (see the module doc for the
/// steps). `progress(done, total)` follows the copy; `total` is 0 when unknown.
/// Refused (nothing left behind): too little space, an empty, short, truncated,
/// unrecognised or swap image, a sha256 that does not match.
pub fn stage(
    images: &dyn Dir,
    names: &Names,
    source: &mut StageSource,
    opts: &StageOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<StageReport, StageError> {
    stage_signed(images, names, source, opts, None, progress)
}

/// The signature side of a stage: the key store of the running system, the
/// signature file's bytes (`None`: unsigned) and the policy context.
pub struct StageTrust<'a> {
    pub store: &'a crate::trust::KeyStore,
    /// The raw `.minisig`, kept as the staged image's sidecar.
    pub signature: Option<Vec<u8>>,
    pub context: crate::trust::Context<'a>,
}

/// [`stage`], with the image's signature checked and kept (see the module doc).
pub fn stage_signed(
    images: &dyn Dir,
    names: &Names,
    source: &mut StageSource,
    opts: &StageOptions,
    trust: Option<&StageTrust>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<StageReport, StageError> {
    use crate::trust::{stream, Signature, Verdict};
    let parsed = trust.map(|t| match &t.signature {
        None => Ok(None),
        Some(raw) => Signature::parse(raw).map(Some).map_err(|e| e.to_string()),
    });
    // The check that the copy feeds: `None` without trust or when its verdict
    // is known before any byte (no keys: not verified).
    let mut check = None;
    if let (Some(t), Some(p)) = (trust, &parsed) {
        let c = stream::Check::start(t.store, p.as_ref().map(Option::as_ref).map_err(Clone::clone), &t.context);
        match c.decided() {
            Some(Verdict::Reject(r)) => return Err(StageError::Signature(Box::new(Verdict::Reject(r.clone())))),
            Some(_) => {}
            None => check = Some(std::cell::RefCell::new(c)),
        }
    }
    let tap = |chunk: &[u8]| {
        if let Some(c) = &check {
            c.borrow_mut().update(chunk);
        }
    };
    // Leftovers of an interrupted stage; their space comes back. The signature
    // of an interrupted signed stage is settled as the boot would, before its
    // `.part` goes (without one it would count as committed).
    crate::slots::rotation::finish_stage_sidecars(images, names)
        .map_err(io_err(images, format!("settle {}.*", names.part)))?;
    for (pending, _) in crate::slots::rotation::stage_sidecars(names) {
        let tmp = format!("{pending}.tmp");
        remove_if_exists(images, &tmp).map_err(io_err(images, format!("remove stale {tmp}")))?;
    }
    let mut reclaimed = 0;
    if let Some(id) = images
        .id(&names.part)
        .map_err(io_err(images, format!("stat {}", names.part)))?
    {
        remove_if_exists(images, &names.part).map_err(io_err(images, format!("remove stale {}", names.part)))?;
        reclaimed = id.size;
    }
    let digest_tmp = format!("{}.tmp", names.digest);
    remove_if_exists(images, &digest_tmp).map_err(io_err(images, format!("remove stale {digest_tmp}")))?;
    // An interrupted download's resume record (`remote`) belongs to the `.part` just removed.
    let record = format!("{}.json", names.part);
    remove_if_exists(images, &record).map_err(io_err(images, format!("remove stale {record}")))?;

    let free = opts.free_bytes.saturating_add(reclaimed);
    let check_space = |size: u64| {
        let need = required_space(size);
        if need > free {
            Err(StageError::NoSpace {
                dir: images.label(),
                size,
                need,
                free,
            })
        } else {
            Ok(())
        }
    };
    check_space(source.len.unwrap_or(0))?;

    let total = source.len.unwrap_or(0);
    let copy = CopyOpts {
        reflink: opts.reflink && !source.stream,
        // copy_file_range shares extents too where it can (btrfs, xfs): with
        // reflinks refused, every byte is copied by read/write.
        copy_range: opts.reflink && !source.stream,
        sha256: opts.sha256.is_some(),
        tap: check.is_some().then_some(&tap as &dyn Fn(&[u8])),
    };
    let mut copied = 0;
    let info = images
        .create_from(&names.part, &source.file, source.len, copy, &mut |done| {
            copied = done;
            progress(done, total)
        })
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => StageError::DiskFull {
                dir: images.label(),
                done: copied,
            },
            _ => io_err(images, format!("copy {} to {}", source.label, names.part))(e),
        });
    let info = match info {
        Ok(info) => info,
        Err(e) => {
            discard(images, names);
            return Err(e);
        }
    };
    if let Some(c) = check {
        // The bytes the copy wrote are the bytes the check saw.
        if let Verdict::Reject(r) = c.into_inner().finish() {
            discard(images, names);
            return Err(StageError::Signature(Box::new(Verdict::Reject(r))));
        }
    }
    let late_space: &dyn Fn(u64) -> Result<(), StageError> = &check_space;
    let sig = trust.and_then(|t| t.signature.as_deref());
    complete_part(images, names, &info, opts.sha256, source.len.is_none().then_some(late_space), sig)
}

/// The end of every stage, from a file or from the network (`remote`): the
/// `.part` holds `info.bytes` bytes, fsynced (and, when signed, verified). Checks
/// the space when the size was not known before (`late_space`), the image and the
/// digest, then writes the digest, keeps the signature `sig` as the sidecar and
/// renames the `.part` to the staged name. Refused or failed: the `.part` is
/// removed.
pub fn complete_part(
    images: &dyn Dir,
    names: &Names,
    info: &CopyInfo,
    want: Option<[u8; 32]>,
    late_space: Option<&dyn Fn(u64) -> Result<(), StageError>>,
    sig: Option<&[u8]>,
) -> Result<StageReport, StageError> {
    let checked = (|| {
        if let Some(check) = late_space {
            check(info.bytes)?;
        }
        check_image(images, names, info, want)
    })();
    let fstype = match checked {
        Ok(x) => x,
        Err(e) => {
            discard(images, names);
            return Err(e);
        }
    };
    match finish(images, names, want.as_ref(), sig) {
        Ok((replaced, digest_file)) => Ok(StageReport {
            name: names.new.clone(),
            bytes: info.bytes,
            method: info.method,
            sha256: info.sha256.map(|d| hex(&d)),
            digest_file,
            fstype,
            replaced,
        }),
        Err(e) => {
            discard(images, names);
            Err(e)
        }
    }
}

/// The copy is an image: size, filesystem, digest. Returns the filesystem type.
fn check_image(images: &dyn Dir, names: &Names, info: &CopyInfo, want: Option<[u8; 32]>) -> Result<String, StageError> {
    let read = |e| StageError::Io {
        step: format!("read back {}", names.part),
        dir: images.label(),
        source: e,
    };
    let f = images.open_read(&names.part).map_err(read)?;
    let size = f.metadata().map_err(read)?.len();
    if size == 0 {
        return Err(StageError::Empty);
    }
    if size < MIN_IMAGE {
        return Err(StageError::TooSmall { size });
    }
    if size % 512 != 0 {
        return Err(StageError::Truncated { size });
    }
    let mut head = Vec::with_capacity(probe::PROBE_LEN);
    f.take(probe::PROBE_LEN as u64).read_to_end(&mut head).map_err(read)?;
    let fstype = match probe::probe(&head) {
        None => return Err(StageError::NoFilesystem),
        Some(sb) if sb.fstype == FsType::Swap => return Err(StageError::Swap),
        Some(sb) => sb.fstype,
    };
    if let Some(want) = want {
        let got = info.sha256.map(|d| hex(&d)).unwrap_or_else(|| "no digest".into());
        if got != hex(&want) {
            return Err(StageError::DigestMismatch {
                expected: hex(&want),
                actual: got,
            });
        }
    }
    Ok(fstype.name().to_string())
}

/// Digest (or removal of a stale one), then `.part` → new, fsync. Returns
/// (a staged image was replaced, the digest file written).
fn finish(images: &dyn Dir, names: &Names, sha: Option<&[u8; 32]>, sig: Option<&[u8]>) -> Result<(bool, Option<String>), StageError> {
    let replaced = images
        .exists(&names.new)
        .map_err(io_err(images, format!("stat {}", names.new)))?;
    let sig_name = Names::sig(&names.new);
    let [(part_sig, _), (part_digest, _)] = crate::slots::rotation::stage_sidecars(names);
    match sig {
        // Written beside the `.part`: committed with it by the rename below.
        Some(sig) => write_atomic(images, &part_sig, sig).map_err(io_err(images, format!("write {part_sig}")))?,
        // The previous staged image's signature goes first (never beside this one).
        None => {
            if remove_if_exists(images, &sig_name).map_err(io_err(images, format!("remove {sig_name}")))? {
                images.sync().map_err(io_err(images, "fsync".into()))?;
            }
        }
    }
    let digest_file = match sha {
        Some(d) => {
            // Beside the `.part` too: committed with it by the rename below.
            let line = format!("{}  {}\n", hex(d), names.new);
            write_atomic(images, &part_digest, line.as_bytes()).map_err(io_err(images, format!("write {part_digest}")))?;
            Some(names.digest.clone())
        }
        None => {
            // A digest left by a previous stage would reject this image at boot.
            remove_if_exists(images, &names.digest).map_err(io_err(images, format!("remove {}", names.digest)))?;
            None
        }
    };
    images
        .rename(&names.part, &names.new)
        .map_err(io_err(images, format!("rename {} -> {}", names.part, names.new)))?;
    images.sync().map_err(io_err(images, "fsync".into()))?;
    for (pending, sidecar, written) in [(&part_sig, &sig_name, sig.is_some()), (&part_digest, &names.digest, sha.is_some())] {
        if written {
            images
                .rename(pending, sidecar)
                .map_err(io_err(images, format!("rename {pending} -> {sidecar}")))?;
        }
    }
    if sig.is_some() || sha.is_some() {
        images.sync().map_err(io_err(images, "fsync".into()))?;
    }
    Ok((replaced, digest_file))
}

/// Best effort after a failure: no `.part` is left (the boot removes it otherwise).
fn discard(images: &dyn Dir, names: &Names) {
    // The uncommitted sidecars first (alone, they would count as committed).
    for (pending, _) in crate::slots::rotation::stage_sidecars(names) {
        let _ = remove_if_exists(images, &pending);
    }
    if let Ok(true) = remove_if_exists(images, &names.part) {
        let _ = images.sync();
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnstageReport {
    /// What was removed, in order; empty when nothing was staged.
    pub removed: Vec<String>,
}

/// Removes the staged image, then its digest (so a crash never leaves the image
/// without the digest it was staged with), and leftovers of an interrupted stage.
pub fn unstage(images: &dyn Dir, names: &Names) -> Result<UnstageReport, StageError> {
    let mut removed = Vec::new();
    for name in [
        // The sidecar first: alone, a staged image's sidecar would be taken for
        // the current image's by the next boot; uncommitted ones even before.
        Names::sig(&names.part),
        format!("{}.sha256", names.part),
        Names::sig(&names.new),
        names.new.clone(),
        names.digest.clone(),
        names.part.clone(),
        format!("{}.json", names.part),
        format!("{}.tmp", names.digest),
    ] {
        if remove_if_exists(images, &name).map_err(io_err(images, format!("remove {name}")))? {
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        images.sync().map_err(io_err(images, "fsync".into()))?;
    }
    Ok(UnstageReport { removed })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RevertReport {
    /// The flag was there already.
    pub already_requested: bool,
    /// There is a previous image to revert to.
    pub old_present: bool,
    /// A staged image will be rejected by the revert (revert wins).
    pub staged_present: bool,
}

/// Creates the `system-revert` flag: the next boot reverts to the previous image.
pub fn request_revert(images: &dyn Dir, names: &Names) -> Result<RevertReport, StageError> {
    let flag = &names.revert_flag;
    let stat = |name: &str| images.exists(name).map_err(io_err(images, format!("stat {name}")));
    let already_requested = stat(flag)?;
    if already_requested {
        images.sync().map_err(io_err(images, "fsync".into()))?;
    } else {
        let tmp = format!("{flag}.tmp");
        remove_if_exists(images, &tmp).map_err(io_err(images, format!("remove stale {tmp}")))?;
        write_atomic(images, flag, b"").map_err(io_err(images, format!("create {flag}")))?;
    }
    Ok(RevertReport {
        already_requested,
        old_present: stat(&names.old)?,
        staged_present: stat(&names.new)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::copy::copy_file;
    use sha2::{Digest, Sha256};

    #[test]
    fn sha256_hex_round_trip() {
        let d = [0xabu8; 32];
        assert_eq!(parse_sha256(&hex(&d)).unwrap(), d);
        assert_eq!(parse_sha256(&hex(&d).to_uppercase()).unwrap(), d);
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
        assert!(parse_sha256(&"é".repeat(32)).is_err());
    }

    #[test]
    fn space_needed() {
        assert_eq!(required_space(0), 16 << 20);
        assert_eq!(required_space(100 << 20), (100 << 20) + (1 << 20) + (16 << 20));
        assert_eq!(required_space(u64::MAX), u64::MAX);
    }

    #[test]
    fn copies_by_every_method_with_the_same_result() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let src_path = t.path().join("src");
        std::fs::write(&src_path, &data).unwrap();
        let want: [u8; 32] = Sha256::digest(&data).into();
        let seen = std::cell::RefCell::new(Vec::new());
        let tap = |chunk: &[u8]| seen.borrow_mut().extend_from_slice(chunk);
        for (i, opts) in [
            CopyOpts {
                reflink: true,
                copy_range: true,
                sha256: false,
                ..Default::default()
            },
            CopyOpts {
                reflink: true,
                copy_range: true,
                sha256: true,
                ..Default::default()
            },
            CopyOpts {
                reflink: false,
                copy_range: true,
                sha256: false,
                ..Default::default()
            },
            CopyOpts {
                reflink: false,
                copy_range: false,
                sha256: true,
                ..Default::default()
            },
            // A tap sees every byte once, in order, whatever the method.
            CopyOpts {
                reflink: true,
                copy_range: true,
                sha256: false,
                tap: Some(&tap),
            },
            CopyOpts {
                reflink: false,
                copy_range: true,
                sha256: true,
                tap: Some(&tap),
            },
        ]
        .into_iter()
        .enumerate()
        {
            let dst_path = t.path().join(format!("dst{i}"));
            let dst = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&dst_path)
                .unwrap();
            let src = File::open(&src_path).unwrap();
            let mut last = 0;
            let info = copy_file(&src, &dst, Some(data.len() as u64), opts, &mut |d| last = d).unwrap();
            assert_eq!(info.bytes, data.len() as u64, "{opts:?}");
            assert_eq!(last, data.len() as u64, "{opts:?}");
            assert_eq!(std::fs::read(&dst_path).unwrap(), data, "{opts:?}");
            assert_eq!(info.sha256, opts.sha256.then_some(want), "{opts:?}");
            if !opts.reflink {
                assert_ne!(info.method, CopyMethod::Reflink);
            }
            if opts.tap.is_some() {
                assert_ne!(info.method, CopyMethod::CopyFileRange, "{opts:?}");
                assert!(seen.borrow().as_slice() == data.as_slice(), "{opts:?}: the tap saw other bytes");
                seen.borrow_mut().clear();
            }
        }
    }
}
