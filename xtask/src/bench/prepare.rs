//! The things booted: the bench disk (an ext4 host partition holding a busybox
//! root image), and the initramfs compared: hninit's (the product's
//! builder), the busybox reference (`bench/busybox-init/`) and Debian's
//! initramfs-tools (`mkinitramfs -d bench/initramfs-tools`, cached by the
//! versions it copies from).

use super::archive::ArchiveStats;
use super::{Variant, BUSYBOX_APPLETS, DISK_MODULES, IMAGE_ID};
use crate::disk::{build_disk, DiskSpec, HostpartSpec};
use crate::initramfs::{self, build_initramfs, Archive, Compression, InitramfsSpec, Node};
use crate::kernel::Kernel;
use crate::paths::{build_dir, workspace_root};
use crate::rootfs::{build_root_image, RootImageSpec};
use crate::util::{self, cmd};
use anyhow::{bail, Context, Result};
use hninit::modules::index::ModIndex;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The test disk: no ESP, an ext4 host partition `hostpart` with `hn-root.img`.
pub(super) fn build_bench_disk(dir: &Path) -> Result<PathBuf> {
    let image = dir.join("hn-root.img");
    build_root_image(
        &RootImageSpec {
            kernel: None,
            image_id: IMAGE_ID.into(),
            size_mib: 32,
            // systemd (dracut's initrd) switches only into an OS tree: one with os-release.
            extra_files: vec![(
                "/etc/os-release".into(),
                b"ID=hnbench\nNAME=\"hninit bench root\"\n".to_vec(),
                0o644,
            )],
            ..Default::default()
        },
        &image,
    )?;
    let disk = dir.join("disk.img");
    build_disk(
        &DiskSpec {
            esp: None,
            hostpart: HostpartSpec {
                // dracut's dmsquash-live reads `rd.live.dir`/rootfs.img (a fixed name).
                files: vec![
                    ("hn-root.img".into(), image.clone()),
                    (format!("{}/rootfs.img", super::dracut::LIVE_DIR), image),
                ],
                dirs: vec!["data".into(), "hn-state".into()],
                size_mib: 128,
                ..Default::default()
            },
            extra_hostparts: Vec::new(),
        },
        &disk,
    )?;
    Ok(disk)
}

/// One initramfs, ready to boot.
#[derive(Clone)]
pub(super) struct Prepared {
    pub(super) variant: Variant,
    pub(super) initrd: PathBuf,
    pub(super) stats: ArchiveStats,
    /// Modules in load order (the busybox reference's list).
    pub(super) modules: Vec<String>,
    pub(super) notes: Vec<String>,
}

pub(super) fn prepare(
    v: Variant,
    dir: &Path,
    init: &Path,
    kernel: &Kernel,
    index: &ModIndex,
) -> Result<Prepared> {
    let mut notes = Vec::new();
    let mut modules = Vec::new();
    let initrd = match v {
        Variant::Hninit => {
            let out = dir.join("hninit.cpio.zst");
            // The profile for virtual machines, as a user booting VMs builds it: the
            // default `server` profile also drives QEMU's empty PIIX IDE controller
            // (scsi_mod, libata, ata_piix: ≈ 0.5 s of CPU under TCG) that the
            // busybox reference, loading only this disk's modules, does not.
            let mut spec = InitramfsSpec::new(init, &kernel.release, &kernel.modules_dir);
            spec.profile = Some(crate::profile::Profile::Vm);
            let r = build_initramfs(&spec, &out)?;
            notes.push(format!(
                "`cargo xtask initramfs --profile vm`: {} modules (`initramfs/profiles/vm` and their dependencies), zstd level {}",
                r.modules.len(),
                initramfs::ZSTD_LEVEL
            ));
            out
        }
        Variant::Busybox => {
            let out = dir.join("busybox.cpio.zst");
            modules = reference_modules(index)?;
            build_busybox_initramfs(kernel, index, &modules, &out)?;
            notes.push(format!(
                "`bench/busybox-init/init` + busybox-static; insmods {} one by one",
                modules.join(" ")
            ));
            out
        }
        Variant::InitramfsTools => {
            let out = dir.join("initramfs-tools.img");
            cached_initramfs_tools(kernel, dir, &out)?;
            notes.push(format!(
                "`mkinitramfs -d bench/initramfs-tools` ({}): Debian's defaults (MODULES=most, BUSYBOX=auto, COMPRESS=zstd), udev, fsck.ext4, plus the loop-root script",
                package_version("initramfs-tools").unwrap_or_else(|| "version unknown".into())
            ));
            out
        }
        Variant::DracutLive | Variant::DracutWrite => {
            let out = dir.join("dracut.img");
            let version = super::dracut::cached_dracut(kernel, dir, &out)?;
            notes.push(format!(
                "Debian's dracut {version} (`dracut-core` + `dracut-live`, unpacked in the cache): `{}`; Debian's defaults otherwise (systemd initrd); the image is `/{}/rootfs.img` on the host partition",
                super::dracut::BUILD_COMMAND,
                super::dracut::LIVE_DIR
            ));
            out
        }
    };
    let stats = ArchiveStats::of(&initrd)?;
    Ok(Prepared {
        variant: v,
        initrd,
        stats,
        modules,
        notes,
    })
}

