//! The rules a configuration's values must follow, checked after the readers
//! (`read`) and before anything is written into a root. Each refusal names the
//! JSON path of the value and never echoes a password. The rules (documented
//! for operators in `docs/config.md`):
//!
//! * host name (RFC 1123), addresses (IP inside its network, gateways of the same
//!   family), interface names, user names, crypt hashes only, one-line ssh keys,
//!   time zone, sysctl keys and sizes are validated and normalised (lower-case
//!   host name, canonical IP text).
//!
//! Accounts policy: `root` may only receive ssh keys (its password, shell, uid
//! and groups belong to the image); the names of well-known system accounts, and
//! uids outside 1000–60000, are refused.
//!
//! Sizes are bounded ([`MAX_RUN`], [`MAX_MOTD`], [`MAX_IDENTITIES`] and the
//! counts below).

use crate::config::error::{err, key_path, show, ConfigError};
use crate::config::model::{HostConfig, User};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use crate::config::sshkey::{check_ssh_key, ssh_key_problem};

/// Limits on the sizes of single values.
pub const MAX_RUN: usize = 64 * 1024;
pub const MAX_MOTD: usize = 64 * 1024;
pub const MAX_IDENTITIES: usize = 64 * 1024;
const MAX_NAMESERVERS: usize = 8;
const MAX_VIFS: usize = 32;
const MAX_PNAS: usize = 64;
const MAX_USERS: usize = 64;
const MAX_KEYS: usize = 64;
const MAX_GROUPS: usize = 32;
const MAX_ADDRESSES: usize = 64;
const MAX_ROUTES: usize = 256;
const MAX_SYSCTL: usize = 256;

