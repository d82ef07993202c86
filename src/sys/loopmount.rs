//! One way to mount an image file: probe its filesystem (unless the type is
//! given), load that filesystem's module, attach the file to a loop device and
//! mount it. Step 6's trial mount, step 7's look at the next kernel and step 8's
//! root all go through [`mount_image_file`], so they agree on what an image is.

use crate::error::BootError;
use crate::modules::drivers::Drivers;
use crate::sys::{loopdev, mounts, probe};
use rustix::mount::MountFlags;
use std::fmt;
use std::path::{Path, PathBuf};

/// How to mount an image file.
pub struct Request<'a> {
    /// The filesystem type; probed from the image when `None`.
    pub fstype: Option<&'a str>,
    /// Mount options (`rootflags=`).
    pub options: &'a mounts::MountOptions,
    /// Mount flags (e.g. read-only).
    pub flags: MountFlags,
    /// Attach a read-only loop device (nothing can write through it).
    pub read_only_device: bool,
}

/// A mounted image: the device holds the file until the mount goes (autoclear).
#[derive(Debug)]
pub struct Mounted {
    pub loop_device: PathBuf,
    pub fstype: String,
}

#[derive(Debug)]
pub enum Error {
    /// The probe found no filesystem hninit knows in the image's first bytes.
    NoFilesystem { probed: usize },
    /// The image could not be read for the probe.
    Read(std::io::Error),
    /// Attaching or mounting failed (the error names the call).
    Sys(BootError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoFilesystem { probed } => write!(f, "no filesystem recognised in its first {probed} bytes"),
            Error::Read(e) => write!(f, "cannot read it: {e}"),
            Error::Sys(e) => write!(f, "{e}"),
        }
    }
}

/// The filesystem type to mount `image` with: probed (swap is not a root).
pub fn probe_fstype(image: &Path) -> Result<&'static str, Error> {
    match probe::probe_path(image) {
        Ok(Some(sb)) if sb.fstype != probe::FsType::Swap => Ok(sb.fstype.mount_type()),
        Ok(_) => Err(Error::NoFilesystem { probed: probe::PROBE_LEN }),
        Err(e) => Err(Error::Read(e)),
    }
}

/// Probes (unless told the type), loads the filesystem module, attaches `image`
/// to a loop device and mounts it at `target`.
pub fn mount_image_file(image: &Path, target: &Path, req: &Request, drivers: &Drivers) -> Result<Mounted, Error> {
    let fstype = match req.fstype {
        Some(t) => t.to_string(),
        None => probe_fstype(image)?.to_string(),
    };
    drivers.load_for_fs(&fstype);
    let dev = loopdev::attach(image, req.read_only_device).map_err(Error::Sys)?;
    debug!(
        "{} attached to {} ({})",
        image.display(),
        dev.path.display(),
        if req.read_only_device { "read-only" } else { "read-write" }
    );
    mounts::mount_fs(&dev.path, target, &fstype, req.options, req.flags).map_err(Error::Sys)?;
    // The mount holds the device now; autoclear detaches it at unmount.
    Ok(Mounted { loop_device: dev.path.clone(), fstype })
}
