//! Trust in images: who may make the next root. This module owns the minisign
//! formats (public key files and `.minisig` signatures, parsed strictly with
//! bounded sizes), the verification of a signature over an image's bytes in one
//! streaming pass (prehashed `ED` and legacy `Ed`) and of the signed trusted
//! comment, the image metadata carried by that comment (`version=`, `compat=`,
//! `size=`, other keys kept), the key store (`trusted.d/*.pub` and
//! `revoked.d/<keyid>` under an etc directory such as `/etc/hninit`, read with the
//! boot's safe-read rules) and the pure acceptance policy (keys, revocations,
//! compat, the anti-rollback floor and a one-shot downgrade allowance → a verdict
//! with a named reason). No syscalls outside `keystore` and `stream`; everything
//! here is usable by `/init` and by `hnctl` alike.

pub mod base64;
pub mod comment;
pub mod keystore;
pub mod minisign;
pub mod policy;
pub mod stream;
pub mod verify_cmd;

pub use comment::{Meta, Version};
pub use keystore::KeyStore;
pub use minisign::{KeyId, PublicKey, Signature};
pub use policy::{Allowance, Context, Reject, Verdict};

/// The signature sidecar of image `X` is `X` followed by this suffix.
pub const SIG_SUFFIX: &str = ".minisig";
