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
    /// Build the static init (release, x86_64-unknown-linux-musl), check it is under
    /// its 1 MiB budget, print its path (stdout) and size (stderr).
    BuildInit,
    /// Build the Debian package hninit_<version>_amd64.deb (dpkg-deb, packaging/deb/)
    /// and check it with lintian; print its path.
    Deb {
        /// Directory for the .deb [default: target/xtask/]
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Skip the lintian check.
        #[arg(long)]
        no_lintian: bool,
    },
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
        /// Module set (initramfs/profiles/): server (RAID/SAS HBAs, USB, legacy ATA,
        /// SD/MMC, VMs), vm (virtio, Xen, AHCI, NVMe), host (the drivers of this
        /// machine's disks) [default: server, unless --module is given without it].
        #[arg(long, value_enum)]
        profile: Option<xtask::Profile>,
        /// Module name or alias to include (repeatable): on top of --profile, or, without
        /// --profile, the exact list instead of the default profile.
        #[arg(long = "module", value_name = "NAME")]
        modules: Vec<String>,
        /// Module name or alias to include on top of the --module list or the profile
        /// (repeatable), e.g. `--add-module xfs`.
        #[arg(long = "add-module", value_name = "NAME")]
        add_modules: Vec<String>,
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
        /// minisign public key trusted for staged images (repeatable): installed as
        /// /etc/hninit/trusted.d/NAME.pub; with one, /init requires a valid signature.
        #[arg(long = "trust-key", value_name = "FILE")]
        trust_keys: Vec<PathBuf>,
        /// Key id to revoke, as minisign prints it (repeatable): /etc/hninit/revoked.d/ID.
        #[arg(long = "revoke-key", value_name = "KEYID")]
        revoke_keys: Vec<String>,
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
        #[arg(long, conflicts_with = "bios")]
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
    /// Debian root images for hninit (the image factory) and Gandi-style config disks.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Benchmark hninit against initramfs-tools and a busybox script; write BENCHMARKS.md's generated section.
    Bench {
        /// Boots per variant.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// CI: one boot per variant and a small staging image; fails only when a boot fails.
        #[arg(long)]
        smoke: bool,
        /// The report [default: BENCHMARKS.md; with --smoke target/xtask/bench/BENCHMARKS.md].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Skip the staging measurement.
        #[arg(long)]
        no_staging: bool,
        /// Size of the image staged [default: 2048; with --smoke 256].
        #[arg(long, value_name = "MIB")]
        staging_mib: Option<u64>,
        /// Repetitions of each staging method.
        #[arg(long, default_value_t = 3)]
        staging_runs: usize,
        /// Boot only these variants (comma-separated keys: hninit, busybox, initramfs-tools, …;
        /// with --debian: hninit, initramfs-tools, initramfs-tools-part, dracut, dracut-rw, kexec, reboot).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Instead: the factory's Debian images, power-on → ssh (hninit, initramfs-tools,
        /// dracut) and the upgrade cycle (kexec, reboot); --runs rounds [default here: 3].
        /// Manual only: tens of minutes under TCG.
        #[arg(long, conflicts_with = "smoke")]
        debian: bool,
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
    /// Also install GRUB for BIOS (i386-pc, BIOS boot partition + MBR); with
    /// `run`, boot the disk under SeaBIOS instead of OVMF.
    #[arg(long)]
    bios: bool,
}

