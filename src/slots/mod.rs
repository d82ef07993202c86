//! The image slots on the host partition and everything that changes them:
//! the rotation state machine (`rotation`, re-exported here), the narrow `Dir`
//! trait it runs over and its real implementation (`dir`) with the copy engine
//! (`copy`), staging from the running system (`stage`), the bounded boot log
//! (`bootlog`), and GRUB's trial counter on the ESP (`esp`, `grubenv`).
//! It uses `sys` for devices and mounts; it knows nothing of configs or images'
//! contents.

pub mod bootlog;
pub mod copy;
pub mod dir;
pub mod esp;
pub mod grubenv;
pub mod rotation;
pub mod stage;
pub mod trust_state;

pub use rotation::*;
