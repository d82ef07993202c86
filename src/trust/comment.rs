//! The image metadata in a signature's trusted comment: space- or tab-separated
//! `key=value` tokens. `version=` is dot-separated numbers compared numerically
//! (`2026.12.10` > `2026.12.9`, `1.2` = `1.2.0`), `compat=` a free string that
//! must match the running image's, `size=` the image's length in bytes; other
//! keys are kept (in order) and shown. A token that is not `key=value`, a key
//! given twice, an empty value or a control character (values reach consoles) is
//! an error naming the token.

use std::cmp::Ordering;
use std::fmt;

/// Most components in a `version=`.
pub const MAX_VERSION_PARTS: usize = 16;

/// A `version=` value.
#[derive(Clone, Debug, Eq)]
pub struct Version(pub Vec<u64>);

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        if s.is_empty() {
            return Err("empty version".into());
        }
        let mut parts = Vec::new();
        for p in s.split('.') {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("version {s:?}: {p:?} is not a number (expected dot-separated numbers like 2026.12.5)"));
            }
            let n = p
                .parse::<u64>()
                .map_err(|_| format!("version {s:?}: {p} is too large"))?;
            parts.push(n);
            if parts.len() > MAX_VERSION_PARTS {
                return Err(format!("version {s:?}: more than {MAX_VERSION_PARTS} parts"));
            }
        }
        Ok(Version(parts))
    }
}

impl Ord for Version {
    /// Numeric, component by component; missing trailing components are 0.
    fn cmp(&self, other: &Version) -> Ordering {
        let n = self.0.len().max(other.0.len());
        for i in 0..n {
            let a = self.0.get(i).copied().unwrap_or(0);
            let b = other.0.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// What a trusted comment says about the image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub version: Option<Version>,
    pub compat: Option<String>,
    /// `size=`: the image's length in bytes.
    pub size: Option<u64>,
    /// Every other `key=value`, in order.
    pub other: Vec<(String, String)>,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Meta {
    /// Parses a trusted comment (the bytes after `trusted comment: `).
    pub fn parse(comment: &[u8]) -> Result<Meta, String> {
        let text = std::str::from_utf8(comment).map_err(|_| "the trusted comment is not UTF-8".to_string())?;
        let mut m = Meta::default();
        let mut seen: Vec<&str> = Vec::new();
        for tok in text.split([' ', '\t']).filter(|t| !t.is_empty()) {
            let Some((k, v)) = tok.split_once('=') else {
                return Err(format!("token {tok:?} is not key=value"));
            };
            if !valid_key(k) {
                return Err(format!("token {tok:?}: key {k:?} is not made of letters, digits, '_', '-', '.'"));
            }
            if v.is_empty() {
                return Err(format!("token {tok:?}: empty value"));
            }
            // Values are shown on consoles and terminals: no control characters.
            if v.chars().any(char::is_control) {
                return Err(format!("token {tok:?}: control character in the value"));
            }
            if seen.contains(&k) {
                return Err(format!("key {k:?} given twice"));
            }
            seen.push(k);
            match k {
                "version" => m.version = Some(Version::parse(v)?),
                "compat" => m.compat = Some(v.to_string()),
                "size" => {
                    if !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(format!("size {v:?} is not a number of bytes"));
                    }
                    m.size = Some(v.parse().map_err(|_| format!("size {v:?} is too large"))?);
                }
                _ => m.other.push((k.to_string(), v.to_string())),
            }
        }
        Ok(m)
    }

    /// `version=… compat=… size=… k=v…`, the keys present (for logs and status).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = &self.version {
            parts.push(format!("version={v}"));
        }
        if let Some(c) = &self.compat {
            parts.push(format!("compat={c}"));
        }
        if let Some(s) = self.size {
            parts.push(format!("size={s}"));
        }
        for (k, v) in &self.other {
            parts.push(format!("{k}={v}"));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("2026.12.10") > v("2026.12.9"));
        assert!(v("2027") > v("2026.12.31"));
        assert_eq!(v("1.2"), v("1.2.0"));
        assert!(v("1.2.0.1") > v("1.2"));
        assert_eq!(v("2026.012.5").to_string(), "2026.12.5");
        for bad in ["", "1..2", "1.a", "v1", "1.", ".1", "-1", "99999999999999999999", "1.2 "] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Version::parse(&vec!["1"; MAX_VERSION_PARTS + 1].join(".")).is_err());
    }

    #[test]
    fn parses_tokens_and_keeps_unknown_keys() {
        let m = Meta::parse(b"version=2026.12.5\tcompat=web-amd64  size=1048576 build=ci-42").unwrap();
        assert_eq!(m.version, Some(v("2026.12.5")));
        assert_eq!(m.compat.as_deref(), Some("web-amd64"));
        assert_eq!(m.size, Some(1 << 20));
        assert_eq!(m.other, [("build".to_string(), "ci-42".to_string())]);
        assert_eq!(m.summary(), "version=2026.12.5 compat=web-amd64 size=1048576 build=ci-42");
        assert_eq!(Meta::parse(b"").unwrap(), Meta::default());
    }

    #[test]
    fn refuses_malformed_comments_naming_the_token() {
        // minisign's default comment (no -t) is not key=value.
        let e = Meta::parse(b"timestamp:1764921600\tfile:img\thashed").unwrap_err();
        assert!(e.contains("\"timestamp:1764921600\""), "{e}");
        assert!(Meta::parse(b"version=1 version=2").unwrap_err().contains("twice"));
        assert!(Meta::parse(b"compat=").unwrap_err().contains("empty value"));
        assert!(Meta::parse(b"=x").is_err());
        assert!(Meta::parse(b"size=12k").is_err());
        assert!(Meta::parse(b"version=1.x").is_err());
        assert!(Meta::parse(&[b'a', b'=', 0xff]).is_err());
        assert!(Meta::parse(b"compat=web\x1b[2J").unwrap_err().contains("control character"));
    }
}
