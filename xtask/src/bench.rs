//! `cargo xtask bench`: hninit measured against what users would use instead.
//!
//! One test disk (GPT, an ext4 host partition labelled `hostpart` holding
//! `hn-root.img`, a busybox root image from [`crate::rootfs`]) is booted with
//! direct kernel boot (the cached Debian kernel, the same QEMU command, TCG,
//! `snapshot=on`) alternating between three initramfs for that kernel:
//!
//! * hninit's (the product's builder, default modules);
//! * Debian's initramfs-tools (`mkinitramfs` with Debian's defaults), given the
//!   loop-root support it lacks as a `local-bottom` script (`bench/initramfs-tools/`);
//! * a reference busybox shell init (`bench/busybox-init/`): a baseline doing
//!   what the genkernel image-root patch does, not part of the product.
//!
//! Each init marks its start and end in the kernel log and the root's init
//! logs `hnroot: booted image=…`, so the kernel timestamps on the console give
//! the initrd phase; sizes come from the archives, peak memory from the inits
//! themselves. A staging section compares `hnctl stage` with `cp` + `sha256sum`.
//! The result is written as markdown (`BENCHMARKS.md`) with the raw figures as
//! JSON beside the console logs in `target/xtask/bench/`.

use crate::disk::{build_disk, DiskSpec, HostpartSpec};
use crate::initbin::{build_init, build_workspace_bin};
use crate::initramfs::{self, build_initramfs, Archive, Compression, InitramfsSpec, Node};
use crate::kernel::{debian_kernel, Kernel};
use crate::paths::{build_dir, workspace_root};
use crate::qemu::{qemu_command, Boot, Drive, QemuSpec, QEMU};
use crate::rootfs::{build_root_image, RootImageSpec};
use crate::util::{self, cmd};
use anyhow::{bail, Context, Result};
use hninit::modindex::ModIndex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Boots per variant.
    pub runs: usize,
    /// CI mode: one run, a small staging image; only a failed boot fails.
    pub smoke: bool,
    /// Where the markdown report goes.
    pub out: PathBuf,
    /// Run the staging section.
    pub staging: bool,
    /// Size of the staged image.
    pub staging_mib: u64,
    /// Repetitions of each staging method.
    pub staging_runs: usize,
    /// The command line as typed, for the report.
    pub command: String,
}

/// What a bench run ended with.
#[derive(Debug)]
pub struct BenchOutcome {
    /// The markdown report written.
    pub report: PathBuf,
    /// One line per boot that did not reach the root (empty: all booted).
    pub failed_boots: Vec<String>,
}

/// Every boot's command line starts with this (`panic=-1`: a panic ends QEMU,
/// which runs with `-no-reboot`).
const BASE_CMDLINE: &str = "console=ttyS0 panic=-1";
/// Guest memory; initramfs-tools' archive alone unpacks to well over 100 MiB.
const GUEST_MIB: u32 = 512;
/// Longest a boot may take before it counts as failed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// After the root said `poweroff`, how long QEMU may take to exit.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// The root image's id (`/etc/hn-image-id`).
const IMAGE_ID: &str = "bench";
/// The root init's first console line and its kernel-log twin.
const ROOT_CONSOLE: &str = "HNROOT: booted image=";
const ROOT_KMSG: &str = "hnroot: booted image=";
/// Modules this disk needs beyond hninit's force list (virtio-blk, ext4):
/// what hninit loads for it, and so what the busybox reference insmods.
const DISK_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];
/// Busybox applets the reference init uses.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "mount",
    "cat",
    "insmod",
    "findfs",
    "usleep",
    "losetup",
    "switch_root",
];

/// The three initramfs compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Variant {
    Hninit,
    Busybox,
    InitramfsTools,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Hninit, Variant::Busybox, Variant::InitramfsTools];

    fn key(self) -> &'static str {
        match self {
            Variant::Hninit => "hninit",
            Variant::Busybox => "busybox",
            Variant::InitramfsTools => "initramfs-tools",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Variant::Hninit => "hninit",
            Variant::Busybox => "busybox sh (reference)",
            Variant::InitramfsTools => "initramfs-tools",
        }
    }

    fn cmdline(self) -> String {
        let own = match self {
            Variant::Hninit => "real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart hn.debug",
            Variant::Busybox => "real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart",
            Variant::InitramfsTools => "root=LABEL=hostpart loop=/hn-root.img loopfstype=ext4 ro",
        };
        format!("{BASE_CMDLINE} {own}")
    }

    /// Whether a kernel-log text is this init's first line.
    fn is_start(self, text: &str) -> bool {
        match self {
            Variant::Hninit => text.starts_with("hninit: hninit ") && text.contains("started"),
            _ => text.starts_with("bench: initrd start"),
        }
    }

    /// Whether a kernel-log text is this init's last line before the handoff.
    fn is_end(self, text: &str) -> bool {
        match self {
            Variant::Hninit => text.starts_with("hninit: switching root"),
            _ => text.starts_with("bench: initrd end"),
        }
    }
}

/// hninit's step lines: (kernel-log prefix, text it must also contain, what
/// the time up to that line is). Lines marked [debug] exist with `hn.debug`.
const HNINIT_STEPS: &[(&str, &str, &str)] = &[
    ("hninit: command line:", "", "2. command line"),
    (
        "hninit: ",
        "modules in the initramfs for kernel",
        "3a. read the module index [debug line]",
    ),
    ("hninit: kernel modules:", "", "3b. load the forced modules"),
    (
        "hninit: host partition ",
        " is ",
        "4. devices: drivers, wait for the host partition",
    ),
    (
        "hninit: mounted ",
        "",
        "5. mount the host partition (loads its fs module)",
    ),
    ("hninit: image:", "", "6. slots"),
    ("hninit: root:", "", "8. loop-attach and mount the image"),
    (
        "hninit: freed ",
        "",
        "10a. handoff: move mounts, empty the initramfs [debug line]",
    ),
    (
        "hninit: switching root",
        "",
        "10b. handoff: enter the new root",
    ),
    (ROOT_KMSG, "", "exec → the root init's first line"),
];

/// initramfs-tools milestones on the console: (text, what the time up to its
/// line is). Script output has no kernel timestamp, so these use the wall
/// clock of each line's arrival (a line counts when its newline arrives).
const ITOOLS_MILESTONES: &[(&str, &str)] = &[
    ("Loading, please wait", ""),
    ("Starting systemd-udevd", "init start → udevd started"),
    (
        "Loading essential drivers",
        "udevadm trigger + settle, essential drivers",
    ),
    (
        "Will now check root file system",
        "root device, local-premount (btrfs scan)",
    ),
    (" clean, ", "fsck of the host partition"),
    (
        "bench: initrd end",
        "mount, loop root (local-bottom), init-bottom (udev stop)",
    ),
    (ROOT_CONSOLE, "run-init → the root init's first line"),
];

// ---------------------------------------------------------------------------
// Entry point

/// Runs the benchmark and writes the report (also when boots failed).
pub fn run_bench(opts: &BenchOptions) -> Result<BenchOutcome> {
    let started = Instant::now();
    let load_start = load_average();
    crate::deps::ensure_host_packages()?;
    ensure_initramfs_tools()?;
    let dir = build_dir().join("bench");
    util::remove_any(&dir)?;
    fs::create_dir_all(dir.join("logs"))?;

    eprintln!("bench: building the init, the kernel cache, the disk and three initramfs");
    let init = build_init()?;
    let kernel = debian_kernel()?;
    let disk = build_bench_disk(&dir)?;
    let index = ModIndex::load(&kernel.modules_dir).with_context(|| {
        format!(
            "reading the module index in {}",
            kernel.modules_dir.display()
        )
    })?;
    let mut prepared = Vec::new();
    for v in Variant::ALL {
        let t = Instant::now();
        let p = prepare(v, &dir, &init, &kernel, &index)
            .with_context(|| format!("building the {} initramfs", v.key()))?;
        eprintln!(
            "bench: {} initramfs: {} ({:.1} s)",
            v.key(),
            human_bytes(p.stats.compressed),
            t.elapsed().as_secs_f64()
        );
        prepared.push(p);
    }

    let runs = if opts.smoke { 1 } else { opts.runs.max(1) };
    let mut boots: Vec<BootRun> = Vec::new();
    for run in 0..runs {
        // Rotate the order so that no variant always follows the same one.
        for i in 0..Variant::ALL.len() {
            let p = &prepared[(run + i) % prepared.len()];
            let log = dir
                .join("logs")
                .join(format!("{}-{}.log", p.variant.key(), run + 1));
            let r = boot_once(p, &kernel, &disk, run, &log)?;
            eprintln!(
                "bench: run {}/{runs} {:<16} {}",
                run + 1,
                p.variant.key(),
                r.summary()
            );
            boots.push(r);
        }
    }

    let staging = if opts.staging {
        bench_staging(opts, &dir)
    } else {
        StagingSection {
            skipped: Some("not run (--no-staging)".into()),
            ..Default::default()
        }
    };

    let mut machine = Machine::probe(&kernel);
    machine.load_start = load_start;
    let results = Results {
        machine,
        command: opts.command.clone(),
        runs,
        smoke: opts.smoke,
        variants: prepared
            .iter()
            .map(|p| VariantInfo {
                variant: p.variant,
                cmdline: p.variant.cmdline(),
                stats: p.stats.clone(),
                notes: p.notes.clone(),
            })
            .collect(),
        reference_modules: prepared
            .iter()
            .find(|p| p.variant == Variant::Busybox)
            .map(|p| p.modules.clone())
            .unwrap_or_default(),
        boots,
        staging,
        elapsed_s: 0.0,
    };
    let mut results = results;
    results.elapsed_s = started.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&results)?;
    util::write_atomic(&dir.join("results.json"), json.as_bytes())?;
    let md = render_report(&results);
    util::write_atomic(&opts.out, md.as_bytes())?;
    let failed_boots = results
        .boots
        .iter()
        .filter(|b| !b.ok)
        .map(|b| {
            format!(
                "{} run {}: {} (console: {})",
                b.variant.key(),
                b.run + 1,
                b.error.as_deref().unwrap_or("failed"),
                b.log.display()
            )
        })
        .collect();
    Ok(BenchOutcome {
        report: opts.out.clone(),
        failed_boots,
    })
}