pub(crate) fn validate(c: &mut HostConfig) -> Result<(), ConfigError> {
    c.vm_hostname = check_hostname("vm_hostname", &c.vm_hostname)?;

    if c.nameservers.len() > MAX_NAMESERVERS {
        return Err(err(
            "nameservers",
            format!("{} entries, at most {MAX_NAMESERVERS}", c.nameservers.len()),
        ));
    }
    for (i, ns) in c.nameservers.iter_mut().enumerate() {
        *ns = ip(&format!("nameservers[{i}]"), ns)?.to_string();
    }

    if c.vif.len() > MAX_VIFS {
        return Err(err("vif", format!("{} interfaces, at most {MAX_VIFS}", c.vif.len())));
    }
    let mut numbers = BTreeSet::new();
    for (i, vif) in c.vif.iter_mut().enumerate() {
        let vbase = format!("vif[{i}]");
        if !numbers.insert(vif.vif_number) {
            return Err(err(
                format!("{vbase}.vif_number"),
                format!("vif {} appears twice", vif.vif_number),
            ));
        }
        if vif.pna.len() > MAX_PNAS {
            return Err(err(
                format!("{vbase}.pna"),
                format!("{} addresses, at most {MAX_PNAS}", vif.pna.len()),
            ));
        }
        for (j, pna) in vif.pna.iter_mut().enumerate() {
            let pbase = format!("{vbase}.pna[{j}]");
            let (net_path, network, gw_path, gateway) = match (&mut pna.pbn, &mut pna.pvn) {
                (Some(b), None) => (
                    "pbn.pbn_network",
                    &mut b.pbn_network,
                    "pbn.pbn_gateway",
                    &mut b.pbn_gateway,
                ),
                (None, Some(v)) => (
                    "pvn.pvn_network",
                    &mut v.pvn_network,
                    "pvn.pvn_gateway",
                    &mut v.pvn_gateway,
                ),
                (Some(_), Some(_)) => return Err(err(pbase, "has both pbn and pvn; give exactly one")),
                (None, None) => return Err(err(pbase, "has neither pbn nor pvn; give exactly one")),
            };
            let net_path = format!("{pbase}.{net_path}");
            let (net, prefix) = network_cidr(&net_path, network)?;
            *network = format!("{net}/{prefix}");
            let addr_path = format!("{pbase}.pna_address");
            let addr = ip(&addr_path, &pna.pna_address)?;
            if !contains(net, prefix, addr) {
                return Err(err(
                    addr_path,
                    format!("{addr} is not inside its network {net}/{prefix}"),
                ));
            }
            pna.pna_address = addr.to_string();
            if let Some(g) = gateway {
                let gw_path = format!("{pbase}.{gw_path}");
                let gw = ip(&gw_path, g)?;
                same_family(&gw_path, gw, net)?;
                if gw == addr {
                    return Err(err(gw_path, format!("{gw} is the address itself")));
                }
                *g = gw.to_string();
            }
        }
    }

    let mut user_names = BTreeSet::new();
    if let Some(vm) = &mut c.vm_conf {
        match &vm.user {
            Some(u) => {
                check_user_name("vm_conf.user", u)?;
                user_names.insert(u.clone());
            }
            None if vm.password.is_some() => {
                return Err(err(
                    "vm_conf.password",
                    "given without vm_conf.user (root's password is not set from a config)",
                ));
            }
            None => {}
        }
        if let Some(p) = &vm.password {
            if vm.user.as_deref() == Some("root") {
                return Err(err(
                    "vm_conf.password",
                    "root's password is not set from a config; give root an ssh key, or create a user with sudo",
                ));
            }
            check_password("vm_conf.password", p)?;
        }
        if let Some(k) = &vm.ssh_key {
            check_ssh_key("vm_conf.ssh_key", k)?;
        }
        if let Some(r) = &vm.run {
            check_text("vm_conf.run", r, MAX_RUN, true)?;
        }
        if let Some(a) = &vm.script_args {
            check_text("vm_conf.script_args", a, 4096, false)?;
            script_words(a).map_err(|why| err("vm_conf.script_args", why))?;
        }
    }

    let vif_numbers = numbers;
    if let Some(x) = &mut c.hninit {
        if x.users.len() > MAX_USERS {
            return Err(err(
                "hninit.users",
                format!("{} users, at most {MAX_USERS}", x.users.len()),
            ));
        }
        let mut uids = BTreeSet::new();
        for (i, u) in x.users.iter().enumerate() {
            let base = format!("hninit.users[{i}]");
            check_user(&base, u)?;
            if !user_names.insert(u.name.clone()) {
                return Err(err(
                    format!("{base}.name"),
                    format!("user {} is given twice", show(&u.name)),
                ));
            }
            if let Some(uid) = u.uid {
                if !uids.insert(uid) {
                    return Err(err(format!("{base}.uid"), format!("uid {uid} is given twice")));
                }
            }
        }

        // Interface names: vif N is eth<N> unless renamed; all must differ.
        let mut names = BTreeMap::new();
        for (k, v) in &x.interface_names {
            let path = key_path("hninit.interface_names", k);
            let n = decimal(k).ok_or_else(|| err(path.clone(), "the key must be a vif number"))?;
            if !vif_numbers.contains(&n) {
                return Err(err(path, format!("there is no vif {n}")));
            }
            check_ifname(&path, v)?;
            names.insert(n, v.clone());
        }
        let mut seen = BTreeSet::new();
        for n in &vif_numbers {
            let name = names.get(n).cloned().unwrap_or_else(|| format!("eth{n}"));
            if !seen.insert(name.clone()) {
                return Err(err(
                    "hninit.interface_names",
                    format!("two vifs would both be named {}", show(&name)),
                ));
            }
        }

        if x.addresses.len() > MAX_ADDRESSES {
            return Err(err(
                "hninit.addresses",
                format!("{} addresses, at most {MAX_ADDRESSES}", x.addresses.len()),
            ));
        }
        for (i, a) in x.addresses.iter_mut().enumerate() {
            let base = format!("hninit.addresses[{i}]");
            check_ifname(&format!("{base}.interface"), &a.interface)?;
            let (addr, prefix) = cidr(&format!("{base}.address"), &a.address)?;
            a.address = format!("{addr}/{prefix}");
            if let Some(g) = &mut a.gateway {
                let path = format!("{base}.gateway");
                let gw = ip(&path, g)?;
                same_family(&path, gw, addr)?;
                *g = gw.to_string();
            }
        }

        if x.routes.len() > MAX_ROUTES {
            return Err(err(
                "hninit.routes",
                format!("{} routes, at most {MAX_ROUTES}", x.routes.len()),
            ));
        }
        for (i, r) in x.routes.iter_mut().enumerate() {
            let base = format!("hninit.routes[{i}]");
            check_ifname(&format!("{base}.interface"), &r.interface)?;
            let gw_path = format!("{base}.gateway");
            let gw = ip(&gw_path, &r.gateway)?;
            if r.destination != "default" {
                let (net, prefix) = network_cidr(&format!("{base}.destination"), &r.destination)?;
                same_family(&gw_path, gw, net)?;
                r.destination = format!("{net}/{prefix}");
            }
            r.gateway = gw.to_string();
        }

        if let Some(tz) = &x.timezone {
            check_timezone("hninit.timezone", tz)?;
        }
        if let Some(m) = &x.motd {
            check_text("hninit.motd", m, MAX_MOTD, true)?;
            if m.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                return Err(err(
                    "hninit.motd",
                    "contains a control character (terminal escape sequences are refused; lines and tabs are fine)",
                ));
            }
        }
        if let Some(id) = &x.identities {
            let size = serde_json::to_vec(id).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_IDENTITIES {
                return Err(err(
                    "hninit.identities",
                    format!("{size} bytes serialised, at most {MAX_IDENTITIES}"),
                ));
            }
        }
        if x.sysctl.len() > MAX_SYSCTL {
            return Err(err(
                "hninit.sysctl",
                format!("{} entries, at most {MAX_SYSCTL}", x.sysctl.len()),
            ));
        }
        for (k, v) in &x.sysctl {
            let path = key_path("hninit.sysctl", k);
            check_sysctl(&path, k, v)?;
        }
        crate::config::platform::check(x, "hninit")?;
    }
    Ok(())
}

