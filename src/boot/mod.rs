//! The boot, step by step as in DESIGN.md: `Boot::run` calls one method per
//! step, each logs one line; the first error ends the sequence and goes to
//! `failure`. Steps 1–5 are short and live here; the others have a file named
//! for their step:
//!
//! | step | what | where |
//! |---|---|---|
//! | 1 | /proc /sys /dev /run | `sys::mounts` |
//! | 2 | the command line | `cmdline` |
//! | 3 | forced kernel modules | `modules::drivers` |
//! | 4 | devices, the host partition found | `sys::devices` |
//! | 5 | host partition mounted at /hostpart | `sys::mounts` |
//! | 6 | slots: recover, revert, validate, rotate | `step6_slots` |
//! | 7 | kexec after a rotation onto another kernel | `step7_kexec` |
//! | 8 | the image loop-mounted at /newroot | `step8_rootfs` |
//! | 9 | first-boot instantiation | `step9_firstboot` |
//! | 10 | handoff: move, clean, switch root, exec | `step10_handoff` |
//!
//! `failure` is the `hn.on_error` policy; `shutdown` is the program systemd
//! runs from /run/initramfs at poweroff. This folder may use every layer below
//! it; nothing below may use it.

pub mod failure;
pub mod profile;
pub mod shutdown;
pub mod shutdown_plan;
pub mod step10_handoff;
pub mod step6_slots;
pub mod step7_kexec;
pub mod step8_rootfs;
pub mod step9_firstboot;

use crate::cmdline::{self, Cmdline, RootMode};
use crate::sys::devices::{self, WaitReport};
use crate::sys::devspec::BlockDev;
use crate::modules::drivers::Drivers;
use crate::error::{BootError, Result};
use self::step8_rootfs::{self as rootfs, MountedRoot, NEWROOT};
use crate::log;
use crate::sys::mounts;
use self::{step10_handoff as handoff, step6_slots as select, step7_kexec as kexec};
use rustix::mount::MountFlags;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::layout::HOSTPART;

#[derive(Default)]
pub struct Boot {
    cmd: Cmdline,
    drivers: Drivers,
    wait: WaitReport,
    hostpart: Option<BlockDev>,
    root: Option<MountedRoot>,
    rotated: bool,
    saved_printk: Option<(String, String)>,
    profile: profile::Profile,
}

/// Runs the boot; only returns by exec'ing the new init, else fails per policy.
pub fn boot() -> ! {
    let mut b = Boot::default();
    let err = match b.run() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let diagnosis = b.diagnose(&err);
    failure::fail(failure::Policy::from_cmdline(&b.cmd), &err, &diagnosis)
}

impl Boot {
    fn run(&mut self) -> Result<Infallible> {
        self.api_filesystems()?; //                     1
        self.profile.mark("1 mounts");
        self.command_line()?; //                        2
        self.profile.mark("2 cmdline");
        self.kernel_modules(); //                       3
        self.profile.mark("3 modules");
        let hostpart = self.find_host_partition()?; //  4
        self.profile.mark("4 devices");
        self.mount_host_partition(&hostpart)?; //       5
        self.profile.mark("5 hostpart");
        let image = self.settle_slots()?; //            6
        self.profile.mark("6 slots");
        self.kernel_handover(&image)?; //               7
        self.mount_image(&image)?; //                   8
        self.profile.mark("8 image");
        self.first_boot()?; //                          9
        self.profile.mark("9 firstboot");
        self.handoff() //                               10
    }

