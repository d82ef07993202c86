//! The block-hash index of an image (`hnctl index IMAGE > IMAGE.bidx`): the
//! sha256 of every fixed-size block, and of the whole image, so that `hnctl
//! stage URL` can take the blocks it already has from the images on the host
//! partition and fetch only the others with coalesced `Range` requests.
//!
//! Format (binary, little-endian): the 8 bytes `HNBIDX1\n`, the block size (u32,
//! a power of two from 4 KiB to 16 MiB), the image size (u64), the image's sha256
//! (32 bytes), then one sha256 (32 bytes) per block, the last block short when
//! the size is not a multiple of the block size.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

pub const MAGIC: &[u8; 8] = b"HNBIDX1\n";
/// 64 KiB: 32 bytes of index per 64 KiB (0.05 %: 1 MiB for a 2 GiB image), and a
/// change costs at most one 64 KiB block per changed 4 KiB filesystem block.
pub const DEFAULT_BLOCK: u32 = 64 * 1024;
const HEADER: usize = 8 + 4 + 8 + 32;
/// An index larger than this is refused (a 64 GiB image at 64 KiB blocks).
pub const MAX_INDEX: u64 = 32 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub block: u32,
    pub size: u64,
    pub sha256: [u8; 32],
    pub blocks: Vec<[u8; 32]>,
}

impl Index {
    /// Reads `r` to its end, hashing blocks of `block` bytes.
    pub fn build(r: &mut dyn Read, block: u32) -> io::Result<Index> {
        let mut whole = Sha256::new();
        let mut blocks = Vec::new();
        let mut buf = vec![0u8; block as usize];
        let mut size = 0u64;
        loop {
            let mut n = 0;
            while n < buf.len() {
                match r.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n == 0 {
                break;
            }
            whole.update(&buf[..n]);
            blocks.push(Sha256::digest(&buf[..n]).into());
            size += n as u64;
            if n < buf.len() {
                break;
            }
        }
        Ok(Index {
            block,
            size,
            sha256: whole.finalize().into(),
            blocks,
        })
    }

    /// The index of the regular file `f`, from its start, without reading its
    /// holes: a block that lies in a hole (`SEEK_DATA`/`SEEK_HOLE`) is a block
    /// of zeros, hashed once for all. With `whole` false the image's sha256 is
    /// not computed (all zeros): a local image's index is only used for its
    /// blocks, and hashing a sparse image's zeros would cost what was saved.
    pub fn build_file(f: &File, block: u32, whole: bool) -> io::Result<Index> {
        let size = f.metadata()?.len();
        let bs = u64::from(block);
        let mut all = whole.then(Sha256::new);
        let zeros = vec![0u8; block as usize];
        let zero_hash: [u8; 32] = Sha256::digest(&zeros).into();
        let mut buf = vec![0u8; block as usize];
        let mut blocks = Vec::with_capacity(size.div_ceil(bs) as usize);
        let mut holes = Holes::default();
        let mut at = 0u64;
        while at < size {
            let len = (size - at).min(bs);
            let n = len as usize;
            if holes.is_hole(f, at, at + len)? {
                blocks.push(if n == zeros.len() { zero_hash } else { Sha256::digest(&zeros[..n]).into() });
                if let Some(h) = &mut all {
                    h.update(&zeros[..n]);
                }
            } else {
                f.read_exact_at(&mut buf[..n], at)?;
                blocks.push(Sha256::digest(&buf[..n]).into());
                if let Some(h) = &mut all {
                    h.update(&buf[..n]);
                }
            }
            at += len;
        }
        Ok(Index {
            block,
            size,
            sha256: all.map(|h| h.finalize().into()).unwrap_or([0; 32]),
            blocks,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + 32 * self.blocks.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.block.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.sha256);
        for b in &self.blocks {
            v.extend_from_slice(b);
        }
        v
    }

    /// An index as published (untrusted): every field checked.
    pub fn parse(b: &[u8]) -> Result<Index, String> {
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err("not a block index (no HNBIDX1 header)".into());
        }
        let block = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if !block.is_power_of_two() || !(4096..=16 << 20).contains(&block) {
            return Err(format!("block size {block} is not a power of two from 4 KiB to 16 MiB"));
        }
        let size = u64::from_le_bytes(b[12..20].try_into().expect("8 bytes"));
        let sha256: [u8; 32] = b[20..52].try_into().expect("32 bytes");
        let count = size.div_ceil(block as u64);
        let body = &b[HEADER..];
        if body.len() as u64 != count.saturating_mul(32) {
            return Err(format!(
                "{} bytes of block hashes for {count} blocks of {block} bytes ({size} bytes)",
                body.len()
            ));
        }
        let blocks = body.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
        Ok(Index { block, size, sha256, blocks })
    }

    /// The byte range of block `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.block as u64;
        (start, (start + self.block as u64).min(self.size))
    }
}