/// hninit's force list plus this disk's drivers, in load order.
pub(super) fn reference_modules(index: &ModIndex) -> Result<Vec<String>> {
    let mut want = initramfs::default_force();
    want.extend(DISK_MODULES.iter().map(|s| s.to_string()));
    index
        .load_order(&want)
        .map_err(|e| anyhow::anyhow!("ordering the reference modules: {e}"))
}

/// The busybox reference: `bench/busybox-init/init`, busybox-static and the modules.
pub(super) fn build_busybox_initramfs(
    kernel: &Kernel,
    index: &ModIndex,
    modules: &[String],
    out: &Path,
) -> Result<()> {
    let script = workspace_root().join("bench/busybox-init/init");
    let bb = Path::new("/bin/busybox");
    if !util::is_static_elf(bb)? {
        bail!("/bin/busybox is not static (install busybox-static)");
    }
    let mut ar = Archive::default();
    for d in ["dev", "proc", "sys", "hostpart", "newroot", "etc", "bin"] {
        ar.add(d, Node::Dir);
    }
    ar.add(
        "dev/console",
        Node::CharDev {
            major: 5,
            minor: 1,
            mode: 0o600,
        },
    );
    ar.add_file("init", &script, 0o755)?;
    ar.add_file("bin/busybox", bb, 0o755)?;
    for a in BUSYBOX_APPLETS {
        ar.add(&format!("bin/{a}"), Node::Symlink("busybox".into()));
    }
    let lib = format!("lib/modules/{}", kernel.release);
    let mut list = String::new();
    for m in modules {
        let rel = index
            .path_of(m)
            .with_context(|| format!("module {m} has no file in modules.dep"))?;
        ar.add_file(
            &format!("{lib}/{rel}"),
            &kernel.modules_dir.join(rel),
            0o644,
        )?;
        let _ = writeln!(list, "/{lib}/{rel}");
    }
    ar.add(
        "etc/bench-modules",
        Node::File {
            data: list.into_bytes(),
            mode: 0o644,
        },
    );
    let raw = ar.to_cpio()?;
    let data = initramfs::compress(&raw, Compression::Zstd)?;
    util::write_atomic(out, &data)
}

/// Installs initramfs-tools when `mkinitramfs` is missing (root only).
pub(super) fn ensure_initramfs_tools() -> Result<()> {
    if util::find_program("mkinitramfs").is_some() {
        return Ok(());
    }
    if !util::running_as_root() {
        bail!("mkinitramfs is missing (install initramfs-tools: `sudo apt-get install initramfs-tools`)");
    }
    eprintln!("bench: installing initramfs-tools (for the comparison initrd)");
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    let install = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "initramfs-tools",
    ];
    if util::run_inherit(&mut apt(&install)).is_err() {
        util::run_inherit(&mut apt(&["update", "-q"]))?;
        util::run_inherit(&mut apt(&install))?;
    }
    util::program("mkinitramfs").map(|_| ())
}

/// Paths created for the time of a `mkinitramfs` run, removed on drop.
#[derive(Default)]
pub(super) struct TempPaths(Vec<PathBuf>);

impl TempPaths {
    /// Makes `link` a symlink to `target` unless something is there already.
    pub(super) fn link(&mut self, target: &Path, link: &Path) -> Result<()> {
        if fs::symlink_metadata(link).is_ok() {
            return Ok(());
        }
        if let Some(parent) = link.parent() {
            let mut missing = Vec::new();
            let mut p = parent;
            while fs::symlink_metadata(p).is_err() {
                missing.push(p.to_path_buf());
                match p.parent() {
                    Some(q) => p = q,
                    None => break,
                }
            }
            for d in missing.into_iter().rev() {
                fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                self.0.push(d);
            }
        }
        std::os::unix::fs::symlink(target, link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
        self.0.push(link.to_path_buf());
        Ok(())
    }
}

impl Drop for TempPaths {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
                fs::remove_dir(p)
            } else {
                fs::remove_file(p)
            };
        }
    }
}