// ---------------------------------------------------------------------------
// Artifacts

/// The test disk: no ESP, an ext4 host partition `hostpart` with `hn-root.img`.
fn build_bench_disk(dir: &Path) -> Result<PathBuf> {
    let image = dir.join("hn-root.img");
    build_root_image(
        &RootImageSpec {
            kernel: None,
            image_id: IMAGE_ID.into(),
            size_mib: 32,
            ..Default::default()
        },
        &image,
    )?;
    let disk = dir.join("disk.img");
    build_disk(
        &DiskSpec {
            esp: None,
            hostpart: HostpartSpec {
                files: vec![("hn-root.img".into(), image)],
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
struct Prepared {
    variant: Variant,
    initrd: PathBuf,
    stats: ArchiveStats,
    /// Modules in load order (the busybox reference's list).
    modules: Vec<String>,
    notes: Vec<String>,
}

fn prepare(
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
            let spec = InitramfsSpec::new(init, &kernel.release, &kernel.modules_dir);
            let r = build_initramfs(&spec, &out)?;
            notes.push(format!(
                "`cargo xtask initramfs` defaults: {} modules (`initramfs/profiles/server` and their dependencies), zstd level {}",
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
fn reference_modules(index: &ModIndex) -> Result<Vec<String>> {
    let mut want = initramfs::default_force();
    want.extend(DISK_MODULES.iter().map(|s| s.to_string()));
    index
        .load_order(&want)
        .map_err(|e| anyhow::anyhow!("ordering the reference modules: {e}"))
}

/// The busybox reference: `bench/busybox-init/init`, busybox-static and the modules.
fn build_busybox_initramfs(
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
fn ensure_initramfs_tools() -> Result<()> {
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
struct TempPaths(Vec<PathBuf>);

impl TempPaths {
    /// Makes `link` a symlink to `target` unless something is there already.
    fn link(&mut self, target: &Path, link: &Path) -> Result<()> {
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
const ITOOLS_PACKAGES: &[&str] = &[
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
fn cached_initramfs_tools(kernel: &Kernel, dir: &Path, out: &Path) -> Result<()> {
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
fn build_initramfs_tools(kernel: &Kernel, dir: &Path, out: &Path) -> Result<()> {
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
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
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

fn package_version(pkg: &str) -> Option<String> {
    let out =
        util::run_stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg])).ok()?;
    let v = out.trim();
    (!v.is_empty()).then(|| format!("{pkg} {v}"))
}

// ---------------------------------------------------------------------------
// Archive contents

/// What an initramfs holds.
#[derive(Debug, Clone, Default, Serialize)]
struct ArchiveStats {
    /// The file's size.
    compressed: u64,
    /// The cpio archive(s) once decompressed.
    uncompressed: u64,
    /// `zstd`, `gzip`, `none`, or e.g. `none + zstd`.
    compression: String,
    files: usize,
    modules: usize,
    module_bytes: u64,
    /// Size of `/init`.
    init_size: u64,
    /// The interpreter of a `#!` `/init` and its size.
    interpreter: Option<(String, u64)>,
    /// The largest files: (path, size, size alone compressed with zstd at the
    /// product's level).
    largest: Vec<(String, u64, u64)>,
    /// Every module: (name, size alone compressed).
    module_sizes: Vec<(String, u64)>,
}

/// One cpio member.
struct Entry {
    name: String,
    mode: u32,
    /// (ino, dev major, dev minor): hard links share it.
    id: (u32, u32, u32),
    nlink: u32,
    data: Vec<u8>,
}

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl ArchiveStats {
    fn of(path: &Path) -> Result<ArchiveStats> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (mut entries, uncompressed, kinds) = unpack_initramfs(&bytes)
            .with_context(|| format!("reading the archive {}", path.display()))?;
        // GNU cpio stores a hard-linked file's data once: give every link its size.
        let mut by_id: HashMap<(u32, u32, u32), usize> = HashMap::new();
        for e in entries
            .iter()
            .filter(|e| e.nlink > 1 && e.mode & S_IFMT == S_IFREG)
        {
            let n = by_id.entry(e.id).or_default();
            *n = (*n).max(e.data.len());
        }
        let size_of = |e: &Entry| -> u64 {
            if e.nlink > 1 && e.mode & S_IFMT == S_IFREG {
                by_id.get(&e.id).copied().unwrap_or(e.data.len()) as u64
            } else {
                e.data.len() as u64
            }
        };
        let mut st = ArchiveStats {
            compressed: bytes.len() as u64,
            uncompressed,
            compression: kinds.join(" + "),
            ..Default::default()
        };
        let files: BTreeMap<String, &Entry> = entries.iter().map(|e| (e.name.clone(), e)).collect();
        st.files = files
            .values()
            .filter(|e| e.mode & S_IFMT == S_IFREG)
            .count();
        for e in files.values() {
            if e.mode & S_IFMT == S_IFREG && is_module(&e.name) {
                st.modules += 1;
                st.module_bytes += size_of(e);
            }
        }
        let init = files.get("init").context("the archive has no /init")?;
        st.init_size = size_of(init);
        if let Some(rest) = init.data.strip_prefix(b"#!") {
            let line = String::from_utf8_lossy(rest.split(|&b| b == b'\n').next().unwrap_or(&[]))
                .trim()
                .to_string();
            let interp = line.split_whitespace().next().unwrap_or("").to_string();
            if let Some(target) = resolve_in(&files, &interp) {
                st.interpreter = Some((interp, size_of(target)));
            }
        }
        // Real data (not empty hard-link entries), largest first.
        entries.retain(|e| e.mode & S_IFMT == S_IFREG && !e.data.is_empty());
        entries.sort_by(|a, b| b.data.len().cmp(&a.data.len()).then(a.name.cmp(&b.name)));
        for e in entries.iter().take(8) {
            let z = zstd_alone(&e.data)?;
            st.largest.push((e.name.clone(), e.data.len() as u64, z));
        }
        if entries.len() < 200 {
            for e in entries.iter().filter(|e| is_module(&e.name)) {
                st.module_sizes
                    .push((module_stem(&e.name), zstd_alone(&e.data)?));
            }
        }
        Ok(st)
    }
}

fn zstd_alone(data: &[u8]) -> Result<u64> {
    Ok(zstd::bulk::compress(data, initramfs::ZSTD_LEVEL)?.len() as u64)
}

fn is_module(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| name.ends_with(s))
}

fn module_stem(name: &str) -> String {
    hninit::modindex::normalize_name(name)
}

/// Resolves `path` inside the archive, following symlinks in every component
/// (`/bin/sh` with `bin -> usr/bin`), to a regular file.
fn resolve_in<'a>(files: &BTreeMap<String, &'a Entry>, path: &str) -> Option<&'a Entry> {
    let mut todo: std::collections::VecDeque<String> =
        path.split('/').map(str::to_string).collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => cur.push(c),
        }
        let e = *files.get(&cur.join("/"))?;
        if e.mode & S_IFMT == S_IFLNK {
            hops += 1;
            if hops > 32 {
                return None;
            }
            let target = String::from_utf8_lossy(&e.data).into_owned();
            cur.pop();
            if target.starts_with('/') {
                cur.clear();
            }
            for t in target.split('/').rev() {
                todo.push_front(t.to_string());
            }
        }
    }
    let e = *files.get(&cur.join("/"))?;
    (e.mode & S_IFMT == S_IFREG).then_some(e)
}

/// The members of an initramfs: uncompressed cpio segments, then (usually) one
/// compressed stream of cpio archives. Returns the members, the total
/// uncompressed size and the compression of each segment.
fn unpack_initramfs(bytes: &[u8]) -> Result<(Vec<Entry>, u64, Vec<String>)> {
    let mut entries = Vec::new();
    let mut kinds = Vec::new();
    let mut total = 0u64;
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest[0] == 0 {
            pos += 1;
            continue;
        }
        if rest.starts_with(b"0707") {
            let n = parse_newc(rest, &mut entries)?;
            total += n as u64;
            pos += n;
            if kinds.last().map(String::as_str) != Some("none") {
                kinds.push("none".into());
            }
            continue;
        }
        let raw = if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            kinds.push("zstd".into());
            zstd::stream::decode_all(rest).context("zstd")?
        } else if rest.starts_with(&[0x1f, 0x8b]) {
            kinds.push("gzip".into());
            let mut v = Vec::new();
            flate2::read::MultiGzDecoder::new(rest).read_to_end(&mut v)?;
            v
        } else {
            bail!("unknown data at byte {pos} (only cpio, zstd and gzip are read)");
        };
        total += raw.len() as u64;
        let mut p = 0;
        while p < raw.len() {
            if raw[p] == 0 {
                p += 1;
                continue;
            }
            p += parse_newc(&raw[p..], &mut entries)?;
        }
        break;
    }
    Ok((entries, total, kinds))
}

/// Parses one newc archive up to and including its trailer; returns its length.
fn parse_newc(data: &[u8], out: &mut Vec<Entry>) -> Result<usize> {
    let align = |n: usize| (n + 3) & !3;
    let mut pos = 0;
    loop {
        let h = data
            .get(pos..pos + 110)
            .with_context(|| format!("truncated cpio header at {pos}"))?;
        if !(h.starts_with(b"070701") || h.starts_with(b"070702")) {
            bail!("bad cpio magic at {pos}");
        }
        let field = |i: usize| -> Result<u32> {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i])?;
            Ok(u32::from_str_radix(s, 16)?)
        };
        let (ino, mode, nlink, size) = (field(0)?, field(1)?, field(4)?, field(6)? as usize);
        let (maj, min, namesize) = (field(7)?, field(8)?, field(11)? as usize);
        let name_end = pos + 110 + namesize;
        let raw_name = data
            .get(pos + 110..name_end)
            .context("truncated cpio name")?;
        let name = String::from_utf8_lossy(raw_name.strip_suffix(&[0]).unwrap_or(raw_name))
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        let start = align(name_end);
        let file = data
            .get(start..start + size)
            .context("truncated cpio data")?;
        pos = align(start + size);
        if name == "TRAILER!!!" {
            return Ok(pos.min(data.len()));
        }
        if !name.is_empty() && name != "." {
            out.push(Entry {
                name,
                mode,
                id: (ino, maj, min),
                nlink,
                data: file.to_vec(),
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Booting

/// One boot's console, as captured.
struct Console {
    /// (seconds since QEMU was started, cleaned line).
    lines: Vec<(f64, String)>,
    timed_out: bool,
    status: Option<std::process::ExitStatus>,
}

/// Kills QEMU's process group when dropped while armed.
struct GroupKill(Option<rustix::process::Pid>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pid) = self.0 {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Strips `\r`, ANSI escape sequences and other control characters.
fn clean(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == 0x1b {
            i += 1;
            if raw.get(i) == Some(&b'[') {
                i += 1;
                while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                    i += 1;
                }
            }
        } else if b >= 0x20 && b != 0x7f || b == b'\t' {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs QEMU for `spec` until the root powers off (or `timeout`), with every
/// console line timestamped on arrival; the whole log goes to `log`.
fn run_qemu(spec: &QemuSpec, log: &Path, timeout: Duration) -> Result<Console> {
    let mut c = qemu_command(spec);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut logf = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(logf, "# {}", util::display_cmd(&c))?;
    let t0 = Instant::now();
    let mut child = c.spawn().context("starting QEMU")?;
    let mut group = GroupKill(Some(rustix::process::Pid::from_child(&child)));
    let (tx, rx) = mpsc::channel::<(f64, String)>();
    let streams: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("piped")),
        Box::new(child.stderr.take().expect("piped")),
    ];
    for mut s in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut line = Vec::new();
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let t = t0.elapsed().as_secs_f64();
                for &b in &buf[..n] {
                    if b == b'\n' {
                        let _ = tx.send((t, clean(&line)));
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
            if !line.is_empty() {
                let _ = tx.send((t0.elapsed().as_secs_f64(), clean(&line)));
            }
        });
    }
    drop(tx);
    let mut con = Console {
        lines: Vec::new(),
        timed_out: false,
        status: None,
    };
    let mut poweroff: Option<Instant> = None;
    let mut panicked: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((t, l)) => {
                writeln!(logf, "{t:9.3} {l}")?;
                if l.contains("HNROOT: poweroff") {
                    poweroff.get_or_insert_with(Instant::now);
                }
                if l.contains("Kernel panic") {
                    panicked.get_or_insert_with(Instant::now);
                }
                con.lines.push((t, l));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if t0.elapsed() > timeout {
            con.timed_out = true;
            writeln!(
                logf,
                "# timed out after {} s: killing QEMU",
                timeout.as_secs()
            )?;
            group.kill();
            break;
        }
        if poweroff.is_some_and(|t| t.elapsed() > POWEROFF_GRACE)
            || panicked.is_some_and(|t| t.elapsed() > Duration::from_secs(5))
        {
            group.kill();
            break;
        }
    }
    con.status = child.wait().ok();
    group.0 = None;
    // Output still in the pipes after a kill.
    while let Ok((t, l)) = rx.recv_timeout(Duration::from_millis(200)) {
        writeln!(logf, "{t:9.3} {l}")?;
        con.lines.push((t, l));
    }
    Ok(con)
}

/// The host's 1-minute load average.
fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `[    1.234567] text` → (1.234567, "text"). The stamp may follow text a
/// script printed without a newline (`Begin: … [    1.23] kernel line`).
fn kstamp(line: &str) -> Option<(f64, &str)> {
    let mut from = 0;
    while let Some(i) = line[from..].find('[') {
        let open = from + i;
        if let Some(close) = line[open..].find(']').map(|c| open + c) {
            let inner = line[open + 1..close].trim();
            if inner.contains('.') && inner.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                if let Ok(t) = inner.parse() {
                    return Some((t, line[close + 1..].trim_start()));
                }
            }
        }
        from = open + 1;
    }
    None
}

/// The figures of one boot.
#[derive(Debug, Clone, Serialize)]
struct BootRun {
    variant: Variant,
    run: usize,
    ok: bool,
    error: Option<String>,
    log: PathBuf,
    /// Seconds from QEMU's start to the root's first console line.
    wall_root_s: Option<f64>,
    /// Kernel timestamps (s): initramfs unpack start/end, `Run /init`, the
    /// init's first and last line, the root's first line.
    k_unpack_start: Option<f64>,
    k_unpack_end: Option<f64>,
    k_run_init: Option<f64>,
    k_start: Option<f64>,
    k_end: Option<f64>,
    k_root: Option<f64>,
    /// The busybox reference: its "bench: modules loaded" line (after its last insmod).
    k_modules: Option<f64>,
    /// Peak memory of the init process (VmHWM), kB.
    hwm_kb: Option<u64>,
    /// hninit: (step, ms) from kernel timestamps; initramfs-tools: (milestone,
    /// ms) from the console's wall clock.
    steps: Vec<(String, f64)>,
    /// hninit: modules it loaded (from its debug lines), in order.
    modules_loaded: Vec<String>,
    /// hninit: (module, ms to load it, for what).
    module_ms: Vec<(String, f64, String)>,
    /// The host's 1-minute load average when the boot started.
    host_load: Option<f64>,
}

impl BootRun {
    fn ms(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        Some((b? - a?) * 1000.0)
    }
    /// First initrd marker → the root's first line.
    fn phase_ms(&self) -> Option<f64> {
        Self::ms(self.k_start, self.k_root)
    }
    /// The kernel's `Run /init` → the root's first line.
    fn run_init_to_root_ms(&self) -> Option<f64> {
        Self::ms(self.k_run_init, self.k_root)
    }
    fn unpack_ms(&self) -> Option<f64> {
        Self::ms(self.k_unpack_start, self.k_unpack_end)
    }
    fn to_start_ms(&self) -> Option<f64> {
        Self::ms(self.k_run_init, self.k_start)
    }
    fn work_ms(&self) -> Option<f64> {
        Self::ms(self.k_start, self.k_end)
    }
    fn to_root_ms(&self) -> Option<f64> {
        Self::ms(self.k_end, self.k_root)
    }
    /// The busybox reference: first line → its last insmod done.
    fn insmod_ms(&self) -> Option<f64> {
        Self::ms(self.k_start, self.k_modules)
    }

    fn summary(&self) -> String {
        if !self.ok {
            return format!("FAILED: {}", self.error.as_deref().unwrap_or("?"));
        }
        format!(
            "initrd phase {} ms, root at {} s (QEMU start), init VmHWM {} kB",
            self.phase_ms().map_or("?".into(), |v| format!("{v:.0}")),
            self.wall_root_s.map_or("?".into(), |v| format!("{v:.2}")),
            self.hwm_kb.map_or("?".into(), |v| v.to_string())
        )
    }
}

fn boot_once(
    p: &Prepared,
    kernel: &Kernel,
    disk: &Path,
    run: usize,
    log: &Path,
) -> Result<BootRun> {
    let mut spec = QemuSpec::new(Boot::Direct {
        kernel: kernel.vmlinuz.clone(),
        initrd: Some(p.initrd.clone()),
        append: p.variant.cmdline(),
    });
    spec.memory_mib = GUEST_MIB;
    spec.drives.push(Drive {
        snapshot: true,
        ..Drive::virtio(disk)
    });
    let load = load_average();
    let con = run_qemu(&spec, log, BOOT_TIMEOUT)?;
    let mut r = analyse(p.variant, run, &con, log);
    r.host_load = load;
    Ok(r)
}

fn analyse(v: Variant, run: usize, con: &Console, log: &Path) -> BootRun {
    let kernel: Vec<(f64, &str)> = con.lines.iter().filter_map(|(_, l)| kstamp(l)).collect();
    let first = |pred: &dyn Fn(&str) -> bool| kernel.iter().find(|(_, t)| pred(t)).map(|(s, _)| *s);
    let mut r = BootRun {
        variant: v,
        run,
        ok: false,
        error: None,
        log: log.to_path_buf(),
        wall_root_s: con
            .lines
            .iter()
            .find(|(_, l)| l.contains(ROOT_CONSOLE))
            .map(|(t, _)| *t),
        k_unpack_start: first(&|t| t.starts_with("Trying to unpack rootfs image as initramfs")),
        k_unpack_end: first(&|t| t.starts_with("Freeing initrd memory")),
        k_run_init: first(&|t| t.starts_with("Run /init as init process")),
        k_start: first(&|t| v.is_start(t)),
        k_end: first(&|t| v.is_end(t)),
        k_root: first(&|t| t.starts_with(ROOT_KMSG)),
        k_modules: first(&|t| t.starts_with("bench: modules loaded")),
        hwm_kb: kernel.iter().find_map(|(_, t)| {
            let i = t.find("VmHWM:")?;
            if !(t.starts_with("hninit:") || t.starts_with("bench:")) {
                return None;
            }
            t[i + 6..].split_whitespace().next()?.parse().ok()
        }),
        steps: Vec::new(),
        modules_loaded: Vec::new(),
        module_ms: Vec::new(),
        host_load: None,
    };
    if v == Variant::Hninit {
        let mut prev = r.k_start;
        let mut from = 0;
        for (prefix, contains, label) in HNINIT_STEPS {
            let hit = kernel[from..]
                .iter()
                .position(|(_, t)| t.starts_with(prefix) && t.contains(contains));
            if let Some(i) = hit {
                let (t, _) = kernel[from + i];
                if let Some(p) = prev {
                    r.steps.push((label.to_string(), (t - p) * 1000.0));
                }
                prev = Some(t);
                from += i + 1;
            }
        }
        // "hninit: loaded virtio_blk (47 ms) for devices"
        for (_, t) in &kernel {
            let Some(rest) = t.strip_prefix("hninit: loaded ") else {
                continue;
            };
            let Some((name, more)) = rest.split_once(" (") else {
                continue;
            };
            let Some((ms, why)) = more.split_once(" ms) for ") else {
                continue;
            };
            if let Ok(ms) = ms.parse::<f64>() {
                r.modules_loaded.push(name.to_string());
                r.module_ms.push((name.to_string(), ms, why.to_string()));
            }
        }
    }
    if v == Variant::InitramfsTools {
        let mut prev: Option<f64> = None;
        let mut from = 0;
        for (needle, label) in ITOOLS_MILESTONES {
            let hit = con.lines[from..]
                .iter()
                .position(|(_, l)| l.contains(needle));
            if let Some(i) = hit {
                let (t, _) = con.lines[from + i];
                if let Some(p) = prev {
                    r.steps.push((label.to_string(), (t - p) * 1000.0));
                }
                prev = Some(t);
                from += i + 1;
            }
        }
    }
    let seen_root = r.wall_root_s.is_some() || r.k_root.is_some();
    r.ok = seen_root;
    if !seen_root {
        let panic = con.lines.iter().find(|(_, l)| l.contains("Kernel panic"));
        r.error = Some(if let Some((_, l)) = panic {
            l.clone()
        } else if con.timed_out {
            format!("no root after {} s", BOOT_TIMEOUT.as_secs())
        } else {
            format!(
                "QEMU exited ({}) before the root's first line",
                con.status.map_or("?".into(), |s| s.to_string())
            )
        });
    } else if r.k_start.is_none() || r.k_root.is_none() {
        r.error = Some("booted, but a marker is missing from the kernel log".into());
    }
    r
}

// ---------------------------------------------------------------------------
// Staging

/// The staging comparison.
#[derive(Debug, Clone, Default, Serialize)]
struct StagingSection {
    /// Why the section was not run.
    skipped: Option<String>,
    image_bytes: u64,
    runs: usize,
    caches_dropped: bool,
    filesystems: Vec<StagingFs>,
    notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct StagingFs {
    name: String,
    note: Option<String>,
    /// Method → seconds per run.
    methods: Vec<StagingMethod>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct StagingMethod {
    label: String,
    secs: Vec<f64>,
    /// How hnctl copied (its own words), for hnctl rows.
    how: Option<String>,
    error: Option<String>,
}

/// The staging methods, in the order measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    /// `cp` (reflink=auto, the default) and `sync FILE`.
    Cp,
    /// `cp --reflink=never` and `sync FILE`.
    CpNever,
    /// `sha256sum` of the copy just made (page cache warm, as after a cp).
    Sha256sum,
    HnctlStage,
    HnctlSha,
    HnctlNoReflink,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Cp => "cp + sync FILE",
            Method::CpNever => "cp --reflink=never + sync FILE",
            Method::Sha256sum => "cp + sync FILE + sha256sum",
            Method::HnctlStage => "hnctl stage",
            Method::HnctlSha => "hnctl stage --sha256",
            Method::HnctlNoReflink => "hnctl stage --no-reflink",
        }
    }
}

/// The hnctl binary, if it has `stage`.
fn find_hnctl() -> Result<PathBuf> {
    let p = build_workspace_bin("hnctl")?;
    let help = Command::new(&p).args(["stage", "--help"]).output()?;
    if !help.status.success() {
        bail!("`hnctl stage --help` fails: hnctl has no stage command yet");
    }
    Ok(p)
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn bench_staging(opts: &BenchOptions, dir: &Path) -> StagingSection {
    let mut sec = StagingSection {
        runs: if opts.smoke {
            1
        } else {
            opts.staging_runs.max(1)
        },
        image_bytes: opts.staging_mib << 20,
        ..Default::default()
    };
    let hnctl = match find_hnctl() {
        Ok(p) => p,
        Err(e) => {
            sec.skipped = Some(format!("hnctl stage is not available: {e:#}"));
            return sec;
        }
    };
    sec.caches_dropped = drop_caches();
    let work = dir.join("staging");
    let res = (|| -> Result<()> {
        util::remove_any(&work)?;
        fs::create_dir_all(&work)?;
        let src = work.join("source.img");
        eprintln!(
            "bench: staging: making a {} image",
            human_bytes(sec.image_bytes)
        );
        make_stage_image(&src, sec.image_bytes)?;
        let sha = util::run_stdout(cmd("sha256sum").arg(&src))?;
        let sha = sha.split_whitespace().next().unwrap_or("").to_string();
        let fsname = mount_fstype(&work).unwrap_or_else(|| "?".into());
        let ext = measure_fs(
            &format!("{fsname} (the build directory's filesystem)"),
            &work,
            &src,
            &sha,
            &hnctl,
            sec.runs,
            &[
                Method::Cp,
                Method::Sha256sum,
                Method::HnctlStage,
                Method::HnctlSha,
                Method::HnctlNoReflink,
            ],
        );
        sec.filesystems.push(ext);
        match BtrfsMount::new(dir, sec.image_bytes) {
            Ok(m) => {
                let bsrc = m.dir.join("source.img");
                util::run(cmd("cp").arg("--reflink=never").arg(&src).arg(&bsrc))?;
                util::remove_any(&src)?;
                let r = measure_fs(
                    "btrfs (a file-backed filesystem on a loop device)",
                    &m.dir,
                    &bsrc,
                    &sha,
                    &hnctl,
                    sec.runs,
                    // The full-copy paths are measured on the first filesystem.
                    &[
                        Method::Cp,
                        Method::Sha256sum,
                        Method::HnctlStage,
                        Method::HnctlSha,
                    ],
                );
                sec.filesystems.push(r);
            }
            Err(e) => sec.filesystems.push(StagingFs {
                name: "btrfs".into(),
                note: Some(format!("not measured: {e:#}")),
                methods: Vec::new(),
            }),
        }
        Ok(())
    })();
    if let Err(e) = res {
        sec.notes.push(format!("staging stopped early: {e:#}"));
    }
    let _ = util::remove_any(&work);
    sec
}

/// The type of the filesystem `path` is on, from `/proc/self/mounts`.
fn mount_fstype(path: &Path) -> Option<String> {
    let path = fs::canonicalize(path).ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_, mnt, ty) = (w.next()?, w.next()?, w.next()?);
            let mnt = mnt.replace("\\040", " ");
            path.starts_with(&mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, t)| t)
}

/// A valid ext4 image of `bytes`, full of random data (no holes, nothing to compress).
fn make_stage_image(path: &Path, bytes: u64) -> Result<()> {
    {
        let mut r = fs::File::open("/dev/urandom")?;
        let mut w = fs::File::create(path)?;
        let mut buf = vec![0u8; 4 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..n])?;
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
        w.sync_all()?;
    }
    // nodiscard: mke2fs would punch holes into a regular file.
    util::run(
        cmd("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard", "-L", "staged"])
            .arg(path),
    )
    .context("mkfs.ext4 of the staging image")
}

