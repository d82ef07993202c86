//! The document readers: a `serde_json::Value` to a [`HostConfig`] (Gandi's
//! fields, then the `hninit` object), with serde's wording and the JSON path of
//! each type or field error; the shape checks serde would not make (an object
//! where a struct is expected) and the warnings for unknown Gandi fields. No
//! rule about values here: `rules` validates what these read.

use crate::config::error::{err, key_path, ConfigError};
use crate::config::json::{kind, JsonPath};
use crate::config::model::{Address, Console, DataDisks, Extra, HostConfig, Hotplug, Pbn, Pna, Pvn, Route, Sshd, Swap, User, Vif, VmConf};
use serde::de::{self, Unexpected};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// A type or field error while reading a [`HostConfig`] from a `Value`, with
/// the path of the value it is about.
#[derive(Debug)]
pub(crate) struct DeError {
    pub(crate) message: String,
    pub(crate) path: Option<String>,
}

impl DeError {
    fn at(mut self, path: &JsonPath) -> Self {
        if self.path.is_none() {
            self.path = Some(path.render());
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

/// serde's wording for every message (`missing_field`, `unknown_field`, …).
impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { message: msg.to_string(), path: None }
    }

    fn invalid_type(unexp: Unexpected, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!("invalid type: {}, expected {exp}", JsonUnexpected(unexp)))
    }

    fn invalid_value(unexp: Unexpected, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!("invalid value: {}, expected {exp}", JsonUnexpected(unexp)))
    }
}

/// Values named as serde_json names them: `null`, and floats in JSON's own
/// notation (`1e+300`).
struct JsonUnexpected<'a>(Unexpected<'a>);

impl fmt::Display for JsonUnexpected<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unexpected::Unit => f.write_str("null"),
            Unexpected::Float(v) => match serde_json::Number::from_f64(v) {
                Some(n) => write!(f, "floating point `{n}`"),
                None => f.write_str("floating point"),
            },
            other => other.fmt(f),
        }
    }
}

/// What serde's messages call a value ("invalid type: string \"0\", expected u32").
fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (None, Some(i)) => Unexpected::Signed(i),
            _ => Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

// The document is read into a HostConfig by the small readers below rather than
// by serde's derived Deserialize: the derive, instantiated for every field type,
// was ~43 KB of /init, these are a few KB. They follow the derive's rules (members
// in document order, `null` for an absent Option, missing required fields checked
// after the members in declaration order) and use its wording through
// `de::Error`; a test checks them against the derive, which `hostconfig` keeps
// as the reference.

type DeResult<T> = Result<T, DeError>;
type Reader<T> = fn(&Value, &JsonPath) -> DeResult<T>;

fn wrong_type(v: &Value, expected: &str, path: &JsonPath) -> DeError {
    <DeError as de::Error>::invalid_type(unexpected(v), &expected).at(path)
}

fn string(v: &Value, path: &JsonPath) -> DeResult<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(wrong_type(v, "a string", path)),
    }
}

fn uint(v: &Value, path: &JsonPath) -> DeResult<u32> {
    let e = match (v.as_u64(), v.as_i64()) {
        (Some(u), _) => match u32::try_from(u) {
            Ok(u) => return Ok(u),
            Err(_) => <DeError as de::Error>::invalid_value(Unexpected::Unsigned(u), &"u32"),
        },
        (None, Some(i)) => <DeError as de::Error>::invalid_value(Unexpected::Signed(i), &"u32"),
        _ => wrong_type(v, "u32", path),
    };
    Err(e.at(path))
}

fn boolean(v: &Value, path: &JsonPath) -> DeResult<bool> {
    v.as_bool().ok_or_else(|| wrong_type(v, "a boolean", path))
}

/// `null` is `None`.
fn optional<T>(v: &Value, path: &JsonPath, read: Reader<T>) -> DeResult<Option<T>> {
    if v.is_null() {
        Ok(None)
    } else {
        read(v, path).map(Some)
    }
}