impl DemoArgs {
    fn options(&self) -> DemoOptions {
        DemoOptions {
            hostpart_fs: self.hostpart_fs,
            image_dir: self.image_dir.clone(),
            cmdline_extra: self.cmdline.clone(),
            timeout: self.timeout,
            init: self.init.clone(),
            bios: self.bios,
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
        Cmd::Deb { out_dir, no_lintian } => {
            let init = build_init()?;
            let hnctl = xtask::initbin::build_workspace_bin("hnctl")?;
            let deb = xtask::deb::build_deb(&init, &hnctl, &out_dir.unwrap_or_else(xtask::build_dir))?;
            if !no_lintian {
                eprint!("{}", xtask::deb::lintian(&deb)?);
                eprintln!("lintian: no errors or warnings");
            }
            println!("{}", deb.display());
        }
        Cmd::BuildInit => {
            let init = build_init()?;
            let size = std::fs::metadata(&init)?.len();
            eprintln!(
                "init: {size} bytes, {} under the budget of {} bytes (1 MiB)",
                xtask::initbin::INIT_BUDGET - size,
                xtask::initbin::INIT_BUDGET
            );
            println!("{}", init.display());
        }
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
            profile,
            modules,
            add_modules,
            force,
            compress,
            busybox,
            init,
            trust_keys,
            revoke_keys,
            out,
        } => {
            let (profile, modules) =
                xtask::initramfs::with_added_modules(profile, modules, &add_modules);
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
                profile,
                modules,
                sysfs: PathBuf::from("/sys"),
                force,
                busybox,
                compression: compress,
                trust_keys,
                revoke_keys,
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
            if let Some(p) = r.profile {
                println!("profile: {}", p.name());
                if let Some(b) = p.budget().filter(|b| r.compressed_size > *b && spec.busybox.is_none() && matches!(r.compression, Compression::Zstd)) {
                    eprintln!("xtask: warning: the {} profile's archive is {} bytes, over its budget of {b} (initramfs/README.md)", p.name(), r.compressed_size);
                }
            }
            for h in &r.host_drivers {
                println!(
                    "host: {} -> {} ({}{})",
                    h.disk,
                    h.module,
                    h.device.display(),
                    h.modalias.as_deref().map(|a| format!(", {a}")).unwrap_or_default()
                );
            }
            println!("modules: {}", r.modules.join(" "));
            println!("force: {}", r.force.join(" "));
            if !r.builtin.is_empty() {
                println!("built in (not included): {}", r.builtin.join(" "));
            }
            if !r.skipped.is_empty() {
                println!("not in this kernel (skipped): {}", r.skipped.join(" "));
            }
            if r.trusted_keys.is_empty() {
                println!("trusted keys: none (staged images are not verified)");
            } else {
                let t: Vec<String> = r.trusted_keys.iter().map(|(n, id)| format!("{id} ({n})")).collect();
                println!("trusted keys: {} (staged images must be signed by one)", t.join(", "));
            }
            if !r.revoked_keys.is_empty() {
                println!("revoked keys: {}", r.revoked_keys.join(", "));
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
            } else if demo.bios {
                qemu::Boot::Bios
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
        Cmd::Bench {
            runs,
            smoke,
            out,
            no_staging,
            staging_mib,
            staging_runs,
            only,
            debian,
        } => {
            if debian {
                let command = std::iter::once("cargo xtask bench".to_string())
                    .chain(std::env::args().skip(2))
                    .collect::<Vec<_>>()
                    .join(" ");
                let runs_given = std::env::args().any(|a| a == "--runs" || a.starts_with("--runs="));
                let opts = xtask::bench::DebianOptions {
                    runs: if runs_given { runs.max(1) } else { 3 },
                    out: out.unwrap_or_else(|| workspace_root().join("BENCHMARKS.md")),
                    only,
                    command,
                };
                let report = xtask::bench::run_debian(&opts)?;
                println!("bench: Debian report written to {}", report.display());
                return Ok(());
            }
            let out = out.unwrap_or_else(|| {
                if smoke {
                    build_dir().join("bench/BENCHMARKS.md")
                } else {
                    workspace_root().join("BENCHMARKS.md")
                }
            });
            let command = std::iter::once("cargo xtask bench".to_string())
                .chain(std::env::args().skip(2))
                .collect::<Vec<_>>()
                .join(" ");
            let opts = xtask::bench::BenchOptions {
                runs,
                smoke,
                out,
                staging: !no_staging,
                staging_mib: staging_mib.unwrap_or(if smoke { 256 } else { 2048 }),
                staging_runs,
                command,
                only,
            };
            let outcome = xtask::bench::run_bench(&opts)?;
            println!("bench: report written to {}", outcome.report.display());
            if !outcome.failed_boots.is_empty() {
                for f in &outcome.failed_boots {
                    eprintln!("bench: boot failed: {f}");
                }
                std::process::exit(1);
            }
        }
        Cmd::Image { cmd } => image_cmd(cmd)?,
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

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum ImageCmd {
    /// Build a generic Debian root image (debootstrap base cached in ~/.cache/hninit).
    Build {
        /// Debian suite: trixie (Debian 13) or bookworm (Debian 12).
        #[arg(long, default_value = xtask::factory::DEFAULT_SUITE)]
        suite: String,
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// Debian mirror [default: the one apt on this machine uses].
        #[arg(long)]
        mirror: Option<String>,
        /// Extra packages, comma-separated (repeatable).
        #[arg(long, value_delimiter = ',')]
        include: Vec<String>,
        /// Directory of hooks run run-parts style with TARGET, SUITE, ARCH (repeatable).
        #[arg(long = "hooks", value_name = "DIR")]
        hooks: Vec<PathBuf>,
        /// Module for the image's initramfs beyond the default set (repeatable), e.g. xfs.
        #[arg(long = "add-module", value_name = "NAME")]
        add_modules: Vec<String>,
        /// Filesystem size, e.g. 2G or 1536M (the file is sparse).
        #[arg(long, default_value = "2G", value_parser = parse_size_mib)]
        size: u64,
        /// Rebuild the cached debootstrap tarball when older than this.
        #[arg(long, default_value_t = xtask::factory::DEFAULT_MAX_AGE_DAYS)]
        max_age_days: u64,
        /// Leave out the hninit package (hnctl, mark-good unit, kernel hooks, platform units).
        #[arg(long)]
        no_hnctl: bool,
        /// Leave out the DHCP-on-every-interface networkd fallback.
        #[arg(long)]
        no_dhcp_fallback: bool,
        /// Use this init binary instead of building it.
        #[arg(long)]
        init: Option<PathBuf>,
        /// minisign public key trusted for the next images (repeatable): installed in
        /// the image's initramfs and in its /etc/hninit/trusted.d/.
        #[arg(long = "trust-key", value_name = "FILE")]
        trust_keys: Vec<PathBuf>,
        /// Key id to revoke, as minisign prints it (repeatable).
        #[arg(long = "revoke-key", value_name = "KEYID")]
        revoke_keys: Vec<String>,
        /// Sign the image into OUT.minisig with this minisign secret key (unencrypted:
        /// minisign -G -W); needs --version.
        #[arg(long = "sign-key", value_name = "FILE", requires = "version")]
        sign_key: Option<PathBuf>,
        /// version= of the signed image (dot-separated numbers, e.g. 2026.12.5).
        #[arg(long, requires = "sign_key")]
        version: Option<String>,
        /// compat= of the signed image (one word, e.g. web-amd64).
        #[arg(long, requires = "sign_key")]
        compat: Option<String>,
        #[arg(long, default_value = "hn-root.img")]
        out: PathBuf,
    },
    /// Make a Gandi-style swap disk: mkswap plus a ustar with gandi/config at byte 524288.
    SwapDisk {
        /// The JSON host configuration.
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Swap label ("" for none).
        #[arg(long, default_value = "swap")]
        label: String,
        #[arg(long)]
        out: PathBuf,
    },
}

/// `2G`, `1536M`, `1536` (MiB) → MiB.
fn parse_size_mib(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, mul) = match v.char_indices().last() {
        Some((i, 'G' | 'g')) => (&v[..i], 1024),
        Some((i, 'M' | 'm')) => (&v[..i], 1),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * mul)
        .ok_or_else(|| format!("{v:?} is not a size like 2G or 1536M"))
}

fn image_cmd(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Build {
            suite,
            arch,
            mirror,
            include,
            hooks,
            add_modules,
            size,
            max_age_days,
            no_hnctl,
            no_dhcp_fallback,
            init,
            trust_keys,
            revoke_keys,
            sign_key,
            version,
            compat,
            out,
        } => {
            let sign = sign_key.map(|key| xtask::signing::SignSpec {
                key,
                version: version.unwrap_or_default(),
                compat,
            });
            if let Some(s) = &sign {
                // Checked before the long build.
                xtask::signing::trusted_comment(s, 0)?;
            }
            let spec = xtask::ImageSpec {
                suite,
                arch,
                mirror,
                include,
                hooks,
                size_mib: size,
                max_age_days,
                init,
                hnctl: None,
                with_hnctl: !no_hnctl,
                dhcp_fallback: !no_dhcp_fallback,
                add_modules,
                trust_keys,
                revoke_keys,
                sign,
            };
            let r = xtask::build_image(&spec, &out)?;
            println!(
                "image:   {} ({} MiB filesystem, {} MiB allocated, tree {} MiB)",
                r.out.display(),
                r.image_bytes >> 20,
                r.image_allocated_bytes >> 20,
                r.tree_bytes >> 20
            );
            println!("kernel:  {}", r.kernel_release);
            println!(
                "base:    {} ({})",
                r.base_tarball.display(),
                if r.base_cached { "cached" } else { "built" }
            );
            println!("mirror:  {}", r.mirror);
            println!("packages: {}", r.packages.join(" "));
            for h in &r.hooks_run {
                println!("hook:    {}", h.display());
            }
            print!("steps:\n{}", r.timings());
        }
        ImageCmd::SwapDisk {
            config,
            size_mib,
            label,
            out,
        } => {
            let json =
                std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
            serde_json::from_slice::<serde_json::Value>(&json)
                .with_context(|| format!("{} is not JSON", config.display()))?;
            let label = (!label.is_empty()).then_some(label.as_str());
            let d = xtask::gandi_swap_disk(&out, size_mib, label, &json)?;
            println!(
                "{}: swap {} MiB (uuid {}), config archive {} bytes at byte {}",
                out.display(),
                d.size_bytes >> 20,
                d.swap_uuid,
                d.archive_len,
                d.archive_offset
            );
        }
    }
    Ok(())
}
