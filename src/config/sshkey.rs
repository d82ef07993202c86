//! SSH public key lines (`authorized_keys` without options): the rule every
//! key of the configuration follows (users' keys, `vm_conf.ssh_key`, the
//! management key), with the base64 decoding it needs.

use crate::config::error::{err, show, ConfigError};

const MAX_KEY_LINE: usize = 16 * 1024;

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One `authorized_keys` line without options: `TYPE BASE64 [COMMENT]`; the
/// base64 blob must decode and start with the same key type.
pub fn check_ssh_key(path: &str, line: &str) -> Result<(), ConfigError> {
    match ssh_key_problem(line) {
        Some(why) => Err(err(path, format!("not an ssh public key line: {why}"))),
        None => Ok(()),
    }
}

/// The rule of [`check_ssh_key`]: why `line` is not a public key line, if it is not.
pub fn ssh_key_problem(line: &str) -> Option<String> {
    if line.contains(['\n', '\r']) {
        return Some("it contains a line break (one key per line)".into());
    }
    if line.chars().any(|c| c.is_control()) {
        return Some("it contains a control character".into());
    }
    if line.len() > MAX_KEY_LINE {
        return Some("longer than 16 KiB".into());
    }
    let (ktype, rest) = line.split_once(' ').unwrap_or((line, ""));
    if !KEY_TYPES.contains(&ktype) {
        return Some(format!(
            "it must start with a key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521, sk-…), not {}",
            show(ktype)
        ));
    }
    let body = rest.split(' ').next().unwrap_or("");
    let Some(blob) = base64_decode(body) else {
        return Some("the key is not valid base64".into());
    };
    let declared = blob
        .get(..4)
        .and_then(|l| <[u8; 4]>::try_from(l).ok())
        .map(|l| u32::from_be_bytes(l) as usize)
        .and_then(|n| blob.get(4..4usize.checked_add(n)?));
    if declared != Some(ktype.as_bytes()) {
        return Some(format!("the key data is not a {ktype} key"));
    }
    None
}

/// Standard base64 with padding; `None` if malformed or empty.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let chunks = b.len() / 4;
    for (i, q) in b.chunks(4).enumerate() {
        let last = i + 1 == chunks;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n: u32 = 0;
        for &c in q.get(..4 - pad)? {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(bytes.get(..3 - pad)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("aGVsbA=="), Some(b"hell".to_vec()));
        assert_eq!(base64_decode("aG=k"), None);
        assert_eq!(base64_decode("aGk"), None);
        assert_eq!(base64_decode("a==="), None);
        assert_eq!(base64_decode(""), None);
    }
}
