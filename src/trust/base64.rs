//! Strict standard base64 (RFC 4648, `+/`, padded) into a buffer of a known size
//! ([`decode_exact`]; [`decode`] for any length, as ssh key blobs are):
//! minisign's keys and signatures have fixed lengths, so any other length, a
//! character outside the alphabet, misplaced padding or non-zero unused bits is an
//! error (one encoding per value, nothing smuggled in the spare bits).

/// Why a base64 field was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Base64Error {
    #[error("{found} characters of base64, expected {expected} (for {bytes} bytes)")]
    Length { found: usize, expected: usize, bytes: usize },
    #[error("character {ch:?} at column {col} is not base64")]
    Char { ch: char, col: usize },
    #[error("padding is wrong (misplaced '=' or non-zero unused bits)")]
    Padding,
}

fn value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

/// Decodes `text` into exactly `N` bytes.
pub fn decode_exact<const N: usize>(text: &[u8]) -> Result<[u8; N], Base64Error> {
    let expected = N.div_ceil(3) * 4;
    if text.len() != expected {
        return Err(Base64Error::Length {
            found: text.len(),
            expected,
            bytes: N,
        });
    }
    let pad = match N % 3 {
        0 => 0,
        1 => 2,
        _ => 1,
    };
    let (data, tail) = text.split_at(expected - pad);
    if tail.iter().any(|&c| c != b'=') {
        return Err(Base64Error::Padding);
    }
    let mut out = [0u8; N];
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for (col, &c) in data.iter().enumerate() {
        let v = match value(c) {
            Some(v) => v,
            None if c == b'=' => return Err(Base64Error::Padding),
            None => {
                return Err(Base64Error::Char {
                    ch: char::from(c),
                    col: col + 1,
                })
            }
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if let Some(slot) = out.get_mut(n) {
                *slot = (acc >> bits) as u8;
            }
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 || n != N {
        return Err(Base64Error::Padding);
    }
    Ok(out)
}

/// Decodes padded standard base64 of any length (ssh public key blobs): `None`
/// when empty, not a multiple of four, outside the alphabet or misplaced `=`.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(4) {
        return None;
    }
    let pad = text.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in &text[..text.len() - pad] {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_length() {
        assert_eq!(decode(b"aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode(b"aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode(b"aGVsbA=="), Some(b"hell".to_vec()));
        assert_eq!(decode(b"aG=k"), None);
        assert_eq!(decode(b"aGk"), None);
        assert_eq!(decode(b"a==="), None);
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn decodes_exact_lengths() {
        assert_eq!(decode_exact::<3>(b"YWJj"), Ok(*b"abc"));
        assert_eq!(decode_exact::<2>(b"YWI="), Ok(*b"ab"));
        assert_eq!(decode_exact::<1>(b"YQ=="), Ok(*b"a"));
    }

    #[test]
    fn refuses_everything_else() {
        assert!(matches!(decode_exact::<3>(b"YWJ"), Err(Base64Error::Length { .. })));
        assert!(matches!(decode_exact::<2>(b"YWJj"), Err(Base64Error::Padding)));
        assert_eq!(decode_exact::<3>(b"YW-j"), Err(Base64Error::Char { ch: '-', col: 3 }));
        // "YR==" carries non-zero bits after the one byte it encodes.
        assert_eq!(decode_exact::<1>(b"YR=="), Err(Base64Error::Padding));
        assert_eq!(decode_exact::<2>(b"Y=I="), Err(Base64Error::Padding));
        assert!(decode_exact::<1>(b"YQ=a").is_err());
    }
}
