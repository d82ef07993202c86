//! First-boot planning: what to write into a detected image for a host
//! configuration ([`plan`] → [`Plan`]), as pure data, in sections (names,
//! resolver, network, users, identity, run-once command, extras, cleanup, the
//! marker last). Nothing here writes: `rootwriter` executes a plan, `firstboot`
//! chains the steps, `hnctl firstboot --dry-run` prints [`Plan::describe`].
//! The image is looked at by `detect`; the network model and its writers are
//! in `network`; users in `users`.
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

use crate::config::model::{Extra, HostConfig};
use crate::config::rules;
use crate::firstboot::detect::{ImageFacts, Resolver};
use crate::firstboot::accounts::{self, Databases, Settings};
use crate::firstboot::edit::{hosts_file, one_line, with_block};
use crate::firstboot::identity::Identity;
use crate::firstboot::network::{self, interfaces, is_global, parse_cidr, parse_ip, Iface};
use crate::firstboot::plan::{valid_path, Builder, Marker, Op, Plan, RenderError, HEADER, MARKER_PATH, VERSION, WANTS};
use crate::firstboot::users;
use std::fmt::Write as _;
use std::net::IpAddr;

const RUN_UNIT: &str = "/etc/systemd/system/hninit-run.service";
/// `vm_conf.run`, and the script giving it `vm_conf.script_args`.
const RUN: &str = "/etc/hninit/run";
const RUN_ARGS: &str = "/etc/hninit/run-args";

/// The configuration's digest and the time, stamped into the marker.
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    pub config_digest: &'a str,
    /// Seconds since the epoch.
    pub now: u64,
}

/// One word for `sh`, single-quoted: every character but `'` stands for itself.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
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
    network::write::plan_network(b, c.image, c.identity, c.ifaces, c.dns)
}

