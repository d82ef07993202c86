//! Confined access to the mounted new root: [`RootDir`] reads it for detection,
//! [`apply`] executes a first-boot [`Plan`](crate::firstboot::plan::Plan) inside it.
//!
//! Every path is resolved from a file descriptor of the root with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so a hostile image whose
//! `/etc/shadow` points at `/hostpart/…` or `../../..` can never make hninit read
//! or write outside the image. On top of that confinement:
//!
//! * the last component of a path is never followed: a file or symlink target is
//!   *replaced* (a new file renamed over it), a directory that is a symlink is
//!   replaced by a real directory;
//! * the parent directories of system paths must be real directories: a symbolic
//!   link anywhere on the way (a symlinked `/etc` or `/etc/ssh`) is refused with
//!   [`ApplyError::SymlinkInPath`] naming it, before anything is written (all
//!   steps are checked first). Steps flagged [`Step::user_path`] (a user's home,
//!   e.g. OSTree's `/home -> var/home`) follow such links, still inside the root;
//! * writes are crash-safe: `NAME.hninit-tmp` created `O_EXCL|O_NOFOLLOW` in the
//!   parent directory, written, `fchown`, `fchmod`, `fsync`, `renameat` over the
//!   target, `fsync` of the directory;
//! * re-running a plan converges: a file with the planned contents, mode and
//!   owner is left alone and not reported as changed.

use crate::firstboot::plan::{Op, Plan, Step};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Uid};
use rustix::io::Errno;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Suffix of the temporary file a write goes through.
pub const TMP_SUFFIX: &str = ".hninit-tmp";

/// The selinux label copied from a replaced file onto its replacement, so that a
/// labelled image (RHEL) keeps reading its own `/etc/shadow`.
const SELINUX_XATTR: &str = "security.selinux";

const CONFINED: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Why a plan could not be applied; every variant names the file and the step.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{step} {path}: {source}")]
    Io {
        path: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: refusing to go through the symbolic link {link} in the image (hninit writes system files only into real directories)"
    )]
    SymlinkInPath { path: String, link: String },
    #[error("{path}: {component} in the image is not a directory")]
    NotADirectory { path: String, component: String },
    #[error("{path} is a directory in the image, where a file or link is to be written")]
    IsADirectory { path: String },
    #[error("{path}: not an absolute, normalised path inside the root")]
    BadPath { path: String },
    #[error("interrupted after step {index} ({path}): {source}")]
    Interrupted {
        index: usize,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// One line per step that changed something, e.g. `wrote /etc/hostname`.
    pub changed: Vec<String>,
    /// Steps whose target was already as planned.
    pub unchanged: usize,
}

/// Metadata of a path in the root (not following a final symlink when asked so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn meta(st: &rfs::Stat) -> Meta {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    Meta {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

/// The mounted new root, by file descriptor; every lookup is confined to it.
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// `openat2` retried on `EAGAIN` (a concurrent rename while resolving).
fn openat2(dirfd: impl AsFd, path: &str, flags: OFlags, mode: u32, resolve: ResolveFlags) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rfs::openat2(dirfd.as_fd(), path, flags | OFlags::CLOEXEC, Mode::from_raw_mode(mode), resolve) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

/// Splits an absolute path into its components; `None` for a relative path or
/// one holding `.`, `..` or an empty component (plans only hold normalised paths).
fn components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let comps: Vec<&str> = rest.split('/').collect();
    if comps.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return None;
    }
    Some(comps)
}

fn not_found(e: Errno) -> bool {
    e == Errno::NOENT || e == Errno::NOTDIR
}

