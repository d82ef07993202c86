//! First-boot rendering: what the mounted image is ([`detect`] → [`ImageFacts`])
//! and what to write into it for a host configuration ([`plan`] → [`Plan`]), as
//! pure data. Nothing here writes: `rootwriter` executes a plan, `firstboot`
//! chains the steps, `hnctl firstboot --dry-run` prints [`Plan::describe`].
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
//!
//! # Files and rules
//!
//! Interfaces: vif N is `ethN` unless `hninit.interface_names["N"]` says
//! otherwise; `hninit.addresses`/`routes` name interfaces directly. The first
//! gateway of each family on an interface is used (others are warned about);
//! nameservers go to the first interface (and to the resolver).
//! `/etc/hosts` keeps the image's lines except its `127.0.1.1` ones (they name
//! the image's build host) and replaces hninit's `# BEGIN hninit` … `# END
//! hninit` block: `127.0.1.1 fqdn short` and the public addresses. Users: see
//! `accounts`; Gandi's `vm_conf.user` is an administrator; `vm_conf.ssh_key`
//! without `vm_conf.user` goes to root; `authorized_keys` keeps the image's lines
//! around hninit's block; administrators without a password get a `NOPASSWD`
//! line in `/etc/sudoers.d/hninit` when the image has `/etc/sudoers.d`. The ssh
//! host keys other than hninit's ed25519 key (`ssh_host_rsa_key` … baked into
//! the image, hence the same on every host made from it) are removed. Files
//! that are wholly hninit's (network files, drop-ins, the run unit …) are listed
//! in the marker; when a later configuration no longer plans one, it is removed.
//! The marker `/etc/hninit/instance.json` (compact JSON: `config_digest`,
//! `identity_id`, `hninit_version`, `applied_at`, `files`) is always the last
//! step. An account database that is a symbolic link leading nowhere inside the
//! image is refused ([`RenderError::DanglingLink`]).

use crate::firstboot::accounts::{self, AccountsError, Databases, Settings, UserRequest};
use crate::config::model::{Extra, HostConfig};
use crate::firstboot::identity::{hex, Identity};
use crate::firstboot::rootwriter::{Kind, RootDir};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;

pub const MARKER_PATH: &str = crate::layout::INSTANCE_MARKER;
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const HEADER: &str = "# Written by hninit from the host configuration; rewritten at each instantiation.\n";
const BEGIN: &str = "# BEGIN hninit";
const END: &str = "# END hninit";
const MAX_FILE: usize = 4 << 20;
const RUN_UNIT: &str = "/etc/systemd/system/hninit-run.service";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants";

/// One file operation inside the new root.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    Write {
        path: String,
        contents: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::Write { path, .. } | Op::Symlink { path, .. } | Op::Remove { path } | Op::Mkdir { path, .. } => path,
        }
    }
}

impl std::fmt::Debug for Op {
    /// Contents are summarised (they hold keys and hashes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write {
                path,
                contents,
                mode,
                uid,
                gid,
            } => write!(f, "write {path} ({mode:04o} {uid}:{gid}, {} bytes)", contents.len()),
            Op::Symlink { path, target } => write!(f, "link {path} -> {target}"),
            Op::Remove { path } => write!(f, "remove {path}"),
            Op::Mkdir { path, mode, uid, gid } => write!(f, "mkdir {path} ({mode:04o} {uid}:{gid})"),
        }
    }
}

/// An operation and why it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub reason: String,
    /// Inside a user's home: symbolic links among the parent directories are
    /// followed (still inside the root); elsewhere they are refused.
    pub user_path: bool,
}

/// The ordered operations that instantiate an image; the marker is last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// A human-readable listing (no file contents: they hold secrets).
    pub fn describe(&self) -> String {
        let mut s = format!("first-boot plan: {} operations\n", self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let _ = writeln!(s, "{:3}. {:?} — {}", i + 1, step.op, step.reason);
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }

    /// The step writing `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Op> {
        self.steps.iter().map(|s| &s.op).find(|op| op.path() == path)
    }
}

