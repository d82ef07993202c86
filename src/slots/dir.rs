//! A directory on the host partition seen through the few operations the slot
//! logic needs, each one system call (or one create-write-fsync) on a directory
//! file descriptor, so that tests can run the same logic against a temporary
//! directory and inject a crash after any single mutating step.

use rustix::fd::OwnedFd;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, CWD};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Identity of a file: survives rename, differs between two images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    pub ino: u64,
    pub size: u64,
}

pub trait Dir {
    /// Where this directory is, for messages.
    fn label(&self) -> String;
    fn id(&self, name: &str) -> io::Result<Option<FileId>>;
    fn exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.id(name)?.is_some())
    }
    fn read(&self, name: &str, max: usize) -> io::Result<Option<Vec<u8>>>;
    // Mutating steps: each is one crash point in the tests.
    fn link(&self, from: &str, to: &str) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Creates or truncates `name`, writes `data`, fsyncs the file.
    fn write_synced(&self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Appends `data` to `name` (created 0600 if missing) and fsyncs it.
    fn append_synced(&self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Appends `data` to `name` (created 0600 if missing) without waiting for the
    /// disk, for what a power cut may lose. By default the same as
    /// [`Dir::append_synced`].
    fn append(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.append_synced(name, data)
    }
    /// fsync of the directory itself, making renames and links durable.
    fn sync(&self) -> io::Result<()>;
    /// Creates or truncates `name` (0600), fills it with what `src` yields from its
    /// current position to its end, fsyncs it: one mutating step however large the
    /// file (a crash leaves it partial, so the name must be a temporary one).
    /// `progress` gets the bytes done so far after each chunk.
    fn create_from(
        &self,
        name: &str,
        src: &std::fs::File,
        len_hint: Option<u64>,
        opts: CopyOpts,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<CopyInfo>;
    /// Opens `name` for reading (not following a symlink).
    fn open_read(&self, name: &str) -> io::Result<std::fs::File>;
    /// Opens `name` read-write, created (0600) if missing, not truncated, for a
    /// writer that fsyncs it itself (a resumable download into a `.part`).
    fn open_rw(&self, name: &str) -> io::Result<std::fs::File> {
        Err(io::Error::new(io::ErrorKind::Unsupported, format!("{}: open {name} read-write", self.label())))
    }
}

pub use crate::slots::copy::{CopyInfo, CopyMethod, CopyOpts};

/// Replaces `name` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(dir: &dyn Dir, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    dir.write_synced(&tmp, data)?;
    dir.rename(&tmp, name)?;
    dir.sync()
}

/// Removes `name` if present; true if something was removed.
pub fn remove_if_exists(dir: &dyn Dir, name: &str) -> io::Result<bool> {
    match dir.remove(name) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets a damaged state file aside: renames `name` to the first free
/// `name.bad-N` (N from 1 to 99; past that, `.bad-99` is replaced) and fsyncs
/// the directory. Returns the new name. Crash-safe: one rename; a crash before
/// it leaves the damaged file to be set aside again on the next boot.
pub fn set_aside(dir: &dyn Dir, name: &str) -> io::Result<String> {
    let mut to = format!("{name}.bad-99");
    for n in 1..100 {
        let candidate = format!("{name}.bad-{n}");
        if !dir.exists(&candidate)? {
            to = candidate;
            break;
        }
    }
    dir.rename(name, &to)?;
    dir.sync()?;
    Ok(to)
}

/// Whether a read error means the file is there but invalid (not a regular
/// file, a symlink, too large, not the expected text): set it aside, rather than
/// an I/O error worth retrying.
pub fn is_invalid(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
}

/// A real directory, by file descriptor.
pub struct RealDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RealDir {
    /// Opens `path`, creating it (0700) when `create` is set.
    pub fn open(path: &Path, create: bool) -> io::Result<RealDir> {
        if create {
            match rfs::mkdirat(CWD, path, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let fd = rfs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(RealDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` for writing: never following a symlink, never blocking (a
    /// FIFO without a reader is ENXIO), and only a regular file: anything else
    /// under that name is removed and the file created afresh (the names written
    /// are hninit's own temporaries and logs).
    fn open_file(&self, name: &str, flags: OFlags, mode: u32) -> io::Result<std::fs::File> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let mode = Mode::from_raw_mode(mode);
        let fd = match rfs::openat(&self.fd, name, flags, mode) {
            Ok(fd) if rfs::fstat(&fd).map(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile)? => fd,
            Ok(_) | Err(rustix::io::Errno::NXIO) | Err(rustix::io::Errno::LOOP) => {
                rfs::unlinkat(&self.fd, name, AtFlags::empty())?;
                rfs::openat(&self.fd, name, flags | OFlags::EXCL, mode)?
            }
            Err(e) => return Err(e.into()),
        };
        let fl = rfs::fcntl_getfl(&fd)?;
        rfs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK)?;
        Ok(std::fs::File::from(fd))
    }

    fn safe_open(&self, name: &str) -> Result<std::fs::File, crate::sys::saferead::ReadError> {
        use rustix::fd::AsFd;
        let shown = || self.path.join(name).display().to_string();
        crate::sys::saferead::open_at(self.fd.as_fd(), name, crate::sys::saferead::Follow::Never, &shown)
    }
}

impl Dir for RealDir {
    fn label(&self) -> String {
        self.path.display().to_string()
    }

    fn id(&self, name: &str) -> io::Result<Option<FileId>> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileId {
                ino: st.st_ino,
                size: st.st_size as u64,
            })),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn read(&self, name: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
        let shown = || self.path.join(name).display().to_string();
        match self.safe_open(name).and_then(|f| crate::sys::saferead::read_capped(f, max as u64, &shown)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_absent() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn link(&self, from: &str, to: &str) -> io::Result<()> {
        rfs::linkat(&self.fd, from, &self.fd, to, AtFlags::empty()).map_err(Into::into)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        rfs::renameat(&self.fd, from, &self.fd, to).map_err(Into::into)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        rfs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(Into::into)
    }

    fn write_synced(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut f = self.open_file(name, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC, 0o600)?;
        f.write_all(data)?;
        f.sync_all()
    }

    fn append_synced(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut f = self.open_file(name, OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND, 0o600)?;
        f.write_all(data)?;
        f.sync_all()
    }

    fn append(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut f = self.open_file(name, OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND, 0o600)?;
        f.write_all(data)
    }

    fn sync(&self) -> io::Result<()> {
        rfs::fsync(&self.fd).map_err(Into::into)
    }

    fn create_from(
        &self,
        name: &str,
        src: &std::fs::File,
        len_hint: Option<u64>,
        opts: CopyOpts,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<CopyInfo> {
        let dst = self.open_file(name, OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC, 0o600)?;
        let info = crate::slots::copy::copy_file(src, &dst, len_hint, opts, progress)?;
        dst.sync_all()?;
        Ok(info)
    }

    fn open_read(&self, name: &str) -> io::Result<std::fs::File> {
        self.safe_open(name).map_err(Into::into)
    }

    fn open_rw(&self, name: &str) -> io::Result<std::fs::File> {
        self.open_file(name, OFlags::RDWR | OFlags::CREATE, 0o600)
    }
}
