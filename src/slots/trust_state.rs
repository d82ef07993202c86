//! The trust state kept on the host partition: the anti-rollback floor (the
//! highest `version=` that booted and was marked good, `hn-state/trust.json`),
//! the operator's one-shot downgrade allowance (`hnctl stage --allow-downgrade`,
//! `hn-state/allow-downgrade.json`: the signed image, its version, the time),
//! and the verified metadata of a slot's image from its `.minisig` sidecar.
//! Written atomically; a damaged file is an error (invalid, never absent).

use crate::slots::dir::{remove_if_exists, write_atomic, Dir};
use crate::slots::Names;
use crate::trust::{Allowance, KeyStore, Meta, Signature, Version};
use serde::{Deserialize, Serialize};
use std::io;

pub const FLOOR_FILE: &str = "trust.json";
pub const ALLOW_FILE: &str = "allow-downgrade.json";
const MAX_STATE: usize = 16 * 1024;

#[derive(Serialize, Deserialize)]
struct FloorJson {
    floor: String,
}

#[derive(Serialize, Deserialize)]
struct AllowJson {
    version: String,
    /// The image signature (hex of the 64 bytes): which signed image is allowed.
    signature: String,
    /// When the operator decided (UTC).
    time: String,
}

/// The anti-rollback floor; `Err` names the damaged file.
pub fn read_floor(state: &dyn Dir) -> Result<Option<Version>, String> {
    let what = format!("{}/{FLOOR_FILE}", state.label());
    let Some(raw) = state.read(FLOOR_FILE, MAX_STATE).map_err(|e| format!("{what}: {e}"))? else {
        return Ok(None);
    };
    let j: FloorJson = serde_json::from_slice(&raw).map_err(|e| format!("{what}: {e}"))?;
    Version::parse(&j.floor).map(Some).map_err(|e| format!("{what}: floor: {e}"))
}

/// Raises the floor to `v` if it is higher (or none is set); true if written.
pub fn raise_floor(state: &dyn Dir, v: &Version) -> Result<bool, String> {
    let cur = read_floor(state)?;
    if cur.as_ref().is_some_and(|c| c >= v) {
        return Ok(false);
    }
    let data = serde_json::to_vec(&FloorJson { floor: v.to_string() }).unwrap_or_default();
    write_atomic(state, FLOOR_FILE, &data).map_err(|e| format!("{}/{FLOOR_FILE}: {e}", state.label()))?;
    Ok(true)
}

/// The operator's recorded permission to go below the floor once.
pub fn read_allowance(state: &dyn Dir) -> Result<Option<Allowance>, String> {
    let what = format!("{}/{ALLOW_FILE}", state.label());
    let Some(raw) = state.read(ALLOW_FILE, MAX_STATE).map_err(|e| format!("{what}: {e}"))? else {
        return Ok(None);
    };
    let j: AllowJson = serde_json::from_slice(&raw).map_err(|e| format!("{what}: {e}"))?;
    let version = Version::parse(&j.version).map_err(|e| format!("{what}: {e}"))?;
    let bytes = unhex(&j.signature).ok_or_else(|| format!("{what}: signature is not 128 hex digits"))?;
    Ok(Some(Allowance { version, signature: bytes }))
}

pub fn write_allowance(state: &dyn Dir, a: &Allowance, time: &str) -> io::Result<()> {
    let j = AllowJson {
        version: a.version.to_string(),
        signature: crate::util::hex(&a.signature),
        time: time.to_string(),
    };
    write_atomic(state, ALLOW_FILE, &serde_json::to_vec_pretty(&j).unwrap_or_default())
}

/// Used up (or void): removed; true if there was one.
pub fn clear_allowance(state: &dyn Dir) -> io::Result<bool> {
    let removed = remove_if_exists(state, ALLOW_FILE)?;
    if removed {
        state.sync()?;
    }
    Ok(removed)
}

fn unhex(s: &str) -> Option<[u8; 64]> {
    let b = s.as_bytes();
    if b.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(b.get(2 * i..2 * i + 2)?).ok()?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// The metadata of slot `name`'s image from its sidecar, when the sidecar's
/// trusted comment is signed by a trusted, non-revoked key (the image bytes were
/// verified when it was staged; the sidecar moves with its image).
pub fn slot_meta(images: &dyn Dir, name: &str, store: &KeyStore) -> Option<(Signature, Meta)> {
    let raw = images.read(&Names::sig(name), crate::trust::minisign::MAX_SIGNATURE_FILE).ok()??;
    let sig = Signature::parse(&raw).ok()?;
    let key = store.find(sig.key_id)?;
    if store.is_revoked(sig.key_id) || !sig.comment_signed_by(&key.key) {
        return None;
    }
    let meta = Meta::parse(&sig.trusted_comment).ok()?;
    Some((sig, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::dir::RealDir;

    #[test]
    fn floor_rises_only_and_damage_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let d = RealDir::open(t.path(), false).unwrap();
        assert_eq!(read_floor(&d), Ok(None));
        let v = |s: &str| Version::parse(s).unwrap();
        assert_eq!(raise_floor(&d, &v("2026.12.5")), Ok(true));
        assert_eq!(raise_floor(&d, &v("2026.11.1")), Ok(false));
        assert_eq!(read_floor(&d), Ok(Some(v("2026.12.5"))));
        assert_eq!(raise_floor(&d, &v("2026.12.10")), Ok(true));
        assert_eq!(read_floor(&d), Ok(Some(v("2026.12.10"))));
        std::fs::write(t.path().join(FLOOR_FILE), "{\"floor\":\"x\"}").unwrap();
        assert!(read_floor(&d).unwrap_err().contains("floor"));

        let a = Allowance { version: v("2026.11.1"), signature: [7u8; 64] };
        write_allowance(&d, &a, "2026-12-05T09:00:00Z").unwrap();
        assert_eq!(read_allowance(&d), Ok(Some(a)));
        assert!(clear_allowance(&d).unwrap());
        assert_eq!(read_allowance(&d), Ok(None));
        std::fs::write(t.path().join(ALLOW_FILE), "{}").unwrap();
        assert!(read_allowance(&d).is_err());
    }
}
