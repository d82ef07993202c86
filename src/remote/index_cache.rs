//! The block indexes of the host's own images, cached in `hn-state/bidx-cache/`
//! so that an adaptive stage does not re-hash gigabytes each time. An entry is
//! named by the file's identity — device, inode, size, modification time in
//! nanoseconds — and the block size: `DEV-INO-SIZE-MTIMENS-BLOCK.bidx`. A
//! rename (the slot rotation) keeps the identity, any write changes the
//! modification time, so an entry describes the bytes it was made from. The
//! index of an adaptively staged image is stored as soon as it checked out, so
//! once rotated in it costs no hashing at the next stage. Entries of files that
//! are no longer there are pruned at each store. Written atomically (temp, fsync,
//! rename, fsync dir); a damaged or wrong entry costs at most a failed adaptive
//! attempt: the assembled image is checked against the published index's sha256.

use super::bidx::{Index, MAX_INDEX};
use crate::slots::dir::{remove_if_exists, write_atomic, Dir, RealDir};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The cache's directory under the state directory.
pub const DIR: &str = "bidx-cache";

/// The entry name of `f` (an open image) for blocks of `block` bytes.
pub fn key(f: &File, block: u32) -> io::Result<String> {
    let m = f.metadata()?;
    let mtime_ns = (m.mtime() as i128) * 1_000_000_000 + m.mtime_nsec() as i128;
    Ok(format!("{}-{}-{}-{}-{block}.bidx", m.dev(), m.ino(), m.size(), mtime_ns))
}

/// The cache in `state` (`hn-state/`), created when missing; `None` when the
/// state directory does not exist (a host never booted by hninit).
pub struct Cache {
    dir: RealDir,
}

impl Cache {
    pub fn open(state: &Path) -> io::Result<Option<Cache>> {
        if !state.is_dir() {
            return Ok(None);
        }
        Ok(Some(Cache { dir: RealDir::open(&state.join(DIR), true)? }))
    }

    /// The cached index of `f`, when there is one that fits (size, block).
    pub fn get(&self, f: &File, block: u32) -> Option<Index> {
        let name = key(f, block).ok()?;
        let raw = self.dir.read(&name, MAX_INDEX as usize).ok()??;
        let idx = Index::parse(&raw).ok()?;
        let size = f.metadata().ok()?.len();
        (idx.block == block && idx.size == size).then_some(idx)
    }

    /// Stores the index of `f`; then removes every entry whose key is not in
    /// `keep` (the keys of the images present) nor this one.
    pub fn put(&self, f: &File, idx: &Index, keep: &[String]) -> io::Result<()> {
        let name = key(f, idx.block)?;
        write_atomic(&self.dir, &name, &idx.to_bytes())?;
        let keep_inode = |n: &str| {
            let prefix = |k: &str| k.rsplit_once('-').map(|x| x.0.to_string());
            keep.iter().chain(std::iter::once(&name)).any(|k| prefix(k) == prefix(n))
        };
        let mut removed = false;
        for e in std::fs::read_dir(self.dir.path())? {
            let n = e?.file_name().to_string_lossy().into_owned();
            if n.ends_with(".bidx") && !keep_inode(&n) || n.ends_with(".tmp") {
                removed |= remove_if_exists(&self.dir, &n)?;
            }
        }
        if removed {
            self.dir.sync()?;
        }
        Ok(())
    }
}

/// The index of the local image `f`: from the cache when it has it, else built
/// (one read) and stored. `cached` tells which.
pub fn local_index(cache: Option<&Cache>, f: &File, block: u32, keep: &[String]) -> io::Result<(Index, bool)> {
    if let Some(idx) = cache.and_then(|c| c.get(f, block)) {
        return Ok((idx, true));
    }
    // Holes are not read (a sparse image is mostly holes); the image's own
    // sha256 is not needed for reusing its blocks.
    let idx = Index::build_file(f, block, false)?;
    if let Some(c) = cache {
        // A cache that cannot be written only costs the next stage a re-hash.
        let _ = c.put(f, &idx, keep);
    }
    Ok((idx, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    #[test]
    fn an_entry_follows_the_file_identity() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("hn-state");
        std::fs::create_dir(&state).unwrap();
        let img = t.path().join("a.img");
        std::fs::write(&img, vec![7u8; 200_000]).unwrap();
        let cache = Cache::open(&state).unwrap().unwrap();
        let f = File::open(&img).unwrap();
        let (i1, cached) = local_index(Some(&cache), &f, 65536, &[]).unwrap();
        assert!(!cached);
        let (i2, cached) = local_index(Some(&cache), &File::open(&img).unwrap(), 65536, &[]).unwrap();
        assert!(cached && i1 == i2);
        // A rename keeps it (the slot rotation).
        let moved = t.path().join("b.img");
        std::fs::rename(&img, &moved).unwrap();
        assert!(local_index(Some(&cache), &File::open(&moved).unwrap(), 65536, &[]).unwrap().1);
        // Another block size is another entry.
        assert!(!local_index(Some(&cache), &File::open(&moved).unwrap(), 4096, &[]).unwrap().1);
        // A write changes the identity: built again, and right.
        let mut w = std::fs::OpenOptions::new().write(true).open(&moved).unwrap();
        w.seek(io::SeekFrom::Start(70_000)).unwrap();
        w.write_all(b"changed").unwrap();
        w.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3)).unwrap();
        drop(w);
        let f = File::open(&moved).unwrap();
        let (i3, cached) = local_index(Some(&cache), &f, 65536, &[]).unwrap();
        assert!(!cached);
        let read = Index::build(&mut &File::open(&moved).unwrap(), 65536).unwrap();
        assert_eq!((i3.size, &i3.blocks), (read.size, &read.blocks));
        assert_ne!(i3.blocks[1], i1.blocks[1]);
        // Entries of the old identity were pruned (not in `keep`).
        let names: Vec<_> = std::fs::read_dir(state.join(DIR)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // No state directory: no cache.
        assert!(Cache::open(&t.path().join("none")).unwrap().is_none());
    }
}
