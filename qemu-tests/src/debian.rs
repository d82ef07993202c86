//! Full Debian systems through hninit: images made by the image factory
//! (`xtask::factory`, debootstrap base cached in `cache_dir()`), booted under
//! QEMU with the image's own kernel and initramfs (dumped from the image with
//! `debugfs`, as GRUB would load them from `(loop)`), reached over ssh through
//! user networking, powered off over ssh, then upgraded by staging a second
//! image as `hn-root-new.img` on the same host partition (`debugfs -w` on the
//! disk file: offline, no mounting) and booted again.
//!
//! Debian 13 (trixie, the factory's default) by default; `debian-boot-bookworm`
//! boots Debian 12 once. Each suite's images are built once per run (their
//! initramfs carries the shipped init, `build_init`), from one cached
//! debootstrap base per suite. Every poweroff checks where hninit's shutdown
//! program found the host partition (systemd 257 parks it in
//! `/run/shutdown/mounts/`, 252 leaves it at `/hostpart`), that it logged a
//! clean unmount without any lazy detach, and that `dumpe2fs -h` shows the
//! host partition clean without `needs_recovery`.
//!
//! On the two trixie images:
//! * `debian-boot` needs nothing from first-boot instantiation (no config
//!   source: step 9 lets the image boot as it is): the images carry a root ssh
//!   key (a factory hook) and get their address from the factory's DHCP
//!   fallback; it checks the boot
//!   through hninit to multi-user.target, the loop root, sshd, a clean
//!   poweroff through `/run/initramfs/shutdown`, and the upgrade to the second
//!   image (rotation, trial ended by the image's mark-good unit).
//! * `debian-e2e` adds a Gandi swap disk carrying the host config (hostname
//!   `e2e-host`, static 10.0.2.15/24, user `admin` with a crypt hash and this
//!   run's ssh key) and checks what instantiation (hninit's step 9) must do:
//!   the hostname, the static address, the user and its sudo group, the config
//!   wiped from the swap disk with its swap header intact, and after the
//!   upgrade the same ssh host key (StrictHostKeyChecking=yes against the
//!   first boot's known_hosts) and the same machine-id. Failures of these
//!   checks start with `[instantiation]`.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use qemu_tests::{Ctx, Failure, OrFail, Scenario, Vm};
use xtask::{
    build_disk, build_image, build_init, build_workspace_bin, gandi_swap_disk, inspect_swap_disk,
    qemu_command, Boot, DiskLayout, DiskSpec, Drive, HostpartSpec, ImageSpec, QemuSpec, SwapDisk,
};

mod newuser;
mod platform;
mod qmp;
mod stage_http;

/// Issue 14's scenario (`debian/platform.rs`).
pub fn platform_scenarios() -> Vec<Scenario> {
    platform::scenarios()
}

/// The scenarios of this module.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "debian-boot",
            about: "factory Debian 13 image: hninit -> systemd 257 multi-user, ssh, clean poweroff, upgrade to a second image",
            run: debian_boot,
        },
        Scenario {
            name: "debian-boot-bookworm",
            about: "factory Debian 12 image (systemd 252): hninit -> systemd multi-user, ssh, vCPU and pc-dimm hot-add onlined by hninit-hotplug, clean poweroff",
            run: debian_boot_bookworm,
        },
        Scenario {
            name: "debian-e2e",
            about: "factory Debian 13 image instantiated from a Gandi swap-disk config; identity kept across an upgrade",
            run: debian_e2e,
        },
        stage_http::scenario(),
        newuser::scenario(),
    ]
}

/// Image filesystem size (sparse; the tree is ≈ 750 MiB).
const IMAGE_MIB: u64 = 1536;
/// Host partition: two images' data plus room (sparse).
const HOSTPART_MIB: u64 = 4096;
const CMDLINE: &str = "console=ttyS0 rw net.ifnames=0 real_root=/hn-root.img \
                       loopdev_hostpart=LABEL=hostpart panic=-1 hn.reboot_delay=0";
/// Whole life of one VM.
const VM_TIMEOUT: Duration = Duration::from_secs(600);
/// QEMU start → multi-user.target (TESTBED: 15–30 s; two at once, slower).
const BOOT_WAIT: Duration = Duration::from_secs(300);
/// multi-user.target → sshd answering.
const SSH_WAIT: Duration = Duration::from_secs(120);
/// One ssh attempt.
const SSH_TRY: Duration = Duration::from_secs(20);
const POWEROFF_WAIT: Duration = Duration::from_secs(120);
const E2E_HOSTNAME: &str = "e2e-host";
const E2E_ADDRESS: &str = "10.0.2.15/24";
/// Alias the host key is stored under in known_hosts, whatever the port.
const HOST_ALIAS: &str = "hn-debian-vm";

