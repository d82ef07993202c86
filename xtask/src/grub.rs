//! GRUB (menu template, standalone EFI image, BIOS core.img), now in the
//! product: see `hninit::image::grub`.

pub use hninit::image::grub::*;
