//! The booted system's platform settings, read from the image's two files
//! (`/etc/hninit/runtime.json`, the image-wide defaults, and
//! `/etc/hninit/runtime.host.json`, the host's, written at instantiation) and
//! combined by `config::platform::resolve` (the host wins field by field); the
//! sshd policy drop-in they give, root's `authorized_keys` with or without the
//! management key, and which consoles get a login prompt.

use crate::config::platform::{parse_defaults, resolve, Platform, HOST_SETTINGS, IMAGE_DEFAULTS, MAX_DEFAULTS};
use std::io::Read;
use std::path::Path;

/// The drop-in hninit owns in `/etc/ssh/sshd_config.d/`.
pub const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/60-hninit.conf";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("read {file}: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}: {error}")]
    Invalid { file: String, error: crate::config::parse::ConfigError },
}

/// Reads one settings file under `root`: `Ok(None)` when absent; a symbolic
/// link, a non-regular file or one over the size limit is an error.
fn read_layer(root: &Path, rel: &str) -> Result<Option<crate::config::model::Extra>, SettingsError> {
    let file = root.join(rel.trim_start_matches('/'));
    let shown = file.display().to_string();
    let read_err = |error| SettingsError::Read { file: shown.clone(), error };
    let meta = match std::fs::symlink_metadata(&file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    if !meta.file_type().is_file() {
        return Err(read_err(std::io::Error::other("not a regular file")));
    }
    let mut buf = Vec::new();
    std::fs::File::open(&file)
        .and_then(|f| f.take(MAX_DEFAULTS as u64 + 1).read_to_end(&mut buf))
        .map_err(read_err)?;
    parse_defaults(&buf).map(Some).map_err(|error| SettingsError::Invalid { file: shown, error })
}

/// The effective settings of the system whose root is `root` (`/` when booted).
pub fn load(root: &Path) -> Result<Platform, SettingsError> {
    let image = read_layer(root, IMAGE_DEFAULTS)?;
    let host = read_layer(root, HOST_SETTINGS)?;
    Ok(resolve(host.as_ref(), image.as_ref()))
}

/// The sshd drop-in for `p`; `None` when the policy is switched off (then
/// nothing of sshd's is written, and an earlier drop-in of hninit's is removed).
pub fn sshd_dropin(p: &Platform) -> Option<String> {
    if !p.sshd {
        return None;
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut s = format!(
        "# Written by hninit (hninit.sshd of the host configuration, /etc/hninit/runtime.json); rewritten at each boot.\n\
         PermitRootLogin {}\nPermitEmptyPasswords no\nCompression {}\n",
        p.permit_root_login,
        yes(p.compression)
    );
    if let Some(b) = p.password_authentication {
        s.push_str(&format!("PasswordAuthentication {}\n", yes(b)));
    }
    Some(s)
}

/// Whether an `sshd_config` includes the drop-in directory (sshd uses the
/// first value it reads: Debian's `Include` at the top lets drop-ins win).
pub fn includes_dropins(sshd_config: &str) -> bool {
    sshd_config.lines().map(str::trim).any(|l| {
        let mut w = l.split_whitespace();
        w.next().is_some_and(|k| k.eq_ignore_ascii_case("include")) && w.any(|p| p.contains("sshd_config.d/"))
    })
}

/// The comment that marks the management key's line in root's
/// `authorized_keys` (the key's own comment is replaced by it, so that the line
/// can be found and removed again).
pub const MANAGEMENT_MARK: &str = "hninit-management-key";

/// Root's `authorized_keys` with hninit's management key line set to `key`
/// (`None`: removed); every other line is kept as it is, in order.
pub fn with_management_key(current: &str, key: Option<&str>) -> String {
    let mine = |l: &str| l.split_whitespace().last() == Some(MANAGEMENT_MARK);
    let mut out: String = current.lines().filter(|l| !mine(l)).map(|l| format!("{l}\n")).collect();
    if let Some(k) = key {
        // `type base64` of the key, then the mark (options before the type are kept).
        let fields: Vec<&str> = k.split_whitespace().collect();
        let at = fields.iter().position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-") || f.starts_with("sk-")).unwrap_or(0);
        let end = (at + 2).min(fields.len());
        out.push_str(&format!("{} {MANAGEMENT_MARK}\n", fields[..end].join(" ")));
    }
    out
}

/// The consoles of `/proc/consoles` (`proc_consoles`: its text) that get a
/// serial login prompt: the hypervisor's (`hvc*`, Xen's `xvc*`) and serial
/// ports (`ttyS*`, `ttyAMA*`); the virtual terminals (`tty0`…) have their own.
pub fn serial_consoles(proc_consoles: &str) -> Vec<String> {
    let mut v: Vec<String> = proc_consoles
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|d| {
            ["hvc", "xvc", "ttyS", "ttyAMA"]
                .iter()
                .any(|p| d.strip_prefix(p).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        })
        .map(str::to_string)
        .collect();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_from_files_host_wins() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(load(t.path()).unwrap(), Platform::default());
        std::fs::create_dir_all(t.path().join("etc/hninit")).unwrap();
        std::fs::write(t.path().join("etc/hninit/runtime.json"), br#"{"swap": {"enabled": false}, "data_disks": {"mount_root": "/data"}}"#).unwrap();
        std::fs::write(t.path().join("etc/hninit/runtime.host.json"), br#"{"swap": {"enabled": true}}"#).unwrap();
        let p = load(t.path()).unwrap();
        assert!(p.swap);
        assert_eq!(p.mount_root, "/data");
        std::fs::write(t.path().join("etc/hninit/runtime.host.json"), br#"{"swap": {"enabled": 1}}"#).unwrap();
        let e = load(t.path()).unwrap_err().to_string();
        assert!(e.contains("runtime.host.json: config: swap.enabled: invalid type"), "{e}");
    }

    #[test]
    fn the_sshd_dropin_is_the_policy() {
        let p = Platform::default();
        let d = sshd_dropin(&p).unwrap();
        assert!(d.contains("\nPermitRootLogin prohibit-password\nPermitEmptyPasswords no\nCompression yes\n"), "{d}");
        assert!(!d.contains("PasswordAuthentication"));
        let d = sshd_dropin(&Platform { password_authentication: Some(false), permit_root_login: "no".into(), ..p.clone() }).unwrap();
        assert!(d.contains("PermitRootLogin no\n") && d.ends_with("PasswordAuthentication no\n"));
        assert_eq!(sshd_dropin(&Platform { sshd: false, ..p }), None);
        assert!(includes_dropins("# x\nInclude /etc/ssh/sshd_config.d/*.conf\n"));
        assert!(!includes_dropins("#Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n"));
    }

    #[test]
    fn the_management_key_line_comes_and_goes() {
        let user = "ssh-ed25519 AAAAC3user user@laptop\n";
        let k = "ssh-ed25519 AAAAC3mgmt provider@ops";
        let with = with_management_key(user, Some(k));
        assert_eq!(with, format!("{user}ssh-ed25519 AAAAC3mgmt {MANAGEMENT_MARK}\n"));
        assert_eq!(with_management_key(&with, Some(k)), with, "idempotent");
        assert_eq!(with_management_key(&with, None), user);
        assert_eq!(with_management_key("", None), "");
        let other = with_management_key(&with, Some("ssh-rsa AAAAB3new"));
        assert_eq!(other, format!("{user}ssh-rsa AAAAB3new {MANAGEMENT_MARK}\n"));
    }

    #[test]
    fn serial_and_hypervisor_consoles_get_a_prompt() {
        let pc = "tty0                 -WU (EC p  )    4:7\nttyS0                -W- (E  p a)    4:64\nhvc0                 -W- (E    )  229:0\nttyS\nnetcon0              -W- (E    )\n";
        assert_eq!(serial_consoles(pc), ["ttyS0", "hvc0"]);
        assert!(serial_consoles("").is_empty());
    }
}
