//! The booted system's platform duties (the Gandi VM agent's second half): data
//! disks mounted under `/srv`, the swap disk, CPU and memory hot-add. The
//! decisions are pure functions here; `hnctl` runs them for the systemd units
//! the images ship (udev only tags devices).

pub mod datadisk;
