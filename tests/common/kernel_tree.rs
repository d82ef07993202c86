//! The cached real Debian module tree, for tests that check the module index
//! against a real kernel when one is there (the xtask kernel cache).
#![allow(dead_code)]

use std::path::PathBuf;

/// Release directories (with `modules.dep`) under the xtask kernel cache:
/// `<cache>/kernel/<pkg>_<ver>/{,root/,root/usr/}lib/modules/<release>`.
pub fn cached_trees() -> Vec<PathBuf> {
    let mut caches = vec![PathBuf::from("/root/.cache/hninit")];
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        caches.insert(0, PathBuf::from(x).join("hninit"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        caches.insert(0, PathBuf::from(h).join(".cache/hninit"));
    }
    let mut found: Vec<PathBuf> = caches
        .iter()
        .filter_map(|c| std::fs::read_dir(c.join("kernel")).ok())
        .flat_map(|r| r.flatten().map(|e| e.path()))
        .flat_map(|v| {
            ["lib/modules", "root/lib/modules", "root/usr/lib/modules"].map(|s| v.join(s))
        })
        .filter_map(|m| std::fs::read_dir(m).ok())
        .flat_map(|r| r.flatten().map(|e| e.path()))
        .filter(|p| p.join("modules.dep").is_file())
        // The assertions are about the generic kernel (the cloud flavour builds some drivers in).
        .filter(|p| !p.to_string_lossy().contains("cloud"))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// A cached real module tree, if any: `$HNINIT_MODULES_DIR`, the kernel cache of
/// the test harness, or the running kernel's.
pub fn real_tree() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("HNINIT_MODULES_DIR") {
        let d = PathBuf::from(d);
        if d.join("modules.dep").is_file() {
            return Some(d);
        }
    }
    if let Some(d) = cached_trees().pop() {
        return Some(d);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let d = PathBuf::from("/lib/modules").join(release.trim());
    d.join("modules.dep").is_file().then_some(d)
}
