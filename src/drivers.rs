//! The initramfs's kernel modules as the boot sees them: the index of the modules
//! actually present (so alias matching only considers what can be loaded), the
//! forced list (`/etc/hninit/modules.force` + `hn.modules=`), drivers for device
//! modaliases, filesystem modules on demand (`fs-<type>`), and the diagnosis of
//! modules the machine needs that the initramfs lacks (from the full index).

use crate::modindex::{normalize_name, ModIndex};
use crate::modload::{KernelLoader, LoadReport, ModuleSet};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const FORCE_LIST: &str = "/etc/hninit/modules.force";

#[derive(Default)]
pub struct Drivers {
    dir: PathBuf,
    set: Option<ModuleSet<'static, KernelLoader>>,
    present: HashSet<String>,
    failed: Mutex<Vec<(String, String)>>,
}

/// Loader threads: the CPUs we may run on, 2 to 4. (The affinity mask is all
/// there is to know in an initramfs; `available_parallelism` would also read
/// cgroup quotas, ~4 KB of /init.)
fn threads() -> usize {
    let cpus = rustix::thread::sched_getaffinity(None).map(|s| s.count()).unwrap_or(1);
    (cpus as usize).clamp(2, 4)
}

/// Module names and relative paths of the `.ko` files under `dir`.
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

/// Keeps the lines of modules.dep and modules.alias that concern modules in `present`.
pub fn trim_index_text(dep: &str, alias: &str, present_paths: &HashSet<String>) -> (String, String, HashSet<String>) {
    let mut names = HashSet::new();
    let mut d = String::new();
    for line in dep.lines() {
        let Some((path, _)) = line.split_once(':') else { continue };
        if present_paths.contains(path.trim()) {
            d.push_str(line);
            d.push('\n');
            let stem = path.rsplit('/').next().unwrap_or(path);
            names.insert(normalize_name(stem));
        }
    }
    let mut a = String::new();
    for line in alias.lines() {
        if line.split_whitespace().nth(2).is_some_and(|m| names.contains(&normalize_name(m))) {
            a.push_str(line);
            a.push('\n');
        }
    }
    (d, a, names)
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
        let paths = present_modules(&dir);
        let (dep, alias, present) = trim_index_text(&dep, &read("modules.alias"), &paths);
        let index = ModIndex::parse(&dep, &alias, &read("modules.builtin"));
        let index: &'static ModIndex = Box::leak(Box::new(index));
        let set = ModuleSet::new(index, KernelLoader::new(dir.clone()), threads());
        debug!("{} modules in the initramfs for kernel {release}", present.len());
        Drivers {
            dir,
            set: Some(set),
            present,
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
    pub fn diagnose(&self, aliases: &[crate::devices::DeviceAlias]) -> Vec<String> {
        let mut out = Vec::new();
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let full = ModIndex::parse(&read("modules.dep"), &read("modules.alias"), &read("modules.builtin"));
        let mut lacking: Vec<String> = Vec::new();
        let mut others = 0;
        for a in aliases.iter().filter(|a| !a.bound) {
            let wanted = full.resolve(&a.modalias);
            if wanted.is_empty() || wanted.iter().any(|m| self.present.contains(m) || full.is_builtin(m)) {
                continue;
            }
            if !is_storage_alias(&a.modalias) {
                others += 1;
                continue;
            }
            lacking.push(format!("{} for {} ({})", wanted.join(" or "), a.devpath.trim_start_matches("/sys"), a.modalias));
        }
        crate::util::sort(&mut lacking);
        lacking.dedup();
        if !lacking.is_empty() {
            out.push("storage devices without a driver, whose module this initramfs lacks (add it with --module):".into());
            out.extend(lacking.into_iter().take(20).map(|l| format!("  {l}")));
        } else {
            out.push("no storage device is missing a driver".into());
        }
        if others > 0 {
            out.push(format!("({others} other devices have no driver: input, sound, cpufreq and the like, not needed to boot)"));
        }
        let mut asked: Vec<String> = std::fs::read_to_string(crate::modprobe::MISSING_FILE)
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
        let alias = "alias fs-ext4 ext4\nalias pci:v*d*sv*sd*bc01sc08i02* nvme\nalias fs-ext3 ext4\n";
        let present: HashSet<String> = ["kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko"].iter().map(|s| s.to_string()).collect();
        let (d, a, names) = trim_index_text(dep, alias, &present);
        assert_eq!(d.lines().count(), 2);
        assert_eq!(a, "alias fs-ext4 ext4\nalias fs-ext3 ext4\n");
        assert!(names.contains("ext4") && names.contains("jbd2") && !names.contains("nvme"));
    }
}
