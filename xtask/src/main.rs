//! `cargo xtask`: the command-line front end of the xtask library (build the
//! init, fetch the kernel, make initramfs/disks, boot the demo in QEMU, test).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use xtask::initbin::cargo;
use xtask::{
    build_demo_disk, build_dir, build_init, build_initramfs, debian_kernel, debian_kernel_refresh,
    ensure_host_packages, qemu, util, workspace_root, Compression, DemoOptions, GrubVars, HostFs,
    InitramfsSpec,
};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "hninit developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages the other tasks need, if any is missing.
    Deps,
    /// Build the static init (release, x86_64-unknown-linux-musl) and print its path.
    BuildInit,
    /// Fetch the Debian kernel into the cache; print its release and paths.
    Kernel {
        /// Ask apt for the current version even if a kernel is cached.
        #[arg(long)]
        refresh: bool,
    },
    /// Build an initramfs for a kernel.
    Initramfs {
        /// Kernel release (`uname -r`).
        #[arg(long)]
        kernel_release: String,
        /// Module tree with modules.dep [default: /lib/modules/<release>].
        #[arg(long)]
        modules_dir: Option<PathBuf>,
        /// Module name or alias to include (repeatable) [default: initramfs/modules.default].
        #[arg(long = "module", value_name = "NAME")]
        modules: Vec<String>,
        /// Module to load unconditionally (repeatable) [default: initramfs/modules.force].
        #[arg(long = "force", value_name = "NAME")]
        force: Vec<String>,
        #[arg(long, value_enum, default_value_t = Compression::Zstd)]
        compress: Compression,
        /// A static busybox to add as /bin/busybox and /bin/sh.
        #[arg(long)]
        busybox: Option<PathBuf>,
        /// The init binary [default: build it].
        #[arg(long)]
        init: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Render grub/grub.cfg.in.
    GrubCfg {
        #[arg(long, default_value_t = 3)]
        timeout: u32,
        #[arg(long, default_value = "hostpart")]
        hostpart_label: String,
        /// "" for the partition root, or e.g. /images.
        #[arg(long, default_value = "")]
        image_dir: String,
        #[arg(long, default_value = "console=ttyS0 rw")]
        cmdline: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build the demo disk (ESP with GRUB + host partition holding hn-root.img).
    Disk {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        demo: DemoArgs,
    },
    /// Build the demo disk and boot it in QEMU on this terminal (Ctrl-A X quits).
    Run {
        #[command(flatten)]
        demo: DemoArgs,
        /// Boot with -kernel/-initrd/-append instead of OVMF + GRUB.
        #[arg(long)]
        direct: bool,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u32,
    },
    /// Run the host tests, then the QEMU boot scenarios (arguments go to qemu-tests).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    #[arg(long, value_enum, default_value_t = HostFs::Ext4)]
    hostpart_fs: HostFs,
    /// Directory of the images on the host partition ("" or e.g. /images).
    #[arg(long, default_value = "")]
    image_dir: String,
    /// Extra kernel command line after "console=ttyS0 rw panic=-1".
    #[arg(long, default_value = "")]
    cmdline: String,
    /// GRUB menu timeout in seconds.
    #[arg(long, default_value_t = 1)]
    timeout: u32,
    /// Use this init binary instead of building it.
    #[arg(long)]
    init: Option<PathBuf>,
}

impl DemoArgs {
    fn options(&self) -> DemoOptions {
        DemoOptions {
            hostpart_fs: self.hostpart_fs,
            image_dir: self.image_dir.clone(),
            cmdline_extra: self.cmdline.clone(),
            timeout: self.timeout,
            init: self.init.clone(),
        }
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Deps => {
            ensure_host_packages()?;
            println!("host packages: all present");
        }
        Cmd::BuildInit => println!("{}", build_init()?.display()),
        Cmd::Kernel { refresh } => {
            let k = if refresh {
                debian_kernel_refresh()?
            } else {
                debian_kernel()?
            };
            println!("release: {}", k.release);
            println!("vmlinuz: {}", k.vmlinuz.display());
            println!("modules: {}", k.modules_dir.display());
        }
        Cmd::Initramfs {
            kernel_release,
            modules_dir,
            modules,
            force,
            compress,
            busybox,
            init,
            out,
        } => {
            let modules_dir =
                modules_dir.unwrap_or_else(|| PathBuf::from("/lib/modules").join(&kernel_release));
            let init = match init {
                Some(p) => p,
                None => build_init()?,
            };
            let spec = InitramfsSpec {
                init_binary: init,
                kernel_release,
                modules_dir,
                modules,
                force,
                busybox,
                compression: compress,
            };
            let r = build_initramfs(&spec, &out)?;
            println!(
                "{}: {} modules, cpio {} bytes, {:?} {} bytes",
                out.display(),
                r.modules.len(),
                r.uncompressed_size,
                r.compression,
                r.compressed_size
            );
            println!("modules: {}", r.modules.join(" "));
            println!("force: {}", r.force.join(" "));
            if !r.builtin.is_empty() {
                println!("built in (not included): {}", r.builtin.join(" "));
            }
            if !r.skipped.is_empty() {
                println!("not in this kernel (skipped): {}", r.skipped.join(" "));
            }
        }
        Cmd::GrubCfg {
            timeout,
            hostpart_label,
            image_dir,
            cmdline,
            out,
        } => {
            let text = GrubVars {
                timeout,
                hostpart_label,
                image_dir,
                cmdline,
            }
            .render();
            match out {
                Some(p) => util::write_atomic(&p, text.as_bytes())?,
                None => print!("{text}"),
            }
        }
        Cmd::Disk { out, demo } => {
            ensure_host_packages()?;
            let a = build_demo_disk(&demo.options(), &out)?;
            print_demo(&a);
        }
        Cmd::Run {
            demo,
            direct,
            memory,
        } => {
            ensure_host_packages()?;
            let disk = build_dir().join("demo/disk.img");
            let a = build_demo_disk(&demo.options(), &disk)?;
            print_demo(&a);
            let boot = if direct {
                qemu::Boot::Direct {
                    kernel: a.kernel.vmlinuz.clone(),
                    initrd: Some(a.initramfs.clone()),
                    append: a.direct_cmdline.clone(),
                }
            } else {
                qemu::Boot::Uefi {
                    vars: qemu::fresh_ovmf_vars(&build_dir().join("demo"))?,
                }
            };
            let mut spec = qemu::QemuSpec::new(boot);
            spec.memory_mib = memory;
            spec.serial = qemu::Serial::MonStdio;
            spec.drives.push(qemu::Drive::virtio(&disk));
            // Interactive: QEMU stays in our process group (the terminal's
            // foreground group), unlike qemu_command() for harnesses.
            let mut c = util::cmd(qemu::QEMU);
            c.args(qemu::qemu_base_args(&spec));
            eprintln!("xtask: {}", util::display_cmd(&c));
            let st = c.status().context("starting QEMU")?;
            if let qemu::Boot::Uefi { vars } = &spec.boot {
                std::fs::remove_file(vars).ok();
            }
            if !st.success() {
                bail!("QEMU exited with {st}");
            }
        }
        Cmd::Test { args } => {
            let root = workspace_root();
            let st = cargo()
                .current_dir(&root)
                .args(["test", "--workspace"])
                .status()
                .context("running cargo test")?;
            if !st.success() {
                std::process::exit(st.code().unwrap_or(1));
            }
            let st = cargo()
                .current_dir(&root)
                .args(["run", "--release", "-p", "qemu-tests", "--"])
                .args(&args)
                .status()
                .context("running qemu-tests")?;
            if !st.success() {
                std::process::exit(st.code().unwrap_or(1));
            }
        }
    }
    Ok(())
}

fn print_demo(a: &xtask::DemoArtifacts) {
    let r = &a.initramfs_report;
    println!(
        "kernel:    {} ({})",
        a.kernel.release,
        a.kernel.vmlinuz.display()
    );
    println!("init:      {}", a.init.display());
    println!(
        "initramfs: {} ({} modules, {} bytes)",
        a.initramfs.display(),
        r.modules.len(),
        r.compressed_size
    );
    println!("root:      {}", a.root_image.display());
    println!("disk:      {}", a.disk.display());
    for p in &a.layout.partitions {
        println!(
            "  part {} {:?}: {} label={} fsuuid={} partlabel={} partuuid={} @{} MiB size {} MiB",
            p.number,
            p.role,
            p.fs_type,
            p.fs_label,
            p.fs_uuid,
            p.partlabel,
            p.part_uuid,
            p.start_bytes >> 20,
            p.size_bytes >> 20
        );
    }
    println!("cmdline (direct boot): {}", a.direct_cmdline);
}
