//! The key store: trusted public keys in `<etc>/trusted.d/*.pub` and revoked key
//! ids in `<etc>/revoked.d/<KEYID>` (one empty or commented file per key id,
//! named by the key id as minisign prints it). Read with the boot's rules: every
//! file opened `O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`, regular files only, size and
//! count caps. A damaged entry is an error, never skipped: skipping the only key
//! would turn "signature required" into "no keys, not verified", and a mistyped
//! revocation would silently revoke nothing.

use super::minisign::{KeyId, PublicKey, MAX_PUBLIC_KEY_FILE};
use rustix::fs::{self as rfs, Mode, OFlags};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub const TRUSTED_DIR: &str = "trusted.d";
pub const REVOKED_DIR: &str = "revoked.d";
/// Where `/init` (in the initramfs) and `hnctl` (in the running system) look.
pub const DEFAULT_ETC: &str = "/etc/hninit";
/// Most entries read from either directory.
pub const MAX_ENTRIES: usize = 256;

/// A trusted key and the file it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub key: PublicKey,
    /// File name inside `trusted.d/`.
    pub file: String,
}

/// The keys an image may be signed with, and the revoked key ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyStore {
    /// Sorted by file name.
    pub trusted: Vec<TrustedKey>,
    /// Sorted, without duplicates.
    pub revoked: Vec<KeyId>,
}

/// `<path>: <reason>`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct KeyStoreError {
    pub path: String,
    pub reason: String,
}

impl KeyStore {
    /// No trusted key: images are not verified (and this is said).
    pub fn is_empty(&self) -> bool {
        self.trusted.is_empty()
    }

    pub fn find(&self, id: KeyId) -> Option<&TrustedKey> {
        self.trusted.iter().find(|t| t.key.id == id)
    }

    pub fn is_revoked(&self, id: KeyId) -> bool {
        self.revoked.contains(&id)
    }

    /// Adds a key (for tests and for building a store from files named on a
    /// command line). A different key under an id already present is an error.
    pub fn add(&mut self, key: PublicKey, file: &str) -> Result<(), KeyStoreError> {
        if let Some(t) = self.find(key.id) {
            if t.key != key {
                return Err(KeyStoreError {
                    path: file.to_string(),
                    reason: format!("key id {} is also {} with a different key", key.id, t.file),
                });
            }
            return Ok(());
        }
        self.trusted.push(TrustedKey {
            key,
            file: file.to_string(),
        });
        Ok(())
    }

    /// Loads `<etc>/trusted.d/*.pub` and `<etc>/revoked.d/*`; missing
    /// directories are empty.
    pub fn load(etc: &Path) -> Result<KeyStore, KeyStoreError> {
        let mut store = KeyStore::default();
        let tdir = etc.join(TRUSTED_DIR);
        let (fd, names) = entries(&tdir)?;
        for (name, fd) in names.iter().filter_map(|n| Some((n, fd.as_ref()?))) {
            if !name.ends_with(".pub") {
                continue;
            }
            let path = tdir.join(name);
            let err = |reason: String| KeyStoreError {
                path: path.display().to_string(),
                reason,
            };
            let text = read_capped(fd, name, MAX_PUBLIC_KEY_FILE).map_err(|e| err(e.to_string()))?;
            let key = PublicKey::parse_file(&text).map_err(|e| err(e.to_string()))?;
            store.add(key, name)?;
        }
        crate::util::sort_by(&mut store.trusted, &|a, b| a.file.cmp(&b.file));
        let rdir = etc.join(REVOKED_DIR);
        let (fd, names) = entries(&rdir)?;
        for (name, fd) in names.iter().filter_map(|n| Some((n, fd.as_ref()?))) {
            let path = rdir.join(name);
            let id: KeyId = name.parse().map_err(|e: String| KeyStoreError {
                path: path.display().to_string(),
                reason: format!("{e}; revoked.d/ holds one file per revoked key, named by its id"),
            })?;
            // Opened like any other entry: a link or a device is refused.
            read_capped(fd, name, 4096).map_err(|e| KeyStoreError {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            store.revoked.push(id);
        }
        crate::util::sort(&mut store.revoked);
        store.revoked.dedup();
        Ok(store)
    }
}

/// The directory `dir` (not a link) and its non-hidden entry names, sorted; a
/// missing directory has none.
fn entries(dir: &Path) -> Result<(Option<OwnedFd>, Vec<String>), KeyStoreError> {
    let err = |reason: String| KeyStoreError {
        path: dir.display().to_string(),
        reason,
    };
    let fd = match rfs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok((None, Vec::new())),
        Err(e) => return Err(err(format!("opening the directory: {}", io::Error::from(e)))),
    };
    // Listed by path: the directory was just opened without following a link, and
    // whoever could swap it could as well write keys into it.
    let rd = std::fs::read_dir(dir).map_err(|e| err(format!("listing: {e}")))?;
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| err(format!("listing: {e}")))?;
        let name = ent
            .file_name()
            .into_string()
            .map_err(|n| err(format!("entry {n:?} is not UTF-8")))?;
        if name.starts_with('.') {
            continue;
        }
        names.push(name);
        if names.len() > MAX_ENTRIES {
            return Err(err(format!("more than {MAX_ENTRIES} entries")));
        }
    }
    crate::util::sort(&mut names);
    Ok((Some(fd), names))
}

/// Reads the regular file `name` in `dir` (no link followed, never blocking),
/// at most `cap` bytes.
fn read_capped(dir: &OwnedFd, name: &str, cap: usize) -> io::Result<Vec<u8>> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            io::Error::new(io::ErrorKind::InvalidData, "is a symbolic link")
        } else {
            io::Error::from(e)
        }
    })?;
    let f = std::fs::File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(cap as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > cap {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {cap} bytes")));
    }
    Ok(buf)
}

/// `<etc>` for a key store given on a command line, or the default.
pub fn etc_dir(given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_ETC))
}
