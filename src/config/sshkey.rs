//! SSH public key lines (`authorized_keys` without options): the rule every
//! key of the configuration follows (users' keys, `vm_conf.ssh_key`, the
//! management key).

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
    let Some(blob) = crate::trust::base64::decode(body.as_bytes()) else {
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
