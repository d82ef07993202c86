//! Kernels to boot: the Debian `linux-image-amd64` kernel fetched with apt into
//! the download cache (unpacked, modules indexed with depmod), or a user's own
//! kernel given as a vmlinuz plus its `/lib/modules/<release>` directory.

use crate::paths::cache_dir;
use crate::util::{self, cmd};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kernel image and its module tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The bootable bzImage.
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/<release>` with `modules.dep`, `modules.alias`, `modules.builtin`.
    pub modules_dir: PathBuf,
}

/// The meta package whose dependency names the current Debian kernel.
const META_PACKAGE: &str = "linux-image-amd64";
/// Marker written last into a completely unpacked cache entry.
const COMPLETE: &str = ".complete";

/// Record of the last resolved Debian kernel (the fast path of [`debian_kernel`]).
#[derive(Debug, Serialize, Deserialize)]
struct Current {
    package: String,
    version: String,
    kernel: Kernel,
}

fn kernel_cache() -> PathBuf {
    cache_dir().join("kernel")
}

/// The Debian kernel, downloaded and unpacked once into
/// `cache_dir()/kernel/<package>_<version>/`.
///
/// After the first call the result is remembered in `cache_dir()/kernel/current.json`
/// and returned without asking apt (milliseconds, no network). Use
/// [`debian_kernel_refresh`] (or `HNINIT_KERNEL_REFRESH=1`) to pick up a newer
/// package version.
pub fn debian_kernel() -> Result<Kernel> {
    debian_kernel_of(META_PACKAGE)
}

/// Another flavour of Debian kernel by its meta package (e.g.
/// `linux-image-cloud-amd64`, a second kernel release for the kexec tests).
pub fn debian_kernel_of(meta: &str) -> Result<Kernel> {
    if std::env::var_os("HNINIT_KERNEL_REFRESH").is_some_and(|v| v != "0") {
        return refresh_of(meta);
    }
    if let Some(k) = cached_current(meta) {
        return Ok(k);
    }
    refresh_of(meta)
}

/// Like [`debian_kernel`] but asks apt which version is current first.
pub fn debian_kernel_refresh() -> Result<Kernel> {
    refresh_of(META_PACKAGE)
}

fn current_file(meta: &str) -> PathBuf {
    if meta == META_PACKAGE {
        kernel_cache().join("current.json")
    } else {
        kernel_cache().join(format!("current-{meta}.json"))
    }
}

fn refresh_of(meta: &str) -> Result<Kernel> {
    let (package, version) = resolve_package(meta)?;
    let dir = kernel_cache().join(format!("{package}_{}", version.replace(':', "%3a")));
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("unexpected kernel package name {package}"))?
        .to_string();
    if !dir.join(COMPLETE).exists() {
        fetch_and_unpack(&package, &version, &dir)?;
    }
    let kernel = kernel_in_root(&dir.join("root"), Some(&release))?;
    let cur = Current {
        package,
        version,
        kernel: kernel.clone(),
    };
    util::write_atomic(
        &current_file(meta),
        serde_json::to_string_pretty(&cur)?.as_bytes(),
    )?;
    Ok(kernel)
}

fn cached_current(meta: &str) -> Option<Kernel> {
    let text = fs::read_to_string(current_file(meta)).ok()?;
    let cur: Current = serde_json::from_str(&text).ok()?;
    let ok = cur.kernel.vmlinuz.is_file() && cur.kernel.modules_dir.join("modules.dep").is_file();
    ok.then_some(cur.kernel)
}

/// `(package, version)` of the kernel the meta package `meta` currently depends on.
fn resolve_package(meta: &str) -> Result<(String, String)> {
    let query = || -> Result<Option<(String, String)>> {
        let deps = util::run_stdout(Command::new("apt-cache").args(["depends", meta]))?;
        let Some(pkg) = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(|p| p.trim().trim_matches(|c| c == '<' || c == '>').to_string())
            .find(|p| p.starts_with("linux-image-") && p != meta)
        else {
            return Ok(None);
        };
        let show =
            util::run_stdout(Command::new("apt-cache").args(["show", "--no-all-versions", &pkg]))?;
        let version = show
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_string());
        Ok(version.map(|v| (pkg, v)))
    };
    if let Ok(Some(found)) = query() {
        return Ok(found);
    }
    eprintln!("xtask: apt does not know {meta}; running apt-get update");
    util::run_inherit(
        Command::new("apt-get")
            .arg("update")
            .arg("-q")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    query()?
        .with_context(|| format!("apt-cache depends {meta} names no linux-image package"))
}

fn fetch_and_unpack(package: &str, version: &str, dir: &Path) -> Result<()> {
    let tmp = util::tmp_sibling(dir);
    util::remove_any(&tmp)?;
    let dl = tmp.join("download");
    fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    eprintln!("xtask: downloading {package} {version}");
    util::run(Command::new("apt-get").current_dir(&dl).args([
        "download",
        "-q",
        &format!("{package}={version}"),
    ]))
    .with_context(|| format!("downloading the kernel package {package}={version}"))?;
    let deb = fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dl.display()))?;
    let root = tmp.join("root");
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    fs::remove_dir_all(&dl).ok();

    let (base, release) = find_modules_base(&root)?;
    let mdir = base.join("lib/modules").join(&release);
    let n = decompress_modules(&mdir)?;
    if n > 0 {
        eprintln!("xtask: decompressed {n} kernel modules");
    }
    util::run(cmd("depmod").arg("-b").arg(&base).arg(&release))
        .with_context(|| format!("indexing modules of {release} in {}", mdir.display()))?;
    fs::write(tmp.join(COMPLETE), format!("{package} {version}\n"))?;
    if dir.join(COMPLETE).exists() {
        // Another process finished the same kernel meanwhile: keep theirs.
        return util::remove_any(&tmp);
    }
    util::remove_any(dir)?;
    fs::rename(&tmp, dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    Ok(())
}

/// The depmod base directory (the root, or `root/usr` for merged-/usr
/// packages) and the single release found under its `lib/modules`.
fn find_modules_base(root: &Path) -> Result<(PathBuf, String)> {
    for base in [root.to_path_buf(), root.join("usr")] {
        let mods = base.join("lib/modules");
        if let Ok(rd) = fs::read_dir(&mods) {
            let rels: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            match rels.as_slice() {
                [one] => return Ok((base, one.clone())),
                [] => {}
                many => bail!("several releases in {}: {}", mods.display(), many.join(" ")),
            }
        }
    }
    bail!("no lib/modules/<release> in {}", root.display())
}

/// Finds the kernel image and module tree in an unpacked package root.
fn kernel_in_root(root: &Path, release: Option<&str>) -> Result<Kernel> {
    let (base, found) = find_modules_base(root)?;
    if let Some(r) = release {
        if r != found {
            bail!(
                "package promised release {r} but {} holds {found}",
                root.display()
            );
        }
    }
    let mut vmlinuz = root.join("boot").join(format!("vmlinuz-{found}"));
    if !vmlinuz.is_file() {
        vmlinuz = base.join("lib/modules").join(&found).join("vmlinuz");
    }
    kernel_from_dir(&vmlinuz, &base.join("lib/modules").join(&found))
}

/// A user's own kernel: `vmlinuz` and its `/lib/modules/<release>` directory
/// (the release is the directory's name; `modules.dep` must exist, run
/// `depmod` first if it does not).
pub fn kernel_from_dir(vmlinuz: &Path, modules_dir: &Path) -> Result<Kernel> {
    if !vmlinuz.is_file() {
        bail!("kernel image {} does not exist", vmlinuz.display());
    }
    let release = modules_dir
        .file_name()
        .with_context(|| format!("modules dir {} has no name", modules_dir.display()))?
        .to_string_lossy()
        .into_owned();
    if !modules_dir.join("modules.dep").is_file() {
        bail!(
            "{} has no modules.dep (run `depmod -b <root> {release}` where <root>/lib/modules/{release} is that directory)",
            modules_dir.display()
        );
    }
    Ok(Kernel {
        release,
        vmlinuz: vmlinuz.to_path_buf(),
        modules_dir: modules_dir.to_path_buf(),
    })
}

/// The compressed-module suffixes Debian kernels use (trixie's: `.ko.xz`).
pub use hninit::image::kmod::{plain_module_path, read_module_plain};

/// Replaces every `.ko.xz`, `.ko.zst` and `.ko.gz` under `dir` by the plain
/// `.ko`, so that depmod indexes plain files. Returns how many were converted.
pub fn decompress_modules(dir: &Path) -> Result<usize> {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Some(out) = plain_module_path(&p.to_string_lossy()) else {
                continue;
            };
            let data = read_module_plain(&p)?;
            fs::write(&out, data).with_context(|| format!("writing {out}"))?;
            fs::remove_file(&p)?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompresses_zst_and_gz_modules() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("kernel/fs");
        fs::create_dir_all(&sub).unwrap();
        fs::write(
            sub.join("a.ko.zst"),
            zstd::stream::encode_all(&b"AAAA"[..], 3).unwrap(),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"BBBB").unwrap();
        fs::write(sub.join("b.ko.gz"), gz.finish().unwrap()).unwrap();
        fs::write(sub.join("c.ko"), b"CCCC").unwrap();
        assert_eq!(decompress_modules(d.path()).unwrap(), 2);
        assert_eq!(fs::read(sub.join("a.ko")).unwrap(), b"AAAA");
        assert_eq!(fs::read(sub.join("b.ko")).unwrap(), b"BBBB");
        assert!(!sub.join("a.ko.zst").exists());
    }

    #[test]
    fn own_kernel_needs_modules_dep() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("vmlinuz");
        fs::write(&v, b"x").unwrap();
        let m = d.path().join("lib/modules/6.9.9-test");
        fs::create_dir_all(&m).unwrap();
        assert!(kernel_from_dir(&v, &m).is_err());
        fs::write(m.join("modules.dep"), b"").unwrap();
        let k = kernel_from_dir(&v, &m).unwrap();
        assert_eq!(k.release, "6.9.9-test");
    }
}