/// `/etc/hninit/instance.json`: which configuration and identity the root was
/// instantiated with, and the files wholly hninit's (removed when no longer planned).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub config_digest: String,
    pub identity_id: String,
    pub hninit_version: String,
    pub applied_at: u64,
    #[serde(default)]
    pub files: Vec<String>,
}

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

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("detect the image: read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} in the image is a symbolic link to {target:?}, which is not a file inside the image; refusing to edit it")]
    DanglingLink { path: String, target: String },
    #[error("the configuration has network addresses but the image has no network stack hninit knows (systemd-networkd, NetworkManager, ifupdown, ifcfg)")]
    NoNetworkStack,
    #[error("the image has no {path}, needed to {why}")]
    MissingFile { path: String, why: &'static str },
    #[error("timezone {zone}: {path} does not exist in the image")]
    UnknownTimezone { zone: String, path: String },
    #[error("vm_conf.run needs systemd in the image (for the run-once unit), and its init is not systemd")]
    RunNeedsSystemd,
    #[error("{what}: {value:?} is not a valid address")]
    BadAddress { what: String, value: String },
    #[error("{what}: {value:?} is not valid here")]
    BadValue { what: &'static str, value: String },
    #[error("users: {0}")]
    Accounts(#[from] AccountsError),
}

/// The configuration's digest and the time, stamped into the marker.
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    pub config_digest: &'a str,
    /// Seconds since the epoch.
    pub now: u64,
}

// ---- detection ----------------------------------------------------------------

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
        if valid_zone(zone) && matches!(root.stat(&format!("/usr/share/zoneinfo/{zone}")), Ok(Some(m)) if m.kind == Kind::File) {
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

// ---- the configuration, digested ----------------------------------------------

struct WantedUser {
    req: UserRequest,
    keys: Vec<String>,
}

/// Gandi's `vm_conf.user` (an administrator) then `hninit.users`, merged by name.
fn wanted_users(cfg: &HostConfig, warnings: &mut Vec<String>) -> Vec<WantedUser> {
    let mut out: Vec<WantedUser> = Vec::new();
    let lines = |s: &str| {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    if let Some(vm) = &cfg.vm_conf {
        match vm.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => out.push(WantedUser {
                req: UserRequest {
                    name: user.into(),
                    password: vm.password.clone().filter(|p| !p.is_empty()),
                    admin: true,
                    ..Default::default()
                },
                keys: vm.ssh_key.as_deref().map(lines).unwrap_or_default(),
            }),
            None => {
                if let Some(key) = vm.ssh_key.as_deref().filter(|k| !k.trim().is_empty()) {
                    out.push(WantedUser {
                        req: UserRequest {
                            name: "root".into(),
                            ..Default::default()
                        },
                        keys: lines(key),
                    });
                }
                if vm.password.as_deref().is_some_and(|p| !p.is_empty()) {
                    warnings.push("vm_conf.password without vm_conf.user: ignored".into());
                }
            }
        }
    }
    for u in cfg.hninit.iter().flat_map(|h| &h.users) {
        let keys: Vec<String> = u.ssh_keys.iter().flat_map(|k| lines(k)).collect();
        match out.iter_mut().find(|w| w.req.name == u.name) {
            Some(w) => {
                w.req.uid = u.uid.or(w.req.uid);
                w.req.password = u.password.clone().or(w.req.password.take());
                w.req.shell = u.shell.clone().or(w.req.shell.take());
                w.req.groups.extend(u.groups.iter().cloned());
                w.req.admin |= u.sudo;
                for k in keys {
                    if !w.keys.contains(&k) {
                        w.keys.push(k);
                    }
                }
            }
            None => out.push(WantedUser {
                req: UserRequest {
                    name: u.name.clone(),
                    uid: u.uid,
                    password: u.password.clone(),
                    shell: u.shell.clone(),
                    groups: u.groups.clone(),
                    admin: u.sudo,
                },
                keys,
            }),
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr, RenderError> {
    s.trim().parse().map_err(|_| RenderError::BadAddress {
        what: what.into(),
        value: s.into(),
    })
}

fn parse_cidr(what: &str, s: &str) -> Result<Cidr, RenderError> {
    let bad = || RenderError::BadAddress {
        what: what.into(),
        value: s.into(),
    };
    let (a, p) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    if prefix > if addr.is_ipv4() { 32 } else { 128 } {
        return Err(bad());
    }
    Ok(Cidr { addr, prefix })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Iface {
    name: String,
    addrs: Vec<Cidr>,
    gw4: Option<IpAddr>,
    gw6: Option<IpAddr>,
    /// Destination (`None`: default) and gateway.
    routes: Vec<(Option<Cidr>, IpAddr)>,
}

impl Iface {
    fn v4(&self) -> impl Iterator<Item = &Cidr> {
        self.addrs.iter().filter(|c| c.addr.is_ipv4())
    }
    fn v6(&self) -> impl Iterator<Item = &Cidr> {
        self.addrs.iter().filter(|c| c.addr.is_ipv6())
    }
    fn set_gateway(&mut self, gw: IpAddr, warnings: &mut Vec<String>) {
        let slot = if gw.is_ipv4() { &mut self.gw4 } else { &mut self.gw6 };
        match slot {
            None => *slot = Some(gw),
            Some(g) if *g == gw => {}
            Some(g) => warnings.push(format!("{}: gateway {gw} ignored, {g} is already the gateway", self.name)),
        }
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

fn interfaces(cfg: &HostConfig, warnings: &mut Vec<String>) -> Result<Vec<Iface>, RenderError> {
    let none = Extra::default();
    let extra = cfg.hninit.as_ref().unwrap_or(&none);
    let mut out: Vec<Iface> = Vec::new();
    fn get<'a>(out: &'a mut Vec<Iface>, name: &str) -> Result<&'a mut Iface, RenderError> {
        if !valid_ifname(name) {
            return Err(RenderError::BadValue {
                what: "interface name",
                value: name.into(),
            });
        }
        if let Some(i) = out.iter().position(|i| i.name == name) {
            return Ok(&mut out[i]);
        }
        let n = out.len();
        out.push(Iface {
            name: name.into(),
            ..Default::default()
        });
        Ok(&mut out[n])
    }
    // By vif number (an insertion sort: a handful of entries, and no sort
    // routine instantiated for them in the init binary).
    let mut vifs: Vec<&crate::config::model::Vif> = Vec::with_capacity(cfg.vif.len());
    for v in &cfg.vif {
        let at = vifs.iter().position(|w| w.vif_number > v.vif_number).unwrap_or(vifs.len());
        vifs.insert(at, v);
    }
    for vif in vifs {
        let name = extra
            .interface_names
            .get(&vif.vif_number.to_string())
            .cloned()
            .unwrap_or_else(|| format!("eth{}", vif.vif_number));
        let what = format!("vif {}", vif.vif_number);
        let iface = get(&mut out, &name)?;
        for pna in &vif.pna {
            let addr = parse_ip(&what, &pna.pna_address)?;
            let (net, gw) = match (&pna.pbn, &pna.pvn) {
                (Some(p), _) => (Some(&p.pbn_network), p.pbn_gateway.as_ref()),
                (None, Some(p)) => (Some(&p.pvn_network), p.pvn_gateway.as_ref()),
                (None, None) => (None, None),
            };
            let prefix = match net {
                Some(n) => {
                    let c = parse_cidr(&what, n)?;
                    if c.addr.is_ipv4() != addr.is_ipv4() {
                        return Err(RenderError::BadAddress { what, value: n.clone() });
                    }
                    c.prefix
                }
                None => {
                    warnings.push(format!("{what}: {addr} has no network; used as a host address"));
                    if addr.is_ipv4() {
                        32
                    } else {
                        128
                    }
                }
            };
            iface.addrs.push(Cidr { addr, prefix });
            if let Some(gw) = gw.filter(|g| !g.is_empty()) {
                let gw = parse_ip(&what, gw)?;
                iface.set_gateway(gw, warnings);
            }
        }
    }
    for a in &extra.addresses {
        let what = format!("hninit.addresses {}", a.address);
        let c = parse_cidr(&what, &a.address)?;
        let iface = get(&mut out, &a.interface)?;
        iface.addrs.push(c);
        if let Some(gw) = a.gateway.as_deref().filter(|g| !g.is_empty()) {
            let gw = parse_ip(&what, gw)?;
            iface.set_gateway(gw, warnings);
        }
    }
    for r in &extra.routes {
        let what = format!("hninit.routes {}", r.destination);
        let gw = parse_ip(&what, &r.gateway)?;
        let dest = if r.destination == "default" {
            None
        } else {
            Some(parse_cidr(&what, &r.destination)?)
        };
        if dest.is_some_and(|d| d.addr.is_ipv4() != gw.is_ipv4()) {
            return Err(RenderError::BadAddress {
                what,
                value: r.gateway.clone(),
            });
        }
        get(&mut out, &r.interface)?.routes.push((dest, gw));
    }
    Ok(out)
}

fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified() || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(a) => {
            let s = a.segments()[0];
            !(a.is_loopback() || a.is_unspecified() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80)
        }
    }
}

/// `Europe/Paris`: components of letters, digits, `_+-`, no `.`/`..`.
fn valid_zone(zone: &str) -> bool {
    !zone.is_empty()
        && zone.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
        })
}

/// An absolute path without `.`/`..`/empty components.
fn valid_path(p: &str) -> bool {
    p == "/" || (p.starts_with('/') && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

fn one_line(what: &'static str, s: &str) -> Result<(), RenderError> {
    if s.contains(['\n', '\r', '\0']) {
        return Err(RenderError::BadValue { what, value: s.into() });
    }
    Ok(())
}

// ---- text editing -------------------------------------------------------------

/// Replaces hninit's `# BEGIN hninit` … `# END hninit` block in `text` by `block`
/// (which has no markers), or appends it; other lines are kept byte for byte,
/// except those `drop` rejects.
fn with_block(text: &[u8], block: &str, drop: &dyn Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + block.len() + 32);
    let mut placed = false;
    let mut inside = false;
    let new_block = format!("{BEGIN}\n{block}{END}\n");
    for line in text.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        if inside {
            if bare == END.as_bytes() {
                inside = false;
            }
            continue;
        }
        if bare == BEGIN.as_bytes() {
            inside = true;
            if !placed {
                out.extend_from_slice(new_block.as_bytes());
                placed = true;
            }
            continue;
        }
        if drop(bare) {
            continue;
        }
        out.extend_from_slice(line);
    }
    if !placed {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(new_block.as_bytes());
    }
    out
}

fn hosts_file(existing: Option<&[u8]>, fqdn: &str, short: &str, public: &[IpAddr]) -> Vec<u8> {
    let default = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";
    let names = if fqdn == short {
        short.to_string()
    } else {
        format!("{fqdn} {short}")
    };
    let mut block = format!("127.0.1.1\t{names}\n");
    for ip in public {
        let _ = writeln!(block, "{ip}\t{names}");
    }
    let stale = |line: &[u8]| line.split(|b| b.is_ascii_whitespace()).next() == Some(b"127.0.1.1");
    with_block(existing.unwrap_or(default), &block, &stale)
}

/// Comments out the image's stanzas for `ours` in `/etc/network/interfaces`
/// and makes sure it sources `interfaces.d`.
fn ifupdown_main(existing: &[u8], ours: &[String]) -> Vec<u8> {
    const KEYWORDS: [&str; 6] = ["iface", "auto", "mapping", "source", "source-directory", "rename"];
    let mut out = Vec::with_capacity(existing.len() + 64);
    let mut in_ours = false;
    let mut sourced = false;
    for line in existing.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let words: Vec<&str> = text.split_whitespace().collect();
        let first = words.first().copied().unwrap_or("");
        let keyword = KEYWORDS.contains(&first) || first.starts_with("allow-");
        if keyword {
            in_ours = first == "iface" && words.get(1).is_some_and(|w| ours.iter().any(|o| o == w));
        }
        if matches!(first, "source" | "source-directory") && words.iter().skip(1).any(|w| w.contains("interfaces.d")) {
            sourced = true;
        }
        if in_ours {
            out.extend_from_slice(b"#hninit# ");
            out.extend_from_slice(line);
            continue;
        }
        if first == "auto" || first.starts_with("allow-") {
            let names: Vec<&str> = words[1..].to_vec();
            let kept: Vec<&str> = names.iter().copied().filter(|n| !ours.iter().any(|o| o == n)).collect();
            if kept.len() != names.len() {
                out.extend_from_slice(b"#hninit# ");
                out.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    out.push(b'\n');
                }
                if !kept.is_empty() {
                    out.extend_from_slice(format!("{first} {}\n", kept.join(" ")).as_bytes());
                }
                continue;
            }
        }
        out.extend_from_slice(line);
    }
    if !sourced {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(b"\n# Added by hninit: its configuration is in interfaces.d/hninit.\nsource /etc/network/interfaces.d/*\n");
    }
    out
}

