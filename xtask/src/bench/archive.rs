//! What an initramfs holds, read back from the file booted: the newc cpio
//! segments (uncompressed, zstd or gzip), hard links given their size, and
//! [`ArchiveStats`] (sizes, files, modules, `/init` and its interpreter, the
//! largest files each compressed alone).

use crate::initramfs;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::Path;

/// What an initramfs holds.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct ArchiveStats {
    /// The file's size.
    pub(super) compressed: u64,
    /// The cpio archive(s) once decompressed.
    pub(super) uncompressed: u64,
    /// `zstd`, `gzip`, `none`, or e.g. `none + zstd`.
    pub(super) compression: String,
    pub(super) files: usize,
    pub(super) modules: usize,
    pub(super) module_bytes: u64,
    /// Size of `/init`.
    pub(super) init_size: u64,
    /// The interpreter of a `#!` `/init` and its size.
    pub(super) interpreter: Option<(String, u64)>,
    /// The largest files: (path, size, size alone compressed with zstd at the
    /// product's level).
    pub(super) largest: Vec<(String, u64, u64)>,
    /// Every module: (name, size alone compressed).
    pub(super) module_sizes: Vec<(String, u64)>,
}

/// One cpio member.
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) mode: u32,
    /// (ino, dev major, dev minor): hard links share it.
    pub(super) id: (u32, u32, u32),
    pub(super) nlink: u32,
    pub(super) data: Vec<u8>,
}

pub(super) const S_IFMT: u32 = 0o170000;
pub(super) const S_IFREG: u32 = 0o100000;
pub(super) const S_IFLNK: u32 = 0o120000;

impl ArchiveStats {
    pub(super) fn of(path: &Path) -> Result<ArchiveStats> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (mut entries, uncompressed, kinds) = unpack_initramfs(&bytes)
            .with_context(|| format!("reading the archive {}", path.display()))?;
        // GNU cpio stores a hard-linked file's data once: give every link its size.
        let mut by_id: HashMap<(u32, u32, u32), usize> = HashMap::new();
        for e in entries
            .iter()
            .filter(|e| e.nlink > 1 && e.mode & S_IFMT == S_IFREG)
        {
            let n = by_id.entry(e.id).or_default();
            *n = (*n).max(e.data.len());
        }
        let size_of = |e: &Entry| -> u64 {
            if e.nlink > 1 && e.mode & S_IFMT == S_IFREG {
                by_id.get(&e.id).copied().unwrap_or(e.data.len()) as u64
            } else {
                e.data.len() as u64
            }
        };
        let mut st = ArchiveStats {
            compressed: bytes.len() as u64,
            uncompressed,
            compression: kinds.join(" + "),
            ..Default::default()
        };
        let files: BTreeMap<String, &Entry> = entries.iter().map(|e| (e.name.clone(), e)).collect();
        st.files = files
            .values()
            .filter(|e| e.mode & S_IFMT == S_IFREG)
            .count();
        for e in files.values() {
            if e.mode & S_IFMT == S_IFREG && is_module(&e.name) {
                st.modules += 1;
                st.module_bytes += size_of(e);
            }
        }
        let init = files.get("init").context("the archive has no /init")?;
        st.init_size = size_of(init);
        if let Some(rest) = init.data.strip_prefix(b"#!") {
            let line = String::from_utf8_lossy(rest.split(|&b| b == b'\n').next().unwrap_or(&[]))
                .trim()
                .to_string();
            let interp = line.split_whitespace().next().unwrap_or("").to_string();
            if let Some(target) = resolve_in(&files, &interp) {
                st.interpreter = Some((interp, size_of(target)));
            }
        }
        // Real data (not empty hard-link entries), largest first.
        entries.retain(|e| e.mode & S_IFMT == S_IFREG && !e.data.is_empty());
        entries.sort_by(|a, b| b.data.len().cmp(&a.data.len()).then(a.name.cmp(&b.name)));
        for e in entries.iter().take(8) {
            let z = zstd_alone(&e.data)?;
            st.largest.push((e.name.clone(), e.data.len() as u64, z));
        }
        if entries.len() < 200 {
            for e in entries.iter().filter(|e| is_module(&e.name)) {
                st.module_sizes
                    .push((module_stem(&e.name), zstd_alone(&e.data)?));
            }
        }
        Ok(st)
    }
}

pub(super) fn zstd_alone(data: &[u8]) -> Result<u64> {
    Ok(zstd::bulk::compress(data, initramfs::ZSTD_LEVEL)?.len() as u64)
}

pub(super) fn is_module(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| name.ends_with(s))
}

pub(super) fn module_stem(name: &str) -> String {
    hninit::modules::index::normalize_name(name)
}

