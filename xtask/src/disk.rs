//! GPT disk images without root, now in the product (`hninit::image::disk`,
//! behind `hnctl install`): re-exported for `cargo xtask disk`, the demo and the
//! QEMU scenarios.

pub use hninit::image::disk::*;
