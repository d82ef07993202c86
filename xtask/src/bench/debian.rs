//! `cargo xtask bench --debian`: what an operator waits for on a real system,
//! the factory's Debian images ([`crate::factory`], debootstrap bases cached
//! in `cache_dir()`) with root's ssh key put in by a factory hook.
//!
//! * **Power-on → ssh**: one Debian 13 image on a host partition (as
//!   `hn-root.img`, and as `live/rootfs.img` for dracut), booted direct
//!   (`-kernel`: the image's own kernel, TCG, 1 GiB, `snapshot=on` so every
//!   boot is the image's first), alternating per round between hninit (the
//!   image's `/boot/initramfs`), initramfs-tools (`mkinitramfs` on this host
//!   for the image's kernel with the bench's loop-root script,
//!   [`super::prepare::cached_initramfs_tools`]) and dracut's `dmsquash-live`
//!   ([`super::dracut`]) in its two modes; the time is QEMU start → an ssh
//!   command (`cat /etc/hn-image-id`) succeeding through the forwarded port.
//! * **Upgrade cycle**: a Debian 12 image booted through OVMF and GRUB
//!   (QEMU allowed to reset: a reboot goes through the firmware again), a
//!   Debian 13 image (another kernel) staged inside it with `hnctl stage
//!   /dev/vdb` (the image file as a second, read-only disk), then `systemctl
//!   reboot`: the time is that command → ssh answering on the new image, with
//!   hninit's default kexec after the rotation against `hn.after_rotate=reboot`.
//!
//! The figures go to `target/xtask/bench-debian/` (JSON, console logs) and,
//! as markdown, between the `debian-bench` marker lines of the report.

use super::boot::load_average;
use super::vm::{free_port, ssh, wait_ssh, Vm};
use crate::disk::{build_disk, DiskSpec, EspSpec, HostpartSpec};
use crate::factory::{build_image, ImageSpec};
use crate::grub::GrubVars;
use crate::initbin::{build_init, build_workspace_bin};
use crate::kernel::{kernel_from_dir, Kernel};
use crate::paths::build_dir;
use crate::qemu::{fresh_ovmf_vars, qemu_command, Boot, Drive, QemuSpec};
use crate::util;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Image filesystem size (sparse; a tree is ≈ 750 MiB).
const IMAGE_MIB: u64 = 1536;
/// Host partition: two images' data plus room (sparse).
const HOSTPART_MIB: u64 = 4096;
const GUEST_MIB: u32 = 1024;
/// Every boot's command line starts with this.
const BASE: &str = "console=ttyS0 net.ifnames=0 panic=-1";
/// QEMU start → ssh (TESTBED: 17–32 s; dracut's initrd adds 15 s; a loaded host, more).
const BOOT_LIMIT: Duration = Duration::from_secs(420);
/// `hnctl stage` of a 1.5 GiB image under TCG.
const STAGE_LIMIT: Duration = Duration::from_secs(600);
/// The Debian 13 image's id, and the Debian 12 one's (the upgrade's start).
const NEW_ID: &str = "trixie";
const OLD_ID: &str = "bookworm";
/// hninit's line after the rotation, before it kexecs or reboots.
const DECIDED: &str = "hninit: the new image's kernel is ";

/// What `cargo xtask bench --debian` was asked for.
#[derive(Debug, Clone)]
pub struct DebianOptions {
    /// Rounds (each boots every variant once).
    pub runs: usize,
    /// The report whose `debian-bench` section is replaced.
    pub out: PathBuf,
    /// Only these keys (power-on: hninit, initramfs-tools, initramfs-tools-part, dracut, dracut-rw;
    /// upgrade: kexec, reboot); empty: all.
    pub only: Vec<String>,
    /// The command line as typed.
    pub command: String,
}

/// How the Debian 13 image is booted in the power-on table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum PowerOn {
    Hninit,
    InitramfsTools,
    /// The same image as the root filesystem of a disk of its own (the image
    /// file as a virtio disk, `root=/dev/vda`): a system installed normally,
    /// no host partition, no loop device.
    InitramfsToolsPartition,
    Dracut,
    DracutWrite,
}

