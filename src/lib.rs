//! hninit: the PID 1 of an initramfs that boots a root filesystem image file
//! (`hn-root.img`) kept on a host partition. The library holds every part of the
//! boot so that the pure parts (command line, superblock probe, module index, slot
//! rotation, config → files) are testable on the host; `src/bin/init.rs` and
//! `src/bin/hnctl.rs` are thin.
//!
//! The folders stack one way; a module may use those below it, never those above
//! (`tests/layout.rs` fails on an import circle or an upward import):
//!
//! | layer | modules | owns |
//! |---|---|---|
//! | operator | `ctl`, `runtime/`, `image/` | `hnctl`'s commands on a host partition; the booted system's platform duties; building initramfs (host only) |
//! | boot | `boot/` | the ten steps, failure policy, shutdown |
//! | | `cmdline` | the kernel command line, parsed once in step 2 |
//! | first boot | `firstboot/` | config → files in the new root |
//! | config | `config/` | config sources, the strict JSON reader, the tar reader |
//! | slots | `slots/` | rotation, the `Dir` trait, staging, boot log, ESP counter |
//! | trust | `trust/` | minisign keys and signatures, the key store, the acceptance policy |
//! | system | `sys/` | syscall wrappers: mounts, loop devices, devices, probe, partition tables |
//! | modules | `modules/` | module index, loader, modprobe helper |
//! | base | `log`, `error`, `util`, `layout` | logging, error values, names on disk |

#[macro_use]
pub mod log;
pub mod error;
pub mod layout;
pub mod util;

pub mod modules;
pub mod sys;
pub mod trust;
pub mod slots;
pub mod config;
pub mod firstboot;
pub mod cmdline;
pub mod boot;
pub mod ctl;
pub mod runtime;
#[cfg(feature = "remote")]
pub mod remote;
#[cfg(feature = "image")]
pub mod image;
