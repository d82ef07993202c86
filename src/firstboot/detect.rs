//! What the mounted image is, as data ([`detect`] → [`ImageFacts`]): its
//! network stack and resolver, its init, its account databases, and the
//! current contents of the files the plan edits. It only reads, through
//! `rootwriter::RootDir` (confined to the root).
//!
//! # Network stack detection (first match wins)
//!
//! 1. **systemd-networkd, enabled**: `systemd-networkd` in `/lib/systemd` or
//!    `/usr/lib/systemd` and linked in a `*.wants` directory (or aliased as
//!    `dbus-org.freedesktop.network1.service`) under `/etc/systemd/system`;
//! 2. **NetworkManager, enabled**: `/etc/NetworkManager` is a directory and
//!    `NetworkManager.service` is in `multi-user.target.wants`;
//! 3. **ifupdown**: `/etc/network/interfaces` exists;
//! 4. **RHEL ifcfg**: `/etc/sysconfig/network-scripts` is a directory;
//! 5. **NetworkManager, not enabled**: `/etc/NetworkManager` is a directory;
//! 6. **systemd-networkd, not enabled**: its binary and unit exist; the plan
//!    also enables it (`multi-user.target.wants` and, when present, its socket);
//! 7. none: a configuration with addresses is then an error
//!    ([`RenderError::NoNetworkStack`]).
//!
//! The resolver is systemd-resolved when `/etc/resolv.conf` is a symbolic link
//! into `run/systemd/resolve/` (`stub-resolv.conf` or `resolv.conf`); a drop-in
//! `/etc/systemd/resolved.conf.d/60-hninit.conf` then carries `DNS=`. Otherwise
//! `/etc/resolv.conf` is written as a plain file (replacing any other link).

use crate::config::model::HostConfig;
use crate::config::rules;
use crate::firstboot::accounts;
use crate::firstboot::runonce::Mechanism;
use crate::firstboot::plan::{valid_path, Marker, RenderError, MARKER_PATH, WANTS};
use crate::firstboot::rootwriter::{Kind, RootDir};
use crate::firstboot::users::wanted_users;
use serde::Serialize;

const MAX_FILE: usize = 4 << 20;

/// The network configuration format of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkStack {
    Networkd,
    NetworkManager,
    Ifupdown,
    Ifcfg,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolver {
    Resolved,
    File,
}

/// What [`plan`] needs to know about the image: its stacks, and the current
/// contents of the files it edits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// `PRETTY_NAME` from os-release, for messages.
    pub os: Option<String>,
    pub network: Option<NetworkStack>,
    pub networkd_enabled: bool,
    /// Units to link into `*.wants` to enable networkd: (link path, target).
    pub networkd_enable: Vec<(String, String)>,
    pub resolver: Option<Resolver>,
    /// systemd is the image's init (needed for the run-once unit).
    pub systemd: bool,
    /// How `vm_conf.run` is run once after boot (`runonce`).
    pub run_once: Mechanism,
    pub sudo_group: Option<String>,
    pub shadow_gid: Option<u32>,
    pub default_shell: String,
    pub sudoers_d: bool,
    pub passwd: Option<Vec<u8>>,
    pub shadow: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
    pub gshadow: Option<Vec<u8>>,
    pub hosts: Option<Vec<u8>>,
    /// `/etc/network/interfaces`.
    pub interfaces: Option<Vec<u8>>,
    /// `/var/lib/dbus/machine-id` is a file of its own (not a link to /etc's).
    pub dbus_machine_id: bool,
    /// Zones whose `/usr/share/zoneinfo/<zone>` is a file in the image.
    pub zoneinfo: Vec<String>,
    /// Existing `authorized_keys` of the configured users, by path.
    pub authorized_keys: Vec<(String, Vec<u8>)>,
    /// Home directories of the configured users that exist.
    pub existing_homes: Vec<String>,
    /// `/etc/ssh/ssh_host_*` files other than hninit's ed25519 pair.
    pub other_host_keys: Vec<String>,
    pub previous: Option<Marker>,
}

