//! The host configuration: where it comes from (`source`: `hn.config=`, the Gandi
//! swap device, `hn-state/host.json`, the last applied copy), the strict JSON
//! reader (`json`), the document readers (`read`), the rules (`rules`), their
//! errors (`error`), chained by `parse`, the validated model (`model`) and the tar
//! reader for the swap device's archive (`tar`), and which sources are trusted
//! (`trust`, the table of docs/config.md), the ssh public key rule (`sshkey`), and the booted system's platform
//! settings with the image-wide defaults file (`platform`). It reads devices and the host
//! partition through `sys` and `slots::dir`; it writes nothing into an image.

pub mod error;
pub mod json;
pub mod model;
pub mod parse;
pub mod platform;
pub mod read;
pub mod rules;
pub mod source;
pub mod sshkey;
pub mod tar;
pub mod trust;