impl PowerOn {
    const ALL: [PowerOn; 5] = [PowerOn::Hninit, PowerOn::InitramfsTools, PowerOn::InitramfsToolsPartition, PowerOn::Dracut, PowerOn::DracutWrite];

    fn key(self) -> &'static str {
        match self {
            PowerOn::Hninit => "hninit",
            PowerOn::InitramfsTools => "initramfs-tools",
            PowerOn::InitramfsToolsPartition => "initramfs-tools-part",
            PowerOn::Dracut => "dracut",
            PowerOn::DracutWrite => "dracut-rw",
        }
    }

    fn title(self) -> &'static str {
        match self {
            PowerOn::Hninit => "hninit (the image's /boot/initramfs)",
            PowerOn::InitramfsTools => "initramfs-tools + loop-root script",
            PowerOn::InitramfsToolsPartition => "initramfs-tools, installed normally (root on its own disk, no loop)",
            PowerOn::Dracut => "dracut live (RAM overlay)",
            PowerOn::DracutWrite => "dracut live, write-through",
        }
    }

    fn cmdline(self) -> String {
        let own = match self {
            PowerOn::Hninit => "rw real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart",
            PowerOn::InitramfsTools => "rw root=LABEL=hostpart loop=/hn-root.img loopfstype=ext4",
            PowerOn::InitramfsToolsPartition => "rw root=/dev/vda",
            PowerOn::Dracut => "root=live:LABEL=hostpart rd.live.dir=live",
            PowerOn::DracutWrite => "root=live:LABEL=hostpart rd.live.dir=live rd.live.overlay=none rw",
        };
        format!("{BASE} {own}")
    }
}

/// What hninit does after rotating in an image with another kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum AfterRotate {
    Kexec,
    Reboot,
}

impl AfterRotate {
    const ALL: [AfterRotate; 2] = [AfterRotate::Kexec, AfterRotate::Reboot];

    fn key(self) -> &'static str {
        match self {
            AfterRotate::Kexec => "kexec",
            AfterRotate::Reboot => "reboot",
        }
    }

    /// GRUB's `@CMDLINE@` (GRUB adds `real_root=` and `loopdev_hostpart=`).
    fn cmdline(self) -> String {
        match self {
            AfterRotate::Kexec => format!("{BASE} rw hn.reboot_delay=0"),
            AfterRotate::Reboot => format!("{BASE} rw hn.reboot_delay=0 hn.after_rotate=reboot"),
        }
    }

    /// hninit's console line when it leaves the old kernel.
    fn handover_line(self) -> &'static str {
        match self {
            AfterRotate::Kexec => "hninit: kexec into the new image's kernel",
            AfterRotate::Reboot => "rebooting into the new image's kernel (hn.after_rotate=reboot)",
        }
    }
}

/// One power-on boot.
#[derive(Debug, Clone, Serialize)]
struct PowerOnRun {
    variant: PowerOn,
    round: usize,
    /// QEMU start → ssh answered, s.
    ssh_s: Option<f64>,
    /// QEMU start → systemd's multi-user target line, s.
    multi_user_s: Option<f64>,
    /// /proc/loadavg (1, 5, 15 min) when the boot started.
    load: String,
    error: Option<String>,
    log: PathBuf,
}

/// One upgrade cycle.
#[derive(Debug, Clone, Serialize)]
struct UpgradeRun {
    mode: AfterRotate,
    round: usize,
    /// QEMU start → ssh on the Debian 12 image (OVMF + GRUB), s.
    first_ssh_s: Option<f64>,
    /// `hnctl stage /dev/vdb` inside the VM, s.
    stage_s: Option<f64>,
    /// `systemctl reboot` → ssh answered by the new image, s.
    cycle_s: Option<f64>,
    /// `systemctl reboot` → hninit naming the new image's kernel, its last line
    /// common to both modes (old system down, firmware, GRUB, old kernel, rotation), s.
    handover_s: Option<f64>,
    /// `systemctl reboot` → the new kernel's first line, s.
    new_kernel_s: Option<f64>,
    load: String,
    error: Option<String>,
    log: PathBuf,
}