impl RootDir {
    pub fn open(path: &Path) -> io::Result<RootDir> {
        let fd = rfs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(RootDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the parent directory of `path` (following links, inside the root)
    /// and returns it with the last component.
    #[inline(never)]
    fn parent<'p>(&self, path: &'p str) -> io::Result<Option<(OwnedFd, &'p str)>> {
        let comps = components(path).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad path {path}")))?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the root has no parent"));
        };
        let rel = if dirs.is_empty() { ".".to_string() } else { dirs.join("/") };
        match openat2(&self.fd, &rel, OFlags::PATH | OFlags::DIRECTORY, 0, CONFINED) {
            Ok(fd) => Ok(Some((fd, name))),
            Err(e) if not_found(e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a regular file (symlinks followed inside the root); `None` when absent.
    /// A file larger than `max`, or not a regular file (a FIFO would block), is an error.
    #[inline(never)]
    pub fn read(&self, path: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
        let rel = path.trim_start_matches('/');
        let fd = match openat2(&self.fd, rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, 0, CONFINED) {
            Ok(fd) => fd,
            Err(e) if not_found(e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if meta(&rfs::fstat(&fd)?).kind != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{path} is not a regular file")));
        }
        let mut buf = Vec::new();
        std::fs::File::from(fd).take(max as u64 + 1).read_to_end(&mut buf)?;
        if buf.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is larger than {max} bytes"),
            ));
        }
        Ok(Some(buf))
    }

    /// Metadata of `path`, following symlinks (inside the root); `None` when absent.
    #[inline(never)]
    pub fn stat(&self, path: &str) -> io::Result<Option<Meta>> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        match openat2(&self.fd, rel, OFlags::PATH, 0, CONFINED) {
            Ok(fd) => Ok(Some(meta(&rfs::fstat(&fd)?))),
            Err(e) if not_found(e) || e == Errno::LOOP => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Metadata of `path` itself (a final symlink is not followed).
    #[inline(never)]
    pub fn lstat(&self, path: &str) -> io::Result<Option<Meta>> {
        let Some((dir, name)) = self.parent(path)? else {
            return Ok(None);
        };
        match rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(meta(&st))),
            Err(e) if not_found(e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// True when `path` exists (following links inside the root).
    pub fn exists(&self, path: &str) -> io::Result<bool> {
        Ok(self.stat(path)?.is_some())
    }

    /// The target of the symlink `path`; `None` when absent or not a symlink.
    #[inline(never)]
    pub fn readlink(&self, path: &str) -> io::Result<Option<String>> {
        let Some((dir, name)) = self.parent(path)? else {
            return Ok(None);
        };
        match rfs::readlinkat(&dir, name, Vec::new()) {
            Ok(t) => Ok(Some(String::from_utf8_lossy(t.as_bytes()).into_owned())),
            Err(e) if not_found(e) || e == Errno::INVAL => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Names in the directory `path` (following links inside the root), sorted;
    /// empty when absent.
    #[inline(never)]
    pub fn list(&self, path: &str) -> io::Result<Vec<String>> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let fd = match openat2(&self.fd, rel, OFlags::RDONLY | OFlags::DIRECTORY, 0, CONFINED) {
            Ok(fd) => fd,
            Err(e) if not_found(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut names = Vec::new();
        for entry in rfs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        // An insertion sort: directories listed here are small, and it adds no
        // sort routine to the init binary.
        for i in 1..names.len() {
            let mut j = i;
            while j > 0 && names[j - 1] > names[j] {
                names.swap(j - 1, j);
                j -= 1;
            }
        }
        Ok(names)
    }
}

fn io_err<'a>(path: &'a str, step: &'static str) -> impl FnOnce(Errno) -> ApplyError + 'a {
    move |e| ApplyError::Io {
        path: path.to_string(),
        step,
        source: e.into(),
    }
}

fn ioe<'a>(path: &'a str, step: &'static str) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError::Io {
        path: path.to_string(),
        step,
        source,
    }
}

fn join(comps: &[&str]) -> String {
    format!("/{}", comps.join("/"))
}

impl RootDir {
    /// Opens the directory holding `path` for writing, creating the missing
    /// directories (0755, root) when `create`. `follow` lets symbolic links on the
    /// way be followed (inside the root); otherwise one is an error naming it.
    /// `Ok(None)`: missing and not created.
    fn dir_for_write<'p>(&self, path: &'p str, follow: bool, create: bool) -> Result<Option<(OwnedFd, &'p str)>, ApplyError> {
        let comps = components(path).ok_or_else(|| ApplyError::BadPath { path: path.into() })?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(ApplyError::BadPath { path: path.into() });
        };
        let resolve = if follow { CONFINED } else { CONFINED | ResolveFlags::NO_SYMLINKS };
        let open = |k: usize| {
            let rel = if k == 0 { ".".to_string() } else { dirs[..k].join("/") };
            openat2(&self.fd, &rel, OFlags::RDONLY | OFlags::DIRECTORY, 0, resolve)
        };
        // The longest existing prefix of the parent directories.
        let mut k = dirs.len();
        let mut dir = loop {
            match open(k) {
                Ok(fd) => break fd,
                Err(Errno::NOENT) if k > 0 => k -= 1,
                Err(Errno::LOOP) if !follow => {
                    return Err(ApplyError::SymlinkInPath {
                        path: path.into(),
                        link: self.first_symlink(dirs).unwrap_or_else(|| join(&dirs[..k])),
                    })
                }
                Err(Errno::NOTDIR) => {
                    return Err(ApplyError::NotADirectory {
                        path: path.into(),
                        component: self.first_non_dir(dirs).unwrap_or_else(|| join(&dirs[..k])),
                    })
                }
                Err(e) => return Err(io_err(path, "open the directory of")(e)),
            }
        };
        if k < dirs.len() && !create {
            return Ok(None);
        }
        for (i, comp) in dirs.iter().enumerate().skip(k) {
            let here = join(&dirs[..=i]);
            match rfs::mkdirat(&dir, *comp, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err(&here, "create the directory")(e)),
            }
            let next = match rfs::openat(
                &dir,
                *comp,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::LOOP) => {
                    return Err(ApplyError::SymlinkInPath {
                        path: path.into(),
                        link: here,
                    })
                }
                Err(Errno::NOTDIR) => {
                    return Err(ApplyError::NotADirectory {
                        path: path.into(),
                        component: here,
                    })
                }
                Err(e) => return Err(io_err(&here, "open the new directory")(e)),
            };
            rfs::fchmod(&next, Mode::from_raw_mode(0o755)).map_err(io_err(&here, "chmod the new directory"))?;
            rfs::fsync(&dir).map_err(io_err(&here, "fsync the directory holding"))?;
            dir = next;
        }
        Ok(Some((dir, name)))
    }

    /// The first of `dirs`' prefixes that is a symbolic link, for messages.
    fn first_symlink(&self, dirs: &[&str]) -> Option<String> {
        (1..=dirs.len())
            .map(|i| join(&dirs[..i]))
            .find(|p| matches!(self.lstat(p), Ok(Some(m)) if m.kind == Kind::Symlink))
    }

    fn first_non_dir(&self, dirs: &[&str]) -> Option<String> {
        (1..=dirs.len())
            .map(|i| join(&dirs[..i]))
            .find(|p| matches!(self.stat(p), Ok(Some(m)) if m.kind != Kind::Dir))
    }
}