fn list<T>(v: &Value, path: &JsonPath, read: Reader<T>) -> DeResult<Vec<T>> {
    let Value::Array(a) = v else {
        return Err(wrong_type(v, "a sequence", path));
    };
    a.iter().enumerate().map(|(i, x)| read(x, &JsonPath::Index(path, i))).collect()
}

fn object<'a>(v: &'a Value, path: &JsonPath) -> DeResult<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| wrong_type(v, "a map", path))
}

fn string_map(v: &Value, path: &JsonPath) -> DeResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, x) in object(v, path)? {
        // (Inserted one by one: collecting would sort, another sort instance.)
        out.insert(k.clone(), string(x, &JsonPath::Key(path, k))?);
    }
    Ok(out)
}

/// Calls `field` for each member of the object `v` that is in `known`; any
/// other member is an error if `deny`, else skipped.
fn members(
    v: &Value,
    path: &JsonPath,
    known: &'static [&'static str],
    deny: bool,
    field: &mut dyn FnMut(&str, &Value, &JsonPath) -> DeResult<()>,
) -> DeResult<()> {
    let Value::Object(m) = v else {
        return Err(wrong_type(v, "an object", path));
    };
    for (k, x) in m {
        let at = JsonPath::Key(path, k);
        if known.contains(&k.as_str()) {
            field(k, x, &at)?;
        } else if deny {
            return Err(<DeError as de::Error>::unknown_field(k, known).at(&at));
        }
    }
    Ok(())
}

fn required<T>(v: Option<T>, name: &'static str, path: &JsonPath) -> DeResult<T> {
    v.ok_or_else(|| <DeError as de::Error>::missing_field(name).at(path))
}

pub(crate) fn host_config(v: &Value) -> DeResult<HostConfig> {
    let path = &JsonPath::Root;
    let mut c = HostConfig::default();
    let mut hostname = None;
    members(v, path, TOP_FIELDS, false, &mut |k, x, p| {
        match k {
            "vm_hostname" => hostname = Some(string(x, p)?),
            "nameservers" => c.nameservers = list(x, p, string)?,
            "vif" => c.vif = list(x, p, vif)?,
            "vm_conf" => c.vm_conf = optional(x, p, vm_conf)?,
            "hninit" => c.hninit = optional(x, p, extra)?,
            _ => {}
        }
        Ok(())
    })?;
    c.vm_hostname = required(hostname, "vm_hostname", path)?;
    Ok(c)
}