/// A btrfs filesystem in a file, loop-mounted for the time of the measurement.
struct BtrfsMount {
    dir: PathBuf,
    file: PathBuf,
}

impl BtrfsMount {
    fn new(parent: &Path, image_bytes: u64) -> Result<BtrfsMount> {
        let file = parent.join("btrfs.img");
        let dir = parent.join("btrfs-mnt");
        util::remove_any(&file)?;
        fs::create_dir_all(&dir)?;
        // The source, a full copy and slack.
        let size = image_bytes * 3 + (512 << 20);
        fs::File::create(&file)?.set_len(size)?;
        util::run(cmd("mkfs.btrfs").args(["-q", "-f"]).arg(&file)).context("mkfs.btrfs")?;
        util::run(
            cmd("mount")
                .args(["-t", "btrfs", "-o", "loop"])
                .arg(&file)
                .arg(&dir),
        )
        .context("mounting it (needs root and a free loop device)")?;
        Ok(BtrfsMount { dir, file })
    }
}

impl Drop for BtrfsMount {
    fn drop(&mut self) {
        let _ = util::run(cmd("umount").arg(&self.dir));
        let _ = fs::remove_dir(&self.dir);
        let _ = fs::remove_file(&self.file);
    }
}

fn measure_fs(
    name: &str,
    dir: &Path,
    src: &Path,
    sha: &str,
    hnctl: &Path,
    runs: usize,
    methods: &[Method],
) -> StagingFs {
    let host = dir.join("host");
    let copy = dir.join("copy.img");
    let mut out = StagingFs {
        name: name.to_string(),
        note: None,
        methods: methods
            .iter()
            .map(|m| StagingMethod {
                label: m.label().into(),
                ..Default::default()
            })
            .collect(),
    };
    if let Err(e) = fs::create_dir_all(&host) {
        out.note = Some(format!("cannot create {}: {e}", host.display()));
        return out;
    }
    let clean = || {
        for f in [
            "hn-root-new.img",
            "hn-root-new.img.part",
            "hn-root-new.img.sha256",
        ] {
            let _ = fs::remove_file(host.join(f));
        }
    };
    for run in 0..runs {
        let mut cp_secs = None;
        // cp (and the sha256sum of its copy) first on even runs, last on odd ones,
        // so that neither side always follows the other.
        let mut order: Vec<usize> = (0..methods.len()).collect();
        if run % 2 == 1 {
            let is_cp = |i: &usize| {
                matches!(
                    methods[*i],
                    Method::Cp | Method::Sha256sum | Method::CpNever
                )
            };
            let (cp, rest): (Vec<usize>, Vec<usize>) = order.iter().partition(|i| is_cp(i));
            order = rest.into_iter().chain(cp).collect();
        }
        for i in order {
            let m = methods[i];
            if m != Method::Sha256sum {
                clean();
                let _ = fs::remove_file(&copy);
                drop_caches();
            }
            eprintln!(
                "bench: staging on {name}: run {}/{runs}: {}",
                run + 1,
                m.label()
            );
            let t = Instant::now();
            let res: Result<Option<String>> = match m {
                Method::Cp | Method::CpNever => (|| {
                    let mut c = cmd("cp");
                    if m == Method::CpNever {
                        c.arg("--reflink=never");
                    }
                    util::run(c.arg(src).arg(&copy))?;
                    util::run(cmd("sync").arg(&copy))?;
                    Ok(None)
                })(),
                Method::Sha256sum => (|| {
                    let got = util::run_stdout(cmd("sha256sum").arg(&copy))?;
                    if !got.starts_with(sha) {
                        bail!("sha256sum of the copy differs");
                    }
                    Ok(None)
                })(),
                Method::HnctlStage | Method::HnctlSha | Method::HnctlNoReflink => {
                    let mut c = Command::new(hnctl);
                    c.arg("--hostpart")
                        .arg(&host)
                        .args(["--real-root", "/hn-root.img", "stage"])
                        .arg(src);
                    if m == Method::HnctlSha {
                        c.args(["--sha256", sha]);
                    }
                    if m == Method::HnctlNoReflink {
                        c.arg("--no-reflink");
                    }
                    util::run_stdout(&mut c).map(|o| hnctl_how(&o))
                }
            };
            let mut secs = t.elapsed().as_secs_f64();
            let row = &mut out.methods[i];
            match res {
                Ok(how) => {
                    if m == Method::Sha256sum {
                        // "cp + sync + sha256sum": the copy's time plus the digest's.
                        match cp_secs {
                            Some(c) => secs += c,
                            None => {
                                row.error = Some("no cp before it".into());
                                continue;
                            }
                        }
                    }
                    if m == Method::Cp {
                        cp_secs = Some(secs);
                    }
                    row.secs.push(secs);
                    if how.is_some() {
                        row.how = how;
                    }
                }
                Err(e) => row.error = Some(format!("{e:#}")),
            }
        }
    }
    clean();
    let _ = fs::remove_file(&copy);
    out
}