/// Executes `plan` inside the root at `root`.
pub fn apply(root: &Path, plan: &Plan) -> Result<ApplyReport, ApplyError> {
    apply_with(root, plan, &mut |_, _| Ok(()))
}

/// [`apply`] calling `after_step(index, step)` after each completed step; an error
/// from it stops the run as [`ApplyError::Interrupted`] (tests inject crashes so).
pub fn apply_with(root: &Path, plan: &Plan, after_step: &mut dyn FnMut(usize, &Step) -> io::Result<()>) -> Result<ApplyReport, ApplyError> {
    let label = root.display().to_string();
    let rd = RootDir::open(root).map_err(ioe(&label, "open the new root"))?;
    // Preflight: every directory on the way is checked before the first write,
    // so a hostile layout is refused without a half-made machine.
    for step in &plan.steps {
        rd.dir_for_write(step.op.path(), step.user_path, false)?;
    }
    let mut report = ApplyReport::default();
    for (index, step) in plan.steps.iter().enumerate() {
        match apply_step(&rd, step)? {
            Some(what) => report.changed.push(what),
            None => report.unchanged += 1,
        }
        after_step(index, step).map_err(|source| ApplyError::Interrupted {
            index,
            path: step.op.path().to_string(),
            source,
        })?;
    }
    Ok(report)
}

