//! `hnctl platform …`: the entry points the shipped units call, each one line
//! per action on standard output (the journal), an error naming what was tried
//! and found. `show` prints the effective settings.

use crate::config::platform::Platform;
use crate::runtime::{disks, hotplug, settings, swap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("settings: {0}")]
    Settings(#[from] settings::SettingsError),
    #[error("{0}")]
    Disk(#[from] disks::DiskError),
    #[error("{what}: {found}")]
    Failed { what: String, found: String },
}

fn failed(what: impl Into<String>, found: impl std::fmt::Display) -> AgentError {
    AgentError::Failed { what: what.into(), found: found.to_string() }
}

/// The effective settings, one `key = value` line each.
pub fn show(p: &Platform) -> String {
    format!(
        "data_disks.enabled = {}\ndata_disks.mount_root = {}\ndata_disks.options = {}\ndata_disks.idle_timeout = {}\n\
         swap.enabled = {}\nhotplug.cpu = {}\nhotplug.memory = {}\nsshd.enabled = {}\nsshd.permit_root_login = {}\n\
         sshd.password_authentication = {}\nsshd.compression = {}\nsshd.management = {}\nsshd.management_key = {}\nconsole.enabled = {}\n",
        p.data_disks,
        p.mount_root,
        p.options,
        p.idle_timeout,
        p.swap,
        p.hotplug_cpu,
        p.hotplug_memory,
        p.sshd,
        p.permit_root_login,
        p.password_authentication.map_or("(image's)".to_string(), |b| b.to_string()),
        p.compression,
        p.management,
        p.management_key.as_deref().unwrap_or("(none)"),
        p.console
    )
}

pub fn load() -> Result<Platform, AgentError> {
    Ok(settings::load(Path::new("/"))?)
}

pub fn disk(name: &str) -> Result<String, AgentError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(failed(format!("disk {name:?}"), "not a kernel device name"));
    }
    Ok(disks::handle(name, &load()?)?)
}

pub fn hotplug() -> Result<String, AgentError> {
    let p = load()?;
    let r = hotplug::online(Path::new("/sys/devices/system"), p.hotplug_cpu, p.hotplug_memory).map_err(|e| failed("hotplug: /sys/devices/system", e))?;
    let mut s: String = r.onlined.iter().map(|l| format!("hotplug: {l}\n")).collect();
    if !r.failed.is_empty() {
        return Err(failed("hotplug", r.failed.join("; ")));
    }
    if s.is_empty() {
        s = format!("hotplug: nothing offline (cpu {}, memory {})\n", on(p.hotplug_cpu), on(p.hotplug_memory));
    }
    Ok(s)
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

pub fn swap() -> Result<String, AgentError> {
    let p = load()?;
    let devs = crate::sys::devices::BlockScanner::default().scan(false);
    let Some(dev) = crate::config::source::choose_candidates(&devs).into_iter().next() else {
        return Ok("swap: no swap/config device (PARTLABEL gandiswap, LABEL swap, /dev/xvdz1 …)\n".into());
    };
    let shown = dev.display().to_string();
    let active = swap::listed(&std::fs::read_to_string("/proc/swaps").unwrap_or_default(), &shown);
    let mut block = Vec::new();
    if p.swap && !active {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&dev)
            .map_err(|e| failed(format!("swap: open {shown}"), e))?;
        f.seek(SeekFrom::Start(crate::config::source::ARCHIVE_OFFSET))
            .and_then(|_| f.take(swap::CHECKED as u64).read_to_end(&mut block))
            .map_err(|e| failed(format!("swap: read {shown}"), e))?;
    }
    match swap::decide(p.swap, active, &block) {
        swap::Decision::Active => Ok(format!("swap: {shown} is active already\n")),
        swap::Decision::Refuse(why) if !p.swap => Ok(format!("swap: {shown} left alone: {why}\n")),
        swap::Decision::Refuse(why) => Err(failed(format!("swap: {shown}"), why)),
        swap::Decision::Enable => {
            let out = Command::new("swapon").arg(&dev).output().map_err(|e| failed("swap: swapon", e))?;
            if !out.status.success() {
                return Err(failed(format!("swap: swapon {shown}"), String::from_utf8_lossy(&out.stderr).trim()));
            }
            Ok(format!("swap: {shown} enabled (its configuration archive was wiped)\n"))
        }
    }
}

/// Writes `text` to `path` by a temporary file in the same directory, fsync,
/// rename (a crash leaves the old file or the new one).
fn replace(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.hninit-tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Root's `authorized_keys` under `root` with the management key as `p`
/// says (`CONFIG_SSHMGMT`): installed when `sshd.management` is on and a key
/// is configured, removed otherwise; the user's own lines are never touched.
fn management_key(root: &Path, p: &crate::config::platform::Platform) -> Result<String, AgentError> {
    let ssh = root.join("root/.ssh");
    let file = ssh.join("authorized_keys");
    let key = p.management_key.as_deref().filter(|_| p.management);
    let current = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(failed(format!("sshd: read {}", file.display()), e)),
    };
    let next = settings::with_management_key(&current, key);
    if next == current {
        return Ok(match key {
            Some(_) => "sshd: management key present for root\n".into(),
            None => String::new(),
        });
    }
    if key.is_some() && !ssh.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&ssh).map_err(|e| failed(format!("sshd: mkdir {}", ssh.display()), e))?;
    }
    replace(&file, &next, 0o600).map_err(|e| failed(format!("sshd: write {}", file.display()), e))?;
    Ok(match key {
        Some(_) => "sshd: management key installed for root (/root/.ssh/authorized_keys)\n".into(),
        None => "sshd: management key removed from /root/.ssh/authorized_keys\n".into(),
    })
}

