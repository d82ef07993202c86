//! `cargo xtask bench`: hninit measured against what users would use instead.
//!
//! One test disk (GPT, an ext4 host partition labelled `hostpart` holding
//! `hn-root.img`, a busybox root image from [`crate::rootfs`]) is booted with
//! direct kernel boot (the cached Debian kernel, the same QEMU command, TCG,
//! `snapshot=on`) alternating between the initramfs for that kernel:
//!
//! * hninit's (the product's builder, default modules);
//! * Debian's initramfs-tools (`mkinitramfs` with Debian's defaults), given the
//!   loop-root support it lacks as a `local-bottom` script (`bench/initramfs-tools/`);
//! * a reference busybox shell init (`bench/busybox-init/`): a baseline doing
//!   what the genkernel image-root patch does, not part of the product;
//! * Debian's dracut with its `dmsquash-live` module ([`dracut`]), booted in
//!   its default mode (a RAM snapshot over the image) and writing through.
//!
//! Each init marks its start and end in the kernel log and the root's init
//! logs `hnroot: booted image=…`, so the kernel timestamps on the console give
//! the initrd phase; sizes come from the archives, peak memory from the inits
//! themselves. A staging section compares `hnctl stage` with `cp` + `sha256sum`.
//! The figures are written as markdown tables between two marker lines of
//! `BENCHMARKS.md` (the generated section; the commentary around it is
//! hand-written and kept), with the raw figures as JSON beside the console
//! logs in `target/xtask/bench/`.
//!
//! This file holds the options, the variants and [`run_bench`], which runs the
//! steps in order; each step is a module:
//!
//! * [`prepare`]: the bench disk and the initramfs;
//! * [`dracut`]: dracut unpacked from its Debian packages, and its initrd;
//! * [`archive`]: what each initramfs holds, read back from the file;
//! * [`boot`]: one QEMU boot and the analysis of its console;
//! * [`staging`]: `hnctl stage` against `cp` + `sha256sum`;
//! * [`machine`]: the host facts for the report;
//! * [`report`]: the figures rendered as the generated section of `BENCHMARKS.md`.
//!
//! `cargo xtask bench --debian` is a separate, manual run ([`debian`], with
//! [`vm`]): power-on → ssh on the factory's Debian 13 image through hninit,
//! initramfs-tools and dracut, and the upgrade cycle (kexec against reboot).

mod archive;
mod boot;
mod debian;
mod dracut;
mod machine;
mod prepare;
mod report;
mod staging;
mod vm;

pub use debian::{run_debian, DebianOptions};

use crate::initbin::build_init;
use crate::kernel::debian_kernel;
use crate::paths::build_dir;
use crate::util;
use anyhow::{Context, Result};
use boot::{boot_once, load_average, BootRun};
use hninit::modules::index::ModIndex;
use machine::Machine;
use prepare::{build_bench_disk, ensure_initramfs_tools, prepare};
use report::{human_bytes, render_report, Results, VariantInfo};
use serde::Serialize;
use staging::{bench_staging, StagingSection};
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Boots per variant.
    pub runs: usize,
    /// CI mode: one run, a small staging image; only a failed boot fails.
    pub smoke: bool,
    /// The report file: its generated section is replaced (a new file is created).
    pub out: PathBuf,
    /// Run the staging section.
    pub staging: bool,
    /// Size of the staged image.
    pub staging_mib: u64,
    /// Repetitions of each staging method.
    pub staging_runs: usize,
    /// The command line as typed, for the report.
    pub command: String,
    /// Only these variants (keys; empty: all). For quick comparisons by hand.
    pub only: Vec<String>,
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

/// The initramfs compared (both dracut variants boot the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Variant {
    Hninit,
    Busybox,
    InitramfsTools,
    /// dracut's dmsquash-live, its default: a RAM snapshot over the image.
    DracutLive,
    /// dracut's dmsquash-live writing through to the image (`rd.live.overlay=none rw`).
    DracutWrite,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Hninit,
        Variant::Busybox,
        Variant::InitramfsTools,
        Variant::DracutLive,
        Variant::DracutWrite,
    ];

    fn key(self) -> &'static str {
        match self {
            Variant::Hninit => "hninit",
            Variant::Busybox => "busybox",
            Variant::InitramfsTools => "initramfs-tools",
            Variant::DracutLive => "dracut",
            Variant::DracutWrite => "dracut-rw",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Variant::Hninit => "hninit",
            Variant::Busybox => "busybox sh (reference)",
            Variant::InitramfsTools => "initramfs-tools",
            Variant::DracutLive => "dracut live (RAM overlay)",
            Variant::DracutWrite => "dracut live, write-through",
        }
    }

    fn cmdline(self) -> String {
        let own = match self {
            Variant::Hninit => "real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart hn.debug",
            Variant::Busybox => "real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart",
            Variant::InitramfsTools => "root=LABEL=hostpart loop=/hn-root.img loopfstype=ext4 ro",
            Variant::DracutLive => "root=live:LABEL=hostpart rd.live.dir=live",
            Variant::DracutWrite => "root=live:LABEL=hostpart rd.live.dir=live rd.live.overlay=none rw",
        };
        format!("{BASE_CMDLINE} {own}")
    }

    /// Whether a kernel-log text is this init's first line.
    fn is_start(self, text: &str) -> bool {
        match self {
            Variant::Hninit => text.starts_with("hninit: hninit ") && text.contains("started"),
            // systemd is dracut's /init: the kernel's line is its first.
            Variant::DracutLive | Variant::DracutWrite => text.starts_with("Run /init as init process"),
            _ => text.starts_with("bench: initrd start"),
        }
    }

    /// Whether a kernel-log text is this init's last line before the handoff.
    fn is_end(self, text: &str) -> bool {
        match self {
            Variant::Hninit => text.starts_with("hninit: switching root"),
            Variant::DracutLive | Variant::DracutWrite => text.contains("Switching root."),
            _ => text.starts_with("bench: initrd end"),
        }
    }
}

/// Runs the benchmark and writes the report (also when boots failed).
pub fn run_bench(opts: &BenchOptions) -> Result<BenchOutcome> {
    let started = Instant::now();
    report::check_report_file(&opts.out)?;
    let load_start = load_average();
    crate::deps::ensure_host_packages()?;
    ensure_initramfs_tools()?;
    let dir = build_dir().join("bench");
    util::remove_any(&dir)?;
    fs::create_dir_all(dir.join("logs"))?;

    eprintln!("bench: building the init, the kernel cache, the disk and the initramfs");
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
        if !opts.only.is_empty() && !opts.only.iter().any(|k| k == v.key()) {
            continue;
        }
        // Both dracut modes boot one initrd: read it once (the analysis of a
        // 33 MiB archive takes a while).
        let same = prepared
            .iter()
            .find(|p: &&prepare::Prepared| v == Variant::DracutWrite && p.variant == Variant::DracutLive)
            .cloned();
        if let Some(mut p) = same {
            p.variant = v;
            prepared.push(p);
            continue;
        }
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
        for i in 0..prepared.len() {
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
    report::write_report(&opts.out, &render_report(&results))?;
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