/// One step; `Some(description)` when something changed.
fn apply_step(rd: &RootDir, step: &Step) -> Result<Option<String>, ApplyError> {
    let path = step.op.path();
    let create = !matches!(step.op, Op::Remove { .. });
    let Some((dir, name)) = rd.dir_for_write(path, step.user_path, create)? else {
        return Ok(None); // removing from a directory that does not exist
    };
    let current = match rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Some(meta(&st)),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(io_err(path, "stat")(e)),
    };
    match &step.op {
        Op::Write {
            contents, mode, uid, gid, ..
        } => write_file(&dir, name, path, current, contents, *mode, *uid, *gid),
        Op::Symlink { target, .. } => symlink(&dir, name, path, current, target),
        Op::Remove { .. } => match current {
            None => Ok(None),
            Some(m) if m.kind == Kind::Dir => Err(ApplyError::IsADirectory { path: path.into() }),
            Some(_) => {
                rfs::unlinkat(&dir, name, AtFlags::empty()).map_err(io_err(path, "remove"))?;
                rfs::fsync(&dir).map_err(io_err(path, "fsync the directory holding"))?;
                Ok(Some(format!("removed {path}")))
            }
        },
        Op::Mkdir { mode, uid, gid, .. } => mkdir(&dir, name, path, current, *mode, *uid, *gid),
    }
}

fn same_contents(dir: &OwnedFd, name: &str, want: &[u8]) -> bool {
    let Ok(fd) = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut have = Vec::with_capacity(want.len());
    match std::fs::File::from(fd).take(want.len() as u64 + 1).read_to_end(&mut have) {
        Ok(_) => have == want,
        Err(_) => false,
    }
}