#[derive(Debug, Serialize)]
struct DebianResults {
    command: String,
    machine: super::machine::Machine,
    load_start: String,
    load_end: String,
    kernel: String,
    notes: Vec<String>,
    power_on: Vec<PowerOnRun>,
    upgrade: Vec<UpgradeRun>,
    elapsed_s: f64,
}

/// `/proc/loadavg`'s three averages.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| load_average().map_or("?".into(), |l| format!("{l:.2}")))
}

/// A factory hook giving root the bench's key and naming the image.
fn hook_script(pubkey: &str, id: &str) -> String {
    format!(
        "#!/bin/sh\nset -e\ninstall -d -m 700 \"$TARGET/root/.ssh\"\n\
         printf '%s\\n' '{pubkey}' > \"$TARGET/root/.ssh/authorized_keys\"\n\
         chmod 600 \"$TARGET/root/.ssh/authorized_keys\"\necho {id} > \"$TARGET/etc/hn-image-id\"\n"
    )
}

/// One factory image of `suite` named `id`; returns it and its kernel release.
fn image(dir: &Path, suite: &str, id: &str, pubkey: &str, init: &Path, hnctl: &Path, notes: &mut Vec<String>) -> Result<(PathBuf, String)> {
    let hooks = dir.join(format!("hooks-{id}"));
    fs::create_dir_all(&hooks)?;
    let h = hooks.join("50-bench-access");
    fs::write(&h, hook_script(pubkey, id))?;
    fs::set_permissions(&h, fs::Permissions::from_mode(0o755))?;
    let out = dir.join(format!("image-{id}.img"));
    let spec = ImageSpec {
        suite: suite.into(),
        hooks: vec![hooks],
        size_mib: IMAGE_MIB,
        init: Some(init.to_path_buf()),
        hnctl: Some(hnctl.to_path_buf()),
        ..ImageSpec::default()
    };
    let t = Instant::now();
    let r = build_image(&spec, &out).with_context(|| format!("building the {suite} image"))?;
    notes.push(format!(
        "image `{id}`: Debian {suite}, kernel {}, built in {:.0} s (base {})",
        r.kernel_release,
        t.elapsed().as_secs_f64(),
        if r.base_cached { "cached" } else { "debootstrapped" }
    ));
    Ok((out, r.kernel_release))
}

/// `debugfs -R CMD image`, failing on a missing result.
fn debugfs(image: &Path, request: &str) -> Result<()> {
    util::run(Command::new("debugfs").arg("-R").arg(request).arg(image)).with_context(|| format!("debugfs -R '{request}'"))
}

/// The image's kernel as the bench's other initramfs builders need it:
/// `boot/vmlinuz-R` + `boot/config-R` and `lib/modules/R` in `dir` (dracut
/// refuses a `--kmoddir` whose parent is not `…/lib/modules/`).
fn image_kernel(image: &Path, release: &str, dir: &Path) -> Result<(Kernel, PathBuf)> {
    util::remove_any(dir)?;
    fs::create_dir_all(dir.join("boot"))?;
    let modules = dir.join("lib/modules");
    fs::create_dir_all(&modules)?;
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    debugfs(image, &format!("dump /boot/kernel {}", vmlinuz.display()))?;
    debugfs(image, &format!("dump /boot/config-{release} {}", dir.join(format!("boot/config-{release}")).display()))?;
    debugfs(image, &format!("rdump /usr/lib/modules/{release} {}", modules.display()))?;
    let initramfs = dir.join("boot/hninit-initramfs");
    debugfs(image, &format!("dump /boot/initramfs {}", initramfs.display()))?;
    for f in [&vmlinuz, &initramfs] {
        if !f.is_file() || fs::metadata(f)?.len() == 0 {
            bail!("debugfs could not dump {} from {}", f.display(), image.display());
        }
    }
    Ok((kernel_from_dir(&vmlinuz, &modules.join(release))?, initramfs))
}

