//! The booted system's platform settings, read from the image's two files
//! (`/etc/hninit/runtime.json`, the image-wide defaults, and
//! `/etc/hninit/runtime.host.json`, the host's, written at instantiation) and
//! combined by `config::platform::resolve` (the host wins field by field); and
//! the sshd policy drop-in they give.

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
}