/// hnctl's summary says how it copied ("reflinked", "copied (copy_file_range)",
/// …) and whether it computed a sha256.
fn hnctl_how(stdout: &str) -> Option<String> {
    let line = stdout.lines().find(|l| l.starts_with("staged "))?;
    let after = line.split("MB/s), ").nth(1)?;
    let mut how = after.split(',').next()?.trim().to_string();
    if let Some(d) = stdout.lines().find(|l| l.starts_with("sha256 ")) {
        if d.contains("verified") {
            how.push_str(", sha256 verified");
        } else if !d.contains("not computed") {
            how.push_str(", sha256 computed");
        }
    }
    Some(how)
}

// ---------------------------------------------------------------------------
// Machine

#[derive(Debug, Clone, Serialize)]
struct Machine {
    nproc: usize,
    memory: String,
    cpu: String,
    qemu: String,
    host_kernel: String,
    guest_kernel: String,
    date: String,
    commit: String,
    /// The host's 1-minute load average when the bench started and ended.
    load_start: Option<f64>,
    load_end: Option<f64>,
}

impl Machine {
    fn probe(kernel: &Kernel) -> Machine {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "?".into());
        let first_line = |c: &mut Command| {
            util::run_stdout(c)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_string))
                .unwrap_or_else(|| "?".into())
        };
        let root = workspace_root();
        let mut commit = first_line(Command::new("git").arg("-C").arg(&root).args([
            "rev-parse",
            "--short",
            "HEAD",
        ]));
        if util::run_stdout(
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["status", "--porcelain"]),
        )
        .is_ok_and(|s| !s.trim().is_empty())
        {
            commit.push_str(" + uncommitted changes");
        }
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory: format!("{:.1} GiB", mem_kb as f64 / 1048576.0),
            cpu,
            qemu: first_line(Command::new(QEMU).arg("--version")),
            host_kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            guest_kernel: format!(
                "{} ({})",
                kernel.release,
                package_version(&format!("linux-image-{}", kernel.release))
                    .or_else(|| kernel_package_version(kernel))
                    .unwrap_or_else(|| "Debian".into())
            ),
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            commit,
            load_start: None,
            load_end: load_average(),
        }
    }
}

