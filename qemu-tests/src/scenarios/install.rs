//! `hnctl install` and the kernel hooks' boot pair, booted for real through
//! OVMF and GRUB:
//! * `hnctl-install`: the shared root image A put on a fresh disk file by
//!   `hnctl install` (no root, no loop device) boots: GRUB from the ESP's
//!   removable path, the menu, loopback of `hn-root.img`, hninit, the root.
//! * `hnctl-install-bios`: `hnctl install --bios` makes one disk that boots
//!   image A under SeaBIOS (boot.img in the MBR, core.img in the BIOS boot
//!   partition, the ESP's menu) and then under OVMF (the removable path).
//! * `hnctl-install-parts`: a disk that already has a FAT ESP (with another
//!   system's `EFI/BOOT/BOOTX64.EFI` and `EFI/debian/` file) and an empty
//!   partition: `hnctl install --esp --hostpart-dev --yes` on the two
//!   partitions (files here, copied into the GPT disk at their offsets) boots
//!   image A through OVMF, and the other system's files are still there.
//! * `hnctl-install-pair`: image A unpacked, given the cached kernel as
//!   `/boot/vmlinuz-R` (its modules linked in), `hnctl initramfs update --root`
//!   adopts its two regular files and switches to a new pair
//!   (`/boot/kernel -> hninit/kernel`, `/boot/hninit -> hninit.d/R-…`), the
//!   tree made an ext4 image again and installed: GRUB follows the links inside
//!   the loop-mounted image and hninit boots it.

use super::hardware::bios_boot_to_image_a;
use super::{expect_clean_poweroff, shared, uefi_boot_to_image_a, BASE};
use qemu_tests::{Ctx, Failure, OrFail, Scenario};
use std::path::Path;
use std::process::Command;

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario { name: "hnctl-install", about: "hnctl install --disk FILE --image A: the disk boots through OVMF + GRUB", run: install_boots },
        Scenario { name: "hnctl-install-bios", about: "hnctl install --bios: one disk boots image A under SeaBIOS (GRUB i386-pc) and under OVMF", run: install_bios_boots },
        Scenario { name: "hnctl-install-parts", about: "hnctl install --esp/--hostpart-dev on an existing ESP + partition: boots A, the foreign ESP files survive", run: parts_boot },
        Scenario { name: "hnctl-install-pair", about: "hnctl initramfs update --root adopts /boot/kernel and switches to a symlinked pair; GRUB boots through the links", run: pair_boots },
    ]
}