/// Accounts, homes, authorized_keys, sudo.
#[inline(never)]
fn plan_users(b: &mut Builder, c: &Ctx) -> Result<(), RenderError> {
    let Ctx { cfg, image, stamp, .. } = *c;
    // Users.
    let wanted = users::wanted_users(cfg, &mut b.warnings);
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
            // A home hninit may make the user's (chown, 0700): one under /home,
            // or one it creates for a regular user. An existing directory
            // elsewhere (`/etc` named as a home in the image's passwd) is left
            // as it is; a system account's keys go only to root's /root or
            // under /home (never an `.ssh` in `/usr/sbin`, nor `/nonexistent` made).
            let existing = image.existing_homes.contains(&home);
            let under_home = home.starts_with("/home/");
            let left_alone = if a.system {
                !(under_home || (a.uid == 0 && home == "/root"))
            } else {
                existing && !under_home
            };
            if left_alone {
                // A system account asked only for groups: nothing to say.
                if !a.system || !w.keys.is_empty() {
                    b.warnings.push(format!(
                        "user {}: home {home} {} outside /home; left as it is, no ssh keys installed",
                        a.name,
                        if existing { "exists" } else { "is" }
                    ));
                }
            } else if !a.system || (!w.keys.is_empty() && !existing) {
                b.mkdir(&home, 0o700, owner, format!("home of {}", a.name));
            }
            if !w.keys.is_empty() && !left_alone {
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
        let mut script = if run.starts_with("#!") {
            run.to_string()
        } else {
            format!("#!/bin/sh\n{run}")
        };
        if !script.ends_with('\n') {
            script.push('\n');
        }
        b.owned_write(RUN, script, 0o700, "vm_conf.run, run once after boot");
        if !image.systemd {
            let args = cfg.vm_conf.as_ref().and_then(|v| v.script_args.as_deref());
            if let Some(a) = args {
                rules::script_words(a).map_err(|_| RenderError::BadValue { what: "vm_conf.script_args", value: a.into() })?;
            }
            super::runonce::plan_without_systemd(b, &image.run_once, stamp.config_digest, args, run);
            return Ok(());
        }
        // The arguments never reach the unit file (where `;` starts a second
        // command): a script the unit runs holds them, each word single-quoted.
        let args = cfg.vm_conf.as_ref().and_then(|v| v.script_args.as_deref()).unwrap_or("");
        let words = rules::script_words(args).map_err(|_| RenderError::BadValue {
            what: "vm_conf.script_args",
            value: args.into(),
        })?;
        let exec = if words.is_empty() {
            RUN
        } else {
            let quoted: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
            let wrapper = format!("#!/bin/sh\n{HEADER}exec {RUN} {}\n", quoted.join(" "));
            b.owned_write(RUN_ARGS, wrapper, 0o700, "vm_conf.script_args, given to vm_conf.run");
            RUN_ARGS
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
        if !rules::timezone_ok(zone) {
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
            if !rules::sysctl_key_ok(k) {
                return Err(RenderError::BadValue {
                    what: "sysctl key",
                    value: k.clone(),
                });
            }
            if !rules::sysctl_value_ok(v) {
                return Err(RenderError::BadValue {
                    what: "sysctl value",
                    value: v.clone(),
                });
            }
            let _ = writeln!(text, "{k} = {v}");
        }
        b.owned_write("/etc/sysctl.d/60-hninit.conf", text, 0o644, "hninit.sysctl");
    }
    if let Some(text) = crate::config::platform::host_settings(extra) {
        b.owned_write(crate::config::platform::HOST_SETTINGS, text, 0o644, "hninit.data_disks/swap/hotplug/sshd for the booted system");
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
    // The validator's rule, on its normalised (lower-case) form.
    let host = cfg.vm_hostname.as_str();
    if rules::hostname_problem(host).is_some() || host.bytes().any(|b| b.is_ascii_uppercase()) {
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
    use crate::firstboot::detect::NetworkStack;
    use crate::firstboot::network::ifupdown::ifupdown_main;

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
        let p = plan(&c, &f, &identity(), &STAMP).unwrap();
        assert!(p.warnings.iter().any(|w| w.starts_with("vm_conf.run NOT scheduled") && w.contains("\"echo hi\"")), "{:?}", p.warnings);
        assert!(p.find("/etc/hninit/run").is_some() && p.find(RUN_UNIT).is_none() && p.find("/etc/rc.local").is_none());
        f.run_once = crate::firstboot::runonce::Mechanism::RcLocal { existing: None };
        let p = plan(&c, &f, &identity(), &STAMP).unwrap();
        assert!(p.find("/etc/rc.local").is_some() && p.find("/etc/hninit/run-once").is_some() && p.warnings.is_empty());
        f.run_once = crate::firstboot::runonce::Mechanism::OpenRc { enable: Some("/etc/init.d/local".into()) };
        let p = plan(&c, &f, &identity(), &STAMP).unwrap();
        assert!(p.find("/etc/local.d/hninit-run.start").is_some() && p.find("/etc/runlevels/default/local").is_some());
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

    /// One copy of each rule: what the config validator accepts, the plan
    /// accepts, and what it refuses, the plan refuses too (they used to
    /// disagree: `.eth0` passed validation and failed at first boot).
    #[test]
    fn the_plan_follows_the_validator_rules() {
        use crate::config::parse as rules;
        let ok = |c: &HostConfig, f: &ImageFacts| plan(c, f, &identity(), &STAMP).is_ok();
        for name in [".eth0", "eth0@x", "eth0.5", "br-lan", "a/b", "x", "en_p1s0", "averyverylongname"] {
            let mut c = config();
            c.hninit.as_mut().unwrap().interface_names.insert("0".into(), name.into());
            let valid = rules::check_ifname("x", name).is_ok();
            assert_eq!(ok(&c, &facts(NetworkStack::Networkd)), valid, "interface name {name:?}");
        }
        for zone in ["Europe/Paris", "Etc/GMT+1", "Europe/Pa.ris", "a..b/c", "UTC"] {
            let mut c = config();
            c.hninit.as_mut().unwrap().timezone = Some(zone.into());
            let mut f = facts(NetworkStack::Networkd);
            f.zoneinfo = vec![zone.into()];
            let valid = rules::check_timezone("x", zone).is_ok();
            assert_eq!(ok(&c, &f), valid, "time zone {zone:?}");
        }
        for address in ["2001:db8::11/64", "2001:db8::11/+64", " 2001:db8::11/64", "2001:db8::11/129", "2001:db8::11"] {
            let mut c = config();
            c.hninit.as_mut().unwrap().addresses[0].address = address.into();
            let valid = rules::cidr("x", address).is_ok();
            assert_eq!(ok(&c, &facts(NetworkStack::Networkd)), valid, "address {address:?}");
        }
        for host in ["web1.example.net", "a_b", "-web", "web-", "a..b"] {
            let mut c = config();
            c.vm_hostname = host.into();
            let valid = rules::check_hostname("x", host).is_ok();
            assert_eq!(ok(&c, &facts(NetworkStack::Networkd)), valid, "host name {host:?}");
        }
    }

    /// An existing user whose home is a system directory (`/etc`) must not get
    /// it chowned and made 0700, nor an `.ssh` inside it.
    #[test]
    fn an_existing_home_outside_home_is_left_alone() {
        let mut f = facts(NetworkStack::Networkd);
        f.passwd = Some(b"root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001::/etc:/bin/sh\n".to_vec());
        f.group = Some(b"root:x:0:\nsudo:x:27:\nshadow:x:42:\nalice:x:1001:\n".to_vec());
        f.existing_homes = vec!["/etc".into()];
        let p = plan(&config(), &f, &identity(), &STAMP).unwrap();
        let touched: Vec<&str> = p.steps.iter().map(|s| s.op.path()).filter(|p| *p == "/etc" || p.starts_with("/etc/.ssh")).collect();
        assert!(touched.is_empty(), "{touched:?}");
        assert!(p.warnings.iter().any(|w| w.contains("alice") && w.contains("/etc")), "{:?}", p.warnings);
    }

    /// A system account named by the config (its keys are installed, e.g.
    /// Gandi's `user: root`) gets them only in root's `/root` or under `/home`:
    /// not an `.ssh` made in `/etc` or `/usr/sbin`, nor a `/nonexistent` made.
    #[test]
    fn a_system_account_home_outside_home_gets_nothing() {
        for (line, home, existing) in [
            ("alice:x:1:1::/etc:/bin/sh", "/etc", true),
            ("alice:x:1:1::/usr/sbin:/usr/sbin/nologin", "/usr/sbin", true),
            ("alice:x:65534:65534::/nonexistent:/usr/sbin/nologin", "/nonexistent", false),
        ] {
            let mut f = facts(NetworkStack::Networkd);
            f.passwd = Some(format!("root:x:0:0:root:/root:/bin/bash\n{line}\n").into_bytes());
            f.existing_homes = if existing { vec![home.into()] } else { vec![] };
            let p = plan(&config(), &f, &identity(), &STAMP).unwrap();
            let touched: Vec<&str> = p.steps.iter().map(|s| s.op.path()).filter(|p| *p == home || p.starts_with(&format!("{home}/.ssh"))).collect();
            assert!(touched.is_empty(), "{home}: {touched:?}");
            assert!(p.warnings.iter().any(|w| w.contains("alice") && w.contains(home)), "{home}: {:?}", p.warnings);
        }
        // root's own home and a system account's home under /home do get the keys.
        for (line, home) in [("alice:x:0:0::/root:/bin/sh", "/root"), ("alice:x:999:999::/home/alice:/bin/sh", "/home/alice")] {
            let mut f = facts(NetworkStack::Networkd);
            f.passwd = Some(format!("{line}\n").into_bytes());
            f.existing_homes = vec![home.into()];
            let p = plan(&config(), &f, &identity(), &STAMP).unwrap();
            assert!(p.find(&format!("{home}/.ssh/authorized_keys")).is_some(), "{home}");
        }
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

    /// `script_args` never reaches the unit file: a `;` or a quote in it cannot
    /// add a command to `ExecStart=` or break the unit.
    #[test]
    fn script_args_go_through_a_quoted_wrapper() {
        let mut c = config();
        let vm = c.vm_conf.as_mut().unwrap();
        vm.run = Some("echo hi".into());
        vm.script_args = Some(r#"--x ; /bin/rm -rf / 'it''s' "$HOME" 100%"#.into());
        let p = plan(&c, &facts(NetworkStack::Networkd), &identity(), &STAMP).unwrap();
        let unit = text(&p, "/etc/systemd/system/hninit-run.service");
        assert!(unit.contains("\nExecStart=/etc/hninit/run-args\n"), "{unit}");
        let wrapper = text(&p, "/etc/hninit/run-args");
        assert!(
            wrapper.ends_with("\nexec /etc/hninit/run '--x' ';' '/bin/rm' '-rf' '/' 'its' '$HOME' '100%'\n"),
            "{wrapper}"
        );
        vm_args(&mut c, "a 'b");
        assert!(matches!(
            plan(&c, &facts(NetworkStack::Networkd), &identity(), &STAMP),
            Err(RenderError::BadValue { what: "vm_conf.script_args", .. })
        ));
        vm_args(&mut c, "   ");
        let p = plan(&c, &facts(NetworkStack::Networkd), &identity(), &STAMP).unwrap();
        assert!(text(&p, "/etc/systemd/system/hninit-run.service").contains("\nExecStart=/etc/hninit/run\n"));
        assert!(p.find("/etc/hninit/run-args").is_none());
    }

    fn vm_args(c: &mut HostConfig, a: &str) {
        c.vm_conf.as_mut().unwrap().script_args = Some(a.into());
    }
}
