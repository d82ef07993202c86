//! The host configuration: where it comes from (`source`: `hn.config=`, the Gandi
//! swap device, `hn-state/host.json`, the last applied copy), the strict JSON
//! reader and its rules (`parse`), the validated model (`model`) and the tar
//! reader for the swap device's archive (`tar`), and which sources are trusted
//! (`trust`, the table of docs/config.md). It reads devices and the host
//! partition through `sys` and `slots::dir`; it writes nothing into an image.

pub mod model;
pub mod parse;
pub mod source;
pub mod tar;
pub mod trust;