    /// 1. /proc /sys /dev /run.
    fn api_filesystems(&mut self) -> Result<()> {
        mounts::mount_api_filesystems()?;
        log::open_kmsg();
        // Userspace kmsg writes are rate-limited by default; our records must all show.
        self.saved_printk = Some((read_proc("/proc/sys/kernel/printk_devkmsg"), read_proc("/proc/sys/kernel/printk")));
        log::ignored(std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n"), "lift kmsg rate limiting", "a kernel without the knob only drops repeated lines");
        info!("hninit {} started: /proc /sys /dev /run mounted", env!("CARGO_PKG_VERSION"));
        Ok(())
    }

    /// 2. The kernel command line.
    fn command_line(&mut self) -> Result<()> {
        let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let (cmd, warnings) = cmdline::parse(text.trim());
        self.cmd = cmd;
        log::set_debug(self.cmd.debug);
        if self.cmd.debug {
            // Show our debug records on the console while we run.
            log::ignored(std::fs::write("/proc/sys/kernel/printk", "8\n"), "raise the console log level", "debug records still reach kmsg");
        }
        for w in &warnings {
            warn!("{w}");
        }
        info!(
            "command line: image {} on host partition {}{}, root {}, init {}",
            self.cmd.real_root,
            self.cmd.hostpart,
            if self.cmd.hostpart_flags.is_empty() { String::new() } else { format!(" ({})", self.cmd.hostpart_flags) },
            match self.cmd.root_mode {
                RootMode::Ro => "ro",
                RootMode::Rw => "rw",
                RootMode::Default => "ro (default; the system may remount it rw)",
            },
            self.cmd.init
        );
        Ok(())
    }

    /// 3. Forced modules (and `hn.modules=`); device drivers follow in step 4.
    fn kernel_modules(&mut self) {
        let t = Instant::now();
        let drivers = Drivers::open();
        let summary = drivers.load_forced(&self.cmd.modules);
        info!("kernel modules: {summary} in {} ms", t.elapsed().as_millis());
        self.drivers = drivers;
    }

    /// 4. Wait for the host partition while loading drivers for what appears.
    fn find_host_partition(&mut self) -> Result<BlockDev> {
        let t = Instant::now();
        let dev = devices::wait_for(&self.cmd.hostpart, self.cmd.timeout, &self.drivers, &mut self.wait)?;
        info!("host partition {} is {} (found in {} ms)", self.cmd.hostpart, dev.describe(), t.elapsed().as_millis());
        Ok(dev)
    }

    /// 5. Mount it read-write at /hostpart.
    fn mount_host_partition(&mut self, dev: &BlockDev) -> Result<()> {
        let fstype = match &dev.superblock {
            Some(sb) if sb.fstype != crate::sys::probe::FsType::Swap => sb.fstype.mount_type(),
            _ => return Err(BootError::HostpartUnknownFs { dev: dev.path.display().to_string() }),
        };
        self.drivers.load_for_fs(fstype);
        mounts::mount_fs(&dev.path, Path::new(HOSTPART), fstype, &self.cmd.hostpart_flags, MountFlags::empty())?;
        info!("mounted {} ({fstype}) read-write at {HOSTPART}", dev.path.display());
        self.hostpart = Some(dev.clone());
        Ok(())
    }

    /// 6. Slots: recover, revert, validate, rotate; every decision logged.
    fn settle_slots(&mut self) -> Result<PathBuf> {
        let image = select::image_path(Path::new(HOSTPART), &self.cmd.real_root);
        let dev = self.hostpart_dev();
        if self.cmd.hostpart_flags.flags.contains(MountFlags::RDONLY) {
            notice!("host partition mounted read-only (loopdev_hostpart_flags): no rotation, booting {}", image.display());
            return Ok(image);
        }
        let outcome = select::settle_at_boot(&self.cmd, Path::new(HOSTPART), &dev, &self.drivers)?;
        self.rotated = outcome.rotated;
        let trial = match outcome.trial {
            Some(t) => format!(", on trial ({} of {} tries left)", t.tries_left, t.tries),
            None => String::new(),
        };
        info!("image: {} (real_root={}){trial}", image.display(), self.cmd.real_root);
        Ok(image)
    }

    /// 7. After a rotation onto another kernel: kexec it (or reboot) per hn.after_rotate.
    fn kernel_handover(&mut self, image: &Path) -> Result<()> {
        if !self.rotated {
            return Ok(());
        }
        kexec::handover(&self.cmd, image, &self.drivers);
        Ok(())
    }

    /// 8. Loop-attach and mount the image at /newroot; check its init.
    fn mount_image(&mut self, image: &Path) -> Result<()> {
        let dev = self.hostpart_dev();
        let root = rootfs::mount_image(&rootfs::RootOptions::from_cmdline(&self.cmd), image, &dev, &self.drivers)?;
        info!(
            "root: {} on {} ({}, {}), init {} is executable",
            root.image.display(),
            root.loop_device.display(),
            root.fstype,
            if root.read_only { "ro" } else { "rw" },
            self.cmd.init
        );
        self.root = Some(root);
        Ok(())
    }

    /// 9. Instantiate the image as this host if a configuration applies.
    fn first_boot(&mut self) -> Result<()> {
        let Some(root) = self.root.as_mut() else { return Ok(()) };
        // Devices may have appeared since step 4 (a swap disk behind the host disk):
        // step 4's scanner probes only those. Partition tables are read for PARTUUIDs
        // only when hn.config= asks for one.
        let partuuid = self.cmd.config.as_deref().is_some_and(|c| c.starts_with("PARTUUID="));
        self.wait.devices = self.wait.scanner.scan(partuuid);
        let args = step9_firstboot::Args {
            config: self.cmd.config.as_deref(),
            keep: self.cmd.config_keep,
            root: rootfs::RootOptions::from_cmdline(&self.cmd),
        };
        step9_firstboot::first_boot(&args, Path::new(HOSTPART), &self.wait.devices, &self.drivers, root)
    }

    fn hostpart_dev(&self) -> String {
        self.hostpart.as_ref().map(|d| d.path.display().to_string()).unwrap_or_default()
    }

    /// 10. Move everything into the new root and exec its init.
    fn handoff(&mut self) -> Result<Infallible> {
        let newroot = Path::new(NEWROOT);
        if let Err(e) = shutdown::prepare() {
            warn!("cannot install {}/shutdown ({e}): the host partition will not be unmounted cleanly at poweroff", shutdown::DIR);
        }
        handoff::move_api_filesystems(newroot)?;
        let hostpart_at = handoff::move_hostpart(newroot)?;
        handoff::delete_initramfs(newroot)?;
        handoff::enter_root(newroot)?;
        if log::debug_enabled() {
            self.profile.mark("10 handoff");
            debug!("{}", self.profile.summary());
            debug!("peak memory {}", read_proc("/proc/self/status").lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?"));
        }
        info!("switching root: exec {} (host partition at {})", self.cmd.init, hostpart_at.display());
        if let Some((devkmsg, printk)) = self.saved_printk.take() {
            log::ignored(std::fs::write("/proc/sys/kernel/printk", printk), "restore the console log level", "the booted system sets its own");
            log::ignored(std::fs::write("/proc/sys/kernel/printk_devkmsg", devkmsg), "restore kmsg rate limiting", "the booted system sets its own");
        }
        handoff::exec_init(&self.cmd.init)
    }

    /// What to show with an error: the block devices and missing drivers.
    fn diagnose(&mut self, err: &BootError) -> Vec<String> {
        let mut out = Vec::new();
        match err {
            BootError::HostpartNotFound { .. } | BootError::HostpartAmbiguous { .. } | BootError::HostpartUnknownFs { .. } => {
                out.push(format!("looked for the host partition {} (loopdev_hostpart=)", self.cmd.hostpart));
            }
            BootError::ImageMissing { .. } => {
                out.push(format!("looked for real_root={} on the host partition; it holds:", self.cmd.real_root));
                let dir = Path::new(HOSTPART).join(self.cmd.real_root.trim_start_matches('/'));
                let dir = dir.parent().unwrap_or(Path::new(HOSTPART));
                match std::fs::read_dir(dir) {
                    Ok(rd) => {
                        let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                        crate::util::sort(&mut names);
                        names.truncate(50);
                        out.push(format!("  {}: {}", dir.display(), names.join(" ")));
                    }
                    Err(e) => out.push(format!("  {}: {e}", dir.display())),
                }
            }
            _ => {}
        }
        if self.wait.devices.is_empty() {
            self.wait.devices = devices::BlockScanner::default().scan(true);
        }
        if self.wait.devices.is_empty() {
            out.push("block devices: none at all".into());
        } else {
            out.push("block devices:".into());
            for d in &self.wait.devices {
                out.push(format!("  {}", d.describe()));
            }
        }
        let aliases = if self.wait.aliases.is_empty() {
            devices::coldplug_modaliases(Path::new("/sys"))
        } else {
            std::mem::take(&mut self.wait.aliases)
        };
        out.extend(self.drivers.diagnose(&aliases));
        out
    }
}

fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