/// A decimal number without sign or leading zeros.
fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// RFC 1123 host name (short or fully qualified), lower-cased.
pub fn check_hostname(path: &str, name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    match hostname_problem(&lower) {
        Some(why) => Err(err(path, format!("{} is not a valid host name: {why}", show(name)))),
        None => Ok(lower),
    }
}

/// Why `lower` (a lower-cased name) is not an RFC 1123 host name, if it is
/// not, or is one every program would read otherwise: `localhost` (the machine
/// itself) or a name whose last label is all digits (`127.0.0.1`, `10.1`: an
/// address to the resolver).
pub fn hostname_problem(lower: &str) -> Option<&'static str> {
    if lower.is_empty() {
        return Some("it is empty");
    }
    if lower == "localhost" || lower.starts_with("localhost.") {
        return Some("localhost names the machine itself to every program");
    }
    if lower.rsplit('.').next().is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())) {
        return Some("it reads as an IP address (its last label is all digits)");
    }
    if lower.len() > 253 {
        return Some("longer than 253 characters");
    }
    for label in lower.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some("each dot-separated label has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Some("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label cannot start or end with '-'");
        }
    }
    None
}

fn ip(path: &str, s: &str) -> Result<IpAddr, ConfigError> {
    parse_ip(s).ok_or_else(|| err(path, format!("{} is not an IP address", show(s))))
}

/// An IPv4 or IPv6 address in its usual text form (no surrounding space).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// An address with its prefix length (`192.0.2.10/24`, `2001:db8::/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a text is not a [`Cidr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrProblem {
    /// Not `address/prefix` with a prefix of 1 to 3 digits.
    Shape,
    /// The prefix is longer than the family's (32 or 128), which it gives.
    PrefixAbove(u8),
}

/// `address/prefix` (host bits allowed), the prefix 1 to 3 decimal digits.
pub fn parse_cidr(s: &str) -> Result<Cidr, CidrProblem> {
    let (a, p) = s.split_once('/').ok_or(CidrProblem::Shape)?;
    let addr = parse_ip(a).ok_or(CidrProblem::Shape)?;
    if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CidrProblem::Shape);
    }
    let prefix: u8 = p.parse().map_err(|_| CidrProblem::Shape)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(CidrProblem::PrefixAbove(max));
    }
    Ok(Cidr { addr, prefix })
}

fn same_family(path: &str, a: IpAddr, b: IpAddr) -> Result<(), ConfigError> {
    if a.is_ipv4() == b.is_ipv4() {
        Ok(())
    } else {
        let fam = |x: IpAddr| if x.is_ipv4() { "IPv4" } else { "IPv6" };
        Err(err(path, format!("{a} is {} but the network is {}", fam(a), fam(b))))
    }
}

/// `address/prefix` (host bits allowed): the address and the prefix length.
pub fn cidr(path: &str, s: &str) -> Result<(IpAddr, u8), ConfigError> {
    match parse_cidr(s) {
        Ok(c) => Ok((c.addr, c.prefix)),
        Err(CidrProblem::Shape) => Err(err(
            path,
            format!(
                "{} is not an address with a prefix length (CIDR, e.g. 192.0.2.10/24)",
                show(s)
            ),
        )),
        Err(CidrProblem::PrefixAbove(max)) => Err(err(path, format!("{} has a prefix length above {max}", show(s)))),
    }
}

