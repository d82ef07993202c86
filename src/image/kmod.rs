//! A kernel's module files as the initramfs builder reads them: compressed
//! modules (`.ko.xz`, `.ko.zst`, `.ko.gz`, as Debian ships them) named and read
//! as plain `.ko`.

pub use super::tools::{is_static_elf, write_atomic};

use anyhow::{Context, Result};
use std::fs;
use std::path::Path;
use std::process::Command;

const COMPRESSED_SUFFIXES: [&str; 3] = [".ko.xz", ".ko.zst", ".ko.gz"];

/// `path` of a compressed module (`….ko.xz`, `.ko.zst`, `.ko.gz`) with the
/// plain `.ko` name; `None` for anything else.
pub fn plain_module_path(path: &str) -> Option<String> {
    COMPRESSED_SUFFIXES
        .iter()
        .find_map(|s| path.strip_suffix(s))
        .map(|stem| format!("{stem}.ko"))
}

/// The plain ELF bytes of a module file, decompressing `.ko.xz` (the `xz`
/// program), `.ko.zst` and `.ko.gz`; a plain `.ko` as it is. The signature
/// Debian appends before compressing is part of the plain bytes.
pub fn read_module_plain(p: &Path) -> Result<Vec<u8>> {
    let name = p.to_string_lossy();
    if name.ends_with(".ko.zst") {
        zstd::stream::decode_all(fs::File::open(p)?)
            .with_context(|| format!("zstd-decompressing {}", p.display()))
    } else if name.ends_with(".ko.gz") {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(fs::File::open(p)?), &mut v)
            .with_context(|| format!("gunzipping {}", p.display()))?;
        Ok(v)
    } else if name.ends_with(".ko.xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(p)
            .output()
            .with_context(|| format!("xz-decompressing {} (is xz-utils installed?)", p.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "xz-decompressing {}: {}: {}",
                p.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    } else {
        fs::read(p).with_context(|| format!("reading {}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_and_xz() {
        assert_eq!(plain_module_path("kernel/fs/ext4/ext4.ko.xz").as_deref(), Some("kernel/fs/ext4/ext4.ko"));
        assert_eq!(plain_module_path("a.ko.zst").as_deref(), Some("a.ko"));
        assert_eq!(plain_module_path("a.ko"), None);
        assert_eq!(plain_module_path("a.xz"), None);
        // xz through the real xz program, as Debian 13 ships its modules.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.ko");
        fs::write(&p, b"\x7fELF module bytes").unwrap();
        assert!(Command::new("xz").arg("-k").arg(&p).status().unwrap().success());
        assert_eq!(read_module_plain(&d.path().join("m.ko.xz")).unwrap(), b"\x7fELF module bytes");
        assert_eq!(read_module_plain(&p).unwrap(), b"\x7fELF module bytes");
    }
}