// ---- network formats ------------------------------------------------------------

fn networkd_file(i: &Iface, dns: &[IpAddr]) -> String {
    let mut s = format!("{HEADER}[Match]\nName={}\n\n[Network]\n", i.name);
    for a in &i.addrs {
        let _ = writeln!(s, "Address={a}");
    }
    for g in i.gw4.iter().chain(i.gw6.iter()) {
        let _ = writeln!(s, "Gateway={g}");
    }
    for d in dns {
        let _ = writeln!(s, "DNS={d}");
    }
    for (dest, gw) in &i.routes {
        s.push_str("\n[Route]\n");
        if let Some(d) = dest {
            let _ = writeln!(s, "Destination={d}");
        }
        let _ = writeln!(s, "Gateway={gw}");
    }
    s
}

fn ifupdown_file(ifaces: &[Iface], dns: &[IpAddr]) -> String {
    let mut s = HEADER.to_string();
    let mut dns_done = dns.is_empty();
    for i in ifaces {
        let _ = write!(s, "\nauto {}\n", i.name);
        let mut stanzas = 0;
        for (family, addrs, gw) in [("inet", i.v4().collect::<Vec<_>>(), i.gw4), ("inet6", i.v6().collect(), i.gw6)] {
            for (k, a) in addrs.iter().enumerate() {
                let _ = write!(s, "iface {} {family} static\n\taddress {a}\n", i.name);
                if k == 0 {
                    if let Some(g) = gw {
                        let _ = writeln!(s, "\tgateway {g}");
                    }
                    if !dns_done {
                        let list: Vec<String> = dns.iter().map(ToString::to_string).collect();
                        let _ = writeln!(s, "\tdns-nameservers {}", list.join(" "));
                        dns_done = true;
                    }
                    for (dest, gw) in i.routes.iter().filter(|(_, g)| g.is_ipv4() == (family == "inet")) {
                        let six = if gw.is_ipv6() { " -6" } else { "" };
                        let dest = dest.map(|d| d.to_string()).unwrap_or_else(|| "default".into());
                        let _ = writeln!(s, "\tup ip{six} route add {dest} via {gw} dev {}", i.name);
                    }
                }
                stanzas += 1;
            }
        }
        if stanzas == 0 {
            let _ = writeln!(s, "iface {} inet manual", i.name);
        }
    }
    s
}

