//! The kernel command line: genkernel image-root keys (`real_root=`,
//! `loopdev_hostpart=`, `loopdev_hostpart_flags=`, `raw_loop_root_host_partition=`),
//! the standard root keys (`ro`, `rw`, `init=`, `rootfstype=`, `rootflags=`,
//! `rootwait`, `panic=`) and hninit's own `hn.*` namespace. Pure: parsing never
//! fails; a malformed value keeps the default and yields a warning naming the key.

use crate::sys::devspec::DevSpec;
use crate::sys::mounts::{parse_options, MountOptions};
pub use crate::slots::Revert;
use std::time::Duration;

/// The longest command line accepted (the kernel's own limit on x86 is 2048; be generous).
pub const MAX_CMDLINE: usize = 65536;
const MAX_VALUE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootMode {
    /// Neither `ro` nor `rw`: the image is attached writable and mounted read-only,
    /// like the kernel's own default, so the booted system can remount it rw.
    Default,
    /// `ro`: loop device and mount are both read-only.
    Ro,
    /// `rw`: mounted read-write.
    Rw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    Reboot,
    Halt,
    Shell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRotate {
    Kexec,
    Reboot,
    Continue,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cmdline {
    /// Path of the image on the host partition, absolute (`/hn-root.img`).
    pub real_root: String,
    pub hostpart: DevSpec,
    /// Mount options for the host partition (`loopdev_hostpart_flags=`).
    pub hostpart_flags: MountOptions,
    pub root_mode: RootMode,
    pub init: String,
    pub rootfstype: Option<String>,
    pub rootflags: MountOptions,
    pub rootwait: bool,
    /// How long to wait for the host partition; `None` = forever (`rootwait` without `hn.timeout`).
    pub timeout: Option<Duration>,
    pub on_error: OnError,
    /// Delay before the reboot of `hn.on_error=reboot` (`hn.reboot_delay=`, else `panic=`, else 30 s).
    pub reboot_delay: Duration,
    pub debug: bool,
    pub revert: Option<Revert>,
    pub after_rotate: AfterRotate,
    pub tries: u32,
    pub config: Option<String>,
    pub config_keep: bool,
    /// Extra modules to load before anything else (`hn.modules=a,b`).
    pub modules: Vec<String>,
    /// `hn.kexec=1`: this boot was kexec'd by hninit after a rotation; do not rotate or count.
    pub kexeced: bool,
    /// `hn.tries_by=grub`: the boot loader already spent a try for this boot.
    pub tries_by_grub: bool,
    /// `hn.verify=off`: asks not to verify staged images' signatures; refused
    /// (with a warning) when the initramfs trusts keys.
    pub verify_off: bool,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            real_root: "/hn-root.img".into(),
            hostpart: DevSpec::Label("hostpart".into()),
            hostpart_flags: MountOptions::default(),
            root_mode: RootMode::Default,
            init: "/sbin/init".into(),
            rootfstype: None,
            rootflags: MountOptions::default(),
            rootwait: false,
            timeout: Some(DEFAULT_TIMEOUT),
            on_error: OnError::Reboot,
            reboot_delay: Duration::from_secs(30),
            debug: false,
            revert: None,
            after_rotate: AfterRotate::Kexec,
            tries: 3,
            config: None,
            config_keep: false,
            modules: Vec::new(),
            kexeced: false,
            tries_by_grub: false,
            verify_off: false,
        }
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A value that was not understood; the default was kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command line: {}: {}", self.key, self.message)
    }
}

/// Splits a command line the way the kernel does: whitespace separates
/// parameters, double quotes group (and are removed), `--` ends the kernel's part.
pub fn split(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    if cur == "--" {
                        return out;
                    }
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started && cur != "--" {
        out.push(cur);
    }
    out
}

