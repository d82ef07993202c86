//! hninit: the PID 1 of an initramfs that boots a root filesystem image file
//! (`hn-root.img`) kept on a host partition. The library holds every part of the
//! boot so that the pure parts (command line, superblock probe, module index) are
//! testable on the host; `src/bin/init.rs` and `src/bin/hnctl.rs` are thin.

#[macro_use]
pub mod log;
pub mod boot;
pub mod bootlog;
pub mod accounts;
pub mod cmdline;
pub mod configparse;
pub mod configsource;
pub mod ctl;
pub mod devices;
pub mod devspec;
pub mod drivers;
pub mod error;
pub mod esp;
pub mod failure;
pub mod firstboot;
pub mod grubenv;
pub mod handoff;
pub mod identity;
pub mod instantiate;
pub mod hostconfig;
pub mod kexec;
pub mod hostdir;
pub mod loopdev;
pub mod modindex;
pub mod modload;
pub mod modprobe;
pub mod mounts;
pub mod partition;
pub mod probe;
pub mod render;
pub mod rootwriter;
pub mod rootfs;
pub mod select;
pub mod shutdown;
pub mod shutdown_plan;
pub mod slots;
pub mod stage;
pub mod ustar;
pub mod util;
