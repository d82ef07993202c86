//! The key store of an initramfs (`/etc/hninit/trusted.d/`, `revoked.d/`):
//! minisign public keys checked with the parser `/init` uses.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::PathBuf;

/// Files of the key store: (path under `/etc/hninit/`, content).
pub type TrustFiles = Vec<(String, Vec<u8>)>;

/// The key store files for `/etc/hninit/` (`trusted.d/NAME.pub` → content,
/// `revoked.d/ID`), each key file checked with the parser `/init` uses. A key
/// file keeps its name (`.pub` added if missing); two files of one name, or two
/// different keys with one id, are errors.
pub fn trust_files(trust_keys: &[PathBuf], revoke_keys: &[String]) -> Result<(TrustFiles, InitramfsKeys)> {
    use crate::trust::{KeyId, KeyStore, PublicKey};
    let mut files = Vec::new();
    let mut store = KeyStore::default();
    let mut keys = InitramfsKeys::default();
    for path in trust_keys {
        let data = fs::read(path).with_context(|| format!("reading the trusted key {}", path.display()))?;
        let key = PublicKey::parse_file(&data)
            .map_err(|e| anyhow::anyhow!("trusted key {}: {e}", path.display()))?;
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("trusted key {}: no usable file name", path.display()))?;
        let name = if base.ends_with(".pub") { base.to_string() } else { format!("{base}.pub") };
        if name.starts_with('.') || files.iter().any(|(n, _): &(String, Vec<u8>)| n == &format!("trusted.d/{name}")) {
            bail!("trusted key {}: the name {name} is hidden or given twice", path.display());
        }
        let id = key.id.to_string();
        store.add(key, &name).map_err(|e| anyhow::anyhow!("trusted key {}: {e}", path.display()))?;
        files.push((format!("trusted.d/{name}"), data));
        keys.trusted.push((name, id));
    }
    for r in revoke_keys {
        let id: KeyId = r.parse().map_err(|e: String| anyhow::anyhow!("--revoke-key: {e}"))?;
        let shown = id.to_string();
        if !keys.revoked.contains(&shown) {
            files.push((format!("revoked.d/{shown}"), b"revoked (cargo xtask --revoke-key)\n".to_vec()));
            keys.revoked.push(shown);
        }
    }
    Ok((files, keys))
}

/// The trust part of an initramfs, for reports.
#[derive(Debug, Clone, Default)]
pub struct InitramfsKeys {
    pub trusted: Vec<(String, String)>,
    pub revoked: Vec<String>,
}