fn uuid_for(identity: &Identity, name: &str) -> String {
    let mut b: [u8; 16] = Sha256::digest(format!("hninit-nm:{}:{name}", identity.id))[..16]
        .try_into()
        .unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn nm_file(i: &Iface, dns: &[IpAddr], uuid: &str) -> String {
    let mut s = format!(
        "{HEADER}[connection]\nid=hninit-{n}\nuuid={uuid}\ntype=ethernet\ninterface-name={n}\nautoconnect=true\nautoconnect-priority=100\n\n[ethernet]\n",
        n = i.name
    );
    for (section, addrs, gw, six) in [
        ("ipv4", i.v4().collect::<Vec<_>>(), i.gw4, false),
        ("ipv6", i.v6().collect(), i.gw6, true),
    ] {
        let _ = write!(s, "\n[{section}]\n");
        let method = if !addrs.is_empty() {
            "manual"
        } else if six {
            "auto"
        } else {
            "disabled"
        };
        let _ = writeln!(s, "method={method}");
        for (k, a) in addrs.iter().enumerate() {
            match gw.filter(|_| k == 0) {
                Some(g) => {
                    let _ = writeln!(s, "address{}={a},{g}", k + 1);
                }
                None => {
                    let _ = writeln!(s, "address{}={a}", k + 1);
                }
            }
        }
        let servers: Vec<String> = dns.iter().filter(|d| d.is_ipv6() == six).map(|d| format!("{d};")).collect();
        if !servers.is_empty() && method != "disabled" {
            let _ = writeln!(s, "dns={}", servers.concat());
        }
        let routes = i.routes.iter().filter(|(_, g)| g.is_ipv6() == six);
        for (k, (dest, gw)) in routes.enumerate() {
            let dest = dest
                .map(|d| d.to_string())
                .unwrap_or_else(|| if six { "::/0".into() } else { "0.0.0.0/0".into() });
            let _ = writeln!(s, "route{}={dest},{gw}", k + 1);
        }
    }
    s
}

/// `ifcfg-NAME`, and `route-NAME`/`route6-NAME` when there are routes.
fn ifcfg_files(i: &Iface, dns: &[IpAddr]) -> (String, Option<String>, Option<String>) {
    let mut s = format!(
        "{HEADER}DEVICE={n}\nNAME={n}\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\n",
        n = i.name
    );
    for (k, a) in i.v4().enumerate() {
        let _ = write!(s, "IPADDR{k}={}\nPREFIX{k}={}\n", a.addr, a.prefix);
    }
    if let Some(g) = i.gw4 {
        let _ = write!(s, "GATEWAY={g}\nDEFROUTE=yes\n");
    }
    for (k, d) in dns.iter().enumerate() {
        let _ = writeln!(s, "DNS{}={d}", k + 1);
    }
    let v6: Vec<String> = i.v6().map(ToString::to_string).collect();
    if let Some((first, rest)) = v6.split_first() {
        let _ = write!(s, "IPV6INIT=yes\nIPV6_AUTOCONF=no\nIPV6ADDR={first}\n");
        if !rest.is_empty() {
            let _ = writeln!(s, "IPV6ADDR_SECONDARIES=\"{}\"", rest.join(" "));
        }
        if let Some(g) = i.gw6 {
            let _ = writeln!(s, "IPV6_DEFAULTGW={g}");
        }
    }
    let routes = |six: bool| {
        let lines: Vec<String> = i
            .routes
            .iter()
            .filter(|(_, g)| g.is_ipv6() == six)
            .map(|(d, g)| {
                format!(
                    "{} via {g} dev {}\n",
                    d.map(|d| d.to_string()).unwrap_or_else(|| "default".into()),
                    i.name
                )
            })
            .collect();
        (!lines.is_empty()).then(|| format!("{HEADER}{}", lines.concat()))
    };
    (s, routes(false), routes(true))
}

/// Escapes an argument string for a systemd `ExecStart=` line.
fn systemd_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "%%")
        .replace('$', "$$")
        .replace(['\n', '\r'], " ")
}

// ---- the plan -------------------------------------------------------------------

#[derive(Default)]
struct Builder {
    steps: Vec<Step>,
    warnings: Vec<String>,
    /// Files wholly hninit's, recorded in the marker.
    owned: Vec<String>,
}

// The generic methods are thin: each converts its arguments and calls one
// non-generic function, so the init binary holds one copy of the logic.
impl Builder {
    fn push_step(&mut self, op: Op, reason: String, user_path: bool) {
        self.steps.push(Step { op, reason, user_path });
    }
    fn push(&mut self, op: Op, reason: impl Into<String>, user_path: bool) {
        self.push_step(op, reason.into(), user_path);
    }
    #[allow(clippy::too_many_arguments)]
    fn write_step(&mut self, path: &str, contents: Vec<u8>, mode: u32, owner: (u32, u32), reason: String, user_path: bool, owned: bool) {
        if owned {
            self.owned.push(path.into());
        }
        let op = Op::Write {
            path: path.into(),
            contents,
            mode,
            uid: owner.0,
            gid: owner.1,
        };
        self.push_step(op, reason, user_path);
    }
    fn write(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32, reason: impl Into<String>) {
        self.write_step(path, contents.into(), mode, (0, 0), reason.into(), false, false);
    }
    fn write_as(
        &mut self,
        path: &str,
        contents: impl Into<Vec<u8>>,
        mode: u32,
        owner: (u32, u32),
        reason: impl Into<String>,
        user_path: bool,
    ) {
        self.write_step(path, contents.into(), mode, owner, reason.into(), user_path, false);
    }
    fn owned_write(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32, reason: impl Into<String>) {
        self.write_step(path, contents.into(), mode, (0, 0), reason.into(), false, true);
    }
    fn link(&mut self, path: &str, target: &str, reason: impl Into<String>, owned: bool) {
        if owned {
            self.owned.push(path.into());
        }
        let op = Op::Symlink {
            path: path.into(),
            target: target.into(),
        };
        self.push_step(op, reason.into(), false);
    }
    fn mkdir(&mut self, path: &str, mode: u32, (uid, gid): (u32, u32), reason: impl Into<String>) {
        let op = Op::Mkdir {
            path: path.into(),
            mode,
            uid,
            gid,
        };
        self.push_step(op, reason.into(), true);
    }
}

/// Files a previous marker may name for removal: only hninit's own kinds, so a
/// forged marker in an image cannot make hninit delete `/etc/shadow`.
fn removable(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    valid_path(path)
        && path.starts_with("/etc/")
        && path != MARKER_PATH
        && (name.contains("hninit")
            || path.starts_with("/etc/hninit/")
            || (path.starts_with("/etc/sysconfig/network-scripts/") && ["ifcfg-", "route-", "route6-"].iter().any(|p| name.starts_with(p)))
            || path == "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
            || path == format!("{WANTS}/systemd-networkd.service"))
}

/// What every section of the plan looks at.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    cfg: &'a HostConfig,
    extra: &'a Extra,
    image: &'a ImageFacts,
    identity: &'a Identity,
    stamp: &'a Stamp<'a>,
    host: &'a str,
    short: &'a str,
    ifaces: &'a [Iface],
    dns: &'a [IpAddr],
}

/// /etc/hostname and /etc/hosts.
#[inline(never)]
fn plan_names(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx {
        cfg,
        extra,
        image,
        host,
        short,
        ..
    } = *c;
    // Hostname and hosts.
    b.write("/etc/hostname", format!("{host}\n"), 0o644, "hostname (vm_hostname)");
    let mut public: Vec<IpAddr> = Vec::new();
    for vif in &cfg.vif {
        for pna in vif.pna.iter().filter(|p| p.pbn.is_some()) {
            public.push(parse_ip("vif", &pna.pna_address)?);
        }
    }
    for a in &extra.addresses {
        let c = parse_cidr("hninit.addresses", &a.address)?;
        if is_global(&c.addr) {
            public.push(c.addr);
        }
    }
    public.dedup();
    b.write(
        "/etc/hosts",
        hosts_file(image.hosts.as_deref(), host, short, &public),
        0o644,
        "hostname and public addresses in hninit's block",
    );
    Ok(())
}

