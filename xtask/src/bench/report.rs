//! `BENCHMARKS.md`'s generated section: the figures of a run ([`Results`], also
//! written as JSON) rendered as markdown tables (machine, variants, boot,
//! hninit's steps and modules, initramfs-tools' segments, archive contents,
//! staging, goals). Commentary lives in the hand-written part of the file.

use super::archive::{is_module, ArchiveStats};
use super::boot::BootRun;
use super::machine::Machine;
use super::staging::{Method, StagingSection};
use super::{Variant, BASE_CMDLINE, GUEST_MIB};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub(super) struct VariantInfo {
    pub(super) variant: Variant,
    pub(super) cmdline: String,
    pub(super) stats: ArchiveStats,
    pub(super) notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Results {
    pub(super) machine: Machine,
    pub(super) command: String,
    pub(super) runs: usize,
    pub(super) smoke: bool,
    pub(super) variants: Vec<VariantInfo>,
    pub(super) reference_modules: Vec<String>,
    pub(super) boots: Vec<BootRun>,
    pub(super) staging: StagingSection,
    pub(super) elapsed_s: f64,
}

/// Median, min and max.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) n: usize,
}

impl Spread {
    pub(super) fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
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
    pub(super) fn show(&self, decimals: usize) -> String {
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

pub(super) fn show(s: Option<Spread>, decimals: usize) -> String {
    s.map_or("n/a".into(), |s| s.show(decimals))
}

pub(super) fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / 1048576.0)
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

impl Results {
    pub(super) fn boots_of(&self, v: Variant) -> impl Iterator<Item = &BootRun> {
        self.boots.iter().filter(move |b| b.variant == v)
    }

    pub(super) fn spread(&self, v: Variant, f: impl Fn(&BootRun) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.boots_of(v).filter(|b| b.ok).filter_map(f))
    }

    /// Per run pair: `f(variant) / f(hninit)`.
    pub(super) fn ratio(&self, v: Variant, f: impl Fn(&BootRun) -> Option<f64>) -> Option<Spread> {
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

    pub(super) fn info(&self, v: Variant) -> Option<&VariantInfo> {
        self.variants.iter().find(|i| i.variant == v)
    }
}

pub(super) fn render_report(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "hninit against what users would use instead, measured by `cargo xtask bench` \
         (`xtask/src/bench/`); this file is its output{}.\n",
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
pub(super) fn render_steps(
    s: &mut String,
    r: &Results,
    v: Variant,
    what: &str,
) -> Vec<(String, f64)> {
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

pub(super) fn secs_label(secs: f64) -> String {
    format!("{secs:.2} s")
}

/// (description, hnctl median s, cp median s) for the goal, per filesystem.
pub(super) fn staging_pairs(st: &StagingSection) -> Vec<(String, f64, f64)> {
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

pub(super) fn render_staging(s: &mut String, st: &StagingSection) {
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

pub(super) fn render_reading(s: &mut String, r: &Results, steps: &[(String, f64)]) {
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
    fn spread_median() {
        let s = Spread::of([3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(s.show(1), "2.5 (1.0–10.0)");
        assert_eq!(Spread::of([4.0]).unwrap().show(0), "4");
    }
}
