//! Host configuration text (JSON, untrusted) → a validated [`HostConfig`].
//!
//! Everything is checked here, before anything is written into a root: an error
//! names the JSON path of the offending value (`vif[0].pna[1].pna_address`) and
//! never echoes a password. The rules (documented for operators in
//! `docs/config.md`):
//!
//! * at most [`MAX_CONFIG`] bytes of UTF-8 JSON, one object, no duplicate keys;
//! * unknown fields in Gandi's part of the document are ignored with a warning
//!   naming them; unknown fields inside `hninit` (and its users, addresses,
//!   routes) are errors;
//! * host name (RFC 1123), addresses (IP inside its network, gateways of the same
//!   family), interface names, user names, crypt hashes only, one-line ssh keys,
//!   time zone, sysctl keys and sizes are validated and normalised (lower-case
//!   host name, canonical IP text).
//!
//! Accounts policy: `root` may only receive ssh keys (its password, shell, uid
//! and groups belong to the image); the names of well-known system accounts, and
//! uids outside 1000–60000, are refused.
//!
//! [`Parsed::digest`] is the sha256 of [`canonical_json`] of the validated
//! configuration: stable across key order, whitespace and ignored fields.

use crate::config::model::{Address, Extra, HostConfig, Pbn, Pna, Pvn, Route, User, Vif, VmConf};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde_json::{Map, Value};
use sha2::Digest;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

/// The largest configuration accepted, in bytes.
pub const MAX_CONFIG: usize = 256 * 1024;
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
const MAX_KEY_LINE: usize = 16 * 1024;
const MAX_WARNINGS: usize = 20;

/// A configuration that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub config: HostConfig,
    /// Fields that were ignored (unknown Gandi fields), one message each.
    pub warnings: Vec<String>,
    /// sha256 (lower-case hex) of [`canonical_json`] of `config`.
    pub digest: String,
}

/// Why a configuration was refused. `Display` is one console line starting
/// with `config: `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `path` is the JSON path (`vif[0].pna[1].pna_address`), empty for the
    /// document itself.
    #[error("config: {}", Located(path, message))]
    Invalid { path: String, message: String },
    #[error("config: cannot read {file}: {error}")]
    Read { file: String, error: String },
}

impl ConfigError {
    /// The JSON path of the offending value (`None` for a read error).
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { path, .. } => Some(path),
            ConfigError::Read { .. } => None,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ConfigError::Invalid { message, .. } => message,
            ConfigError::Read { error, .. } => error,
        }
    }
}

