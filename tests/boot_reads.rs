//! Every file read at boot from the host partition or an image goes through
//! `sys::saferead` (or `slots::dir::RealDir`, which uses it): dir fd,
//! O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC, regular files only, size caps. This test
//! enumerates the raw reads (`std::fs::read*`, `File::open`, `OpenOptions`,
//! `fs::copy`) in the modules the boot runs and fails on any that is not on the
//! allow-list below — each entry says why it is not a host-partition or image
//! file (/proc, /sys, device nodes, the initramfs's own files, the FAT ESP).
//! A new raw read in a boot path fails here: use `saferead` instead.

use std::path::Path;

/// The boot's modules that read from the host partition, an image or devices.
const SCANNED: &[&str] = &[
    "src/boot",
    "src/slots/rotation.rs",
    "src/slots/dir.rs",
    "src/slots/bootlog.rs",
    "src/slots/copy.rs",
    "src/slots/esp.rs",
    "src/slots/grubenv.rs",
    "src/slots/trust_state.rs",
    "src/trust/keystore.rs",
    "src/trust/stream.rs",
    "src/trust/policy.rs",
    "src/config/source.rs",
    "src/config/trust.rs",
    "src/firstboot/identity.rs",
    "src/firstboot/mod.rs",
    "src/sys",
];

/// Raw reads that are allowed: (file, a substring of the line, why).
const ALLOWED: &[(&str, &str, &str)] = &[
    ("src/boot/mod.rs", "\"/proc/cmdline\"", "procfs"),
    ("src/boot/mod.rs", "std::fs::read_to_string(path).unwrap_or_default()", "read_proc's body: /proc files only"),
    ("src/boot/step6_slots.rs", "\"/proc/cmdline\"", "procfs"),
    ("src/boot/step7_kexec.rs", "\"/proc/cmdline\"", "procfs"),
    ("src/boot/shutdown.rs", "\"/proc/self/mountinfo\"", "procfs"),
    ("src/boot/shutdown.rs", "read_to_string(e.path().join(\"loop/backing_file\"))", "sysfs"),
    ("src/boot/shutdown.rs", "std::fs::copy(\"/init\"", "the initramfs's own /init"),
    ("src/slots/esp.rs", "\"/proc/self/mountinfo\"", "procfs"),
    ("src/slots/esp.rs", "File::open(Path::new(\"/dev\").join(parent))", "a disk's device node (partition table)"),
    ("src/slots/esp.rs", "let file = OpenOptions::new()", "grubenv on the FAT ESP: FAT has no FIFOs or symlinks"),
    ("src/slots/esp.rs", "File::open(dir)", "a directory on the FAT ESP, for fsync"),
    ("src/config/source.rs", "let dev = std::fs::OpenOptions::new()", "the config block device, for its wipe"),
    ("src/config/source.rs", "File::open(&self.path)", "the config block device, to verify the wipe"),
    ("src/config/source.rs", "let f = File::open(path).map_err(io_err(format!(\"{origin} {shown}: open\")))?;", "a block device found by the scan or named by hn.config="),
    ("src/sys/devices.rs", "fs::read_to_string(link.join(\"modalias\"))", "sysfs"),
    ("src/sys/devices.rs", "fs::read_to_string(p).ok().map(|s| s.trim().to_string())", "read_trim: sysfs"),
    ("src/sys/devices.rs", "fs::File::open(Path::new(\"/dev\").join(&parent))", "a disk's device node (partition table)"),
    ("src/sys/devices.rs", "fs::read_to_string(sys.join(\"uevent\"))", "sysfs"),
    ("src/sys/mounts.rs", "\"/proc/filesystems\"", "procfs"),
    ("src/sys/probe.rs", "probe_file(File::open(path)?)", "probe_path: device nodes; staged images use probe_file on a saferead file"),
    ("src/sys/saferead.rs", "", "the safe reader itself"),
];

const RAW: &[&str] = &["fs::read(", "fs::read_to_string(", "File::open(", "OpenOptions::new()", "fs::copy("];

fn files(root: &Path, rel: &str, out: &mut Vec<String>) {
    let p = root.join(rel);
    if p.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(&p).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for n in names {
            files(root, &format!("{rel}/{n}"), out);
        }
    } else if rel.ends_with(".rs") {
        out.push(rel.to_string());
    }
}

#[test]
fn boot_reads_go_through_saferead() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for s in SCANNED {
        files(root, s, &mut all);
    }
    assert!(all.len() > 20, "scanned only {all:?}");
    let mut bad = Vec::new();
    let mut used = vec![false; ALLOWED.len()];
    for f in &all {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        // Unit tests at the end of a module may read what they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") || !RAW.iter().any(|r| line.contains(r)) {
                continue;
            }
            match ALLOWED.iter().position(|(af, pat, _)| af == f && line.contains(pat)) {
                Some(i) => used[i] = true,
                None => bad.push(format!("{f}:{}: {}", n + 1, line.trim())),
            }
        }
    }
    assert!(bad.is_empty(), "raw reads in boot paths (use hninit::sys::saferead, or allow-list with a reason):\n{}", bad.join("\n"));
    let stale: Vec<_> = ALLOWED.iter().zip(&used).filter(|(a, u)| !**u && !a.1.is_empty()).map(|(a, _)| format!("{} {:?}", a.0, a.1)).collect();
    assert!(stale.is_empty(), "allow-list entries that match nothing (remove them): {stale:?}");
}

/// The reads the issue names use the safe reader (grep-able helper names).
#[test]
fn the_named_reads_use_the_safe_reader() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let has = |f: &str, needle: &str| {
        let t = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(t.contains(needle), "{f} should use {needle}");
    };
    has("src/boot/step6_slots.rs", "saferead::read_path(file, MAX_DIGEST_FILE)");
    has("src/boot/step7_kexec.rs", "root.open_file(KERNEL, Follow::InRoot)");
    has("src/boot/step7_kexec.rs", "root.open_file(INITRAMFS, Follow::InRoot)");
    has("src/slots/dir.rs", "crate::sys::saferead::open_at(");
    has("src/config/source.rs", "dir.read(rel, Follow::InRoot, MAX_CONFIG as u64)");
    has("src/ctl.rs", "crate::sys::saferead::read_path(path");
}