/// The Debian package version recorded in the kernel cache's directory name.
fn kernel_package_version(kernel: &Kernel) -> Option<String> {
    kernel.vmlinuz.ancestors().find_map(|a| {
        let name = a.file_name()?.to_str()?;
        let (pkg, ver) = name.split_once('_')?;
        pkg.starts_with("linux-image-")
            .then(|| format!("{pkg} {}", ver.replace("%3a", ":")))
    })
}

// ---------------------------------------------------------------------------
// Report

#[derive(Debug, Clone, Serialize)]
struct VariantInfo {
    variant: Variant,
    cmdline: String,
    stats: ArchiveStats,
    notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Results {
    machine: Machine,
    command: String,
    runs: usize,
    smoke: bool,
    variants: Vec<VariantInfo>,
    reference_modules: Vec<String>,
    boots: Vec<BootRun>,
    staging: StagingSection,
    elapsed_s: f64,
}

/// Median, min and max.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// `median (min–max)` with `decimals`; just the value for one sample.
    fn show(&self, decimals: usize) -> String {
        if self.n == 1 || (self.min == self.max) {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }
}

fn show(s: Option<Spread>, decimals: usize) -> String {
    s.map_or("n/a".into(), |s| s.show(decimals))
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / 1048576.0)
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

impl Results {
    fn boots_of(&self, v: Variant) -> impl Iterator<Item = &BootRun> {
        self.boots.iter().filter(move |b| b.variant == v)
    }

    fn spread(&self, v: Variant, f: impl Fn(&BootRun) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.boots_of(v).filter(|b| b.ok).filter_map(f))
    }

    /// Per run pair: `f(variant) / f(hninit)`.
    fn ratio(&self, v: Variant, f: impl Fn(&BootRun) -> Option<f64>) -> Option<Spread> {
        let h: HashMap<usize, f64> = self
            .boots_of(Variant::Hninit)
            .filter(|b| b.ok)
            .filter_map(|b| Some((b.run, f(b)?)))
            .collect();
        Spread::of(
            self.boots_of(v)
                .filter(|b| b.ok)
                .filter_map(|b| Some(f(b)? / h.get(&b.run)?)),
        )
    }

    fn info(&self, v: Variant) -> Option<&VariantInfo> {
        self.variants.iter().find(|i| i.variant == v)
    }
}