/// A network in CIDR form: host bits must be zero.
pub fn network_cidr(path: &str, s: &str) -> Result<(IpAddr, u8), ConfigError> {
    let (addr, prefix) = cidr(path, s)?;
    let net = mask(addr, prefix);
    if net != addr {
        return Err(err(
            path,
            format!("{} has host bits set (the network is {net}/{prefix})", show(s)),
        ));
    }
    Ok((net, prefix))
}

fn mask(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            IpAddr::V4((u32::from(v) & m).into())
        }
        IpAddr::V6(v) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            IpAddr::V6((u128::from(v) & m).into())
        }
    }
}

fn contains(net: IpAddr, prefix: u8, addr: IpAddr) -> bool {
    net.is_ipv4() == addr.is_ipv4() && mask(addr, prefix) == net
}

/// A Linux interface name: 1 to 15 of `A-Z a-z 0-9 _ . -`, not starting with
/// `.` (so not `.` or `..`; stricter than the kernel, which also allows other
/// printable characters): the name becomes part of file names in the image.
/// Not `lo`, the loopback interface.
pub fn check_ifname(path: &str, s: &str) -> Result<(), ConfigError> {
    if ifname_ok(s) {
        Ok(())
    } else if s == "lo" {
        Err(err(path, "\"lo\" is the loopback interface, which the image configures itself"))
    } else if s.starts_with('.') {
        Err(err(
            path,
            format!("{} is not an interface name (1 to 15 of A-Z a-z 0-9 _ . -, not starting with '.')", show(s)),
        ))
    } else {
        Err(err(
            path,
            format!("{} is not an interface name (1 to 15 of A-Z a-z 0-9 _ . -)", show(s)),
        ))
    }
}

