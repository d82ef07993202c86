//! First-boot instantiation against small image trees (`tests/fixtures/roots/`,
//! copied to a temporary directory per test): the files produced, compared with
//! golden texts, their modes and owners (these tests run as root), detection of
//! each network stack, idempotence, re-application of a changed configuration,
//! hostile images (symbolic links out of the root), and an interruption after
//! every step of the plan followed by a rerun.

use hninit::firstboot::{instantiate, instantiate_with, FirstbootError, Options, Report};
use hninit::config::model::HostConfig;
use hninit::slots::dir::RealDir;
use hninit::firstboot::identity::{self, Identity};
use hninit::firstboot::detect::{NetworkStack, Resolver};
use hninit::firstboot::plan::{Marker, Op, RenderError};
use hninit::firstboot::rootwriter::{self, ApplyError};
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// 2023-11-14T22:13:20Z: shadow's day 19675.
const NOW: u64 = 1_700_000_000;
const DIGEST: &str = "sha256:0123";
const HEADER: &str = "# Written by hninit from the host configuration; rewritten at each instantiation.\n";
const ALICE_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhuaW5pdCB0ZXN0IGtleSBmb3IgYWxpY2UgMDAwMDAwMA alice@laptop";
const BOB_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGhuaW5pdCB0ZXN0IGtleSBmb3IgYm9iIDAwMDAwMDAwMA bob@desk";

const CONFIG: &str = r#"{
  "vm_hostname": "web1.example.net",
  "nameservers": ["192.0.2.53", "2001:db8::53"],
  "vif": [
    {"vif_number": 0, "pna": [
      {"pna_address": "192.0.2.10", "pbn": {"pbn_network": "192.0.2.0/24", "pbn_gateway": "192.0.2.1"}}
    ]},
    {"vif_number": 1, "pna": [
      {"pna_address": "10.1.2.3", "pvn": {"pvn_network": "10.1.0.0/16"}}
    ]}
  ],
  "vm_conf": {
    "user": "alice",
    "password": "$y$j9T$abcdefgh$0123456789abcdefghijklmnopqrstuvwxyzABCDE",
    "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhuaW5pdCB0ZXN0IGtleSBmb3IgYWxpY2UgMDAwMDAwMA alice@laptop",
    "run": "echo configured > /root/configured",
    "script_args": "--flag 'two words'"
  },
  "hninit": {
    "users": [
      {"name": "bob", "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGhuaW5pdCB0ZXN0IGtleSBmb3IgYm9iIDAwMDAwMDAwMA bob@desk"],
       "groups": ["adm", "nosuchgroup"], "shell": "/bin/sh"}
    ],
    "addresses": [{"interface": "eth0", "address": "2001:db8::10/64", "gateway": "2001:db8::1"}],
    "routes": [{"interface": "eth1", "destination": "10.0.0.0/8", "gateway": "10.1.0.1"}],
    "timezone": "Europe/Paris",
    "motd": "web1: managed by hninit",
    "identities": {"rack": 12, "owner": "ops"},
    "sysctl": {"vm.swappiness": "10", "net.ipv4.ip_forward": "1"}
  }
}"#;

fn config() -> HostConfig {
    serde_json::from_str(CONFIG).unwrap()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("not root: owners cannot be set; skipped");
            return;
        }
    };
}

/// A host: a copy of a fixture image as the new root, a host partition with
/// the identity directory, and a directory outside the root with a sentinel.
struct Host {
    _t: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    state: RealDir,
}

fn copy_tree(src: &Path, dst: &Path) {
    let m = std::fs::symlink_metadata(src).unwrap();
    if m.file_type().is_symlink() {
        symlink(std::fs::read_link(src).unwrap(), dst).unwrap();
    } else if m.is_dir() {
        std::fs::create_dir(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &dst.join(e.file_name()));
        }
        std::fs::set_permissions(dst, m.permissions()).unwrap();
    } else {
        std::fs::copy(src, dst).unwrap();
        std::fs::set_permissions(dst, m.permissions()).unwrap();
    }
}

fn host(fixture: &str) -> Host {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().to_path_buf();
    let root = base.join("root");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roots").join(fixture),
        &root,
    );
    // As a distribution ships them.
    for f in ["etc/shadow", "etc/gshadow"] {
        let (mode, gid) = if fixture.starts_with("debian") { (0o640, 42) } else { (0o000, 0) };
        std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
        if is_root() {
            std::os::unix::fs::chown(root.join(f), Some(0), Some(gid)).unwrap();
        }
    }
    std::fs::create_dir(base.join("outside")).unwrap();
    std::fs::write(base.join("outside/sentinel"), "host file\n").unwrap();
    std::fs::create_dir(base.join("hostpart")).unwrap();
    let state = identity::open_state_dir(&base.join("hostpart")).unwrap();
    Host { _t: t, base, root, state }
}

