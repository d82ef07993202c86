//! Host configuration parsing and validation (a full Gandi document with public
//! and private networks, IPv4 and IPv6, and hninit's additions; every refusal
//! names its JSON path and never echoes a password), the digest, and the
//! configuration sources: a real swap device fixture (`mkswap -L swap` plus a
//! `tar` archive at byte 524288) read and wiped, `hn.config=`, `host.json` and
//! the last applied configuration.

use hninit::config::parse::{self as configparse, canonical_json, parse, ConfigError, MAX_CONFIG};
use hninit::config::source::{
    self as configsource, find_config, load_last_applied, save_last_applied, ConfigArg, Origin, SourceError, ARCHIVE_OFFSET,
};
use hninit::sys::devspec::BlockDev;
use hninit::slots::dir::RealDir;
use hninit::sys::probe::{self, FsType};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILk8jHDcGJtDF7OmqdGHA5EeLclOoNJlYg6fX7DMKhRX alice@laptop";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNTPZNO1wxRumcAgly3HmHcRdc2DCSpMBAWqXnJPgA0I6HqA7Untn7oKILtIy/qf/jO3UMhrsxRUJk6z0gK+vEU=";
const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDAMG1eClZFASVJ5vbx8lSltPrQIzb6Z+jLKKjiS7bnWIXJBe9eWyYFghomzJrbxuEmFmhLQ78dlHpNN1PfeTIwr+Lyma4wzrxP7L7mKUiVHreffMYuYSw52CHq++zHuElLVXLdOBBqgGjQxosEzm6UwPmPqgtr0EXDtZbkVmxZmw== ops key";
const SHA512: &str =
    "$6$saltsalt$8iYtNHxjWRl.NF6oNZ5tF.iKFlQREaXBLlSmZKP6dy9l5z3vsooWNW0/GZ6Nej73/TFug6pIPSqbJoCT6dfnj.";
const YESCRYPT: &str = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$PmNgGTLMFjJn.URBv11CpTEm5RwlKtPjRtztKe6.b33";
const BCRYPT: &str = "$2b$05$abcdefghijklmnopqrstuuoXuKqgZXLiJqzfmMXDDhSFPIvxV7t8.";

/// A full configuration: Gandi's fields (public and private network, IPv4 and
/// IPv6), an unknown Gandi field, and every hninit addition.
fn full() -> Value {
    json!({
        "vm_hostname": "Web1.Example.ORG",
        "vm_id": 4242,
        "nameservers": ["192.0.2.53", "2001:DB8::53"],
        "vif": [
            {"vif_number": 0, "pna": [
                {"pna_address": "192.0.2.10", "pbn": {"pbn_network": "192.0.2.0/24", "pbn_gateway": "192.0.2.1"}},
                {"pna_address": "2001:db8:0:1::10", "pbn": {"pbn_network": "2001:db8:0:1::/64", "pbn_gateway": "fe80::1"}}
            ]},
            {"vif_number": 1, "pna": [
                {"pna_address": "10.20.0.5", "pvn": {"pvn_network": "10.20.0.0/16"}}
            ]}
        ],
        "vm_conf": {
            "user": "admin",
            "password": SHA512,
            "ssh_key": ED25519,
            "run": "#!/bin/sh\necho first boot > /root/first-boot\n",
            "script_args": "--quick"
        },
        "hninit": {
            "users": [
                {"name": "deploy", "password": YESCRYPT, "ssh_keys": [ECDSA, RSA], "groups": ["sudo", "adm"],
                 "shell": "/bin/bash", "uid": 1001, "sudo": true},
                {"name": "ci", "password": BCRYPT},
                {"name": "root", "ssh_keys": [RSA]}
            ],
            "addresses": [{"interface": "eth0", "address": "2001:db8:0:2::5/64", "gateway": "2001:db8:0:2::1"}],
            "routes": [
                {"interface": "priv0", "destination": "10.30.0.0/16", "gateway": "10.20.0.1"},
                {"interface": "eth0", "destination": "default", "gateway": "192.0.2.1"}
            ],
            "interface_names": {"1": "priv0"},
            "timezone": "Europe/Paris",
            "motd": "Welcome to web1.\n",
            "identities": {"customer": "acme", "tags": ["web", "eu"]},
            "sysctl": {"net.ipv4.ip_forward": "1", "net.ipv4.conf.*.rp_filter": "2"}
        }
    })
}

fn text(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap()
}

/// Sets `pointer` (a JSON pointer; the last key may be new) in a copy of
/// `full()` to `value`.
fn with(pointer: &str, value: Value) -> Vec<u8> {
    let mut v = full();
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    match v.pointer_mut(parent).unwrap_or_else(|| panic!("{pointer}")) {
        Value::Object(m) => {
            m.insert(last.to_string(), value);
        }
        Value::Array(a) => a[last.parse::<usize>().unwrap()] = value,
        _ => panic!("{pointer}"),
    }
    text(&v)
}

fn refused(doc: &[u8]) -> ConfigError {
    match parse(doc) {
        Ok(p) => panic!("accepted: {:?}", p.config),
        Err(e) => e,
    }
}

/// Refused with this JSON path and a message containing `fragment`.
fn check(doc: &[u8], path: &str, fragment: &str) -> String {
    let e = refused(doc);
    let shown = e.to_string();
    assert_eq!(e.path(), Some(path), "{shown}");
    assert!(shown.contains(fragment), "{shown:?} lacks {fragment:?}");
    assert!(shown.starts_with("config: "), "{shown}");
    shown
}