/// The rule of [`check_ifname`].
pub fn ifname_ok(s: &str) -> bool {
    s != "lo"
        && !s.is_empty()
        && s.len() <= 15
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Accounts that belong to the image: refused as config users.
const SYSTEM_USERS: &[&str] = &[
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "nogroup",
    "messagebus",
    "sshd",
    "polkitd",
    "syslog",
    "uuidd",
    "tss",
    "tcpdump",
    "avahi",
    "dnsmasq",
    "ntp",
    "chrony",
    "halt",
    "shutdown",
    "operator",
    "ftp",
    "adm",
    "postfix",
    "dbus",
    "nscd",
    "rpc",
    "rpcuser",
    "nfsnobody",
    "sssd",
    "statd",
    "usbmux",
    "rtkit",
    "colord",
    "pulse",
];

/// `^[a-z_][a-z0-9_-]{0,31}$`.
pub fn user_name_shape(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'_')
        && s.len() <= 32
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// A user name the config may create or change: the shape, and not a system
/// account (`root` is allowed, for ssh keys only: see [`check_user`]).
pub fn check_user_name(path: &str, s: &str) -> Result<(), ConfigError> {
    if !user_name_shape(s) {
        return Err(err(
            path,
            format!("{} is not a user name (^[a-z_][a-z0-9_-]{{0,31}}$)", show(s)),
        ));
    }
    if SYSTEM_USERS.contains(&s) || s.starts_with("systemd-") || s.starts_with('_') {
        return Err(err(
            path,
            format!("{} is a system account, which a config may not change", show(s)),
        ));
    }
    Ok(())
}

fn check_user(base: &str, u: &User) -> Result<(), ConfigError> {
    check_user_name(&format!("{base}.name"), &u.name)?;
    if u.name == "root" {
        let what = if u.password.is_some() {
            Some("password")
        } else if !u.groups.is_empty() {
            Some("groups")
        } else if u.shell.is_some() {
            Some("shell")
        } else if u.uid.is_some() {
            Some("uid")
        } else if u.sudo {
            Some("sudo")
        } else {
            None
        };
        if let Some(f) = what {
            return Err(err(
                format!("{base}.{f}"),
                "root may only receive ssh keys from a config",
            ));
        }
    }
    if let Some(p) = &u.password {
        check_password(&format!("{base}.password"), p)?;
    }
    if let Some(uid) = u.uid {
        if !(1000..=60000).contains(&uid) {
            let why = if uid == 0 { " (uid 0 is root)" } else { "" };
            return Err(err(
                format!("{base}.uid"),
                format!("{uid} is outside the range of normal users, 1000 to 60000{why}"),
            ));
        }
    }
    if u.ssh_keys.len() > MAX_KEYS {
        return Err(err(
            format!("{base}.ssh_keys"),
            format!("{} keys, at most {MAX_KEYS}", u.ssh_keys.len()),
        ));
    }
    for (i, k) in u.ssh_keys.iter().enumerate() {
        check_ssh_key(&format!("{base}.ssh_keys[{i}]"), k)?;
    }
    if u.groups.len() > MAX_GROUPS {
        return Err(err(
            format!("{base}.groups"),
            format!("{} groups, at most {MAX_GROUPS}", u.groups.len()),
        ));
    }
    for (i, g) in u.groups.iter().enumerate() {
        if !user_name_shape(g) {
            return Err(err(
                format!("{base}.groups[{i}]"),
                format!("{} is not a group name (^[a-z_][a-z0-9_-]{{0,31}}$)", show(g)),
            ));
        }
    }
    if let Some(s) = &u.shell {
        if !shell_ok(s) {
            return Err(err(
                format!("{base}.shell"),
                format!("{} is not an absolute path to a shell", show(s)),
            ));
        }
    }
    Ok(())
}

/// A login shell: an absolute path of `A-Z a-z 0-9 / _ . + -`, no `..`.
pub fn shell_ok(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 256
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.+-".contains(&b))
        && !s.split('/').any(|c| c == "..")
}

/// crypt(3)'s base64 alphabet.
fn crypt64(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
}

/// Whether `s` has the shape of a yescrypt, SHA-512, SHA-256 or bcrypt crypt hash.
pub fn is_crypt_hash(s: &str) -> bool {
    if s.len() > 512 {
        return false;
    }
    if let Some(rest) = s.strip_prefix("$y$") {
        let parts: Vec<&str> = rest.split('$').collect();
        return matches!(parts.as_slice(), [params, salt, hash]
            if !params.is_empty() && params.len() <= 64 && crypt64(params)
            && !salt.is_empty() && salt.len() <= 128 && crypt64(salt)
            && hash.len() == 43 && crypt64(hash));
    }
    for (prefix, hash_len) in [("$6$", 86), ("$5$", 43)] {
        if let Some(rest) = s.strip_prefix(prefix) {
            let mut parts: Vec<&str> = rest.split('$').collect();
            if let Some(r) = parts.first().and_then(|p| p.strip_prefix("rounds=")) {
                let ok = !r.is_empty()
                    && r.len() <= 9
                    && r.bytes().all(|b| b.is_ascii_digit())
                    && r.parse::<u32>().is_ok_and(|n| (1000..=999_999_999).contains(&n));
                if !ok {
                    return false;
                }
                parts.remove(0);
            }
            return matches!(parts.as_slice(), [salt, hash]
                if !salt.is_empty() && salt.len() <= 16 && crypt64(salt)
                && hash.len() == hash_len && crypt64(hash));
        }
    }
    for prefix in ["$2b$", "$2y$", "$2a$"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            let Some((cost, body)) = rest.split_once('$') else {
                return false;
            };
            let cost_ok = cost.len() == 2 && cost.parse::<u8>().is_ok_and(|c| (4..=31).contains(&c));
            return cost_ok && body.len() == 53 && crypt64(body);
        }
    }
    false
}

/// A password must be a crypt hash; the message never contains the value.
pub fn check_password(path: &str, s: &str) -> Result<(), ConfigError> {
    if is_crypt_hash(s) {
        Ok(())
    } else {
        Err(err(
            path,
            "is not a crypt hash ($y$, $6$, $5$, $2b$ or $2y$; e.g. from `mkpasswd -m yescrypt`): plaintext passwords are refused (the value is not shown)",
        ))
    }
}

fn check_text(path: &str, s: &str, max: usize, multiline: bool) -> Result<(), ConfigError> {
    if s.len() > max {
        return Err(err(path, format!("{} bytes, at most {max}", s.len())));
    }
    if s.contains('\0') {
        return Err(err(path, "contains a NUL character"));
    }
    if !multiline && s.contains(['\n', '\r']) {
        return Err(err(path, "must be one line"));
    }
    Ok(())
}

/// `vm_conf.script_args` as the words `vm_conf.run` gets: split at spaces and
/// tabs; inside `'…'` every character is kept as it is, inside `"…"` too except
/// that `\"` and `\\` stand for `"` and `\`; elsewhere a backslash keeps the
/// next character. An unbalanced quote or a final backslash is refused (in a
/// unit's `ExecStart=` it broke the unit, and a lone `;` started a second command).
pub fn script_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("an unbalanced ' quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("an unbalanced \" quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("an unbalanced \" quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("a backslash at the end".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// `^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$`, at most 128 characters.
pub fn check_timezone(path: &str, s: &str) -> Result<(), ConfigError> {
    if timezone_ok(s) {
        Ok(())
    } else {
        Err(err(
            path,
            format!("{} is not a time zone name like Europe/Paris", show(s)),
        ))
    }
}

/// The rule of [`check_timezone`]: a zone name, also a path under
/// `/usr/share/zoneinfo` that stays there.
pub fn timezone_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.split('/')
            .all(|c| !c.is_empty() && c != ".." && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b)))
}

