//! The initramfs's kernel modules as the boot sees them: the index of the modules
//! actually present (so alias matching only considers what can be loaded), the
//! forced list (`/etc/hninit/modules.force` + `hn.modules=`), drivers for device
//! modaliases, filesystem modules on demand (`fs-<type>`), and the diagnosis of
//! storage modules the machine needs that the initramfs lacks.
//!
//! The builder (`cargo xtask initramfs`) ships `modules.dep` and `modules.alias`
//! already trimmed to the modules in the archive, plus [`STORAGE_ALIASES`]: the
//! `modules.alias` lines of the kernel's storage drivers that the archive does not
//! carry, read only by the failure diagnosis. So the boot never parses the whole
//! kernel's index (1.8 MB of text). An initramfs without that file (built another
//! way, with the full index) still works: the index is trimmed at boot to the
//! `.ko` files present, and the diagnosis reads the full index.

use crate::modules::DeviceAlias;
use crate::modules::index::{normalize_name, subset_index_text, ModIndex};
use crate::modules::load::{KernelLoader, LoadReport, ModuleSet};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const FORCE_LIST: &str = crate::layout::MODULES_FORCE;

/// Beside `modules.dep`: `modules.alias` lines (same format) of the kernel's
/// storage drivers that the initramfs lacks, written by the initramfs builder.
/// Its presence also says that `modules.dep` and `modules.alias` hold only the
/// modules in the initramfs.
pub const STORAGE_ALIASES: &str = "hninit.storage-aliases";

/// Where the kernel's storage drivers live, under `kernel/drivers/`: disk and
/// host controllers, block drivers, RAID/device mapper, MMC/SD, NVMe, NVDIMM,
/// UFS, USB mass storage, virtio.
pub const STORAGE_DIRS: &[&str] = &[
    "ata", "block", "md", "memstick", "message", "mmc", "nvdimm", "nvme", "scsi", "ufs", "usb/storage", "virtio",
];

#[derive(Default)]
pub struct Drivers {
    dir: PathBuf,
    set: Option<ModuleSet<'static, KernelLoader>>,
    /// The index came trimmed by the builder, with [`STORAGE_ALIASES`] beside it.
    prebuilt: bool,
    failed: Mutex<Vec<(String, String)>>,
}

/// Loader threads: the CPUs we may run on, 2 to 4. (The affinity mask is all
/// there is to know in an initramfs; `available_parallelism` would also read
/// cgroup quotas, ~4 KB of /init.)
fn threads() -> usize {
    let cpus = rustix::thread::sched_getaffinity(None).map(|s| s.count()).unwrap_or(1);
    (cpus as usize).clamp(2, 4)
}

