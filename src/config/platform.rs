//! The booted system's platform settings: the `data_disks`, `swap`, `hotplug`,
//! `sshd` and `console` members of the host configuration's `hninit` object, the
//! image-wide defaults file that holds the same members
//! ([`IMAGE_DEFAULTS`], `/etc/hninit/runtime.json` in the image), their rules
//! ([`check`]) and how the three layers combine ([`resolve`]: the host
//! configuration wins, field by field, over the image's file, which wins over
//! the built-in defaults of [`Platform::default`]).
//!
//! Rules (each refusal names the field):
//! * `data_disks.mount_root`: an absolute, normalised path of
//!   `A-Z a-z 0-9 / _ . -`, at most 200 bytes, not `/` and not in or under a
//!   directory of the system (`/etc`, `/usr`, `/proc`, `/hostpart` …, see
//!   [`SYSTEM_DIRS`]);
//! * `data_disks.options`: comma-separated options of `A-Z a-z 0-9 _ = . : + -`,
//!   none empty, at most 512 bytes (no spaces, quotes or backslashes: the
//!   string goes into unit files and command lines as is);
//! * `data_disks.idle_timeout`: seconds, 0 (never unmount) to 604800 (a week);
//! * `sshd.permit_root_login`: `prohibit-password`, `no` or `yes`;
//! * `sshd.management_key`: one ssh public key line (the user keys' rule),
//!   required when `sshd.management` is `true` in the same object.

use crate::config::error::{err, ConfigError};
use crate::config::json::parse_strict;
use crate::config::model::Extra;
use crate::config::read::{platform_defaults, platform_objects};
use serde_json::Value;

/// The image-wide defaults, inside the image.
pub const IMAGE_DEFAULTS: &str = "/etc/hninit/runtime.json";
/// The host's own settings, written into the image at instantiation (the
/// `hninit` object's platform members, canonical JSON).
pub const HOST_SETTINGS: &str = "/etc/hninit/runtime.host.json";
/// The largest defaults file read.
pub const MAX_DEFAULTS: usize = 64 * 1024;
pub const MAX_IDLE_TIMEOUT: u32 = 7 * 24 * 3600;
const MAX_MOUNT_ROOT: usize = 200;
const MAX_OPTIONS: usize = 512;

/// Directories a mount root may not be, or be under.
pub const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/hostpart", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin", "/sys",
    "/tmp", "/usr",
];
/// Directories a mount root may not be (it may be under them).
const NOT_THEMSELVES: &[&str] = &["/", "/home", "/mnt", "/opt", "/root", "/var"];

pub const ROOT_LOGIN: &[&str] = &["prohibit-password", "no", "yes"];

/// The effective settings, every field decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub data_disks: bool,
    pub mount_root: String,
    pub options: String,
    /// Seconds; 0: never unmounted.
    pub idle_timeout: u32,
    pub swap: bool,
    pub hotplug_cpu: bool,
    pub hotplug_memory: bool,
    pub sshd: bool,
    pub permit_root_login: String,
    /// `None`: left as the image has it.
    pub password_authentication: Option<bool>,
    pub compression: bool,
    /// Install [`Platform::management_key`] for root (`CONFIG_SSHMGMT`).
    pub management: bool,
    pub management_key: Option<String>,
    /// A login prompt on the hosting emergency console(s).
    pub console: bool,
}

impl Default for Platform {
    /// Gandi's agent's behaviour: every part on, disks at `/srv` unmounted
    /// after ten idle minutes, root without password over ssh.
    fn default() -> Self {
        Platform {
            data_disks: true,
            mount_root: "/srv".into(),
            options: "nosuid,nodev".into(),
            idle_timeout: 600,
            swap: true,
            hotplug_cpu: true,
            hotplug_memory: true,
            sshd: true,
            permit_root_login: "prohibit-password".into(),
            password_authentication: None,
            compression: true,
            management: true,
            management_key: None,
            console: true,
        }
    }
}

/// Combines the layers: `host` (the configuration's `hninit`) over `image` (the
/// image's defaults file) over [`Platform::default`], field by field.
pub fn resolve(host: Option<&Extra>, image: Option<&Extra>) -> Platform {
    let mut p = Platform::default();
    // The lower layer first, so that the higher one overwrites.
    for x in [image, host].into_iter().flatten() {
        if let Some(d) = &x.data_disks {
            set(&mut p.data_disks, d.enabled);
            set(&mut p.mount_root, d.mount_root.clone());
            set(&mut p.options, d.options.clone());
            set(&mut p.idle_timeout, d.idle_timeout);
        }
        if let Some(s) = &x.swap {
            set(&mut p.swap, s.enabled);
        }
        if let Some(h) = &x.hotplug {
            set(&mut p.hotplug_cpu, h.cpu);
            set(&mut p.hotplug_memory, h.memory);
        }
        if let Some(s) = &x.sshd {
            set(&mut p.sshd, s.enabled);
            set(&mut p.permit_root_login, s.permit_root_login.clone());
            if s.password_authentication.is_some() {
                p.password_authentication = s.password_authentication;
            }
            set(&mut p.compression, s.compression);
            set(&mut p.management, s.management);
            if s.management_key.is_some() {
                p.management_key = s.management_key.clone();
            }
        }
        if let Some(c) = &x.console {
            set(&mut p.console, c.enabled);
        }
    }
    p
}

fn set<T>(to: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *to = v;
    }
}

