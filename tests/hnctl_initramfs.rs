//! `hnctl initramfs build|update` as the kernel hooks run them: the real binary
//! on a root tree with a fake module index. Two builds are byte-identical; an
//! update that cannot build exits non-zero and leaves the pair.
#![cfg(feature = "image")]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn hnctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hnctl")).args(args).output().unwrap()
}

fn fake_kernel(root: &Path, release: &str) {
    let m = root.join("lib/modules").join(release);
    let dep = "kernel/drivers/block/loop.ko:\nkernel/crypto/crc32c_generic.ko:\nkernel/drivers/block/virtio_blk.ko:\n";
    for l in dep.lines() {
        let p = m.join(l.trim_end_matches(':'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("module {l}")).unwrap();
    }
    fs::write(m.join("modules.dep"), dep).unwrap();
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::write(root.join("boot").join(format!("vmlinuz-{release}")), format!("KERNEL {release}")).unwrap();
}

#[test]
fn build_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fake_kernel(r, "6.1.0-9-amd64");
    fs::write(r.join("init"), b"\x7fELF not really").unwrap();
    let mdir = r.join("lib/modules/6.1.0-9-amd64");
    let mut outs = Vec::new();
    for name in ["a.cpio.zst", "b.cpio.zst"] {
        let o = hnctl(&[
            "initramfs", "build", "--kernel-release", "6.1.0-9-amd64",
            "--modules-dir", mdir.to_str().unwrap(),
            "--module", "virtio_blk", "--init", r.join("init").to_str().unwrap(),
            "--out", r.join(name).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("3 modules"), "{}", String::from_utf8_lossy(&o.stdout));
        outs.push(fs::read(r.join(name)).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(&outs[0][..4], b"\x28\xb5\x2f\xfd", "zstd");
}

#[test]
fn update_switches_and_failure_exits_nonzero() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fake_kernel(r, "6.1.0-9-amd64");
    fs::write(r.join("init"), b"\x7fELF not really").unwrap();
    let root = r.to_str().unwrap();
    let init = r.join("init");
    let base = ["initramfs", "update", "--root", root, "--init", init.to_str().unwrap(), "--module", "virtio_blk"];
    let o = hnctl(&base);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("/boot/kernel, /boot/initramfs: 6.1.0-9-amd64 (boot/hninit.d/6.1.0-9-amd64-"));
    assert_eq!(fs::read_to_string(r.join("boot/kernel")).unwrap(), "KERNEL 6.1.0-9-amd64");
    let before = fs::read(r.join("boot/initramfs")).unwrap();
    // Again: nothing changes.
    let o = hnctl(&base);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already (unchanged)"), "{}", String::from_utf8_lossy(&o.stdout));
    // A newer kernel that lacks a module asked for: exit 1, the pair stays.
    fake_kernel(r, "6.1.0-10-amd64");
    fs::write(r.join("lib/modules/6.1.0-10-amd64/modules.dep"), "kernel/drivers/block/loop.ko:\nkernel/crypto/crc32c_generic.ko:\n").unwrap();
    let o = hnctl(&base);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("building the initramfs for 6.1.0-10-amd64") && err.contains("virtio_blk"), "{err}");
    assert_eq!(fs::read_to_string(r.join("boot/kernel")).unwrap(), "KERNEL 6.1.0-9-amd64");
    assert_eq!(fs::read(r.join("boot/initramfs")).unwrap(), before);
}
