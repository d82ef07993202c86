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
use std::io::{self, Read};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
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
