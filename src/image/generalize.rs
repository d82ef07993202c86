//! Generalizing a root tree into an image any host can boot (the factory's
//! step and `hnctl image create`'s): no machine-id, no ssh host keys, no logs,
//! caches or random seed, hostname `localhost`; plus the small tree-writing
//! helpers both use.

use super::tools as util;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// A path inside the tree (a relative path, no `..`).
pub fn at(stage: &Path, rel: &str) -> PathBuf {
    debug_assert!(!rel.starts_with('/') && !rel.split('/').any(|c| c == ".."));
    stage.join(rel)
}

/// Writes a file inside the tree, replacing a file or symlink there.
pub fn put(stage: &Path, rel: &str, data: &str, mode: u32) -> Result<()> {
    let p = at(stage, rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(&p)?;
    }
    fs::write(&p, data).with_context(|| format!("writing /{rel}"))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Makes `/rel` a symlink to `target` (replacing a file or link).
pub fn link(stage: &Path, rel: &str, target: &str) -> Result<()> {
    let p = at(stage, rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(&p)?;
    }
    symlink(target, &p).with_context(|| format!("linking /{rel} -> {target}"))
}

/// A unit file exists in the tree (in /etc, /lib or /usr/lib).
pub fn has_unit(stage: &Path, unit: &str) -> bool {
    [
        "etc/systemd/system",
        "lib/systemd/system",
        "usr/lib/systemd/system",
    ]
    .iter()
    .any(|d| fs::symlink_metadata(stage.join(d).join(unit)).is_ok())
}

const HOSTS: &str = "\
127.0.0.1\tlocalhost
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
";


/// Removes the regular files (and symlinks) under `dir`, keeping directories.
fn empty_files_under(dir: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            empty_files_under(&e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Removes the entries of `dir` matching `keep == false`.
fn remove_entries(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e?;
        if !keep(&e.file_name().to_string_lossy()) {
            util::remove_any(&e.path())?;
        }
    }
    Ok(())
}

/// Generalizes the tree at `stage` in place.
pub fn generalize(stage: &Path) -> Result<()> {
    // Empty machine-id: systemd's "not yet initialized" (first boot); hninit
    // writes the host's own from hn-state when it instantiates the image.
    put(stage, "etc/machine-id", "", 0o444)?;
    let dbus_id = at(stage, "var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus_id).is_ok_and(|m| !m.file_type().is_symlink()) {
        fs::remove_file(&dbus_id)?;
    }
    remove_entries(&at(stage, "etc/ssh"), |n| {
        !(n.starts_with("ssh_host_") && (n.ends_with("_key") || n.ends_with("_key.pub")))
    })?;
    for f in [
        "var/lib/systemd/random-seed",
        "var/lib/systemd/credential.secret",
        "etc/adjtime",
        "root/.bash_history",
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/diversions-old",
        "var/lib/dpkg/statoverride-old",
    ] {
        util::remove_any(&at(stage, f))?;
    }
    empty_files_under(&at(stage, "var/log"))?;
    remove_entries(&at(stage, "var/lib/apt/lists"), |n| {
        n == "lock" || n == "partial"
    })?;
    remove_entries(&at(stage, "var/cache/apt"), |n| n == "archives")?;
    remove_entries(&at(stage, "var/cache/apt/archives"), |n| {
        n == "lock" || n == "partial"
    })?;
    remove_entries(&at(stage, "tmp"), |_| false)?;
    remove_entries(&at(stage, "var/tmp"), |_| false)?;
    put(stage, "etc/hostname", "localhost\n", 0o644)?;
    put(stage, "etc/hosts", HOSTS, 0o644)?;
    // debootstrap copied the build host's resolv.conf.
    if has_unit(stage, "systemd-resolved.service") {
        link(
            stage,
            "etc/resolv.conf",
            "../run/systemd/resolve/stub-resolv.conf",
        )?;
    } else {
        put(stage, "etc/resolv.conf", "", 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalize_removes_host_specifics() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        for (f, c) in [
            ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("var/lib/dbus/machine-id", "0123\n"),
            ("etc/ssh/ssh_host_ed25519_key", "secret"),
            ("etc/ssh/ssh_host_ed25519_key.pub", "pub"),
            ("etc/ssh/sshd_config", "cfg"),
            ("var/log/apt/history.log", "x"),
            ("var/log/dpkg.log", "x"),
            ("var/lib/apt/lists/deb.debian.org_Packages", "x"),
            ("var/lib/apt/lists/lock", ""),
            ("var/cache/apt/pkgcache.bin", "x"),
            ("var/lib/systemd/random-seed", "x"),
            ("etc/resolv.conf", "nameserver 192.0.2.1\n"),
            ("etc/hostname", "buildhost\n"),
        ] {
            let p = s.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, c).unwrap();
        }
        generalize(s).unwrap();
        assert_eq!(fs::read_to_string(s.join("etc/machine-id")).unwrap(), "");
        assert!(!s.join("var/lib/dbus/machine-id").exists());
        assert!(!s.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(!s.join("etc/ssh/ssh_host_ed25519_key.pub").exists());
        assert!(s.join("etc/ssh/sshd_config").exists());
        assert!(s.join("var/log/apt").is_dir());
        assert!(!s.join("var/log/apt/history.log").exists());
        assert!(!s.join("var/log/dpkg.log").exists());
        assert!(s.join("var/lib/apt/lists/lock").exists());
        assert!(!s.join("var/lib/apt/lists/deb.debian.org_Packages").exists());
        assert!(!s.join("var/cache/apt/pkgcache.bin").exists());
        assert!(!s.join("var/lib/systemd/random-seed").exists());
        assert_eq!(fs::read_to_string(s.join("etc/resolv.conf")).unwrap(), "");
        assert_eq!(
            fs::read_to_string(s.join("etc/hostname")).unwrap(),
            "localhost\n"
        );
    }
}