/// Parses the whole command line. Later occurrences of a key win, as in the kernel.
pub fn parse(text: &str) -> (Cmdline, Vec<Warning>) {
    let mut c = Cmdline::default();
    let mut w = Vec::new();
    let text = if text.len() > MAX_CMDLINE {
        w.push(warn("cmdline", format!("longer than {MAX_CMDLINE} bytes, the rest is ignored")));
        let mut end = MAX_CMDLINE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    } else {
        text
    };
    let mut timeout_set = false;
    let mut delay_set = false;
    let mut panic_delay = None;
    for param in split(text) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param.as_str(), None),
        };
        if let Some(v) = value {
            if v.len() > MAX_VALUE {
                w.push(warn(key, format!("value longer than {MAX_VALUE} bytes, ignored")));
                continue;
            }
        }
        let need = |w: &mut Vec<Warning>| -> Option<&str> {
            if value.is_none() {
                w.push(warn(key, "needs a value (key=value), ignored".into()));
            }
            value
        };
        match key {
            "real_root" => {
                if let Some(v) = need(&mut w) {
                    match check_image_path(v) {
                        Ok(p) => c.real_root = p,
                        Err(e) => w.push(warn(key, e)),
                    }
                }
            }
            "loopdev_hostpart" | "raw_loop_root_host_partition" => {
                if let Some(v) = need(&mut w) {
                    match DevSpec::parse(v) {
                        Ok(s) => c.hostpart = s,
                        Err(e) => w.push(warn(key, e.to_string())),
                    }
                }
            }
            "loopdev_hostpart_flags" => {
                if let Some(v) = need(&mut w) {
                    c.hostpart_flags = parse_options(v);
                }
            }
            "ro" => c.root_mode = RootMode::Ro,
            "rw" => c.root_mode = RootMode::Rw,
            "init" => {
                if let Some(v) = need(&mut w) {
                    if v.starts_with('/') && !v.contains('\0') {
                        c.init = v.to_string();
                    } else {
                        w.push(warn(key, format!("{v:?} is not an absolute path")));
                    }
                }
            }
            "rootfstype" => {
                if let Some(v) = need(&mut w) {
                    if !v.is_empty() && v.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.') {
                        c.rootfstype = Some(v.to_string());
                    } else {
                        w.push(warn(key, format!("{v:?} is not a filesystem type name")));
                    }
                }
            }
            "rootflags" => {
                if let Some(v) = need(&mut w) {
                    c.rootflags = parse_options(v);
                }
            }
            "rootwait" => c.rootwait = true,
            "panic" => {
                if let Some(v) = need(&mut w) {
                    match v.parse::<i64>() {
                        Ok(n) if n > 0 => panic_delay = Some(Duration::from_secs(n as u64)),
                        Ok(_) => {}
                        Err(_) => w.push(warn(key, format!("{v:?} is not an integer"))),
                    }
                }
            }
            "hn.timeout" => {
                if let Some(v) = need(&mut w) {
                    match parse_seconds(v) {
                        Some(d) => {
                            c.timeout = Some(d);
                            timeout_set = true;
                        }
                        None => w.push(warn(key, format!("{v:?} is not a number of seconds"))),
                    }
                }
            }
            "hn.reboot_delay" => {
                if let Some(v) = need(&mut w) {
                    match parse_seconds(v) {
                        Some(d) => {
                            c.reboot_delay = d;
                            delay_set = true;
                        }
                        None => w.push(warn(key, format!("{v:?} is not a number of seconds"))),
                    }
                }
            }
            "hn.on_error" => {
                if let Some(v) = need(&mut w) {
                    c.on_error = match v {
                        "reboot" => OnError::Reboot,
                        "halt" => OnError::Halt,
                        "shell" => OnError::Shell,
                        _ => {
                            w.push(warn(key, format!("{v:?} is not reboot, halt or shell")));
                            c.on_error
                        }
                    }
                }
            }
            "hn.debug" => match value {
                None | Some("1") | Some("yes") | Some("on") => c.debug = true,
                Some("0") | Some("no") | Some("off") => c.debug = false,
                Some(v) => w.push(warn(key, format!("{v:?} is not 0 or 1"))),
            },
            "hn.revert" => match value {
                None | Some("1") | Some("yes") => c.revert = Some(Revert::Manual),
                Some("auto") => c.revert = Some(Revert::Auto),
                Some("0") | Some("no") => c.revert = None,
                Some(v) => w.push(warn(key, format!("{v:?} is not 1 or auto"))),
            },
            "hn.after_rotate" => {
                if let Some(v) = need(&mut w) {
                    c.after_rotate = match v {
                        "kexec" => AfterRotate::Kexec,
                        "reboot" => AfterRotate::Reboot,
                        "continue" => AfterRotate::Continue,
                        _ => {
                            w.push(warn(key, format!("{v:?} is not kexec, reboot or continue")));
                            c.after_rotate
                        }
                    }
                }
            }
            "hn.tries" => {
                if let Some(v) = need(&mut w) {
                    match v.parse::<u32>() {
                        Ok(n) if (1..=100).contains(&n) => c.tries = n,
                        _ => w.push(warn(key, format!("{v:?} is not a number from 1 to 100"))),
                    }
                }
            }
            "hn.config" => {
                if let Some(v) = need(&mut w) {
                    c.config = Some(v.to_string());
                }
            }
            "hn.config.keep" => c.config_keep = !matches!(value, Some("0") | Some("no")),
            "hn.modules" => {
                if let Some(v) = need(&mut w) {
                    for m in v.split(',').filter(|m| !m.is_empty()) {
                        if m.len() <= 64 && m.chars().all(|ch| ch.is_ascii_alphanumeric() || "_-".contains(ch)) {
                            c.modules.push(m.to_string());
                        } else {
                            w.push(warn(key, format!("{m:?} is not a module name")));
                        }
                    }
                }
            }
            "hn.kexec" => c.kexeced = !matches!(value, Some("0")),
            "hn.tries_by" => match value {
                Some("grub") => c.tries_by_grub = true,
                Some("hninit") => c.tries_by_grub = false,
                v => w.push(warn(key, format!("{v:?} is not grub or hninit"))),
            },
            "hn.verify" => match value {
                Some("off") => c.verify_off = true,
                Some("on") => c.verify_off = false,
                v => w.push(warn(key, format!("{v:?} is not on or off"))),
            },
            k if k.starts_with("hn.") => {
                w.push(warn(k, "unknown hninit parameter, ignored".into()));
            }
            _ => {}
        }
    }
    if c.rootwait && !timeout_set {
        c.timeout = None;
    }
    if !delay_set {
        if let Some(d) = panic_delay {
            c.reboot_delay = d;
        }
    }
    (c, w)
}

