//! The demo disk pipeline used by `cargo xtask disk` and `cargo xtask run`:
//! Debian kernel + hninit initramfs (with busybox) → root image `hn-root.img`
//! (image id `demo`) → GPT disk with GRUB on the ESP and the host partition
//! (and, with `bios`, GRUB for i386-pc in a BIOS boot partition).

use crate::disk::{build_disk, DiskLayout, DiskSpec, EspSpec, HostFs, HostpartSpec};
use crate::grub::{normalize_image_dir, GrubVars};
use crate::initramfs::{build_initramfs, InitramfsReport, InitramfsSpec};
use crate::kernel::{debian_kernel, Kernel};
use crate::paths::build_dir;
use crate::rootfs::{build_root_image, RootImageSpec};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Kernel command line every demo boot starts with (`panic=-1` lets QEMU,
/// run with `-no-reboot`, exit instead of hanging on a panic).
pub const DEMO_BASE_CMDLINE: &str = "console=ttyS0 rw panic=-1";

/// Knobs of the demo disk.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub hostpart_fs: HostFs,
    /// `""` (partition root) or e.g. `/images`.
    pub image_dir: String,
    /// Appended to [`DEMO_BASE_CMDLINE`].
    pub cmdline_extra: String,
    /// GRUB menu timeout.
    pub timeout: u32,
    /// The init binary; `None` builds it.
    pub init: Option<PathBuf>,
    /// Also put GRUB for BIOS (i386-pc) on the disk: a BIOS boot partition
    /// and the MBR, running the same menu and grubenv as the EFI GRUB.
    pub bios: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            hostpart_fs: HostFs::Ext4,
            image_dir: String::new(),
            cmdline_extra: String::new(),
            timeout: 1,
            init: None,
            bios: false,
        }
    }
}

/// What the demo pipeline produced.
#[derive(Debug, Clone)]
pub struct DemoArtifacts {
    pub kernel: Kernel,
    pub init: PathBuf,
    pub initramfs: PathBuf,
    pub initramfs_report: InitramfsReport,
    pub root_image: PathBuf,
    pub disk: PathBuf,
    pub layout: DiskLayout,
    /// GRUB's `@CMDLINE@` (without `real_root=`/`loopdev_hostpart=`).
    pub cmdline: String,
    /// The full command line for a direct `-kernel` boot of the same disk.
    pub direct_cmdline: String,
}

fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    let r = f()?;
    eprintln!("xtask: {what} ({:.1} s)", t.elapsed().as_secs_f64());
    Ok(r)
}

/// Builds the demo disk into `out` (intermediate files in `build_dir()/demo`).
pub fn build_demo_disk(opts: &DemoOptions, out: &Path) -> Result<DemoArtifacts> {
    let dir = build_dir().join("demo");
    std::fs::create_dir_all(&dir)?;
    let init = match &opts.init {
        Some(p) => p.clone(),
        None => step("built init", crate::build_init)?,
    };
    let kernel = step("Debian kernel ready", debian_kernel)?;
    let initramfs = dir.join("initramfs.cpio.zst");
    let mut ispec = InitramfsSpec::new(&init, &kernel.release, &kernel.modules_dir);
    ispec.busybox = Some(PathBuf::from("/bin/busybox"));
    let initramfs_report = step("built initramfs", || build_initramfs(&ispec, &initramfs))?;
    let root_image = dir.join("hn-root.img");
    let rspec = RootImageSpec {
        kernel: Some((kernel.vmlinuz.clone(), initramfs.clone())),
        image_id: "demo".into(),
        ..Default::default()
    };
    step("built root image", || build_root_image(&rspec, &root_image))?;

    let image_dir = normalize_image_dir(&opts.image_dir);
    let cmdline = format!("{DEMO_BASE_CMDLINE} {}", opts.cmdline_extra)
        .trim()
        .to_string();
    let vars = GrubVars {
        timeout: opts.timeout,
        hostpart_label: "hostpart".into(),
        image_dir: image_dir.clone(),
        cmdline: cmdline.clone(),
    };
    let spec = DiskSpec {
        esp: Some(EspSpec {
            grub_cfg: vars.render(),
            grubenv: None,
        }),
        hostpart: HostpartSpec {
            fs: opts.hostpart_fs,
            files: vec![(format!("{image_dir}/hn-root.img"), root_image.clone())],
            dirs: vec!["data".into(), "hn-state".into()],
            ..Default::default()
        },
        extra_hostparts: Vec::new(),
    };
    let layout = step("built disk", || build_disk(&spec, out))?;
    if opts.bios {
        step("installed GRUB for BIOS", || hninit::image::biosboot::install_bios_grub(out))?;
    }
    let direct_cmdline =
        format!("real_root={image_dir}/hn-root.img loopdev_hostpart=LABEL=hostpart {cmdline}");
    Ok(DemoArtifacts {
        kernel,
        init,
        initramfs,
        initramfs_report,
        root_image,
        disk: out.to_path_buf(),
        layout,
        cmdline,
        direct_cmdline,
    })
}