/// A sysctl key: `a-z 0-9 _ . * -`, dot-separated, at most 256 bytes.
pub fn sysctl_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 256
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.*-".contains(&b))
        && !k.starts_with('.')
        && !k.ends_with('.')
        && !k.contains("..")
}

/// A sysctl value: one non-empty line of at most 4096 bytes, no control character.
pub fn sysctl_value_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 4096 && !v.chars().any(|c| c.is_control())
}

fn check_sysctl(path: &str, k: &str, v: &str) -> Result<(), ConfigError> {
    if !sysctl_key_ok(k) {
        return Err(err(
            path,
            "is not a sysctl key (a-z 0-9 _ . * -, like net.ipv4.ip_forward)",
        ));
    }
    if !sysctl_value_ok(v) {
        return Err(err(path, "the value must be one non-empty line of at most 4096 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypt_hashes() {
        let y = format!("$y$j9T$abcdefghij0123456789./${}", "A".repeat(43));
        assert!(is_crypt_hash(&y));
        assert!(is_crypt_hash(&format!("$6$saltsalt${}", "x".repeat(86))));
        assert!(is_crypt_hash(&format!("$6$rounds=5000$salt${}", "x".repeat(86))));
        assert!(is_crypt_hash(&format!("$5$s${}", "x".repeat(43))));
        assert!(is_crypt_hash(&format!("$2b$12${}", "a".repeat(53))));
        assert!(!is_crypt_hash(&format!("$2b$99${}", "a".repeat(53))));
        assert!(!is_crypt_hash(&format!("$6$salt${}", "x".repeat(85))));
        assert!(!is_crypt_hash(&format!("$6$rounds=1$salt${}", "x".repeat(86))));
        assert!(!is_crypt_hash("$1$abc$def"));
        assert!(!is_crypt_hash("hunter2"));
        assert!(!is_crypt_hash(""));
    }

    #[test]
    fn networks() {
        let (n, p) = network_cidr("x", "192.0.2.0/24").unwrap();
        assert!(contains(n, p, "192.0.2.9".parse().unwrap()));
        assert!(!contains(n, p, "192.0.3.9".parse().unwrap()));
        assert!(!contains(n, p, "2001:db8::1".parse().unwrap()));
        assert!(network_cidr("x", "192.0.2.1/24").is_err());
        assert!(network_cidr("x", "0.0.0.0/0").is_ok());
        let (n, p) = network_cidr("x", "2001:DB8::/32").unwrap();
        assert_eq!(format!("{n}/{p}"), "2001:db8::/32");
        assert!(cidr("x", "10.0.0.1/33").is_err());
        assert!(cidr("x", "10.0.0.1/+1").is_err());
        assert!(cidr("x", "10.0.0.1").is_err());
    }

    #[test]
    fn hostnames() {
        assert_eq!(check_hostname("h", "Web-1.Example.COM").unwrap(), "web-1.example.com");
        assert_eq!(check_hostname("h", "web1").unwrap(), "web1");
        for bad in [
            "",
            "a..b",
            "-a",
            "a-",
            "a_b",
            "a.b.",
            &"a".repeat(64),
            &["a"; 130].join("."),
        ] {
            assert!(check_hostname("h", bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod script_words_tests {
    use super::script_words;

    #[test]
    fn words_as_a_shell_reads_them_and_unbalanced_quotes_refused() {
        let w = |s: &str| script_words(s).unwrap();
        assert_eq!(w("--flag 'two words'"), ["--flag", "two words"]);
        assert_eq!(w("  a\tb  "), ["a", "b"]);
        assert_eq!(w(r#"x"y z"w 'it''s' "q\"\\\n" \; a\ b ;"#), ["xy zw", "its", "q\"\\\\n", ";", "a b", ";"]);
        assert_eq!(w("'' \"\""), ["", ""]);
        assert!(w("").is_empty());
        for bad in ["'open", "a \"open", "end\\", "\"x\\\""] {
            assert!(script_words(bad).is_err(), "{bad:?}");
        }
    }
}
