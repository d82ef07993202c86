//! The files images ship for the platform duties ([`FILES`]: installed by the
//! factory, and by the Debian package once it exists). udev only tags devices
//! (`SYSTEMD_WANTS`); systemd units run `hnctl platform …`, which decides
//! (`datadisk`, `swap`, `hotplug`, `settings`) and mounts with
//! `systemd-mount --automount` (udevd runs sandboxed since systemd 232 and
//! cannot mount). Each part is turned off in the configuration
//! (`hninit.data_disks.enabled`, `swap.enabled`, `hotplug.cpu`/`memory`,
//! `sshd.enabled`, `sshd.management`, `console.enabled`), or by masking its unit.
//! Every unit runs only in a system hninit booted (its host partition moved to
//! `/hostpart`, or `/run/hninit/hostpart`): the Debian package also installs
//! them on the server an image is made from, where they must do nothing.

/// udev: block devices that may be data disks, offline CPUs and memory blocks.
pub const UDEV_RULES: &str = r#"# hninit: tag devices for the platform units; nothing is run from udev.
# Data disks: every added disk or partition (hnctl decides: the host partition,
# the root image's loop device and the swap/config disk are never touched).
ACTION=="add", SUBSYSTEM=="block", KERNEL!="loop*|ram*|zram*|sr*|md*|dm-*|nbd*|fd*", TAG+="systemd", ENV{SYSTEMD_WANTS}+="hninit-disk@%k.service"
# CPU and memory hot-add: only what the kernel left offline. One unit instance
# per device: a start request for a oneshot unit that is already running is
# merged into that run, which may have scanned before this device appeared.
ACTION=="add", SUBSYSTEM=="cpu", ATTR{online}=="0", TAG+="systemd", ENV{SYSTEMD_WANTS}+="hninit-hotplug@%k.service"
ACTION=="add", SUBSYSTEM=="memory", ATTR{state}=="offline", TAG+="systemd", ENV{SYSTEMD_WANTS}+="hninit-hotplug@%k.service"
"#;

pub const DISK_UNIT: &str = "[Unit]
Description=hninit: data disk /dev/%I
ConditionPathIsMountPoint=|/hostpart
ConditionPathIsMountPoint=|/run/hninit/hostpart
Documentation=file:///usr/share/doc/hninit/config.md
BindsTo=dev-%i.device
After=dev-%i.device local-fs.target systemd-udev-settle.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/hnctl platform disk %I
";

pub const HOTPLUG_UNIT: &str = "[Unit]
Description=hninit: bring hot-added CPUs and memory online (%I)
ConditionPathIsMountPoint=|/hostpart
ConditionPathIsMountPoint=|/run/hninit/hostpart
DefaultDependencies=no
After=systemd-udevd.service

[Service]
Type=oneshot
ExecStart=/usr/sbin/hnctl platform hotplug
";

// Not ordered before swap.target: with default dependencies (after
// sysinit.target) that is an ordering cycle, and systemd drops swap.target.
pub const SWAP_UNIT: &str = "[Unit]
Description=hninit: the swap/config disk as swap (after its configuration archive is wiped)
ConditionPathIsMountPoint=|/hostpart
ConditionPathIsMountPoint=|/run/hninit/hostpart
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/hnctl platform swap

[Install]
WantedBy=multi-user.target
";

pub const SSHD_UNIT: &str = "[Unit]
Description=hninit: sshd policy drop-in (hninit.sshd)
ConditionPathIsMountPoint=|/hostpart
ConditionPathIsMountPoint=|/run/hninit/hostpart
Before=ssh.service sshd.service
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/hnctl platform sshd

[Install]
WantedBy=multi-user.target
";

// After getty.target's own prompts; started at each boot (the consoles can
// change between boots: a Xen PV guest has hvc0, an HVM one ttyS0).
pub const CONSOLE_UNIT: &str = "[Unit]
Description=hninit: login prompt on the hosting emergency console (hninit.console)
ConditionPathIsMountPoint=|/hostpart
ConditionPathIsMountPoint=|/run/hninit/hostpart
After=systemd-user-sessions.service getty-pre.target
Before=getty.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/hnctl platform console

[Install]
WantedBy=multi-user.target
";

/// (path, contents, mode) of every shipped file; `hninit-swap.service`,
/// `hninit-sshd.service` and `hninit-console.service` are enabled by their
/// `[Install]` sections.
pub const FILES: &[(&str, &str, u32)] = &[
    ("/usr/lib/udev/rules.d/86-hninit.rules", UDEV_RULES, 0o644),
    ("/usr/lib/systemd/system/hninit-disk@.service", DISK_UNIT, 0o644),
    ("/usr/lib/systemd/system/hninit-hotplug@.service", HOTPLUG_UNIT, 0o644),
    ("/usr/lib/systemd/system/hninit-swap.service", SWAP_UNIT, 0o644),
    ("/usr/lib/systemd/system/hninit-sshd.service", SSHD_UNIT, 0o644),
    ("/usr/lib/systemd/system/hninit-console.service", CONSOLE_UNIT, 0o644),
];

/// The units of [`FILES`] an image enables (`systemctl enable`).
pub const ENABLED: &[&str] = &["hninit-swap.service", "hninit-sshd.service", "hninit-console.service"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udev_only_tags_and_units_call_hnctl() {
        for l in UDEV_RULES.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(!l.contains("RUN") && !l.contains("PROGRAM") && l.contains("SYSTEMD_WANTS"), "{l}");
        }
        for unit in ENABLED {
            let (_, text, _) = FILES.iter().find(|f| f.0.ends_with(&format!("/{unit}"))).expect(unit);
            assert!(text.contains("\n[Install]\nWantedBy="), "{unit}");
        }
        for (path, text, _) in FILES.iter().filter(|f| f.0.ends_with(".service")) {
            assert!(text.contains("ExecStart=/usr/sbin/hnctl platform "), "{path}");
            assert!(text.contains("\nConditionPathIsMountPoint=|/hostpart\n"), "{path}: only where hninit booted");
        }
    }
}
