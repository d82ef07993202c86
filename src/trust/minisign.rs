//! The minisign formats and their verification: public key files
//! (`untrusted comment: …` then base64 of `Ed`, the 8-byte key number and the
//! 32-byte Ed25519 key) and signature files (untrusted comment, base64 of the
//! algorithm, key number and 64-byte signature, `trusted comment: …`, base64 of
//! the 64-byte global signature over signature ‖ trusted comment). `ED`
//! signatures sign the BLAKE2b-512 of the file, legacy `Ed` ones the file itself;
//! [`ImageVerifier`] handles both over a stream of chunks, so the file is read
//! once. Parsing is strict: exact lengths, known algorithms, bounded comments,
//! nothing after the last line; every error names the line and the field.

use super::base64::decode_exact;
use blake2::{Blake2b512, Digest};
use std::fmt;
use std::str::FromStr;

/// Size cap of a public key file (the real tool writes ≈ 110 bytes).
pub const MAX_PUBLIC_KEY_FILE: usize = 2048;
/// Size cap of a signature file: two comments and two base64 lines.
pub const MAX_SIGNATURE_FILE: usize = 16 * 1024;
/// minisign's own limit for the trusted comment.
pub const MAX_TRUSTED_COMMENT: usize = 8192;
/// Limit for an untrusted comment (minisign's is 1024).
pub const MAX_UNTRUSTED_COMMENT: usize = 1024;

const UNTRUSTED: &str = "untrusted comment: ";
const TRUSTED: &str = "trusted comment: ";

/// A key number as minisign shows it: the 8 key-number bytes read as a
/// little-endian integer, in upper-case hex *without leading zeros* (minisign
/// 0.11 prints it with `%llX`): `E2C6E5452AB807C9` for the bytes
/// `C9 07 B8 2A 45 E5 C6 E2`, and 15 digits or fewer when the last byte is small.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = String;
    /// 1 to 16 hex digits, either case (leading zeros allowed).
    fn from_str(s: &str) -> Result<KeyId, String> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{s:?} is not a key id (up to 16 hex digits, as minisign prints it)"));
        }
        let n = u64::from_str_radix(s, 16).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(KeyId(n.to_le_bytes()))
    }
}

/// Signature algorithm of a `.minisig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `ED`: Ed25519 over the BLAKE2b-512 of the file (minisign's default).
    Prehashed,
    /// `Ed`: Ed25519 over the file itself (`minisign -S -l`).
    Legacy,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Prehashed => "ED (prehashed)",
            Algorithm::Legacy => "Ed (legacy)",
        })
    }
}

/// A malformed key or signature file: `<file> line N (<field>): <reason>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line} ({field}): {reason}")]
pub struct FormatError {
    /// `public key` or `signature`.
    pub file: &'static str,
    pub line: usize,
    pub field: &'static str,
    pub reason: String,
}

/// A minisign public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub id: KeyId,
    pub key: [u8; 32],
}

/// A parsed `.minisig` (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub algorithm: Algorithm,
    pub key_id: KeyId,
    pub signature: [u8; 64],
    pub untrusted_comment: String,
    /// The bytes after `trusted comment: `, exactly as signed.
    pub trusted_comment: Vec<u8>,
    pub global_signature: [u8; 64],
}

/// Splits `text` into at most `max` lines (without `\n`, a trailing `\r`
/// removed); the last line may lack its newline; anything after line `max` other
/// than empty lines is an error.
fn lines<'a>(file: &'static str, text: &'a [u8], max: usize) -> Result<Vec<&'a [u8]>, FormatError> {
    let mut out: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    while out.len() > max && out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    if out.len() > max {
        return Err(FormatError {
            file,
            line: max + 1,
            field: "end of file",
            reason: "unexpected text after the last line".into(),
        });
    }
    Ok(out)
}