/// Only the platform members of `x` (what [`HOST_SETTINGS`] holds).
pub fn only_platform(x: &Extra) -> Extra {
    Extra {
        data_disks: x.data_disks.clone(),
        swap: x.swap.clone(),
        hotplug: x.hotplug.clone(),
        sshd: x.sshd.clone(),
        console: x.console.clone(),
        ..Extra::default()
    }
}

/// [`HOST_SETTINGS`]'s contents: the platform members `x` gives, as compact
/// JSON (a valid defaults file); `None` when it gives none.
pub fn host_settings(x: &Extra) -> Option<Vec<u8>> {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: Option<serde_json::Result<Value>>| {
        if let Some(Ok(v)) = v {
            m.insert(k.into(), v);
        }
    };
    put("data_disks", x.data_disks.as_ref().map(serde_json::to_value));
    put("swap", x.swap.as_ref().map(serde_json::to_value));
    put("hotplug", x.hotplug.as_ref().map(serde_json::to_value));
    put("sshd", x.sshd.as_ref().map(serde_json::to_value));
    put("console", x.console.as_ref().map(serde_json::to_value));
    if m.is_empty() {
        return None;
    }
    let mut text = serde_json::to_vec(&m).ok()?;
    text.push(b'\n');
    Some(text)
}

/// Checks the platform members of `x`; `base` prefixes the paths in errors
/// (`hninit` in a host configuration, empty in the image's file).
pub fn check(x: &Extra, base: &str) -> Result<(), ConfigError> {
    let at = |f: &str| if base.is_empty() { f.to_string() } else { format!("{base}.{f}") };
    if let Some(d) = &x.data_disks {
        if let Some(r) = &d.mount_root {
            if let Some(why) = mount_root_problem(r) {
                return Err(err(at("data_disks.mount_root"), why));
            }
        }
        if let Some(o) = &d.options {
            if let Some(why) = options_problem(o) {
                return Err(err(at("data_disks.options"), why));
            }
        }
        if let Some(t) = d.idle_timeout {
            if t > MAX_IDLE_TIMEOUT {
                return Err(err(
                    at("data_disks.idle_timeout"),
                    format!("{t} seconds, at most {MAX_IDLE_TIMEOUT} (a week); 0 never unmounts"),
                ));
            }
        }
    }
    if let Some(s) = &x.sshd {
        if let Some(k) = &s.management_key {
            crate::config::sshkey::check_ssh_key(&at("sshd.management_key"), k)?;
        }
        if s.management == Some(true) && s.management_key.is_none() {
            return Err(err(at("sshd.management"), "true without sshd.management_key (the key to install)"));
        }
    }
    if let Some(l) = x.sshd.as_ref().and_then(|s| s.permit_root_login.as_deref()) {
        if !ROOT_LOGIN.contains(&l) {
            return Err(err(
                at("sshd.permit_root_login"),
                format!("{} is not one of {}", crate::config::error::show(l), ROOT_LOGIN.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Why `r` cannot be the mount root, if it cannot.
pub fn mount_root_problem(r: &str) -> Option<String> {
    if r.len() > MAX_MOUNT_ROOT {
        return Some(format!("{} bytes, at most {MAX_MOUNT_ROOT}", r.len()));
    }
    let normal = r == "/" || r.starts_with('/') && r[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if !normal {
        return Some(format!("{} is not an absolute path without empty, . or .. components", crate::config::error::show(r)));
    }
    if !r.chars().all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c)) {
        return Some(format!("{}: only A-Z a-z 0-9 / _ . - are allowed", crate::config::error::show(r)));
    }
    if NOT_THEMSELVES.contains(&r) {
        return Some(format!("{r} itself is a directory of the system; use a directory in it"));
    }
    if let Some(d) = SYSTEM_DIRS.iter().find(|d| r == **d || r.starts_with(&format!("{d}/"))) {
        return Some(format!("{r} is in {d}, a directory of the system"));
    }
    None
}

/// Why `o` cannot be the mount options, if it cannot.
pub fn options_problem(o: &str) -> Option<String> {
    if o.len() > MAX_OPTIONS {
        return Some(format!("{} bytes, at most {MAX_OPTIONS}", o.len()));
    }
    if o.split(',').any(str::is_empty) {
        return Some(format!("{}: an empty option (a leading, trailing or doubled comma)", crate::config::error::show(o)));
    }
    if let Some(c) = o.chars().find(|c| !(c.is_ascii_alphanumeric() || "_=.:+-,".contains(*c))) {
        return Some(format!("{}: {c:?} is not allowed (options are A-Z a-z 0-9 _ = . : + - separated by commas)", crate::config::error::show(o)));
    }
    None
}

/// Parses and checks the image-wide defaults file (an object with only the
/// platform members; unknown members are errors).
pub fn parse_defaults(text: &[u8]) -> Result<Extra, ConfigError> {
    if text.len() > MAX_DEFAULTS {
        return Err(err("", format!("{} bytes is larger than the limit of {MAX_DEFAULTS} bytes", text.len())));
    }
    let value = parse_strict(text)?;
    let Value::Object(top) = &value else {
        return Err(err("", "must be a JSON object"));
    };
    platform_objects(top)?;
    let x = platform_defaults(&value).map_err(|e| err(e.path.unwrap_or_default(), e.message))?;
    check(&x, "")?;
    Ok(x)
}

// Tests: tests/platform_config.rs (they read whole host configurations, through
// `config::parse`, which uses this module).