/// The resolver: systemd-resolved's drop-in or /etc/resolv.conf.
#[inline(never)]
fn plan_resolver(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx { image, dns, .. } = *c;
    // Resolver.
    if !dns.is_empty() {
        let list: Vec<String> = dns.iter().map(ToString::to_string).collect();
        match image.resolver {
            Some(Resolver::Resolved) => {
                let text = format!("{HEADER}[Resolve]\nDNS={}\n", list.join(" "));
                b.owned_write(
                    "/etc/systemd/resolved.conf.d/60-hninit.conf",
                    text,
                    0o644,
                    "nameservers for systemd-resolved",
                );
            }
            _ => {
                if list.len() > 3 {
                    b.warnings.push(format!(
                        "resolv.conf: only the first 3 of {} nameservers are used by the C library",
                        list.len()
                    ));
                }
                let text: String = list.iter().map(|n| format!("nameserver {n}\n")).collect();
                b.write("/etc/resolv.conf", format!("{HEADER}{text}"), 0o644, "nameservers");
            }
        }
    }
    Ok(())
}

/// The interfaces, in the image's own format.
#[inline(never)]
fn plan_network(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx {
        image,
        identity,
        ifaces,
        dns,
        ..
    } = *c;
    // Network, in the image's own format.
    if !ifaces.is_empty() {
        match image.network.unwrap_or(NetworkStack::None) {
            NetworkStack::Networkd => {
                for (k, i) in ifaces.iter().enumerate() {
                    let d = if k == 0 { dns } else { &[] };
                    b.owned_write(
                        &format!("/etc/systemd/network/60-hninit-{}.network", i.name),
                        networkd_file(i, d),
                        0o644,
                        format!("systemd-networkd configuration of {}", i.name),
                    );
                }
                if !image.networkd_enabled {
                    for (link, target) in &image.networkd_enable {
                        b.link(link, target, "enable systemd-networkd (no other network stack in the image)", true);
                    }
                }
            }
            NetworkStack::NetworkManager => {
                for (k, i) in ifaces.iter().enumerate() {
                    let d = if k == 0 { dns } else { &[] };
                    let path = format!("/etc/NetworkManager/system-connections/hninit-{}.nmconnection", i.name);
                    b.owned_write(
                        &path,
                        nm_file(i, d, &uuid_for(identity, &i.name)),
                        0o600,
                        format!("NetworkManager connection for {}", i.name),
                    );
                }
            }
            NetworkStack::Ifupdown => {
                b.owned_write(
                    "/etc/network/interfaces.d/hninit",
                    ifupdown_file(ifaces, dns),
                    0o644,
                    "ifupdown configuration",
                );
                let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
                let current = image.interfaces.clone().unwrap_or_default();
                let edited = ifupdown_main(&current, &names);
                if edited != current {
                    b.write(
                        "/etc/network/interfaces",
                        edited,
                        0o644,
                        "source interfaces.d; the image's own stanzas for these interfaces commented out",
                    );
                }
            }
            NetworkStack::Ifcfg => {
                for (k, i) in ifaces.iter().enumerate() {
                    let d = if k == 0 { dns } else { &[] };
                    let (cfgfile, r4, r6) = ifcfg_files(i, d);
                    let dir = "/etc/sysconfig/network-scripts";
                    b.owned_write(
                        &format!("{dir}/ifcfg-{}", i.name),
                        cfgfile,
                        0o644,
                        format!("ifcfg configuration of {}", i.name),
                    );
                    if let Some(r) = r4 {
                        b.owned_write(&format!("{dir}/route-{}", i.name), r, 0o644, format!("IPv4 routes of {}", i.name));
                    }
                    if let Some(r) = r6 {
                        b.owned_write(&format!("{dir}/route6-{}", i.name), r, 0o644, format!("IPv6 routes of {}", i.name));
                    }
                }
            }
            NetworkStack::None => return Err(RenderError::NoNetworkStack),
        }
    }
    Ok(())
}

/// Accounts, homes, authorized_keys, sudo.
#[inline(never)]
fn plan_users(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx { cfg, image, stamp, .. } = *c;
    // Users.
    let wanted = wanted_users(cfg, &mut b.warnings);
    if !wanted.is_empty() {
        let passwd = image.passwd.clone().ok_or(RenderError::MissingFile {
            path: "/etc/passwd".into(),
            why: "add users",
        })?;
        let group = image.group.clone().ok_or(RenderError::MissingFile {
            path: "/etc/group".into(),
            why: "add users",
        })?;
        let mut db = Databases {
            passwd,
            shadow: image.shadow.clone(),
            group,
            gshadow: image.gshadow.clone(),
        };
        let set = Settings {
            default_shell: image.default_shell.clone(),
            admin_group: image.sudo_group.clone(),
            today: stamp.now / 86400,
        };
        let mut accounts = Vec::new();
        for w in &wanted {
            for k in &w.keys {
                one_line("ssh key", k)?;
            }
            if let Some(p) = &w.req.password {
                one_line("password hash", p)?;
            }
            if let Some(s) = &w.req.shell {
                one_line("shell", s)?;
            }
            accounts.push(accounts::ensure_user(&mut db, &w.req, &set, &mut b.warnings)?);
        }
        let secret_owner = match image.shadow_gid {
            Some(gid) => (0o640, (0, gid)),
            None => (0o600, (0, 0)),
        };
        if Some(&db.passwd) != image.passwd.as_ref() {
            b.write("/etc/passwd", db.passwd.clone(), 0o644, "users");
        }
        if Some(&db.group) != image.group.as_ref() {
            b.write("/etc/group", db.group.clone(), 0o644, "user groups and memberships");
        }
        if let Some(shadow) = db.shadow.as_ref().filter(|s| Some(*s) != image.shadow.as_ref()) {
            b.write_as(
                "/etc/shadow",
                shadow.clone(),
                secret_owner.0,
                secret_owner.1,
                "password hashes",
                false,
            );
        }
        if let Some(gshadow) = db.gshadow.as_ref().filter(|s| Some(*s) != image.gshadow.as_ref()) {
            b.write_as(
                "/etc/gshadow",
                gshadow.clone(),
                secret_owner.0,
                secret_owner.1,
                "group memberships (shadow)",
                false,
            );
        }
        let mut nopasswd = Vec::new();
        for (a, w) in accounts.iter().zip(&wanted) {
            let owner = (a.uid, a.gid);
            let home = a.home.clone();
            if !valid_path(&home) || home == "/" {
                b.warnings
                    .push(format!("user {}: home {home:?} is not usable; no ssh keys installed", a.name));
                continue;
            }
            if !a.system || (!w.keys.is_empty() && !image.existing_homes.contains(&home)) {
                b.mkdir(&home, 0o700, owner, format!("home of {}", a.name));
            }
            if !w.keys.is_empty() {
                let ssh = format!("{home}/.ssh");
                b.mkdir(&ssh, 0o700, owner, format!("ssh directory of {}", a.name));
                let path = format!("{ssh}/authorized_keys");
                let block: String = w.keys.iter().map(|k| format!("{k}\n")).collect();
                let current = image
                    .authorized_keys
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, t)| t.as_slice())
                    .unwrap_or_default();
                let text = with_block(current, &block, &|_| false);
                b.write_as(&path, text, 0o600, owner, format!("ssh keys of {}", a.name), true);
            }
            if w.req.admin && a.uid != 0 && w.req.password.is_none() && image.sudo_group.is_some() {
                nopasswd.push(a.name.clone());
            }
        }
        if !nopasswd.is_empty() && image.sudoers_d {
            let lines: String = nopasswd.iter().map(|n| format!("{n} ALL=(ALL:ALL) NOPASSWD: ALL\n")).collect();
            b.owned_write(
                "/etc/sudoers.d/hninit",
                format!("{HEADER}# Administrators without a password.\n{lines}"),
                0o440,
                "sudo for administrators without a password",
            );
        }
    }
    Ok(())
}