fn run(cmd: &mut Command) -> Result<String, Failure> {
    let o = cmd.output().or_fail("starting a command")?;
    if !o.status.success() {
        return Err(Failure::new(format!("{cmd:?}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr))));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn hnctl() -> Result<std::path::PathBuf, Failure> {
    xtask::build_workspace_bin("hnctl").or_fail("building hnctl")
}

/// `hnctl install --disk ctx/disk.img --image IMAGE [extra]`: the disk and
/// what hnctl printed, checked for the host partition.
fn install_disk(ctx: &mut Ctx, image: &Path, extra: &[&str]) -> Result<(std::path::PathBuf, String), Failure> {
    let disk = ctx.dir().join("disk.img");
    let out = run(Command::new(hnctl()?)
        .args(["install", "--disk"])
        .arg(&disk)
        .arg("--image")
        .arg(image)
        .args(["--cmdline", &format!("{BASE} rw")])
        .args(extra))?;
    if !out.contains("partition 2: hostpart") {
        return Err(Failure::new(format!("hnctl install printed: {out}")));
    }
    Ok((disk, out))
}

fn install_and_boot(ctx: &mut Ctx, image: &Path) -> Result<(), Failure> {
    let (disk, _) = install_disk(ctx, image, &[])?;
    let mut vm = uefi_boot_to_image_a(ctx, &disk)?;
    expect_clean_poweroff(&mut vm)
}

fn install_bios_boots(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, out) = install_disk(ctx, &s.image_a, &["--bios"])?;
    if !out.contains("partition 3: BIOS-BOOT (EF02)") {
        return Err(Failure::new(format!("hnctl install --bios printed: {out}")));
    }
    let mut vm = bios_boot_to_image_a(ctx, &disk)?;
    expect_clean_poweroff(&mut vm)?;
    // The same disk under UEFI.
    let mut vm = uefi_boot_to_image_a(ctx, &disk)?;
    expect_clean_poweroff(&mut vm)
}

fn install_boots(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    install_and_boot(ctx, &s.image_a)
}

fn pair_boots(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let tree = ctx.dir().join("tree");
    std::fs::create_dir_all(&tree).or_fail("creating the tree")?;
    run(Command::new("debugfs").args(["-R", &format!("rdump / {}", tree.display())]).arg(&s.image_a))?;
    let r = &s.kernel.release;
    std::fs::copy(&s.kernel.vmlinuz, tree.join(format!("boot/vmlinuz-{r}"))).or_fail("copying the kernel")?;
    std::fs::create_dir_all(tree.join("lib/modules")).or_fail("lib/modules")?;
    std::os::unix::fs::symlink(&s.kernel.modules_dir, tree.join("lib/modules").join(r)).or_fail("linking the modules")?;
    let init = xtask::build_init().or_fail("building init")?;
    let out = run(Command::new(hnctl()?).args(["initramfs", "update", "--root"]).arg(&tree).arg("--init").arg(&init))?;
    if !out.contains("kept as a pair") || !out.contains(&format!("/boot/kernel, /boot/initramfs: {r} (boot/hninit.d/{r}-")) {
        return Err(Failure::new(format!("hnctl initramfs update printed: {out}")));
    }
    let link = std::fs::read_link(tree.join("boot/kernel")).or_fail("reading /boot/kernel")?;
    if link != Path::new("hninit/kernel") {
        return Err(Failure::new(format!("/boot/kernel -> {}", link.display())));
    }
    let image = ctx.dir().join("pair.img");
    run(Command::new("mkfs.ext4").args(["-q", "-L", "hnroot", "-d"]).arg(&tree).arg(&image).arg("128M"))?;
    install_and_boot(ctx, &image)
}

fn mtools(name: &str, img: &Path) -> Command {
    let mut c = Command::new(name);
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(img);
    c
}

fn parts_boot(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let dir = ctx.dir().to_path_buf();
    // The existing ESP: another system's files.
    let esp = dir.join("esp.img");
    run(Command::new("mkfs.vfat").args(["-C", "-F", "32", "-n", "ESP"]).arg(&esp).arg("65536"))?;
    let foreign = dir.join("foreign.efi");
    std::fs::write(&foreign, "ANOTHER OS LOADER").or_fail("writing the foreign file")?;
    run(mtools("mmd", &esp).args(["::/EFI", "::/EFI/BOOT", "::/EFI/debian"]))?;
    run(mtools("mcopy", &esp).arg(&foreign).arg("::/EFI/BOOT/BOOTX64.EFI"))?;
    run(mtools("mcopy", &esp).arg(&foreign).arg("::/EFI/debian/grubx64.efi"))?;
    // The empty partition for the host partition.
    let image_mib = std::fs::metadata(&s.image_a).or_fail("image A")?.len().div_ceil(1 << 20);
    let host_mib = image_mib * 5 / 4 + 64;
    let host = dir.join("host.img");
    std::fs::File::create(&host).and_then(|f| f.set_len(host_mib << 20)).or_fail("making host.img")?;
    let out = run(Command::new(hnctl()?)
        .args(["install", "--yes", "--esp"])
        .arg(&esp)
        .arg("--hostpart-dev")
        .arg(&host)
        .arg("--image")
        .arg(&s.image_a)
        .args(["--cmdline", &format!("{BASE} rw")]))?;
    if !out.contains("kept as EFI/BOOT/BOOTX64.EFI.before-hninit") {
        return Err(Failure::new(format!("hnctl install printed: {out}")));
    }
    // The disk: partition 1 the ESP at 1 MiB, partition 2 the host partition.
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len((1 + 64 + host_mib + 1) << 20)).or_fail("making disk.img")?;
    let end2 = (65 + host_mib) * 2048 - 1;
    run(Command::new("sgdisk")
        .args(["-o", "-n1:2048:133119", "-t1:EF00", "-n", &format!("2:133120:{end2}"), "-t2:8300"])
        .arg(&disk))?;
    for (img, seek) in [(&esp, 1), (&host, 65)] {
        run(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=1M", &format!("seek={seek}"), "conv=notrunc,sparse", "status=none"]))?;
    }
    let mut vm = uefi_boot_to_image_a(ctx, &disk)?;
    expect_clean_poweroff(&mut vm)?;
    let on_disk = dir.join("disk.img@@1M");
    for f in ["::/EFI/debian/grubx64.efi", "::/EFI/BOOT/BOOTX64.EFI.before-hninit"] {
        let text = run(mtools("mtype", &on_disk).arg(f))?;
        if text != "ANOTHER OS LOADER" {
            return Err(Failure::new(format!("{f} after the boot: {text:?}")));
        }
    }
    Ok(())
}
