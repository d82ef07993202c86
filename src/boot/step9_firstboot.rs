//! Step 9 at boot: find the host configuration (`configsource`), and when the
//! image is not yet instantiated for it, make the new root writable for the
//! time of `firstboot::instantiate`, remember the config in `hn-state/` (so every
//! later image becomes the same host), and wipe the secrets from the swap device.

use crate::cmdline::RootMode;
use crate::config::source::{self as configsource, Origin};
use crate::sys::devspec::BlockDev;
use crate::modules::drivers::Drivers;
use crate::error::{BootError, Result};
use crate::config::source::SourceError;
use crate::firstboot::{self, FirstbootError, Options};
use crate::boot::step8_rootfs::{self as rootfs, MountedRoot, RootOptions, NEWROOT};
use rustix::mount::{mount_remount, MountFlags};
use std::path::Path;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Why step 9 failed, typed (the console line is `first boot: ` and its text).
///
/// `Debug` is the `Display` text and the causes are not chained as `source()`:
/// either would link the derived `Debug` of every error type below into
/// /init (about 11 KB), for text nobody reads.
#[derive(thiserror::Error)]
pub enum Step9Error {
    /// Finding or reading the configuration (a refused configuration is
    /// `SourceError::Config`, with its JSON path).
    #[error("{0}")]
    Source(SourceError),
    #[error("opening {path}/hn-state/identity: {error}")]
    StateDir { path: String, error: std::io::Error },
    #[error("opening hn-state: {0}")]
    HnState(std::io::Error),
    /// Identity, detection/planning (render) or writing (apply).
    #[error("{0}")]
    Instantiate(FirstbootError),
}

impl std::fmt::Debug for Step9Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl From<SourceError> for Step9Error {
    fn from(e: SourceError) -> Self {
        Step9Error::Source(e)
    }
}

impl From<FirstbootError> for Step9Error {
    fn from(e: FirstbootError) -> Self {
        Step9Error::Instantiate(e)
    }
}

impl From<Step9Error> for BootError {
    fn from(e: Step9Error) -> Self {
        BootError::FirstBoot(Box::new(e))
    }
}

/// What step 9 takes from the command line.
pub struct Args<'a> {
    /// `hn.config=`.
    pub config: Option<&'a str>,
    /// `hn.config.keep`: leave the configuration on its device.
    pub keep: bool,
    /// How step 8 mounted the root (to remount or re-attach it writable).
    pub root: RootOptions<'a>,
}

