//! Small helpers of the host-side builders (also `xtask`'s): running external
//! commands with useful errors, finding programs, writing files atomically,
//! sparse copies, UUIDs and a stable hash.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A printable form of a command line, for error messages and logs.
pub fn display_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '"', '\'']) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd`, capturing its output; fails with the command line and its
/// stderr when it cannot start or exits non-zero.
pub fn run_output(cmd: &mut Command) -> Result<Output> {
    let shown = display_cmd(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let so = String::from_utf8_lossy(&out.stdout);
        bail!(
            "`{shown}` failed ({}):\n{}{}",
            out.status,
            err.trim_end(),
            if so.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", so.trim_end())
            }
        );
    }
    Ok(out)
}

/// Runs `cmd` and returns its stdout as text.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    let out = run_output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd`, discarding output unless it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    run_output(cmd).map(|_| ())
}

/// Runs `cmd` with the terminal attached (stdout/stderr inherited).
pub fn run_inherit(cmd: &mut Command) -> Result<()> {
    let shown = display_cmd(cmd);
    let st = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !st.success() {
        bail!("`{shown}` failed ({st})");
    }
    Ok(())
}

/// Finds a program in `$PATH` plus the sbin directories (which a non-root
/// `$PATH` often lacks); `None` when absent.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Like [`find_program`] but an error naming the program when it is missing.
pub fn program(name: &str) -> Result<PathBuf> {
    find_program(name).with_context(|| {
        format!("program `{name}` not found in PATH or sbin (run `cargo xtask deps` to install host packages)")
    })
}

/// A [`Command`] for `name` resolved through [`find_program`] (falls back to
/// the bare name so the spawn error names it).
pub fn cmd(name: &str) -> Command {
    Command::new(find_program(name).unwrap_or_else(|| PathBuf::from(name)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Writes `data` to `path` through a temporary sibling, fsynced, renamed, the
/// directory fsynced: after a crash `path` is the old file or the new one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tmp_sibling(path);
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

/// `<pid>-<n>`: unique within this machine for as long as this process lives.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `<path>.tmp.<pid>-<n>`: a temporary name beside `path`, unique per call.
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or(OsStr::new("out")).to_os_string();
    name.push(format!(".tmp.{}", unique_suffix()));
    path.with_file_name(name)
}

/// Removes `path` (file or directory tree) if it exists.
pub fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
    }
}

/// Copies the whole of `src` into `dst` at byte `offset`, seeking over
/// all-zero blocks so a sparse destination stays sparse.
pub fn copy_into_at(src: &Path, dst: &mut fs::File, offset: u64) -> Result<u64> {
    let mut f = fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    loop {
        let n =
            read_full(&mut f, &mut buf).with_context(|| format!("reading {}", src.display()))?;
        if n == 0 {
            break;
        }
        // Write in 64 KiB pieces, skipping the zero ones.
        for chunk in buf[..n].chunks(64 << 10) {
            if chunk.iter().any(|&b| b != 0) {
                dst.seek(SeekFrom::Start(pos))?;
                dst.write_all(chunk).context("writing into disk image")?;
            }
            pos += chunk.len() as u64;
        }
    }
    Ok(pos - offset)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A random (version 4) UUID in its usual text form.
pub fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for a UUID")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format_uuid(&b))
}

/// Formats 16 bytes as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// 64-bit FNV-1a: a hash that is stable across builds, for cache keys.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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

/// Whether this process runs as root (owner of a freshly created file).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn busybox_is_static_and_sh_is_not() {
        if Path::new("/bin/busybox").exists() {
            assert!(is_static_elf(Path::new("/bin/busybox")).unwrap());
        }
        if let Some(ls) = find_program("ls") {
            assert!(!is_static_elf(&ls).unwrap());
        }
    }

    #[test]
    fn sparse_copy_at_offset() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let mut data = vec![0u8; 200 << 10];
        data[0] = 1;
        data[150 << 10] = 2;
        fs::write(&src, &data).unwrap();
        let dst = d.path().join("dst");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .read(true)
            .truncate(true)
            .open(&dst)
            .unwrap();
        f.set_len(1 << 20).unwrap();
        let n = copy_into_at(&src, &mut f, 4096).unwrap();
        assert_eq!(n, data.len() as u64);
        let back = fs::read(&dst).unwrap();
        assert_eq!(&back[4096..4096 + data.len()], &data[..]);
        assert_eq!(back.len(), 1 << 20);
    }
}
