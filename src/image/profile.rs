//! Initramfs module profiles: the named module sets of `initramfs/profiles/`
//! (`server`, the default; `vm`; `host`), their `include` lines, and the host-only
//! detection of the `host` profile (the drivers bound to the building machine's
//! block devices, found by walking sysfs like dracut's host-only mode).

use anyhow::{bail, Result};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// The profile files, by name (`include NAME` refers to these).
const FILES: &[(&str, &str)] = &[
    ("filesystems", include_str!("../../initramfs/profiles/filesystems")),
    ("vm", include_str!("../../initramfs/profiles/vm")),
    ("server", include_str!("../../initramfs/profiles/server")),
    ("host", include_str!("../../initramfs/profiles/host")),
];

/// A module set for the initramfs (`--profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// VMs plus RAID/SAS HBAs, USB storage, legacy ATA, SD/MMC (`initramfs/profiles/server`).
    #[default]
    Server,
    /// virtio, Xen, AHCI, NVMe and the filesystems: the smallest (`initramfs/profiles/vm`).
    Vm,
    /// The filesystems plus the storage drivers this machine uses now (`initramfs/profiles/host`).
    Host,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Server => "server",
            Profile::Vm => "vm",
            Profile::Host => "host",
        }
    }

    /// The compressed size (zstd, without busybox) the profile must stay under:
    /// 3.5 MiB for `server` (issue 17; initramfs/README.md shows what each
    /// family costs). The others have no budget of their own.
    pub fn budget(self) -> Option<u64> {
        (self == Profile::Server).then_some(3 * 1024 * 1024 + 512 * 1024)
    }

    /// The names listed by the profile's file, `include`s expanded (for `host`,
    /// without the detected drivers: see [`host_storage_drivers`]).
    pub fn listed(self) -> Vec<String> {
        expand(self.name()).expect("the shipped profile files are well formed (tested)")
    }
}

