//! The booted system's platform duties (the Gandi VM agent's second half): data
//! disks mounted under `/srv`, the swap disk, CPU and memory hot-add, the sshd
//! policy. The decisions are pure functions here (`datadisk`, `swap`,
//! `settings`, `disks::to_disks`); `agent` runs them for `hnctl platform …`,
//! which the units of `shipped` call (udev only tags devices).

pub mod agent;
pub mod datadisk;
pub mod disks;
pub mod hotplug;
pub mod settings;
pub mod shipped;
pub mod swap;