struct Located<'a>(&'a str, &'a str);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(self.1)
        } else {
            write!(f, "{}: {}", self.0, self.1)
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// A value for a message: quoted, escaped, cut at 64 characters.
fn show(s: &str) -> String {
    let mut cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Parses and validates a configuration document.
pub fn parse(text: &[u8]) -> Result<Parsed, ConfigError> {
    if text.len() > MAX_CONFIG {
        return Err(err(
            "",
            format!("{} bytes is larger than the limit of {MAX_CONFIG} bytes", text.len()),
        ));
    }
    let value = parse_strict(text)?;
    let Value::Object(top) = &value else {
        return Err(err("", format!("must be a JSON object, not {}", kind(&value))));
    };
    objects_where_expected(top)?;
    let mut warnings = Vec::new();
    unknown_gandi_fields(top, &mut warnings);
    if warnings.len() > MAX_WARNINGS {
        let more = warnings.len() - MAX_WARNINGS;
        warnings.truncate(MAX_WARNINGS);
        warnings.push(format!("… and {more} more unknown fields ignored"));
    }
    let mut config = host_config(&value).map_err(|e| {
        let path = e.path.unwrap_or_default();
        let message = if path.ends_with("password") {
            // A type error would quote the value: never for a password.
            "must be a crypt hash string (the value is not shown)".to_string()
        } else {
            e.message
        };
        err(path, message)
    })?;
    validate(&mut config)?;
    let digest = hex(&sha2::Sha256::digest(canonical_json(&config)));
    Ok(Parsed {
        config,
        warnings,
        digest,
    })
}

/// Reads (at most [`MAX_CONFIG`] + 1 bytes) and parses a configuration file.
pub fn parse_file(path: &Path) -> Result<Parsed, ConfigError> {
    let read_err = |e: std::io::Error| ConfigError::Read {
        file: path.display().to_string(),
        error: e.to_string(),
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG as u64 + 1).read_to_end(&mut buf).map_err(read_err)?;
    parse(&buf)
}

/// The canonical serialisation of a configuration: JSON with object keys sorted
/// and no whitespace. It parses back to the same configuration.
pub fn canonical_json(config: &HostConfig) -> Vec<u8> {
    let mut out = Vec::new();
    // Serialising these plain types to a Value cannot fail.
    if let Ok(v) = serde_json::to_value(config) {
        write_canonical(&v, &mut out);
    }
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            crate::util::sort(&mut keys);
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                if let Some(x) = m.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    if let Ok(s) = serde_json::to_vec(v) {
        out.extend(s);
    }
}

use crate::util::hex;

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Appends `.key`, or `["key"]` for a key that is not a plain identifier.
fn push_key(out: &mut String, key: &str) {
    if !key.is_empty() && key.len() <= 64 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    } else {
        out.push_str(&format!("[{}]", show(key)));
    }
}

fn key_path(base: &str, key: &str) -> String {
    let mut s = base.to_string();
    push_key(&mut s, key);
    s
}

// ------------------------------------------------------------- paths

/// Where a value sits in the document: a chain of frames on the stack of the
/// two walks below (the strict text parse, the readers of a `HostConfig`),
/// turned into text (`vif[0].pna[1].pna_address`) only when an error needs it.
/// (A wrapper around every visitor, serde_path_to_error, did this for ~50 KB
/// of monomorphised code in /init.)
#[derive(Clone, Copy)]
enum JsonPath<'a> {
    Root,
    Key(&'a JsonPath<'a>, &'a str),
    Index(&'a JsonPath<'a>, usize),
}

impl JsonPath<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match *self {
            JsonPath::Root => {}
            JsonPath::Key(parent, key) => {
                parent.write(out);
                push_key(out, key);
            }
            JsonPath::Index(parent, i) => {
                parent.write(out);
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
}

// ------------------------------------------------------------- strict JSON

/// JSON text to a `Value`, refusing duplicate keys and trailing data; a syntax
/// error names the path where it happened.
fn parse_strict(text: &[u8]) -> Result<Value, ConfigError> {
    let failed_at = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(text);
    let seed = Strict { path: &JsonPath::Root, failed_at: &failed_at };
    let v = seed.deserialize(&mut de).map_err(|e| {
        let path = failed_at.take().unwrap_or_default();
        let message = if path.ends_with("password") {
            "is not valid JSON (the value is not shown)".to_string()
        } else {
            format!("invalid JSON: {e}")
        };
        err(path, message)
    })?;
    de.end().map_err(|e| err("", format!("invalid JSON: {e}")))?;
    Ok(v)
}

/// Reads one JSON value at `path`. The first (innermost) failure records its
/// path in `failed_at`: the error type is serde_json's, which has no room for it.
/// A syntax error between an object's members names the object.
struct Strict<'p> {
    path: &'p JsonPath<'p>,
    failed_at: &'p RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let (path, failed_at) = (self.path, self.failed_at);
        d.deserialize_any(self).inspect_err(|_| {
            let mut f = failed_at.borrow_mut();
            if f.is_none() {
                *f = Some(path.render());
            }
        })
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = JsonPath::Index(self.path, out.len());
            match seq.next_element_seed(Strict { path: &path, failed_at: self.failed_at })? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format_args!("duplicate key {}", show(&k))));
            }
            let path = JsonPath::Key(self.path, &k);
            let v = map.next_value_seed(Strict { path: &path, failed_at: self.failed_at })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

