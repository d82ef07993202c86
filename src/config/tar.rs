//! A bounded, strict reader of ustar / GNU / v7 tar archives held in a byte
//! slice: the Gandi host configuration travels as the member `gandi/config` of a
//! small archive written at byte 524288 of the swap device.
//!
//! The reader is pure and never panics. It walks the whole archive (at most
//! [`MAX_ARCHIVE`] bytes) to its end marker, so that a damaged header anywhere is
//! an error and the caller learns how many bytes the archive uses (to wipe them):
//!
//! * every header's checksum is verified (the unsigned sum with the checksum field
//!   read as spaces, or the historic signed sum);
//! * the magic is `ustar\0` + `00` (POSIX), `ustar  \0` (GNU) or absent (v7);
//! * numeric fields are octal (or GNU base-256), bounded, without overflow;
//! * member names are normalised (`./gandi/config` is `gandi/config`); a name that
//!   is absolute, has a `..` component, a NUL inside or garbage after its end is
//!   refused, for every member and not only the one asked for;
//! * GNU long names (`L`) and pax `path=` records (`x`) apply to the next member;
//! * only regular files (typeflag `0` or NUL) can be the answer; other members are
//!   skipped;
//! * a member larger than [`MAX_MEMBER`] or running past the end of the buffer is
//!   an error, and so is an archive without its two zero blocks within the buffer.

use std::fmt;

/// Tar block size.
pub const BLOCK: usize = 512;
/// The most of an archive the reader looks at.
pub const MAX_ARCHIVE: usize = 1 << 20;
/// The largest member accepted (any member, not only the one asked for).
pub const MAX_MEMBER: usize = 256 * 1024;
/// The longest name accepted from a GNU long-name or pax record (PATH_MAX).
const MAX_LONG_NAME: usize = 4096;

/// Why an archive was refused. Each variant names the header's byte offset in the
/// archive and, when it could be read, the member's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error(
        "tar header at offset {offset} ({}): checksum {stored:?} does not match the header (sum {computed})",
        Name(member)
    )]
    Checksum {
        offset: usize,
        member: String,
        stored: String,
        computed: u32,
    },
    #[error(
        "tar header at offset {offset} ({}): magic {magic:?} is neither ustar, GNU nor v7",
        Name(member)
    )]
    Magic {
        offset: usize,
        member: String,
        magic: String,
    },
    #[error(
        "tar member {} at offset {offset}: {field} field {value:?} is not a valid number",
        Name(member)
    )]
    Number {
        offset: usize,
        member: String,
        field: &'static str,
        value: String,
    },
    #[error("tar member {} at offset {offset}: name {reason}", Name(member))]
    BadName {
        offset: usize,
        member: String,
        reason: &'static str,
    },
    #[error(
        "tar member {} at offset {offset}: {size} bytes is larger than the limit of {limit} bytes",
        Name(member)
    )]
    TooLarge {
        offset: usize,
        member: String,
        size: u64,
        limit: usize,
    },
    #[error("tar member {} at offset {offset}: truncated, its {size} bytes of data run past the end of the {available}-byte archive", Name(member))]
    Truncated {
        offset: usize,
        member: String,
        size: u64,
        available: usize,
    },
    #[error("tar archive: no end marker (two zero blocks) within its first {available} bytes (next header expected at offset {offset})")]
    Unterminated { offset: usize, available: usize },
    #[error("tar archive: a zero block at offset {offset} is followed by a non-zero block")]
    StrayZeroBlock { offset: usize },
    #[error(
        "tar member {} at offset {offset}: a {kind} record is not followed by a member",
        Name(member)
    )]
    DanglingExtension {
        offset: usize,
        member: String,
        kind: &'static str,
    },
}

/// Displays a member name for messages: quoted and escaped, or "unnamed".
struct Name<'a>(&'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("unnamed")
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// The member found by [`read_archive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// The normalised name (`gandi/config`).
    pub name: String,
    /// Offset of the member's header in the archive.
    pub offset: usize,
    pub data: &'a [u8],
}

/// What [`read_archive`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive<'a> {
    /// The first regular file whose normalised name was wanted.
    pub member: Option<Member<'a>>,
    /// Bytes the archive uses, from its start through its end marker (a multiple of
    /// [`BLOCK`]): overwriting these erases the archive.
    pub len: usize,
    /// Number of members (extension records not counted).
    pub members: usize,
}