/// The ssh host key and the machine-id, from the host's identity.
#[inline(never)]
fn plan_identity(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx { image, identity, host, .. } = *c;
    // ssh host keys and machine-id, from the host's identity.
    let comment = format!("root@{host}");
    b.write(
        "/etc/ssh/ssh_host_ed25519_key",
        identity.openssh_private(&comment),
        0o600,
        "the host's ssh key (hn-state/identity)",
    );
    b.write(
        "/etc/ssh/ssh_host_ed25519_key.pub",
        identity.openssh_public(&comment),
        0o644,
        "the host's ssh public key",
    );
    for k in &image.other_host_keys {
        b.push(
            Op::Remove { path: k.clone() },
            "host key baked into the image, the same on every host made from it",
            false,
        );
    }
    b.write(
        "/etc/machine-id",
        format!("{}\n", identity.machine_id),
        0o444,
        "the host's machine-id (hn-state/identity)",
    );
    if image.dbus_machine_id {
        b.write(
            "/var/lib/dbus/machine-id",
            format!("{}\n", identity.machine_id),
            0o444,
            "D-Bus's copy of the machine-id",
        );
    }
    Ok(())
}

/// The command run once after boot.
#[inline(never)]
fn plan_run(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx { cfg, image, stamp, .. } = *c;
    // The command run once after boot.
    if let Some(run) = cfg.vm_conf.as_ref().and_then(|v| v.run.as_deref()).filter(|r| !r.trim().is_empty()) {
        if !image.systemd {
            return Err(RenderError::RunNeedsSystemd);
        }
        let mut script = if run.starts_with("#!") {
            run.to_string()
        } else {
            format!("#!/bin/sh\n{run}")
        };
        if !script.ends_with('\n') {
            script.push('\n');
        }
        b.owned_write("/etc/hninit/run", script, 0o700, "vm_conf.run, run once by hninit-run.service");
        let args = cfg
            .vm_conf
            .as_ref()
            .and_then(|v| v.script_args.as_deref())
            .map(systemd_escape)
            .filter(|a| !a.trim().is_empty());
        let exec = match args {
            Some(a) => format!("/etc/hninit/run {a}"),
            None => "/etc/hninit/run".into(),
        };
        let unit = format!(
            "{HEADER}[Unit]\nDescription=hninit: run the host configuration's command once\n\
             {}Wants=network-online.target\nAfter=network-online.target\n\n\
             [Service]\nType=oneshot\nExecStart={exec}\n{}StandardOutput=journal\nStandardError=journal\nTimeoutStartSec=infinity\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            super::runonce::conditions(stamp.config_digest),
            super::runonce::record(stamp.config_digest)
        );
        b.owned_write(RUN_UNIT, unit, 0o644, "run-once unit for vm_conf.run");
        b.link(&format!("{WANTS}/hninit-run.service"), RUN_UNIT, "enable the run-once unit", true);
    }
    Ok(())
}

/// Timezone, motd, identities, sysctl.
#[inline(never)]
fn plan_extras(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx { extra, image, .. } = *c;
    // Timezone, motd, identities, sysctl.
    if let Some(zone) = extra.timezone.as_deref() {
        let path = format!("/usr/share/zoneinfo/{zone}");
        if !valid_zone(zone) {
            return Err(RenderError::BadValue {
                what: "timezone",
                value: zone.into(),
            });
        }
        if !image.zoneinfo.iter().any(|z| z == zone) {
            return Err(RenderError::UnknownTimezone { zone: zone.into(), path });
        }
        b.link("/etc/localtime", &path, format!("timezone {zone}"), false);
        b.write("/etc/timezone", format!("{zone}\n"), 0o644, format!("timezone {zone}"));
    }
    if let Some(motd) = extra.motd.as_deref() {
        let mut text = motd.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        b.write("/etc/motd", text, 0o644, "message of the day");
    }
    if let Some(ids) = &extra.identities {
        // Compact JSON: the pretty printer would be one more serializer in the init binary.
        let mut text = serde_json::to_vec(ids).unwrap_or_else(|_| b"{}".to_vec());
        text.push(b'\n');
        b.owned_write("/etc/hninit/identity.json", text, 0o600, "hninit.identities");
    }
    if !extra.sysctl.is_empty() {
        let mut text = HEADER.to_string();
        for (k, v) in &extra.sysctl {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/' | b'_' | b'-' | b'*'))
            {
                return Err(RenderError::BadValue {
                    what: "sysctl key",
                    value: k.clone(),
                });
            }
            one_line("sysctl value", v)?;
            let _ = writeln!(text, "{k} = {v}");
        }
        b.owned_write("/etc/sysctl.d/60-hninit.conf", text, 0o644, "hninit.sysctl");
    }
    Ok(())
}

/// Removal of what an earlier configuration wrote, then the marker.
#[inline(never)]
fn plan_cleanup(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx {
        image, identity, stamp, ..
    } = *c;
    // What an earlier configuration wrote and this one does not.
    let planned: Vec<&str> = b.steps.iter().map(|s| s.op.path()).collect();
    let stale: Vec<String> = image
        .previous
        .iter()
        .flat_map(|m| &m.files)
        .filter(|f| !planned.contains(&f.as_str()) && removable(f))
        .cloned()
        .collect();
    for f in stale {
        b.push(Op::Remove { path: f }, "written by hninit for an earlier configuration", false);
    }

    // The marker, last.
    let marker = Marker {
        config_digest: stamp.config_digest.into(),
        identity_id: identity.id.clone(),
        hninit_version: VERSION.into(),
        applied_at: stamp.now,
        files: b.owned.clone(),
    };
    let mut text = serde_json::to_vec(&marker).unwrap_or_default();
    text.push(b'\n');
    b.write(MARKER_PATH, text, 0o644, "marker: instantiated for this configuration and identity");
    Ok(())
}