/// A Debian release the scenarios boot, with what differs in its shutdown
/// handover (see `src/boot/shutdown_plan.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Suite {
    /// Debian 13, the factory's default: systemd 257 parks the busy host
    /// partition in `/run/shutdown/mounts/<id>` before the pivot.
    Trixie,
    /// Debian 12: systemd 252 leaves it at `/hostpart`.
    Bookworm,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Trixie => "trixie",
            Suite::Bookworm => "bookworm",
        }
    }

    /// Where hninit's shutdown program finds the host partition after the pivot.
    fn hostpart_at_shutdown(self) -> &'static str {
        match self {
            Suite::Trixie => "hninit: shutdown: /oldroot/run/shutdown/mounts/",
            Suite::Bookworm => "hninit: shutdown: /oldroot/hostpart moved out",
        }
    }
}

/// The images of one suite and the root key they accept, built once per run.
struct Images {
    suite: Suite,
    /// `/etc/hn-image-id` = `first`.
    first: PathBuf,
    /// `/etc/hn-image-id` = `second`; only for the scenarios that upgrade.
    second: Option<PathBuf>,
    /// `/boot/kernel` and `/boot/initramfs` of the first image.
    kernel: PathBuf,
    initramfs: PathBuf,
    kernel_release: String,
    /// Private key whose public half is root's authorized key in both images.
    root_key: PathBuf,
    /// What building them took, for the notes.
    notes: Vec<String>,
}

/// The images of `suite`, built once per run for the scenarios that share
/// them (trixie: two, for `debian-boot` and `debian-e2e`; bookworm: one). Each
/// suite's debootstrap base is cached once in `cache_dir()` (keyed by suite).
fn images(suite: Suite) -> Result<&'static Images, Failure> {
    static TRIXIE: OnceLock<Result<Images, String>> = OnceLock::new();
    static BOOKWORM: OnceLock<Result<Images, String>> = OnceLock::new();
    let (cell, with_second) = match suite {
        Suite::Trixie => (&TRIXIE, true),
        Suite::Bookworm => (&BOOKWORM, false),
    };
    cell.get_or_init(|| {
        build_images(suite, with_second)
            .map_err(|e| format!("building the Debian {} images: {e:#}", suite.name()))
    })
    .as_ref()
    .map_err(|e| Failure::new(e.clone()))
}

impl Images {
    fn second(&self) -> Result<&Path, Failure> {
        self.second
            .as_deref()
            .ok_or_else(|| Failure::new(format!("no second {} image was built", self.suite.name())))
    }
}

/// A factory hook giving root the test key and naming the image.
fn hook_script(pubkey: &str, id: &str) -> String {
    format!(
        "#!/bin/sh\nset -e\n\
         install -d -m 700 \"$TARGET/root/.ssh\"\n\
         printf '%s\\n' '{pubkey}' > \"$TARGET/root/.ssh/authorized_keys\"\n\
         chmod 600 \"$TARGET/root/.ssh/authorized_keys\"\n\
         echo {id} > \"$TARGET/etc/hn-image-id\"\n"
    )
}

fn build_images(suite: Suite, with_second: bool) -> anyhow::Result<Images> {
    let dir = qemu_tests::runner::default_out_dir().join(format!("_debian-{}", suite.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let root_key = dir.join("root_ed25519");
    ssh_keygen(&root_key, "hninit-qemu-tests-root")?;
    let pubkey = std::fs::read_to_string(root_key.with_extension("pub"))?;
    let mut notes = Vec::new();
    let init = build_init()?;
    notes.push(format!("init: {} bytes", std::fs::metadata(&init)?.len()));
    let hnctl = build_workspace_bin("hnctl")?;
    let mut kernel_release = String::new();
    let mut build = |id: &str| -> anyhow::Result<PathBuf> {
        let hooks = dir.join(format!("hooks-{id}"));
        std::fs::create_dir_all(&hooks)?;
        let h = hooks.join("50-test-access");
        std::fs::write(&h, hook_script(pubkey.trim(), id))?;
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755))?;
        let out = dir.join(format!("image-{id}.img"));
        let spec = ImageSpec {
            suite: suite.name().into(),
            hooks: vec![hooks],
            size_mib: IMAGE_MIB,
            init: Some(init.clone()),
            hnctl: Some(hnctl.clone()),
            ..ImageSpec::default()
        };
        let r = build_image(&spec, &out)?;
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| format!("{} {:.1}s", s.name, s.took.as_secs_f64()))
            .collect();
        let total: f64 = r.steps.iter().map(|s| s.took.as_secs_f64()).sum();
        notes.push(format!(
            "{} image {id}: {total:.1} s (base {}; {}), {} MiB allocated, kernel {}",
            suite.name(),
            if r.base_cached {
                "cached"
            } else {
                "debootstrapped"
            },
            steps.join(", "),
            r.image_allocated_bytes >> 20,
            r.kernel_release
        ));
        kernel_release = r.kernel_release.clone();
        Ok(out)
    };
    let first = build("first")?;
    let second = if with_second { Some(build("second")?) } else { None };
    let kernel = dir.join("kernel");
    let initramfs = dir.join("initramfs");
    debugfs_dump(&first, "/boot/kernel", &kernel)?;
    debugfs_dump(&first, "/boot/initramfs", &initramfs)?;
    Ok(Images {
        suite,
        first,
        second,
        kernel,
        initramfs,
        kernel_release,
        root_key,
        notes,
    })
}