/// Where a block with a given hash can be read locally: (source number, offset).
pub type Have = HashMap<[u8; 32], (usize, u64)>;

/// Adds the blocks of `idx` (an index of local source `src`) to `have`.
pub fn add_local(have: &mut Have, idx: &Index, src: usize) {
    for (i, h) in idx.blocks.iter().enumerate() {
        // A short last block is only equal to a short block: its hash says so.
        have.entry(*h).or_insert((src, idx.range(i).0));
    }
}

/// The plan of an adaptive download: blocks copied locally, and the byte ranges
/// to fetch, coalesced (adjacent missing blocks, and gaps of at most `gap`
/// bytes of present blocks, become one range: a request costs more than a few
/// blocks fetched again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// (block number, source, offset in the source).
    pub local: Vec<(usize, usize, u64)>,
    /// [start, end) in the image.
    pub fetch: Vec<(u64, u64)>,
}

pub fn plan(target: &Index, have: &Have, gap: u64) -> Plan {
    let mut local = Vec::new();
    let mut fetch: Vec<(u64, u64)> = Vec::new();
    for (i, h) in target.blocks.iter().enumerate() {
        let (s, e) = target.range(i);
        match have.get(h) {
            Some(&(src, off)) => local.push((i, src, off)),
            None => match fetch.last_mut() {
                Some(last) if s - last.1 <= gap => last.1 = e,
                _ => fetch.push((s, e)),
            },
        }
    }
    Plan { local, fetch }
}

impl Plan {
    pub fn fetch_bytes(&self) -> u64 {
        self.fetch.iter().map(|(s, e)| e - s).sum()
    }
}

/// What `SEEK_DATA` said last: the file's hole around the last question and
/// where data goes on, so a file is asked about once per hole, not per block.
#[derive(Default)]
struct Holes {
    /// `[start, end)` known to be a hole.
    hole: (u64, u64),
    /// `[start, end)` known to hold data.
    data: (u64, u64),
}

impl Holes {
    /// `[from, to)` lies in a hole. A file system without `SEEK_DATA` says
    /// there is data everywhere, which is read as before.
    fn is_hole(&mut self, f: &File, from: u64, to: u64) -> io::Result<bool> {
        use rustix::fs::{seek, SeekFrom};
        if self.hole.0 <= from && to <= self.hole.1 {
            return Ok(true);
        }
        if self.data.0 <= from && from < self.data.1 {
            return Ok(false);
        }
        let data = match seek(f, SeekFrom::Data(from)) {
            Ok(d) => d,
            // No data from `from` to the end of the file.
            Err(rustix::io::Errno::NXIO) => u64::MAX,
            // Not answered here: read, as for a file without holes.
            Err(_) => {
                self.data = (from, u64::MAX);
                return Ok(false);
            }
        };
        if data > from {
            self.hole = (from, data);
            if to <= data {
                return Ok(true);
            }
        }
        let end = seek(f, SeekFrom::Hole(data)).unwrap_or(u64::MAX);
        self.data = (data, end.max(data + 1));
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
    }

