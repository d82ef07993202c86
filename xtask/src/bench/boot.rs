//! One boot of one variant: QEMU run until the root powers off (through the
//! shared [`crate::console`] process group and cleaner), every console line
//! timestamped on arrival, then the analysis of that console: the kernel
//! timestamps of each init's markers, hninit's step lines and module times,
//! initramfs-tools' milestones, peak memory, and why a boot failed.

use super::prepare::Prepared;
use super::{Variant, GUEST_MIB, ROOT_CONSOLE, ROOT_KMSG};
use crate::console::{GroupGuard, LineSplitter};
use crate::kernel::Kernel;
use crate::qemu::{qemu_command, Boot, Drive, QemuSpec};
use crate::util;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest a boot may take before it counts as failed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// After the root said `poweroff`, how long QEMU may take to exit.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// hninit's step lines: (kernel-log prefix, text it must also contain, what
/// the time up to that line is). Lines marked [debug] exist with `hn.debug`.
pub(super) const HNINIT_STEPS: &[(&str, &str, &str)] = &[
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
pub(super) const ITOOLS_MILESTONES: &[(&str, &str)] = &[
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

/// One boot's console, as captured.
pub(super) struct Console {
    /// (seconds since QEMU was started, cleaned line).
    pub(super) lines: Vec<(f64, String)>,
    pub(super) timed_out: bool,
    pub(super) status: Option<std::process::ExitStatus>,
}

/// Runs QEMU for `spec` until the root powers off (or `timeout`), with every
/// console line timestamped on arrival; the whole log goes to `log`.
pub(super) fn run_qemu(spec: &QemuSpec, log: &Path, timeout: Duration) -> Result<Console> {
    let mut c = qemu_command(spec);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut logf = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(logf, "# {}", util::display_cmd(&c))?;
    let t0 = Instant::now();
    let mut child = c.spawn().context("starting QEMU")?;
    let mut group = GroupGuard::of(&child);
    let (tx, rx) = mpsc::channel::<(f64, String)>();
    let streams: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("piped")),
        Box::new(child.stderr.take().expect("piped")),
    ];
    for mut s in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut lines = LineSplitter::default();
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let t = t0.elapsed().as_secs_f64();
                lines.feed(&buf[..n], |l| {
                    let _ = tx.send((t, l));
                });
            }
            if let Some(l) = lines.finish() {
                let _ = tx.send((t0.elapsed().as_secs_f64(), l));
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
    group.disarm();
    // Output still in the pipes after a kill.
    while let Ok((t, l)) = rx.recv_timeout(Duration::from_millis(200)) {
        writeln!(logf, "{t:9.3} {l}")?;
        con.lines.push((t, l));
    }
    Ok(con)
}