/// Starts a serial login prompt (`serial-getty@DEV.service`) on each
/// hypervisor or serial console of `/proc/consoles` when `console.enabled`
/// (Gandi's emergency console); off: nothing is started by hninit.
pub fn console() -> Result<String, AgentError> {
    let p = load()?;
    if !p.console {
        return Ok("console: off (hninit.console.enabled): no login prompt started by hninit\n".into());
    }
    let list = std::fs::read_to_string("/proc/consoles").map_err(|e| failed("console: read /proc/consoles", e))?;
    let devs = settings::serial_consoles(&list);
    if devs.is_empty() {
        return Ok("console: no serial or hypervisor console in /proc/consoles\n".into());
    }
    let mut s = String::new();
    for d in devs {
        let unit = format!("serial-getty@{d}.service");
        let out = Command::new("systemctl").args(["--no-block", "start", &unit]).output().map_err(|e| failed("console: systemctl", e))?;
        if !out.status.success() {
            return Err(failed(format!("console: systemctl start {unit}"), String::from_utf8_lossy(&out.stderr).trim()));
        }
        s.push_str(&format!("console: login prompt on /dev/{d} ({unit})\n"));
    }
    Ok(s)
}

/// Writes or removes the sshd drop-in under `root` (`/` when booted), and
/// root's management key line.
pub fn sshd(root: &Path) -> Result<String, AgentError> {
    let p = settings::load(root)?;
    let keys = management_key(root, &p)?;
    let path = root.join(settings::SSHD_DROPIN.trim_start_matches('/'));
    match settings::sshd_dropin(&p) {
        None => match std::fs::remove_file(&path) {
            Ok(()) => Ok(format!("{keys}sshd: policy off: removed {}\n", settings::SSHD_DROPIN)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(format!("{keys}sshd: policy off: sshd_config untouched\n")),
            Err(e) => Err(failed(format!("sshd: remove {}", path.display()), e)),
        },
        Some(text) => {
            let dir = path.parent().unwrap_or(root);
            std::fs::create_dir_all(dir).map_err(|e| failed(format!("sshd: mkdir {}", dir.display()), e))?;
            replace(&path, &text, 0o644).map_err(|e| failed(format!("sshd: write {}", path.display()), e))?;
            let mut s = format!("{keys}sshd: policy in {}\n", settings::SSHD_DROPIN);
            let main = std::fs::read_to_string(root.join("etc/ssh/sshd_config")).unwrap_or_default();
            if !settings::includes_dropins(&main) {
                s.push_str("sshd: warning: /etc/ssh/sshd_config has no Include of sshd_config.d: the policy is not in effect\n");
            }
            Ok(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sshd_dropin_comes_and_goes_with_the_switch() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/ssh")).unwrap();
        std::fs::write(r.join("etc/ssh/sshd_config"), "Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n").unwrap();
        let out = sshd(r).unwrap();
        assert_eq!(out, "sshd: policy in /etc/ssh/sshd_config.d/60-hninit.conf\n");
        assert!(std::fs::read_to_string(r.join("etc/ssh/sshd_config.d/60-hninit.conf")).unwrap().contains("PermitRootLogin prohibit-password\n"));
        std::fs::create_dir_all(r.join("etc/hninit")).unwrap();
        std::fs::write(r.join("etc/hninit/runtime.host.json"), br#"{"sshd": {"enabled": false}}"#).unwrap();
        assert_eq!(sshd(r).unwrap(), "sshd: policy off: removed /etc/ssh/sshd_config.d/60-hninit.conf\n");
        assert_eq!(sshd(r).unwrap(), "sshd: policy off: sshd_config untouched\n");
        assert_eq!(std::fs::read_to_string(r.join("etc/ssh/sshd_config")).unwrap(), "Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n");
        assert!(show(&Platform::default()).contains("data_disks.mount_root = /srv\n"));

        // The management key: installed beside root's own key, removed when off.
        std::fs::create_dir_all(r.join("root/.ssh")).unwrap();
        std::fs::write(r.join("root/.ssh/authorized_keys"), "ssh-ed25519 AAAAC3own me@laptop\n").unwrap();
        std::fs::write(
            r.join("etc/hninit/runtime.host.json"),
            br#"{"sshd": {"management": true, "management_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBO6DsSv7VxmHa7D2RPsNH9lsiScoL4AEBK0KGZAwVDR ops@provider"}}"#,
        )
        .unwrap();
        let out = sshd(r).unwrap();
        assert!(out.starts_with("sshd: management key installed for root"), "{out}");
        let keys = std::fs::read_to_string(r.join("root/.ssh/authorized_keys")).unwrap();
        assert_eq!(keys, "ssh-ed25519 AAAAC3own me@laptop\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBO6DsSv7VxmHa7D2RPsNH9lsiScoL4AEBK0KGZAwVDR hninit-management-key\n");
        assert!(sshd(r).unwrap().starts_with("sshd: management key present"));
        std::fs::write(r.join("etc/hninit/runtime.json"), br#"{"sshd": {"management_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBO6DsSv7VxmHa7D2RPsNH9lsiScoL4AEBK0KGZAwVDR ops@provider"}}"#).unwrap();
        std::fs::write(r.join("etc/hninit/runtime.host.json"), br#"{"sshd": {"management": false}}"#).unwrap();
        assert!(sshd(r).unwrap().starts_with("sshd: management key removed"));
        assert_eq!(std::fs::read_to_string(r.join("root/.ssh/authorized_keys")).unwrap(), "ssh-ed25519 AAAAC3own me@laptop\n");
    }
}