/// The operations that make `image` the host `cfg` describes, ending with the marker.
pub fn plan(cfg: &HostConfig, image: &ImageFacts, identity: &Identity, stamp: &Stamp) -> Result<Plan, RenderError> {
    let mut b = Builder::default();
    let none = Extra::default();
    let extra = cfg.hninit.as_ref().unwrap_or(&none);
    let host = cfg.vm_hostname.trim();
    one_line("vm_hostname", host)?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(RenderError::BadValue {
            what: "vm_hostname",
            value: host.into(),
        });
    }
    let short = host.split('.').next().unwrap_or(host);
    let ifaces = interfaces(cfg, &mut b.warnings)?;
    let dns: Vec<IpAddr> = cfg
        .nameservers
        .iter()
        .map(|n| parse_ip("nameservers", n))
        .collect::<Result<_, _>>()?;
    let c = Ctx {
        cfg,
        extra,
        image,
        identity,
        stamp,
        host,
        short,
        ifaces: &ifaces,
        dns: &dns,
    };
    for section in [
        plan_names,
        plan_resolver,
        plan_network,
        plan_users,
        plan_identity,
        plan_run,
        plan_extras,
        plan_cleanup,
    ] {
        section(&mut b, &c)?;
    }
    Ok(Plan {
        steps: b.steps,
        warnings: b.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Address, Extra, Pbn, Pna, Pvn, Route, Vif, VmConf};

    fn identity() -> Identity {
        Identity::from_parts([1; 32], "0123456789abcdef0123456789abcdef").unwrap()
    }

    fn facts(network: NetworkStack) -> ImageFacts {
        ImageFacts {
            network: Some(network),
            networkd_enabled: true,
            resolver: Some(Resolver::File),
            systemd: true,
            sudo_group: Some("sudo".into()),
            shadow_gid: Some(42),
            default_shell: "/bin/bash".into(),
            passwd: Some(b"root:x:0:0:root:/root:/bin/bash\n".to_vec()),
            shadow: Some(b"root:*:1:0:99999:7:::\n".to_vec()),
            group: Some(b"root:x:0:\nsudo:x:27:\nshadow:x:42:\n".to_vec()),
            gshadow: None,
            ..Default::default()
        }
    }

    fn config() -> HostConfig {
        HostConfig {
            vm_hostname: "web1.example.net".into(),
            nameservers: vec!["192.0.2.53".into(), "2001:db8::53".into()],
            vif: vec![
                Vif {
                    vif_number: 1,
                    pna: vec![Pna {
                        pna_address: "10.1.2.3".into(),
                        pvn: Some(Pvn {
                            pvn_network: "10.1.0.0/16".into(),
                            pvn_gateway: None,
                        }),
                        ..Default::default()
                    }],
                },
                Vif {
                    vif_number: 0,
                    pna: vec![
                        Pna {
                            pna_address: "192.0.2.10".into(),
                            pbn: Some(Pbn {
                                pbn_network: "192.0.2.0/24".into(),
                                pbn_gateway: Some("192.0.2.1".into()),
                            }),
                            ..Default::default()
                        },
                        Pna {
                            pna_address: "2001:db8::10".into(),
                            pbn: Some(Pbn {
                                pbn_network: "2001:db8::/64".into(),
                                pbn_gateway: Some("2001:db8::1".into()),
                            }),
                            ..Default::default()
                        },
                    ],
                },
            ],
            vm_conf: Some(VmConf {
                user: Some("alice".into()),
                ssh_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJx alice@laptop".into()),
                ..Default::default()
            }),
            hninit: Some(Extra {
                addresses: vec![Address {
                    interface: "eth0".into(),
                    address: "2001:db8::11/64".into(),
                    gateway: None,
                }],
                routes: vec![Route {
                    interface: "eth1".into(),
                    destination: "10.0.0.0/8".into(),
                    gateway: "10.1.0.1".into(),
                }],
                ..Default::default()
            }),
        }
    }

    const STAMP: Stamp = Stamp {
        config_digest: "d1",
        now: 1_700_000_000,
    };

    fn text<'a>(p: &'a Plan, path: &str) -> &'a str {
        match p.find(path) {
            Some(Op::Write { contents, .. }) => std::str::from_utf8(contents).unwrap(),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn networkd_plan() {
        let p = plan(&config(), &facts(NetworkStack::Networkd), &identity(), &STAMP).unwrap();
        assert_eq!(
            text(&p, "/etc/systemd/network/60-hninit-eth0.network"),
            format!(
                "{HEADER}[Match]\nName=eth0\n\n[Network]\nAddress=192.0.2.10/24\nAddress=2001:db8::10/64\nAddress=2001:db8::11/64\n\
                 Gateway=192.0.2.1\nGateway=2001:db8::1\nDNS=192.0.2.53\nDNS=2001:db8::53\n"
            )
        );
        assert_eq!(
            text(&p, "/etc/systemd/network/60-hninit-eth1.network"),
            format!("{HEADER}[Match]\nName=eth1\n\n[Network]\nAddress=10.1.2.3/16\n\n[Route]\nDestination=10.0.0.0/8\nGateway=10.1.0.1\n")
        );
        assert_eq!(
            text(&p, "/etc/hosts"),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n\
             # BEGIN hninit\n127.0.1.1\tweb1.example.net web1\n192.0.2.10\tweb1.example.net web1\n2001:db8::10\tweb1.example.net web1\n\
             2001:db8::11\tweb1.example.net web1\n# END hninit\n"
        );
        let last = p.steps.last().unwrap();
        assert_eq!(last.op.path(), MARKER_PATH);
        let marker: Marker = serde_json::from_str(text(&p, MARKER_PATH)).unwrap();
        assert_eq!(marker.config_digest, "d1");
        assert_eq!(marker.identity_id, identity().id);
        assert!(marker.files.contains(&"/etc/systemd/network/60-hninit-eth1.network".to_string()));
        assert!(p.describe().contains("/etc/systemd/network/60-hninit-eth0.network"));
        assert!(!p.describe().contains("BEGIN OPENSSH"));
        // The plan is a pure function of its inputs.
        assert_eq!(p, plan(&config(), &facts(NetworkStack::Networkd), &identity(), &STAMP).unwrap());
    }

    #[test]
    fn other_formats() {
        let p = plan(&config(), &facts(NetworkStack::NetworkManager), &identity(), &STAMP).unwrap();
        let nm = text(&p, "/etc/NetworkManager/system-connections/hninit-eth0.nmconnection");
        assert!(
            nm.contains("[ipv4]\nmethod=manual\naddress1=192.0.2.10/24,192.0.2.1\ndns=192.0.2.53;\n"),
            "{nm}"
        );
        assert!(
            nm.contains("[ipv6]\nmethod=manual\naddress1=2001:db8::10/64,2001:db8::1\naddress2=2001:db8::11/64\ndns=2001:db8::53;\n"),
            "{nm}"
        );
        let nm1 = text(&p, "/etc/NetworkManager/system-connections/hninit-eth1.nmconnection");
        assert!(
            nm1.contains("route1=10.0.0.0/8,10.1.0.1\n") && nm1.contains("[ipv6]\nmethod=auto\n"),
            "{nm1}"
        );
        assert!(matches!(
            p.find("/etc/NetworkManager/system-connections/hninit-eth0.nmconnection"),
            Some(Op::Write { mode: 0o600, .. })
        ));

        let p = plan(&config(), &facts(NetworkStack::Ifcfg), &identity(), &STAMP).unwrap();
        assert_eq!(
            text(&p, "/etc/sysconfig/network-scripts/ifcfg-eth0"),
            format!(
                "{HEADER}DEVICE=eth0\nNAME=eth0\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\nIPADDR0=192.0.2.10\nPREFIX0=24\nGATEWAY=192.0.2.1\nDEFROUTE=yes\n\
                 DNS1=192.0.2.53\nDNS2=2001:db8::53\nIPV6INIT=yes\nIPV6_AUTOCONF=no\nIPV6ADDR=2001:db8::10/64\nIPV6ADDR_SECONDARIES=\"2001:db8::11/64\"\nIPV6_DEFAULTGW=2001:db8::1\n"
            )
        );
        assert_eq!(
            text(&p, "/etc/sysconfig/network-scripts/route-eth1"),
            format!("{HEADER}10.0.0.0/8 via 10.1.0.1 dev eth1\n")
        );

        let mut f = facts(NetworkStack::Ifupdown);
        f.interfaces = Some(b"auto lo eth0\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n  pre-up true\n".to_vec());
        let p = plan(&config(), &f, &identity(), &STAMP).unwrap();
        assert_eq!(
            text(&p, "/etc/network/interfaces"),
            "#hninit# auto lo eth0\nauto lo\niface lo inet loopback\n\n#hninit# allow-hotplug eth0\n#hninit# iface eth0 inet dhcp\n#hninit#   pre-up true\n\
             \n# Added by hninit: its configuration is in interfaces.d/hninit.\nsource /etc/network/interfaces.d/*\n"
        );
        assert_eq!(
            text(&p, "/etc/network/interfaces.d/hninit"),
            format!(
                "{HEADER}\nauto eth0\niface eth0 inet static\n\taddress 192.0.2.10/24\n\tgateway 192.0.2.1\n\tdns-nameservers 192.0.2.53 2001:db8::53\n\
                 iface eth0 inet6 static\n\taddress 2001:db8::10/64\n\tgateway 2001:db8::1\niface eth0 inet6 static\n\taddress 2001:db8::11/64\n\
                 \nauto eth1\niface eth1 inet static\n\taddress 10.1.2.3/16\n\tup ip route add 10.0.0.0/8 via 10.1.0.1 dev eth1\n"
            )
        );
        // Editing again changes nothing.
        let again = ifupdown_main(text(&p, "/etc/network/interfaces").as_bytes(), &["eth0".into(), "eth1".into()]);
        assert_eq!(std::str::from_utf8(&again).unwrap(), text(&p, "/etc/network/interfaces"));

        let e = plan(&config(), &facts(NetworkStack::None), &identity(), &STAMP).unwrap_err();
        assert!(matches!(e, RenderError::NoNetworkStack));
    }

    #[test]
    fn blocks_are_replaced_in_place() {
        let t = b"a\n# BEGIN hninit\nold\n# END hninit\nb";
        assert_eq!(with_block(t, "new\n", &|_| false), b"a\n# BEGIN hninit\nnew\n# END hninit\nb");
        assert_eq!(with_block(b"a", "new\n", &|_| false), b"a\n# BEGIN hninit\nnew\n# END hninit\n");
        assert_eq!(with_block(b"", "new\n", &|_| false), b"# BEGIN hninit\nnew\n# END hninit\n");
        let hosts = hosts_file(Some(b"127.0.0.1 localhost\n127.0.1.1 debian\n"), "h", "h", &[]);
        assert_eq!(hosts, b"127.0.0.1 localhost\n# BEGIN hninit\n127.0.1.1\th\n# END hninit\n");
    }

    #[test]
    fn refusals_are_named() {
        let mut c = config();
        c.hninit.as_mut().unwrap().timezone = Some("Mars/Olympus".into());
        let e = plan(&c, &facts(NetworkStack::Networkd), &identity(), &STAMP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "timezone Mars/Olympus: /usr/share/zoneinfo/Mars/Olympus does not exist in the image"
        );
        c.hninit.as_mut().unwrap().timezone = Some("../../etc/shadow".into());
        assert!(matches!(
            plan(&c, &facts(NetworkStack::Networkd), &identity(), &STAMP),
            Err(RenderError::BadValue { .. })
        ));
        let mut c = config();
        c.vm_conf.as_mut().unwrap().run = Some("echo hi".into());
        let mut f = facts(NetworkStack::Networkd);
        f.systemd = false;
        assert!(matches!(plan(&c, &f, &identity(), &STAMP), Err(RenderError::RunNeedsSystemd)));
        let mut c = config();
        c.hninit.as_mut().unwrap().interface_names.insert("0".into(), "../x".into());
        assert!(matches!(
            plan(&c, &facts(NetworkStack::Networkd), &identity(), &STAMP),
            Err(RenderError::BadValue { .. })
        ));
        let mut c = config();
        c.vif[1].pna[0].pna_address = "999.1.1.1".into();
        assert!(matches!(
            plan(&c, &facts(NetworkStack::Networkd), &identity(), &STAMP),
            Err(RenderError::BadAddress { .. })
        ));
    }

    #[test]
    fn forged_markers_cannot_remove_system_files() {
        assert!(removable("/etc/systemd/network/60-hninit-eth0.network"));
        assert!(removable("/etc/sysconfig/network-scripts/ifcfg-eth3"));
        assert!(removable("/etc/hninit/run"));
        assert!(!removable(MARKER_PATH));
        assert!(!removable("/etc/shadow"));
        assert!(!removable("/etc/hninit/../shadow"));
        assert!(!removable("/usr/lib/hninit"));
        let mut f = facts(NetworkStack::Networkd);
        f.previous = Some(Marker {
            files: vec!["/etc/shadow".into(), "/etc/systemd/network/60-hninit-eth7.network".into()],
            ..Default::default()
        });
        let p = plan(&config(), &f, &identity(), &STAMP).unwrap();
        let removed: Vec<&str> = p
            .steps
            .iter()
            .filter(|s| matches!(s.op, Op::Remove { .. }))
            .map(|s| s.op.path())
            .collect();
        assert_eq!(removed, vec!["/etc/systemd/network/60-hninit-eth7.network"]);
    }

    #[test]
    fn networkd_is_enabled_when_it_is_the_only_stack() {
        let mut f = facts(NetworkStack::Networkd);
        f.networkd_enabled = false;
        f.networkd_enable = vec![(
            "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service".into(),
            "/lib/systemd/system/systemd-networkd.service".into(),
        )];
        let p = plan(&config(), &f, &identity(), &STAMP).unwrap();
        assert_eq!(
            p.find("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"),
            Some(&Op::Symlink {
                path: "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service".into(),
                target: "/lib/systemd/system/systemd-networkd.service".into(),
            })
        );
        let marker: Marker = serde_json::from_str(text(&p, MARKER_PATH)).unwrap();
        assert!(marker.files.iter().any(|f| f.ends_with("systemd-networkd.service")));
    }

    #[test]
    fn systemd_escaping() {
        assert_eq!(systemd_escape("a $HOME 100% \\n\nx"), "a $$HOME 100%% \\\\n x");
    }
}