#[test]
fn full_example_is_accepted_and_normalised() {
    let p = parse(&text(&full())).unwrap();
    let c = &p.config;
    assert_eq!(c.vm_hostname, "web1.example.org");
    assert_eq!(c.nameservers, ["192.0.2.53", "2001:db8::53"]);
    assert_eq!(c.vif.len(), 2);
    let v6 = &c.vif[0].pna[1];
    assert_eq!(v6.pna_address, "2001:db8:0:1::10");
    assert_eq!(v6.pbn.as_ref().unwrap().pbn_network, "2001:db8:0:1::/64");
    assert_eq!(c.vif[1].pna[0].pvn.as_ref().unwrap().pvn_gateway, None);
    let vm = c.vm_conf.as_ref().unwrap();
    assert_eq!(vm.user.as_deref(), Some("admin"));
    assert_eq!(vm.password.as_deref(), Some(SHA512));
    let x = c.hninit.as_ref().unwrap();
    assert_eq!(x.users.len(), 3);
    assert_eq!(x.users[0].ssh_keys, [ECDSA, RSA]);
    assert_eq!(x.interface_names.get("1").map(String::as_str), Some("priv0"));
    assert_eq!(x.timezone.as_deref(), Some("Europe/Paris"));
    assert_eq!(p.warnings, ["ignored unknown field vm_id"]);
    assert_eq!(p.digest.len(), 64);
}

