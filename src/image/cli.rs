//! `hnctl initramfs build|update`: the arguments (clap) and what they run. The
//! kernel hooks of the Debian package call `hnctl initramfs update`.

use super::bootpair::{self, RealBootFs, UpdateReport};
use super::initramfs::{build_initramfs, build_initramfs_data, with_added_modules, Compression, InitramfsSpec};
use super::profile::Profile;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Where the Debian package installs the static `/init`.
pub const DEFAULT_INIT: &str = "/usr/lib/hninit/init";
/// Extra modules for the hooks' initramfs, one name per line, under the root.
pub const MODULES_ADD: &str = "etc/hninit/modules.add";

/// The module choice shared by `build` and `update`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModuleArgs {
    /// Module set: server (default), vm, host (this machine's disk drivers)
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Module name or alias (repeatable): on top of --profile, else the exact list
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// Module added to the profile or the --module list (repeatable), e.g. xfs
    #[arg(long = "add-module", value_name = "NAME")]
    pub add_modules: Vec<String>,
    /// The static init binary
    #[arg(long, value_name = "FILE", default_value = DEFAULT_INIT)]
    pub init: PathBuf,
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compress: Compression,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum InitramfsCmd {
    /// Build an initramfs for one kernel into a file
    Build {
        /// Kernel release (`uname -r`)
        #[arg(long)]
        kernel_release: String,
        /// Module tree with modules.dep [default: /lib/modules/<release>]
        #[arg(long)]
        modules_dir: Option<PathBuf>,
        /// minisign public key trusted for staged images (repeatable)
        #[arg(long = "trust-key", value_name = "FILE")]
        trust_keys: Vec<PathBuf>,
        #[command(flatten)]
        modules: ModuleArgs,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Build /boot/initramfs for the newest installed kernel and point
    /// /boot/kernel at it, atomically (the kernel hooks run this)
    Update {
        /// The root filesystem to update
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// A kernel release about to be removed (prerm hook): never chosen
        #[arg(long, value_name = "RELEASE")]
        exclude: Option<String>,
        #[command(flatten)]
        modules: ModuleArgs,
    },
}

/// The spec for `release` under `root`: the trust store of the root's
/// `/etc/hninit` (so a rebuild keeps signature enforcement), the root's
/// `etc/hninit/modules.add`.
pub fn spec_for(root: &Path, release: &str, args: &ModuleArgs) -> Result<InitramfsSpec> {
    let mut add = args.add_modules.clone();
    if let Ok(text) = fs::read_to_string(root.join(MODULES_ADD)) {
        add.extend(text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(str::to_string));
    }
    let mut spec = InitramfsSpec::new(&args.init, release, &root.join("lib/modules").join(release));
    (spec.profile, spec.modules) = with_added_modules(args.profile, args.modules.clone(), &add);
    spec.compression = args.compress;
    spec.sysfs = root.join("sys");
    let etc = root.join("etc/hninit");
    if let Ok(rd) = fs::read_dir(etc.join("trusted.d")) {
        let mut keys: Vec<PathBuf> =
            rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pub")).collect();
        keys.sort();
        spec.trust_keys = keys;
    }
    if let Ok(rd) = fs::read_dir(etc.join("revoked.d")) {
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        ids.sort();
        spec.revoke_keys = ids;
    }
    Ok(spec)
}

/// Runs the kernel hooks' update on `root`.
pub fn update(root: &Path, exclude: Option<&str>, args: &ModuleArgs) -> Result<UpdateReport> {
    let fs_ = RealBootFs(root.to_path_buf());
    bootpair::update(&fs_, exclude, &|release| Ok(build_initramfs_data(&spec_for(root, release, args)?)?.0))
}

/// Runs one `hnctl initramfs` command; returns the text to print.
pub fn run(cmd: &InitramfsCmd) -> Result<String> {
    match cmd {
        InitramfsCmd::Build { kernel_release, modules_dir, trust_keys, modules, out } => {
            let mut spec = InitramfsSpec::new(
                &modules.init,
                kernel_release,
                &modules_dir.clone().unwrap_or_else(|| Path::new("/lib/modules").join(kernel_release)),
            );
            (spec.profile, spec.modules) = with_added_modules(modules.profile, modules.modules.clone(), &modules.add_modules);
            spec.compression = modules.compress;
            spec.trust_keys = trust_keys.clone();
            let rep = build_initramfs(&spec, out)?;
            Ok(format!(
                "{}: {} modules, {} bytes ({} uncompressed)\n",
                out.display(),
                rep.modules.len(),
                rep.compressed_size,
                rep.uncompressed_size
            ))
        }
        InitramfsCmd::Update { root, exclude, modules } => {
            let r = update(root, exclude.as_deref(), modules)
                .with_context(|| format!("updating the boot pair in {}", root.join("boot").display()))?;
            let mut s = String::new();
            if r.adopted {
                s.push_str("the previous /boot/kernel and /boot/initramfs kept as a pair\n");
            }
            if r.switched {
                s.push_str(&format!("/boot/kernel, /boot/initramfs: {} (boot/hninit.d/{})\n", r.release, r.pair));
            } else {
                s.push_str(&format!("/boot/kernel, /boot/initramfs: {} already (unchanged)\n", r.release));
            }
            if !r.removed.is_empty() {
                s.push_str(&format!("removed boot/hninit.d/{}\n", r.removed.join(", boot/hninit.d/")));
            }
            Ok(s)
        }
    }
}

/// `hnctl install`.
#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// The whole disk (/dev/sdX) or a disk image file (made if missing): erased
    #[arg(long, value_name = "DEV|FILE", required_unless_present = "esp", conflicts_with_all = ["esp", "hostpart_dev"])]
    pub disk: Option<PathBuf>,
    /// An existing FAT EFI system partition (or a file standing for one): GRUB
    /// and the menu added, other files kept (no repartitioning)
    #[arg(long, value_name = "DEV|FILE", requires = "hostpart_dev")]
    pub esp: Option<PathBuf>,
    /// With --esp: the existing partition (or file) made the host partition
    /// (mkfs, label hostpart). Not --hostpart: that global option names the
    /// mounted host partition of a running system
    #[arg(long, value_name = "DEV|FILE", requires = "esp")]
    pub hostpart_dev: Option<PathBuf>,
    /// The root filesystem image to boot, staged as hn-root.img
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// Filesystem of the host partition
    #[arg(long, value_enum, default_value_t = super::disk::HostFs::Ext4)]
    pub hostpart_fs: super::disk::HostFs,
    /// Size of a disk image file to make, MiB [default: the image plus headroom]
    #[arg(long, value_name = "MIB")]
    pub size: Option<u64>,
    /// Kernel command line of the menu entries (after real_root= and loopdev_hostpart=)
    #[arg(long, default_value = "console=tty0 console=ttyS0 rw")]
    pub cmdline: String,
    /// Erase a disk or host partition that holds data; replace another
    /// system's EFI/BOOT/BOOTX64.EFI (kept as BOOTX64.EFI.before-hninit)
    #[arg(long)]
    pub yes: bool,
    /// With --disk: also boot under legacy BIOS (SeaBIOS, older servers): GRUB
    /// for i386-pc in a BIOS boot partition and the MBR, the same menu and counter
    #[arg(long, conflicts_with = "esp")]
    pub bios: bool,
}

