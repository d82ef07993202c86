//! The initramfs builder, now in the product (`hninit::image`, also behind
//! `hnctl initramfs`): re-exported here so that `cargo xtask` and `hnctl`
//! build byte-identical archives from one copy of the code.

pub use hninit::image::cpio::{compress, Archive, Node};
pub use hninit::image::initramfs::*;
pub use hninit::image::keys::{trust_files, InitramfsKeys, TrustFiles};