fn render_report(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "hninit against what users would use instead, measured by `cargo xtask bench` \
         (`xtask/src/bench.rs`); this file is its output{}.\n",
        if r.smoke {
            " (**smoke run: one boot per variant, small staging image — not for quoting**)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "    {}\n", r.command);
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| date | {} |", m.date);
    let _ = writeln!(s, "| commit | {} |", m.commit);
    let _ = writeln!(s, "| CPU | {} × {} |", m.nproc, m.cpu);
    let _ = writeln!(s, "| memory | {} |", m.memory);
    let _ = writeln!(s, "| host kernel | {} |", m.host_kernel);
    let _ = writeln!(s, "| QEMU | {} (TCG, 1 vCPU, {GUEST_MIB} MiB) |", m.qemu);
    let _ = writeln!(s, "| guest kernel | {} |", m.guest_kernel);
    let _ = writeln!(s, "| whole run | {:.0} s |", r.elapsed_s);
    let boot_load = Spread::of(r.boots.iter().filter_map(|b| b.host_load));
    let fmt_load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    let _ = writeln!(
        s,
        "| host load (1-min average) | {} at the start, {} at boot starts, {} at the end |\n",
        fmt_load(m.load_start),
        show(boot_load, 2),
        fmt_load(m.load_end)
    );
    if boot_load.is_some_and(|l| l.median > m.nproc as f64) {
        let _ = writeln!(
            s,
            "**The machine was busy with other work during the boots (load above its {} CPUs)**: \
             the times below are inflated and noisier than on an idle machine; the ratios, taken \
             per round, suffer less.\n",
            m.nproc
        );
    }

    let _ = writeln!(s, "## Setup\n");
    let _ = writeln!(
        s,
        "One disk (GPT, ext4 host partition `LABEL=hostpart` holding `hn-root.img`, an ext4 \
         busybox root whose `/sbin/init` logs `hnroot: booted image=…` to `/dev/kmsg` first), \
         booted {} time(s) per variant with `-kernel` (the cached Debian kernel), the same QEMU \
         command and `snapshot=on`, the variants alternating. Only the initramfs and the command \
         line differ:\n",
        r.runs
    );
    let _ = writeln!(
        s,
        "| variant | command line after `{BASE_CMDLINE}` | what it is |\n|---|---|---|"
    );
    for i in &r.variants {
        let own = i
            .cmdline
            .strip_prefix(BASE_CMDLINE)
            .unwrap_or(&i.cmdline)
            .trim();
        let _ = writeln!(
            s,
            "| {} | `{}` | {} |",
            i.variant.title(),
            own,
            i.notes.join("; ")
        );
    }
    let _ = writeln!(
        s,
        "\nThe busybox sh init (`bench/busybox-init/init`) is a **baseline, not part of the \
         product**: the genkernel image-root steps as a shell script. Debian's initramfs-tools \
         has no `loop=` support (Debian bug #468114; Ubuntu patches `scripts/local`), so \
         `bench/initramfs-tools/scripts/local-bottom/loop_root` adds it the way a user would: \
         initramfs-tools waits for `root=` (udev), fscks and mounts it, then the script moves it \
         to `/host`, loop-mounts the image on the new root and moves the host partition into it. \
         Every variant logs its first and last line to `/dev/kmsg` (hninit: its own \
         `hninit … started` and `switching root`; the others `bench: initrd start`/`end`, from \
         an init-top and an init-bottom script for initramfs-tools).\n"
    );

    let _ = writeln!(s, "Method notes:\n");
    for note in [
        "No `quiet` on any command line (Debian's GRUB adds it): the kernel's console lines carry \
         the timestamps. All variants pay the same serial-console cost for the kernel's lines; \
         hninit prints ~20 more with `hn.debug`, initramfs-tools its `Begin: …` lines.",
        "The initrd phase starts at each variant's first line. initramfs-tools' first line comes \
         from an init-top script, after its `/init` has mounted /proc /sys /dev /run and read its \
         configuration, so the row from the kernel's `Run /init` is given too.",
        "initramfs-tools gets `ro`, as Debian's GRUB passes: it fscks the host partition and \
         mounts it read-only. hninit and the busybox script mount it read-write, and the image \
         read-only.",
        "The busybox reference carries only the modules this disk needs; hninit carries its \
         default set (every disk interface and filesystem it supports); initramfs-tools \
         MODULES=most. Sizes differ for that reason too.",
        "Everything runs under TCG (no KVM) with one vCPU: CPU-bound work (module relocation, \
         decompression, shell) is many times slower than on hardware, so compare ratios, not \
         absolute times.",
    ] {
        let _ = writeln!(s, "- {note}");
    }
    let _ = writeln!(s);

    // Boot table.
    let vs = Variant::ALL;
    let _ = writeln!(s, "## Boot\n");
    let _ = writeln!(
        s,
        "Median (min–max) over {} run(s); times in ms from the kernel's timestamps unless noted. \
         Ratios are per run pair (variant ÷ hninit in the same round).\n",
        r.runs
    );
    let _ = write!(s, "| |");
    for v in vs {
        let _ = write!(s, " {} |", v.title());
    }
    let _ = write!(s, "\n|---|");
    for _ in vs {
        let _ = write!(s, "---|");
    }
    let _ = writeln!(s);
    let row = |s: &mut String, label: &str, f: &dyn Fn(Variant) -> String| {
        let _ = write!(s, "| {label} |");
        for v in vs {
            let _ = write!(s, " {} |", f(v));
        }
        let _ = writeln!(s);
    };
    row(&mut s, "boots reaching the root", &|v| {
        let all = r.boots_of(v).count();
        let ok = r.boots_of(v).filter(|b| b.ok).count();
        format!("{ok}/{all}")
    });
    row(&mut s, "host load (1-min average) at boot start", &|v| {
        show(r.spread(v, |b| b.host_load), 2)
    });
    row(
        &mut s,
        "**initrd phase**: first initrd line → root's first line",
        &|v| format!("**{}**", show(r.spread(v, BootRun::phase_ms), 0)),
    );
    row(&mut s, "… ÷ hninit's", &|v| {
        if v == Variant::Hninit {
            "1".into()
        } else {
            show(r.ratio(v, BootRun::phase_ms), 2)
        }
    });
    row(&mut s, "kernel's `Run /init` → root's first line", &|v| {
        show(r.spread(v, BootRun::run_init_to_root_ms), 0)
    });
    row(&mut s, "… ÷ hninit's", &|v| {
        if v == Variant::Hninit {
            "1".into()
        } else {
            show(r.ratio(v, BootRun::run_init_to_root_ms), 2)
        }
    });
    row(
        &mut s,
        "  of which: `Run /init` → first initrd line",
        &|v| show(r.spread(v, BootRun::to_start_ms), 0),
    );
    row(&mut s, "  of which: first → last initrd line", &|v| {
        show(r.spread(v, BootRun::work_ms), 0)
    });
    row(
        &mut s,
        "  of which: first line → last `insmod` done (the script's module loading)",
        &|v| {
            if v == Variant::Busybox {
                show(r.spread(v, BootRun::insmod_ms), 0)
            } else {
                "—".into()
            }
        },
    );
    row(
        &mut s,
        "  of which: last initrd line → root's first line",
        &|v| show(r.spread(v, BootRun::to_root_ms), 0),
    );
    row(
        &mut s,
        "kernel unpacking the initramfs (before `/init`)",
        &|v| show(r.spread(v, BootRun::unpack_ms), 0),
    );
    row(
        &mut s,
        "QEMU start → root's first line (wall clock, s)",
        &|v| show(r.spread(v, |b| b.wall_root_s), 2),
    );
    row(&mut s, "… ÷ hninit's", &|v| {
        if v == Variant::Hninit {
            "1".into()
        } else {
            show(r.ratio(v, |b| b.wall_root_s), 2)
        }
    });
    row(&mut s, "initramfs, compressed", &|v| {
        r.info(v).map_or("?".into(), |i| {
            format!(
                "{} ({})",
                human_bytes(i.stats.compressed),
                i.stats.compression
            )
        })
    });
    row(&mut s, "initramfs, uncompressed", &|v| {
        r.info(v)
            .map_or("?".into(), |i| human_bytes(i.stats.uncompressed))
    });
    row(&mut s, "files / kernel modules in it", &|v| {
        r.info(v).map_or("?".into(), |i| {
            format!(
                "{} / {} ({})",
                i.stats.files,
                i.stats.modules,
                human_bytes(i.stats.module_bytes)
            )
        })
    });
    row(&mut s, "`/init` (+ its interpreter)", &|v| {
        r.info(v)
            .map_or("?".into(), |i| match &i.stats.interpreter {
                Some((p, n)) => format!(
                    "{} (+ {p} {})",
                    human_bytes(i.stats.init_size),
                    human_bytes(*n)
                ),
                None => human_bytes(i.stats.init_size),
            })
    });
    row(&mut s, "init's peak memory (VmHWM, KiB)", &|v| {
        let sp = r.spread(v, |b| b.hwm_kb.map(|k| k as f64));
        let note = match v {
            Variant::Hninit => "",
            Variant::Busybox => " (the shell)",
            Variant::InitramfsTools => " (PID 1 shell only; udevd, modprobe… not counted)",
        };
        format!("{}{note}", show(sp, 0))
    });
    let _ = writeln!(s);

    // hninit steps.
    let _ = writeln!(s, "### Where hninit's initrd phase goes\n");
    let _ = writeln!(
        s,
        "From the kernel timestamps of hninit's step lines (each step ends with its line; step 1, \
         mounting /proc /sys /dev /run, precedes the first line). `hn.debug` is on, which adds a \
         few debug lines to the console.\n"
    );
    let step_medians = render_steps(&mut s, r, Variant::Hninit, "step");
    let loaded: Vec<String> = r
        .boots_of(Variant::Hninit)
        .find(|b| b.ok)
        .map(|b| b.modules_loaded.clone())
        .unwrap_or_default();
    if !loaded.is_empty() {
        let _ = writeln!(
            s,
            "\nModules hninit loaded: {} (busybox reference: {}).",
            loaded.join(" "),
            r.reference_modules.join(" ")
        );
        let mut a = loaded.clone();
        let mut b = r.reference_modules.clone();
        a.sort();
        b.sort();
        if a != b {
            let _ = writeln!(
                s,
                "**The two sets differ**: the comparison loads different modules."
            );
        }
        let _ = writeln!(
            s,
            "\nModule load times as hninit reports them (`finit_module`, independent modules in \
             parallel, so they overlap):\n"
        );
        let _ = writeln!(s, "| module | ms | loaded for |\n|---|---|---|");
        for name in &loaded {
            let mut why = String::new();
            let sp = Spread::of(
                r.boots_of(Variant::Hninit)
                    .filter(|b| b.ok)
                    .filter_map(|b| {
                        let (_, ms, w) = b.module_ms.iter().find(|(n, _, _)| n == name)?;
                        why = w.clone();
                        Some(*ms)
                    }),
            );
            let _ = writeln!(s, "| {name} | {} | {why} |", show(sp, 0));
        }
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "### Where initramfs-tools' time goes\n");
    let _ = writeln!(
        s,
        "From its console lines (`Begin: …`, which carry no kernel timestamp: wall clock at each \
         line's arrival, so a segment ends when the script's line is complete):\n"
    );
    render_steps(&mut s, r, Variant::InitramfsTools, "segment");
    let _ = writeln!(s);

    // Sizes.
    if let Some(h) = r.info(Variant::Hninit) {
        let _ = writeln!(s, "### What hninit's initramfs holds\n");
        let _ = writeln!(
            s,
            "The largest files, each also compressed alone with zstd at the builder's level (an \
             estimate of its share of the {}):\n",
            human_bytes(h.stats.compressed)
        );
        let _ = writeln!(s, "| file | size | alone, zstd |\n|---|---|---|");
        for (p, n, z) in &h.stats.largest {
            let _ = writeln!(s, "| `{p}` | {} | {} |", human_bytes(*n), human_bytes(*z));
        }
        let need: u64 = h
            .stats
            .module_sizes
            .iter()
            .filter(|(n, _)| r.reference_modules.contains(n))
            .map(|(_, z)| z)
            .sum();
        let all: u64 = h.stats.module_sizes.iter().map(|(_, z)| z).sum();
        let _ = writeln!(
            s,
            "\nModules: {} of them, {} uncompressed, ≈ {} compressed one by one; the {} this disk \
             needs are ≈ {} of that.\n",
            h.stats.modules,
            human_bytes(h.stats.module_bytes),
            human_bytes(all),
            r.reference_modules.len(),
            human_bytes(need)
        );
    }

    // Staging.
    render_staging(&mut s, &r.staging);

    // Goals.
    let _ = writeln!(s, "## Against the goals\n");
    let _ = writeln!(s, "| goal | measured | met |\n|---|---|---|");
    let goal = |s: &mut String, what: &str, measured: String, met: Option<bool>| {
        let m = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(s, "| {what} | {measured} | {m} |");
    };
    let rb = r.ratio(Variant::Busybox, BootRun::phase_ms);
    goal(
        &mut s,
        "initrd phase ≤ ½ of the busybox reference's",
        rb.map_or("n/a".into(), |x| {
            format!("busybox ÷ hninit = {}", x.show(2))
        }),
        rb.map(|x| x.median >= 2.0),
    );
    let rt = r.ratio(Variant::InitramfsTools, BootRun::phase_ms);
    goal(
        &mut s,
        "initrd phase ≤ ⅓ of initramfs-tools'",
        rt.map_or("n/a".into(), |x| {
            format!("initramfs-tools ÷ hninit = {}", x.show(2))
        }),
        rt.map(|x| x.median >= 3.0),
    );
    if let Some(h) = r.info(Variant::Hninit) {
        goal(
            &mut s,
            "initramfs with the default modules < 3 MiB compressed",
            human_bytes(h.stats.compressed),
            Some(h.stats.compressed < 3 << 20),
        );
        goal(
            &mut s,
            "`/init` < 1 MiB",
            human_bytes(h.stats.init_size),
            Some(h.stats.init_size < 1 << 20),
        );
    }
    let hw = r.spread(Variant::Hninit, |b| b.hwm_kb.map(|k| k as f64));
    goal(
        &mut s,
        "init peak memory < 8 MiB",
        hw.map_or("n/a".into(), |x| {
            format!("{} KiB (max {:.0})", x.median, x.max)
        }),
        hw.map(|x| x.max < 8192.0),
    );
    for (what, hn, cp) in staging_pairs(&r.staging) {
        // Reflinks take milliseconds: their ratio is process start-up noise.
        let instant = hn < 0.5 && cp < 0.5;
        goal(
            &mut s,
            &format!("staging ≥ 90 % of cp's throughput ({what})"),
            if instant {
                format!("both instant ({} vs {})", secs_label(hn), secs_label(cp))
            } else {
                format!(
                    "{:.0} % ({} vs {})",
                    100.0 * cp / hn,
                    secs_label(hn),
                    secs_label(cp)
                )
            },
            if instant { None } else { Some(cp / hn >= 0.9) },
        );
    }
    if r.staging.filesystems.is_empty() {
        goal(
            &mut s,
            "staging ≥ 90 % of cp's throughput",
            "not measured".into(),
            None,
        );
    }
    let _ = writeln!(s);

    // Reading.
    render_reading(&mut s, r, &step_medians);

    let failed: Vec<&BootRun> = r.boots.iter().filter(|b| !b.ok).collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "## Failed boots\n");
        for b in failed {
            let _ = writeln!(
                s,
                "- {} run {}: {}",
                b.variant.title(),
                b.run + 1,
                b.error.as_deref().unwrap_or("?")
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Raw figures: `target/xtask/bench/results.json`; console logs: `target/xtask/bench/logs/`."
    );
    s
}

/// The median time per step of `v`'s boots as a table; returns (step, median ms).
fn render_steps(s: &mut String, r: &Results, v: Variant, what: &str) -> Vec<(String, f64)> {
    let mut labels: Vec<String> = Vec::new();
    for b in r.boots_of(v).filter(|b| b.ok) {
        for (l, _) in &b.steps {
            if !labels.contains(l) {
                labels.push(l.clone());
            }
        }
    }
    let phase = r.spread(v, BootRun::phase_ms);
    let _ = writeln!(
        s,
        "| {what} | ms | share of the initrd phase (medians) |\n|---|---|---|"
    );
    let mut medians = Vec::new();
    for l in &labels {
        let sp = Spread::of(
            r.boots_of(v)
                .filter(|b| b.ok)
                .filter_map(|b| b.steps.iter().find(|(x, _)| x == l).map(|(_, v)| *v)),
        );
        let share = match (sp, phase) {
            (Some(a), Some(p)) if p.median > 0.0 => format!("{:.0} %", 100.0 * a.median / p.median),
            _ => String::new(),
        };
        if let Some(a) = sp {
            medians.push((l.clone(), a.median));
        }
        let _ = writeln!(s, "| {l} | {} | {share} |", show(sp, 0));
    }
    if labels.is_empty() {
        let _ = writeln!(s, "| (no step lines found) | | |");
    }
    medians
}

fn secs_label(secs: f64) -> String {
    format!("{secs:.2} s")
}

/// (description, hnctl median s, cp median s) for the goal, per filesystem.
fn staging_pairs(st: &StagingSection) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    for f in &st.filesystems {
        let med = |label: &str| {
            f.methods
                .iter()
                .find(|m| m.label == label)
                .and_then(|m| Spread::of(m.secs.iter().copied()))
                .map(|s| s.median)
        };
        let fs = f.name.split_whitespace().next().unwrap_or("?");
        let pairs = [
            (Method::HnctlStage, Method::Cp, "hnctl stage vs cp + sync"),
            (
                Method::HnctlSha,
                Method::Sha256sum,
                "--sha256 vs cp + sync + sha256sum",
            ),
        ];
        for (h, c, what) in pairs {
            if let (Some(hn), Some(cp)) = (med(h.label()), med(c.label())) {
                out.push((format!("{fs}: {what}"), hn, cp));
            }
        }
    }
    out
}