impl Host {
    fn run(&self, cfg: &HostConfig, digest: &str) -> Result<Report, FirstbootError> {
        instantiate(&self.root, &self.state, cfg, digest, &Options { dry_run: false, now: NOW })
    }
    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.root.join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
    fn exists(&self, p: &str) -> bool {
        std::fs::symlink_metadata(self.root.join(p.trim_start_matches('/'))).is_ok()
    }
    /// (mode, uid, gid) of `p` itself.
    fn meta(&self, p: &str) -> (u32, u32, u32) {
        let m = std::fs::symlink_metadata(self.root.join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"));
        (m.permissions().mode() & 0o7777, m.uid(), m.gid())
    }
    fn link(&self, p: &str) -> String {
        std::fs::read_link(self.root.join(p.trim_start_matches('/')))
            .unwrap()
            .display()
            .to_string()
    }
    fn identity(&self) -> Identity {
        identity::load(&self.state).unwrap().unwrap()
    }
    fn marker(&self) -> Marker {
        serde_json::from_str(&self.read("/etc/hninit/instance.json")).unwrap()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File { mode: u32, uid: u32, gid: u32, data: Vec<u8> },
    Dir { mode: u32, uid: u32, gid: u32 },
    Link(PathBuf),
}

/// Everything under `dir`, without following links.
fn snapshot(dir: &Path) -> BTreeMap<String, Entry> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let (mode, uid, gid) = (m.permissions().mode() & 0o7777, m.uid(), m.gid());
            if m.file_type().is_symlink() {
                out.insert(rel, Entry::Link(std::fs::read_link(&p).unwrap()));
            } else if m.is_dir() {
                out.insert(rel, Entry::Dir { mode, uid, gid });
                walk(base, &p, out);
            } else {
                out.insert(
                    rel,
                    Entry::File {
                        mode,
                        uid,
                        gid,
                        data: std::fs::read(&p).unwrap(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn ssh_keygen_public(key: &Path) -> Option<String> {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(key)
        .output()
        .ok()?;
    assert!(out.status.success(), "ssh-keygen -y: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).unwrap())
}

const DEBIAN_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
messagebus:x:100:107::/nonexistent:/usr/sbin/nologin
sshd:x:101:65534::/run/sshd:/usr/sbin/nologin
";

#[test]
fn debian_networkd_golden() {
    require_root!();
    let h = host("debian-networkd");
    let r = h.run(&config(), DIGEST).unwrap();
    assert!(!r.already_instantiated);
    assert_eq!(r.network, Some(NetworkStack::Networkd));
    assert_eq!(r.resolver, Some(Resolver::Resolved));
    assert_eq!(r.os.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
    assert_eq!(
        r.warnings,
        vec!["user bob: group nosuchgroup does not exist in the image; not added to it".to_string()]
    );
    let id = h.identity();

    assert_eq!(h.read("/etc/hostname"), "web1.example.net\n");
    assert_eq!(
        h.read("/etc/hosts"),
        "127.0.0.1\tlocalhost\n\n# The following lines are desirable for IPv6 capable hosts\n\
         ::1     localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n\
         # BEGIN hninit\n127.0.1.1\tweb1.example.net web1\n192.0.2.10\tweb1.example.net web1\n\
         2001:db8::10\tweb1.example.net web1\n# END hninit\n"
    );
    // resolv.conf stays the image's link to resolved's stub; resolved gets the servers.
    assert_eq!(h.link("/etc/resolv.conf"), "../run/systemd/resolve/stub-resolv.conf");
    assert_eq!(
        h.read("/etc/systemd/resolved.conf.d/60-hninit.conf"),
        format!("{HEADER}[Resolve]\nDNS=192.0.2.53 2001:db8::53\n")
    );
    assert_eq!(
        h.read("/etc/systemd/network/60-hninit-eth0.network"),
        format!(
            "{HEADER}[Match]\nName=eth0\n\n[Network]\nAddress=192.0.2.10/24\nAddress=2001:db8::10/64\n\
             Gateway=192.0.2.1\nGateway=2001:db8::1\nDNS=192.0.2.53\nDNS=2001:db8::53\n"
        )
    );
    assert_eq!(
        h.read("/etc/systemd/network/60-hninit-eth1.network"),
        format!("{HEADER}[Match]\nName=eth1\n\n[Network]\nAddress=10.1.2.3/16\n\n[Route]\nDestination=10.0.0.0/8\nGateway=10.1.0.1\n")
    );
    assert_eq!(
        h.read("/etc/systemd/network/99-dhcp.network"),
        "[Match]\nName=e*\n\n[Network]\nDHCP=yes\n"
    );

    // Accounts: the image's lines untouched, alice (Gandi's user, an admin) and bob added.
    assert_eq!(
        h.read("/etc/passwd"),
        format!("{DEBIAN_PASSWD}alice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n")
    );
    assert!(h.read("/etc/shadow").ends_with(
        "sshd:!:19800::::::\nalice:$y$j9T$abcdefgh$0123456789abcdefghijklmnopqrstuvwxyzABCDE:19675:0:99999:7:::\nbob:!:19675:0:99999:7:::\n"
    ));
    assert_eq!(
        h.read("/etc/group"),
        "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:bob\ntty:x:5:\nsudo:x:27:alice\nshadow:x:42:\nusers:x:100:\n\
         nogroup:x:65534:\nsystemd-network:x:998:\nmessagebus:x:107:\nalice:x:1000:\nbob:x:1001:\n"
    );
    assert_eq!(
        h.read("/etc/gshadow"),
        "root:*::\ndaemon:*::\nbin:*::\nsys:*::\nadm:*::bob\ntty:*::\nsudo:*::alice\nshadow:*::\nusers:*::\nnogroup:*::\n\
         systemd-network:!*::\nmessagebus:!::\nalice:!::\nbob:!::\n"
    );
    assert_eq!(h.meta("/etc/passwd"), (0o644, 0, 0));
    assert_eq!(h.meta("/etc/group"), (0o644, 0, 0));
    assert_eq!(h.meta("/etc/shadow"), (0o640, 0, 42));
    assert_eq!(h.meta("/etc/gshadow"), (0o640, 0, 42));
    assert_eq!(h.meta("/home"), (0o755, 0, 0));
    assert_eq!(h.meta("/home/alice"), (0o700, 1000, 1000));
    assert_eq!(h.meta("/home/alice/.ssh"), (0o700, 1000, 1000));
    assert_eq!(h.meta("/home/alice/.ssh/authorized_keys"), (0o600, 1000, 1000));
    assert_eq!(
        h.read("/home/alice/.ssh/authorized_keys"),
        format!("# BEGIN hninit\n{ALICE_KEY}\n# END hninit\n")
    );
    assert_eq!(
        h.read("/home/bob/.ssh/authorized_keys"),
        format!("# BEGIN hninit\n{BOB_KEY}\n# END hninit\n")
    );
    assert_eq!(h.meta("/home/bob/.ssh/authorized_keys"), (0o600, 1001, 1001));
    // alice has a password: the sudo group is enough, no NOPASSWD drop-in.
    assert!(!h.exists("/etc/sudoers.d/hninit"));

    // Identity.
    assert_eq!(h.read("/etc/ssh/ssh_host_ed25519_key"), id.openssh_private("root@web1.example.net"));
    assert_eq!(
        h.read("/etc/ssh/ssh_host_ed25519_key.pub"),
        id.openssh_public("root@web1.example.net")
    );
    assert_eq!(h.meta("/etc/ssh/ssh_host_ed25519_key"), (0o600, 0, 0));
    assert_eq!(h.meta("/etc/ssh/ssh_host_ed25519_key.pub"), (0o644, 0, 0));
    if let Some(public) = ssh_keygen_public(&h.root.join("etc/ssh/ssh_host_ed25519_key")) {
        assert_eq!(
            public.split_whitespace().take(2).collect::<Vec<_>>(),
            id.openssh_public("").split_whitespace().collect::<Vec<_>>()
        );
    }
    assert_eq!(h.read("/etc/machine-id"), format!("{}\n", id.machine_id));
    assert_eq!(h.meta("/etc/machine-id"), (0o444, 0, 0));

    // The command run once.
    assert_eq!(h.read("/etc/hninit/run"), "#!/bin/sh\necho configured > /root/configured\n");
    assert_eq!(h.meta("/etc/hninit/run"), (0o700, 0, 0));
    assert_eq!(
        h.read("/etc/systemd/system/hninit-run.service"),
        format!(
            "{HEADER}[Unit]\nDescription=hninit: run the host configuration's command once\n\
             {}Wants=network-online.target\nAfter=network-online.target\n\n\
             [Service]\nType=oneshot\nExecStart=/etc/hninit/run-args\n\
             {}StandardOutput=journal\nStandardError=journal\nTimeoutStartSec=infinity\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            hninit::firstboot::runonce::conditions(DIGEST),
            hninit::firstboot::runonce::record(DIGEST)
        )
    );
    assert_eq!(
        h.read("/etc/hninit/run-args"),
        format!("#!/bin/sh\n{HEADER}exec /etc/hninit/run '--flag' 'two words'\n")
    );
    assert_eq!(h.meta("/etc/hninit/run-args"), (0o700, 0, 0));
    assert_eq!(
        h.link("/etc/systemd/system/multi-user.target.wants/hninit-run.service"),
        "/etc/systemd/system/hninit-run.service"
    );

    // Timezone, motd, identities, sysctl.
    assert_eq!(h.link("/etc/localtime"), "/usr/share/zoneinfo/Europe/Paris");
    assert_eq!(h.read("/etc/timezone"), "Europe/Paris\n");
    assert_eq!(h.read("/etc/motd"), "web1: managed by hninit\n");
    assert_eq!(h.read("/etc/hninit/identity.json"), "{\"owner\":\"ops\",\"rack\":12}\n");
    assert_eq!(h.meta("/etc/hninit/identity.json"), (0o600, 0, 0));
    assert_eq!(
        h.read("/etc/sysctl.d/60-hninit.conf"),
        format!("{HEADER}net.ipv4.ip_forward = 1\nvm.swappiness = 10\n")
    );

    // The marker, last.
    let plan = r.plan.as_ref().unwrap();
    assert_eq!(plan.steps.last().unwrap().op.path(), "/etc/hninit/instance.json");
    let m = h.marker();
    assert_eq!(
        (m.config_digest.as_str(), m.identity_id.as_str(), m.applied_at),
        (DIGEST, id.id.as_str(), NOW)
    );
    assert_eq!(m.hninit_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        m.files,
        [
            "/etc/systemd/resolved.conf.d/60-hninit.conf",
            "/etc/systemd/network/60-hninit-eth0.network",
            "/etc/systemd/network/60-hninit-eth1.network",
            "/etc/hninit/run",
            "/etc/hninit/run-args",
            "/etc/systemd/system/hninit-run.service",
            "/etc/systemd/system/multi-user.target.wants/hninit-run.service",
            "/etc/hninit/identity.json",
            "/etc/sysctl.d/60-hninit.conf",
        ]
    );
    assert_eq!(r.changed.len(), plan.steps.len(), "{:#?}", r.changed);
    // Nothing left behind, nothing outside touched.
    assert!(snapshot(&h.root).keys().all(|k| !k.ends_with(".hninit-tmp")));
    assert_eq!(std::fs::read_to_string(h.base.join("outside/sentinel")).unwrap(), "host file\n");
}

#[test]
fn idempotent_and_reapplied_when_the_config_changes() {
    require_root!();
    let h = host("debian-networkd");
    let first = h.run(&config(), DIGEST).unwrap();
    let before = snapshot(&h.root);
    let state_before = snapshot(&h.base.join("hostpart"));

    // Same configuration, same identity: nothing is planned or written.
    let again = h.run(&config(), DIGEST).unwrap();
    assert!(again.already_instantiated);
    assert!(again.plan.is_none() && again.changed.is_empty());
    assert_eq!(snapshot(&h.root), before);
    assert_eq!(
        snapshot(&h.base.join("hostpart")),
        state_before,
        "the identity is never regenerated"
    );
    assert!(again.summary().contains("already instantiated"));
    // Applying the same plan again converges without a change.
    let re = rootwriter::apply(&h.root, first.plan.as_ref().unwrap()).unwrap();
    assert!(re.changed.is_empty(), "{:?}", re.changed);
    assert_eq!(snapshot(&h.root), before);

    // A changed configuration is applied again; what it no longer needs goes.
    let mut cfg = config();
    cfg.nameservers = vec!["192.0.2.54".into()];
    cfg.vm_conf.as_mut().unwrap().run = None;
    let extra = cfg.hninit.as_mut().unwrap();
    extra.interface_names.insert("1".into(), "ens4".into());
    extra.routes[0].interface = "ens4".into();
    extra.sysctl.clear();
    let later = Options {
        dry_run: false,
        now: NOW + 10 * 86400,
    };
    let r = instantiate(&h.root, &h.state, &cfg, "sha256:4567", &later).unwrap();
    assert!(!r.already_instantiated);
    let changed = r.changed.join("\n");
    for removed in [
        "/etc/systemd/network/60-hninit-eth1.network",
        "/etc/hninit/run",
        "/etc/hninit/run-args",
        "/etc/systemd/system/hninit-run.service",
        "/etc/systemd/system/multi-user.target.wants/hninit-run.service",
        "/etc/sysctl.d/60-hninit.conf",
    ] {
        assert!(changed.contains(&format!("removed {removed}")), "{changed}");
        assert!(!h.exists(removed), "{removed}");
    }
    assert!(h.read("/etc/systemd/network/60-hninit-ens4.network").contains("Name=ens4\n"));
    assert_eq!(
        h.read("/etc/systemd/resolved.conf.d/60-hninit.conf"),
        format!("{HEADER}[Resolve]\nDNS=192.0.2.54\n")
    );
    // Unchanged things stay byte for byte (the password's change day included).
    for same in [
        "etc/passwd",
        "etc/shadow",
        "etc/group",
        "etc/hosts",
        "etc/ssh/ssh_host_ed25519_key",
        "home/alice/.ssh/authorized_keys",
    ] {
        assert_eq!(snapshot(&h.root).get(same), before.get(same), "{same}");
        assert!(!changed.contains(&format!("/{same}\n")), "{same} rewritten: {changed}");
    }
    let m = h.marker();
    assert_eq!((m.config_digest.as_str(), m.applied_at), ("sha256:4567", NOW + 10 * 86400));
    assert!(!m.files.iter().any(|f| f.contains("eth1") || f.contains("run")));
    // And that one is now in place.
    assert!(h.run(&cfg, "sha256:4567").unwrap().already_instantiated);
}

#[test]
fn debian_ifupdown_golden() {
    require_root!();
    let h = host("debian-ifupdown");
    let r = h.run(&config(), DIGEST).unwrap();
    // systemd-networkd is installed but not enabled: ifupdown wins.
    assert_eq!(r.network, Some(NetworkStack::Ifupdown));
    assert_eq!(r.resolver, Some(Resolver::File));
    assert_eq!(
        h.read("/etc/network/interfaces"),
        "# This file describes the network interfaces available on your system\n\
         # and how to activate them. For more information, see interfaces(5).\n\n\
         source /etc/network/interfaces.d/*\n\n# The loopback network interface\nauto lo\niface lo inet loopback\n\n\
         # The primary network interface\n#hninit# allow-hotplug eth0\n#hninit# iface eth0 inet dhcp\n"
    );
    assert_eq!(
        h.read("/etc/network/interfaces.d/hninit"),
        format!(
            "{HEADER}\nauto eth0\niface eth0 inet static\n\taddress 192.0.2.10/24\n\tgateway 192.0.2.1\n\
             \tdns-nameservers 192.0.2.53 2001:db8::53\niface eth0 inet6 static\n\taddress 2001:db8::10/64\n\tgateway 2001:db8::1\n\
             \nauto eth1\niface eth1 inet static\n\taddress 10.1.2.3/16\n\tup ip route add 10.0.0.0/8 via 10.1.0.1 dev eth1\n"
        )
    );
    assert_eq!(h.meta("/etc/network/interfaces.d"), (0o755, 0, 0));
    assert_eq!(
        h.read("/etc/resolv.conf"),
        format!("{HEADER}nameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    );
    // Host keys baked into the image are gone; D-Bus's own copy of the machine-id follows.
    assert!(!h.exists("/etc/ssh/ssh_host_rsa_key") && !h.exists("/etc/ssh/ssh_host_rsa_key.pub"));
    assert_eq!(h.read("/var/lib/dbus/machine-id"), format!("{}\n", h.identity().machine_id));
    assert!(!h.exists("/etc/systemd/network"));
}

#[test]
fn rhel_ifcfg_golden() {
    require_root!();
    let h = host("rhel-ifcfg");
    let r = h.run(&config(), DIGEST).unwrap();
    assert_eq!(r.network, Some(NetworkStack::Ifcfg));
    assert_eq!(r.os.as_deref(), Some("CentOS Linux 7 (Core)"));
    assert_eq!(
        h.read("/etc/sysconfig/network-scripts/ifcfg-eth0"),
        format!(
            "{HEADER}DEVICE=eth0\nNAME=eth0\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\nIPADDR0=192.0.2.10\nPREFIX0=24\n\
             GATEWAY=192.0.2.1\nDEFROUTE=yes\nDNS1=192.0.2.53\nDNS2=2001:db8::53\nIPV6INIT=yes\nIPV6_AUTOCONF=no\n\
             IPV6ADDR=2001:db8::10/64\nIPV6_DEFAULTGW=2001:db8::1\n"
        )
    );
    assert_eq!(
        h.read("/etc/sysconfig/network-scripts/ifcfg-eth1"),
        format!("{HEADER}DEVICE=eth1\nNAME=eth1\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\nIPADDR0=10.1.2.3\nPREFIX0=16\n")
    );
    assert_eq!(
        h.read("/etc/sysconfig/network-scripts/route-eth1"),
        format!("{HEADER}10.0.0.0/8 via 10.1.0.1 dev eth1\n")
    );
    assert_eq!(
        h.read("/etc/sysconfig/network-scripts/ifcfg-lo"),
        "DEVICE=lo\nIPADDR=127.0.0.1\nNETMASK=255.0.0.0\nONBOOT=yes\nNAME=loopback\n"
    );
    assert_eq!(
        h.read("/etc/hosts"),
        "127.0.0.1   localhost localhost.localdomain localhost4 localhost4.localdomain4\n\
         ::1         localhost localhost.localdomain localhost6 localhost6.localdomain6\n\
         # BEGIN hninit\n127.0.1.1\tweb1.example.net web1\n192.0.2.10\tweb1.example.net web1\n\
         2001:db8::10\tweb1.example.net web1\n# END hninit\n"
    );
    // /bin -> usr/bin in the image: bash found through it.
    assert!(h
        .read("/etc/passwd")
        .ends_with("alice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n"));
    assert!(h.read("/etc/group").contains("\nwheel:x:10:alice\n"));
    assert!(h.read("/etc/gshadow").contains("\nwheel:::alice\n"));
    // No shadow group: root-only files.
    assert_eq!(h.meta("/etc/shadow"), (0o600, 0, 0));
    assert_eq!(h.meta("/etc/gshadow"), (0o600, 0, 0));
    // The image's localtime link is replaced.
    assert_eq!(h.link("/etc/localtime"), "/usr/share/zoneinfo/Europe/Paris");
    // RHEL has no adm group.
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
}

#[test]
fn nm_keyfile_golden() {
    require_root!();
    let h = host("nm-keyfile");
    let mut cfg = config();
    cfg.vm_conf.as_mut().unwrap().password = None;
    let r = h.run(&cfg, DIGEST).unwrap();
    // NetworkManager is enabled: it wins over the ifcfg directory.
    assert_eq!(r.network, Some(NetworkStack::NetworkManager));
    let id = h.identity();
    let nm = h.read("/etc/NetworkManager/system-connections/hninit-eth0.nmconnection");
    let uuid = nm.lines().find_map(|l| l.strip_prefix("uuid=")).unwrap().to_string();
    assert_eq!(uuid.len(), 36);
    assert_eq!(
        nm,
        format!(
            "{HEADER}[connection]\nid=hninit-eth0\nuuid={uuid}\ntype=ethernet\ninterface-name=eth0\nautoconnect=true\nautoconnect-priority=100\n\n\
             [ethernet]\n\n[ipv4]\nmethod=manual\naddress1=192.0.2.10/24,192.0.2.1\ndns=192.0.2.53;\n\n\
             [ipv6]\nmethod=manual\naddress1=2001:db8::10/64,2001:db8::1\ndns=2001:db8::53;\n"
        )
    );
    assert_eq!(
        h.read("/etc/NetworkManager/system-connections/hninit-eth1.nmconnection")
            .split_once("[ethernet]")
            .unwrap()
            .1,
        "\n\n[ipv4]\nmethod=manual\naddress1=10.1.2.3/16\nroute1=10.0.0.0/8,10.1.0.1\n\n[ipv6]\nmethod=auto\n"
    );
    assert_eq!(
        h.meta("/etc/NetworkManager/system-connections/hninit-eth0.nmconnection"),
        (0o600, 0, 0)
    );
    // The uuid depends on the host's identity and the interface only.
    assert_eq!(uuid, nm_uuid_on_a_copy(&id, &h));
    // alice is an administrator without a password.
    assert_eq!(
        h.read("/etc/sudoers.d/hninit"),
        format!("{HEADER}# Administrators without a password.\nalice ALL=(ALL:ALL) NOPASSWD: ALL\n")
    );
    assert_eq!(h.meta("/etc/sudoers.d/hninit"), (0o440, 0, 0));
    assert!(h.read("/etc/shadow").contains("\nalice:!:19675:0:99999:7:::\n"));
    assert!(!h.exists("/etc/sysconfig/network-scripts/ifcfg-eth0"));
}

/// The uuid written by a second, independent instantiation of another copy of
/// the image with the same identity (it must not depend on anything else).
fn nm_uuid_on_a_copy(id: &Identity, h: &Host) -> String {
    let other = host("nm-keyfile");
    for f in [identity::KEY_FILE, identity::PUB_FILE, identity::MACHINE_ID_FILE] {
        std::fs::copy(
            h.base.join("hostpart").join(identity::STATE_DIR).join(f),
            other.base.join("hostpart").join(identity::STATE_DIR).join(f),
        )
        .unwrap();
    }
    assert_eq!(&other.identity(), id);
    other.run(&config(), "other").unwrap();
    let nm = other.read("/etc/NetworkManager/system-connections/hninit-eth0.nmconnection");
    nm.lines().find_map(|l| l.strip_prefix("uuid=")).unwrap().to_string()
}

#[test]
fn dry_run_writes_nothing() {
    require_root!();
    let h = host("debian-networkd");
    let before = snapshot(&h.base);
    let r = instantiate(&h.root, &h.state, &config(), DIGEST, &Options { dry_run: true, now: NOW }).unwrap();
    assert!(r.identity_ephemeral && r.dry_run && r.changed.is_empty());
    let text = r.summary();
    assert!(text.contains("write /etc/hostname (0644 0:0, 17 bytes)"), "{text}");
    assert!(text.contains("mkdir /home/alice (0700 1000:1000)"), "{text}");
    assert!(text.contains("link /etc/localtime -> /usr/share/zoneinfo/Europe/Paris"), "{text}");
    assert!(text.contains("write /etc/hninit/instance.json"), "{text}");
    assert!(!text.contains("PRIVATE KEY") && !text.contains("$y$"), "{text}");
    assert_eq!(snapshot(&h.base), before);
}

#[test]
fn hostile_links_never_lead_out_of_the_root() {
    require_root!();
    // /etc/hosts -> an absolute host path, /etc/hostname -> ../../.. out of the
    // root: both replaced by files; the host files are untouched.
    let h = host("debian-networkd");
    std::fs::remove_file(h.root.join("etc/hosts")).unwrap();
    symlink(h.base.join("outside/sentinel"), h.root.join("etc/hosts")).unwrap();
    symlink("../../../../../../outside/sentinel", h.root.join("etc/hostname")).unwrap();
    std::fs::create_dir_all(h.root.join("home")).unwrap();
    symlink("/etc", h.root.join("home/alice")).unwrap();
    let outside = snapshot(&h.base.join("outside"));
    h.run(&config(), DIGEST).unwrap();
    assert_eq!(snapshot(&h.base.join("outside")), outside);
    assert!(std::fs::symlink_metadata(h.root.join("etc/hosts")).unwrap().is_file());
    assert!(h.read("/etc/hosts").starts_with("127.0.0.1\tlocalhost\n"));
    assert_eq!(h.read("/etc/hostname"), "web1.example.net\n");
    // A home that was a link is a real directory of its user; /etc kept its owner.
    assert!(std::fs::symlink_metadata(h.root.join("home/alice")).unwrap().is_dir());
    assert_eq!(h.meta("/home/alice"), (0o700, 1000, 1000));
    assert_eq!(h.meta("/etc").1, 0);

    // /etc/shadow -> a host file: refused by name, nothing written.
    let h = host("debian-networkd");
    std::fs::remove_file(h.root.join("etc/shadow")).unwrap();
    std::fs::write(h.base.join("outside/shadow"), "root:host-secret:1::::::\n").unwrap();
    symlink(h.base.join("outside/shadow"), h.root.join("etc/shadow")).unwrap();
    let before = snapshot(&h.base);
    match h.run(&config(), DIGEST) {
        Err(FirstbootError::Render(RenderError::DanglingLink { path, .. })) => assert_eq!(path, "/etc/shadow"),
        r => panic!("{r:?}"),
    }
    let after = snapshot(&h.base);
    assert_eq!(
        after.iter().filter(|(k, _)| !k.starts_with("hostpart/")).collect::<Vec<_>>(),
        before.iter().filter(|(k, _)| !k.starts_with("hostpart/")).collect::<Vec<_>>()
    );

    // /etc/ssh -> ../../../..: refused before the first write.
    let h = host("debian-networkd");
    std::fs::remove_dir_all(h.root.join("etc/ssh")).unwrap();
    symlink("../../../..", h.root.join("etc/ssh")).unwrap();
    let before = snapshot(&h.root);
    let outside = snapshot(&h.base.join("outside"));
    let e = h.run(&config(), DIGEST).unwrap_err();
    match &e {
        FirstbootError::Apply(ApplyError::SymlinkInPath { path, link }) => {
            assert_eq!(path, "/etc/ssh/ssh_host_ed25519_key");
            assert_eq!(link, "/etc/ssh");
        }
        e => panic!("{e:?}"),
    }
    assert!(e.to_string().contains("/etc/ssh"), "{e}");
    assert_eq!(snapshot(&h.root), before);
    assert_eq!(snapshot(&h.base.join("outside")), outside);

    // /etc -> /tmp/<x> (an absolute link; the image keeps its files there):
    // refused, and the host's /tmp/<x> is untouched.
    let h = host("debian-networkd");
    let x = format!("hninit-test-etc-{}", std::process::id());
    let host_x = Path::new("/tmp").join(&x);
    let _ = std::fs::remove_dir_all(&host_x);
    std::fs::create_dir(&host_x).unwrap();
    std::fs::write(host_x.join("sentinel"), "host /tmp\n").unwrap();
    std::fs::create_dir_all(h.root.join("tmp")).unwrap();
    std::fs::rename(h.root.join("etc"), h.root.join("tmp").join(&x)).unwrap();
    symlink(&host_x, h.root.join("etc")).unwrap();
    let host_before = snapshot(&host_x);
    let root_before = snapshot(&h.root);
    let e = h.run(&config(), DIGEST).unwrap_err();
    let host_after = snapshot(&host_x);
    let _ = std::fs::remove_dir_all(&host_x);
    match &e {
        FirstbootError::Apply(ApplyError::SymlinkInPath { link, .. }) => assert_eq!(link, "/etc"),
        e => panic!("{e:?}"),
    }
    assert_eq!(host_after, host_before);
    assert_eq!(snapshot(&h.root), root_before);

    // Gandi's key for root with /root -> a host directory: the link is replaced
    // by root's own directory; the host directory is untouched.
    let h = host("debian-networkd");
    std::fs::remove_dir_all(h.root.join("root")).unwrap();
    symlink(h.base.join("outside"), h.root.join("root")).unwrap();
    let mut cfg = config();
    let vm = cfg.vm_conf.as_mut().unwrap();
    vm.user = None;
    vm.password = None;
    let outside = snapshot(&h.base.join("outside"));
    let r = h.run(&cfg, DIGEST).unwrap();
    assert_eq!(snapshot(&h.base.join("outside")), outside);
    assert_eq!(h.meta("/root"), (0o700, 0, 0));
    assert_eq!(
        h.read("/root/.ssh/authorized_keys"),
        format!("# BEGIN hninit\n{ALICE_KEY}\n# END hninit\n")
    );
    assert!(
        r.changed.iter().any(|c| c == "replaced the symbolic link /root by a directory"),
        "{:?}",
        r.changed
    );
    // root's own lines were not touched.
    assert!(h.read("/etc/shadow").starts_with("root:*:19800:0:99999:7:::\n"));
}

#[test]
fn gandi_root_keeps_its_account_and_its_keys() {
    require_root!();
    let h = host("debian-ifupdown");
    std::fs::create_dir_all(h.root.join("root/.ssh")).unwrap();
    std::fs::write(h.root.join("root/.ssh/authorized_keys"), "ssh-ed25519 AAAAimage image@builder\n").unwrap();
    let mut cfg = config();
    cfg.vm_conf.as_mut().unwrap().user = Some("root".into());
    cfg.hninit.as_mut().unwrap().users.clear();
    let r = h.run(&cfg, DIGEST).unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("system account")), "{:?}", r.warnings);
    assert_eq!(h.read("/etc/passwd"), DEBIAN_PASSWD);
    assert!(h.read("/etc/shadow").starts_with("root:*:19800:0:99999:7:::\n"));
    assert_eq!(
        h.read("/root/.ssh/authorized_keys"),
        format!("ssh-ed25519 AAAAimage image@builder\n# BEGIN hninit\n{ALICE_KEY}\n# END hninit\n")
    );
    assert_eq!(h.meta("/root/.ssh/authorized_keys"), (0o600, 0, 0));
    assert!(!h.read("/etc/group").contains("sudo:x:27:root"));
}

#[test]
fn interrupted_after_every_step_then_rerun_converges() {
    require_root!();
    let clean = host("debian-networkd");
    let mut n = 0;
    let marker = clean.root.join("etc/hninit/instance.json");
    let r = instantiate_with(
        &clean.root,
        &clean.state,
        &config(),
        DIGEST,
        &Options { dry_run: false, now: NOW },
        &mut |i, step| {
            n = i + 1;
            // The marker exists only once the last step is done.
            assert_eq!(
                marker.exists(),
                step.op.path() == "/etc/hninit/instance.json",
                "step {i}: {:?}",
                step.op
            );
            Ok(())
        },
    )
    .unwrap();
    let steps = r.plan.unwrap().steps;
    assert_eq!(n, steps.len());
    let want = snapshot(&clean.root);

    // Each interruption point on its own copy; several at a time (each run
    // fsyncs every file it writes, which is what takes the time).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get().min(8));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= steps.len() {
                    break;
                }
                interrupt_and_rerun(&clean, &steps, k, &want);
            });
        }
    });
}

fn interrupt_and_rerun(clean: &Host, steps: &[hninit::firstboot::plan::Step], k: usize, want: &BTreeMap<String, Entry>) {
    let key_files = [identity::KEY_FILE, identity::PUB_FILE, identity::MACHINE_ID_FILE];
    let h = host("debian-networkd");
    for f in key_files {
        let dir = |b: &Path| b.join("hostpart").join(identity::STATE_DIR).join(f);
        std::fs::copy(dir(&clean.base), dir(&h.base)).unwrap();
    }
    let e = instantiate_with(
        &h.root,
        &h.state,
        &config(),
        DIGEST,
        &Options { dry_run: false, now: NOW },
        &mut |i, _| {
            if i == k {
                Err(std::io::Error::other("power cut"))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    match e {
        FirstbootError::Apply(ApplyError::Interrupted { index, .. }) => assert_eq!(index, k),
        e => panic!("{e}"),
    }
    assert_eq!(h.exists("/etc/hninit/instance.json"), k == steps.len() - 1, "after step {k}");
    // A crash in the middle of the next write leaves its temporary file.
    if let Some(Op::Write { path, .. }) = steps.get(k + 1).map(|s| &s.op) {
        let tmp = h.root.join(format!("{}.hninit-tmp", path.trim_start_matches('/')));
        if tmp.parent().unwrap().is_dir() {
            std::fs::write(&tmp, "half written").unwrap();
        }
    }
    let r = h.run(&config(), DIGEST).unwrap();
    assert_eq!(r.already_instantiated, k == steps.len() - 1);
    let got = snapshot(&h.root);
    if &got != want {
        let diff: Vec<_> = want.keys().chain(got.keys()).filter(|p| want.get(*p) != got.get(*p)).collect();
        panic!("interrupted after step {k} ({:?}): differs in {diff:?}", steps[k].op);
    }
}

#[test]
fn detection_needs_what_the_config_asks_for() {
    require_root!();
    // A timezone the image lacks is an error naming the file.
    let h = host("debian-networkd");
    let mut cfg = config();
    cfg.hninit.as_mut().unwrap().timezone = Some("America/Nowhere".into());
    let e = h.run(&cfg, DIGEST).unwrap_err().to_string();
    assert!(e.contains("/usr/share/zoneinfo/America/Nowhere"), "{e}");
    assert!(!h.exists("/etc/hninit/instance.json") && !h.exists("/etc/hostname"));
}