fn vif(v: &Value, path: &JsonPath) -> DeResult<Vif> {
    let mut pna = Vec::new();
    let mut number = None;
    members(v, path, VIF_FIELDS, false, &mut |k, x, p| {
        match k {
            "vif_number" => number = Some(uint(x, p)?),
            "pna" => pna = list(x, p, address_pna)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(Vif { vif_number: required(number, "vif_number", path)?, pna })
}

fn address_pna(v: &Value, path: &JsonPath) -> DeResult<Pna> {
    let (mut address, mut pbn, mut pvn) = (None, None, None);
    members(v, path, PNA_FIELDS, false, &mut |k, x, p| {
        match k {
            "pna_address" => address = Some(string(x, p)?),
            "pbn" => pbn = optional(x, p, |v, p| network(v, p, PBN_FIELDS))?,
            "pvn" => pvn = optional(x, p, |v, p| network(v, p, PVN_FIELDS))?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(Pna {
        pna_address: required(address, "pna_address", path)?,
        pbn: pbn.map(|(pbn_network, pbn_gateway)| Pbn { pbn_network, pbn_gateway }),
        pvn: pvn.map(|(pvn_network, pvn_gateway)| Pvn { pvn_network, pvn_gateway }),
    })
}

/// `pbn` (public) or `pvn` (private): a network and an optional gateway, the
/// two `fields`.
fn network(v: &Value, path: &JsonPath, fields: &'static [&'static str]) -> DeResult<(String, Option<String>)> {
    let (mut network, mut gateway) = (None, None);
    members(v, path, fields, false, &mut |k, x, p| {
        if k == fields[0] {
            network = Some(string(x, p)?);
        } else {
            gateway = optional(x, p, string)?;
        }
        Ok(())
    })?;
    Ok((required(network, fields[0], path)?, gateway))
}

fn vm_conf(v: &Value, path: &JsonPath) -> DeResult<VmConf> {
    let mut c = VmConf::default();
    members(v, path, VM_CONF_FIELDS, false, &mut |k, x, p| {
        let value = optional(x, p, string)?;
        match k {
            "user" => c.user = value,
            "password" => c.password = value,
            "ssh_key" => c.ssh_key = value,
            "run" => c.run = value,
            "script_args" => c.script_args = value,
            _ => {}
        }
        Ok(())
    })?;
    Ok(c)
}

const EXTRA_FIELDS: &[&str] = &[
    "users", "addresses", "routes", "interface_names", "timezone", "motd", "identities", "sysctl", "data_disks", "swap", "hotplug", "sshd",
    "console",
];
/// The members of `hninit` that are also the image-wide defaults file's.
pub(crate) const PLATFORM_FIELDS: &[&str] = &["data_disks", "swap", "hotplug", "sshd", "console"];
const DATA_DISKS_FIELDS: &[&str] = &["enabled", "mount_root", "options", "idle_timeout"];
const SWAP_FIELDS: &[&str] = &["enabled"];
const HOTPLUG_FIELDS: &[&str] = &["cpu", "memory"];
const SSHD_FIELDS: &[&str] = &["enabled", "permit_root_login", "password_authentication", "compression", "management", "management_key"];
const CONSOLE_FIELDS: &[&str] = &["enabled"];
const USER_FIELDS: &[&str] = &["name", "password", "ssh_keys", "groups", "shell", "uid", "sudo"];
const ADDRESS_FIELDS: &[&str] = &["interface", "address", "gateway"];
const ROUTE_FIELDS: &[&str] = &["interface", "destination", "gateway"];

fn extra(v: &Value, path: &JsonPath) -> DeResult<Extra> {
    let mut x = Extra::default();
    members(v, path, EXTRA_FIELDS, true, &mut |k, v, p| {
        match k {
            "users" => x.users = list(v, p, user)?,
            "addresses" => x.addresses = list(v, p, address)?,
            "routes" => x.routes = list(v, p, route)?,
            "interface_names" => x.interface_names = string_map(v, p)?,
            "timezone" => x.timezone = optional(v, p, string)?,
            "motd" => x.motd = optional(v, p, string)?,
            "identities" => x.identities = optional(v, p, |v, p| object(v, p).cloned())?,
            "sysctl" => x.sysctl = string_map(v, p)?,
            "data_disks" | "swap" | "hotplug" | "sshd" | "console" => platform_field(&mut x, k, v, p)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(x)
}

/// One of [`PLATFORM_FIELDS`] into `x` (shared with the image-wide defaults file).
pub(crate) fn platform_field(x: &mut Extra, k: &str, v: &Value, p: &JsonPath) -> DeResult<()> {
    match k {
        "data_disks" => x.data_disks = optional(v, p, data_disks)?,
        "swap" => x.swap = optional(v, p, swap)?,
        "hotplug" => x.hotplug = optional(v, p, hotplug)?,
        "sshd" => x.sshd = optional(v, p, sshd)?,
        "console" => x.console = optional(v, p, console)?,
        _ => {}
    }
    Ok(())
}

/// The image-wide defaults file: an object with only [`PLATFORM_FIELDS`].
pub(crate) fn platform_defaults(v: &Value) -> DeResult<Extra> {
    let mut x = Extra::default();
    members(v, &JsonPath::Root, PLATFORM_FIELDS, true, &mut |k, v, p| platform_field(&mut x, k, v, p))?;
    Ok(x)
}

fn data_disks(v: &Value, path: &JsonPath) -> DeResult<DataDisks> {
    let mut d = DataDisks::default();
    members(v, path, DATA_DISKS_FIELDS, true, &mut |k, x, p| {
        match k {
            "enabled" => d.enabled = optional(x, p, boolean)?,
            "mount_root" => d.mount_root = optional(x, p, string)?,
            "options" => d.options = optional(x, p, string)?,
            "idle_timeout" => d.idle_timeout = optional(x, p, uint)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(d)
}

fn swap(v: &Value, path: &JsonPath) -> DeResult<Swap> {
    let mut s = Swap::default();
    members(v, path, SWAP_FIELDS, true, &mut |_, x, p| {
        s.enabled = optional(x, p, boolean)?;
        Ok(())
    })?;
    Ok(s)
}

fn hotplug(v: &Value, path: &JsonPath) -> DeResult<Hotplug> {
    let mut h = Hotplug::default();
    members(v, path, HOTPLUG_FIELDS, true, &mut |k, x, p| {
        let b = optional(x, p, boolean)?;
        if k == "cpu" {
            h.cpu = b;
        } else {
            h.memory = b;
        }
        Ok(())
    })?;
    Ok(h)
}

fn sshd(v: &Value, path: &JsonPath) -> DeResult<Sshd> {
    let mut s = Sshd::default();
    members(v, path, SSHD_FIELDS, true, &mut |k, x, p| {
        match k {
            "enabled" => s.enabled = optional(x, p, boolean)?,
            "permit_root_login" => s.permit_root_login = optional(x, p, string)?,
            "password_authentication" => s.password_authentication = optional(x, p, boolean)?,
            "compression" => s.compression = optional(x, p, boolean)?,
            "management" => s.management = optional(x, p, boolean)?,
            "management_key" => s.management_key = optional(x, p, string)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(s)
}

fn console(v: &Value, path: &JsonPath) -> DeResult<Console> {
    let mut c = Console::default();
    members(v, path, CONSOLE_FIELDS, true, &mut |_, x, p| {
        c.enabled = optional(x, p, boolean)?;
        Ok(())
    })?;
    Ok(c)
}

fn user(v: &Value, path: &JsonPath) -> DeResult<User> {
    let mut u = User::default();
    let mut name = None;
    members(v, path, USER_FIELDS, true, &mut |k, x, p| {
        match k {
            "name" => name = Some(string(x, p)?),
            "password" => u.password = optional(x, p, string)?,
            "ssh_keys" => u.ssh_keys = list(x, p, string)?,
            "groups" => u.groups = list(x, p, string)?,
            "shell" => u.shell = optional(x, p, string)?,
            "uid" => u.uid = optional(x, p, uint)?,
            "sudo" => u.sudo = boolean(x, p)?,
            _ => {}
        }
        Ok(())
    })?;
    u.name = required(name, "name", path)?;
    Ok(u)
}

fn address(v: &Value, path: &JsonPath) -> DeResult<Address> {
    let (mut interface, mut address, mut gateway) = (None, None, None);
    members(v, path, ADDRESS_FIELDS, true, &mut |k, x, p| {
        match k {
            "interface" => interface = Some(string(x, p)?),
            "address" => address = Some(string(x, p)?),
            "gateway" => gateway = optional(x, p, string)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(Address {
        interface: required(interface, "interface", path)?,
        address: required(address, "address", path)?,
        gateway,
    })
}

fn route(v: &Value, path: &JsonPath) -> DeResult<Route> {
    let mut got: [Option<String>; 3] = Default::default();
    members(v, path, ROUTE_FIELDS, true, &mut |k, x, p| {
        if let Some(i) = ROUTE_FIELDS.iter().position(|f| *f == k) {
            got[i] = Some(string(x, p)?);
        }
        Ok(())
    })?;
    let [interface, destination, gateway] = got;
    Ok(Route {
        interface: required(interface, "interface", path)?,
        destination: required(destination, "destination", path)?,
        gateway: required(gateway, "gateway", path)?,
    })
}

// ------------------------------------------------------------- shapes

/// Serde would read a struct from an array (`"pbn": ["192.0.2.0/24"]`): every
/// place that holds a struct must hold an object (or null where optional).
pub(crate) fn objects_where_expected(top: &Map<String, Value>) -> Result<(), ConfigError> {
    fn object(path: &str, v: Option<&Value>, nullable: bool) -> Result<(), ConfigError> {
        match v {
            None | Some(Value::Object(_)) => Ok(()),
            Some(Value::Null) if nullable => Ok(()),
            Some(other) => Err(err(path, format!("invalid type: {}, expected an object", kind(other)))),
        }
    }
    fn each(
        path: &str,
        v: Option<&Value>,
        f: &mut dyn FnMut(&str, &Value) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        if let Some(Value::Array(a)) = v {
            for (i, x) in a.iter().enumerate() {
                f(&format!("{path}[{i}]"), x)?;
            }
        }
        Ok(())
    }
    object("vm_conf", top.get("vm_conf"), true)?;
    object("hninit", top.get("hninit"), true)?;
    each("vif", top.get("vif"), &mut |p, vif| {
        object(p, Some(vif), false)?;
        each(&format!("{p}.pna"), vif.get("pna"), &mut |p, pna| {
            object(p, Some(pna), false)?;
            object(&format!("{p}.pbn"), pna.get("pbn"), true)?;
            object(&format!("{p}.pvn"), pna.get("pvn"), true)
        })
    })?;
    if let Some(x) = top.get("hninit") {
        for list in ["users", "addresses", "routes"] {
            each(&format!("hninit.{list}"), x.get(list), &mut |p, v| {
                object(p, Some(v), false)
            })?;
        }
        for field in PLATFORM_FIELDS {
            object(&format!("hninit.{field}"), x.get(*field), true)?;
        }
    }
    Ok(())
}

/// [`objects_where_expected`] for the image-wide defaults file.
pub(crate) fn platform_objects(top: &Map<String, Value>) -> Result<(), ConfigError> {
    for field in PLATFORM_FIELDS {
        match top.get(*field) {
            None | Some(Value::Object(_)) | Some(Value::Null) => {}
            Some(other) => return Err(err(*field, format!("invalid type: {}, expected an object", kind(other)))),
        }
    }
    Ok(())
}

// ------------------------------------------------------------- unknown fields

const TOP_FIELDS: &[&str] = &["vm_hostname", "nameservers", "vif", "vm_conf", "hninit"];
const VIF_FIELDS: &[&str] = &["vif_number", "pna"];
const PNA_FIELDS: &[&str] = &["pna_address", "pbn", "pvn"];
const PBN_FIELDS: &[&str] = &["pbn_network", "pbn_gateway"];
const PVN_FIELDS: &[&str] = &["pvn_network", "pvn_gateway"];
const VM_CONF_FIELDS: &[&str] = &["user", "password", "ssh_key", "run", "script_args"];

fn unknown_in(obj: &Map<String, Value>, known: &[&str], base: &str, out: &mut Vec<String>) {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            out.push(format!("ignored unknown field {}", key_path(base, k)));
        }
    }
}

/// Warnings for the fields of Gandi's part that hninit does not know.
pub(crate) fn unknown_gandi_fields(top: &Map<String, Value>, out: &mut Vec<String>) {
    unknown_in(top, TOP_FIELDS, "", out);
    if let Some(Value::Object(c)) = top.get("vm_conf") {
        unknown_in(c, VM_CONF_FIELDS, "vm_conf", out);
    }
    let Some(Value::Array(vifs)) = top.get("vif") else {
        return;
    };
    for (i, vif) in vifs.iter().enumerate() {
        let Value::Object(vif) = vif else { continue };
        let vbase = format!("vif[{i}]");
        unknown_in(vif, VIF_FIELDS, &vbase, out);
        let Some(Value::Array(pnas)) = vif.get("pna") else {
            continue;
        };
        for (j, pna) in pnas.iter().enumerate() {
            let Value::Object(pna) = pna else { continue };
            let pbase = format!("{vbase}.pna[{j}]");
            unknown_in(pna, PNA_FIELDS, &pbase, out);
            if let Some(Value::Object(o)) = pna.get("pbn") {
                unknown_in(o, PBN_FIELDS, &format!("{pbase}.pbn"), out);
            }
            if let Some(Value::Object(o)) = pna.get("pvn") {
                unknown_in(o, PVN_FIELDS, &format!("{pbase}.pvn"), out);
            }
        }
    }
}
