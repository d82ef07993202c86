//! pvgrub2 for Xen guests: GRUB built for Xen PV (`x86_64-xen`) and PVH
//! (`i386-xen_pvh`) with Debian's `grub-xen-bin`, carrying the same embedded
//! config as the EFI GRUB: find the disk holding `/EFI/hninit/grub.cfg` (the
//! ESP `hnctl install` writes) and run that menu, which loop-boots
//! `hn-root.img` from the `hostpart` filesystem. The domU config names the
//! result as its `kernel` (grub/README.md, "Xen guests").

use super::grub::{EMBEDDED_CFG, GRUB_MODULES};
use super::tools::{self as util, cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// GRUB platforms built, and the file each becomes.
pub const XEN_TARGETS: &[(&str, &str)] = &[("x86_64-xen", "pvgrub2-x86_64-xen.bin"), ("i386-xen_pvh", "pvgrub2-i386-xen_pvh.bin")];

/// Modules preloaded: those of the EFI list that `target` has (Xen has no
/// serial or video module: its console is the PV console).
pub fn xen_modules(target: &str) -> String {
    let dir = Path::new("/usr/lib/grub").join(target);
    GRUB_MODULES.split_whitespace().filter(|m| dir.join(format!("{m}.mod")).exists()).collect::<Vec<_>>().join(" ")
}

/// Builds both pvgrub2 images into `dir`; returns their paths.
pub fn build_pvgrub2(dir: &Path) -> Result<Vec<PathBuf>> {
    for (target, _) in XEN_TARGETS {
        if !Path::new("/usr/lib/grub").join(target).join("kernel.img").exists() {
            bail!("GRUB {target} modules missing in /usr/lib/grub/{target} (install grub-xen-bin)");
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = dir.join(format!(".embedded-{}.cfg", util::unique_suffix()));
    fs::write(&cfg, EMBEDDED_CFG)?;
    let mut out = Vec::new();
    let res = (|| -> Result<()> {
        for (target, name) in XEN_TARGETS {
            let path = dir.join(name);
            let tmp = util::tmp_sibling(&path);
            util::run(
                cmd("grub-mkstandalone")
                    .args(["-O", target, "--locales=", "--fonts=", "--themes="])
                    .arg(format!("--modules={}", xen_modules(target)))
                    .arg("-o")
                    .arg(&tmp)
                    .arg(format!("boot/grub/grub.cfg={}", cfg.display())),
            )
            .with_context(|| format!("building pvgrub2 for {target}"))?;
            fs::rename(&tmp, &path)?;
            out.push(path);
        }
        Ok(())
    })();
    fs::remove_file(&cfg).ok();
    res.map(|_| out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Xen cannot run here: the images are checked as files. Each is an ELF
    /// with Xen's ELF notes (the loader reads them) and holds the embedded
    /// config in its memdisk.
    #[test]
    fn pvgrub2_images_are_xen_elfs_with_the_menu_search() {
        if !Path::new("/usr/lib/grub/x86_64-xen/kernel.img").exists() || util::find_program("readelf").is_none() {
            eprintln!("grub-xen-bin or readelf missing; skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let imgs = build_pvgrub2(d.path()).unwrap();
        assert_eq!(imgs.len(), 2);
        for img in &imgs {
            let bytes = fs::read(img).unwrap();
            assert_eq!(&bytes[..4], b"\x7fELF", "{}", img.display());
            let notes = util::run_stdout(Command::new("readelf").arg("-n").arg(img)).unwrap();
            assert!(notes.contains("Xen"), "{}: no Xen ELF note:\n{notes}", img.display());
            let hay = String::from_utf8_lossy(&bytes);
            assert!(hay.contains("search --no-floppy --set=hnesp --file /EFI/hninit/grub.cfg"), "{}: no embedded config", img.display());
        }
        let pv = util::run_stdout(Command::new("readelf").arg("-h").arg(&imgs[0])).unwrap();
        assert!(pv.contains("X86-64") || pv.contains("x86-64"), "{pv}");
    }
}