#[test]
fn the_documented_example_is_valid() {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md")).unwrap();
    let start = doc.find("```json\n").expect("docs/config.md has a ```json block") + 8;
    let end = start + doc[start..].find("```").unwrap();
    let p = parse(&doc.as_bytes()[start..end]).unwrap_or_else(|e| panic!("docs/config.md example: {e}"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert!(p.config.hninit.is_some());
}

#[test]
fn minimal_documents() {
    let p = parse(br#"{"vm_hostname": "h"}"#).unwrap();
    assert_eq!(p.config.vm_hostname, "h");
    assert!(p.warnings.is_empty());
    // Gandi's nulls for optional parts.
    parse(br#"{"vm_hostname": "h", "vm_conf": null, "hninit": null}"#).unwrap();
    parse(br#"{"vm_hostname": "h", "vm_conf": {"user": "root", "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILk8jHDcGJtDF7OmqdGHA5EeLclOoNJlYg6fX7DMKhRX"}}"#).unwrap();
    // A key without a user goes to root.
    parse(format!(r#"{{"vm_hostname": "h", "vm_conf": {{"ssh_key": "{ED25519}"}}}}"#).as_bytes()).unwrap();
}

#[test]
fn wrong_types_are_named() {
    check(
        &with("/vif/0/vif_number", json!("0")),
        "vif[0].vif_number",
        "invalid type: string \"0\", expected u32",
    );
    check(
        &with("/nameservers", json!("192.0.2.53")),
        "nameservers",
        "invalid type",
    );
    check(
        &with("/vif/1/pna/0/pvn", json!(["10.20.0.0/16"])),
        "vif[1].pna[0].pvn",
        "invalid type: an array, expected an object",
    );
    check(&with("/vif/0", json!([0, []])), "vif[0]", "expected an object");
    check(
        &with("/hninit/routes/0", json!(["eth0", "default", "192.0.2.1"])),
        "hninit.routes[0]",
        "expected an object",
    );
    check(&with("/hninit", json!([])), "hninit", "expected an object");
    check(&with("/vm_conf", json!("admin")), "vm_conf", "expected an object");
    check(
        &with("/hninit/users/0/sudo", json!("yes")),
        "hninit.users[0].sudo",
        "expected a boolean",
    );
    check(
        &with("/hninit/users/0/uid", json!(-1)),
        "hninit.users[0].uid",
        "invalid value",
    );
    check(br#"{"nameservers": []}"#, "", "missing field `vm_hostname`");
    check(b"[1, 2]", "", "must be a JSON object, not an array");
    check(b"", "", "invalid JSON");
    check(b"{\"vm_hostname\": \"h\"} x", "", "trailing characters");
    check(
        b"{\"vm_hostname\": \"h\", \"vif\": [{\"vif_number\": 0,}]}",
        "vif[0]",
        "invalid JSON",
    );
    check(
        b"{\"vm_hostname\": \"a\", \"vm_hostname\": \"b\"}",
        "",
        "duplicate key \"vm_hostname\"",
    );
    check(b"\xff", "", "invalid JSON");
}

#[test]
fn unknown_fields_gandi_warn_hninit_refuse() {
    let mut v = full();
    v["vif"][0]["vif_mac"] = json!("aa:bb:cc:dd:ee:ff");
    v["vif"][0]["pna"][0]["pbn"]["pbn_id"] = json!(7);
    v["vm_conf"]["keymap"] = json!("fr");
    v["weird key!"] = json!(1);
    let p = parse(&text(&v)).unwrap();
    assert_eq!(
        p.warnings,
        [
            "ignored unknown field vm_id",
            "ignored unknown field [\"weird key!\"]",
            "ignored unknown field vm_conf.keymap",
            "ignored unknown field vif[0].vif_mac",
            "ignored unknown field vif[0].pna[0].pbn.pbn_id",
        ]
    );
    // The ignored fields do not change the digest.
    assert_eq!(p.digest, parse(&text(&full())).unwrap().digest);

    let mut v = full();
    v["hninit"]["colour"] = json!("blue");
    check(&text(&v), "hninit.colour", "unknown field `colour`");
    let mut v = full();
    v["hninit"]["users"][1]["home"] = json!("/srv/ci");
    check(&text(&v), "hninit.users[1].home", "unknown field `home`");
    let mut v = full();
    v["hninit"]["addresses"][0]["mtu"] = json!(1400);
    check(&text(&v), "hninit.addresses[0].mtu", "unknown field `mtu`");
    let mut v = full();
    v["hninit"]["routes"][0]["metric"] = json!(1);
    check(&text(&v), "hninit.routes[0].metric", "unknown field `metric`");
}

#[test]
fn passwords_must_be_crypt_hashes_and_are_never_echoed() {
    for (pointer, path) in [
        ("/vm_conf/password", "vm_conf.password"),
        ("/hninit/users/0/password", "hninit.users[0].password"),
    ] {
        for secret in [
            "hunter2-Secret",
            "$1$abc$hunter2Secret",
            "$6$salt$hunter2Secret",
            "$6$x$ hunter2Secret",
        ] {
            let shown = check(&with(pointer, json!(secret)), path, "plaintext passwords are refused");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!format!("{:?}", refused(&with(pointer, json!(secret)))).contains("hunter2"));
        }
        // A number (a PIN?) is not quoted back either.
        let shown = check(&with(pointer, json!(73_519_246)), path, "not shown");
        assert!(!shown.contains("73519246"), "{shown}");
    }
    for hash in [
        SHA512,
        YESCRYPT,
        BCRYPT,
        "$5$abc$aw8kcfRnzkuA1XFRzd1AgTNuyzM2RdMYKc3X22kKYc0",
    ] {
        parse(&with("/hninit/users/1/password", json!(hash))).unwrap();
    }
    let mut v = full();
    v["vm_conf"].as_object_mut().unwrap().remove("user");
    check(&text(&v), "vm_conf.password", "without vm_conf.user");
}

#[test]
fn user_names_and_accounts_policy() {
    for bad in ["../x", "root:0", "a b", "", "Admin", "1abc", "a/b", &"a".repeat(33)] {
        check(
            &with("/hninit/users/1/name", json!(bad)),
            "hninit.users[1].name",
            "is not a user name",
        );
        check(&with("/vm_conf/user", json!(bad)), "vm_conf.user", "is not a user name");
    }
    for system in ["daemon", "nobody", "sshd", "systemd-network", "_apt", "www-data"] {
        check(
            &with("/hninit/users/1/name", json!(system)),
            "hninit.users[1].name",
            "is a system account",
        );
    }
    // root: ssh keys only.
    check(
        &with("/hninit/users/2/password", json!(SHA512)),
        "hninit.users[2].password",
        "root may only receive ssh keys",
    );
    check(
        &with("/hninit/users/2/uid", json!(0)),
        "hninit.users[2].uid",
        "root may only receive ssh keys",
    );
    check(
        &with("/hninit/users/2/sudo", json!(true)),
        "hninit.users[2].sudo",
        "root may only receive ssh keys",
    );
    check(
        &with("/vm_conf/user", json!("root")),
        "vm_conf.password",
        "root's password is not set",
    );
    // uid 0 and system uids for other users.
    check(
        &with("/hninit/users/0/uid", json!(0)),
        "hninit.users[0].uid",
        "uid 0 is root",
    );
    check(
        &with("/hninit/users/0/uid", json!(999)),
        "hninit.users[0].uid",
        "1000 to 60000",
    );
    check(
        &with("/hninit/users/1/name", json!("admin")),
        "hninit.users[1].name",
        "given twice",
    );
    let mut v = full();
    v["hninit"]["users"][1]["uid"] = json!(1001);
    check(&text(&v), "hninit.users[1].uid", "uid 1001 is given twice");
    check(
        &with("/hninit/users/0/groups/1", json!("a:b")),
        "hninit.users[0].groups[1]",
        "not a group name",
    );
    check(
        &with("/hninit/users/0/shell", json!("bash")),
        "hninit.users[0].shell",
        "not an absolute path",
    );
    check(
        &with("/hninit/users/0/shell", json!("/bin/../tmp/x")),
        "hninit.users[0].shell",
        "not an absolute path",
    );
}

#[test]
fn ssh_keys() {
    check(
        &with("/vm_conf/ssh_key", json!(format!("{ED25519}\n{RSA}"))),
        "vm_conf.ssh_key",
        "it contains a line break",
    );
    check(
        &with("/vm_conf/ssh_key", json!(format!("{ED25519}\n"))),
        "vm_conf.ssh_key",
        "line break",
    );
    check(
        &with("/hninit/users/0/ssh_keys/1", json!("ssh-dss AAAAB3NzaC1kc3M= x")),
        "hninit.users[0].ssh_keys[1]",
        "key type",
    );
    check(
        &with("/vm_conf/ssh_key", json!("from=\"1.2.3.4\" ssh-ed25519 AAAA")),
        "vm_conf.ssh_key",
        "key type",
    );
    check(
        &with("/vm_conf/ssh_key", json!("ssh-ed25519 not*base64 x")),
        "vm_conf.ssh_key",
        "not valid base64",
    );
    check(
        &with("/vm_conf/ssh_key", json!("ssh-ed25519")),
        "vm_conf.ssh_key",
        "not valid base64",
    );
    // An RSA blob labelled ed25519.
    let body = RSA.split(' ').nth(1).unwrap();
    check(
        &with("/vm_conf/ssh_key", json!(format!("ssh-ed25519 {body}"))),
        "vm_conf.ssh_key",
        "not a ssh-ed25519 key",
    );
    check(
        &with("/vm_conf/ssh_key", json!(format!("{ED25519}\u{7}"))),
        "vm_conf.ssh_key",
        "control character",
    );
}

#[test]
fn hostnames_and_addresses() {
    check(
        &with("/vm_hostname", json!("web_1")),
        "vm_hostname",
        "not a valid host name",
    );
    check(
        &with("/vm_hostname", json!("-web")),
        "vm_hostname",
        "not a valid host name",
    );
    check(&with("/vm_hostname", json!("")), "vm_hostname", "empty");
    parse(&with("/vm_hostname", json!("a.b-c.d9"))).unwrap();
    check(
        &with("/nameservers/1", json!("1.2.3")),
        "nameservers[1]",
        "\"1.2.3\" is not an IP address",
    );
    check(
        &with("/nameservers", json!(vec!["1.1.1.1"; 9])),
        "nameservers",
        "at most 8",
    );
    let shown = check(
        &with("/vif/0/pna/0/pna_address", json!("300.1.1.1")),
        "vif[0].pna[0].pna_address",
        "is not an IP address",
    );
    assert_eq!(
        shown,
        "config: vif[0].pna[0].pna_address: \"300.1.1.1\" is not an IP address"
    );
    check(
        &with("/vif/0/pna/0/pna_address", json!("192.0.3.10")),
        "vif[0].pna[0].pna_address",
        "192.0.3.10 is not inside its network 192.0.2.0/24",
    );
    check(
        &with("/vif/0/pna/1/pna_address", json!("192.0.2.11")),
        "vif[0].pna[1].pna_address",
        "not inside",
    );
    check(
        &with("/vif/0/pna/0/pbn/pbn_network", json!("192.0.2.0")),
        "vif[0].pna[0].pbn.pbn_network",
        "CIDR",
    );
    check(
        &with("/vif/0/pna/0/pbn/pbn_network", json!("192.0.2.1/24")),
        "vif[0].pna[0].pbn.pbn_network",
        "host bits",
    );
    check(
        &with("/vif/0/pna/0/pbn/pbn_network", json!("192.0.2.0/33")),
        "vif[0].pna[0].pbn.pbn_network",
        "above 32",
    );
    check(
        &with("/vif/0/pna/0/pbn/pbn_gateway", json!("2001:db8::1")),
        "vif[0].pna[0].pbn.pbn_gateway",
        "is IPv6 but the network is IPv4",
    );
    check(
        &with("/vif/0/pna/0/pbn/pbn_gateway", json!("192.0.2.10")),
        "vif[0].pna[0].pbn.pbn_gateway",
        "the address itself",
    );
    let mut v = full();
    v["vif"][1]["pna"][0]["pbn"] = json!({"pbn_network": "10.20.0.0/16"});
    check(&text(&v), "vif[1].pna[0]", "has both pbn and pvn");
    v["vif"][1]["pna"][0] = json!({"pna_address": "10.20.0.5"});
    check(&text(&v), "vif[1].pna[0]", "has neither pbn nor pvn");
    check(
        &with("/vif/1/vif_number", json!(0)),
        "vif[1].vif_number",
        "vif 0 appears twice",
    );
    check(
        &with("/hninit/addresses/0/address", json!("2001:db8:0:2::5")),
        "hninit.addresses[0].address",
        "CIDR",
    );
    check(
        &with("/hninit/addresses/0/gateway", json!("10.0.0.1")),
        "hninit.addresses[0].gateway",
        "IPv4 but the network is IPv6",
    );
    check(
        &with("/hninit/addresses/0/interface", json!("eth0 up")),
        "hninit.addresses[0].interface",
        "not an interface name",
    );
    check(
        &with("/hninit/addresses/0/interface", json!("averyverylongname")),
        "hninit.addresses[0].interface",
        "1 to 15",
    );
    check(
        &with("/hninit/addresses/0/interface", json!("a/b")),
        "hninit.addresses[0].interface",
        "not an interface name",
    );
    check(
        &with("/hninit/routes/0/destination", json!("10.30.0.1/16")),
        "hninit.routes[0].destination",
        "host bits",
    );
    check(
        &with("/hninit/routes/0/gateway", json!("fe80::1")),
        "hninit.routes[0].gateway",
        "IPv6 but the network is IPv4",
    );
    check(
        &with("/hninit/routes/1/gateway", json!("gw")),
        "hninit.routes[1].gateway",
        "not an IP address",
    );
    check(
        &with("/hninit/interface_names", json!({"2": "x"})),
        "hninit.interface_names.2",
        "there is no vif 2",
    );
    check(
        &with("/hninit/interface_names", json!({"01": "x"})),
        "hninit.interface_names.01",
        "vif number",
    );
    check(
        &with("/hninit/interface_names", json!({"1": "eth0"})),
        "hninit.interface_names",
        "both be named \"eth0\"",
    );
    check(
        &with("/hninit/interface_names", json!({"1": "a b"})),
        "hninit.interface_names.1",
        "not an interface name",
    );
}

/// A name the first boot cannot write (`.eth0`: the renderer refused it after
/// the validator had accepted it, so the host booted without its network
/// configuration) is refused here, naming the field.
#[test]
fn interface_names_the_first_boot_cannot_write_are_refused() {
    for name in [".eth0", ".", ".."] {
        check(
            &with("/hninit/addresses/0/interface", json!(name)),
            "hninit.addresses[0].interface",
            "not an interface name",
        );
        check(
            &with("/hninit/interface_names", json!({"1": name})),
            "hninit.interface_names.1",
            "not an interface name",
        );
    }
    for name in ["eth0.5", "br-lan", "en_p1s0"] {
        parse(&with("/hninit/addresses/0/interface", json!(name))).unwrap();
    }
}

/// A host named like the machine itself (`localhost`) or like an address
/// (`127.0.0.1`) would make every program resolve it wrongly; `lo` is the
/// loopback interface, which the image configures itself.
#[test]
fn loopback_names_are_refused() {
    for host in ["localhost", "LOCALHOST", "localhost.localdomain", "127.0.0.1", "10.1", "2130706433"] {
        check(&with("/vm_hostname", json!(host)), "vm_hostname", "is not a valid host name");
    }
    for host in ["web1", "1host.example.org", "localhost1"] {
        parse(&with("/vm_hostname", json!(host))).unwrap();
    }
    check(
        &with("/hninit/addresses/0/interface", json!("lo")),
        "hninit.addresses[0].interface",
        "loopback",
    );
    check(
        &with("/hninit/interface_names", json!({"1": "lo"})),
        "hninit.interface_names.1",
        "loopback",
    );
}

/// A motd is shown on every login terminal: escape sequences (ESC and the other
/// control characters) could rewrite what the user sees; ssh key comments were
/// already refused with them.
#[test]
fn terminal_escapes_are_refused() {
    for motd in ["\u{1b}[2J\u{1b}]0;owned\u{7}", "a\rb", "bell\u{7}", "csi\u{9b}"] {
        check(&with("/hninit/motd", json!(motd)), "hninit.motd", "control character");
    }
    parse(&with("/hninit/motd", json!("Welcome.\n\tManaged by hninit.\n"))).unwrap();
    check(
        &with("/vm_conf/ssh_key", json!(format!("{ED25519}\u{1b}[2J"))),
        "vm_conf.ssh_key",
        "control character",
    );
}

#[test]
fn sizes_and_texts() {
    let huge = vec![b' '; 10 << 20];
    check(&huge, "", "10485760 bytes is larger than the limit of 262144 bytes");
    check(&vec![b' '; MAX_CONFIG + 1], "", "larger than the limit");
    check(
        &with("/vm_conf/run", json!("a".repeat(64 * 1024 + 1))),
        "vm_conf.run",
        "at most 65536",
    );
    check(&with("/vm_conf/run", json!("echo\u{0}x")), "vm_conf.run", "NUL");
    check(
        &with("/vm_conf/script_args", json!("a\nb")),
        "vm_conf.script_args",
        "one line",
    );
    check(
        &with("/vm_conf/script_args", json!("--name 'it")),
        "vm_conf.script_args",
        "an unbalanced ' quote",
    );
    check(
        &with("/hninit/motd", json!("m".repeat(64 * 1024 + 1))),
        "hninit.motd",
        "at most 65536",
    );
    check(
        &with("/hninit/identities", json!({"blob": "x".repeat(64 * 1024)})),
        "hninit.identities",
        "at most 65536",
    );
    check(
        &with("/hninit/identities", json!(["not", "an", "object"])),
        "hninit.identities",
        "invalid type",
    );
    for tz in [
        "../../etc/passwd",
        "Europe/../Paris",
        "Europe/Paris ",
        "/UTC",
        "Europe//Paris",
        "",
    ] {
        check(
            &with("/hninit/timezone", json!(tz)),
            "hninit.timezone",
            "not a time zone",
        );
    }
    for tz in ["UTC", "Etc/GMT+1", "America/Argentina/Buenos_Aires"] {
        parse(&with("/hninit/timezone", json!(tz))).unwrap();
    }
    check(
        &with("/hninit/sysctl", json!({"net/ipv4": "1"})),
        "hninit.sysctl[\"net/ipv4\"]",
        "not a sysctl key",
    );
    check(
        &with("/hninit/sysctl", json!({"Net.x": "1"})),
        "hninit.sysctl[\"Net.x\"]",
        "not a sysctl key",
    );
    check(
        &with("/hninit/sysctl", json!({"net..x": "1"})),
        "hninit.sysctl[\"net..x\"]",
        "not a sysctl key",
    );
    check(
        &with("/hninit/sysctl", json!({"vm.swappiness": "1\nkernel.x = 2"})),
        "hninit.sysctl[\"vm.swappiness\"]",
        "one non-empty line",
    );
}

#[test]
fn digest_is_canonical() {
    let a = parse(&text(&full())).unwrap();
    // Same document, keys reversed at every level, other whitespace, other case and IP spelling.
    fn reverse(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .rev()
                    .map(|(k, x)| format!("{}:\n  {}", Value::from(k.clone()), reverse(x)))
                    .collect();
                format!("{{ {} }}", parts.join(" ,\t"))
            }
            Value::Array(a) => format!("[{}]", a.iter().map(reverse).collect::<Vec<_>>().join(",")),
            x => x.to_string(),
        }
    }
    let mut v = full();
    v["vm_hostname"] = json!("WEB1.example.org");
    v["nameservers"][1] = json!("2001:db8:0:0::53");
    let b = parse(reverse(&v).as_bytes()).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.digest, b.digest);
    // The canonical form parses back to the same configuration and digest.
    let canon = canonical_json(&a.config);
    let c = parse(&canon).unwrap();
    assert_eq!(c.config, a.config);
    assert_eq!(c.digest, a.digest);
    assert!(c.warnings.is_empty());
    // A change is a different digest.
    let d = parse(&with("/hninit/timezone", json!("UTC"))).unwrap();
    assert_ne!(d.digest, a.digest);
}

#[test]
fn parse_file_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    let e = configparse::parse_file(&t.path().join("nope.json")).unwrap_err();
    assert!(e.to_string().contains("nope.json"), "{e}");
    fs::write(t.path().join("c.json"), text(&full())).unwrap();
    assert_eq!(
        configparse::parse_file(&t.path().join("c.json"))
            .unwrap()
            .config
            .vm_hostname,
        "web1.example.org"
    );
}

// ------------------------------------------------------------------ sources

/// Runs a command, panicking with its stderr on failure.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A 4 MiB swap "device" (`mkswap -L swap`) with `config` as the member
/// `./gandi/config` of a ustar archive at byte 524288, and 0xAA bytes after the
/// archive's 10 KiB record so that an overlong wipe shows. Returns its path.
fn swap_fixture(dir: &Path, config: &[u8]) -> PathBuf {
    let dev = dir.join("swap.img");
    fs::write(&dev, vec![0u8; 4 << 20]).unwrap();
    run(Command::new("mkswap").arg("-L").arg("swap").arg(&dev));
    let src = dir.join("src");
    fs::create_dir_all(src.join("gandi")).unwrap();
    fs::write(src.join("gandi/config"), config).unwrap();
    let archive = run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--format=ustar", "-cf", "-", "./gandi/config"]));
    let f = fs::OpenOptions::new().write(true).open(&dev).unwrap();
    f.write_all_at(&archive, ARCHIVE_OFFSET).unwrap();
    f.write_all_at(&[0xAA; 4096], ARCHIVE_OFFSET + archive.len() as u64)
        .unwrap();
    dev
}

/// What the device scan would report for `path`.
fn blockdev(path: &Path) -> BlockDev {
    BlockDev {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        path: path.to_path_buf(),
        size_bytes: fs::metadata(path).unwrap().len(),
        superblock: probe::probe_path(path).unwrap(),
        ..Default::default()
    }
}

#[test]
fn swap_device_archive_is_read_and_wiped() {
    let t = tempfile::tempdir().unwrap();
    let hostpart = t.path().join("hostpart");
    fs::create_dir(&hostpart).unwrap();
    let config = text(&full());
    let dev = swap_fixture(t.path(), &config);
    let before = probe::probe_path(&dev).unwrap().unwrap();
    assert_eq!((before.fstype, before.label.as_deref()), (FsType::Swap, Some("swap")));
    let header_before = fs::read(&dev).unwrap()[..4096].to_vec();

    let devs = vec![blockdev(&dev)];
    assert_eq!(configsource::choose_candidates(&devs), std::slice::from_ref(&dev));
    let found = find_config(None, &devs, &hostpart)
        .unwrap()
        .expect("the archive is found");
    assert_eq!(found.source.origin, Origin::SwapDevice);
    assert_eq!(found.parsed.config.vm_hostname, "web1.example.org");
    assert_eq!(found.parsed.digest, parse(&config).unwrap().digest);
    let shown = found.source.to_string();
    assert!(
        shown.contains("swap.img") && shown.contains("LABEL=swap") && shown.contains("member gandi/config"),
        "{shown}"
    );
    let (offset, len) = found.source.wipe_range().unwrap();
    assert_eq!(offset, ARCHIVE_OFFSET);
    // Header, data blocks, two end blocks.
    assert_eq!(len as usize, 512 + config.len().div_ceil(512) * 512 + 1024);

    assert_eq!(found.source.wipe().unwrap(), len);
    let after = fs::read(&dev).unwrap();
    assert!(
        after[offset as usize..(offset + len) as usize].iter().all(|&b| b == 0),
        "archive bytes are zero"
    );
    assert_eq!(&after[..4096], &header_before[..], "the swap header is untouched");
    let tail = ARCHIVE_OFFSET as usize + 10240;
    assert!(
        after[tail..tail + 4096].iter().all(|&b| b == 0xAA),
        "bytes past the archive are untouched"
    );
    assert_eq!(
        probe::probe_path(&dev).unwrap(),
        Some(before.clone()),
        "still a swap, same label and UUID"
    );
    // blkid agrees, where it is installed.
    if let Ok(out) = Command::new("blkid").args(["-p", "-o", "export"]).arg(&dev).output() {
        let blkid = String::from_utf8_lossy(&out.stdout);
        assert!(blkid.contains("TYPE=swap") && blkid.contains("LABEL=swap"), "{blkid}");
    }
    // The configuration is gone: nothing found any more.
    assert!(find_config(None, &devs, &hostpart).unwrap().is_none());
    // Wiping again is refused: the bytes are not what was read.
    assert!(matches!(found.source.wipe(), Err(SourceError::Wipe { .. })));
}

#[test]
fn damaged_swap_archive_is_an_error_naming_the_device() {
    let t = tempfile::tempdir().unwrap();
    let dev = swap_fixture(t.path(), &text(&full()));
    let f = fs::OpenOptions::new().write(true).open(&dev).unwrap();
    f.write_all_at(b"G", ARCHIVE_OFFSET + 2).unwrap(); // "./gandi" → "./Gandi": checksum fails
    let e = find_config(None, &[blockdev(&dev)], t.path()).unwrap_err();
    let shown = e.to_string();
    assert!(matches!(e, SourceError::Tar { .. }), "{shown}");
    assert!(
        shown.contains("swap.img") && shown.contains("checksum") && shown.contains("524288"),
        "{shown}"
    );

    // A valid archive with an invalid config: the config error, with the device.
    let dev = swap_fixture(t.path(), &with("/nameservers/0", json!("1.2.3")));
    let e = find_config(None, &[blockdev(&dev)], t.path()).unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("swap.img") && shown.contains("nameservers[0]"),
        "{shown}"
    );
}

#[test]
fn a_swap_without_archive_is_skipped() {
    let t = tempfile::tempdir().unwrap();
    let dev = t.path().join("plain-swap.img");
    fs::write(&dev, vec![0u8; 4 << 20]).unwrap();
    run(Command::new("mkswap").arg("-L").arg("swap").arg(&dev));
    // Leftover swap pages at 524288: not a tar header, not an error.
    let f = fs::OpenOptions::new().write(true).open(&dev).unwrap();
    f.write_all_at(&[0x5A; 8192], ARCHIVE_OFFSET).unwrap();
    fs::create_dir(t.path().join("second")).unwrap();
    let dev2 = swap_fixture(&t.path().join("second"), &text(&full()));
    let found = find_config(None, &[blockdev(&dev), blockdev(&dev2)], t.path())
        .unwrap()
        .unwrap();
    assert_eq!(found.source.path, dev2);
}

#[test]
fn explicit_device_archive_offset_and_json() {
    let t = tempfile::tempdir().unwrap();
    let dev = swap_fixture(t.path(), &text(&full()));
    let devs = vec![blockdev(&dev)];
    let found = find_config(Some("LABEL=swap@524288"), &devs, t.path())
        .unwrap()
        .unwrap();
    assert_eq!(found.source.origin, Origin::Explicit);
    assert!(found.source.to_string().starts_with("hn.config "), "{}", found.source);
    // Without @: not JSON at byte 0, so the archive at 524288.
    assert!(find_config(Some("LABEL=swap"), &devs, t.path()).unwrap().is_some());
    // Nothing at the given offset: an error, not "no config".
    let e = find_config(Some("LABEL=swap@1048576"), &devs, t.path()).unwrap_err();
    assert!(e.to_string().contains("no tar archive at byte 1048576"), "{e}");
    let e = find_config(Some("LABEL=nope"), &devs, t.path()).unwrap_err();
    assert!(matches!(e, SourceError::NotFound { .. }), "{e}");
    let e = find_config(Some("nonsense"), &devs, t.path()).unwrap_err();
    assert!(matches!(e, SourceError::Arg { .. }), "{e}");

    // JSON at byte 0 of a device (named by PARTLABEL), then zeros.
    let jdev = t.path().join("cfg.img");
    let cfg = text(&full());
    let mut img = cfg.clone();
    img.resize(1 << 20, 0);
    fs::write(&jdev, &img).unwrap();
    let mut bd = blockdev(&jdev);
    bd.partname = Some("cfg".into());
    let found = find_config(Some("PARTLABEL=cfg"), &[bd], t.path()).unwrap().unwrap();
    assert!(found.source.detail.contains("JSON at byte 0"), "{}", found.source);
    assert_eq!(found.source.wipe().unwrap() as usize, cfg.len().div_ceil(512) * 512);
    assert!(fs::read(&jdev).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn host_files_and_last_applied() {
    let t = tempfile::tempdir().unwrap();
    let hp = t.path();
    assert!(find_config(None, &[], hp).unwrap().is_none(), "a fresh host");
    fs::create_dir(hp.join("hn-state")).unwrap();
    let state = RealDir::open(&hp.join("hn-state"), false).unwrap();

    // Last applied: only valid JSON is kept, mode 0600.
    let applied = parse(&with("/vm_hostname", json!("applied"))).unwrap();
    let e = save_last_applied(&state, b"{\"vm_hostname\": \"bad_name\"}").unwrap_err();
    assert!(e.to_string().contains("vm_hostname"), "{e}");
    save_last_applied(&state, &canonical_json(&applied.config)).unwrap();
    let mode = fs::metadata(hp.join(configsource::LAST_APPLIED))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let last = load_last_applied(hp).unwrap().unwrap();
    assert_eq!(last.parsed.digest, applied.digest);
    assert_eq!(last.source.origin, Origin::LastApplied);
    assert_eq!(last.source.wipe_range(), None);
    assert_eq!(last.source.wipe().unwrap(), 0);
    assert_eq!(
        find_config(None, &[], hp).unwrap().unwrap().source.origin,
        Origin::LastApplied
    );

    // host.json comes before it, and a bad host.json is an error.
    fs::write(hp.join(configsource::HOST_JSON), text(&full())).unwrap();
    let f = find_config(None, &[], hp).unwrap().unwrap();
    assert_eq!(f.source.origin, Origin::HostJson);
    assert_eq!(f.parsed.config.vm_hostname, "web1.example.org");
    fs::write(hp.join(configsource::HOST_JSON), b"{\"vm_hostname\": 1}").unwrap();
    // On an instantiated host (config.json exists): a warning, the stored config.
    let f = find_config(None, &[], hp).unwrap().unwrap();
    assert_eq!(f.source.origin, Origin::LastApplied);
    // On a fresh host: an error naming the file and the field.
    fs::rename(hp.join(configsource::LAST_APPLIED), hp.join("hn-state/kept.json")).unwrap();
    let e = find_config(None, &[], hp).unwrap_err();
    assert!(
        e.to_string().contains("host.json") && e.to_string().contains("vm_hostname"),
        "{e}"
    );
    fs::rename(hp.join("hn-state/kept.json"), hp.join(configsource::LAST_APPLIED)).unwrap();
    fs::remove_file(hp.join(configsource::HOST_JSON)).unwrap();

    // The swap archive comes before both.
    fs::create_dir(hp.join("dev")).unwrap();
    let dev = swap_fixture(&hp.join("dev"), &with("/vm_hostname", json!("from-swap")));
    let f = find_config(None, &[blockdev(&dev)], hp).unwrap().unwrap();
    assert_eq!(f.parsed.config.vm_hostname, "from-swap");

    // hn.config=/PATH: a file on the host partition; missing is an error of the
    // reader (on this instantiated host, find_config then keeps the stored config).
    fs::write(hp.join("hn-state/custom.json"), text(&full())).unwrap();
    let f = find_config(Some("/hn-state/custom.json"), &[blockdev(&dev)], hp)
        .unwrap()
        .unwrap();
    assert_eq!(f.source.origin, Origin::Explicit);
    assert!(f.source.path.ends_with("hn-state/custom.json"));
    let e = configsource::read_explicit(&ConfigArg::parse("/hn-state/missing.json").unwrap(), &[], hp).unwrap_err();
    assert!(e.to_string().contains("missing.json"), "{e}");
    // It cannot escape the host partition through a symlink.
    std::os::unix::fs::symlink("/etc/passwd", hp.join("hn-state/evil.json")).unwrap();
    assert!(configsource::read_explicit(&ConfigArg::parse("/hn-state/evil.json").unwrap(), &[], hp).is_err());
    assert!(matches!(
        ConfigArg::parse("/hn-state/../x"),
        Err(SourceError::Arg { .. })
    ));
    // A directory is not a config.
    let e = configsource::read_explicit(&ConfigArg::parse("/hn-state").unwrap(), &[], hp).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

/// A raw tar archive (a backup: members, none of them a config) at byte 524288
/// of a device without any signature.
fn raw_tar_fixture(dir: &Path) -> PathBuf {
    let dev = dir.join("data.img");
    fs::write(&dev, vec![0u8; 2 << 20]).unwrap();
    let src = dir.join("backup");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/motd"), b"a backup\n").unwrap();
    let archive = run(Command::new("tar").arg("-C").arg(&src).args(["--format=ustar", "-cf", "-", "./etc/motd"]));
    fs::OpenOptions::new().write(true).open(&dev).unwrap().write_all_at(&archive, ARCHIVE_OFFSET).unwrap();
    dev
}

/// The trust table of docs/config.md ("Which sources are trusted") on real
/// device images, each row on a fresh host and on an instantiated one
/// (`hn-state/config.json` present). The pure rows are in `config::trust`.
#[test]
fn trust_policy_on_real_devices() {
    let t = tempfile::tempdir().unwrap();
    let hp = t.path().join("hostpart");
    fs::create_dir_all(hp.join("hn-state")).unwrap();
    let stored = parse(&with("/vm_hostname", json!("stored"))).unwrap();
    let instantiate = |yes: bool| {
        let p = hp.join(configsource::LAST_APPLIED);
        if yes {
            save_last_applied(&RealDir::open(&hp.join("hn-state"), false).unwrap(), &canonical_json(&stored.config)).unwrap();
        } else {
            let _ = fs::remove_file(p);
        }
    };
    let host_of = |r: Result<Option<hninit::config::source::Found>, SourceError>| -> Result<Option<String>, String> {
        r.map(|f| f.map(|f| f.parsed.config.vm_hostname)).map_err(|e| e.to_string())
    };

    // A device without any signature at a fixed path (/dev/vdb) holding a raw tar
    // backup: not a source, fresh or instantiated (it used to fail the boot).
    fs::create_dir(t.path().join("raw")).unwrap();
    let mut raw = blockdev(&raw_tar_fixture(&t.path().join("raw")));
    raw.aliases = vec![PathBuf::from("/dev/vdb")];
    assert_eq!(raw.superblock, None);
    assert!(configsource::choose_candidates(std::slice::from_ref(&raw)).is_empty());
    instantiate(false);
    assert_eq!(host_of(find_config(None, std::slice::from_ref(&raw), &hp)), Ok(None));
    instantiate(true);
    assert_eq!(host_of(find_config(None, std::slice::from_ref(&raw), &hp)), Ok(Some("stored".into())));
    // ... unless the command line names it (then it is read, and its lack of a
    // config is an error on a fresh host, a warning on an instantiated one).
    let mut named = raw.clone();
    named.partname = Some("backup".into());
    instantiate(false);
    let e = host_of(find_config(Some("PARTLABEL=backup@524288"), std::slice::from_ref(&named), &hp)).unwrap_err();
    assert!(e.contains("no member gandi/config"), "{e}");
    instantiate(true);
    assert_eq!(host_of(find_config(Some("PARTLABEL=backup@524288"), std::slice::from_ref(&named), &hp)), Ok(Some("stored".into())));

    // PARTLABEL gandiswap without a swap signature: not a source.
    let mut gs = raw.clone();
    gs.aliases.clear();
    gs.partname = Some("gandiswap".into());
    assert!(configsource::choose_candidates(&[gs]).is_empty());

    // A swap device whose archive has no config: fresh → error; instantiated → stored.
    fs::create_dir(t.path().join("nocfg")).unwrap();
    let nocfg = t.path().join("nocfg/swap.img");
    fs::write(&nocfg, vec![0u8; 4 << 20]).unwrap();
    run(Command::new("mkswap").arg("-L").arg("swap").arg(&nocfg));
    let src = raw_tar_fixture(&t.path().join("nocfg"));
    let bytes = fs::read(&src).unwrap();
    fs::OpenOptions::new().write(true).open(&nocfg).unwrap().write_all_at(&bytes[ARCHIVE_OFFSET as usize..ARCHIVE_OFFSET as usize + 10240], ARCHIVE_OFFSET).unwrap();
    let nocfg = blockdev(&nocfg);
    instantiate(false);
    assert!(host_of(find_config(None, std::slice::from_ref(&nocfg), &hp)).unwrap_err().contains("no member gandi/config"));
    instantiate(true);
    assert_eq!(host_of(find_config(None, std::slice::from_ref(&nocfg), &hp)), Ok(Some("stored".into())));

    // A swap device with a valid config: fixed media applies on both (the
    // platform's update); removable media (a USB stick) only on a fresh host.
    fs::create_dir(t.path().join("swap")).unwrap();
    let swap = blockdev(&swap_fixture(&t.path().join("swap"), &with("/vm_hostname", json!("from-swap"))));
    let mut usb = swap.clone();
    usb.removable = true;
    for inst in [false, true] {
        instantiate(inst);
        assert_eq!(host_of(find_config(None, std::slice::from_ref(&swap), &hp)), Ok(Some("from-swap".into())), "fixed, instantiated={inst}");
        let want = if inst { "stored" } else { "from-swap" };
        assert_eq!(host_of(find_config(None, std::slice::from_ref(&usb), &hp)), Ok(Some(want.into())), "usb, instantiated={inst}");
    }
    // Named by hn.config=, removable media applies on an instantiated host too.
    let mut usb_named = usb.clone();
    usb_named.partname = Some("stick".into());
    assert_eq!(host_of(find_config(Some("PARTLABEL=stick"), &[usb_named], &hp)), Ok(Some("from-swap".into())));

    // hn.config= naming nothing: fresh → error; instantiated → stored.
    instantiate(false);
    assert!(host_of(find_config(Some("LABEL=nope"), &[], &hp)).is_err());
    instantiate(true);
    assert_eq!(host_of(find_config(Some("LABEL=nope"), &[], &hp)), Ok(Some("stored".into())));

    // The stored config itself damaged (a FIFO): an error naming it, never blocking.
    fs::remove_file(hp.join(configsource::LAST_APPLIED)).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, hp.join(configsource::LAST_APPLIED), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
    let e = host_of(find_config(None, &[], &hp)).unwrap_err();
    assert!(e.contains("config.json is a FIFO"), "{e}");
}
