//! Building what a machine boots (host only, cargo feature `image`; `/init`
//! never links it): the initramfs, from a kernel's module tree and the static
//! `/init`. `hnctl initramfs` and `cargo xtask` both call this code.
//!
//! - [`profile`]: the module sets of `initramfs/profiles/` and the `host`
//!   profile's sysfs walk.
//! - [`initramfs`]: the module closure and the archive's layout.
//! - [`cpio`]: the deterministic newc writer and the compression.
//! - [`keys`]: the trusted/revoked key files put in `/etc/hninit/`.
//! - [`kmod`]: module files read plain (Debian's `.ko.xz`), atomic writes.
//! - [`bootpair`]: `/boot/kernel` + `/boot/initramfs` switched atomically to
//!   the newest kernel (the kernel hooks).
//! - [`cli`]: `hnctl initramfs build|update`.
//! - [`disk`], [`grub`]: GPT disks without root (ESP with GRUB and the menu,
//!   host partition), the GRUB images and menu (`hnctl install`, `cargo xtask disk`).
//! - [`biosboot`]: GRUB for BIOS (i386-pc) added to such a disk: a BIOS boot
//!   partition and the MBR (`hnctl install --bios`, `cargo xtask run --bios`).
//! - [`create`]: `hnctl image create --from DIR`: an image from a root tree.
//! - [`generalize`]: a root tree made host-neutral (factory, `hnctl image create`).
//! - [`install`]: `hnctl install`: the refusals, then the disk.
//! - [`partitions`]: `hnctl install --esp --hostpart-dev`: existing partitions.
//! - [`xen`]: pvgrub2 (Xen PV and PVH GRUB) finding the same menu.
//! - [`tools`]: running external programs, atomic writes, sparse copies, UUIDs.
//!
//! Errors are `anyhow` chains: every step adds what it was doing; the callers
//! (`hnctl`, `xtask`) print them and exit non-zero.

pub mod biosboot;
pub mod bootpair;
pub mod cli;
pub mod cpio;
pub mod create;
pub mod disk;
pub mod generalize;
pub mod grub;
pub mod initramfs;
pub mod install;
pub mod keys;
pub mod kmod;
pub mod partitions;
pub mod profile;
pub mod tools;
pub mod xen;