/// The contents of the first regular file whose normalised name is one of
/// `wanted` (themselves normalised: `./gandi/config` and `gandi/config` are the
/// same). The whole archive is checked, see the module documentation.
pub fn find_member<'a>(archive: &'a [u8], wanted: &[&str]) -> Result<Option<&'a [u8]>, TarError> {
    Ok(read_archive(archive, wanted)?.member.map(|m| m.data))
}

/// Whether `block` is all zeros (an end-of-archive block).
pub fn is_zero_block(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Whether the first block of `data` looks like the start of an archive: a
/// ustar/GNU magic, or a v7 header with a valid checksum. Used to tell an archive
/// from leftover swap pages; a header that claims ustar but fails its checksum
/// still counts (it is then reported as damaged, not ignored).
pub fn looks_like_header(data: &[u8]) -> bool {
    let Some(h) = data.get(..BLOCK) else { return false };
    if is_zero_block(h) {
        return false;
    }
    let magic = h.get(257..265).unwrap_or(&[]);
    if magic.starts_with(b"ustar\0") || magic == b"ustar  \0" {
        return true;
    }
    magic.iter().all(|&b| b == 0) && checksum_ok(h).is_ok()
}

/// Normalises a member name: `.` and empty components dropped (so `./a//b/` is
/// `a/b`). `None` for a name with a `..` component.
pub fn normalise(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Reads the archive: see the module documentation.
pub fn read_archive<'a>(archive: &'a [u8], wanted: &[&str]) -> Result<Archive<'a>, TarError> {
    let buf = archive.get(..MAX_ARCHIVE).unwrap_or(archive);
    let wanted: Vec<String> = wanted.iter().filter_map(|w| normalise(w)).collect();
    let mut off = 0usize;
    let mut found: Option<Member<'a>> = None;
    let mut members = 0usize;
    // A name set by a GNU `L` or pax `x` record for the next member.
    let mut pending: Option<(String, &'static str, usize)> = None;
    loop {
        let Some(h) = buf.get(off..off.saturating_add(BLOCK)).filter(|h| h.len() == BLOCK) else {
            return Err(TarError::Unterminated {
                offset: off,
                available: buf.len(),
            });
        };
        if is_zero_block(h) {
            let next = off + BLOCK;
            match buf.get(next..next + BLOCK) {
                Some(b) if is_zero_block(b) => {
                    if let Some((member, kind, offset)) = pending {
                        return Err(TarError::DanglingExtension { offset, member, kind });
                    }
                    return Ok(Archive {
                        member: found,
                        len: next + BLOCK,
                        members,
                    });
                }
                // A single zero block then the end of the buffer: old tars wrote one.
                None if buf.len() - next < BLOCK => {
                    if let Some((member, kind, offset)) = pending {
                        return Err(TarError::DanglingExtension { offset, member, kind });
                    }
                    return Ok(Archive {
                        member: found,
                        len: next,
                        members,
                    });
                }
                _ => return Err(TarError::StrayZeroBlock { offset: off }),
            }
        }
        let raw_name = field(h, 0, 100);
        let shown = String::from_utf8_lossy(cstr(raw_name)).into_owned();
        if let Err(computed) = checksum_ok(h) {
            return Err(TarError::Checksum {
                offset: off,
                member: shown,
                stored: String::from_utf8_lossy(cstr(field(h, 148, 8))).into_owned(),
                computed,
            });
        }
        let magic = field(h, 257, 8);
        let posix = magic.starts_with(b"ustar\0") && field(h, 263, 2) == b"00";
        let gnu = magic == b"ustar  \0";
        let v7 = magic.iter().all(|&b| b == 0);
        if !(posix || gnu || v7) {
            return Err(TarError::Magic {
                offset: off,
                member: shown,
                magic: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let typeflag = h.get(156).copied().unwrap_or(0);
        let size = parse_number(field(h, 124, 12)).ok_or_else(|| TarError::Number {
            offset: off,
            member: shown.clone(),
            field: "size",
            value: String::from_utf8_lossy(field(h, 124, 12)).into_owned(),
        })?;
        // The header's own name: prefix/name for POSIX ustar.
        let own_name = {
            let name = checked_field(raw_name).map_err(|reason| TarError::BadName {
                offset: off,
                member: shown.clone(),
                reason,
            })?;
            let prefix = if posix {
                checked_field(field(h, 345, 155)).map_err(|reason| TarError::BadName {
                    offset: off,
                    member: shown.clone(),
                    reason,
                })?
            } else {
                ""
            };
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            }
        };
        let (name, ext_offset) = match pending.take() {
            Some((n, _, o)) => (n, o),
            None => (own_name, off),
        };
        let name_err = |reason| TarError::BadName {
            offset: ext_offset,
            member: name.clone(),
            reason,
        };
        if name.starts_with('/') {
            return Err(name_err("is absolute"));
        }
        if name.chars().any(|c| c.is_control()) {
            return Err(name_err("contains a control character"));
        }
        let Some(norm) = normalise(&name) else {
            return Err(name_err("has a \"..\" component"));
        };
        if size > MAX_MEMBER as u64 {
            return Err(TarError::TooLarge {
                offset: off,
                member: name,
                size,
                limit: MAX_MEMBER,
            });
        }
        // Both fit in usize: size <= MAX_MEMBER, off < MAX_ARCHIVE.
        let data_start = off + BLOCK;
        let data_end = data_start + size as usize;
        let Some(data) = buf.get(data_start..data_end) else {
            return Err(TarError::Truncated {
                offset: off,
                member: name,
                size,
                available: buf.len(),
            });
        };
        let padded_end = data_start + (size as usize).div_ceil(BLOCK) * BLOCK;
        match typeflag {
            b'L' => {
                let long = long_name(data).ok_or(TarError::BadName {
                    offset: off,
                    member: name.clone(),
                    reason: "(GNU long name) is empty, too long, not UTF-8 or has a NUL inside",
                })?;
                pending = Some((long, "GNU long name", off));
            }
            b'x' => {
                if let Some(path) = pax_path(data).map_err(|reason| TarError::BadName {
                    offset: off,
                    member: name.clone(),
                    reason,
                })? {
                    pending = Some((path, "pax header", off));
                }
            }
            // Global pax headers and GNU long link names: nothing we use.
            b'g' | b'K' => {}
            _ => {
                members += 1;
                let regular = matches!(typeflag, b'0' | 0) && !(typeflag == 0 && name.ends_with('/'));
                if found.is_none() && regular && wanted.contains(&norm) {
                    found = Some(Member {
                        name: norm,
                        offset: off,
                        data,
                    });
                }
            }
        }
        if padded_end > buf.len() {
            // The data fits but its padding does not: still a truncated archive.
            return Err(TarError::Truncated {
                offset: off,
                member: name,
                size,
                available: buf.len(),
            });
        }
        off = padded_end;
    }
}

/// A fixed header field; an empty slice if out of range (never, for a full block).
fn field(h: &[u8], off: usize, len: usize) -> &[u8] {
    h.get(off..off + len).unwrap_or(&[])
}

/// The bytes of a field up to its first NUL.
fn cstr(f: &[u8]) -> &[u8] {
    f.split(|&b| b == 0).next().unwrap_or(&[])
}

/// A NUL-terminated (or full-width) text field: only NULs may follow the end, and
/// the text must be UTF-8.
fn checked_field(f: &[u8]) -> Result<&str, &'static str> {
    let text = cstr(f);
    if f.get(text.len()..).unwrap_or(&[]).iter().any(|&b| b != 0) {
        return Err("has a NUL inside");
    }
    std::str::from_utf8(text).map_err(|_| "is not UTF-8")
}

/// Verifies the checksum; `Err(unsigned sum)` when it does not match.
fn checksum_ok(h: &[u8]) -> Result<(), u32> {
    let mut unsigned: u32 = 0;
    let mut signed: i32 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    let stored = parse_octal(field(h, 148, 8)).ok_or(unsigned)?;
    if stored == u64::from(unsigned) || i64::try_from(stored).ok() == Some(i64::from(signed)) {
        Ok(())
    } else {
        Err(unsigned)
    }
}

/// An octal field: optional leading spaces, digits, then NULs or spaces to the end.
/// At least one digit; bounded (a 12-byte field holds at most 11 digits).
fn parse_octal(f: &[u8]) -> Option<u64> {
    let mut i = 0;
    while f.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut value: u64 = 0;
    let mut digits = 0;
    while let Some(&b) = f.get(i) {
        if !(b'0'..=b'7').contains(&b) {
            break;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    if f.get(i..).unwrap_or(&[]).iter().all(|&b| b == 0 || b == b' ') {
        Some(value)
    } else {
        None
    }
}

/// A numeric field: octal, or GNU base-256 (first byte 0x80, big-endian,
/// non-negative) as GNU tar writes for large values.
fn parse_number(f: &[u8]) -> Option<u64> {
    match f.first() {
        Some(0x80) => {
            let mut value: u64 = 0;
            for &b in f.get(1..)? {
                value = value.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            Some(value)
        }
        Some(b) if b & 0x80 != 0 => None,
        _ => parse_octal(f),
    }
}

/// A GNU long name: the data up to a final NUL (and NUL padding only).
fn long_name(data: &[u8]) -> Option<String> {
    let text = cstr(data);
    if text.is_empty() || text.len() > MAX_LONG_NAME || data.get(text.len()..)?.iter().any(|&b| b != 0) {
        return None;
    }
    std::str::from_utf8(text).ok().map(str::to_string)
}

/// The `path=` record of a pax extended header (`"%d path=%s\n"` records).
fn pax_path(mut data: &[u8]) -> Result<Option<String>, &'static str> {
    const BAD: &str = "(pax header) has a malformed record";
    let mut path = None;
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ').ok_or(BAD)?;
        let len_text = std::str::from_utf8(data.get(..sp).ok_or(BAD)?).map_err(|_| BAD)?;
        if len_text.is_empty() || len_text.len() > 7 || !len_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BAD);
        }
        let len: usize = len_text.parse().map_err(|_| BAD)?;
        let record = data.get(..len).ok_or(BAD)?;
        let body = record.get(sp + 1..len.checked_sub(1).ok_or(BAD)?).ok_or(BAD)?;
        if record.last() != Some(&b'\n') {
            return Err(BAD);
        }
        let eq = body.iter().position(|&b| b == b'=').ok_or(BAD)?;
        let (key, value) = (body.get(..eq).ok_or(BAD)?, body.get(eq + 1..).ok_or(BAD)?);
        if key == b"path" {
            if value.is_empty() || value.len() > MAX_LONG_NAME || value.contains(&0) {
                return Err("(pax path) is empty, too long or has a NUL inside");
            }
            path = Some(
                std::str::from_utf8(value)
                    .map_err(|_| "(pax path) is not UTF-8")?
                    .to_string(),
            );
        }
        data = data.get(len..).ok_or(BAD)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header for a regular file or symlink, POSIX ustar, checksum set.
    fn header(name: &str, size: usize, typeflag: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        h
    }

    fn set_checksum(h: &mut [u8]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn archive(members: &[(&str, &[u8], u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data, t) in members {
            out.extend(header(name, data.len(), *t));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.extend([0u8; 2 * BLOCK]);
        out
    }

    #[test]
    fn finds_and_normalises() {
        let a = archive(&[("etc/x", b"1", b'0'), ("./gandi//config", b"{}", b'0')]);
        let r = read_archive(&a, &["gandi/config"]).unwrap();
        let m = r.member.unwrap();
        assert_eq!(m.data, b"{}");
        assert_eq!(m.name, "gandi/config");
        assert_eq!(m.offset, 1024);
        assert_eq!(r.len, a.len());
        assert_eq!(r.members, 2);
    }

    #[test]
    fn octal_fields() {
        assert_eq!(parse_octal(b"00000000012\0"), Some(10));
        assert_eq!(parse_octal(b"   12 \0"), Some(10));
        assert_eq!(parse_octal(b"\0\0\0"), None);
        assert_eq!(parse_octal(b"12x\0"), None);
        assert_eq!(parse_octal(b"77777777777777777777777"), None);
        assert_eq!(parse_number(b"\x80\0\0\0\0\0\0\0\0\0\x01\x00"), Some(256));
        assert_eq!(parse_number(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"), None);
    }

    #[test]
    fn signed_checksum_is_accepted() {
        let mut a = archive(&[("config\u{e9}", b"x", b'0')]);
        // Recompute with the signed sum, as some historic tars did.
        a[148..156].copy_from_slice(b"        ");
        let sum: i32 = a[..BLOCK].iter().map(|&b| i32::from(b as i8)).sum();
        a[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(read_archive(&a, &["config"]).is_ok());
    }

    #[test]
    fn v7_directory_with_slash_is_not_a_file() {
        let mut a = archive(&[("config/", b"", 0)]);
        a[257..265].fill(0);
        set_checksum(&mut a[..BLOCK]);
        assert_eq!(find_member(&a, &["config"]), Ok(None));
    }

    #[test]
    fn gnu_long_name_applies_to_next() {
        let long = format!("{}/config\0", "d".repeat(120));
        let mut h = header("././@LongLink", long.len(), b'L');
        h[257..265].copy_from_slice(b"ustar  \0");
        set_checksum(&mut h);
        let mut a = h;
        a.extend_from_slice(long.as_bytes());
        a.resize(a.len().div_ceil(BLOCK) * BLOCK, 0);
        a.extend(archive(&[("dddd", b"hello", b'0')]));
        let want = format!("{}/config", "d".repeat(120));
        assert_eq!(find_member(&a, &[&want]), Ok(Some(&b"hello"[..])));
        assert_eq!(find_member(&a, &["dddd"]), Ok(None));
    }

    #[test]
    fn pax_path_applies_to_next() {
        let rec = "21 path=gandi/config\n";
        let a0 = archive(&[("PaxHeaders/x", rec.as_bytes(), b'x'), ("other", b"{}", b'0')]);
        assert_eq!(find_member(&a0, &["gandi/config"]), Ok(Some(&b"{}"[..])));
        let bad = archive(&[("PaxHeaders/x", b"99 path=x\n", b'x'), ("other", b"{}", b'0')]);
        assert!(matches!(find_member(&bad, &["x"]), Err(TarError::BadName { .. })));
    }

    #[test]
    fn refusals() {
        let a = archive(&[("a", b"1", b'0')]);
        let mut bad = a.clone();
        bad[0] = b'b';
        assert!(matches!(
            find_member(&bad, &["a"]),
            Err(TarError::Checksum { offset: 0, .. })
        ));
        assert!(matches!(
            find_member(&a[..BLOCK + 1], &["a"]),
            Err(TarError::Truncated { offset: 0, .. })
        ));
        assert!(matches!(
            find_member(&a[..BLOCK], &["a"]),
            Err(TarError::Truncated { offset: 0, .. })
        ));
        assert!(matches!(
            find_member(&a[..2 * BLOCK], &["a"]),
            Err(TarError::Unterminated { offset: 1024, .. })
        ));
        let mut nul = archive(&[("axb", b"1", b'0')]);
        nul[1] = 0;
        set_checksum(&mut nul[..BLOCK]);
        assert!(matches!(find_member(&nul, &["a"]), Err(TarError::BadName { .. })));
        let stray = [&[0u8; BLOCK][..], &a[..]].concat();
        assert!(matches!(
            find_member(&stray, &["a"]),
            Err(TarError::StrayZeroBlock { offset: 0 })
        ));
        let dangling = archive(&[("././@LongLink", b"x\0", b'L')]);
        assert!(matches!(
            find_member(&dangling, &["x"]),
            Err(TarError::DanglingExtension { .. })
        ));
    }

    #[test]
    fn empty_and_single_zero_block() {
        assert_eq!(find_member(&[0u8; 2 * BLOCK], &["config"]), Ok(None));
        let a = archive(&[("config", b"x", b'0')]);
        let one = &a[..a.len() - BLOCK];
        assert_eq!(find_member(one, &["config"]), Ok(Some(&b"x"[..])));
        assert_eq!(read_archive(one, &["config"]).unwrap().len, one.len());
    }

    #[test]
    fn header_detection() {
        assert!(looks_like_header(&archive(&[("a", b"1", b'0')])));
        assert!(!looks_like_header(&[0u8; BLOCK]));
        assert!(!looks_like_header(&[0x55u8; BLOCK]));
        assert!(!looks_like_header(&[0u8; 10]));
    }
}
