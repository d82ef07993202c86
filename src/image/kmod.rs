//! A kernel's module files as the initramfs builder reads them: compressed
//! modules (`.ko.xz`, `.ko.zst`, `.ko.gz`, as Debian ships them) named and read
//! as plain `.ko`.

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

/// True when `path` is an ELF executable without a program interpreter
/// (i.e. statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() < 64 || &data[0..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Ok(false); // only 64-bit little-endian is of interest here
    }
    let u16at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u32at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    let u64at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let phoff = u64at(0x20);
    let phentsize = u16at(0x36);
    let phnum = u16at(0x38);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > data.len() {
            break;
        }
        if u32at(o) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// Writes `data` to `path` through a temporary sibling, fsynced, renamed, the
/// directory fsynced: after a crash `path` is the old file or the new one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
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

    #[test]
    fn busybox_is_static_and_sh_is_not() {
        if Path::new("/bin/busybox").exists() {
            assert!(is_static_elf(Path::new("/bin/busybox")).unwrap());
        }
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
    }
}
