//! Thin wrappers over the kernel: mounts, loop devices, the shared loop-mount
//! helper, block devices and uevents, the superblock probe, partition tables and
//! the host partition's device spec. Nothing here decides what the boot does; it
//! may use `modules` (to load a driver for what appears), never slots, config,
//! first boot or the boot steps.

pub mod devices;
pub mod devspec;
pub mod loopdev;
pub mod loopmount;
pub mod mounts;
pub mod partition;
pub mod probe;
pub mod saferead;