/// Runs the Debian bench and writes its section of the report.
pub fn run_debian(opts: &DebianOptions) -> Result<PathBuf> {
    let started = Instant::now();
    let load_start = loadavg();
    crate::deps::ensure_host_packages()?;
    super::prepare::ensure_initramfs_tools()?;
    let want = |k: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == k);
    let power: Vec<PowerOn> = PowerOn::ALL.into_iter().filter(|v| want(v.key())).collect();
    let modes: Vec<AfterRotate> = AfterRotate::ALL.into_iter().filter(|m| want(m.key())).collect();
    if power.is_empty() && modes.is_empty() {
        bail!("--only {}: no Debian bench variant (hninit, initramfs-tools, initramfs-tools-part, dracut, dracut-rw, kexec, reboot)", opts.only.join(","));
    }
    let dir = build_dir().join("bench-debian");
    util::remove_any(&dir)?;
    fs::create_dir_all(dir.join("logs"))?;
    let key = dir.join("root_ed25519");
    util::run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "hninit-bench", "-f"]).arg(&key))?;
    let pubkey = fs::read_to_string(key.with_extension("pub"))?.trim().to_string();
    let init = build_init()?;
    let hnctl = build_workspace_bin("hnctl")?;
    let mut notes = Vec::new();
    eprintln!("bench: building the Debian 13 image");
    let (new_image, release) = image(&dir, "trixie", NEW_ID, &pubkey, &init, &hnctl, &mut notes)?;
    let (kernel, hn_initrd) = image_kernel(&new_image, &release, &dir.join("kernel"))?;

    let mut upgrade_runs = Vec::new();
    if !modes.is_empty() {
        eprintln!("bench: building the Debian 12 image (the upgrade's start)");
        let (old_image, _) = image(&dir, "bookworm", OLD_ID, &pubkey, &init, &hnctl, &mut notes)?;
        for round in 0..opts.runs {
            for i in 0..modes.len() {
                let m = modes[(round + i) % modes.len()];
                let r = upgrade(&dir, &key, &old_image, &new_image, m, round);
                eprintln!(
                    "bench: debian upgrade round {}/{} {:<7} stage {} reboot→ssh {} (load {}){}",
                    round + 1,
                    opts.runs,
                    m.key(),
                    r.stage_s.map_or("-".into(), |s| format!("{s:.1} s")),
                    r.cycle_s.map_or("-".into(), |s| format!("{s:.1} s")),
                    r.load,
                    r.error.as_deref().map(|e| format!(": {}", e.lines().next().unwrap_or(""))).unwrap_or_default()
                );
                upgrade_runs.push(r);
            }
        }
    }

    let mut power_runs = Vec::new();
    let mut unbuilt: Vec<String> = Vec::new();
    if !power.is_empty() {
        let mut initrds: Vec<(PowerOn, PathBuf)> = Vec::new();
        for v in &power {
            let t = Instant::now();
            let got = (|| -> Result<PathBuf> {
                Ok(match v {
                    PowerOn::Hninit => hn_initrd.clone(),
                    PowerOn::InitramfsTools | PowerOn::InitramfsToolsPartition => {
                        let out = dir.join("initramfs-tools.img");
                        super::prepare::cached_initramfs_tools(&kernel, &dir, &out)?;
                        out
                    }
                    PowerOn::Dracut | PowerOn::DracutWrite => {
                        let out = dir.join("dracut.img");
                        if !out.is_file() {
                            let version = super::dracut::cached_dracut(&kernel, &dir, &out)?;
                            notes.push(format!("dracut {version}: `{}`", super::dracut::BUILD_COMMAND));
                        }
                        out
                    }
                })
            })();
            // One initrd that cannot be built costs its variant, not the run.
            let p = match got {
                Ok(p) => p,
                Err(e) => {
                    notes.push(format!("{}: not booted, its initrd could not be built: {e:#}", v.key()));
                    unbuilt.push(format!("{}: initrd: {e:#}", v.key()));
                    continue;
                }
            };
            let size = fs::metadata(&p)?.len();
            notes.push(format!("{}: initrd {:.1} MiB ({:.0} s to get)", v.key(), size as f64 / 1048576.0, t.elapsed().as_secs_f64()));
            initrds.push((*v, p));
        }
        eprintln!("bench: the power-on disk");
        let disk = dir.join("poweron-disk.img");
        build_disk(
            &DiskSpec {
                esp: None,
                hostpart: HostpartSpec {
                    files: vec![
                        ("hn-root.img".into(), new_image.clone()),
                        (format!("{}/rootfs.img", super::dracut::LIVE_DIR), new_image.clone()),
                    ],
                    dirs: vec!["data".into(), "hn-state".into()],
                    size_mib: HOSTPART_MIB,
                    ..Default::default()
                },
                extra_hostparts: Vec::new(),
            },
            &disk,
        )?;
        for round in 0..opts.runs {
            for i in 0..initrds.len() {
                let (v, initrd) = &initrds[(round + i) % initrds.len()];
                let boot_disk = if *v == PowerOn::InitramfsToolsPartition { &new_image } else { &disk };
                let r = power_on(&dir, &key, &kernel, initrd, *v, round, boot_disk);
                eprintln!(
                    "bench: debian power-on round {}/{} {:<16} ssh {} (load {}){}",
                    round + 1,
                    opts.runs,
                    v.key(),
                    r.ssh_s.map_or("-".into(), |s| format!("{s:.1} s")),
                    r.load,
                    r.error.as_deref().map(|e| format!(": {}", e.lines().next().unwrap_or(""))).unwrap_or_default()
                );
                power_runs.push(r);
            }
        }
    }

    let results = DebianResults {
        command: opts.command.clone(),
        machine: super::machine::Machine::probe(&kernel),
        load_start,
        load_end: loadavg(),
        kernel: release,
        notes,
        power_on: power_runs,
        upgrade: upgrade_runs,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    util::write_atomic(&dir.join("results.json"), serde_json::to_string_pretty(&results)?.as_bytes())?;
    let md = render(&results, &power, &modes);
    util::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    write_section(&opts.out, &md)?;
    let failed: Vec<String> = unbuilt
        .into_iter()
        .chain(results.power_on
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{} round {}: {e}", r.variant.key(), r.round + 1)))
        .chain(results.upgrade.iter().filter_map(|r| r.error.as_ref().map(|e| format!("{} round {}: {e}", r.mode.key(), r.round + 1)))))
        .collect();
    if !failed.is_empty() {
        bail!("{} Debian bench run(s) failed (report written to {}):\n{}", failed.len(), opts.out.display(), failed.join("\n"));
    }
    Ok(opts.out.clone())
}