fn render_staging(s: &mut String, st: &StagingSection) {
    let _ = writeln!(s, "## Staging an image\n");
    if let Some(why) = &st.skipped {
        let _ = writeln!(s, "Skipped: {why}.\n");
        return;
    }
    let _ = writeln!(
        s,
        "`hnctl --hostpart DIR stage IMAGE` (copy to `hn-root-new.img.part`, fsync, check, rename) \
         against `cp` and `sync FILE` (fsync of the copy), and `sha256sum` of the copy right \
         after (page cache warm, as a user would run it), on the same files in the same \
         filesystem. The image is a {} ext4 filesystem full of random data. {} run(s) each; \
         the page cache was {}dropped before each copy. Throughput in MB/s (10⁶ bytes/s).\n",
        human_bytes(st.image_bytes),
        st.runs,
        if st.caches_dropped { "" } else { "**not** " }
    );
    for f in &st.filesystems {
        let _ = writeln!(s, "### {}\n", f.name);
        if let Some(n) = &f.note {
            let _ = writeln!(s, "{n}\n");
        }
        if f.methods.is_empty() {
            continue;
        }
        let _ = writeln!(s, "| method | s | MB/s | how |\n|---|---|---|---|");
        for m in &f.methods {
            let sp = Spread::of(m.secs.iter().copied());
            let rate = Spread::of(m.secs.iter().map(|t| st.image_bytes as f64 / 1e6 / t));
            let how = match (&m.error, &m.how) {
                (Some(e), _) => format!("failed: {e}"),
                (None, Some(h)) => h.clone(),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                m.label,
                show(sp, 2),
                show(rate, 0),
                how.replace('\n', " ")
            );
        }
        let _ = writeln!(s);
    }
    // What the digest costs on the first filesystem (both pairs differ only by it).
    if let Some(f) = st.filesystems.first() {
        let med = |m: Method| {
            f.methods
                .iter()
                .find(|x| x.label == m.label())
                .and_then(|x| Spread::of(x.secs.iter().copied()))
                .map(|x| x.median)
        };
        let rate = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if a > b => Some(st.image_bytes as f64 / 1e6 / (a - b)),
            _ => None,
        };
        let sum = rate(med(Method::Sha256sum), med(Method::Cp));
        let rw_sha = f.methods.iter().any(|x| {
            x.label == Method::HnctlSha.label()
                && x.how.as_deref().is_some_and(|h| h.contains("read/write"))
        });
        let own = rate(med(Method::HnctlSha), med(Method::HnctlNoReflink)).filter(|_| rw_sha);
        if let (Some(a), Some(b)) = (sum, own) {
            let _ = writeln!(
                s,
                "Digest cost on {}: `sha256sum` hashes at ≈ {a:.0} MB/s (cp + sha256sum − cp); \
                 hnctl's inline sha256 at ≈ {b:.0} MB/s (`--sha256` − `--no-reflink`, both \
                 read/write copies).\n",
                f.name.split_whitespace().next().unwrap_or("?")
            );
        }
    }
    for n in &st.notes {
        let _ = writeln!(s, "{n}\n");
    }
}

