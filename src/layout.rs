//! Every name hninit agrees on with the disk, the initramfs and the booted
//! system, in one place: mount points of the boot, the runtime directory, the
//! host partition's state directory and its files. Other modules refer to these
//! constants instead of spelling the names again.

// ---- Mount points and runtime paths of the initramfs ------------------------------

/// Where step 5 mounts the host partition (moved into the new root at step 10).
pub const HOSTPART: &str = "/hostpart";
/// Where step 8 mounts the chosen image.
pub const NEWROOT: &str = "/newroot";
/// hninit's runtime directory (on /run, moved into the new root).
pub const RUN_DIR: &str = "/run/hninit";
/// The host partition in the booted system when the image has no `/hostpart`.
pub const RUN_HOSTPART: &str = "/run/hninit/hostpart";
/// Step 6's read-only trial mount of a staged image.
pub const TRIAL_MOUNT: &str = "/run/hninit/trial";
/// Step 7's read-only mount of the rotated image, to look at its kernel.
pub const NEXT_MOUNT: &str = "/run/hninit/next";
/// Where the ESP is mounted to update GRUB's trial counter.
pub const ESP_MOUNT: &str = "/run/hninit/esp";
/// Modules the kernel asked `/sbin/modprobe` for that the initramfs lacks.
pub const MODPROBE_MISSING: &str = "/run/hninit/modprobe-missing";
/// systemd's shutdown handover directory: our `shutdown` program goes there.
pub const SHUTDOWN_DIR: &str = "/run/initramfs";
/// Where the host partition is mounted in the booted system, first choice first.
pub const HOSTPART_CANDIDATES: [&str; 2] = [HOSTPART, RUN_HOSTPART];

// ---- The initramfs's own files ------------------------------------------------------

/// Modules loaded before anything else (one name per line).
pub const MODULES_FORCE: &str = "/etc/hninit/modules.force";

// ---- The host partition ---------------------------------------------------------------

/// Host state directory, relative to the host partition's root.
pub const STATE_DIR: &str = "hn-state";
/// The host identity (ssh host keys, machine-id), relative to the host partition.
pub const IDENTITY_DIR: &str = "hn-state/identity";
/// Bare-metal host configuration, relative to the host partition.
pub const HOST_JSON: &str = "hn-state/host.json";
/// The last configuration applied, relative to the host partition.
pub const LAST_APPLIED: &str = "hn-state/config.json";
/// Trial (boot counting) state, inside [`STATE_DIR`].
pub const TRIAL: &str = "trial.json";
/// The bounded boot log, inside [`STATE_DIR`].
pub const BOOT_LOG: &str = "boot.log";

/// `vm_conf.run` done-markers, one empty file per configuration digest, relative
/// to the host partition: the command runs once per host (not once per image)
/// and again only when the configuration changes. Written by the run-once unit
/// in the booted system (where the host partition is one of
/// [`HOSTPART_CANDIDATES`]).
pub const RUN_DONE_DIR: &str = "hn-state/run-done";

// ---- Inside an image --------------------------------------------------------------------

/// The first-boot marker inside the new root.
pub const INSTANCE_MARKER: &str = "/etc/hninit/instance.json";