// ------------------------------------------------------------- Value to HostConfig

/// A type or field error while reading a [`HostConfig`] from a `Value`, with
/// the path of the value it is about.
#[derive(Debug)]
struct DeError {
    message: String,
    path: Option<String>,
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

fn host_config(v: &Value) -> DeResult<HostConfig> {
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

const EXTRA_FIELDS: &[&str] = &["users", "addresses", "routes", "interface_names", "timezone", "motd", "identities", "sysctl"];
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
            _ => {}
        }
        Ok(())
    })?;
    Ok(x)
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
fn objects_where_expected(top: &Map<String, Value>) -> Result<(), ConfigError> {
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
fn unknown_gandi_fields(top: &Map<String, Value>, out: &mut Vec<String>) {
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

// ------------------------------------------------------------- validation

fn validate(c: &mut HostConfig) -> Result<(), ConfigError> {
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
    let bad = |why: &str| err(path, format!("{} is not a valid host name: {why}", show(name)));
    if lower.is_empty() {
        return Err(bad("it is empty"));
    }
    if lower.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    for label in lower.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each dot-separated label has 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label cannot start or end with '-'"));
        }
    }
    Ok(lower)
}

fn ip(path: &str, s: &str) -> Result<IpAddr, ConfigError> {
    s.parse::<IpAddr>()
        .map_err(|_| err(path, format!("{} is not an IP address", show(s))))
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
    let bad = || {
        err(
            path,
            format!(
                "{} is not an address with a prefix length (CIDR, e.g. 192.0.2.10/24)",
                show(s)
            ),
        )
    };
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(err(path, format!("{} has a prefix length above {max}", show(s))));
    }
    Ok((addr, prefix))
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

/// A Linux interface name: 1 to 15 of `A-Z a-z 0-9 _ . -`, not `.` or `..`
/// (stricter than the kernel, which also allows other printable characters).
pub fn check_ifname(path: &str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(
            path,
            format!("{} is not an interface name (1 to 15 of A-Z a-z 0-9 _ . -)", show(s)),
        ))
    }
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
fn user_name_shape(s: &str) -> bool {
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
        let ok = s.starts_with('/')
            && s.len() <= 256
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.+-".contains(&b))
            && !s.split('/').any(|c| c == "..");
        if !ok {
            return Err(err(
                format!("{base}.shell"),
                format!("{} is not an absolute path to a shell", show(s)),
            ));
        }
    }
    Ok(())
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

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One `authorized_keys` line without options: `TYPE BASE64 [COMMENT]`; the
/// base64 blob must decode and start with the same key type.
pub fn check_ssh_key(path: &str, line: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| err(path, format!("not an ssh public key line: {why}"));
    if line.contains(['\n', '\r']) {
        return Err(bad("it contains a line break (one key per line)"));
    }
    if line.chars().any(|c| c.is_control()) {
        return Err(bad("it contains a control character"));
    }
    if line.len() > MAX_KEY_LINE {
        return Err(bad("longer than 16 KiB"));
    }
    let (ktype, rest) = line.split_once(' ').unwrap_or((line, ""));
    if !KEY_TYPES.contains(&ktype) {
        return Err(bad(&format!(
            "it must start with a key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521, sk-…), not {}",
            show(ktype)
        )));
    }
    let body = rest.split(' ').next().unwrap_or("");
    let blob = base64_decode(body).ok_or_else(|| bad("the key is not valid base64"))?;
    let declared = blob
        .get(..4)
        .and_then(|l| <[u8; 4]>::try_from(l).ok())
        .map(|l| u32::from_be_bytes(l) as usize)
        .and_then(|n| blob.get(4..4usize.checked_add(n)?));
    if declared != Some(ktype.as_bytes()) {
        return Err(bad(&format!("the key data is not a {ktype} key")));
    }
    Ok(())
}

