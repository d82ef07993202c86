//! The newc cpio writer of the initramfs: a deterministic archive (sorted paths,
//! parents first, uid/gid/mtime 0, inode numbers by position) and its
//! compression (zstd or gzip), so that two builds of the same inputs are
//! byte-identical.

use super::initramfs::{Compression, ZSTD_LEVEL};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

/// One archive member.
#[derive(Debug, Clone)]
pub enum Node {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// A deterministic newc archive under construction (paths without a leading `/`).
#[derive(Debug, Default)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    pub fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.nodes
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Node::Dir);
            parent = p.parent();
        }
        self.nodes.insert(path, node);
    }

    pub fn add_file(&mut self, path: &str, src: &Path, mode: u32) -> Result<()> {
        let data =
            fs::read(src).with_context(|| format!("reading {} for {path}", src.display()))?;
        self.add(path, Node::File { data, mode });
        Ok(())
    }

    /// Serialises in path order: parents come before children.
    pub fn to_cpio(&self) -> Result<Vec<u8>> {
        use cpio::newc::{Builder, ModeFileType};
        let mut out = Vec::new();
        for (i, (path, node)) in self.nodes.iter().enumerate() {
            let b = Builder::new(path).ino(i as u32 + 1).uid(0).gid(0).mtime(0);
            let (b, data): (Builder, &[u8]) = match node {
                Node::Dir => (
                    b.mode(0o755)
                        .set_mode_file_type(ModeFileType::Directory)
                        .nlink(2),
                    &[],
                ),
                Node::File { data, mode } => (
                    b.mode(*mode).set_mode_file_type(ModeFileType::Regular),
                    data,
                ),
                Node::Symlink(t) => (
                    b.mode(0o777).set_mode_file_type(ModeFileType::Symlink),
                    t.as_bytes(),
                ),
                Node::CharDev { major, minor, mode } => (
                    b.mode(*mode)
                        .set_mode_file_type(ModeFileType::Char)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
            };
            let size = u32::try_from(data.len())
                .with_context(|| format!("{path} is too large for cpio"))?;
            let mut w = b.write(&mut out, size);
            w.write_all(data)
                .with_context(|| format!("archiving {path}"))?;
            w.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        Ok(out)
    }
}

/// `raw` compressed as the product's initramfs is.
pub fn compress(raw: &[u8], c: Compression) -> Result<Vec<u8>> {
    Ok(match c {
        Compression::None => raw.to_vec(),
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
            enc.include_checksum(true)?;
            enc.set_pledged_src_size(Some(raw.len() as u64))?;
            enc.write_all(raw)?;
            enc.finish().context("zstd compression")?
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(raw)?;
            enc.finish().context("gzip compression")?
        }
    })
}

