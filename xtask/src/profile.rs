//! Initramfs module profiles, now in the product: see `hninit::image::profile`.

pub use hninit::image::profile::*;