/// One power-on → ssh boot of the Debian 13 image.
fn power_on(dir: &Path, key: &Path, kernel: &Kernel, initrd: &Path, v: PowerOn, round: usize, disk: &Path) -> PowerOnRun {
    let log = dir.join("logs").join(format!("poweron-{}-{}.log", v.key(), round + 1));
    let mut run = PowerOnRun { variant: v, round, ssh_s: None, multi_user_s: None, load: loadavg(), error: None, log: log.clone() };
    let res = (|| -> Result<()> {
        let port = free_port()?;
        let mut spec = QemuSpec::new(Boot::Direct { kernel: kernel.vmlinuz.clone(), initrd: Some(initrd.to_path_buf()), append: v.cmdline() });
        spec.memory_mib = GUEST_MIB;
        spec.nodefaults = true;
        spec.drives.push(Drive { snapshot: true, ..Drive::virtio(disk) });
        spec.nic = Some(format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"));
        let mut vm = Vm::start(qemu_command(&spec), port, &log)?;
        let t = wait_ssh(&mut vm, key, NEW_ID, BOOT_LIMIT)?;
        run.ssh_s = Some(t);
        run.multi_user_s = vm
            .seen_after("Reached target multi-user.target", 0.0)
            .or_else(|| vm.seen_after("Reached target Multi-User System", 0.0));
        Ok(())
    })();
    run.error = res.err().map(|e| format!("{e:#}"));
    run
}

/// A QEMU command for `spec` that resets on a guest reboot (no `-no-reboot`),
/// as a machine does: the firmware and GRUB run again.
fn resetting(spec: &QemuSpec) -> Command {
    let base = qemu_command(spec);
    let mut c = Command::new(base.get_program());
    c.args(base.get_args().filter(|a| *a != "-no-reboot"));
    c
}

/// One upgrade cycle: the Debian 12 image booted through OVMF + GRUB, the
/// Debian 13 image staged inside it, `systemctl reboot`, ssh on Debian 13.
fn upgrade(dir: &Path, key: &Path, old: &Path, new: &Path, mode: AfterRotate, round: usize) -> UpgradeRun {
    let name = format!("upgrade-{}-{}", mode.key(), round + 1);
    let log = dir.join("logs").join(format!("{name}.log"));
    let mut run = UpgradeRun {
        mode,
        round,
        first_ssh_s: None,
        stage_s: None,
        cycle_s: None,
        handover_s: None,
        new_kernel_s: None,
        load: loadavg(),
        error: None,
        log: log.clone(),
    };
    let work = dir.join(&name);
    let res = (|| -> Result<()> {
        fs::create_dir_all(&work)?;
        let disk = work.join("disk.img");
        let grub_cfg = GrubVars { timeout: 0, hostpart_label: "hostpart".into(), image_dir: String::new(), cmdline: mode.cmdline() }.render();
        build_disk(
            &DiskSpec {
                esp: Some(EspSpec { grub_cfg, grubenv: None }),
                hostpart: HostpartSpec {
                    files: vec![("hn-root.img".into(), old.to_path_buf())],
                    dirs: vec!["data".into(), "hn-state".into()],
                    size_mib: HOSTPART_MIB,
                    ..Default::default()
                },
                extra_hostparts: Vec::new(),
            },
            &disk,
        )?;
        let port = free_port()?;
        let vars = fresh_ovmf_vars(&work)?;
        let mut spec = QemuSpec::new(Boot::Uefi { vars });
        spec.memory_mib = GUEST_MIB;
        spec.nodefaults = true;
        spec.drives.push(Drive::virtio(&disk));
        spec.drives.push(Drive { snapshot: true, readonly: true, ..Drive::virtio(new) });
        spec.nic = Some(format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"));
        let mut vm = Vm::start(resetting(&spec), port, &log)?;
        run.first_ssh_s = Some(wait_ssh(&mut vm, key, OLD_ID, BOOT_LIMIT)?);
        let t = Instant::now();
        let out = ssh(key, port, "hnctl stage /dev/vdb 2>&1", STAGE_LIMIT)?;
        run.stage_s = Some(t.elapsed().as_secs_f64());
        vm.note(&format!("hnctl stage: {}", out.trim().replace('\n', " | ")));
        let t0 = vm.now();
        vm.note("systemctl reboot");
        ssh(key, port, "systemctl reboot --no-block", Duration::from_secs(60))?;
        let t_ssh = wait_ssh(&mut vm, key, NEW_ID, BOOT_LIMIT)?;
        run.cycle_s = Some(t_ssh - t0);
        // From here on the two modes differ: kexec_file_load + kexec, or
        // reboot through the firmware and GRUB.
        let handover = vm.seen_after(DECIDED, t0);
        run.handover_s = handover.map(|t| t - t0);
        run.new_kernel_s = handover.and_then(|h| vm.seen_after("Linux version", h)).map(|t| t - t0);
        if vm.seen_after(mode.handover_line(), t0).is_none() {
            bail!("ssh answered on the new image but hninit never logged {:?} (no rotation onto another kernel?)", mode.handover_line());
        }
        Ok(())
    })();
    run.error = res.err().map(|e| format!("{e:#}"));
    // The disk is this run's only (4 GiB sparse): not kept.
    let _ = fs::remove_file(work.join("disk.img"));
    run
}

fn spread(v: impl IntoIterator<Item = Option<f64>>) -> String {
    super::report::show(super::report::Spread::of(v.into_iter().flatten()), 1)
}

/// The markdown section.
fn render(r: &DebianResults, power: &[PowerOn], modes: &[AfterRotate]) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Command: `{}` at commit `{}`, {}, {:.0} min; {} × {}, {}; {}; guest kernel {} under TCG, {GUEST_MIB} MiB.",
        r.command, m.commit, m.date, r.elapsed_s / 60.0, m.nproc, m.cpu, m.memory, m.qemu, r.kernel
    );
    let _ = writeln!(s, "Host load average (1/5/15 min, a shared machine): {} at the start, {} at the end; each run's below.\n", r.load_start, r.load_end);
    if !power.is_empty() {
        let _ = writeln!(s, "**Power-on → ssh**, Debian 13 image on the host partition, direct kernel boot (`snapshot=on`: every boot is the image's first), variants alternating per round:\n");
        let _ = writeln!(s, "| boots the image | runs ok | QEMU start → ssh answers, s: median (range) | → multi-user.target line, s | loads at start |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for v in power {
            let runs: Vec<&PowerOnRun> = r.power_on.iter().filter(|x| x.variant == *v).collect();
            let ok = runs.iter().filter(|x| x.error.is_none()).count();
            let loads: Vec<String> = runs.iter().map(|x| x.load.split_whitespace().next().unwrap_or("?").to_string()).collect();
            let _ = writeln!(
                s,
                "| {} | {ok}/{} | {} | {} | {} |",
                v.title(),
                runs.len(),
                spread(runs.iter().map(|x| x.ssh_s)),
                spread(runs.iter().map(|x| x.multi_user_s)),
                loads.join(", ")
            );
        }
        let _ = writeln!(s, "\nCommand lines (after the image's kernel):\n");
        for v in power {
            let _ = writeln!(s, "- {}: `{}`", v.key(), v.cmdline());
        }
        let _ = writeln!(s);
    }
    if !modes.is_empty() {
        let _ = writeln!(s, "**Upgrade cycle**: Debian 12 image (kernel 6.1) booted through OVMF + GRUB, the Debian 13 image (kernel {}) staged inside it with `hnctl stage /dev/vdb`, then `systemctl reboot` → ssh answers on Debian 13; QEMU resets on reboot (firmware and GRUB again), modes alternating per round:\n", r.kernel);
        let _ = writeln!(s, "| after the rotation | runs ok | reboot → ssh on the new image, s | reboot → hninit names the new kernel, s | that line → new kernel's first line, s | new kernel → ssh, s | hnctl stage, s | loads at start |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for m in modes {
            let runs: Vec<&UpgradeRun> = r.upgrade.iter().filter(|x| x.mode == *m).collect();
            let ok = runs.iter().filter(|x| x.error.is_none()).count();
            let loads: Vec<String> = runs.iter().map(|x| x.load.split_whitespace().next().unwrap_or("?").to_string()).collect();
            let title = match m {
                AfterRotate::Kexec => "kexec (default)",
                AfterRotate::Reboot => "`hn.after_rotate=reboot`",
            };
            let _ = writeln!(
                s,
                "| {title} | {ok}/{} | {} | {} | {} | {} | {} | {} |",
                runs.len(),
                spread(runs.iter().map(|x| x.cycle_s)),
                spread(runs.iter().map(|x| x.handover_s)),
                spread(runs.iter().map(|x| Some(x.new_kernel_s? - x.handover_s?))),
                spread(runs.iter().map(|x| Some(x.cycle_s? - x.new_kernel_s?))),
                spread(runs.iter().map(|x| x.stage_s)),
                loads.join(", ")
            );
        }
        let _ = writeln!(s);
    }
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

const BEGIN: &str = "<!-- debian-bench:begin (cargo xtask bench --debian writes this part) -->";
const END: &str = "<!-- debian-bench:end -->";

/// Replaces the text between the markers of `path` with `body`, or appends a
/// marked section when the file has none (a new file is created).
fn write_section(path: &Path, body: &str) -> Result<()> {
    let old = fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{body}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        (None, None) => format!("{old}{}{section}\n", if old.is_empty() || old.ends_with('\n') { "" } else { "\n" }),
        _ => bail!("{}: the debian-bench markers are damaged", path.display()),
    };
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    util::write_atomic(path, new.as_bytes())
}
