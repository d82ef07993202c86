//! hninit developer tasks as a library: fetch a kernel, build the init, the
//! initramfs, root images and GPT disks, and QEMU command lines. The `xtask`
//! binary is a CLI over this; the `qemu-tests` crate uses it to make disks.

pub mod bench;
pub mod console;
pub mod deb;
pub mod demo;
pub mod deps;
pub mod disk;
pub mod factory;
pub mod grub;
pub mod initbin;
pub mod initramfs;
pub mod kernel;
pub mod paths;
pub mod profile;
pub mod qemu;
pub mod rootfs;
pub mod signing;
pub mod swapdisk;
pub mod util;

pub use hninit::image::biosboot::{install_bios_grub, BiosBoot};
pub use demo::{build_demo_disk, DemoArtifacts, DemoOptions, DEMO_BASE_CMDLINE};
pub use deps::ensure_host_packages;
pub use factory::{build_image, default_mirror, ImageReport, ImageSpec};
pub use disk::{
    build_disk, DiskLayout, DiskSpec, EspSpec, HostFs, HostpartSpec, PartRole, PartitionInfo,
};
pub use grub::{grub_efi, render_grub_cfg, GrubVars, GRUB_CFG_TEMPLATE};
pub use initbin::{build_init, build_workspace_bin};
pub use initramfs::{build_initramfs, Compression, InitramfsReport, InitramfsSpec};
pub use kernel::{debian_kernel, debian_kernel_of, debian_kernel_refresh, kernel_from_dir, Kernel};
pub use paths::{build_dir, cache_dir, workspace_root};
pub use profile::Profile;
pub use qemu::{
    fresh_ovmf_vars, qemu_base_args, qemu_command, Boot, DiskIf, Drive, QemuSpec, Serial,
};
pub use rootfs::{build_root_image, RootImageSpec, INIT_SCRIPT};
pub use swapdisk::{gandi_swap_disk, inspect_swap_disk, SwapDisk, SwapDiskState};
