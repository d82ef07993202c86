//! Where things live: the workspace root, the per-user download cache and the
//! xtask build directory under `target/`.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
///
/// Derived from this crate's manifest directory at compile time, so it is right
/// for `cargo xtask` and for other workspace crates linking this library.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Download cache shared by every checkout: `$XDG_CACHE_HOME/hninit`, else
/// `~/.cache/hninit` (falls back to `<root>/target/cache` without a home).
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("hninit");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("hninit");
    }
    workspace_root().join("target").join("cache")
}

/// Scratch and output directory for xtask products: `<root>/target/xtask`.
pub fn build_dir() -> PathBuf {
    workspace_root().join("target").join("xtask")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_workspace_manifest() {
        let root = workspace_root();
        let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(text.contains("[workspace]"));
        assert!(build_dir().starts_with(&root));
    }
}