/// Resolves `path` inside the archive, following symlinks in every component
/// (`/bin/sh` with `bin -> usr/bin`), to a regular file.
pub(super) fn resolve_in<'a>(files: &BTreeMap<String, &'a Entry>, path: &str) -> Option<&'a Entry> {
    let mut todo: std::collections::VecDeque<String> =
        path.split('/').map(str::to_string).collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => cur.push(c),
        }
        let e = *files.get(&cur.join("/"))?;
        if e.mode & S_IFMT == S_IFLNK {
            hops += 1;
            if hops > 32 {
                return None;
            }
            let target = String::from_utf8_lossy(&e.data).into_owned();
            cur.pop();
            if target.starts_with('/') {
                cur.clear();
            }
            for t in target.split('/').rev() {
                todo.push_front(t.to_string());
            }
        }
    }
    let e = *files.get(&cur.join("/"))?;
    (e.mode & S_IFMT == S_IFREG).then_some(e)
}

/// The members of an initramfs: uncompressed cpio segments, then (usually) one
/// compressed stream of cpio archives. Returns the members, the total
/// uncompressed size and the compression of each segment.
pub(super) fn unpack_initramfs(bytes: &[u8]) -> Result<(Vec<Entry>, u64, Vec<String>)> {
    let mut entries = Vec::new();
    let mut kinds = Vec::new();
    let mut total = 0u64;
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest[0] == 0 {
            pos += 1;
            continue;
        }
        if rest.starts_with(b"0707") {
            let n = parse_newc(rest, &mut entries)?;
            total += n as u64;
            pos += n;
            if kinds.last().map(String::as_str) != Some("none") {
                kinds.push("none".into());
            }
            continue;
        }
        let raw = if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            kinds.push("zstd".into());
            zstd::stream::decode_all(rest).context("zstd")?
        } else if rest.starts_with(&[0x1f, 0x8b]) {
            kinds.push("gzip".into());
            let mut v = Vec::new();
            flate2::read::MultiGzDecoder::new(rest).read_to_end(&mut v)?;
            v
        } else {
            bail!("unknown data at byte {pos} (only cpio, zstd and gzip are read)");
        };
        total += raw.len() as u64;
        let mut p = 0;
        while p < raw.len() {
            if raw[p] == 0 {
                p += 1;
                continue;
            }
            p += parse_newc(&raw[p..], &mut entries)?;
        }
        break;
    }
    Ok((entries, total, kinds))
}

/// Parses one newc archive up to and including its trailer; returns its length.
pub(super) fn parse_newc(data: &[u8], out: &mut Vec<Entry>) -> Result<usize> {
    let align = |n: usize| (n + 3) & !3;
    let mut pos = 0;
    loop {
        let h = data
            .get(pos..pos + 110)
            .with_context(|| format!("truncated cpio header at {pos}"))?;
        if !(h.starts_with(b"070701") || h.starts_with(b"070702")) {
            bail!("bad cpio magic at {pos}");
        }
        let field = |i: usize| -> Result<u32> {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i])?;
            Ok(u32::from_str_radix(s, 16)?)
        };
        let (ino, mode, nlink, size) = (field(0)?, field(1)?, field(4)?, field(6)? as usize);
        let (maj, min, namesize) = (field(7)?, field(8)?, field(11)? as usize);
        let name_end = pos + 110 + namesize;
        let raw_name = data
            .get(pos + 110..name_end)
            .context("truncated cpio name")?;
        let name = String::from_utf8_lossy(raw_name.strip_suffix(&[0]).unwrap_or(raw_name))
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        let start = align(name_end);
        let file = data
            .get(start..start + size)
            .context("truncated cpio data")?;
        pos = align(start + size);
        if name == "TRAILER!!!" {
            return Ok(pos.min(data.len()));
        }
        if !name.is_empty() && name != "." {
            out.push(Entry {
                name,
                mode,
                id: (ino, maj, min),
                nlink,
                data: file.to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::{Archive, Node};

    #[test]
    fn reads_cpio_segments_and_hard_links() {
        // An uncompressed archive followed by a zstd one, with a hard link
        // whose data sits on the second name (as GNU cpio writes them).
        let mut a = Archive::default();
        a.add(
            "init",
            Node::File {
                data: b"#!/bin/sh\necho hi\n".to_vec(),
                mode: 0o755,
            },
        );
        let first = a.to_cpio().unwrap();
        let mut b = Archive::default();
        b.add("bin", Node::Symlink("usr/bin".into()));
        b.add("usr/bin/sh", Node::Symlink("../bin/busybox".into()));
        b.add(
            "usr/bin/busybox",
            Node::File {
                data: vec![7u8; 5000],
                mode: 0o755,
            },
        );
        b.add(
            "lib/modules/x/kernel/a.ko",
            Node::File {
                data: vec![1u8; 100],
                mode: 0o644,
            },
        );
        let second = b.to_cpio().unwrap();
        let mut bytes = first.clone();
        bytes.extend(zstd::bulk::compress(&second, 3).unwrap());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("i");
        fs::write(&p, &bytes).unwrap();
        let st = ArchiveStats::of(&p).unwrap();
        assert_eq!(st.compression, "none + zstd");
        assert_eq!(st.uncompressed, (first.len() + second.len()) as u64);
        assert_eq!(st.init_size, 18);
        assert_eq!(st.interpreter, Some(("/bin/sh".into(), 5000)));
        assert_eq!((st.modules, st.module_bytes), (1, 100));
        assert_eq!(st.largest[0].0, "usr/bin/busybox");
    }
}