/// Runs `hnctl install`; returns the text to print. A refusal is a
/// [`super::install::Refused`] in the chain.
pub fn install(a: &InstallArgs) -> Result<String> {
    if a.hostpart_fs == super::disk::HostFs::Xfs {
        return Err(super::install::Refused("--hostpart-fs xfs: the host partition is ext4 or btrfs".into()).into());
    }
    if let (Some(esp), Some(hostpart)) = (&a.esp, &a.hostpart_dev) {
        let r = super::partitions::install_parts(&super::partitions::PartsSpec {
            esp: esp.clone(),
            hostpart: hostpart.clone(),
            image: a.image.clone(),
            hostpart_fs: a.hostpart_fs,
            yes: a.yes,
            cmdline: a.cmdline.clone(),
        })?;
        let mut s = format!("{}: GRUB at EFI/BOOT/BOOTX64.EFI and EFI/hninit/grubx64.efi, the menu and grubenv in EFI/hninit/\n", esp.display());
        if r.saved_foreign {
            s.push_str("  the previous EFI/BOOT/BOOTX64.EFI kept as EFI/BOOT/BOOTX64.EFI.before-hninit\n");
        }
        s.push_str(&format!(
            "{}: {} label hostpart, {} MiB\n  hn-root.img: {}\n",
            hostpart.display(),
            a.hostpart_fs.name(),
            r.hostpart_mib,
            a.image.display()
        ));
        return Ok(s);
    }
    let disk = a.disk.clone().context("--disk or --esp with --hostpart-dev")?;
    let spec = super::install::InstallSpec {
        disk: disk.clone(),
        image: a.image.clone(),
        hostpart_fs: a.hostpart_fs,
        size_mib: a.size,
        yes: a.yes,
        cmdline: a.cmdline.clone(),
        bios: a.bios,
    };
    let done = super::install::install(&spec)?;
    let layout = &done.layout;
    let mut s = format!("{}: GPT, {} bytes\n", disk.display(), layout.size_bytes);
    for p in &layout.partitions {
        s.push_str(&format!(
            "  partition {}: {} {} MiB, {} label {} UUID {}\n",
            p.number,
            p.partlabel,
            p.size_bytes >> 20,
            p.fs_type,
            p.fs_label,
            p.fs_uuid
        ));
    }
    if let Some(b) = &done.bios {
        s.push_str(&format!("  partition {}: BIOS-BOOT (EF02), GRUB i386-pc core.img {} bytes; boot.img in the MBR\n", b.partition, b.core_bytes));
    }
    s.push_str(&format!("  hn-root.img: {}\n", a.image.display()));
    Ok(s)
}

