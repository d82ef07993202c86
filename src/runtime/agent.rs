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
         sshd.password_authentication = {}\nsshd.compression = {}\n",
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
        p.compression
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

/// Writes or removes the sshd drop-in under `root` (`/` when booted).
pub fn sshd(root: &Path) -> Result<String, AgentError> {
    let p = settings::load(root)?;
    let path = root.join(settings::SSHD_DROPIN.trim_start_matches('/'));
    match settings::sshd_dropin(&p) {
        None => match std::fs::remove_file(&path) {
            Ok(()) => Ok(format!("sshd: policy off: removed {}\n", settings::SSHD_DROPIN)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("sshd: policy off: sshd_config untouched\n".into()),
            Err(e) => Err(failed(format!("sshd: remove {}", path.display()), e)),
        },
        Some(text) => {
            let dir = path.parent().unwrap_or(root);
            std::fs::create_dir_all(dir).map_err(|e| failed(format!("sshd: mkdir {}", dir.display()), e))?;
            let tmp = dir.join(".60-hninit.conf.tmp");
            std::fs::write(&tmp, &text)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| failed(format!("sshd: write {}", path.display()), e))?;
            let mut s = format!("sshd: policy in {}\n", settings::SSHD_DROPIN);
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
    }
}
