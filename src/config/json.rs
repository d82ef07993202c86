//! The strict JSON reader: text to a `serde_json::Value`, refusing duplicate
//! keys and trailing data, with the JSON path ([`JsonPath`]) of the innermost
//! failure in the error; the same path type follows the document readers
//! (`read`) down the value.

use crate::config::error::{err, push_key, show, ConfigError};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a value sits in the document: a chain of frames on the stack of the
/// two walks below (the strict text parse, the readers of a `HostConfig`),
/// turned into text (`vif[0].pna[1].pna_address`) only when an error needs it.
/// (A wrapper around every visitor, serde_path_to_error, did this for ~50 KB
/// of monomorphised code in /init.)
#[derive(Clone, Copy)]
pub(crate) enum JsonPath<'a> {
    Root,
    Key(&'a JsonPath<'a>, &'a str),
    Index(&'a JsonPath<'a>, usize),
}

impl JsonPath<'_> {
    pub(crate) fn render(&self) -> String {
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

/// JSON text to a `Value`, refusing duplicate keys and trailing data; a syntax
/// error names the path where it happened.
pub(crate) fn parse_strict(text: &[u8]) -> Result<Value, ConfigError> {
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