fn comment_line<'a>(
    file: &'static str,
    lines: &[&'a [u8]],
    i: usize,
    prefix: &str,
    field: &'static str,
    max: usize,
) -> Result<&'a [u8], FormatError> {
    let err = |reason: String| FormatError {
        file,
        line: i + 1,
        field,
        reason,
    };
    let l = lines.get(i).copied().ok_or_else(|| err("missing".into()))?;
    let rest = l
        .strip_prefix(prefix.as_bytes())
        .ok_or_else(|| err(format!("does not start with {prefix:?}")))?;
    if rest.len() > max {
        return Err(err(format!("{} bytes, more than {max}", rest.len())));
    }
    if rest.iter().any(|&b| b == 0 || b == b'\r') {
        return Err(err("contains a NUL or carriage return".into()));
    }
    Ok(rest)
}

fn base64_line<const N: usize>(
    file: &'static str,
    lines: &[&[u8]],
    i: usize,
    field: &'static str,
) -> Result<[u8; N], FormatError> {
    let err = |reason: String| FormatError {
        file,
        line: i + 1,
        field,
        reason,
    };
    let l = lines.get(i).copied().ok_or_else(|| err("missing".into()))?;
    decode_exact::<N>(l).map_err(|e| err(e.to_string()))
}

/// A file of more than `max` bytes is not one of ours: refused before parsing.
fn check_size(file: &'static str, text: &[u8], max: usize) -> Result<(), FormatError> {
    if text.len() > max {
        return Err(FormatError { file, line: 1, field: "file", reason: format!("{} bytes, more than {max}", text.len()) });
    }
    Ok(())
}

impl PublicKey {
    /// Parses a public key file as written by `minisign -G`.
    pub fn parse_file(text: &[u8]) -> Result<PublicKey, FormatError> {
        const F: &str = "public key";
        check_size(F, text, MAX_PUBLIC_KEY_FILE)?;
        let ls = lines(F, text, 2)?;
        let comment = comment_line(F, &ls, 0, UNTRUSTED, "untrusted comment", MAX_UNTRUSTED_COMMENT)?;
        std::str::from_utf8(comment).map_err(|_| FormatError {
            file: F,
            line: 1,
            field: "untrusted comment",
            reason: "not UTF-8".into(),
        })?;
        Self::parse_line(&ls, 1)
    }

    /// Parses the base64 key alone (what `minisign -P` takes).
    pub fn from_base64(text: &str) -> Result<PublicKey, FormatError> {
        Self::parse_line(&[text.trim().as_bytes()], 0)
    }

    fn parse_line(ls: &[&[u8]], i: usize) -> Result<PublicKey, FormatError> {
        let raw: [u8; 42] = base64_line("public key", ls, i, "key")?;
        if &raw[..2] != b"Ed" {
            return Err(FormatError {
                file: "public key",
                line: i + 1,
                field: "key algorithm",
                reason: format!("{:?}, expected \"Ed\"", String::from_utf8_lossy(&raw[..2])),
            });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[2..10]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[10..]);
        Ok(PublicKey { id: KeyId(id), key })
    }
}

impl Signature {
    /// Parses a `.minisig` as written by `minisign -S`.
    pub fn parse(text: &[u8]) -> Result<Signature, FormatError> {
        const F: &str = "signature";
        check_size(F, text, MAX_SIGNATURE_FILE)?;
        let ls = lines(F, text, 4)?;
        let untrusted = comment_line(F, &ls, 0, UNTRUSTED, "untrusted comment", MAX_UNTRUSTED_COMMENT)?;
        let untrusted_comment = String::from_utf8_lossy(untrusted).into_owned();
        let raw: [u8; 74] = base64_line(F, &ls, 1, "signature")?;
        let algorithm = match &raw[..2] {
            b"ED" => Algorithm::Prehashed,
            b"Ed" => Algorithm::Legacy,
            other => {
                return Err(FormatError {
                    file: F,
                    line: 2,
                    field: "signature algorithm",
                    reason: format!("{:?}, expected \"ED\" or \"Ed\"", String::from_utf8_lossy(other)),
                })
            }
        };
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[2..10]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&raw[10..]);
        let trusted = comment_line(F, &ls, 2, TRUSTED, "trusted comment", MAX_TRUSTED_COMMENT)?;
        let global_signature = base64_line::<64>(F, &ls, 3, "global signature")?;
        Ok(Signature {
            algorithm,
            key_id: KeyId(key_id),
            signature,
            untrusted_comment,
            trusted_comment: trusted.to_vec(),
            global_signature,
        })
    }

    /// Whether `key` signed the trusted comment together with this signature
    /// (the "global signature"; it binds the comment to the image signature).
    pub fn comment_signed_by(&self, key: &PublicKey) -> bool {
        if key.id != self.key_id {
            return false;
        }
        let pk = ed25519_compact::PublicKey::new(key.key);
        let sig = ed25519_compact::Signature::new(self.global_signature);
        let Ok(mut st) = pk.verify_incremental(&sig) else {
            return false;
        };
        st.absorb(self.signature);
        st.absorb(&self.trusted_comment);
        st.verify().is_ok()
    }
}