/// The host's 1-minute load average.
pub(super) fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `[    1.234567] text` → (1.234567, "text"). The stamp may follow text a
/// script printed without a newline (`Begin: … [    1.23] kernel line`).
pub(super) fn kstamp(line: &str) -> Option<(f64, &str)> {
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
pub(super) struct BootRun {
    pub(super) variant: Variant,
    pub(super) run: usize,
    pub(super) ok: bool,
    pub(super) error: Option<String>,
    pub(super) log: PathBuf,
    /// Seconds from QEMU's start to the root's first console line.
    pub(super) wall_root_s: Option<f64>,
    /// Kernel timestamps (s): initramfs unpack start/end, `Run /init`, the
    /// init's first and last line, the root's first line.
    pub(super) k_unpack_start: Option<f64>,
    pub(super) k_unpack_end: Option<f64>,
    pub(super) k_run_init: Option<f64>,
    pub(super) k_start: Option<f64>,
    pub(super) k_end: Option<f64>,
    pub(super) k_root: Option<f64>,
    /// The busybox reference: its "bench: modules loaded" line (after its last insmod).
    pub(super) k_modules: Option<f64>,
    /// Peak memory of the init process (VmHWM), kB.
    pub(super) hwm_kb: Option<u64>,
    /// hninit: (step, ms) from kernel timestamps; initramfs-tools: (milestone,
    /// ms) from the console's wall clock.
    pub(super) steps: Vec<(String, f64)>,
    /// hninit: modules it loaded (from its debug lines), in order.
    pub(super) modules_loaded: Vec<String>,
    /// hninit: (module, ms to load it, for what).
    pub(super) module_ms: Vec<(String, f64, String)>,
    /// hninit: its `profile` debug line, (step, wall ms, own CPU ms,
    /// finit_module CPU ms), the last row being the total.
    pub(super) profile: Vec<(String, f64, f64, f64)>,
    /// The host's 1-minute load average when the boot started.
    pub(super) host_load: Option<f64>,
}

impl BootRun {
    pub(super) fn ms(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        Some((b? - a?) * 1000.0)
    }
    /// First initrd marker → the root's first line.
    pub(super) fn phase_ms(&self) -> Option<f64> {
        Self::ms(self.k_start, self.k_root)
    }
    /// The kernel's `Run /init` → the root's first line.
    pub(super) fn run_init_to_root_ms(&self) -> Option<f64> {
        Self::ms(self.k_run_init, self.k_root)
    }
    pub(super) fn unpack_ms(&self) -> Option<f64> {
        Self::ms(self.k_unpack_start, self.k_unpack_end)
    }
    pub(super) fn to_start_ms(&self) -> Option<f64> {
        Self::ms(self.k_run_init, self.k_start)
    }
    pub(super) fn work_ms(&self) -> Option<f64> {
        Self::ms(self.k_start, self.k_end)
    }
    pub(super) fn to_root_ms(&self) -> Option<f64> {
        Self::ms(self.k_end, self.k_root)
    }
    /// The busybox reference: first line → its last insmod done.
    pub(super) fn insmod_ms(&self) -> Option<f64> {
        Self::ms(self.k_start, self.k_modules)
    }

    pub(super) fn summary(&self) -> String {
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

pub(super) fn boot_once(
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

pub(super) fn analyse(v: Variant, run: usize, con: &Console, log: &Path) -> BootRun {
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
        profile: Vec::new(),
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
        if let Some((_, t)) = kernel.iter().find(|(_, t)| t.starts_with("hninit: profile,")) {
            r.profile = parse_profile(t);
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

/// `hninit: profile, ms wall/own cpu/finit_module cpu: 2 cmdline 4.1/0.3/0.0; …;
/// total 800.0/40.2/500.1 (12 finit_module calls)` → rows, the total last.
pub(super) fn parse_profile(line: &str) -> Vec<(String, f64, f64, f64)> {
    let Some((_, rest)) = line.split_once("cpu:") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for part in rest.split(';') {
        let part = part.trim();
        let Some((label, nums)) = part.rsplit_once(' ') else {
            continue;
        };
        let (label, nums) = match nums.contains('/') {
            true => (label, nums),
            // the total: "total 800.0/40.2/500.1 (12 finit_module calls)"
            false => match part.split_whitespace().collect::<Vec<_>>().as_slice() {
                [l, n, ..] => (*l, *n),
                _ => continue,
            },
        };
        let v: Vec<f64> = nums.split('/').filter_map(|x| x.parse().ok()).collect();
        if let [w, o, k] = v.as_slice() {
            out.push((label.to_string(), *w, *o, *k));
        }
    }
    out
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
    fn profile_line() {
        let p = parse_profile(
            "hninit: profile, ms wall/own cpu/finit_module cpu: 1 mounts 3.0/1.0/0.0; 4 devices 300.5/20.0/210.0; total 800.0/40.2/500.1 (12 finit_module calls)",
        );
        assert_eq!(
            p,
            [
                ("1 mounts".to_string(), 3.0, 1.0, 0.0),
                ("4 devices".to_string(), 300.5, 20.0, 210.0),
                ("total".to_string(), 800.0, 40.2, 500.1)
            ]
        );
    }

    #[test]
    fn a_panic_is_a_failed_boot() {
        let c = console(&["[    2.000000] Kernel panic - not syncing: Attempted to kill init!"]);
        let r = analyse(Variant::Busybox, 0, &c, Path::new("x"));
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("Kernel panic"));
    }
}
