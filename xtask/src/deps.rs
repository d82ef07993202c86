//! Host prerequisites: checks for the programs and files xtask needs and
//! installs the Debian packages that provide any that are missing.

use crate::util::{self, find_program};
use anyhow::{bail, Result};
use std::path::Path;
use std::process::Command;

/// What a requirement looks for.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// A program in `$PATH` (or an sbin directory).
    Program(&'static str),
    /// A file that must exist.
    File(&'static str),
    /// A statically linked executable at this path.
    StaticElf(&'static str),
}

/// Everything the build and run tasks use, with the Debian package providing it.
const REQUIREMENTS: &[(Probe, &str)] = &[
    (Probe::Program("qemu-system-x86_64"), "qemu-system-x86"),
    (Probe::File("/usr/share/OVMF/OVMF_CODE_4M.fd"), "ovmf"),
    (Probe::File("/usr/share/OVMF/OVMF_VARS_4M.fd"), "ovmf"),
    (Probe::Program("sgdisk"), "gdisk"),
    (Probe::Program("mkfs.ext4"), "e2fsprogs"),
    (Probe::Program("mkfs.btrfs"), "btrfs-progs"),
    (Probe::Program("mkfs.xfs"), "xfsprogs"),
    (Probe::Program("mkfs.vfat"), "dosfstools"),
    (Probe::Program("mcopy"), "mtools"),
    (Probe::Program("grub-mkstandalone"), "grub-common"),
    (Probe::Program("grub-fstest"), "grub-common"),
    (
        Probe::File("/usr/lib/grub/x86_64-efi/loopback.mod"),
        "grub-efi-amd64-bin",
    ),
    (Probe::File("/usr/lib/grub/i386-pc/boot.img"), "grub-pc-bin"),
    (Probe::StaticElf("/bin/busybox"), "busybox-static"),
    (Probe::Program("depmod"), "kmod"),
    (Probe::Program("cpio"), "cpio"),
    (Probe::Program("zstd"), "zstd"),
    // Debian 13 kernels ship .ko.xz modules; the initramfs holds them plain.
    (Probe::Program("xz"), "xz-utils"),
    (Probe::Program("dpkg-deb"), "dpkg"),
    (Probe::Program("fakeroot"), "fakeroot"),
];

fn present(p: Probe) -> bool {
    match p {
        Probe::Program(name) => find_program(name).is_some(),
        Probe::File(f) => Path::new(f).exists(),
        Probe::StaticElf(f) => util::is_static_elf(Path::new(f)).unwrap_or(false),
    }
}

/// Debian packages whose probe currently fails (deduplicated, in table order).
pub fn missing_host_packages() -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = Vec::new();
    for &(probe, pkg) in REQUIREMENTS {
        if !present(probe) && !pkgs.contains(&pkg) {
            pkgs.push(pkg);
        }
    }
    pkgs
}

/// Makes sure every host tool is there; installs the missing packages with
/// `apt-get update` (once) and `apt-get install -y`, printing what it installs.
pub fn ensure_host_packages() -> Result<()> {
    let missing = missing_host_packages();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing missing host packages: {}",
        missing.join(" ")
    );
    if !util::running_as_root() {
        bail!(
            "missing host packages: {} (not root: install them with `sudo apt-get install {}`)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    util::run_inherit(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    util::run_inherit(&mut install)?;
    let still = missing_host_packages();
    if !still.is_empty() {
        bail!(
            "after apt-get install, still missing what these packages provide: {}",
            still.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        // Each package name looks like a Debian package name.
        for &(_, pkg) in REQUIREMENTS {
            assert!(pkg
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
        }
    }
}