fn render_reading(s: &mut String, r: &Results, steps: &[(String, f64)]) {
    let _ = writeln!(s, "## Reading\n");
    let med = |v: Variant, f: fn(&BootRun) -> Option<f64>| r.spread(v, f).map(|x| x.median);
    let (h, b, t) = (
        med(Variant::Hninit, BootRun::phase_ms),
        med(Variant::Busybox, BootRun::phase_ms),
        med(Variant::InitramfsTools, BootRun::phase_ms),
    );
    if let (Some(h), Some(b), Some(t)) = (h, b, t) {
        let _ = writeln!(
            s,
            "- Initrd phase (medians): hninit {h:.0} ms, the busybox script {b:.0} ms, \
             initramfs-tools {t:.0} ms."
        );
    }
    let mut sorted: Vec<&(String, f64)> = steps.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let (Some(hp), false) = (h, sorted.is_empty()) {
        let top: Vec<String> = sorted
            .iter()
            .take(3)
            .map(|(l, v)| format!("{l}: {v:.0} ms ({:.0} %)", 100.0 * v / hp))
            .collect();
        let _ = writeln!(s, "- hninit's largest steps: {}.", top.join("; "));
    }
    // Module loading.
    let mut mods: Vec<(String, f64)> = Vec::new();
    if let Some(b) = r.boots_of(Variant::Hninit).find(|b| b.ok) {
        for (n, _, _) in &b.module_ms {
            let sp = Spread::of(
                r.boots_of(Variant::Hninit)
                    .filter(|b| b.ok)
                    .filter_map(|b| {
                        b.module_ms
                            .iter()
                            .find(|(m, _, _)| m == n)
                            .map(|(_, ms, _)| *ms)
                    }),
            );
            if let Some(sp) = sp {
                mods.push((n.clone(), sp.median));
            }
        }
    }
    if !mods.is_empty() {
        let total: f64 = mods.iter().map(|(_, v)| v).sum();
        mods.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = mods
            .iter()
            .take(3)
            .map(|(n, v)| format!("{n} {v:.0} ms"))
            .collect();
        let _ = writeln!(
            s,
            "- Both hninit and the busybox script load the same {} modules; the kernel's own \
             module loading is most of steps 3–5 (hninit's per-module times add up to {total:.0} ms, \
             largest {}). The busybox script pays that too, one `insmod` after the other.",
            mods.len(),
            top.join(", ")
        );
    }
    if let (Some(ins), Some(bp)) = (
        med(Variant::Busybox, BootRun::insmod_ms),
        med(Variant::Busybox, BootRun::phase_ms),
    ) {
        let _ = writeln!(
            s,
            "- The busybox script's own insmods take {ins:.0} ms of its {bp:.0} ms (first line → \
             last `insmod` done): kernel work (copying, signature check, relocation, the \
             modules' init and device probes) that any initramfs loading these modules pays. \
             On this one-vCPU guest, where parallel loading cannot overlap CPU work, that sets \
             a floor under every variant's initrd phase; half of the script's phase is \
             {:.0} ms.",
            bp / 2.0
        );
    }
    let step = |p: &str| {
        steps
            .iter()
            .find(|(l, _)| l.starts_with(p))
            .map(|(_, v)| *v)
    };
    if let (Some(ix), Some(sl), Some(ho)) = (step("3a."), step("6."), step("10a.")) {
        let gap = match (
            med(Variant::Hninit, BootRun::work_ms),
            med(Variant::Busybox, BootRun::work_ms),
        ) {
            (Some(h), Some(b)) => format!(
                "; hninit's first → last line takes {:.0} ms more than the script's",
                h - b
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "- Work hninit does that the script does not: reading the module index \
             (`modules.dep`, `modules.alias`, trimmed to the initramfs's modules when it was built: \
             step 3a, {ix:.0} ms), slots and boot log (step 6, \
             {sl:.0} ms), emptying the initramfs at the handoff (step 10a, {ho:.0} ms): \
             {:.0} ms together{gap}. QEMU has one vCPU, so loading independent modules in \
             parallel gains nothing here.",
            ix + sl + ho
        );
    }
    let unpack = |v| r.spread(v, BootRun::unpack_ms).map(|x| x.median);
    if let (Some(hu), Some(bu), Some(tu)) = (
        unpack(Variant::Hninit),
        unpack(Variant::Busybox),
        unpack(Variant::InitramfsTools),
    ) {
        let _ = writeln!(
            s,
            "- Before any init runs, the kernel unpacks the archive: {hu:.0} ms for hninit's, \
             {bu:.0} ms for the busybox one, {tu:.0} ms for initramfs-tools' (outside the initrd \
             phase, inside the wall clock)."
        );
    }
    if let Some(hi) = r.info(Variant::Hninit) {
        let st = &hi.stats;
        let mut extra: Vec<&(String, u64)> = st
            .module_sizes
            .iter()
            .filter(|(n, _)| !r.reference_modules.contains(n))
            .collect();
        extra.sort_by_key(|(_, z)| std::cmp::Reverse(*z));
        let extra_sum: u64 = extra.iter().map(|(_, z)| z).sum();
        let need: u64 = st
            .module_sizes
            .iter()
            .filter(|(n, _)| r.reference_modules.contains(n))
            .map(|(_, z)| z)
            .sum();
        let top: Vec<String> = extra
            .iter()
            .take(6)
            .map(|(n, z)| format!("{n} {}", human_bytes(*z)))
            .collect();
        let other: Vec<String> = st
            .largest
            .iter()
            .filter(|(p, _, _)| !is_module(p))
            .map(|(p, _, z)| format!("`/{p}` {}", human_bytes(*z)))
            .collect();
        let _ = writeln!(
            s,
            "- hninit's initramfs is {} compressed (goal: under 3 MiB). Compressed one by one, the \
             modules this disk does not use come to ≈ {} (largest: {}), the ones it uses ≈ {}; \
             besides modules: {}.",
            human_bytes(st.compressed),
            human_bytes(extra_sum),
            top.join(", "),
            human_bytes(need),
            other.join(", ")
        );
    }
    let hw = |v| {
        r.spread(v, |b| b.hwm_kb.map(|k| k as f64))
            .map(|x| x.median)
    };
    if let (Some(hh), Some(bh)) = (hw(Variant::Hninit), hw(Variant::Busybox)) {
        let _ = writeln!(
            s,
            "- Peak memory (VmHWM of the init process): hninit {hh:.0} KiB, the busybox shell \
             {bh:.0} KiB, initramfs-tools' PID 1 shell {} KiB, with udevd, udevadm and a \
             modprobe per device running beside it, not counted.",
            hw(Variant::InitramfsTools).map_or("?".into(), |v| format!("{v:.0}"))
        );
    }
    let it: Vec<(String, f64)> = {
        let mut v = Vec::new();
        if let Some(b) = r.boots_of(Variant::InitramfsTools).find(|b| b.ok) {
            for (l, _) in &b.steps {
                if let Some(sp) = Spread::of(
                    r.boots_of(Variant::InitramfsTools)
                        .filter(|b| b.ok)
                        .filter_map(|b| b.steps.iter().find(|(x, _)| x == l).map(|(_, v)| *v)),
                ) {
                    v.push((l.clone(), sp.median));
                }
            }
        }
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    };
    if let (Some((l1, v1)), Some((l2, v2))) = (it.first(), it.get(1)) {
        let _ = writeln!(
            s,
            "- initramfs-tools spends its time in \"{l1}\" ({v1:.0} ms: udev coldplugs every \
             device and modprobes a driver for each, MODULES=most) and \"{l2}\" ({v2:.0} ms); \
             its archive of {} modules also takes the kernel seconds to unpack.",
            r.info(Variant::InitramfsTools)
                .map_or(0, |i| i.stats.modules)
        );
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_stamps() {
        assert_eq!(
            kstamp("[    1.234567] hninit: hi"),
            Some((1.234567, "hninit: hi"))
        );
        assert_eq!(kstamp("HNROOT: booted"), None);
        assert_eq!(
            kstamp(
                "Begin: Running /scripts/init-bottom ... [   10.520658] bench: init VmHWM: 1916 kB"
            ),
            Some((10.520658, "bench: init VmHWM: 1916 kB"))
        );
        assert_eq!(kstamp("a [b] [1x.2] c"), None);
    }

    #[test]
    fn cleans_escapes_and_cr() {
        assert_eq!(clean(b"\x1b[0;32mOK\x1b[0m done\r"), "OK done");
    }

    #[test]
    fn spread_median() {
        let s = Spread::of([3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(s.show(1), "2.5 (1.0–10.0)");
        assert_eq!(Spread::of([4.0]).unwrap().show(0), "4");
    }

    fn console(lines: &[&str]) -> Console {
        Console {
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, l)| (i as f64, l.to_string()))
                .collect(),
            timed_out: false,
            status: None,
        }
    }

    #[test]
    fn analyses_an_hninit_boot() {
        let c = console(&[
            "[    0.500000] Trying to unpack rootfs image as initramfs...",
            "[    0.700000] Freeing initrd memory: 3000K",
            "[    1.000000] Run /init as init process",
            "[    1.010000] hninit: hninit 0.1.0 started: /proc /sys /dev /run mounted",
            "[    1.020000] hninit: command line: image /hn-root.img ...",
            "[    1.050000] hninit: 38 modules in the initramfs for kernel 6.1.0-56-amd64",
            "[    1.100000] hninit: kernel modules: forced crc32c_generic loop: loaded 2 in 80 ms",
            "[    1.150000] hninit: loaded virtio_blk (12 ms) for devices",
            "[    1.300000] hninit: host partition LABEL=hostpart is /dev/vda1 (found in 200 ms)",
            "[    1.400000] hninit: mounted /dev/vda1 (ext4) read-write at /hostpart",
            "[    1.410000] hninit: image: /hostpart/hn-root.img (real_root=/hn-root.img)",
            "[    1.500000] hninit: root: /hostpart/hn-root.img on /dev/loop0 (ext4, ro)",
            "[    1.540000] hninit: freed 16662 KiB of initramfs",
            "[    1.550000] hninit: peak memory VmHWM:\t    1234 kB",
            "[    1.560000] hninit: switching root: exec /sbin/init",
            "HNROOT: booted image=bench",
            "[    1.600000] hnroot: booted image=bench",
        ]);
        let r = analyse(Variant::Hninit, 0, &c, Path::new("x"));
        assert!(r.ok, "{:?}", r.error);
        assert!(r.error.is_none());
        assert_eq!(r.hwm_kb, Some(1234));
        assert_eq!(r.wall_root_s, Some(15.0));
        assert!((r.phase_ms().unwrap() - 590.0).abs() < 1e-6);
        assert!((r.unpack_ms().unwrap() - 200.0).abs() < 1e-6);
        assert_eq!(r.steps.len(), HNINIT_STEPS.len());
        assert!((r.steps[3].1 - 200.0).abs() < 1e-6, "{:?}", r.steps);
        assert_eq!(r.modules_loaded, ["virtio_blk"]);
        assert_eq!(
            r.module_ms,
            [("virtio_blk".to_string(), 12.0, "devices".to_string())]
        );
    }

    #[test]
    fn a_panic_is_a_failed_boot() {
        let c = console(&["[    2.000000] Kernel panic - not syncing: Attempted to kill init!"]);
        let r = analyse(Variant::Busybox, 0, &c, Path::new("x"));
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("Kernel panic"));
    }

    #[test]
    fn reads_cpio_segments_and_hard_links() {
        // An uncompressed archive followed by a zstd one, with a hard link
        // whose data sits on the second name (as GNU cpio writes them).
        let mut a = Archive::default();
        a.add(
            "init",
            Node::File {
                data: b"#!/bin/sh\necho hi\n".to_vec(),
                mode: 0o755,
            },
        );
        let first = a.to_cpio().unwrap();
        let mut b = Archive::default();
        b.add("bin", Node::Symlink("usr/bin".into()));
        b.add("usr/bin/sh", Node::Symlink("../bin/busybox".into()));
        b.add(
            "usr/bin/busybox",
            Node::File {
                data: vec![7u8; 5000],
                mode: 0o755,
            },
        );
        b.add(
            "lib/modules/x/kernel/a.ko",
            Node::File {
                data: vec![1u8; 100],
                mode: 0o644,
            },
        );
        let second = b.to_cpio().unwrap();
        let mut bytes = first.clone();
        bytes.extend(zstd::bulk::compress(&second, 3).unwrap());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("i");
        fs::write(&p, &bytes).unwrap();
        let st = ArchiveStats::of(&p).unwrap();
        assert_eq!(st.compression, "none + zstd");
        assert_eq!(st.uncompressed, (first.len() + second.len()) as u64);
        assert_eq!(st.init_size, 18);
        assert_eq!(st.interpreter, Some(("/bin/sh".into(), 5000)));
        assert_eq!((st.modules, st.module_bytes), (1, 100));
        assert_eq!(st.largest[0].0, "usr/bin/busybox");
    }

    #[test]
    fn hnctl_summary_method() {
        let out = "staged hn-root-new.img from /x: 2147483648 bytes in 3.10 s (692.7 MB/s), copied with copy_file_range, ext4\n";
        assert_eq!(
            hnctl_how(out).as_deref(),
            Some("copied with copy_file_range")
        );
    }
}