fn file(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The module names of profile file `name`, in order, each once, with
/// `include OTHER` lines replaced by OTHER's names.
pub fn expand(name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    expand_into(name, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn expand_into(name: &str, stack: &mut Vec<String>, out: &mut Vec<String>) -> Result<()> {
    if stack.iter().any(|s| s == name) {
        bail!("initramfs/profiles: `include {name}` loops ({} -> {name})", stack.join(" -> "));
    }
    let Some(text) = file(name) else {
        bail!("initramfs/profiles: no profile named `{name}`");
    };
    stack.push(name.to_string());
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(inc) = line.strip_prefix("include ") {
            expand_into(inc.trim(), stack, out)?;
        } else if line.contains(char::is_whitespace) {
            bail!("initramfs/profiles/{name}: `{line}` is not one module name");
        } else if !out.iter().any(|o| o == line) {
            out.push(line.to_string());
        }
    }
    stack.pop();
    Ok(())
}

/// One driver found behind a block device of the building machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostDriver {
    /// The block device (`vda`, `sda`, `nvme0n1`).
    pub disk: String,
    /// The sysfs device bound to the driver.
    pub device: PathBuf,
    /// The driver's module (`driver/module`), else the driver's name.
    pub module: String,
    /// The device's `modalias`, when it has one.
    pub modalias: Option<String>,
}

/// The drivers bound to the block devices under `sys` (`/sys`): for each
/// `sys/block/X` that is not virtual (loop, zram, dm, md have no `device`
/// link), the device and each of its parents up to `sys/devices` that has a
/// `driver` link. Sorted by disk, then from the disk up.
pub fn host_storage_drivers(sys: &Path) -> Result<Vec<HostDriver>> {
    let mut out = Vec::new();
    let block = sys.join("block");
    let mut disks: Vec<String> = match fs::read_dir(&block) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) => bail!("reading {}: {e} (the host profile needs sysfs)", block.display()),
    };
    disks.sort();
    let top = fs::canonicalize(sys.join("devices")).unwrap_or_else(|_| sys.join("devices"));
    for disk in disks {
        let Ok(mut dev) = fs::canonicalize(block.join(&disk).join("device")) else {
            continue; // virtual block device
        };
        while dev.starts_with(&top) && dev != top {
            if let Ok(drv) = fs::read_link(dev.join("driver")) {
                let module = fs::read_link(dev.join("driver/module"))
                    .ok()
                    .as_deref()
                    .unwrap_or(&drv)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let modalias = fs::read_to_string(dev.join("modalias"))
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty());
                if !module.is_empty() {
                    out.push(HostDriver { disk: disk.clone(), device: dev.clone(), module, modalias });
                }
            }
            if !dev.pop() {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn shipped_profiles_expand() {
        for p in [Profile::Server, Profile::Vm, Profile::Host] {
            let l = p.listed();
            assert!(l.contains(&"ext4".to_string()) && l.contains(&"loop".to_string()), "{p:?}: {l:?}");
        }
        let vm = Profile::Vm.listed();
        let server = Profile::Server.listed();
        assert!(vm.iter().all(|m| server.contains(m)), "server includes vm");
        for m in ["virtio_blk", "ahci", "nvme", "xen_blkfront"] {
            assert!(vm.contains(&m.to_string()), "{m}");
        }
        for m in ["megaraid_sas", "mpt3sas", "smartpqi", "hpsa", "aacraid", "mptsas", "mptspi", "sym53c8xx",
            "usb_storage", "uas", "xhci_pci", "ehci_pci", "ata_piix", "ata_generic", "mmc_block", "sdhci_pci"] {
            assert!(server.contains(&m.to_string()) && !vm.contains(&m.to_string()), "{m}");
        }
        assert!(!Profile::Host.listed().contains(&"virtio_blk".to_string()));
        assert!(expand("nope").is_err());
    }

    #[test]
    fn walks_block_devices_up_to_their_drivers() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path();
        let mk = |p: &str| fs::create_dir_all(sys.join(p)).unwrap();
        // vda: virtio_blk (built in: no module link) on virtio-pci (a module).
        mk("devices/pci0000:00/0000:00:02.0/virtio1/block/vda");
        mk("bus/pci/drivers/virtio-pci");
        mk("bus/virtio/drivers/virtio_blk");
        mk("module/virtio_pci");
        symlink(sys.join("module/virtio_pci"), sys.join("bus/pci/drivers/virtio-pci/module")).unwrap();
        symlink(sys.join("bus/pci/drivers/virtio-pci"), sys.join("devices/pci0000:00/0000:00:02.0/driver")).unwrap();
        fs::write(sys.join("devices/pci0000:00/0000:00:02.0/modalias"), "pci:v00001AF4d00001042\n").unwrap();
        symlink(sys.join("bus/virtio/drivers/virtio_blk"), sys.join("devices/pci0000:00/0000:00:02.0/virtio1/driver")).unwrap();
        mk("block");
        symlink(sys.join("devices/pci0000:00/0000:00:02.0/virtio1/block/vda"), sys.join("block/vda")).unwrap();
        symlink(sys.join("devices/pci0000:00/0000:00:02.0/virtio1"), sys.join("devices/pci0000:00/0000:00:02.0/virtio1/block/vda/device")).unwrap();
        // loop0: virtual, no device link.
        mk("devices/virtual/block/loop0");
        symlink(sys.join("devices/virtual/block/loop0"), sys.join("block/loop0")).unwrap();

        let found = host_storage_drivers(sys).unwrap();
        let mods: Vec<(&str, &str)> = found.iter().map(|h| (h.disk.as_str(), h.module.as_str())).collect();
        assert_eq!(mods, [("vda", "virtio_blk"), ("vda", "virtio_pci")]);
        assert_eq!(found[1].modalias.as_deref(), Some("pci:v00001AF4d00001042"));
        assert!(host_storage_drivers(&sys.join("nothing")).is_err());
    }
}