/// Host packages whose files mkinitramfs copies into the initrd.
pub(super) const ITOOLS_PACKAGES: &[&str] = &[
    "initramfs-tools-core",
    "udev",
    "busybox-static",
    "busybox",
    "klibc-utils",
    "kmod",
    "e2fsprogs",
    "btrfs-progs",
    "xfsprogs",
];

/// [`build_initramfs_tools`], kept in `target/xtask/bench-cache` under a key of
/// the kernel, the configuration directory and the versions of the packages it
/// copies from (building it takes half a minute or more).
pub(super) fn cached_initramfs_tools(kernel: &Kernel, dir: &Path, out: &Path) -> Result<()> {
    let mut key = format!("{}\n{}\n", kernel.release, kernel.vmlinuz.display());
    for p in ITOOLS_PACKAGES {
        key.push_str(&package_version(p).unwrap_or_else(|| format!("{p} -")));
        key.push('\n');
    }
    let conf = workspace_root().join("bench/initramfs-tools");
    let mut files = Vec::new();
    let mut stack = vec![conf.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut bytes = key.into_bytes();
    for f in &files {
        bytes.extend(
            f.strip_prefix(&conf)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        bytes.extend(format!(" {:o}\n", fs::metadata(f)?.permissions().mode()).as_bytes());
        bytes.extend(fs::read(f)?);
    }
    let cached = build_dir()
        .join("bench-cache")
        .join(format!("initramfs-tools-{:016x}.img", util::fnv64(&bytes)));
    if !cached.is_file() {
        build_initramfs_tools(kernel, dir, out)?;
        fs::create_dir_all(cached.parent().expect("has a parent"))?;
        let tmp = util::tmp_sibling(&cached);
        fs::copy(out, &tmp)?;
        fs::rename(&tmp, &cached)?;
        return Ok(());
    }
    eprintln!(
        "bench: initramfs-tools initrd from the cache ({})",
        cached.display()
    );
    fs::copy(&cached, out)?;
    Ok(())
}

/// Debian's initrd for the cached kernel. mkinitramfs only reads modules from
/// `/lib/modules/<release>` and the kernel config from `/boot/config-<release>`:
/// when those are absent they are symlinked to the kernel cache for the run and
/// removed afterwards. The configuration is `bench/initramfs-tools` (`-d`), so
/// the machine's `/etc/initramfs-tools` is neither read nor changed.
pub(super) fn build_initramfs_tools(kernel: &Kernel, dir: &Path, out: &Path) -> Result<()> {
    let conf = dir.join("initramfs-tools-conf");
    copy_tree(&workspace_root().join("bench/initramfs-tools"), &conf)?;
    let tmp = dir.join("mkinitramfs-tmp");
    fs::create_dir_all(&tmp)?;
    let mut temp = TempPaths::default();
    let release = &kernel.release;
    let mods = Path::new("/lib/modules").join(release);
    if !mods.join("modules.dep").exists() {
        temp.link(&kernel.modules_dir, &mods)?;
    }
    let config = Path::new("/boot").join(format!("config-{release}"));
    let cached_config = kernel
        .vmlinuz
        .parent()
        .map(|b| b.join(format!("config-{release}")))
        .filter(|p| p.is_file())
        .with_context(|| format!("no config-{release} beside {}", kernel.vmlinuz.display()))?;
    temp.link(&cached_config, &config)?;
    let mut c = cmd("mkinitramfs");
    c.env("TMPDIR", &tmp)
        .arg("-d")
        .arg(&conf)
        .arg("-o")
        .arg(out)
        .arg(release);
    let res = util::run_output(&mut c);
    drop(temp);
    let output = res.context("mkinitramfs")?;
    fs::write(
        dir.join("mkinitramfs.log"),
        [output.stdout, output.stderr].concat(),
    )?;
    util::remove_any(&tmp)
}

/// Copies a directory tree of regular files, keeping the permission bits.
pub(super) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    util::remove_any(dst)?;
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let e = e?;
        let (s, d) = (e.path(), dst.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_tree(&s, &d)?;
        } else {
            fs::copy(&s, &d).with_context(|| format!("copying {}", s.display()))?;
            let mode = fs::metadata(&s)?.permissions().mode();
            fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

pub(super) fn package_version(pkg: &str) -> Option<String> {
    let out =
        util::run_stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg])).ok()?;
    let v = out.trim();
    (!v.is_empty()).then(|| format!("{pkg} {v}"))
}