/// See `runonce`: systemd, OpenRC's local.d, rc.local, none.
#[inline(never)]
fn run_once_mechanism(root: &RootDir, systemd: bool) -> Mechanism {
    if systemd {
        return Mechanism::Systemd;
    }
    if is_dir(root, "/etc/local.d") && first_existing(root, &["/sbin/openrc", "/usr/sbin/openrc", "/sbin/openrc-run", "/usr/sbin/openrc-run"]).is_some() {
        let enable = (!lexists(root, "/etc/runlevels/default/local") && lexists(root, "/etc/init.d/local")).then(|| "/etc/init.d/local".to_string());
        return Mechanism::OpenRc { enable };
    }
    if lexists(root, "/etc/rc.local") || lexists(root, "/etc/init.d/rc.local") {
        let existing = root.read("/etc/rc.local", MAX_FILE).ok().flatten();
        return Mechanism::RcLocal { existing };
    }
    Mechanism::None
}

#[inline(never)]
fn first_existing(root: &RootDir, paths: &[&str]) -> Option<String> {
    paths.iter().find(|p| matches!(root.stat(p), Ok(Some(_)))).map(|p| p.to_string())
}

#[inline(never)]
fn is_dir(root: &RootDir, path: &str) -> bool {
    matches!(root.stat(path), Ok(Some(m)) if m.kind == Kind::Dir)
}

#[inline(never)]
fn lexists(root: &RootDir, path: &str) -> bool {
    matches!(root.lstat(path), Ok(Some(_)))
}

#[inline(never)]
fn read_file(root: &RootDir, path: &str) -> Result<Option<Vec<u8>>, RenderError> {
    root.read(path, MAX_FILE)
        .map_err(|source| RenderError::Read { path: path.into(), source })
}

/// An account database that is a link leading nowhere inside the image
/// (`/etc/shadow -> /hostpart/…`) is refused: editing it would mean either
/// following it out of the image or dropping the image's accounts.
#[inline(never)]
fn read_db(root: &RootDir, path: &str) -> Result<Option<Vec<u8>>, RenderError> {
    match read_file(root, path)? {
        Some(t) => Ok(Some(t)),
        None if matches!(root.lstat(path), Ok(Some(m)) if m.kind == Kind::Symlink) => Err(RenderError::DanglingLink {
            path: path.into(),
            target: root.readlink(path).ok().flatten().unwrap_or_default(),
        }),
        None => Ok(None),
    }
}

/// Reads the marker of a previous instantiation (`None` when absent or unreadable).
pub fn read_marker(root: &RootDir) -> Option<Marker> {
    let raw = root.read(MARKER_PATH, 1 << 20).ok()??;
    serde_json::from_slice(&raw).ok()
}