/// Relative paths of the `.ko` files under `dir/kernel` (for an index that was
/// not trimmed at build time).
fn present_modules(dir: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    if let Ok(rel) = p.strip_prefix(dir) {
                        out.insert(rel.to_string_lossy().into_owned());
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Whether a module path (as in `modules.dep`) is a storage driver's: under one of [`STORAGE_DIRS`].
pub fn is_storage_module_path(path: &str) -> bool {
    let path = path.trim();
    STORAGE_DIRS.iter().any(|d| {
        path.strip_prefix("kernel/drivers/")
            .and_then(|rest| rest.strip_prefix(d))
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The [`STORAGE_ALIASES`] file for an initramfs holding the modules `present`
/// (names), from the kernel's full `modules.dep` and `modules.alias`: a comment,
/// then, in `modules.alias` order, the alias lines of every module not in `present`
/// that is a storage driver ([`is_storage_module_path`]) or has an alias pattern
/// for a storage device ([`is_storage_alias`]: PCI class 01, virtio block/SCSI, …).
pub fn storage_aliases_text(dep: &str, alias: &str, present: &HashSet<String>) -> String {
    let storage_paths: HashSet<String> = dep
        .lines()
        .filter_map(|l| l.split_once(':').map(|(p, _)| p.trim()))
        .filter(|p| is_storage_module_path(p))
        .map(normalize_name)
        .collect();
    let mut lines: Vec<(&str, String)> = Vec::new();
    let mut by_pattern: HashSet<String> = HashSet::new();
    for line in alias.lines() {
        let mut w = line.split_whitespace();
        let (Some("alias"), Some(pattern), Some(module), None) = (w.next(), w.next(), w.next(), w.next()) else { continue };
        let m = normalize_name(module);
        if present.contains(&m) {
            continue;
        }
        if is_storage_alias(pattern) {
            by_pattern.insert(m.clone());
        }
        lines.push((line, m));
    }
    let mut out = String::from(
        "# hninit: aliases of this kernel's storage drivers that the initramfs lacks, for the\n\
         # boot failure diagnosis (modules.alias format; written by cargo xtask initramfs).\n",
    );
    for (line, m) in lines {
        if storage_paths.contains(&m) || by_pattern.contains(&m) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Storage devices without a driver whose module the initramfs lacks, as
/// `"MODULE or MODULE for DEVPATH (MODALIAS)"` (sorted, de-duplicated), and the
/// number of other devices without a driver that the initramfs cannot drive.
/// `present` is the initramfs's index; `absent` resolves modaliases to modules
/// it lacks (the [`STORAGE_ALIASES`] file, or the kernel's full index).
pub fn lacking_drivers(aliases: &[DeviceAlias], present: &ModIndex, absent: &ModIndex) -> (Vec<String>, usize) {
    let mut lacking: Vec<String> = Vec::new();
    let mut others = 0;
    for a in aliases.iter().filter(|a| !a.bound) {
        if !present.resolve(&a.modalias).is_empty() {
            continue; // a driver is there (the device may refuse it)
        }
        if !is_storage_alias(&a.modalias) {
            others += 1;
            continue;
        }
        let wanted: Vec<String> = absent
            .resolve(&a.modalias)
            .into_iter()
            .filter(|m| !present.is_known(m) && !absent.is_builtin(m))
            .collect();
        if !wanted.is_empty() {
            lacking.push(format!("{} for {} ({})", wanted.join(" or "), a.devpath.trim_start_matches("/sys"), a.modalias));
        }
    }
    crate::util::sort(&mut lacking);
    lacking.dedup();
    (lacking, others)
}

impl Drivers {
    /// Opens the modules of the running kernel in the initramfs. Never fails:
    /// without modules, everything must be built in, and loading does nothing.
    pub fn open() -> Drivers {
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        let dir = PathBuf::from("/lib/modules").join(&release);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let dep = read("modules.dep");
        if dep.is_empty() {
            warn!("no {}/modules.dep: loading no modules (kernel {release})", dir.display());
            return Drivers { dir, ..Default::default() };
        }
        let prebuilt = dir.join(STORAGE_ALIASES).is_file();
        let (dep, alias) = if prebuilt {
            (dep, read("modules.alias"))
        } else {
            // The kernel's whole index: keep what the .ko files present can serve.
            let (dep, alias, _) = subset_index_text(&dep, &read("modules.alias"), &present_modules(&dir));
            (dep, alias)
        };
        let index = ModIndex::parse(&dep, &alias, &read("modules.builtin"));
        let index: &'static ModIndex = Box::leak(Box::new(index));
        let set = ModuleSet::new(index, KernelLoader::new(dir.clone()), threads());
        debug!(
            "{} modules in the initramfs for kernel {release}{}",
            index.len(),
            if prebuilt { "" } else { " (its full module index trimmed at boot)" }
        );
        Drivers {
            dir,
            set: Some(set),
            prebuilt,
            failed: Mutex::new(Vec::new()),
        }
    }

    /// The same for the kernel's modprobe requests.
    pub fn open_quiet() -> Drivers {
        Drivers::open()
    }

    fn ensure(&self, what: &str, names: &[String]) -> Option<LoadReport> {
        let set = self.set.as_ref()?;
        if names.is_empty() {
            return None;
        }
        let report = set.ensure(names);
        for (name, took) in &report.loaded {
            debug!("loaded {name} ({} ms) for {what}", took.as_millis());
        }
        if !report.failed.is_empty() {
            for (name, e) in &report.failed {
                warn!("module {name} (for {what}) failed to load: {e}");
            }
            if let Ok(mut f) = self.failed.lock() {
                f.extend(report.failed.iter().cloned());
            }
        }
        Some(report)
    }

    /// Loads the force list of the initramfs plus `extra`; returns a summary line.
    pub fn load_forced(&self, extra: &[String]) -> String {
        let mut names: Vec<String> = std::fs::read_to_string(FORCE_LIST)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        names.extend(extra.iter().cloned());
        match self.ensure("the force list", &names) {
            None => "nothing to load".into(),
            Some(r) => {
                let mut s = format!("forced {}: loaded {}", names.join(" "), r.loaded.len());
                if !r.missing.is_empty() {
                    s.push_str(&format!(", not in the initramfs: {}", r.missing.join(" ")));
                }
                if !r.failed.is_empty() {
                    s.push_str(&format!(", failed: {}", r.failed.len()));
                }
                s
            }
        }
    }

    /// Loads the drivers matching device modaliases (no match is normal: most
    /// devices need no module, or have theirs built in).
    pub fn load_for_modaliases(&self, aliases: &[String]) {
        if let Some(r) = self.ensure("devices", aliases) {
            if !r.loaded.is_empty() {
                let names: Vec<&str> = r.loaded.iter().map(|(n, _)| n.as_str()).collect();
                info!("loaded drivers: {}", names.join(" "));
            }
        }
    }

    /// Loads the module for a filesystem type (`fs-<type>` alias, else the name).
    pub fn load_for_fs(&self, fstype: &str) {
        if let Some(set) = &self.set {
            let alias = format!("fs-{fstype}");
            let name = if set.index().resolve(&alias).is_empty() { fstype.to_string() } else { alias };
            self.ensure(&format!("filesystem {fstype}"), &[name]);
        }
    }

    /// For the kernel's modprobe requests: true when the module is (now) loaded.
    pub fn load_requested(&self, name: &str) -> bool {
        match self.ensure("the kernel's request", &[name.to_string()]) {
            // An alias may match several modules (crc32c_intel and crc32c_generic):
            // one loaded is enough.
            Some(r) => !r.loaded.is_empty() || !r.already.is_empty(),
            None => false,
        }
    }

    /// Lines naming modules this machine's devices need and the initramfs lacks,
    /// modules the kernel asked for that are missing, and modules that failed.
    pub fn diagnose(&self, aliases: &[DeviceAlias]) -> Vec<String> {
        let mut out = Vec::new();
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let empty = ModIndex::default();
        let present = self.set.as_ref().map_or(&empty, |s| s.index());
        let absent = if self.prebuilt {
            ModIndex::parse("", &read(STORAGE_ALIASES), &read("modules.builtin"))
        } else {
            ModIndex::parse(&read("modules.dep"), &read("modules.alias"), &read("modules.builtin"))
        };
        let (lacking, others) = lacking_drivers(aliases, present, &absent);
        if !lacking.is_empty() {
            out.push("storage devices without a driver, whose module this initramfs lacks (add it with --module):".into());
            out.extend(lacking.into_iter().take(20).map(|l| format!("  {l}")));
        } else {
            out.push("no storage device is missing a driver".into());
        }
        if others > 0 {
            out.push(format!("({others} other devices have no driver here: input, sound, cpufreq and the like, not needed to boot)"));
        }
        let mut asked: Vec<String> = std::fs::read_to_string(crate::layout::MODPROBE_MISSING)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        crate::util::sort(&mut asked);
        asked.dedup();
        if !asked.is_empty() {
            out.push(format!("the kernel asked for modules this initramfs lacks: {}", asked.join(" ")));
        }
        if let Ok(f) = self.failed.lock() {
            for (name, e) in f.iter() {
                out.push(format!("module {name} failed to load: {e}"));
            }
        }
        out
    }
}

/// Whether a modalias is a storage device or controller (PCI class 01, virtio
/// block/SCSI, SCSI disks and CD-ROMs, USB mass storage, MMC, Xen/Hyper-V disks).
pub fn is_storage_alias(alias: &str) -> bool {
    let pci_class = |a: &str| a.find("bc").and_then(|i| a.get(i + 2..i + 4)) == Some("01");
    match alias.split_once(':') {
        Some(("pci", rest)) => pci_class(rest),
        Some(("virtio", rest)) => rest.starts_with("d00000002v") || rest.starts_with("d00000008v"),
        Some(("scsi", rest)) => rest.starts_with("t-0x00") || rest.starts_with("t-0x05") || rest.starts_with("t-0x0e"),
        Some(("usb", rest)) => rest.contains("ic08"),
        Some(("mmc", _)) | Some(("xen", _)) | Some(("vmbus", _)) | Some(("nvme", _)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_aliases() {
        assert!(is_storage_alias("pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80"));
        assert!(is_storage_alias("virtio:d00000002v00001AF4"));
        assert!(is_storage_alias("scsi:t-0x00"));
        assert!(!is_storage_alias("pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00"));
        assert!(!is_storage_alias("virtio:d00000001v00001AF4"));
        assert!(!is_storage_alias("acpi:PNP0700:"));
        assert!(!is_storage_alias("input:b0011v0001p0001eAB41-e0"));
    }

    #[test]
    fn trims_index_to_present_modules() {
        let dep = "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\nkernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\n";
        let alias = "# Aliases extracted from modules themselves.\nalias fs-ext4 ext4\nalias pci:v*d*sv*sd*bc01sc08i02* nvme\nalias fs-ext3 ext4\n";
        let present: HashSet<String> = ["kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko"].iter().map(|s| s.to_string()).collect();
        let (d, a, names) = subset_index_text(dep, alias, &present);
        assert_eq!(d.lines().count(), 2);
        assert_eq!(a, "# Aliases extracted from modules themselves.\nalias fs-ext4 ext4\nalias fs-ext3 ext4\n");
        assert!(names.contains("ext4") && names.contains("jbd2") && !names.contains("nvme"));
    }

    #[test]
    fn storage_module_paths() {
        assert!(is_storage_module_path("kernel/drivers/ata/ata_piix.ko"));
        assert!(is_storage_module_path("kernel/drivers/usb/storage/uas.ko.xz"));
        assert!(is_storage_module_path("kernel/drivers/scsi/megaraid/megaraid_sas.ko"));
        assert!(!is_storage_module_path("kernel/drivers/usb/serial/ftdi_sio.ko"));
        assert!(!is_storage_module_path("kernel/drivers/atang/x.ko"));
        assert!(!is_storage_module_path("kernel/fs/ext4/ext4.ko"));
    }

    const DEP: &str = "kernel/drivers/ata/ata_piix.ko: kernel/drivers/ata/libata.ko\n\
kernel/drivers/ata/libata.ko:\n\
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko\n\
kernel/drivers/net/xen-netfront.ko:\n\
kernel/drivers/input/misc/pcspkr.ko:\n\
kernel/drivers/virtio/virtio_pci.ko:\n";
    const ALIAS: &str = "# Aliases extracted from modules themselves.\n\
alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix\n\
alias pci:v*d*sv*sd*bc01sc06i01* ahci\n\
alias xen:vif xen_netfront\n\
alias platform:pcspkr pcspkr\n\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n";

    #[test]
    fn storage_aliases_file_holds_absent_storage_drivers_only() {
        let present: HashSet<String> = ["virtio_pci".to_string()].into_iter().collect();
        let text = storage_aliases_text(DEP, ALIAS, &present);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        // ata_piix and ahci by their directory, xen_netfront by its xen: pattern; not
        // pcspkr (not storage) nor virtio_pci (in the initramfs).
        assert_eq!(
            lines,
            ["alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix", "alias pci:v*d*sv*sd*bc01sc06i01* ahci", "alias xen:vif xen_netfront"]
        );
        assert!(text.starts_with("# hninit: "));
    }

    #[test]
    fn lacking_drivers_agree_between_full_and_storage_index() {
        let dev = |m: &str, bound: bool| DeviceAlias { modalias: m.into(), devpath: format!("/sys/devices/{m}"), bound };
        let devices = [
            dev("pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80", false), // PIIX IDE: lacking
            dev("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", false), // virtio: present
            dev("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", true),  // bound: fine
            dev("platform:pcspkr", false),                                       // other
            dev("acpi:PNP0A03:", false),                                         // other, no module at all
        ];
        let paths: HashSet<String> = ["kernel/drivers/virtio/virtio_pci.ko".to_string()].into_iter().collect();
        let (d, a, names) = subset_index_text(DEP, ALIAS, &paths);
        let present = ModIndex::parse(&d, &a, "");
        let storage = ModIndex::parse("", &storage_aliases_text(DEP, ALIAS, &names), "");
        let full = ModIndex::parse(DEP, ALIAS, "");
        let want = (vec!["ata_piix for /devices/pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80 (pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80)".to_string()], 2);
        assert_eq!(lacking_drivers(&devices, &present, &storage), want);
        assert_eq!(lacking_drivers(&devices, &present, &full), want);
    }
}