/// Standard base64 with padding; `None` if malformed or empty.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let chunks = b.len() / 4;
    for (i, q) in b.chunks(4).enumerate() {
        let last = i + 1 == chunks;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n: u32 = 0;
        for &c in q.get(..4 - pad)? {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(bytes.get(..3 - pad)?);
    }
    Some(out)
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

/// `^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$`, at most 128 characters.
pub fn check_timezone(path: &str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.split('/')
            .all(|c| !c.is_empty() && c != ".." && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(err(
            path,
            format!("{} is not a time zone name like Europe/Paris", show(s)),
        ))
    }
}

fn check_sysctl(path: &str, k: &str, v: &str) -> Result<(), ConfigError> {
    let key_ok = !k.is_empty()
        && k.len() <= 256
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.*-".contains(&b))
        && !k.starts_with('.')
        && !k.ends_with('.')
        && !k.contains("..");
    if !key_ok {
        return Err(err(
            path,
            "is not a sysctl key (a-z 0-9 _ . * -, like net.ipv4.ip_forward)",
        ));
    }
    if v.is_empty() || v.len() > 4096 || v.chars().any(|c| c.is_control()) {
        return Err(err(path, "the value must be one non-empty line of at most 4096 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| pointers(x, format!("{here}/{k}"), out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| pointers(x, format!("{here}/{i}"), out)),
            _ => {}
        }
        out.push(here);
    }

    /// The readers agree with serde's derived Deserialize (kept on the types as
    /// the reference) on the documented example, on its canonical form (which
    /// has every field of every type), and on each of their values replaced by
    /// other types, removed, or joined by an unknown member: a field added to a
    /// type but not to its reader fails here.
    #[test]
    fn readers_match_the_serde_derive() {
        let doc = include_str!("../../docs/config.md");
        let start = doc.find("```json\n").unwrap() + 8;
        let end = start + doc[start..].find("```").unwrap();
        let example: Value = serde_json::from_str(&doc[start..end]).unwrap();
        let canonical: Value = serde_json::from_slice(&canonical_json(&parse(&doc.as_bytes()[start..end]).unwrap().config)).unwrap();
        let others = [
            json!(null),
            json!(true),
            json!(7),
            json!(-1),
            json!(1.5),
            json!(4_294_967_296u64),
            json!("s"),
            json!([]),
            json!(["s"]),
            json!({}),
            json!({"x": "y"}),
        ];
        let mut docs = Vec::new();
        for base in [example, canonical] {
            let mut ptrs = Vec::new();
            pointers(&base, String::new(), &mut ptrs);
            for p in &ptrs {
                for o in &others {
                    let mut d = base.clone();
                    *d.pointer_mut(p).unwrap() = o.clone();
                    docs.push(d);
                }
                let mut d = base.clone();
                if let Some((parent, key)) = p.rsplit_once('/') {
                    if let Some(Value::Object(m)) = d.pointer_mut(parent) {
                        m.remove(key);
                        docs.push(d);
                    }
                }
                let mut d = base.clone();
                if let Some(Value::Object(m)) = d.pointer_mut(p) {
                    m.insert("zz".into(), json!(1));
                    docs.push(d);
                }
            }
            docs.push(base);
        }
        let mut checked = 0;
        for d in &docs {
            // Where an object is expected, serde would also read an array.
            if d.as_object().is_none_or(|top| objects_where_expected(top).is_err()) {
                continue;
            }
            let ours = host_config(d).map_err(|e| e.message);
            let serde = HostConfig::deserialize(d).map_err(|e| e.to_string());
            assert_eq!(ours, serde, "{d}");
            checked += 1;
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("aGVsbA=="), Some(b"hell".to_vec()));
        assert_eq!(base64_decode("aG=k"), None);
        assert_eq!(base64_decode("aGk"), None);
        assert_eq!(base64_decode("a==="), None);
        assert_eq!(base64_decode(""), None);
    }

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