/// `hnctl image`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ImageCmd {
    /// Make an hninit image from a root tree (/, a chroot, a mounted backup):
    /// copied without other filesystems, generalized, /boot/kernel and
    /// /boot/initramfs set, ext4 sized to the content plus --headroom
    Create {
        /// The root tree
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The image file to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Free space in the image, MiB
        #[arg(long, value_name = "MIB", default_value_t = 512)]
        headroom: u64,
        #[command(flatten)]
        modules: ModuleArgs,
    },
    /// Build pvgrub2 for Xen guests (PV: x86_64-xen, PVH: i386-xen_pvh) with
    /// grub-xen-bin: it finds /EFI/hninit/grub.cfg and runs the same menu
    GrubXen {
        /// Directory for pvgrub2-x86_64-xen.bin and pvgrub2-i386-xen_pvh.bin
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Runs `hnctl image`; returns the text to print.
fn grub_xen(out: &Path) -> Result<String> {
    let imgs = super::xen::build_pvgrub2(out)?;
    Ok(imgs.iter().map(|p| format!("{}\n", p.display())).collect())
}

/// Runs `hnctl image`; returns the text to print.
pub fn image(cmd: &ImageCmd) -> Result<String> {
    match cmd {
        ImageCmd::GrubXen { out } => grub_xen(out).context("hnctl image grub-xen"),
        ImageCmd::Create { from, out, headroom, modules } => {
            let r = super::create::create(&super::create::CreateSpec {
                from: from.clone(),
                out: out.clone(),
                headroom_mib: *headroom,
                modules: modules.clone(),
            })
            .with_context(|| format!("making an image of {}", from.display()))?;
            Ok(format!(
                "{}: ext4 {} MiB ({} MiB of files), kernel {}\n",
                out.display(),
                r.size_mib,
                r.content_mib,
                r.release
            ))
        }
    }
}