/// Instantiates the mounted new root if a configuration applies. `root` is
/// replaced when the image had to be re-attached writable (`ro`).
pub fn first_boot(args: &Args, hostpart: &Path, devs: &[BlockDev], drivers: &Drivers, root: &mut MountedRoot) -> Result<()> {
    let found = configsource::find_config(args.config, devs, hostpart).map_err(Step9Error::from)?;
    let Some(found) = found else {
        info!("first boot: no host configuration (hn.config=, swap device, hn-state/host.json): the image boots as it is");
        return Ok(());
    };
    for w in &found.parsed.warnings {
        warn!("config ({}): {w}", found.source);
    }
    let state = crate::firstboot::identity::open_state_dir(hostpart).map_err(|error| Step9Error::StateDir {
        path: hostpart.display().to_string(),
        error,
    })?;
    let config = &found.parsed.config;
    let digest = &found.parsed.digest;
    let probe = firstboot::instantiate(Path::new(NEWROOT), &state, config, digest, &Options { dry_run: true, now: now() }).map_err(Step9Error::from)?;
    if probe.already_instantiated {
        info!("first boot: already instantiated as {} from {} (identity {})", config.vm_hostname, found.source, probe.identity_id);
    } else {
        let report = with_writable_root(&args.root, root, drivers, || {
            firstboot::instantiate(Path::new(NEWROOT), &state, config, digest, &Options { dry_run: false, now: now() })
        })?
        .map_err(Step9Error::from)?;
        notice!("first boot: instantiated as {} from {}: {}", config.vm_hostname, found.source, report.summary().trim_end().replace('\n', "; "));
        for w in &report.warnings {
            warn!("first boot: {w}");
        }
        // What the operator must act on (a command not scheduled) stays in boot.log.
        let lines: Vec<String> = report.warnings.iter().filter(|w| w.starts_with("vm_conf.run")).map(|w| format!("first boot: {w}")).collect();
        if !lines.is_empty() {
            let logged = crate::slots::dir::RealDir::open(&hostpart.join(crate::layout::STATE_DIR), true)
                .and_then(|d| crate::slots::bootlog::append(&d, &crate::slots::bootlog::now(), &lines, true));
            if let Err(e) = logged {
                warn!("cannot append to boot.log: {e}");
            }
        }
    }
    if found.source.origin != Origin::LastApplied {
        let hn_state = crate::slots::dir::RealDir::open(&hostpart.join(crate::layout::STATE_DIR), true)
            .map_err(Step9Error::HnState)?;
        if let Err(e) = configsource::save_last_applied(&hn_state, &crate::config::parse::canonical_json(config)) {
            warn!("cannot keep the applied configuration in hn-state: {e}");
        }
    }
    if args.keep {
        info!("first boot: hn.config.keep: the configuration stays on {}", found.source.path.display());
    } else {
        match found.source.wipe() {
            Ok(0) => {}
            Ok(n) => info!("first boot: wiped the configuration ({n} bytes) from {}", found.source.path.display()),
            Err(e) => warn!("first boot: could not wipe the configuration: {e}"),
        }
    }
    Ok(())
}

/// Runs `f` with /newroot mounted read-write, then restores the mode asked for.
fn with_writable_root<T>(opts: &RootOptions, root: &mut MountedRoot, drivers: &Drivers, f: impl FnOnce() -> T) -> Result<T> {
    let newroot = Path::new(NEWROOT);
    match opts.mode {
        RootMode::Rw => Ok(f()),
        RootMode::Default => {
            mount_remount(newroot, MountFlags::empty(), "").map_err(crate::error::sys("remount /newroot read-write for the first boot"))?;
            let out = f();
            mount_remount(newroot, MountFlags::RDONLY, "").map_err(crate::error::sys("remount /newroot read-only"))?;
            Ok(out)
        }
        RootMode::Ro => {
            // The loop device itself is read-only: attach the image writable for the
            // instantiation, then again read-only as asked.
            let image = root.image.clone();
            rustix::mount::unmount(newroot, rustix::mount::UnmountFlags::empty()).map_err(crate::error::sys("unmount /newroot"))?;
            let rw = RootOptions { mode: RootMode::Rw, ..*opts };
            let hostpart_dev = String::new();
            rootfs::mount_image(&rw, &image, &hostpart_dev, drivers)?;
            let out = f();
            rustix::mount::unmount(newroot, rustix::mount::UnmountFlags::empty()).map_err(crate::error::sys("unmount /newroot"))?;
            *root = rootfs::mount_image(opts, &image, &hostpart_dev, drivers)?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console line is the one of before (`first boot: ` and the cause),
    /// and the cause stays typed behind it.
    #[test]
    fn errors_stay_typed_and_read_as_before() {
        let e: BootError = Step9Error::StateDir {
            path: "/hostpart".into(),
            error: std::io::Error::from_raw_os_error(30),
        }
        .into();
        assert_eq!(
            e.to_string(),
            format!("first boot: opening /hostpart/hn-state/identity: {}", std::io::Error::from_raw_os_error(30))
        );
        let BootError::FirstBoot(inner) = &e else { panic!("{e:?}") };
        assert!(matches!(inner.downcast_ref::<Step9Error>(), Some(Step9Error::StateDir { .. })));
    }
}
