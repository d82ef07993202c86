//! `hnctl install` on disk image files with the real tools: the layout GRUB
//! needs (read back with sgdisk, mtools and debugfs), and the refusals (exit 3,
//! nothing written): data without `--yes`, too small, in use (attached to a
//! loop device, or a disk with a mounted partition).
#![cfg(feature = "image")]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn hnctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hnctl")).args(args).output().unwrap()
}

fn stdout(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tools() -> bool {
    ["sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "grub-mkstandalone", "debugfs"]
        .iter()
        .all(|t| Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().is_ok_and(|o| o.status.success()))
}

/// A 16 MiB ext4 image with a /boot/kernel.
fn image(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::write(root.join("boot/kernel"), "KERNEL").unwrap();
    let img = dir.join("img.ext4");
    stdout(Command::new("mkfs.ext4").args(["-q", "-L", "root", "-d"]).arg(&root).arg(&img).arg("16M"));
    img
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn install_on_a_disk_file_then_refusals() {
    if !tools() {
        eprintln!("disk tools missing; skipping");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path());
    let disk = d.path().join("vm.img");
    let o = hnctl(&["install", "--disk", s(&disk), "--image", s(&img)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // GPT: ESP then hostpart.
    let table = stdout(Command::new("sgdisk").arg("-p").arg(&disk));
    let rows: Vec<&str> = table.lines().filter(|l| l.trim_start().starts_with(char::is_numeric) && l.contains("MiB")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].contains("EF00") && rows[0].ends_with("EFI-BOOT"), "{table}");
    assert!(rows[1].contains("8300") && rows[1].ends_with("hostpart"), "{table}");
    // The ESP: GRUB at the removable path, the menu, the grubenv block.
    let esp = format!("{}@@1M", s(&disk));
    let ls = stdout(Command::new("mdir").env("MTOOLS_SKIP_CHECK", "1").args(["-i", &esp, "-/", "-b", "::/EFI"]));
    for f in ["::/EFI/BOOT/BOOTX64.EFI", "::/EFI/hninit/grub.cfg", "::/EFI/hninit/grubenv"] {
        assert!(ls.contains(f), "{f} missing:\n{ls}");
    }
    let cfg = stdout(Command::new("mtype").env("MTOOLS_SKIP_CHECK", "1").args(["-i", &esp, "::/EFI/hninit/grub.cfg"]));
    assert!(cfg.contains("real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart console=tty0 console=ttyS0 rw"), "{cfg}");
    // The host partition: hn-root.img is the image, byte for byte.
    let part = d.path().join("hostpart.img");
    stdout(Command::new("dd").arg(format!("if={}", s(&disk))).arg(format!("of={}", s(&part))).args(["bs=1M", "skip=65", "status=none"]));
    let out = d.path().join("back.img");
    stdout(Command::new("debugfs").args(["-R", &format!("dump /hn-root.img {}", s(&out))]).arg(&part));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());
    let ls = stdout(Command::new("debugfs").args(["-R", "ls -l /"]).arg(&part));
    assert!(ls.contains("hn-state") && ls.contains("data"), "{ls}");
    let label = stdout(Command::new("blkid").args(["-o", "value", "-s", "LABEL"]).arg(&part));
    assert_eq!(label.trim(), "hostpart");

    // Refused, exit 3, nothing written: the disk holds data and no --yes.
    let before = fs::read(&disk).unwrap();
    let o = hnctl(&["install", "--disk", s(&disk), "--image", s(&img)]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("holds data") && err.contains("--yes"), "{err}");
    assert!(fs::read(&disk).unwrap() == before);
    // With --yes it is redone.
    let o = hnctl(&["install", "--disk", s(&disk), "--image", s(&img), "--yes"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Too small: an existing 50 MiB file.
    let small = d.path().join("small.img");
    fs::File::create(&small).unwrap().set_len(50 << 20).unwrap();
    let o = hnctl(&["install", "--disk", s(&small), "--image", s(&img), "--yes"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("small.img is too small: 50 MiB, the image needs 118 MiB"));
    assert!(fs::read(&small).unwrap().iter().all(|&b| b == 0));
}

/// In use: a disk file attached to a loop device; a block device (a loop
/// device over a filesystem image) that is mounted. Needs root and loop devices.
#[test]
fn disk_in_use_is_refused() {
    if !tools() {
        eprintln!("disk tools missing; skipping");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path());
    let disk = d.path().join("vm.img");
    let o = hnctl(&["install", "--disk", s(&disk), "--image", s(&img)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let attach = |f: &Path| -> Option<String> {
        let o = Command::new("losetup").args(["-f", "--show"]).arg(f).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(dev) = attach(&disk) else {
        eprintln!("no loop device here (not root?); skipping");
        return;
    };
    let file = hnctl(&["install", "--disk", s(&disk), "--image", s(&img), "--yes"]);
    Command::new("losetup").args(["-d", &dev]).status().unwrap();

    // A block device with a mounted filesystem (the disk itself, here: no
    // partition nodes appear for loop devices without udev).
    let fsimg = d.path().join("fs.img");
    fs::File::create(&fsimg).unwrap().set_len(300 << 20).unwrap();
    stdout(Command::new("mkfs.ext4").args(["-q"]).arg(&fsimg));
    let dev2 = attach(&fsimg).unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount").arg(&dev2).arg(&mnt).status().is_ok_and(|s| s.success());
    let block = hnctl(&["install", "--disk", &dev2, "--image", s(&img), "--yes"]);
    if mounted {
        Command::new("umount").arg(&mnt).status().unwrap();
    }
    Command::new("losetup").args(["-d", &dev2]).status().unwrap();

    assert_eq!(file.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&file.stderr).contains(&format!("in use: attached to {dev}")), "{}", String::from_utf8_lossy(&file.stderr));
    assert!(mounted, "could not mount {dev2}");
    assert_eq!(block.status.code(), Some(3));
    let err = String::from_utf8_lossy(&block.stderr);
    assert!(err.contains(&format!("in use: mounted at {}", mnt.display())), "{err}");
}

/// `--bios`: the same disk plus GRUB for i386-pc: a BIOS boot partition
/// (EF02) in the gap before the ESP holding core.img, boot.img in the MBR with
/// the protective partition entry kept; the table still verifies.
#[test]
fn install_bios_adds_grub_for_i386_pc() {
    if !tools() || !Path::new("/usr/lib/grub/i386-pc/boot.img").exists() {
        eprintln!("disk tools or grub-pc-bin missing; skipping");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path());
    let disk = d.path().join("bios.img");
    let o = hnctl(&["install", "--disk", s(&disk), "--image", s(&img), "--bios"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("partition 3: BIOS-BOOT (EF02), GRUB i386-pc core.img"), "{out}");

    let table = stdout(Command::new("sgdisk").arg("-p").arg(&disk));
    let bios = table.lines().find(|l| l.contains("EF02")).unwrap_or_else(|| panic!("no EF02 partition:\n{table}"));
    let w: Vec<&str> = bios.split_whitespace().collect();
    assert_eq!((w[0], w[1], w[2]), ("3", "34", "2047"), "{table}");
    assert!(table.lines().any(|l| l.contains("EF00") && l.ends_with("EFI-BOOT")), "{table}");
    assert!(stdout(Command::new("sgdisk").arg("-v").arg(&disk)).contains("No problems found"));
    let bytes = fs::read(&disk).unwrap();
    let boot = fs::read("/usr/lib/grub/i386-pc/boot.img").unwrap();
    assert_eq!(&bytes[..3], &boot[..3], "boot.img's jump is in the MBR");
    assert_eq!(&bytes[0x5c..0x64], &34u64.to_le_bytes(), "boot.img points at core.img");
    assert_eq!(bytes[0x1c2], 0xee, "the protective MBR entry is kept");
    assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
    // core.img (grub-mkimage -O i386-pc) starts with diskboot.img.
    let diskboot = fs::read("/usr/lib/grub/i386-pc/diskboot.img").unwrap();
    assert_eq!(&bytes[34 * 512..34 * 512 + 16], &diskboot[..16]);
}

fn mtools(name: &str, img: &Path) -> Command {
    let mut c = Command::new(name);
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(img);
    c
}

/// `--esp FILE --hostpart-dev FILE`: an existing FAT ESP keeps another system's
/// files; its removable-path loader is replaced only with `--yes` (and kept);
/// a non-FAT ESP is refused naming what it holds; the host partition is made
/// anew (label hostpart, hn-root.img byte for byte).
#[test]
fn install_on_existing_partitions() {
    if !tools() {
        eprintln!("disk tools missing; skipping");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path());
    let esp = d.path().join("esp.img");
    stdout(Command::new("mkfs.vfat").args(["-C", "-F", "32", "-n", "ESP"]).arg(&esp).arg("65536"));
    let foreign = d.path().join("foreign.efi");
    fs::write(&foreign, "ANOTHER OS LOADER").unwrap();
    stdout(mtools("mmd", &esp).args(["::/EFI", "::/EFI/BOOT", "::/EFI/debian"]));
    stdout(mtools("mcopy", &esp).arg(&foreign).arg("::/EFI/BOOT/BOOTX64.EFI"));
    stdout(mtools("mcopy", &esp).arg(&foreign).arg("::/EFI/debian/grubx64.efi"));
    let host = d.path().join("hostpart.img");
    fs::File::create(&host).unwrap().set_len(200 << 20).unwrap();
    stdout(Command::new("mkfs.ext4").args(["-q", "-L", "olddata"]).arg(&host));
    let args = ["install", "--esp", s(&esp), "--hostpart-dev", s(&host), "--image", s(&img)];

    // Another system's loader at the removable path: refused, nothing written.
    let (esp0, host0) = (fs::read(&esp).unwrap(), fs::read(&host).unwrap());
    let o = hnctl(&args);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("EFI/BOOT/BOOTX64.EFI belongs to another system; add --yes"), "{err}");
    assert!(fs::read(&esp).unwrap() == esp0 && fs::read(&host).unwrap() == host0);

    // An ext4 "ESP" is refused, naming what it holds.
    let o = hnctl(&["install", "--esp", s(&host), "--hostpart-dev", s(&esp), "--image", s(&img), "--yes"]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hostpart.img is not a FAT EFI system partition: found an ext2/3/4 filesystem"), "{err}");

    // With --yes: done; the other system's files stay.
    let o = hnctl(&[&args[..], &["--yes"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("kept as EFI/BOOT/BOOTX64.EFI.before-hninit"), "{out}");
    let cat = |f: &str| stdout(mtools("mtype", &esp).arg(f));
    assert_eq!(cat("::/EFI/debian/grubx64.efi"), "ANOTHER OS LOADER");
    assert_eq!(cat("::/EFI/BOOT/BOOTX64.EFI.before-hninit"), "ANOTHER OS LOADER");
    let ls = stdout(mtools("mdir", &esp).args(["-/", "-b", "::/EFI"]));
    for f in ["::/EFI/BOOT/BOOTX64.EFI", "::/EFI/hninit/grub.cfg", "::/EFI/hninit/grubenv", "::/EFI/hninit/grubx64.efi"] {
        assert!(ls.contains(f), "{f} missing:\n{ls}");
    }
    let ours = Command::new("mtype").env("MTOOLS_SKIP_CHECK", "1").args(["-i", s(&esp), "::/EFI/BOOT/BOOTX64.EFI"]).output().unwrap();
    assert!(ours.stdout.starts_with(b"MZ"), "GRUB is a PE image");
    assert!(cat("::/EFI/hninit/grub.cfg").contains("real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart"));
    let label = stdout(Command::new("blkid").args(["-o", "value", "-s", "LABEL"]).arg(&host));
    assert_eq!(label.trim(), "hostpart");
    let back = d.path().join("back.img");
    stdout(Command::new("debugfs").args(["-R", &format!("dump /hn-root.img {}", s(&back))]).arg(&host));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&img).unwrap());

    // Again: our own loader is replaced without --yes, but the host partition
    // now holds a filesystem: refused.
    let o = hnctl(&args);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hostpart.img holds an ext2/3/4 filesystem") && err.contains("--yes"), "{err}");

    // Too small a host partition.
    let small = d.path().join("small.img");
    fs::File::create(&small).unwrap().set_len(40 << 20).unwrap();
    let o = hnctl(&["install", "--esp", s(&esp), "--hostpart-dev", s(&small), "--image", s(&img), "--yes"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("small.img is too small: 40 MiB, the image needs 52 MiB"));
}
