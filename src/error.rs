//! The boot's error values. Every variant says what was tried and what was found;
//! `failure` turns them into console messages and the `hn.on_error` policy.

use std::io;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A system call failed; `what` names the call and its arguments.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("host partition {spec} not found after waiting {waited:.1?}")]
    HostpartNotFound { spec: String, waited: Duration },
    #[error("host partition {spec} is ambiguous: {} all match; name it by UUID= or PARTUUID= instead", devices.join(" and "))]
    HostpartAmbiguous { spec: String, devices: Vec<String> },
    #[error("host partition {dev} has no filesystem hninit recognises (ext2/3/4, btrfs, xfs, vfat)")]
    HostpartUnknownFs { dev: String },
    #[error("{dev} holds {fstype}, which this kernel cannot mount: it is not built in and this initramfs has no {fstype} module (add it: cargo xtask initramfs --add-module {fstype}; initramfs/profiles/ lists the module sets)")]
    FsUnsupported { dev: String, fstype: String },
    #[error("image {path} not found on the host partition {dev}")]
    ImageMissing { path: String, dev: String },
    #[error("image {path}: {reason}")]
    ImageBad { path: String, reason: String },
    /// Step 9's typed error (`boot::step9_firstboot::Step9Error`: source,
    /// state directory, identity, render, apply), boxed because this base
    /// layer may not name the layers above it; `downcast_ref` recovers it.
    #[error("first boot: {0}")]
    FirstBoot(Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("init {init} in image {image} cannot be started: {reason}")]
    InitNotExecutable {
        init: String,
        image: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, BootError>;

/// Wraps an error from a system call with a description of the call.
pub fn sys<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> BootError {
    let what = what.into();
    move |e| BootError::Sys {
        what,
        source: e.into(),
    }
}
