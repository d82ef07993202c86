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
//! * the values follow the rules of `rules` (host name, addresses, interface
//!   names, users, crypt hashes, ssh keys, time zone, sysctl, sizes), which
//!   also normalises them (lower-case host name, canonical IP text).
//!
//! The stages, one file each: `json` (strict text → value, with JSON paths),
//! `read` (value → [`HostConfig`]), `rules` (validation); `error` holds
//! [`ConfigError`].
//!
//! [`Parsed::digest`] is the sha256 of [`canonical_json`] of the validated
//! configuration: stable across key order, whitespace and ignored fields.

use crate::config::error::err;
use crate::config::json::{kind, parse_strict};
use crate::config::model::HostConfig;
use crate::config::read::{host_config, objects_where_expected, unknown_gandi_fields};
use crate::config::rules::validate;
use crate::util::hex;
use serde_json::Value;
use sha2::Digest;
use std::io::Read;
use std::path::Path;

pub use crate::config::error::ConfigError;
pub use crate::config::rules::{
    check_hostname, check_ifname, check_password, check_ssh_key, check_timezone, check_user_name, cidr, is_crypt_hash, network_cidr,
    MAX_IDENTITIES, MAX_MOTD, MAX_RUN,
};

/// The largest configuration accepted, in bytes.
pub const MAX_CONFIG: usize = 256 * 1024;
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
}
