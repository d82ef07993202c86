//! The copy engine behind [`Dir::create_from`](crate::slots::dir::Dir::create_from):
//! reflink, `copy_file_range` or read/write, whichever is allowed and works,
//! with an optional sha256 of the bytes, an optional tap that sees every byte
//! (`hnctl stage` verifies a signature while it copies) and a progress callback.

use rustix::fs::{self as rfs, FileType, SeekFrom};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};


/// How `Dir::create_from` may copy; the fastest allowed way that works is used.
#[derive(Clone, Copy, Default)]
pub struct CopyOpts<'a> {
    /// Try a reflink (`FICLONE`) first: instant, shares the extents of a regular
    /// source file on the same copy-on-write filesystem.
    pub reflink: bool,
    /// Try `copy_file_range` (in-kernel copy) before read/write.
    pub copy_range: bool,
    /// Compute the sha256 of the bytes copied (forces read/write unless reflinked,
    /// in which case the new file is read back).
    pub sha256: bool,
    /// Sees every byte of the copy, in order, once (as `sha256`: read/write, or
    /// the reflinked file read back): the bytes written are the bytes it saw.
    pub tap: Option<Tap<'a>>,
}

/// A consumer of every byte a copy writes ([`CopyOpts::tap`]).
pub type Tap<'a> = &'a dyn Fn(&[u8]);

impl CopyOpts<'_> {
    /// The bytes must pass through this process (a digest or a tap).
    fn sees_bytes(&self) -> bool {
        self.sha256 || self.tap.is_some()
    }
}

impl std::fmt::Debug for CopyOpts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOpts")
            .field("reflink", &self.reflink)
            .field("copy_range", &self.copy_range)
            .field("sha256", &self.sha256)
            .field("tap", &self.tap.is_some())
            .finish()
    }
}

/// How a `Dir::create_from` copy was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMethod {
    Reflink,
    CopyFileRange,
    ReadWrite,
    /// Written from an HTTP(S) download (`hnctl stage URL`, `remote`).
    Download,
}

/// What `Dir::create_from` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyInfo {
    pub bytes: u64,
    pub method: CopyMethod,
    /// The sha256 of the bytes, when `CopyOpts::sha256` was asked.
    pub sha256: Option<[u8; 32]>,
}

const CHUNK: usize = 8 << 20;
const RW_BUF: usize = 1 << 20;

/// The copy engine of [`Dir::create_from`]: fills `dst` (empty, opened read-write)
/// from `src`'s current position to its end, by reflink, `copy_file_range` or
/// read/write as `opts` allow, falling back when the faster one is not supported.
pub fn copy_file(
    src: &File,
    dst: &File,
    len_hint: Option<u64>,
    opts: CopyOpts,
    progress: &mut dyn FnMut(u64),
) -> io::Result<CopyInfo> {
    let regular = rfs::fstat(src).map(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)?;
    let at_start = regular && rfs::seek(src, SeekFrom::Current(0)).map(|p| p == 0).unwrap_or(false);
    if opts.reflink && at_start && rfs::ioctl_ficlone(dst, src).is_ok() {
        let bytes = dst.metadata()?.len();
        // The copy was instant; the digest is of what the new file holds, and
        // reading it back is what the progress follows.
        let sha256 = if opts.sees_bytes() {
            let mut h = opts.sha256.then(Sha256::new);
            let mut r = dst;
            rfs::seek(dst, SeekFrom::Start(0))?;
            pump(&mut r, &mut |chunk, done| {
                if let Some(h) = h.as_mut() {
                    h.update(chunk);
                }
                if let Some(tap) = opts.tap {
                    tap(chunk);
                }
                progress(done);
                Ok(())
            })?;
            h.map(|h| h.finalize().into())
        } else {
            progress(bytes);
            None
        };
        return Ok(CopyInfo {
            bytes,
            method: CopyMethod::Reflink,
            sha256,
        });
    }
    if opts.copy_range && !opts.sees_bytes() && regular {
        if let Some(bytes) = copy_range(src, dst, len_hint, progress)? {
            return Ok(CopyInfo {
                bytes,
                method: CopyMethod::CopyFileRange,
                sha256: None,
            });
        }
    }
    let mut h = opts.sha256.then(Sha256::new);
    let mut w = dst;
    let mut r = src;
    let bytes = pump(&mut r, &mut |chunk, done| {
        w.write_all(chunk)?;
        if let Some(h) = h.as_mut() {
            h.update(chunk);
        }
        if let Some(tap) = opts.tap {
            tap(chunk);
        }
        progress(done);
        Ok(())
    })?;
    Ok(CopyInfo {
        bytes,
        method: CopyMethod::ReadWrite,
        sha256: h.map(|h| h.finalize().into()),
    })
}

/// `copy_file_range` in chunks; `None` when the kernel cannot do it for these
/// files (before anything was copied), so that the caller falls back.
fn copy_range(src: &File, dst: &File, len_hint: Option<u64>, progress: &mut dyn FnMut(u64)) -> io::Result<Option<u64>> {
    use rustix::io::Errno;
    let mut done = 0u64;
    loop {
        match rfs::copy_file_range(src, None, dst, None, CHUNK) {
            Ok(0) => {
                // Some filesystems (procfs, …) report 0 for what they cannot copy.
                if done == 0 && len_hint.unwrap_or(0) > 0 {
                    return Ok(None);
                }
                return Ok(Some(done));
            }
            Ok(n) => {
                done += n as u64;
                progress(done);
            }
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS | Errno::BADF | Errno::PERM)
                if done == 0 =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads `r` to its end, handing each chunk and the running total to `each`.
fn pump(r: &mut dyn Read, each: &mut dyn FnMut(&[u8], u64) -> io::Result<()>) -> io::Result<u64> {
    let mut buf = vec![0u8; RW_BUF];
    let mut done = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        done += n as u64;
        each(&buf[..n], done)?;
    }
}

