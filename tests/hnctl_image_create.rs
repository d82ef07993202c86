//! `hnctl image create --from DIR`: the real binary on a chroot-like tree with a
//! fake kernel; the image read back with `debugfs -R rdump`: generalized, the
//! old mounts gone from fstab, the package's units enabled (new ssh host
//! keys at first boot), /proc's contents left out, hard links and
//! symlinks kept, `/boot/kernel` + `/boot/initramfs` set for the newest kernel.
#![cfg(feature = "image")]

use std::fs;
use std::path::Path;
use std::process::Command;

fn w(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn kernel(root: &Path, release: &str) {
    let dep = "kernel/drivers/block/loop.ko:\nkernel/crypto/crc32c_generic.ko:\nkernel/drivers/block/virtio_blk.ko:\n";
    for l in dep.lines() {
        w(root, &format!("lib/modules/{release}/{}", l.trim_end_matches(':')), "module");
    }
    w(root, &format!("lib/modules/{release}/modules.dep"), dep);
    w(root, &format!("boot/vmlinuz-{release}"), &format!("KERNEL {release}"));
    w(root, &format!("boot/initrd.img-{release}"), "initramfs-tools' initrd");
}

#[test]
fn image_from_a_root_tree() {
    if Command::new("debugfs").arg("-V").output().is_err() {
        eprintln!("debugfs missing; skipping");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    w(&root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    w(&root, "etc/hostname", "oldserver\n");
    w(&root, "etc/fstab", "UUID=1234 / ext4 errors=remount-ro 0 1\nUUID=ABCD /boot/efi vfat umask=0077 0 1\n");
    w(&root, "etc/ssh/ssh_host_ed25519_key", "secret");
    w(&root, "etc/ssh/sshd_config", "cfg");
    // The hninit package is installed in the source (its units, not enabled).
    w(&root, "lib/systemd/system/hninit-ssh-hostkeys.service", "[Unit]\n");
    w(&root, "lib/systemd/system/hninit-mark-good.service", "[Unit]\n");
    w(&root, "var/log/syslog", "old logs");
    w(&root, "proc/1/status", "a chroot's stray file");
    w(&root, "usr/bin/tool", "tool");
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-link")).unwrap();
    std::os::unix::fs::symlink("tool", root.join("usr/bin/alias")).unwrap();
    kernel(&root, "6.1.0-9-amd64");
    kernel(&root, "6.1.0-10-amd64");
    fs::write(d.path().join("init"), b"\x7fELF not really").unwrap();

    let out = d.path().join("hn-root.img");
    let o = Command::new(env!("CARGO_BIN_EXE_hnctl"))
        .args(["image", "create", "--from"])
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .args(["--headroom", "8", "--module", "virtio_blk", "--init"])
        .arg(d.path().join("init"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("kernel 6.1.0-10-amd64"), "{text}");
    // The source is untouched; no staging directory is left.
    assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), "oldserver\n");
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 3, "root, init, hn-root.img");
    assert!(fs::metadata(&out).unwrap().len() <= 64 << 20, "sized to content: {}", fs::metadata(&out).unwrap().len());

    let x = d.path().join("x");
    fs::create_dir(&x).unwrap();
    let o = Command::new("debugfs").args(["-R", &format!("rdump / {}", x.display())]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = |p: &str| fs::read_to_string(x.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(r("etc/machine-id"), "");
    assert_eq!(r("etc/hostname"), "localhost\n");
    assert!(!x.join("etc/ssh/ssh_host_ed25519_key").exists() && x.join("etc/ssh/sshd_config").exists());
    assert!(!x.join("var/log/syslog").exists());
    // The host keys are gone, so the unit that makes new ones at first boot
    // is enabled (else sshd does not start), as is the trial's mark-good.
    for unit in ["hninit-ssh-hostkeys.service", "hninit-mark-good.service"] {
        assert_eq!(
            fs::read_link(x.join("etc/systemd/system/multi-user.target.wants").join(unit)).unwrap(),
            Path::new("/lib/systemd/system").join(unit),
            "{unit} enabled"
        );
    }
    assert!(x.join("proc").is_dir() && fs::read_dir(x.join("proc")).unwrap().count() == 0);
    let fstab = r("etc/fstab");
    assert!(fstab.contains("# (source system) UUID=1234 / ext4") && !fstab.lines().any(|l| l.starts_with("UUID=")), "{fstab}");
    assert_eq!(fs::read_link(x.join("data0")).unwrap(), Path::new("/hostpart/data"));
    assert_eq!(fs::read_link(x.join("usr/bin/alias")).unwrap(), Path::new("tool"));
    // rdump copies hard links apart: ask the image.
    let st = Command::new("debugfs").args(["-R", "stat /usr/bin/tool"]).arg(&out).output().unwrap();
    assert!(String::from_utf8_lossy(&st.stdout).contains("Links: 2"), "hard link kept: {}", String::from_utf8_lossy(&st.stdout));
    assert!(!x.join("boot/initrd.img-6.1.0-10-amd64").exists());
    // The boot pair: the newest kernel, through the links GRUB follows.
    assert_eq!(r("boot/kernel"), "KERNEL 6.1.0-10-amd64");
    assert_eq!(fs::read_link(x.join("boot/kernel")).unwrap(), Path::new("hninit/kernel"));
    let initramfs = fs::read(x.join("boot/initramfs")).unwrap();
    assert_eq!(&initramfs[..4], b"\x28\xb5\x2f\xfd");
}