    #[test]
    fn a_sparse_file_indexes_like_the_same_bytes_written() {
        let t = tempfile::tempdir().unwrap();
        let (sparse, full) = (t.path().join("sparse.img"), t.path().join("full.img"));
        // 40 blocks of 64 KiB and a short last one: holes at the start, in the
        // middle (several blocks, and parts of blocks), and at the end.
        let size = 40 * 65536 + 1000;
        let f = File::create(&sparse).unwrap();
        f.set_len(size).unwrap();
        for (at, len) in [(3 * 65536, 65536), (10 * 65536 + 4096, 9000), (20 * 65536 - 100, 300), (33 * 65536, 2 * 65536)] {
            f.write_all_at(&data(len, at as u8), at).unwrap();
        }
        drop(f);
        let bytes = std::fs::read(&sparse).unwrap();
        std::fs::write(&full, &bytes).unwrap();
        let written = Index::build(&mut &bytes[..], 65536).unwrap();
        assert_eq!(Index::build_file(&File::open(&sparse).unwrap(), 65536, true).unwrap(), written);
        assert_eq!(Index::build_file(&File::open(&full).unwrap(), 65536, true).unwrap(), written);
        let blocks_only = Index::build_file(&File::open(&sparse).unwrap(), 65536, false).unwrap();
        assert_eq!((blocks_only.size, &blocks_only.blocks), (written.size, &written.blocks));
        // All holes, and empty.
        let f = File::create(&sparse).unwrap();
        f.set_len(5 * 65536).unwrap();
        assert_eq!(Index::build_file(&f, 65536, true).unwrap(), Index::build(&mut &vec![0u8; 5 * 65536][..], 65536).unwrap());
        f.set_len(0).unwrap();
        assert_eq!(Index::build_file(&f, 65536, true).unwrap(), Index::build(&mut &[][..], 65536).unwrap());
    }

    #[test]
    fn build_parse_round_trip_and_strict_parsing() {
        let d = data(3 * 4096 + 100, 1);
        let idx = Index::build(&mut &d[..], 4096).unwrap();
        assert_eq!(idx.size, d.len() as u64);
        assert_eq!(idx.blocks.len(), 4);
        assert_eq!(idx.sha256, <[u8; 32]>::from(Sha256::digest(&d)));
        let b = idx.to_bytes();
        assert_eq!(Index::parse(&b).unwrap(), idx);
        assert!(Index::parse(&b[..b.len() - 1]).is_err());
        let mut bad = b.clone();
        bad[8..12].copy_from_slice(&3000u32.to_le_bytes());
        assert!(Index::parse(&bad).is_err());
        assert!(Index::parse(b"HNBIDX2\n").is_err());
    }

    #[test]
    fn plan_reuses_blocks_and_coalesces_ranges() {
        let old = data(10 * 4096, 1);
        let mut new = old.clone();
        for b in [2usize, 3, 7] {
            new[b * 4096 + 5] ^= 0xff;
        }
        let oi = Index::build(&mut &old[..], 4096).unwrap();
        let ni = Index::build(&mut &new[..], 4096).unwrap();
        let mut have = Have::new();
        add_local(&mut have, &oi, 0);
        let p = plan(&ni, &have, 0);
        assert_eq!(p.fetch, vec![(2 * 4096, 4 * 4096), (7 * 4096, 8 * 4096)]);
        assert_eq!(p.local.len(), 7);
        assert_eq!(p.fetch_bytes(), 3 * 4096);
        // A gap of up to 3 blocks is fetched again rather than cut in two requests.
        let p = plan(&ni, &have, 3 * 4096);
        assert_eq!(p.fetch, vec![(2 * 4096, 8 * 4096)]);
    }
}
