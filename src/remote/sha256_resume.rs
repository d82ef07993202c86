//! A sha256 whose state can be written down and taken up again: a registry's
//! zstd blob is checked against the sha256 of its compressed bytes, which are
//! decompressed as they arrive and never stored, so a download resumed after a
//! `kill -9` or a power cut can only check the blob's digest if the hash of the
//! prefix it received before was kept in the resume record. The `sha2` crate
//! keeps its state private; this keeps the eight chaining words, the length and
//! the unhashed tail (under one 64-byte block) and feeds whole blocks to
//! `sha2::compress256` (the same SHA-NI/AVX code the crate's hasher uses).
//! FIPS 180-4 padding is done in [`Sha256State::finish`].

use sha2::digest::generic_array::GenericArray;

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A running sha256 that [`Sha256State::to_hex`] writes down and
/// [`Sha256State::from_hex`] takes up again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sha256State {
    h: [u32; 8],
    /// Bytes given so far.
    len: u64,
    /// The last `len % 64` bytes, not yet compressed.
    tail: Vec<u8>,
}

impl Default for Sha256State {
    fn default() -> Self {
        Sha256State {
            h: H0,
            len: 0,
            tail: Vec::with_capacity(64),
        }
    }
}

impl Sha256State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let take = (64 - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < 64 {
                return;
            }
            compress(&mut self.h, &self.tail);
            self.tail.clear();
        }
        let whole = data.len() / 64 * 64;
        if whole > 0 {
            compress(&mut self.h, &data[..whole]);
        }
        self.tail.extend_from_slice(&data[whole..]);
    }

    pub fn finish(&self) -> [u8; 32] {
        let mut h = self.h;
        let mut last = self.tail.clone();
        last.push(0x80);
        while last.len() % 64 != 56 {
            last.push(0);
        }
        last.extend_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        compress(&mut h, &last);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_mut(4).zip(h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// `h0..h7` (64 hex digits), `:`, the length, `:`, the tail in hex.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64 + 22 + 128);
        for w in self.h {
            s += &format!("{w:08x}");
        }
        s += &format!(":{}:{}", self.len, crate::util::hex(&self.tail));
        s
    }

    /// The state [`Sha256State::to_hex`] wrote; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Sha256State> {
        let mut parts = s.split(':');
        let (words, len, tail) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || words.len() != 64 || !words.is_ascii() {
            return None;
        }
        let mut h = [0u32; 8];
        for (i, w) in h.iter_mut().enumerate() {
            *w = u32::from_str_radix(&words[i * 8..i * 8 + 8], 16).ok()?;
        }
        let len: u64 = len.parse().ok()?;
        if tail.len() % 2 != 0 || tail.len() / 2 != (len % 64) as usize || !tail.is_ascii() {
            return None;
        }
        let tail = (0..tail.len() / 2)
            .map(|i| u8::from_str_radix(&tail[i * 2..i * 2 + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Sha256State { h, len, tail })
    }
}

/// Compresses `data`, a whole number of 64-byte blocks, into `h`.
fn compress(h: &mut [u32; 8], data: &[u8]) {
    for block in data.chunks_exact(64) {
        sha2::compress256(h, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn equals_sha2_for_every_split_and_survives_a_round_trip() {
        for n in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 70_001] {
            let data = bytes(n, n as u64);
            let want: [u8; 32] = Sha256::digest(&data).into();
            let mut whole = Sha256State::new();
            whole.update(&data);
            assert_eq!(whole.finish(), want, "{n} bytes at once");
            for cut in [0, 1, 63, 64, 65, n / 3, n / 2, n.saturating_sub(1), n] {
                let cut = cut.min(n);
                let mut a = Sha256State::new();
                a.update(&data[..cut]);
                let saved = a.to_hex();
                let mut b = Sha256State::from_hex(&saved).expect("its own state");
                assert_eq!(b, a);
                // The rest in uneven pieces.
                for piece in data[cut..].chunks(37) {
                    b.update(piece);
                }
                assert_eq!(b.finish(), want, "{n} bytes cut at {cut}");
                assert_eq!(b.len(), n as u64);
            }
        }
    }

    #[test]
    fn refuses_states_it_did_not_write() {
        let mut a = Sha256State::new();
        a.update(b"abc");
        let s = a.to_hex();
        assert!(Sha256State::from_hex(&s).is_some());
        for bad in [
            "",
            "::",
            &s.replace(":3:", ":4:"),
            &s.replace(":3:", ":x:"),
            &format!("{s}:"),
            &s[1..],
            &s.replacen('6', "g", 1),
        ] {
            assert_eq!(Sha256State::from_hex(bad), None, "{bad:?}");
        }
    }
}