fn warn(key: &str, message: String) -> Warning {
    Warning { key: key.to_string(), message }
}

/// Seconds, integer or decimal (`5`, `2.5`, `.5`), at most one day. Read
/// without floating point: `f64`'s parser costs /init about 14 KB of tables.
fn parse_seconds(v: &str) -> Option<Duration> {
    let v = v.strip_prefix('+').unwrap_or(v);
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return None;
    }
    let secs = int.bytes().fold(0u64, |n, b| n.saturating_mul(10).saturating_add(u64::from(b - b'0')));
    // Nanoseconds from the first nine decimals (the rest is below a clock tick).
    let nanos = frac.bytes().chain(std::iter::repeat(b'0')).take(9).fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
    let d = Duration::new(secs.min(86401), nanos);
    (d <= Duration::from_secs(86400)).then_some(d)
}

/// An image path must be absolute, normal (no `.`/`..`/empty components) and name a file.
pub fn check_image_path(v: &str) -> Result<String, String> {
    if !v.starts_with('/') {
        return Err(format!("{v:?} is not an absolute path on the host partition"));
    }
    let comps: Vec<&str> = v[1..].split('/').collect();
    if comps.iter().any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains('\0')) {
        return Err(format!("{v:?} has empty, '.' or '..' components"));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let (c, w) = parse("console=ttyS0 quiet");
        assert!(w.is_empty());
        assert_eq!(c, Cmdline::default());
    }

    #[test]
    fn genkernel_keys() {
        let (c, w) = parse(
            "real_root=/images/hn-root.img loopdev_hostpart=UUID=AB-CD loopdev_hostpart_flags=noatime ro",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.real_root, "/images/hn-root.img");
        assert_eq!(c.hostpart, DevSpec::Uuid("ab-cd".into()));
        assert_eq!(c.hostpart_flags, "noatime");
        assert_eq!(c.root_mode, RootMode::Ro);
        let (c, _) = parse("raw_loop_root_host_partition=PARTLABEL=hp");
        assert_eq!(c.hostpart, DevSpec::PartLabel("hp".into()));
    }

    #[test]
    fn malformed_values_warn_and_keep_defaults() {
        let (c, w) = parse("real_root=hn.img hn.timeout=soon hn.on_error=explode hn.frobnicate=1 loopdev_hostpart=sda1 init=sbin/init");
        assert_eq!(c, Cmdline::default());
        let keys: Vec<_> = w.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            ["real_root", "hn.timeout", "hn.on_error", "hn.frobnicate", "loopdev_hostpart", "init"]
        );
    }

    #[test]
    fn quotes_and_double_dash() {
        assert_eq!(split(r#"a "b c" d="e f" -- g h"#), ["a", "b c", "d=e f"]);
        let (c, _) = parse(r#"loopdev_hostpart="PARTLABEL=host part""#);
        assert_eq!(c.hostpart, DevSpec::PartLabel("host part".into()));
    }

    #[test]
    fn rootwait_waits_forever_unless_timeout_given() {
        assert_eq!(parse("rootwait").0.timeout, None);
        assert_eq!(parse("rootwait hn.timeout=5").0.timeout, Some(Duration::from_secs(5)));
        assert_eq!(parse("hn.timeout=2.5").0.timeout, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn seconds() {
        let ms = |v: &str| parse_seconds(v).map(|d| d.as_millis());
        assert_eq!(ms("5"), Some(5000));
        assert_eq!(ms("007"), Some(7000));
        assert_eq!(ms("0"), Some(0));
        assert_eq!(ms("2.5"), Some(2500));
        assert_eq!(ms("+.25"), Some(250));
        assert_eq!(ms("3."), Some(3000));
        assert_eq!(ms("0.0001"), Some(0));
        assert_eq!(parse_seconds("0.123456789123"), Some(Duration::new(0, 123_456_789)));
        assert_eq!(ms("86400"), Some(86_400_000));
        assert_eq!(ms("86400.000"), Some(86_400_000));
        for bad in ["", ".", "86400.5", "86401", "99999999999999999999999", "-1", "1e3", "inf", "nan", "1.2.3", " 1", "0x10"] {
            assert_eq!(parse_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn panic_sets_reboot_delay_unless_given() {
        assert_eq!(parse("panic=10").0.reboot_delay, Duration::from_secs(10));
        assert_eq!(parse("panic=10 hn.reboot_delay=0").0.reboot_delay, Duration::ZERO);
        assert_eq!(parse("panic=-1").0.reboot_delay, Duration::from_secs(30));
    }

    #[test]
    fn last_one_wins() {
        assert_eq!(parse("ro rw").0.root_mode, RootMode::Rw);
        assert_eq!(parse("hn.revert=1 hn.revert=auto").0.revert, Some(Revert::Auto));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in ["=", "==", "\"", "hn.", "real_root=", "hn.tries=0", "\u{0}", "a=\"b"] {
            let _ = parse(s);
        }
        let huge = "x".repeat(MAX_CMDLINE + 10);
        let (_, w) = parse(&huge);
        assert_eq!(w[0].key, "cmdline");
    }
}
