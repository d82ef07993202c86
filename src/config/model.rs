//! The host configuration a generic image is instantiated from: Gandi's JSON
//! format (`vm_hostname`, `nameservers`, `vif[].pna[]`, `vm_conf`) plus hninit's
//! own keys under a top-level `"hninit"` object, so Gandi's documents stay valid
//! as they are. This module holds the types only; `configparse` reads and
//! validates them, `render` turns them into files.
//!
//! `configparse` reads a document with small readers of its own, not with the
//! derived `Deserialize` (too big for /init, which does not link it); the
//! derive and its attributes stay as the reference those readers are tested
//! against, field by field and message by message. A new field goes in both.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A validated host configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    pub vm_hostname: String,
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub vif: Vec<Vif>,
    #[serde(default)]
    pub vm_conf: Option<VmConf>,
    #[serde(default)]
    pub hninit: Option<Extra>,
}

/// One virtual interface; `vif_number` N is the interface `ethN` unless
/// `hninit.interface_names` says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vif {
    pub vif_number: u32,
    #[serde(default)]
    pub pna: Vec<Pna>,
}

/// An address on an interface, on a public (`pbn`) or private (`pvn`) network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pna {
    /// IPv4 or IPv6 address, without prefix length (the network gives it).
    pub pna_address: String,
    #[serde(default)]
    pub pbn: Option<Pbn>,
    #[serde(default)]
    pub pvn: Option<Pvn>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pbn {
    /// CIDR, e.g. `192.0.2.0/24`.
    pub pbn_network: String,
    #[serde(default)]
    pub pbn_gateway: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pvn {
    pub pvn_network: String,
    #[serde(default)]
    pub pvn_gateway: Option<String>,
}

/// Gandi's user section: one user, a crypt hash, one key, a command run once after boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConf {
    #[serde(default)]
    pub user: Option<String>,
    /// A crypt(3) hash (`$y$`, `$6$`, `$5$`, `$2b$`); plaintext is refused.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ssh_key: Option<String>,
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub script_args: Option<String>,
}

/// hninit's additions (unknown keys here are refused).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extra {
    #[serde(default)]
    pub users: Vec<User>,
    /// Addresses beyond Gandi's, e.g. IPv6: `{"interface": "eth0", "address": "2001:db8::2/64", "gateway": "2001:db8::1"}`.
    #[serde(default)]
    pub addresses: Vec<Address>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// vif number → interface name in the image (default `eth<N>`).
    #[serde(default)]
    pub interface_names: BTreeMap<String, String>,
    /// IANA zone, e.g. `Europe/Paris`.
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub motd: Option<String>,
    /// Free-form, written as `/etc/hninit/identity.json`.
    #[serde(default)]
    pub identities: Option<serde_json::Map<String, serde_json::Value>>,
    /// `key = value` lines for `/etc/sysctl.d/60-hninit.conf`.
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    /// The booted system's platform duties (rules in `config::platform`); an
    /// absent field takes the image's default (`/etc/hninit/runtime.json`),
    /// then the built-in one.
    #[serde(default)]
    pub data_disks: Option<DataDisks>,
    #[serde(default)]
    pub swap: Option<Swap>,
    #[serde(default)]
    pub hotplug: Option<Hotplug>,
    #[serde(default)]
    pub sshd: Option<Sshd>,
    #[serde(default)]
    pub console: Option<Console>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub sudo: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub interface: String,
    /// With prefix length: `2001:db8::2/64`, `10.1.2.3/24`.
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub interface: String,
    /// CIDR or `default`.
    pub destination: String,
    pub gateway: String,
}

/// `hninit.data_disks`: attached disks mounted at `<mount_root>/<label>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDisks {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub mount_root: Option<String>,
    /// Comma-separated mount options (`nosuid,nodev,noatime`).
    #[serde(default)]
    pub options: Option<String>,
    /// Seconds without access before an automounted disk is unmounted; 0: never.
    #[serde(default)]
    pub idle_timeout: Option<u32>,
}

/// `hninit.swap`: the Gandi swap disk enabled as swap once its archive is wiped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Swap {
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `hninit.hotplug`: hot-added CPUs and memory brought online.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hotplug {
    #[serde(default)]
    pub cpu: Option<bool>,
    #[serde(default)]
    pub memory: Option<bool>,
}

/// `hninit.sshd`: Gandi's sshd policy as a drop-in (`CONFIG_SSHD`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sshd {
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `prohibit-password` (the policy's), `no` or `yes`.
    #[serde(default)]
    pub permit_root_login: Option<String>,
    #[serde(default)]
    pub password_authentication: Option<bool>,
    #[serde(default)]
    pub compression: Option<bool>,
    /// Whether [`Sshd::management_key`] is installed for root (`CONFIG_SSHMGMT`).
    #[serde(default)]
    pub management: Option<bool>,
    /// The hosting provider's management key: one ssh public key line.
    #[serde(default)]
    pub management_key: Option<String>,
}

/// `hninit.console`: a login prompt on the hosting emergency console.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    #[serde(default)]
    pub enabled: Option<bool>,
}