fn remove_stale_tmp(dir: &OwnedFd, tmp: &str, path: &str) -> Result<(), ApplyError> {
    match rfs::unlinkat(dir, tmp, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(path, "remove the stale temporary file of")(e)),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_file(
    dir: &OwnedFd,
    name: &str,
    path: &str,
    current: Option<Meta>,
    contents: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<Option<String>, ApplyError> {
    if let Some(m) = current {
        match m.kind {
            Kind::Dir => return Err(ApplyError::IsADirectory { path: path.into() }),
            Kind::File
                if m.mode == mode
                    && m.uid == uid
                    && m.gid == gid
                    && m.size == contents.len() as u64
                    && same_contents(dir, name, contents) =>
            {
                return Ok(None)
            }
            _ => {}
        }
    }
    let tmp = format!("{name}{TMP_SUFFIX}");
    remove_stale_tmp(dir, &tmp, path)?;
    let fd = rfs::openat(
        dir,
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    )
    .map_err(io_err(path, "create the temporary file of"))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(contents).map_err(ioe(path, "write"))?;
    rfs::fchown(&f, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(io_err(path, "chown"))?;
    rfs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(io_err(path, "chmod"))?;
    if current.is_some_and(|m| m.kind == Kind::File) {
        copy_selinux_label(dir, name, &f);
    }
    rfs::fsync(&f).map_err(io_err(path, "fsync"))?;
    drop(f);
    rfs::renameat(dir, &tmp, dir, name).map_err(io_err(path, "rename the temporary file over"))?;
    rfs::fsync(dir).map_err(io_err(path, "fsync the directory holding"))?;
    Ok(Some(match current.map(|m| m.kind) {
        None => format!("wrote {path}"),
        Some(Kind::Symlink) => format!("replaced the symbolic link {path} by a file"),
        Some(_) => format!("rewrote {path}"),
    }))
}

/// Best effort: a missing label or a filesystem without xattrs is not an error.
fn copy_selinux_label(dir: &OwnedFd, name: &str, to: &std::fs::File) {
    let Ok(old) = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let mut buf = [0u8; 256];
    if let Ok(n) = rfs::fgetxattr(&old, SELINUX_XATTR, &mut buf[..]) {
        let _ = rfs::fsetxattr(to, SELINUX_XATTR, &buf[..n], rfs::XattrFlags::empty());
    }
}

fn symlink(dir: &OwnedFd, name: &str, path: &str, current: Option<Meta>, target: &str) -> Result<Option<String>, ApplyError> {
    match current.map(|m| m.kind) {
        Some(Kind::Dir) => return Err(ApplyError::IsADirectory { path: path.into() }),
        Some(Kind::Symlink) => {
            if let Ok(t) = rfs::readlinkat(dir, name, Vec::new()) {
                if t.as_bytes() == target.as_bytes() {
                    return Ok(None);
                }
            }
        }
        _ => {}
    }
    let tmp = format!("{name}{TMP_SUFFIX}");
    remove_stale_tmp(dir, &tmp, path)?;
    rfs::symlinkat(target, dir, &tmp).map_err(io_err(path, "create the temporary link of"))?;
    rfs::renameat(dir, &tmp, dir, name).map_err(io_err(path, "rename the temporary link over"))?;
    rfs::fsync(dir).map_err(io_err(path, "fsync the directory holding"))?;
    Ok(Some(format!("linked {path} -> {target}")))
}

fn mkdir(
    dir: &OwnedFd,
    name: &str,
    path: &str,
    current: Option<Meta>,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<Option<String>, ApplyError> {
    let mut what = None;
    match current.map(|m| m.kind) {
        Some(Kind::Dir) => {}
        Some(Kind::Symlink) => {
            rfs::unlinkat(dir, name, AtFlags::empty()).map_err(io_err(path, "remove the symbolic link"))?;
            what = Some(format!("replaced the symbolic link {path} by a directory"));
        }
        Some(_) => {
            return Err(ApplyError::NotADirectory {
                path: path.into(),
                component: path.into(),
            })
        }
        None => {}
    }
    if current.map(|m| m.kind) != Some(Kind::Dir) {
        rfs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o777)).map_err(io_err(path, "create the directory"))?;
        what.get_or_insert_with(|| format!("created {path}"));
    }
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err(path, "open the directory"))?;
    let m = meta(&rfs::fstat(&fd).map_err(io_err(path, "stat"))?);
    if m.uid != uid || m.gid != gid {
        rfs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(io_err(path, "chown"))?;
    }
    if m.uid != uid || m.gid != gid || m.mode != mode {
        rfs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io_err(path, "chmod"))?;
        what.get_or_insert_with(|| format!("set the owner and mode of {path}"));
    }
    if what.is_some() {
        rfs::fsync(&fd).map_err(io_err(path, "fsync"))?;
        rfs::fsync(dir).map_err(io_err(path, "fsync the directory holding"))?;
    }
    Ok(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firstboot::plan::{Op, Plan, Step};
    use std::os::unix::fs::{symlink as mklink, MetadataExt, PermissionsExt};

    fn write(path: &str, contents: &str, mode: u32) -> Step {
        Step {
            op: Op::Write {
                path: path.into(),
                contents: contents.as_bytes().to_vec(),
                mode,
                uid: 0,
                gid: 0,
            },
            reason: "test".into(),
            user_path: false,
        }
    }

    #[test]
    fn components_are_normalised() {
        assert_eq!(components("/etc/hostname"), Some(vec!["etc", "hostname"]));
        assert_eq!(components("/"), Some(vec![]));
        assert_eq!(components("etc"), None);
        assert_eq!(components("/etc/../x"), None);
        assert_eq!(components("/etc//x"), None);
    }

    #[test]
    fn writes_replace_symlinks_and_converge() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        mklink(&outside, root.join("etc/shadow")).unwrap();
        let plan = Plan {
            steps: vec![write("/etc/shadow", "new\n", 0o640), write("/etc/a/b/c", "x", 0o600)],
            warnings: vec![],
        };
        let r = apply(&root, &plan).unwrap();
        assert_eq!(r.changed.len(), 2, "{r:?}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
        let m = std::fs::symlink_metadata(root.join("etc/shadow")).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::metadata(root.join("etc/a/b")).unwrap().permissions().mode() & 0o777, 0o755);
        let r = apply(&root, &plan).unwrap();
        assert_eq!(
            r,
            ApplyReport {
                changed: vec![],
                unchanged: 2
            }
        );
        // A stale temporary file from a crash is cleaned up by the next write.
        std::fs::write(root.join("etc/hostname.hninit-tmp"), "half").unwrap();
        apply(
            &root,
            &Plan {
                steps: vec![write("/etc/hostname", "h\n", 0o644)],
                warnings: vec![],
            },
        )
        .unwrap();
        assert!(!root.join("etc/hostname.hninit-tmp").exists());
        assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).unwrap(), "h\n");
        assert_eq!(std::fs::metadata(root.join("etc/hostname")).unwrap().uid(), 0);
    }

    #[test]
    fn symlinked_system_dirs_are_refused_before_any_write() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        mklink("../../../..", root.join("etc/ssh")).unwrap();
        let plan = Plan {
            steps: vec![write("/etc/hostname", "h\n", 0o644), write("/etc/ssh/key", "k", 0o600)],
            warnings: vec![],
        };
        match apply(&root, &plan) {
            Err(ApplyError::SymlinkInPath { path, link }) => {
                assert_eq!(path, "/etc/ssh/key");
                assert_eq!(link, "/etc/ssh");
            }
            r => panic!("{r:?}"),
        }
        assert!(!root.join("etc/hostname").exists());
    }

    #[test]
    fn reads_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(t.path().join("host"), "host").unwrap();
        mklink(t.path().join("host"), root.join("etc/abs")).unwrap();
        mklink("../../../../host", root.join("etc/rel")).unwrap();
        std::fs::write(root.join("host"), "inside").unwrap();
        let rd = RootDir::open(&root).unwrap();
        assert_eq!(rd.read("/etc/abs", 100).unwrap(), None);
        assert_eq!(rd.read("/etc/rel", 100).unwrap().unwrap(), b"inside");
        assert_eq!(rd.readlink("/etc/rel").unwrap().unwrap(), "../../../../host");
        assert_eq!(rd.lstat("/etc/rel").unwrap().unwrap().kind, Kind::Symlink);
        assert_eq!(rd.list("/etc").unwrap(), vec!["abs", "rel"]);
    }

    #[test]
    fn mkdir_replaces_a_symlink_and_sets_the_owner() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("home")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        mklink("/etc", root.join("home/alice")).unwrap();
        let step = Step {
            op: Op::Mkdir {
                path: "/home/alice".into(),
                mode: 0o700,
                uid: 1000,
                gid: 1000,
            },
            reason: "home".into(),
            user_path: true,
        };
        let plan = Plan {
            steps: vec![step],
            warnings: vec![],
        };
        apply(&root, &plan).unwrap();
        let m = std::fs::symlink_metadata(root.join("home/alice")).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.uid(), m.gid(), m.permissions().mode() & 0o7777), (1000, 1000, 0o700));
        assert_eq!(std::fs::metadata(root.join("etc")).unwrap().uid(), 0);
        assert_eq!(apply(&root, &plan).unwrap().changed.len(), 0);
    }
}