enum State {
    Prehashed {
        hasher: Box<Blake2b512>,
        key: [u8; 32],
        signature: [u8; 64],
    },
    Legacy(Box<ed25519_compact::VerifyingState>),
    /// The signature cannot be valid for any input (malformed point or scalar).
    Invalid,
}

/// Verifies an image signature over the image's bytes fed in chunks, so that
/// the caller reads the file once (and may hash it for other purposes from the
/// same buffers). Counts the bytes for `size=`.
pub struct ImageVerifier {
    state: State,
    len: u64,
}

impl ImageVerifier {
    /// Starts verifying `sig` with `key` (whose id the caller matched).
    pub fn new(key: &PublicKey, sig: &Signature) -> ImageVerifier {
        let state = match sig.algorithm {
            Algorithm::Prehashed => State::Prehashed {
                hasher: Box::new(Blake2b512::new()),
                key: key.key,
                signature: sig.signature,
            },
            Algorithm::Legacy => {
                let pk = ed25519_compact::PublicKey::new(key.key);
                match pk.verify_incremental(&ed25519_compact::Signature::new(sig.signature)) {
                    Ok(st) => State::Legacy(Box::new(st)),
                    Err(_) => State::Invalid,
                }
            }
        };
        ImageVerifier { state, len: 0 }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        match &mut self.state {
            State::Prehashed { hasher, .. } => hasher.update(chunk),
            State::Legacy(st) => st.absorb(chunk),
            State::Invalid => {}
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the signature holds for the bytes fed.
    pub fn finish(self) -> bool {
        match self.state {
            State::Prehashed { hasher, key, signature } => {
                let digest = hasher.finalize();
                ed25519_compact::PublicKey::new(key)
                    .verify(digest.as_slice(), &ed25519_compact::Signature::new(signature))
                    .is_ok()
            }
            State::Legacy(st) => st.verify().is_ok(),
            State::Invalid => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by minisign 0.11: `minisign -G -W`, then `minisign -S -m img -t …`
    // (and `-l` for the legacy one) over the 6 bytes "hello\n".
    const PUB: &str = "untrusted comment: minisign public key E2C6E5452AB807C9\n\
                       RWTJB7gqReXG4qI5dmoX19QfRleC7sI1Tv0GgwHe0kPEhBdErF/MDFjT\n";
    const SIG: &str = "untrusted comment: signature from minisign secret key\n\
RUTJB7gqReXG4i9H5ulleU2S+2XN/c9IVKFPKZeiSUWknOzIrwFlWOWjp90bD5pSZpFLrUFdRs46jcOi2ooGp+X0R/PwqO81jAI=\n\
trusted comment: version=2026.12.5 compat=web-amd64\n\
3/x08gvKXoi270+ZJtyDA78iIgfHiUoJZFaMVlZkuT2sJwG9NppO4wrys4MhBiAoaoDzZk6ck5V7mWbp2yAEBQ==\n";
    const LEGACY: &str = "untrusted comment: signature from minisign secret key\n\
RWTJB7gqReXG4iwVlcOA2yRZ42/41n6a/dYmPB2c1BO9HmjDw+NMbbTXLsCtC5+txBeB9hH7zzjIXlRQINyM/3r+b8B1a9QwlgM=\n\
trusted comment: version=1\n\
SZakI6U3omNfj55W5WWd1F0KZMID53zUrVqyiDDs28JhjoqbcbaVXYSmGGOuXy9UDpuCNUcuGVM9eA/fvZjNAg==\n";

    fn verify(key: &PublicKey, sig: &Signature, chunks: &[&[u8]]) -> bool {
        let mut v = ImageVerifier::new(key, sig);
        for c in chunks {
            v.update(c);
        }
        v.finish()
    }

    #[test]
    fn key_id_is_shown_as_minisign_prints_it() {
        let k = PublicKey::parse_file(PUB.as_bytes()).unwrap();
        assert_eq!(k.id.to_string(), "E2C6E5452AB807C9");
        assert_eq!("e2c6e5452ab807c9".parse::<KeyId>().unwrap(), k.id);
        assert!("E2C6E5452AB807CG".parse::<KeyId>().is_err());
        assert!("E2C6E5452AB807C91".parse::<KeyId>().is_err());
        assert!("".parse::<KeyId>().is_err());
        // No leading zeros when shown, as minisign; accepted with them.
        let small = KeyId([0x6a, 0x6c, 0x47, 0x35, 0xed, 0x4b, 0xdf, 0x07]);
        assert_eq!(small.to_string(), "7DF4BED35476C6A");
        assert_eq!("07df4bed35476c6a".parse::<KeyId>().unwrap(), small);
        assert_eq!("7DF4BED35476C6A".parse::<KeyId>().unwrap(), small);
    }

    #[test]
    fn verifies_prehashed_and_legacy_in_any_chunking() {
        let k = PublicKey::parse_file(PUB.as_bytes()).unwrap();
        let s = Signature::parse(SIG.as_bytes()).unwrap();
        assert_eq!(s.algorithm, Algorithm::Prehashed);
        assert_eq!(s.key_id, k.id);
        assert_eq!(s.trusted_comment, b"version=2026.12.5 compat=web-amd64");
        assert!(s.comment_signed_by(&k));
        assert!(verify(&k, &s, &[b"hello\n"]));
        assert!(verify(&k, &s, &[b"he", b"", b"llo\n"]));
        assert!(!verify(&k, &s, &[b"hellO\n"]));
        assert!(!verify(&k, &s, &[b"hello"]));
        let l = Signature::parse(LEGACY.as_bytes()).unwrap();
        assert_eq!(l.algorithm, Algorithm::Legacy);
        assert!(l.comment_signed_by(&k));
        assert!(verify(&k, &l, &[b"hel", b"lo\n"]));
        assert!(!verify(&k, &l, &[b"hello\n", b"\n"]));
    }

    #[test]
    fn a_changed_trusted_comment_breaks_the_global_signature() {
        let k = PublicKey::parse_file(PUB.as_bytes()).unwrap();
        let forged = SIG.replace("version=2026.12.5", "version=2026.12.9");
        let s = Signature::parse(forged.as_bytes()).unwrap();
        assert!(!s.comment_signed_by(&k));
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = Signature::parse(SIG.replace("RUTJ", "RUT!").as_bytes()).unwrap_err();
        assert_eq!((e.line, e.field), (2, "signature"));
        assert!(e.to_string().starts_with("signature line 2 (signature): character '!'"), "{e}");
        let e = Signature::parse(SIG.replace("trusted comment: v", "trusted: v").as_bytes()).unwrap_err();
        assert_eq!((e.line, e.field), (3, "trusted comment"));
        let e = Signature::parse(format!("{SIG}extra\n").as_bytes()).unwrap_err();
        assert_eq!((e.line, e.field), (5, "end of file"));
        let e = Signature::parse(SIG.lines().take(3).collect::<Vec<_>>().join("\n").as_bytes()).unwrap_err();
        assert_eq!((e.line, e.field, e.reason.as_str()), (4, "global signature", "missing"));
        let e = PublicKey::parse_file(b"untrusted comment: x\nRWTJB7gq\n").unwrap_err();
        assert_eq!((e.line, e.field), (2, "key"));
        let e = PublicKey::parse_file(PUB.replace("RWTJ", "RUTJ").as_bytes()).unwrap_err();
        assert_eq!(e.field, "key algorithm");
        let big = format!("untrusted comment: {}\n", "x".repeat(MAX_UNTRUSTED_COMMENT + 1));
        assert_eq!(PublicKey::parse_file(big.as_bytes()).unwrap_err().field, "untrusted comment");
        // CRLF line ends and a missing final newline are accepted.
        assert!(Signature::parse(SIG.replace('\n', "\r\n").trim_end().as_bytes()).is_ok());
    }
}