/// Looks at the mounted image: its stacks (see the module documentation for the
/// precedence), the files the plan edits, and what the configuration refers to
/// (its timezone's zoneinfo file, its users' homes and `authorized_keys`).
pub fn detect(root: &RootDir, cfg: &HostConfig) -> Result<ImageFacts, RenderError> {
    let read = |path: &str| read_file(root, path);
    let mut f = ImageFacts::default();

    let os_release = match read("/etc/os-release")? {
        Some(t) => Some(t),
        None => read("/usr/lib/os-release")?,
    };
    f.os = os_release.and_then(|t| {
        String::from_utf8_lossy(&t)
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
    });

    let networkd = first_existing(root, &["/lib/systemd/systemd-networkd", "/usr/lib/systemd/systemd-networkd"]).is_some();
    f.networkd_enabled = networkd
        && [
            "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
            "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
            "/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
            "/etc/systemd/system/dbus-org.freedesktop.network1.service",
        ]
        .iter()
        .any(|p| lexists(root, p));
    let unit = first_existing(
        root,
        &[
            "/lib/systemd/system/systemd-networkd.service",
            "/usr/lib/systemd/system/systemd-networkd.service",
        ],
    );
    if let Some(unit) = &unit {
        f.networkd_enable.push((format!("{WANTS}/systemd-networkd.service"), unit.clone()));
        let socket = unit.replace(".service", ".socket");
        if matches!(root.stat(&socket), Ok(Some(_))) {
            f.networkd_enable
                .push(("/etc/systemd/system/sockets.target.wants/systemd-networkd.socket".into(), socket));
        }
    }
    let nm = is_dir(root, "/etc/NetworkManager");
    let nm_enabled = nm && lexists(root, &format!("{WANTS}/NetworkManager.service"));
    f.network = Some(if f.networkd_enabled {
        NetworkStack::Networkd
    } else if nm_enabled {
        NetworkStack::NetworkManager
    } else if lexists(root, "/etc/network/interfaces") {
        NetworkStack::Ifupdown
    } else if is_dir(root, "/etc/sysconfig/network-scripts") {
        NetworkStack::Ifcfg
    } else if nm {
        NetworkStack::NetworkManager
    } else if networkd && unit.is_some() {
        NetworkStack::Networkd
    } else {
        NetworkStack::None
    });

    let resolv = root.readlink("/etc/resolv.conf").map_err(|source| RenderError::Read {
        path: "/etc/resolv.conf".into(),
        source,
    })?;
    f.resolver = Some(match resolv {
        Some(t) if t.contains("run/systemd/resolve/") => Resolver::Resolved,
        _ => Resolver::File,
    });

    let systemd = first_existing(root, &["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]).and_then(|p| root.stat(&p).ok().flatten());
    f.systemd = match (systemd, root.stat("/sbin/init").ok().flatten()) {
        (Some(s), Some(i)) => (s.dev, s.ino) == (i.dev, i.ino),
        (Some(_), None) => true,
        (None, _) => false,
    };
    f.run_once = run_once_mechanism(root, f.systemd);

    let read_db = |path: &str| read_db(root, path);
    f.passwd = read_db("/etc/passwd")?;
    f.shadow = read_db("/etc/shadow")?;
    f.group = read_db("/etc/group")?;
    f.gshadow = read_db("/etc/gshadow")?;
    f.hosts = read("/etc/hosts")?;
    if f.network == Some(NetworkStack::Ifupdown) {
        f.interfaces = read("/etc/network/interfaces")?;
    }
    let group = f.group.as_deref().unwrap_or_default();
    f.sudo_group = ["sudo", "wheel"]
        .iter()
        .find(|g| accounts::group_gid(group, g).is_some())
        .map(|g| g.to_string());
    f.shadow_gid = accounts::group_gid(group, "shadow");
    f.default_shell = if matches!(root.stat("/bin/bash"), Ok(Some(m)) if m.kind == Kind::File) {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
    .into();
    f.sudoers_d = is_dir(root, "/etc/sudoers.d");
    f.dbus_machine_id = matches!(root.lstat("/var/lib/dbus/machine-id"), Ok(Some(m)) if m.kind == Kind::File);

    if let Some(zone) = cfg.hninit.as_ref().and_then(|h| h.timezone.as_deref()) {
        if rules::timezone_ok(zone) && matches!(root.stat(&format!("/usr/share/zoneinfo/{zone}")), Ok(Some(m)) if m.kind == Kind::File) {
            f.zoneinfo.push(zone.to_string());
        }
    }
    let passwd = f.passwd.clone().unwrap_or_default();
    for user in wanted_users(cfg, &mut Vec::new()) {
        let home = accounts::lookup(&passwd, &user.req.name)
            .map(|e| e.home)
            .unwrap_or_else(|| format!("/home/{}", user.req.name));
        if !valid_path(&home) || home == "/" {
            continue;
        }
        if is_dir(root, &home) {
            f.existing_homes.push(home.clone());
        }
        let keys = format!("{home}/.ssh/authorized_keys");
        if let Ok(Some(text)) = root.read(&keys, 1 << 20) {
            f.authorized_keys.push((keys, text));
        }
    }
    for name in root.list("/etc/ssh").unwrap_or_default() {
        if name.starts_with("ssh_host_")
            && name != "ssh_host_ed25519_key"
            && name != "ssh_host_ed25519_key.pub"
            && !name.ends_with(crate::firstboot::rootwriter::TMP_SUFFIX)
        {
            f.other_host_keys.push(format!("/etc/ssh/{name}"));
        }
    }
    f.previous = read_marker(root);
    Ok(f)
}