fn ssh_keygen(path: &Path, comment: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    xtask::util::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    )
}

fn debugfs_dump(image: &Path, path: &str, out: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(out);
    xtask::util::run(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump {path} {}", out.display()))
            .arg(image),
    )?;
    if !out.is_file() || std::fs::metadata(out)?.len() == 0 {
        anyhow::bail!("debugfs could not dump {path} from {}", image.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Commands with a time limit

/// Runs `cmd` (own process group, stdin null) for at most `limit`; on timeout
/// the group is killed and an error returned.
fn run_limited(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    xtask::console::in_new_group(&mut cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let to = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let te = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let until = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(50)),
            _ => {
                xtask::console::kill_group(child.id());
                let _ = child.wait();
                return Err(format!("timed out after {:.0} s", limit.as_secs_f64()));
            }
        }
    };
    Ok(Output {
        status,
        stdout: to.join().unwrap_or_default(),
        stderr: te.join().unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------
// One machine: its disks, its port, its known_hosts

struct Machine {
    imgs: &'static Images,
    disk: PathBuf,
    layout: DiskLayout,
    /// The Gandi swap disk (second virtio disk, /dev/vdb) when present.
    swap: Option<(PathBuf, SwapDisk)>,
    known_hosts: PathBuf,
    /// The longest life of one of its VMs (QEMU is killed after it).
    life: Duration,
}

/// How ssh treats the host key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HostKey {
    /// Record it (first boot).
    AcceptNew,
    /// Must match what known_hosts holds.
    Strict,
}

/// A booted machine.
struct Running {
    vm: Vm,
    port: u16,
    started: Instant,
}

fn free_port() -> Result<u16, Failure> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn vm_failure(vm: &Vm, message: String) -> Failure {
    Failure {
        message,
        tail: vm.console_tail(qemu_tests::harness::TAIL_LINES),
        log: Some(vm.log_path().to_path_buf()),
    }
}

impl Machine {
    fn new(ctx: &Ctx, imgs: &'static Images, with_swap: Option<&[u8]>) -> Result<Machine, Failure> {
        let disk = ctx.dir().join("disk.img");
        let spec = DiskSpec {
            esp: None,
            hostpart: HostpartSpec {
                files: vec![("hn-root.img".into(), imgs.first.clone())],
                dirs: vec!["data".into(), "hn-state".into()],
                size_mib: HOSTPART_MIB,
                ..Default::default()
            },
            extra_hostparts: Vec::new(),
        };
        let layout = build_disk(&spec, &disk).or_fail("building the disk")?;
        let swap = match with_swap {
            Some(json) => {
                let p = ctx.dir().join("swap.img");
                let d = gandi_swap_disk(&p, 64, Some("swap"), json)
                    .or_fail("building the swap disk")?;
                Some((p, d))
            }
            None => None,
        };
        Ok(Machine {
            imgs,
            disk,
            layout,
            swap,
            known_hosts: ctx.dir().join("known_hosts"),
            life: VM_TIMEOUT,
        })
    }

    /// Boots and waits for multi-user.target (or the login prompt).
    fn boot(&self, ctx: &mut Ctx, what: &str) -> Result<Running, Failure> {
        self.boot_with(ctx, what, &[])
    }

    /// [`Machine::boot`] with more QEMU arguments (`-smp`, `-qmp` …).
    fn boot_with(&self, ctx: &mut Ctx, what: &str, extra: &[String]) -> Result<Running, Failure> {
        let imgs = self.imgs;
        let port = free_port()?;
        let mut spec = QemuSpec::new(Boot::Direct {
            kernel: imgs.kernel.clone(),
            initrd: Some(imgs.initramfs.clone()),
            append: CMDLINE.to_string(),
        });
        spec.memory_mib = 1024;
        // No default floppy, CD-ROM or VGA (the floppy probe only adds noise).
        spec.nodefaults = true;
        spec.drives.push(Drive::virtio(&self.disk));
        if let Some((s, _)) = &self.swap {
            spec.drives.push(Drive::virtio(s));
        }
        spec.nic = Some(format!(
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"
        ));
        spec.extra_args.extend(extra.iter().cloned());
        let started = Instant::now();
        let mut vm = ctx.spawn(qemu_command(&spec), self.life)?;
        vm.forbid("Kernel panic");
        vm.forbid("hninit: boot failed");
        vm.expect("hninit: switching root", BOOT_WAIT)?;
        vm.expect_any(
            &[
                "Reached target multi-user.target",
                "Reached target Multi-User System",
                "login:",
            ],
            BOOT_WAIT,
        )?;
        ctx.note(format!(
            "{what}: login prompt {:.1} s after QEMU start",
            started.elapsed().as_secs_f64()
        ));
        Ok(Running { vm, port, started })
    }

    fn ssh_cmd(&self, r: &Running, key: &Path, user: &str, hk: HostKey, script: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(key)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-o")
            .arg(format!("HostKeyAlias={HOST_ALIAS}"))
            .arg("-o")
            .arg(match hk {
                HostKey::AcceptNew => "StrictHostKeyChecking=accept-new",
                HostKey::Strict => "StrictHostKeyChecking=yes",
            })
            .args(["-p", &r.port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg(script);
        c
    }

    /// Runs `script` over ssh, retrying (each try bounded) until `deadline`
    /// passes: QEMU accepts the forwarded port before sshd is up.
    fn ssh_retry(
        &self,
        r: &Running,
        key: &Path,
        user: &str,
        hk: HostKey,
        script: &str,
        within: Duration,
    ) -> Result<String, Failure> {
        let until = Instant::now() + within;
        let mut last: String;
        let mut tries = 0;
        loop {
            tries += 1;
            match run_limited(self.ssh_cmd(r, key, user, hk, script), SSH_TRY) {
                Ok(o) if o.status.success() => {
                    return Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                }
                Ok(o) => {
                    last = format!(
                        "{}: {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    )
                }
                Err(e) => last = e,
            }
            if r.vm.try_status().is_some() {
                return Err(vm_failure(
                    &r.vm,
                    format!("ssh {user}@: QEMU exited ({last})"),
                ));
            }
            if Instant::now() >= until {
                return Err(vm_failure(
                    &r.vm,
                    format!(
                        "ssh {user}@127.0.0.1:{} did not succeed within {:.0} s ({tries} tries); last: {last}",
                        r.port,
                        within.as_secs_f64()
                    ),
                ));
            }
            thread::sleep(Duration::from_secs(2));
        }
    }

    /// One ssh command that must succeed on the first try.
    fn ssh(
        &self,
        r: &Running,
        key: &Path,
        user: &str,
        hk: HostKey,
        script: &str,
    ) -> Result<String, Failure> {
        match run_limited(
            self.ssh_cmd(r, key, user, hk, script),
            Duration::from_secs(60),
        ) {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => Err(vm_failure(
                &r.vm,
                format!(
                    "ssh {user}@ `{script}`: {}: {}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim(),
                    String::from_utf8_lossy(&o.stdout).trim()
                ),
            )),
            Err(e) => Err(vm_failure(&r.vm, format!("ssh {user}@ `{script}`: {e}"))),
        }
    }

    /// Root logs in with the factory hook's key; returns the first answer.
    fn root_ssh_ready(
        &self,
        ctx: &mut Ctx,
        r: &Running,
        what: &str,
        hk: HostKey,
    ) -> Result<String, Failure> {
        let imgs = self.imgs;
        let out = self.ssh_retry(r, &imgs.root_key, "root", hk, ROOT_PROBE, SSH_WAIT)?;
        ctx.note(format!(
            "{what}: ssh answered {:.1} s after QEMU start",
            r.started.elapsed().as_secs_f64()
        ));
        if let Ok(blame) = self.ssh(
            r,
            &imgs.root_key,
            "root",
            HostKey::Strict,
            "systemd-analyze blame --no-pager | head -4",
        ) {
            let slowest: Vec<String> = blame
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            ctx.note(format!("{what}: slowest units: {}", slowest.join(", ")));
        }
        Ok(out)
    }

    /// `systemctl poweroff` over ssh; QEMU must exit, hninit's shutdown must
    /// find the host partition where this suite's systemd left it, report a
    /// clean unmount without any lazy detach, and the host partition must be
    /// clean (`dumpe2fs -h`).
    fn poweroff(&self, ctx: &mut Ctx, r: Running, what: &str) -> Result<(), Failure> {
        self.shut_down(ctx, r, what, "poweroff")
    }

    /// `systemctl VERB` (`poweroff` or `reboot`: QEMU runs with `-no-reboot`,
    /// so both end it) with the checks of [`Machine::poweroff`].
    fn shut_down(&self, ctx: &mut Ctx, mut r: Running, what: &str, verb: &str) -> Result<(), Failure> {
        let imgs = self.imgs;
        let t = Instant::now();
        r.vm.forbid("detaching it lazily");
        r.vm.forbid("hninit: shutdown: host partition still busy");
        self.ssh(
            &r,
            &imgs.root_key,
            "root",
            HostKey::Strict,
            &format!("systemctl {verb} --no-block"),
        )?;
        let moved = r.vm.expect(imgs.suite.hostpart_at_shutdown(), POWEROFF_WAIT)?;
        ctx.note(format!("{what}: {}", moved.trim()));
        r.vm.expect(
            "hninit: shutdown: old root and host partition unmounted cleanly",
            POWEROFF_WAIT,
        )?;
        r.vm.wait_exit(POWEROFF_WAIT)?;
        r.vm.check_forbidden()?;
        ctx.note(format!(
            "{what}: {verb} -> QEMU exit {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        self.expect_hostpart_clean(ctx)
    }

    /// The host partition's ext4 needs no journal replay.
    fn expect_hostpart_clean(&self, ctx: &Ctx) -> Result<(), Failure> {
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(self.hostpart_spec())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(k))
                .unwrap_or("")
                .to_string()
        };
        let (features, state) = (line("Filesystem features:"), line("Filesystem state:"));
        if features.contains("needs_recovery") || !state.contains("clean") {
            return Err(Failure::new(format!(
                "host partition not cleanly unmounted: {state} / {features} ({})",
                ctx.dir().display()
            )));
        }
        Ok(())
    }

    /// The host partition as an e2fsprogs device name (`disk.img?offset=N`).
    fn hostpart_spec(&self) -> String {
        format!(
            "{}?offset={}",
            self.disk.display(),
            self.layout.hostpart().start_bytes
        )
    }

    /// Writes `image` into the host partition as `hn-root-new.img` with
    /// `debugfs -w` (the machine is off): the next boot rotates it in.
    fn stage(&self, ctx: &mut Ctx, image: &Path) -> Result<(), Failure> {
        let t = Instant::now();
        let out = Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} hn-root-new.img", image.display()))
            .arg(self.hostpart_spec())
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success()
            || err
                .lines()
                .any(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        {
            return Err(Failure::new(format!(
                "staging with debugfs -w failed: {} {}",
                out.status,
                err.trim()
            )));
        }
        let ls = xtask::util::run_stdout(
            Command::new("debugfs")
                .arg("-R")
                .arg("ls -l /")
                .arg(self.hostpart_spec()),
        )
        .or_fail("listing the host partition")?;
        if !ls.contains("hn-root-new.img") {
            return Err(Failure::new(format!(
                "hn-root-new.img not on the host partition:\n{ls}"
            )));
        }
        ctx.note(format!(
            "staged the second image with debugfs -w in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// What root reports about the system (no instantiation needed).
const ROOT_PROBE: &str = "echo id=$(cat /etc/hn-image-id); echo kernel=$(uname -r); \
     echo root=$(findmnt -no SOURCE,FSTYPE,OPTIONS /); \
     echo hostpart=$(findmnt -no SOURCE,FSTYPE /hostpart); \
     echo backing=$(cat /sys/block/loop0/loop/backing_file); \
     echo state=$(systemctl is-system-running --wait); \
     echo failed=$(systemctl list-units --state=failed --no-legend --plain | cut -d' ' -f1 | tr '\\n' ' '); \
     echo files=$(ls /hostpart | tr '\\n' ' '); \
     echo markgood=$(systemctl is-active hninit-mark-good.service); \
     echo trial=$(hnctl status | sed -n 's/^trial *//p'); \
     echo multi-user-us=$(systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target); \
     echo hostname=$(hostname); echo machine-id=$(cat /etc/machine-id); \
     echo os=$(. /etc/os-release; echo $VERSION_ID); \
     echo packages=$(dpkg-query -W -f='${Package}:${db:Status-Abbrev} ' hninit initramfs-tools 2>/dev/null)";

fn field<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
        .trim()
}

/// Checks of the root report that hold without instantiation.
fn check_root_report(
    ctx: &mut Ctx,
    imgs: &Images,
    r: &Running,
    report: &str,
    id: &str,
) -> Result<(), Failure> {
    let fail = |m: String| Err(vm_failure(&r.vm, format!("{m}\nroot's report:\n{report}")));
    if field(report, "id") != id {
        return fail(format!("expected image {id}"));
    }
    let os = match imgs.suite {
        Suite::Trixie => "13",
        Suite::Bookworm => "12",
    };
    if field(report, "os") != os {
        return fail(format!("expected Debian {os} ({})", imgs.suite.name()));
    }
    if field(report, "kernel") != imgs.kernel_release {
        return fail(format!(
            "expected the image's kernel {}",
            imgs.kernel_release
        ));
    }
    let root = field(report, "root");
    if !root.starts_with("/dev/loop0 ext4 rw") {
        return fail(format!("expected / on /dev/loop0 ext4 rw, got {root:?}"));
    }
    if field(report, "backing") != "/hostpart/hn-root.img" {
        return fail("expected loop0 backed by /hostpart/hn-root.img".into());
    }
    if !field(report, "hostpart").starts_with("/dev/vda1 ext4") {
        return fail("expected /hostpart on /dev/vda1 ext4".into());
    }
    // The factory installs hninit's package in place of initramfs-tools.
    let packages = field(report, "packages");
    if !packages.split_whitespace().any(|p| p.starts_with("hninit:ii")) || packages.contains("initramfs-tools:ii") {
        return fail(format!("expected the hninit package installed and initramfs-tools not: {packages:?}"));
    }
    let mu: f64 = field(report, "multi-user-us").parse().unwrap_or(0.0) / 1e6;
    ctx.note(format!(
        "image {id}: multi-user.target at {mu:.1} s kernel time, system state {}, failed units: [{}]",
        field(report, "state"),
        field(report, "failed")
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// debian-boot: nothing from instantiation needed

fn debian_boot(ctx: &mut Ctx) -> Result<(), Failure> {
    let imgs = images(Suite::Trixie)?;
    for n in &imgs.notes {
        ctx.note(n);
    }
    let m = Machine::new(ctx, imgs, None)?;

    // Boot 1: the first image.
    let r = m.boot(ctx, "boot 1")?;
    let report = m.root_ssh_ready(ctx, &r, "boot 1", HostKey::AcceptNew)?;
    check_root_report(ctx, imgs, &r, &report, "first")?;
    if field(&report, "machine-id").len() != 32 {
        return Err(vm_failure(
            &r.vm,
            format!("no machine-id was set up:\n{report}"),
        ));
    }
    m.poweroff(ctx, r, "boot 1")?;

    // Upgrade: stage the second image, boot, hninit rotates it in.
    m.stage(ctx, imgs.second()?)?;
    let r = boot_upgraded(ctx, &m)?;
    m.poweroff(ctx, r, "boot 2")
}

/// Boot 2 after an upgrade of an uninstantiated machine: hninit rotated the
/// second image in (image id `second`), the first is kept as
/// `hn-root-old.img`, nothing is staged, and the factory's
/// hninit-mark-good.service ended the trial. Returns the running machine.
fn boot_upgraded(ctx: &mut Ctx, m: &Machine) -> Result<Running, Failure> {
    // Without instantiation the second image makes its own ssh host keys.
    let _ = std::fs::remove_file(&m.known_hosts);
    let r = m.boot(ctx, "boot 2")?;
    let report = m.root_ssh_ready(ctx, &r, "boot 2", HostKey::AcceptNew)?;
    check_root_report(ctx, m.imgs, &r, &report, "second")?;
    if field(&report, "markgood") != "active" || field(&report, "trial") != "not on trial" {
        return Err(vm_failure(
            &r.vm,
            format!("expected hninit-mark-good.service to have ended the trial:\n{report}"),
        ));
    }
    let files = field(&report, "files");
    if !files.contains("hn-root-old.img") || files.contains("hn-root-new.img") {
        return Err(vm_failure(&r.vm, format!("expected the first image kept as hn-root-old.img and nothing staged, /hostpart has: {files}")));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// debian-boot-bookworm: the previous release still boots and powers off cleanly

/// One boot of a Debian 12 image (systemd 252, kernel 6.1, plain `.ko`
/// modules, virtio_pci a module): the root checks and a clean poweroff, where
/// the host partition is still at `/oldroot/hostpart`. No upgrade: the
/// rotation does not depend on the image's release and `debian-boot` covers it.
fn debian_boot_bookworm(ctx: &mut Ctx) -> Result<(), Failure> {
    let imgs = images(Suite::Bookworm)?;
    for n in &imgs.notes {
        ctx.note(n);
    }
    let m = Machine::new(ctx, imgs, None)?;
    // One vCPU of two and free memory slots, for the hot-add check below.
    let qmp_path = ctx.dir().join("qmp.sock");
    let _ = std::fs::remove_file(&qmp_path);
    let extra = [
        "-smp".to_string(),
        "1,maxcpus=2".into(),
        "-m".into(),
        "1024,slots=2,maxmem=2048M".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ];
    let r = m.boot_with(ctx, "boot 1", &extra)?;
    let report = m.root_ssh_ready(ctx, &r, "boot 1", HostKey::AcceptNew)?;
    check_root_report(ctx, imgs, &r, &report, "first")?;
    hot_add_cpu_and_memory(ctx, &m, &r, &qmp_path)?;
    m.poweroff(ctx, r, "boot 1")
}

/// Issue 14 on Debian 12 (Linux 6.1 leaves hot-added CPUs and memory
/// offline): a vCPU and a 256 MiB `pc-dimm` added through QMP are brought
/// online by the image's udev rule and `hninit-hotplug@.service`.
fn hot_add_cpu_and_memory(ctx: &mut Ctx, m: &Machine, r: &Running, qmp_path: &Path) -> Result<(), Failure> {
    let mut q = qmp::Qmp::connect(qmp_path, Duration::from_secs(10))?;
    q.add_cpu("cpu1")?;
    q.add_dimm("dimm1", 256)?;
    let script = "cat /sys/devices/system/cpu/online; grep -l offline /sys/devices/system/memory/memory*/state | wc -l; \
                  journalctl --no-pager -o cat -u 'hninit-hotplug@*' | grep -c '^hotplug: memory[0-9]* online'";
    let t = Instant::now();
    loop {
        let out = m.ssh(r, &m.imgs.root_key, "root", HostKey::Strict, script).unwrap_or_default();
        let w: Vec<&str> = out.split_whitespace().collect();
        if w.len() == 3 && w[0] == "0-1" && w[1] == "0" && w[2] != "0" {
            ctx.note(format!(
                "hotplug: vCPU 1 and a 256 MiB pc-dimm ({} memory blocks) online {:.1} s after device_add, by hninit-hotplug@.service",
                w[2],
                t.elapsed().as_secs_f64()
            ));
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let journal = m
                .ssh(r, &m.imgs.root_key, "root", HostKey::Strict, "journalctl --no-pager -o cat -u 'hninit-hotplug@*' | tail -n 20")
                .unwrap_or_default();
            return Err(vm_failure(
                &r.vm,
                format!("[hotplug] CPUs online, memory blocks offline, blocks hninit onlined: {out:?}, want 0-1, 0, >0\nhninit-hotplug:\n{journal}"),
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
    let cpu = m.ssh(r, &m.imgs.root_key, "root", HostKey::Strict, "journalctl --no-pager -o cat -u 'hninit-hotplug@*' | grep -c '^hotplug: cpu1 online'")?;
    if cpu.trim() == "0" {
        return Err(vm_failure(&r.vm, "[hotplug] cpu1 is online but no hninit-hotplug@ unit said not say it onlined it".to_string()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// debian-e2e: instantiation from a Gandi swap disk (hninit's step 9)

/// `openssl passwd -6` of `password` (a `$6$` crypt hash).
fn crypt_hash(password: &str) -> Result<String, Failure> {
    let mut c = Command::new("openssl");
    c.args(["passwd", "-6", password]);
    let out = xtask::util::run_stdout(&mut c).or_fail("openssl passwd -6")?;
    let h = out.trim().to_string();
    if !h.starts_with("$6$") {
        return Err(Failure::new(format!("openssl passwd -6 gave {h:?}")));
    }
    Ok(h)
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The Gandi-format host config of the e2e machine.
fn e2e_config(pubkey: &str, hash: &str) -> String {
    format!(
        r#"{{
  "vm_hostname": {host},
  "nameservers": ["10.0.2.3"],
  "vif": [{{
    "vif_number": 0,
    "pna": [{{
      "pna_address": "10.0.2.15",
      "pbn": {{"pbn_network": "10.0.2.0/24", "pbn_gateway": "10.0.2.2"}}
    }}]
  }}],
  "vm_conf": {{
    "user": "admin",
    "password": {hash},
    "ssh_key": {key},
    "run": {run}
  }}
}}
"#,
        host = json_str(E2E_HOSTNAME),
        hash = json_str(hash),
        key = json_str(pubkey),
        run = json_str(E2E_RUN)
    )
}

/// `vm_conf.run` of the e2e machine: one line per run in a file on the host
/// partition, which outlives every image (issue 10 item 8: once per host).
const E2E_RUN: &str = "#!/bin/sh
for h in /hostpart /run/hninit/hostpart; do
  if [ -d \"$h/data\" ]; then echo \"ran on $(cat /etc/hn-image-id)\" >> \"$h/data/run-count\"; sync; exit 0; fi
done
exit 1
";

/// Waits for the run-once unit to be settled (run or skipped), then reports the
/// run count, the unit's condition result and the host partition's markers.
const RUN_PROBE: &str = "for i in $(seq 90); do s=$(systemctl show -p ActiveState --value hninit-run.service); case $s in activating) sleep 1;; *) [ -n \"$(systemctl show -p ConditionTimestampMonotonic --value hninit-run.service | grep -v '^0$')\" ] && break; sleep 1;; esac; done; \
     for h in /hostpart /run/hninit/hostpart; do [ -d $h/hn-state ] && hp=$h && break; done; \
     echo runs=$(cat $hp/data/run-count 2>/dev/null | wc -l); \
     echo condition=$(systemctl show -p ConditionResult --value hninit-run.service); \
     echo markers=$(ls $hp/hn-state/run-done 2>/dev/null | wc -l)";

/// Checks the run count after boot `what`.
fn check_run_once(m: &Machine, r: &Running, what: &str, condition: &str) -> Result<String, Failure> {
    let out = m.ssh(r, &m.imgs.root_key, "root", HostKey::Strict, RUN_PROBE)?;
    if field(&out, "runs") != "1" || field(&out, "condition") != condition || field(&out, "markers") != "1" {
        return Err(vm_failure(
            &r.vm,
            format!("[run once] after {what}: expected vm_conf.run to have run exactly once (runs=1, condition={condition}, markers=1):\n{out}"),
        ));
    }
    Ok(out)
}

/// What the instantiated user sees.
const ADMIN_PROBE: &str = "echo hostname=$(hostname); \
     echo addr=$(ip -4 -o addr show eth0); \
     echo machine-id=$(cat /etc/machine-id); \
     echo id=$(id); \
     if sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=no; fi; \
     echo image=$(cat /etc/hn-image-id)";

/// The config-driven checks (they wait for hninit's step 9).
fn check_instantiated(r: &Running, admin: &str, root: &str) -> Result<(), Failure> {
    let fail = |m: String| {
        Err(vm_failure(
            &r.vm,
            format!("[instantiation] {m}\nadmin's report:\n{admin}\nroot's report:\n{root}"),
        ))
    };
    if field(admin, "hostname") != E2E_HOSTNAME {
        return fail(format!("expected hostname {E2E_HOSTNAME}"));
    }
    let addr = field(admin, "addr");
    if !addr.contains(&format!("inet {E2E_ADDRESS}")) || addr.contains("dynamic") {
        return fail(format!(
            "expected the static address {E2E_ADDRESS} on eth0, got {addr:?}"
        ));
    }
    if !field(admin, "id").contains("(sudo)") {
        return fail("expected admin in the sudo group".into());
    }
    if field(admin, "machine-id").len() != 32 {
        return fail("expected a machine-id".into());
    }
    Ok(())
}

fn debian_e2e(ctx: &mut Ctx) -> Result<(), Failure> {
    let imgs = images(Suite::Trixie)?;
    for n in &imgs.notes {
        ctx.note(n);
    }
    // This run's user key and password hash go into the config.
    let key = ctx.dir().join("admin_ed25519");
    ssh_keygen(&key, "hninit-e2e-admin").or_fail("ssh-keygen")?;
    let pubkey = std::fs::read_to_string(key.with_extension("pub"))?;
    let hash = crypt_hash("e2e-pass-word")?;
    let config = e2e_config(pubkey.trim(), &hash).into_bytes();
    std::fs::write(ctx.dir().join("config.json"), &config)?;
    let m = Machine::new(ctx, imgs, Some(&config))?;
    let (swap, archive_len) = {
        let (p, d) = m.swap.as_ref().expect("with a swap disk");
        let st = inspect_swap_disk(p).or_fail("reading the swap disk")?;
        if st.config.as_deref() != Some(&config[..]) {
            return Err(Failure::new("the swap disk does not carry the config"));
        }
        (p.clone(), d.archive_len)
    };

    // Part A (no instantiation needed): boot, root ssh.
    let r = m.boot(ctx, "boot 1")?;
    let root = m.root_ssh_ready(ctx, &r, "boot 1", HostKey::AcceptNew)?;
    check_root_report(ctx, imgs, &r, &root, "first")?;

    // Part B (step 9): the config's user, hostname, address.
    let t = Instant::now();
    let admin = m.ssh_retry(&r, &key, "admin", HostKey::Strict, ADMIN_PROBE, Duration::from_secs(30))
        .map_err(|f| Failure {
            message: format!("[instantiation] admin cannot log in with the config's key: {}\nroot's report:\n{root}", f.message),
            ..f
        })?;
    ctx.note(format!(
        "boot 1: admin ssh answered in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    check_instantiated(&r, &admin, &root)?;
    let machine_id = field(&admin, "machine-id").to_string();
    ctx.note(format!(
        "boot 1: instantiated as {E2E_HOSTNAME}, machine-id {machine_id}, sudo -n: {}",
        field(&admin, "sudo")
    ));
    check_run_once(&m, &r, "boot 1", "yes")?;
    ctx.note("boot 1: vm_conf.run ran once, its done-marker is in hn-state/run-done");
    m.poweroff(ctx, r, "boot 1")?;

    // The config is gone from the swap disk; the swap header is intact.
    let st = inspect_swap_disk(&swap).or_fail("reading the swap disk")?;
    if !st.swap_signature || st.swap_label != "swap" {
        return Err(Failure::new(format!(
            "[instantiation] the swap header was damaged: {st:?}"
        )));
    }
    if st.config.is_some() || st.zero_bytes_at_config < archive_len {
        return Err(Failure::new(format!(
            "[instantiation] the config archive ({archive_len} bytes at {}) was not wiped: {} zero bytes there",
            xtask::swapdisk::CONFIG_OFFSET,
            st.zero_bytes_at_config
        )));
    }

    // Part C: upgrade; the host keeps its identity (hn-state).
    m.stage(ctx, imgs.second()?)?;
    let r = m.boot(ctx, "boot 2")?;
    let root = m.root_ssh_ready(ctx, &r, "boot 2", HostKey::Strict).map_err(|f| Failure {
        message: format!("[instantiation] after the upgrade ssh with the first boot's known_hosts (StrictHostKeyChecking=yes) failed — host key changed? {}", f.message),
        ..f
    })?;
    check_root_report(ctx, imgs, &r, &root, "second")?;
    let admin = m.ssh(&r, &key, "admin", HostKey::Strict, ADMIN_PROBE)?;
    check_instantiated(&r, &admin, &root)?;
    if field(&admin, "machine-id") != machine_id {
        return Err(vm_failure(
            &r.vm,
            format!(
                "[instantiation] machine-id changed across the upgrade: {machine_id} -> {}",
                field(&admin, "machine-id")
            ),
        ));
    }
    if field(&admin, "image") != "second" {
        return Err(vm_failure(
            &r.vm,
            format!("expected image second:\n{admin}"),
        ));
    }
    ctx.note("boot 2: image second, same ssh host key and machine-id");
    // The stored config was applied to the new image: its run-once unit is
    // there, and skipped (hn-state's marker), not run a second time.
    check_run_once(&m, &r, "the upgrade (boot 2)", "no")?;
    ctx.note("boot 2: vm_conf.run not run again after the upgrade (ConditionResult=no)");
    m.poweroff(ctx, r, "boot 2")
}
