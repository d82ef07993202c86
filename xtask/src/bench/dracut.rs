//! Debian's dracut for the bench, kept outside the system: `dracut` and
//! `initramfs-tools` conflict as Debian packages, so `dracut-core` and
//! `dracut-live` (its `dmsquash-live` module) are fetched with `apt-get download`
//! and unpacked with `dpkg-deb -x` into the download cache, keyed by version,
//! and dracut runs from there (`dracutbasedir=`, `--conf`, `--kmoddir`). Its
//! runtime dependencies (cpio, kmod, udev, systemd, dmsetup, e2fsprogs) are
//! ordinary host packages. The initrd (`--no-hostonly --add dmsquash-live`,
//! zstd) is cached by dracut's version and the kernel: it takes minutes to build.

use crate::kernel::Kernel;
use crate::paths::cache_dir;
use crate::util::{self, cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian packages unpacked: dracut itself and the live-image modules.
const PACKAGES: &[&str] = &["dracut-core", "dracut-live"];
/// Host packages dracut copies from or runs (besides the ones the bench needs anyway).
pub(super) const HOST_PACKAGES: &[&str] = &["cpio", "kmod", "udev", "systemd", "dmsetup", "e2fsprogs", "zstd"];
/// Where the root image is on the host partition for dracut: `rd.live.dir=`;
/// the file name is fixed by dmsquash-live (`rootfs.img`).
pub(super) const LIVE_DIR: &str = "live";

/// The dracut version apt would install (`apt-cache policy` candidate).
fn candidate_version() -> Result<String> {
    let out = util::run_stdout(cmd("apt-cache").args(["policy", "dracut-core"]))?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:").map(|v| v.trim().to_string()))
        .filter(|v| v != "(none)")
        .context("apt-cache policy dracut-core: no candidate version (is the Debian archive configured?)")
}

/// dracut unpacked in the cache: `<cache>/dracut/<version>/root`.
pub(super) fn unpacked_dracut() -> Result<(String, PathBuf)> {
    let version = match candidate_version() {
        Ok(v) => v,
        Err(_) => {
            util::run_inherit(cmd("apt-get").args(["update", "-q"]))?;
            candidate_version()?
        }
    };
    let missing: Vec<&str> = ["cpio", "dmsetup", "udevadm", "systemctl", "zstd"]
        .into_iter()
        .filter(|p| util::find_program(p).is_none())
        .collect();
    if !missing.is_empty() {
        eprintln!("bench: dracut needs {}: installing {}", missing.join(" "), HOST_PACKAGES.join(" "));
        util::run_inherit(cmd("apt-get").args(["install", "-y", "-q"]).args(HOST_PACKAGES))?;
    }
    let base = cache_dir().join("dracut").join(&version);
    let root = base.join("root");
    if root.join("usr/bin/dracut").is_file() {
        return Ok((version, root));
    }
    fs::create_dir_all(&base)?;
    let work = base.join(format!("unpack-{}", util::unique_suffix()));
    fs::create_dir_all(&work)?;
    let mut get = cmd("apt-get");
    get.current_dir(&work).arg("download");
    for p in PACKAGES {
        get.arg(format!("{p}={version}"));
    }
    util::run(&mut get).context("apt-get download dracut")?;
    let tree = work.join("root");
    for e in fs::read_dir(&work)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            util::run(cmd("dpkg-deb").arg("-x").arg(&p).arg(&tree))
                .with_context(|| format!("dpkg-deb -x {}", p.display()))?;
        }
    }
    if !tree.join("usr/bin/dracut").is_file() {
        bail!("the dracut packages unpacked to {} hold no usr/bin/dracut", tree.display());
    }
    // Another run may have finished first: keep its tree.
    if fs::rename(&tree, &root).is_err() && !root.join("usr/bin/dracut").is_file() {
        bail!("cannot move {} to {}", tree.display(), root.display());
    }
    util::remove_any(&work)?;
    Ok((version, root))
}

/// The dracut command line the bench runs (for the report), from the unpacked tree.
pub(super) const BUILD_COMMAND: &str =
    "dracutbasedir=DRACUT/usr/lib/dracut DRACUT/usr/bin/dracut --conf DRACUT/etc/dracut.conf --confdir DRACUT/etc/dracut.conf.d --kmoddir MODULES --no-hostonly --add dmsquash-live --zstd OUT RELEASE";

/// dracut's initrd for `kernel`, from the cache or built; returns dracut's version.
pub(super) fn cached_dracut(kernel: &Kernel, dir: &Path, out: &Path) -> Result<String> {
    let (version, root) = unpacked_dracut()?;
    let key = format!("{}\n{}\n", kernel.release, kernel.vmlinuz.display());
    let cached = cache_dir()
        .join("dracut")
        .join(&version)
        .join(format!("initrd-{}-{:016x}.img", kernel.release, util::fnv64(key.as_bytes())));
    if cached.is_file() {
        eprintln!("bench: dracut initrd from the cache ({})", cached.display());
        fs::copy(&cached, out)?;
        return Ok(version);
    }
    let base = root.join("usr/lib/dracut");
    let tmp = dir.join("dracut-tmp");
    fs::create_dir_all(&tmp)?;
    let mut c = Command::new(root.join("usr/bin/dracut"));
    c.env("dracutbasedir", &base)
        .env("TMPDIR", &tmp)
        .arg("--conf")
        .arg(root.join("etc/dracut.conf"))
        .arg("--confdir")
        .arg(root.join("etc/dracut.conf.d"))
        .arg("--kmoddir")
        .arg(&kernel.modules_dir)
        .args(["--no-hostonly", "--add", "dmsquash-live", "--force", "--zstd"])
        .arg(out)
        .arg(&kernel.release);
    let output = util::run_output(&mut c).context("dracut")?;
    fs::write(dir.join("dracut.log"), [output.stdout, output.stderr].concat())?;
    util::remove_any(&tmp)?;
    let t = util::tmp_sibling(&cached);
    fs::copy(out, &t)?;
    fs::rename(&t, &cached)?;
    Ok(version)
}
