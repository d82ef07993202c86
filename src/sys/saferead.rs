//! The one way a file is read at boot (and by `hnctl`) from the host partition or
//! an image: through a directory file descriptor, opened `O_NOFOLLOW |
//! O_NONBLOCK | O_CLOEXEC | O_NOCTTY` (or, inside an image, with openat2
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` so an absolute symlink resolves in
//! the image, never in the initramfs), regular files only (`fstat` after the
//! open), a size cap per read, and an error that names the file.
//!
//! A FIFO, a device node, a socket or a directory under a state file's name is
//! [`ReadError::NotRegular`], a symlink is [`ReadError::Symlink`], an oversized
//! file [`ReadError::TooBig`]: the caller decides what *invalid* means for it
//! (reject the staged image, set the state file aside); only
//! [`ReadError::Absent`] means "not there". `tests/boot_reads.rs` checks that the
//! boot steps read files through this module only.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// How the last components of a name may be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// A plain name in the directory: no symlink at all (state files, sidecars).
    Never,
    /// A relative path inside an image root: symlinks are followed but resolved
    /// inside the directory (openat2 `RESOLVE_IN_ROOT`, no magic links); `..`
    /// cannot leave it. Without openat2, no symlink is followed.
    InRoot,
}

/// What went wrong, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{file}: no such file")]
    Absent { file: String },
    #[error("{file} is a symbolic link (not followed)")]
    Symlink { file: String },
    #[error("{file} is {kind}, not a regular file")]
    NotRegular { file: String, kind: &'static str },
    #[error("{file} is larger than {max} bytes")]
    TooBig { file: String, max: u64 },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
}

impl ReadError {
    /// The file does not exist (the only case that may be read as "absent").
    pub fn is_absent(&self) -> bool {
        matches!(self, ReadError::Absent { .. })
    }
    /// The file is there but is not what it must be (type, size, symlink):
    /// invalid rather than unreadable by accident.
    pub fn is_invalid(&self) -> bool {
        matches!(self, ReadError::Symlink { .. } | ReadError::NotRegular { .. } | ReadError::TooBig { .. })
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        let kind = match &e {
            ReadError::Absent { .. } => io::ErrorKind::NotFound,
            ReadError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        _ => "not a regular file",
    }
}

/// A directory to read files from, by file descriptor.
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl SafeDir {
    /// Opens the directory `path` (a symlink as its last component is refused).
    pub fn open(path: &Path) -> io::Result<SafeDir> {
        let fd = rfs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty())?;
        Ok(SafeDir { fd, path: path.to_path_buf() })
    }

    /// Wraps an already open directory descriptor; `path` is for messages.
    pub fn from_fd(fd: OwnedFd, path: &Path) -> SafeDir {
        SafeDir { fd, path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    /// Opens `name` for streaming: a regular file, never blocking on open,
    /// returned in blocking mode for ordinary reads (a regular file never blocks
    /// anyway). The caller bounds what it reads.
    pub fn open_file(&self, name: &str, follow: Follow) -> Result<File, ReadError> {
        open_at(self.fd.as_fd(), name, follow, &|| self.shown(name))
    }

    /// Reads all of `name` if it has at most `max` bytes.
    pub fn read(&self, name: &str, follow: Follow, max: u64) -> Result<Vec<u8>, ReadError> {
        let f = self.open_file(name, follow)?;
        read_capped(f, max, &|| self.shown(name))
    }

    /// Reads `name` as UTF-8 text of at most `max` bytes (invalid UTF-8 is an error).
    pub fn read_text(&self, name: &str, follow: Follow, max: u64) -> Result<String, ReadError> {
        let b = self.read(name, follow, max)?;
        String::from_utf8(b).map_err(|_| ReadError::Io {
            file: self.shown(name),
            source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
        })
    }
}

/// Opens `name` under the directory `dir` the safe way (see [`SafeDir::open_file`]).
/// `shown` names the file in errors.
pub fn open_at(dir: rustix::fd::BorrowedFd, name: &str, follow: Follow, shown: &dyn Fn() -> String) -> Result<File, ReadError> {
    let file = || shown();
    if name.is_empty() || (follow == Follow::Never && name.contains('/')) {
        return Err(ReadError::Io {
            file: file(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a plain file name"),
        });
    }
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let opened = match follow {
        Follow::Never => rfs::openat(dir, name, flags | OFlags::NOFOLLOW, Mode::empty()),
        Follow::InRoot => match rfs::openat2(dir, name, flags, Mode::empty(), ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS) {
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
                if name.split('/').any(|c| c == "..") {
                    return Err(ReadError::Io {
                        file: file(),
                        source: io::Error::new(io::ErrorKind::InvalidInput, "'..' without openat2"),
                    });
                }
                rfs::openat(dir, name, flags | OFlags::NOFOLLOW, Mode::empty())
            }
            r => r,
        },
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(ReadError::Absent { file: file() }),
        // O_NOFOLLOW on a symlink: ELOOP.
        Err(rustix::io::Errno::LOOP) => return Err(ReadError::Symlink { file: file() }),
        Err(e) => return Err(ReadError::Io { file: file(), source: e.into() }),
    };
    let st = rfs::fstat(&fd).map_err(|e| ReadError::Io { file: file(), source: e.into() })?;
    let t = FileType::from_raw_mode(st.st_mode);
    if t != FileType::RegularFile {
        return Err(ReadError::NotRegular { file: file(), kind: kind_name(t) });
    }
    // Back to blocking mode: a regular file's reads do not block on O_NONBLOCK
    // anyway, but kexec_file_load and friends get a plain descriptor.
    if let Ok(fl) = rfs::fcntl_getfl(&fd) {
        let _ = rfs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK);
    }
    Ok(File::from(fd))
}

/// Reads all of an open file if it has at most `max` bytes.
pub fn read_capped(f: File, max: u64, shown: &dyn Fn() -> String) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| ReadError::Io { file: shown(), source: e })?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooBig { file: shown(), max });
    }
    Ok(buf)
}

/// Reads the file at `path` (any directory; its last component is not followed)
/// with the rules above: for `hnctl`'s file arguments and the few absolute paths.
pub fn read_path(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let f = open_path(path)?;
    read_capped(f, max, &|| path.display().to_string())
}

/// Opens the file at `path` for streaming with the rules above.
pub fn open_path(path: &Path) -> Result<File, ReadError> {
    let shown = || path.display().to_string();
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (if p.as_os_str().is_empty() { Path::new(".") } else { p }, n.to_string_lossy().into_owned()),
        _ => {
            return Err(ReadError::Io {
                file: shown(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
            })
        }
    };
    let dfd = match rfs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(ReadError::Absent { file: shown() }),
        Err(e) => return Err(ReadError::Io { file: shown(), source: e.into() }),
    };
    open_at(dfd.as_fd(), &name, Follow::Never, &shown)
}

impl fmt::Debug for SafeDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafeDir({})", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::CWD;
    use std::os::unix::fs::symlink;

    fn mkfifo(p: &Path) {
        rustix::fs::mknodat(CWD, p, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    }

    #[test]
    fn regular_files_only_never_blocking_never_following() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        std::fs::write(p.join("ok"), "hello").unwrap();
        std::fs::write(p.join("big"), vec![b'x'; 100]).unwrap();
        mkfifo(&p.join("fifo"));
        symlink("/dev/zero", p.join("zero")).unwrap();
        symlink("ok", p.join("rel")).unwrap();
        std::fs::create_dir(p.join("dir")).unwrap();
        let d = SafeDir::open(p).unwrap();
        assert_eq!(d.read("ok", Follow::Never, 5).unwrap(), b"hello");
        let e = d.read("fifo", Follow::Never, 5).unwrap_err();
        assert!(matches!(e, ReadError::NotRegular { kind: "a FIFO", .. }), "{e}");
        assert!(e.to_string().contains("fifo is a FIFO"), "{e}");
        assert!(matches!(d.read("zero", Follow::Never, 5), Err(ReadError::Symlink { .. })));
        assert!(matches!(d.read("rel", Follow::Never, 5), Err(ReadError::Symlink { .. })));
        assert!(matches!(d.read("dir", Follow::Never, 5), Err(ReadError::NotRegular { .. })));
        assert!(matches!(d.read("big", Follow::Never, 99), Err(ReadError::TooBig { max: 99, .. })));
        assert!(d.read("none", Follow::Never, 5).unwrap_err().is_absent());
        assert!(d.read("a/ok", Follow::Never, 5).is_err());
        std::fs::write(p.join("latin1"), [0xe9u8, b'\n']).unwrap();
        assert!(d.read_text("latin1", Follow::Never, 5).is_err());
    }

    #[test]
    fn in_root_symlinks_stay_in_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-1"), "kernel").unwrap();
        symlink("vmlinuz-1", root.join("boot/kernel")).unwrap();
        // Outside the root: an absolute link must not reach it.
        std::fs::write(t.path().join("secret"), "outside").unwrap();
        symlink(t.path().join("secret"), root.join("boot/abs")).unwrap();
        symlink("../../secret", root.join("boot/up")).unwrap();
        symlink("/dev/zero", root.join("boot/initramfs")).unwrap();
        mkfifo(&root.join("boot/fifo"));
        let d = SafeDir::open(&root).unwrap();
        assert_eq!(d.read("boot/kernel", Follow::InRoot, 100).unwrap(), b"kernel");
        // Resolved inside the root, where there is no such file.
        assert!(d.read("boot/abs", Follow::InRoot, 100).unwrap_err().is_absent());
        assert!(d.read("boot/up", Follow::InRoot, 100).unwrap_err().is_absent());
        assert!(d.read("boot/initramfs", Follow::InRoot, 100).unwrap_err().is_absent());
        assert!(matches!(d.open_file("boot/fifo", Follow::InRoot), Err(ReadError::NotRegular { .. })));
    }

    #[test]
    fn paths() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("c.json"), "{}").unwrap();
        mkfifo(&t.path().join("f"));
        assert_eq!(read_path(&t.path().join("c.json"), 10).unwrap(), b"{}");
        assert!(matches!(read_path(&t.path().join("f"), 10), Err(ReadError::NotRegular { .. })));
        assert!(read_path(&t.path().join("nope/x"), 10).unwrap_err().is_absent());
    }
}
