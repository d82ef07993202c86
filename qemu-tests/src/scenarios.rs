//! The boot scenarios: each builds its own disk (no root, no loop devices) from
//! artifacts shared by all (kernel, initramfs, root images), boots it in QEMU and
//! checks what a user would see on the console: hninit's lines, the booted
//! root's `HNROOT:` report, or the failure diagnosis and the on_error policy.

mod hostile;
mod hardware;
mod install;
mod gandi;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use qemu_tests::{Ctx, Failure, OrFail, Scenario, Vm};
use xtask::{
    build_disk, build_init, build_workspace_bin, debian_kernel_of, build_initramfs, build_root_image, debian_kernel, fresh_ovmf_vars, qemu_command, Boot,
    DiskIf, DiskLayout, DiskSpec, Drive, EspSpec, GrubVars, HostFs, HostpartSpec, InitramfsSpec, Kernel, QemuSpec,
    RootImageSpec,
};

/// Artifacts every scenario uses, built once per run.
struct Shared {
    kernel: Kernel,
    initramfs: PathBuf,
    /// Root image "A" (reports, then powers off), with /boot/kernel and /boot/initramfs.
    image_a: PathBuf,
    /// Root image "B": the same kernel, another image id (an upgrade).
    image_b: PathBuf,
    /// Image "B-badinit": its /sbin/init exits at once (the kernel panics).
    image_badinit: PathBuf,
    /// A root image without /sbin/init.
    image_noinit: PathBuf,
    /// Not a filesystem at all.
    image_garbage: PathBuf,
}

/// Extra report lines of the test images (sourced by their /sbin/init).
const PROBE_HOOK: &str = r#"
if touch /.hn-write-test 2>/dev/null; then rm -f /.hn-write-test; say "root-writable yes"; else say "root-writable no"; fi
for l in /sys/block/loop*; do [ -e "$l/loop/backing_file" ] && say "loop $(basename $l) ro=$(cat $l/ro) backing=$(cat $l/loop/backing_file) dio=$(cat $l/loop/dio)"; done
[ -e /init ] && say "initramfs-leftover /init" || say "initramfs-leftover none"
say "kernel $(uname -r)"
say "hostpart-files $(ls /hostpart | tr '\n' ' ')"
[ -e /hostpart/hn-state/trial.json ] && say "trial $(cat /hostpart/hn-state/trial.json)"
[ -e /hostpart/hn-state/boot.log ] && tail -n 3 /hostpart/hn-state/boot.log | while read -r l; do say "bootlog ${l#* }"; done
case " $(cat /proc/cmdline) " in
    *" hntest.mark_good "*) hnctl mark-good; say "mark-good exit=$?" ;;
esac
"#;

fn shared() -> Result<&'static Shared, Failure> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| build_shared().map_err(|e| format!("building the shared artifacts: {e:#}")))
        .as_ref()
        .map_err(|e| Failure::new(e.clone()))
}

fn build_shared() -> anyhow::Result<Shared> {
    let dir = qemu_tests::runner::default_out_dir().join("_shared");
    std::fs::create_dir_all(&dir)?;
    let init = build_init()?;
    let kernel = debian_kernel()?;
    let initramfs = dir.join("initramfs.cpio.zst");
    let mut spec = InitramfsSpec::new(&init, &kernel.release, &kernel.modules_dir);
    spec.busybox = Some(PathBuf::from("/bin/busybox"));
    build_initramfs(&spec, &initramfs)?;
    let hnctl = std::fs::read(build_workspace_bin("hnctl")?)?;
    let extra = vec![
        ("/etc/hnroot.d/probe.sh".to_string(), PROBE_HOOK.as_bytes().to_vec(), 0o644),
        ("/usr/sbin/hnctl".to_string(), hnctl, 0o755),
    ];
    let image = |id: &str, extra: Vec<(String, Vec<u8>, u32)>, with_init: bool| -> anyhow::Result<PathBuf> {
        let out = dir.join(format!("image-{id}.img"));
        build_root_image(
            &RootImageSpec {
                kernel: Some((kernel.vmlinuz.clone(), initramfs.clone())),
                image_id: id.into(),
                extra_files: extra,
                with_init,
                ..Default::default()
            },
            &out,
        )?;
        Ok(out)
    };
    let image_a = image("A", extra.clone(), true)?;
    let image_b = image("B", extra.clone(), true)?;
    let mut bad = extra.clone();
    bad.push(("/sbin/init".into(), b"#!/bin/sh\necho 'HNROOT: booted image=B-badinit, failing'\nexit 1\n".to_vec(), 0o755));
    let image_badinit = image("B-badinit", bad, false)?;
    let image_noinit = dir.join("image-noinit.img");
    build_root_image(&RootImageSpec { image_id: "noinit".into(), with_init: false, size_mib: 16, ..Default::default() }, &image_noinit)?;
    let image_garbage = dir.join("image-garbage.img");
    let garbage: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&image_garbage, garbage)?;
    Ok(Shared { kernel, initramfs, image_a, image_b, image_badinit, image_noinit, image_garbage })
}

fn hostpart(files: &[(&str, &Path)]) -> HostpartSpec {
    HostpartSpec {
        files: files.iter().map(|(n, p)| (n.to_string(), p.to_path_buf())).collect(),
        dirs: vec!["data".into(), "hn-state".into()],
        size_mib: 96,
        ..Default::default()
    }
}

fn make_disk(ctx: &Ctx, spec: DiskSpec) -> Result<(PathBuf, DiskLayout), Failure> {
    let out = ctx.dir().join("disk.img");
    let layout = build_disk(&spec, &out).map_err(|e| Failure::new(format!("building the disk: {e:#}")))?;
    Ok((out, layout))
}

fn simple_disk(ctx: &Ctx, hp: HostpartSpec) -> Result<(PathBuf, DiskLayout), Failure> {
    make_disk(ctx, DiskSpec { esp: None, hostpart: hp, extra_hostparts: Vec::new() })
}

/// Kernel command line of direct boots; scenarios append their own keys.
const BASE: &str = "console=ttyS0 panic=-1 hn.reboot_delay=0 hn.timeout=15";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(90);

fn boot_direct(ctx: &mut Ctx, disk: &Path, iface: DiskIf, extra: &str) -> Result<Vm, Failure> {
    let s = shared()?;
    let spec = QemuSpec {
        drives: vec![Drive::on(disk, iface)],
        ..QemuSpec::new(Boot::Direct {
            kernel: s.kernel.vmlinuz.clone(),
            initrd: Some(s.initramfs.clone()),
            append: format!("{BASE} {extra}"),
        })
    };
    let mut vm = ctx.spawn(qemu_command(&spec), BOOT_TIMEOUT)?;
    vm.forbid("Kernel panic");
    Ok(vm)
}

/// The booted root's report must show image `id`, mounted with `mode` (ro/rw).
fn expect_root(vm: &Vm, id: &str, mode: &str) -> Result<(), Failure> {
    vm.expect("hninit: switching root", STEP)?;
    vm.expect(&format!("HNROOT: booted image={id}"), STEP)?;
    let root = vm.expect("HNROOT: root ", STEP)?;
    if !root.contains(&format!("/dev/loop0 ext4 {mode}")) {
        return Err(Failure::new(format!("expected the root on /dev/loop0 ext4 {mode}, got {root:?}")));
    }
    Ok(())
}

fn expect_clean_poweroff(vm: &mut Vm) -> Result<(), Failure> {
    vm.expect("HNROOT: poweroff via /run/initramfs/shutdown", STEP)?;
    vm.expect("hninit: shutdown: old root and host partition unmounted cleanly", STEP)?;
    vm.wait_exit(Duration::from_secs(30))?;
    vm.check_forbidden()?;
    Ok(())
}

/// The host partition's ext4 was unmounted cleanly (no journal to replay).
fn expect_hostpart_clean(ctx: &Ctx, disk: &Path, layout: &DiskLayout) -> Result<(), Failure> {
    let hp = layout.hostpart();
    let part = ctx.dir().join("hostpart.ext4");
    let mut src = std::fs::File::open(disk)?;
    let mut dst = std::fs::File::create(&part)?;
    use std::io::{Read, Seek, SeekFrom};
    src.seek(SeekFrom::Start(hp.start_bytes))?;
    std::io::copy(&mut src.take(hp.size_bytes), &mut dst)?;
    let out = std::process::Command::new("dumpe2fs").arg("-h").arg(&part).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let features = text.lines().find(|l| l.starts_with("Filesystem features:")).unwrap_or("");
    let state = text.lines().find(|l| l.starts_with("Filesystem state:")).unwrap_or("");
    if features.contains("needs_recovery") || !state.contains("clean") {
        return Err(Failure::new(format!("host partition not cleanly unmounted: {state} / {features}")));
    }
    Ok(())
}

/// Kernel timestamp of the console line containing `needle` (`[    1.234567] …`).
fn stamp(vm: &Vm, needle: &str) -> Option<f64> {
    let console = vm.console();
    let line = console.lines().find(|l| l.contains(needle))?;
    let open = line.find('[')?;
    let close = line[open..].find(']')? + open;
    line[open + 1..close].trim().parse().ok()
}

fn direct_boot(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, layout) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "")?;
    vm.forbid("hninit: boot failed");
    vm.expect("hninit: hninit ", STEP)?;
    vm.expect("hninit: host partition LABEL=hostpart is /dev/vda1", STEP)?;
    // Neither ro nor rw: the kernel's default, mounted ro on a writable loop device.
    expect_root(&vm, "A", "ro")?;
    vm.expect("HNROOT: hostpart /dev/vda1 ext4 rw", STEP)?;
    vm.expect("HNROOT: root-writable no", STEP)?;
    // Direct I/O: the image's blocks are not cached twice (host partition + loop).
    vm.expect("HNROOT: loop loop0 ro=0 backing=/hostpart/hn-root.img dio=1", STEP)?;
    vm.expect("HNROOT: initramfs-leftover none", STEP)?;
    if let (Some(a), Some(b), Some(c)) = (stamp(&vm, "hninit: hninit "), stamp(&vm, "hninit: switching root"), stamp(&vm, "hnroot: booted")) {
        ctx.note(format!("kernel time: hninit first line {a:.3} s, last line {b:.3} s (initrd phase {:.3} s), root's first line {c:.3} s", b - a));
    }
    expect_clean_poweroff(&mut vm)?;
    expect_hostpart_clean(ctx, &disk, &layout)
}

/// The handover of systemd >= 253 (Debian 13), without booting Debian: the
/// root's init parks the host partition in /run/shutdown/mounts/<id> before
/// pivoting, as systemd-shutdown does; the shutdown program still finds it by
/// the loop root's backing file and unmounts everything cleanly.
fn shutdown_parked_hostpart(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, layout) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "hntest.park_hostpart")?;
    vm.forbid("detaching it lazily");
    expect_root(&vm, "A", "ro")?;
    vm.expect("HNROOT: hostpart parked", STEP)?;
    vm.expect("HNROOT: poweroff via /run/initramfs/shutdown", STEP)?;
    vm.expect("hninit: shutdown: /oldroot/run/shutdown/mounts/0123456789abcdef moved out of the old root to /hostpart", STEP)?;
    vm.expect("hninit: shutdown: old root and host partition unmounted cleanly", STEP)?;
    vm.wait_exit(Duration::from_secs(30))?;
    vm.check_forbidden()?;
    expect_hostpart_clean(ctx, &disk, &layout)
}

/// The last resort: a process keeps the old root busy, so it is detached
/// lazily and its loop device keeps the image file open. The host partition
/// cannot be unmounted; it must be clean on disk anyway: with a writable loop
/// device (`rw`) it cannot even be remounted read-only and is frozen, with a
/// read-only one (`ro`) it is remounted read-only.
fn shutdown_busy_root(ctx: &mut Ctx, mode: &str, outcome: &str) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, layout) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, &format!("{mode} hntest.busy_root"))?;
    vm.forbid("unmounted cleanly");
    expect_root(&vm, "A", mode)?;
    vm.expect("HNROOT: root held busy", STEP)?;
    vm.expect("hninit: shutdown: /oldroot busy", STEP)?;
    vm.expect(&format!("hninit: shutdown: host partition still busy{outcome}"), STEP)?;
    vm.wait_exit(Duration::from_secs(30))?;
    vm.check_forbidden()?;
    expect_hostpart_clean(ctx, &disk, &layout)
}

fn shutdown_busy_root_rw(ctx: &mut Ctx) -> Result<(), Failure> {
    shutdown_busy_root(ctx, "rw", " and not remountable read-only: frozen and synced")
}

fn shutdown_busy_root_ro(ctx: &mut Ctx) -> Result<(), Failure> {
    shutdown_busy_root(ctx, "ro", ": remounted read-only and synced")
}

fn grub_uefi(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let cfg = GrubVars { timeout: 0, hostpart_label: "hostpart".into(), image_dir: String::new(), cmdline: BASE.to_string() + " rw" }.render();
    let (disk, _) = make_disk(
        ctx,
        DiskSpec { esp: Some(EspSpec { grub_cfg: cfg, grubenv: None }), hostpart: hostpart(&[("hn-root.img", &s.image_a)]), extra_hostparts: Vec::new() },
    )?;
    let mut vm = uefi_boot_to_image_a(ctx, &disk)?;
    vm.expect("HNROOT: root-writable yes", STEP)?;
    expect_clean_poweroff(&mut vm)
}

/// Boots `disk` (ESP + hostpart with image A) through OVMF and GRUB's menu and
/// waits for image A's root, rw, on the host partition /dev/vda2.
pub(crate) fn uefi_boot_to_image_a(ctx: &mut Ctx, disk: &Path) -> Result<Vm, Failure> {
    let vars = fresh_ovmf_vars(ctx.dir()).or_fail("copying OVMF vars")?;
    let spec = QemuSpec { drives: vec![Drive::virtio(disk)], ..QemuSpec::new(Boot::Uefi { vars }) };
    let mut vm = ctx.spawn(qemu_command(&spec), Duration::from_secs(180))?;
    vm.forbid("Kernel panic");
    vm.forbid("hninit: boot failed");
    vm.expect("Linux version", STEP)?;
    vm.expect("real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart", STEP)?;
    expect_root(&vm, "A", "rw")?;
    vm.expect("HNROOT: hostpart /dev/vda2 ext4 rw", STEP)?;
    Ok(vm)
}

fn read_only(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "ro")?;
    expect_root(&vm, "A", "ro")?;
    vm.expect("HNROOT: root-writable no", STEP)?;
    vm.expect("HNROOT: loop loop0 ro=1", STEP)?;
    expect_clean_poweroff(&mut vm)
}

fn read_write(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw loopdev_hostpart_flags=noatime")?;
    expect_root(&vm, "A", "rw")?;
    let hp = vm.expect("HNROOT: hostpart ", STEP)?;
    if !hp.contains("noatime") {
        return Err(Failure::new(format!("loopdev_hostpart_flags=noatime not applied: {hp:?}")));
    }
    vm.expect("HNROOT: root-writable yes", STEP)?;
    vm.expect("HNROOT: loop loop0 ro=0", STEP)?;
    expect_clean_poweroff(&mut vm)
}

fn by_uuid(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    // A label that LABEL=hostpart would not find: only the UUID can.
    let (disk, layout) = simple_disk(ctx, HostpartSpec { label: "somethingelse".into(), ..hostpart(&[("hn-root.img", &s.image_a)]) })?;
    let uuid = layout.hostpart().fs_uuid.clone();
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, &format!("rw loopdev_hostpart=UUID={}", uuid.to_uppercase()))?;
    vm.expect(&format!("hninit: host partition UUID={uuid} is /dev/vda1"), STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

fn by_partlabel(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, HostpartSpec { label: "nolabel".into(), partlabel: "hn host".into(), ..hostpart(&[("hn-root.img", &s.image_a)]) })?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw \"loopdev_hostpart=PARTLABEL=hn host\"")?;
    vm.expect("hninit: host partition PARTLABEL=hn host is /dev/vda1", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

fn by_partuuid(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, layout) = simple_disk(ctx, HostpartSpec { label: "nolabel".into(), ..hostpart(&[("hn-root.img", &s.image_a)]) })?;
    let pu = layout.hostpart().part_uuid.clone();
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, &format!("rw raw_loop_root_host_partition=PARTUUID={pu}"))?;
    vm.expect(&format!("hninit: host partition PARTUUID={pu} is /dev/vda1"), STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

fn subdirectory(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("images/hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw real_root=/images/hn-root.img")?;
    expect_root(&vm, "A", "rw")?;
    vm.expect("backing=/hostpart/images/hn-root.img", STEP)?;
    expect_clean_poweroff(&mut vm)
}

fn btrfs_hostpart(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, HostpartSpec { fs: HostFs::Btrfs, size_mib: 160, ..hostpart(&[("hn-root.img", &s.image_a)]) })?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.expect("TYPE=btrfs LABEL=\"hostpart\"", STEP)?;
    expect_root(&vm, "A", "rw")?;
    vm.expect("HNROOT: hostpart /dev/vda1 btrfs rw", STEP)?;
    // No direct I/O into a checksummed btrfs file (src/loopdev.rs).
    vm.expect("HNROOT: loop loop0 ro=0 backing=/hostpart/hn-root.img dio=0", STEP)?;
    expect_clean_poweroff(&mut vm)
}

fn ahci_disk(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Ahci, "rw")?;
    vm.expect("hninit: loaded drivers:", STEP)?;
    vm.expect("hninit: host partition LABEL=hostpart is /dev/sda1", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

/// A failed boot: the error, the diagnosis lines, then a reboot (QEMU exits: -no-reboot).
fn expect_failure_then_reboot(vm: &mut Vm, error: &str, diagnosis: &[&str]) -> Result<(), Failure> {
    vm.expect(&format!("hninit: boot failed: {error}"), STEP)?;
    for d in diagnosis {
        vm.expect(d, Duration::from_secs(10))?;
    }
    vm.expect("hninit: rebooting in 0 s (hn.on_error=reboot", Duration::from_secs(10))?;
    vm.expect("reboot: Restarting system", Duration::from_secs(20))?;
    vm.wait_exit(Duration::from_secs(20))?;
    if vm.console().contains("HNROOT:") {
        return Err(Failure::new("a root was booted after the failure"));
    }
    vm.check_forbidden()
}

/// The default initramfs carries no xfs module (initramfs/profiles/): an
/// xfs host partition must fail with the fix named, not with a bare ENODEV.
fn hostpart_xfs_no_module(ctx: &mut Ctx) -> Result<(), Failure> {
    let (disk, _) = simple_disk(ctx, HostpartSpec { fs: HostFs::Xfs, dirs: Vec::new(), ..hostpart(&[]) })?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "")?;
    vm.expect("hninit: host partition LABEL=hostpart is /dev/vda1", STEP)?;
    expect_failure_then_reboot(
        &mut vm,
        "/dev/vda1 holds xfs, which this kernel cannot mount: it is not built in and this initramfs has no xfs module (add it: cargo xtask initramfs --add-module xfs",
        &[],
    )
}

fn hostpart_missing(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "loopdev_hostpart=LABEL=nosuch hn.timeout=3")?;
    expect_failure_then_reboot(
        &mut vm,
        "host partition LABEL=nosuch not found after waiting",
        &[
            "looked for the host partition LABEL=nosuch",
            "block devices:",
            "/dev/vda1 (96 MiB) TYPE=ext4 LABEL=\"hostpart\"",
            // The default (server) profile drives the PIIX IDE controller of QEMU's
            // pc machine; the vm profile does not: `vm-profile-hostpart-missing`
            // checks that the diagnosis names the module then. Here ata_piix
            // finds the machine's IDE CD-ROM, whose driver no profile carries.
            "sr_mod for /devices/pci0000:00/0000:00:01.1/ata2/",
        ],
    )
}

fn hostpart_ambiguous(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let second = HostpartSpec { partlabel: "second".into(), size_mib: 16, ..Default::default() };
    let (disk, _) = make_disk(ctx, DiskSpec { esp: None, hostpart: hostpart(&[("hn-root.img", &s.image_a)]), extra_hostparts: vec![second] })?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "")?;
    expect_failure_then_reboot(&mut vm, "host partition LABEL=hostpart is ambiguous: /dev/vda1 and /dev/vda2 all match", &["block devices:"])
}

fn image_missing(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "real_root=/nothere.img")?;
    expect_failure_then_reboot(
        &mut vm,
        "image /hostpart/nothere.img not found on the host partition /dev/vda1",
        &["looked for real_root=/nothere.img", "hn-root.img"],
    )
}

fn image_garbage(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_garbage)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "")?;
    expect_failure_then_reboot(&mut vm, "image /hostpart/hn-root.img: no filesystem recognised", &["block devices:"])
}

fn init_missing(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_noinit)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "")?;
    expect_failure_then_reboot(&mut vm, "init /sbin/init in image /hostpart/hn-root.img cannot be started: not found in the image", &[])
}

fn on_error_shell(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "init=/nonexistent hn.on_error=shell")?;
    vm.expect("hninit: boot failed: init /nonexistent", STEP)?;
    vm.expect("hninit: starting /bin/sh on the console (hn.on_error=shell)", STEP)?;
    // The operator's shell: it reads the console and sees the host partition
    // hninit left mounted.
    vm.send("echo SHELL-$((6*7)); ls /hostpart\n")?;
    vm.expect("SHELL-42", STEP)?;
    vm.expect("hn-root.img", STEP)?;
    vm.send("exit 3\n")?;
    vm.expect("hninit: shell ended (exit status 3)", STEP)?;
    vm.expect("reboot: Restarting system", Duration::from_secs(30))?;
    vm.check_forbidden()?;
    vm.kill();
    Ok(())
}

fn on_error_halt(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "init=/nonexistent hn.on_error=halt hn.frobnicate=1")?;
    vm.expect("hninit: command line: hn.frobnicate: unknown hninit parameter, ignored", STEP)?;
    vm.expect("hninit: boot failed: init /nonexistent", STEP)?;
    vm.expect("hninit: system halted (hn.on_error=halt)", STEP)?;
    vm.expect("reboot: System halted", Duration::from_secs(20))?;
    vm.check_forbidden()?;
    vm.kill();
    Ok(())
}

// ---- Upgrade and rollback ------------------------------------------------------

/// A second kernel release (Debian's cloud flavour) with its own initramfs, and
/// image "B-cloud" carrying it: an upgrade that needs a kexec.
struct Cloud {
    release: String,
    image: PathBuf,
}

fn cloud() -> Result<&'static Cloud, Failure> {
    static CLOUD: OnceLock<Result<Cloud, String>> = OnceLock::new();
    CLOUD
        .get_or_init(|| build_cloud().map_err(|e| format!("building the cloud-kernel image: {e:#}")))
        .as_ref()
        .map_err(|e| Failure::new(e.clone()))
}

fn build_cloud() -> anyhow::Result<Cloud> {
    let dir = qemu_tests::runner::default_out_dir().join("_shared");
    let init = build_init()?;
    let kernel = debian_kernel_of("linux-image-cloud-amd64")?;
    let initramfs = dir.join("initramfs-cloud.cpio.zst");
    build_initramfs(&InitramfsSpec::new(&init, &kernel.release, &kernel.modules_dir), &initramfs)?;
    let image = dir.join("image-B-cloud.img");
    build_root_image(
        &RootImageSpec {
            kernel: Some((kernel.vmlinuz.clone(), initramfs)),
            image_id: "B-cloud".into(),
            extra_files: vec![("/etc/hnroot.d/probe.sh".to_string(), PROBE_HOOK.as_bytes().to_vec(), 0o644)],
            ..Default::default()
        },
        &image,
    )?;
    Ok(Cloud { release: kernel.release, image })
}

/// Artifacts of the signature scenarios: keys made by the real `minisign`, an
/// initramfs trusting K1 and K3 with K3 revoked, and image B signed in every way.
struct Signed {
    /// Trusts K1 and K3, revokes K3.
    initramfs: PathBuf,
    k1_id: String,
    k2_id: String,
    k3_id: String,
    /// Image B and its sidecars: by K1, by K2 (unknown), by K3 (revoked).
    image_b: PathBuf,
    sig_k1: PathBuf,
    sig_k2: PathBuf,
    sig_k3: PathBuf,
    /// Image B with its last byte changed after K1 signed it.
    tampered: PathBuf,
    /// For the key rotation: trusts K1 and K2 (image N's), trusts K2 and K3 (N+1's).
    initramfs_k12: PathBuf,
    initramfs_k23: PathBuf,
}

fn signed() -> Result<&'static Signed, Failure> {
    static SIGNED: OnceLock<Result<Signed, String>> = OnceLock::new();
    SIGNED
        .get_or_init(|| build_signed().map_err(|e| format!("building the signed artifacts: {e:#}")))
        .as_ref()
        .map_err(|e| Failure::new(e.clone()))
}

fn build_signed() -> anyhow::Result<Signed> {
    let s = shared().map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = qemu_tests::runner::default_out_dir().join("_shared/signed");
    std::fs::create_dir_all(&dir)?;
    let minisign = |args: &[&str]| -> anyhow::Result<()> {
        let st = std::process::Command::new("minisign")
            .args(args)
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "minisign {args:?} failed (Debian package minisign)");
        Ok(())
    };
    let mut ids = Vec::new();
    for k in ["k1", "k2", "k3"] {
        minisign(&["-G", "-W", "-f", "-p", &format!("{k}.pub"), "-s", &format!("{k}.key")])?;
        let text = std::fs::read(dir.join(format!("{k}.pub")))?;
        let key = hninit::trust::PublicKey::parse_file(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        ids.push(key.id.to_string());
    }
    let init = build_init()?;
    let initramfs = dir.join("initramfs-signed.cpio.zst");
    let mut spec = InitramfsSpec::new(&init, &s.kernel.release, &s.kernel.modules_dir);
    spec.busybox = Some(PathBuf::from("/bin/busybox"));
    spec.trust_keys = vec![dir.join("k1.pub"), dir.join("k3.pub")];
    spec.revoke_keys = vec![ids[2].clone()];
    build_initramfs(&spec, &initramfs)?;
    let rotation = |keys: [&str; 2], name: &str| -> anyhow::Result<PathBuf> {
        let out = dir.join(name);
        let mut spec = InitramfsSpec::new(&init, &s.kernel.release, &s.kernel.modules_dir);
        spec.busybox = Some(PathBuf::from("/bin/busybox"));
        spec.trust_keys = keys.iter().map(|k| dir.join(format!("{k}.pub"))).collect();
        build_initramfs(&spec, &out)?;
        Ok(out)
    };
    let initramfs_k12 = rotation(["k1", "k2"], "initramfs-k12.cpio.zst")?;
    let initramfs_k23 = rotation(["k2", "k3"], "initramfs-k23.cpio.zst")?;
    let image_b = dir.join("image-B.img");
    std::fs::copy(&s.image_b, &image_b)?;
    let comment = "version=2026.12.5 compat=test-amd64";
    let mut sigs = Vec::new();
    for k in ["k1", "k2", "k3"] {
        let sig = dir.join(format!("image-B.{k}.minisig"));
        minisign(&["-S", "-s", &format!("{k}.key"), "-m", "image-B.img", "-x", sig.to_str().unwrap_or_default(), "-t", comment])?;
        sigs.push(sig);
    }
    let tampered = dir.join("image-B-tampered.img");
    let mut data = std::fs::read(&image_b)?;
    if let Some(last) = data.last_mut() {
        *last ^= 0x01;
    }
    std::fs::write(&tampered, data)?;
    let [sig_k1, sig_k2, sig_k3] = <[PathBuf; 3]>::try_from(sigs).map_err(|_| anyhow::anyhow!("three signatures"))?;
    let [k1_id, k2_id, k3_id] = <[String; 3]>::try_from(ids).map_err(|_| anyhow::anyhow!("three keys"))?;
    Ok(Signed { initramfs, k1_id, k2_id, k3_id, image_b, sig_k1, sig_k2, sig_k3, tampered, initramfs_k12, initramfs_k23 })
}

/// Boots the signed initramfs with image A current and `staged` (with `sig` as
/// its sidecar) staged; returns the VM after hninit's slot decision.
fn boot_signed(ctx: &mut Ctx, staged: &Path, sig: Option<&Path>) -> Result<Vm, Failure> {
    boot_signed_with(ctx, staged, sig, &[])
}

/// [`boot_signed`] with more files on the host partition (state, current sidecar).
fn boot_signed_with(ctx: &mut Ctx, staged: &Path, sig: Option<&Path>, more: &[(&str, &Path)]) -> Result<Vm, Failure> {
    let g = signed()?;
    boot_initramfs_with(ctx, &g.initramfs, staged, sig, more)
}

fn boot_initramfs_with(ctx: &mut Ctx, initramfs: &Path, staged: &Path, sig: Option<&Path>, more: &[(&str, &Path)]) -> Result<Vm, Failure> {
    let s = shared()?;
    let mut files = vec![("hn-root.img", s.image_a.as_path()), ("hn-root-new.img", staged)];
    if let Some(sig) = sig {
        files.push(("hn-root-new.img.minisig", sig));
    }
    files.extend_from_slice(more);
    let (disk, _) = simple_disk(ctx, HostpartSpec { size_mib: 128, ..hostpart(&files) })?;
    let spec = QemuSpec {
        drives: vec![Drive::on(&disk, DiskIf::Virtio)],
        ..QemuSpec::new(Boot::Direct {
            kernel: s.kernel.vmlinuz.clone(),
            initrd: Some(initramfs.to_path_buf()),
            append: format!("{BASE} rw"),
        })
    };
    let mut vm = ctx.spawn(qemu_command(&spec), BOOT_TIMEOUT)?;
    vm.forbid("Kernel panic");
    vm.forbid("hninit: boot failed");
    Ok(vm)
}

fn signed_rejected(ctx: &mut Ctx, staged: &Path, sig: Option<&Path>, reason: &str) -> Result<(), Failure> {
    let mut vm = boot_signed(ctx, staged, sig)?;
    vm.expect(&format!("hninit: staged hn-root-new.img rejected (signature rejected: {reason}"), STEP)?;
    expect_root(&vm, "A", "rw")?;
    let files = files_line(&vm)?;
    let mut present = vec!["hn-root.img", "hn-root-rejected.img"];
    if sig.is_some() {
        present.push("hn-root-rejected.img.minisig");
    }
    expect_files(&files, &present, &["hn-root-new.img", "hn-root-new.img.minisig", "hn-root-old.img"])?;
    vm.expect(&format!("HNROOT: bootlog staged hn-root-new.img rejected (signature rejected: {reason}"), STEP)?;
    expect_clean_poweroff(&mut vm)
}

fn signed_good(ctx: &mut Ctx) -> Result<(), Failure> {
    let g = signed()?;
    let mut vm = boot_signed(ctx, &g.image_b, Some(&g.sig_k1))?;
    let line = vm.expect(&format!("signed by key {} (trusted.d/k1.pub), version=2026.12.5 compat=test-amd64", g.k1_id), STEP)?;
    if !line.contains("hninit: /hostpart/hn-root-new.img: signature verified in ") || !line.contains("bytes): ") {
        return Err(Failure::new(format!("no time and size on the verification line: {line:?}")));
    }
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img", STEP)?;
    expect_root(&vm, "B", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root.img.minisig", "hn-root-old.img"], &["hn-root-new.img", "hn-root-new.img.minisig"])?;
    expect_clean_poweroff(&mut vm)
}

fn signed_unsigned(ctx: &mut Ctx) -> Result<(), Failure> {
    let g = signed()?;
    signed_rejected(ctx, &g.image_b, None, "unsigned: trusted keys are installed but the image has no signature")
}

fn signed_tampered(ctx: &mut Ctx) -> Result<(), Failure> {
    let g = signed()?;
    signed_rejected(ctx, &g.tampered, Some(&g.sig_k1), &format!("bad-signature: the image does not match its signature by key {}", g.k1_id))
}

fn signed_unknown_key(ctx: &mut Ctx) -> Result<(), Failure> {
    let g = signed()?;
    signed_rejected(ctx, &g.image_b, Some(&g.sig_k2), &format!("unknown-key: signed by key {}, which is not in trusted.d/", g.k2_id))
}

fn signed_revoked_key(ctx: &mut Ctx) -> Result<(), Failure> {
    let g = signed()?;
    signed_rejected(ctx, &g.image_b, Some(&g.sig_k3), &format!("revoked-key: signed by key {}, which is revoked", g.k3_id))
}

/// Image N trusts K1 and K2; N+1 is signed by K2 and trusts K2 and K3; then an
/// image signed by K3 is accepted and one signed by K1 is not. (Direct boots pass
/// the running image's initramfs explicitly.)
fn signed_key_rotation(ctx: &mut Ctx) -> Result<(), Failure> {
    let g = signed()?;
    // Running N (keys K1, K2): N+1 signed by K2 is accepted.
    let mut vm = boot_initramfs_with(ctx, &g.initramfs_k12, &g.image_b, Some(&g.sig_k2), &[])?;
    vm.expect(&format!("signed by key {} (trusted.d/k2.pub)", g.k2_id), STEP)?;
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img", STEP)?;
    expect_root(&vm, "B", "rw")?;
    expect_clean_poweroff(&mut vm)?;
    // Running N+1 (keys K2, K3): signed by K3 accepted ...
    let mut vm = boot_initramfs_with(ctx, &g.initramfs_k23, &g.image_b, Some(&g.sig_k3), &[])?;
    vm.expect(&format!("signed by key {} (trusted.d/k3.pub)", g.k3_id), STEP)?;
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img", STEP)?;
    expect_clean_poweroff(&mut vm)?;
    // ... signed by K1 no longer.
    let mut vm = boot_initramfs_with(ctx, &g.initramfs_k23, &g.image_b, Some(&g.sig_k1), &[])?;
    vm.expect(&format!("hninit: staged hn-root-new.img rejected (signature rejected: unknown-key: signed by key {}", g.k1_id), STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

fn signed_downgrade(ctx: &mut Ctx) -> Result<(), Failure> {
    let g = signed()?;
    let floor = ctx.dir().join("trust.json");
    std::fs::write(&floor, r#"{"floor":"2026.12.6"}"#)?;
    let mut vm = boot_signed_with(ctx, &g.image_b, Some(&g.sig_k1), &[("hn-state/trust.json", &floor)])?;
    vm.expect("hninit: staged hn-root-new.img rejected (signature rejected: downgrade: version 2026.12.5 is lower than 2026.12.6", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

fn signed_downgrade_allowed(ctx: &mut Ctx) -> Result<(), Failure> {
    let g = signed()?;
    let floor = ctx.dir().join("trust.json");
    std::fs::write(&floor, r#"{"floor":"2026.12.6"}"#)?;
    let sig = hninit::trust::Signature::parse(&std::fs::read(&g.sig_k1)?).map_err(|e| Failure::new(e.to_string()))?;
    let hex: String = sig.signature.iter().map(|b| format!("{b:02x}")).collect();
    let allow = ctx.dir().join("allow-downgrade.json");
    std::fs::write(&allow, format!(r#"{{"version":"2026.12.5","signature":"{hex}","time":"2026-12-05T09:00:00Z"}}"#))?;
    let more = [("hn-state/trust.json", floor.as_path()), ("hn-state/allow-downgrade.json", allow.as_path())];
    let mut vm = boot_signed_with(ctx, &g.image_b, Some(&g.sig_k1), &more)?;
    vm.expect("version=2026.12.5 compat=test-amd64, downgrade allowed once by the operator", STEP)?;
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img", STEP)?;
    vm.expect("hninit: the operator's downgrade allowance was used up", STEP)?;
    expect_root(&vm, "B", "rw")?;
    expect_clean_poweroff(&mut vm)
}

fn signed_compat_mismatch(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let g = signed()?;
    // The running image A is signed by K1 as another class.
    let dir = qemu_tests::runner::default_out_dir().join("_shared/signed");
    let cur_sig = ctx.dir().join("a.minisig");
    let st = std::process::Command::new("minisign")
        .args(["-S", "-s", "k1.key", "-m"])
        .arg(&s.image_a)
        .arg("-x")
        .arg(&cur_sig)
        .args(["-t", "version=2026.12.1 compat=db-amd64"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        return Err(Failure::new("minisign -S of image A failed"));
    }
    let mut vm = boot_signed_with(ctx, &g.image_b, Some(&g.sig_k1), &[("hn-root.img.minisig", &cur_sig)])?;
    vm.expect("hninit: staged hn-root-new.img rejected (signature rejected: compat-mismatch: the image is compat=test-amd64, the running image is compat=db-amd64", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

fn files_line(vm: &Vm) -> Result<String, Failure> {
    vm.expect("HNROOT: hostpart-files ", STEP)
}

fn expect_files(line: &str, present: &[&str], absent: &[&str]) -> Result<(), Failure> {
    let names: Vec<&str> = line.split("hostpart-files ").nth(1).unwrap_or("").split_whitespace().collect();
    for p in present {
        if !names.contains(p) {
            return Err(Failure::new(format!("{p} missing on the host partition: {line:?}")));
        }
    }
    for a in absent {
        if names.contains(a) {
            return Err(Failure::new(format!("{a} should be gone from the host partition: {line:?}")));
        }
    }
    Ok(())
}

fn upgrade_same_kernel(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", &s.image_b)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img (3 tries to be marked good), the previous image is hn-root-old.img", STEP)?;
    vm.expect("hninit: the new image's kernel is the running one", STEP)?;
    expect_root(&vm, "B", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-old.img"], &["hn-root-new.img"])?;
    vm.expect("HNROOT: trial {", STEP)?;
    expect_clean_poweroff(&mut vm)?;
    // The next boot keeps B, spending a try.
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.expect("hninit: hn-root.img on trial: try 2 of 3", STEP)?;
    expect_root(&vm, "B", "rw")?;
    expect_clean_poweroff(&mut vm)
}

fn upgrade_kexec(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let c = cloud()?;
    let (disk, _) = simple_disk(ctx, HostpartSpec { size_mib: 128, ..hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", &c.image)]) })?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img", STEP)?;
    vm.expect(&format!("hninit: the new image's kernel is {}", c.release), STEP)?;
    vm.expect("hninit: kexec into the new image's kernel with: ", STEP)?;
    vm.expect(&format!("Linux version {}", c.release), STEP)?;
    vm.expect("hninit: command line:", STEP)?;
    expect_root(&vm, "B-cloud", "rw")?;
    vm.expect(&format!("HNROOT: kernel {}", c.release), STEP)?;
    let files = files_line(&vm)?;
    expect_files(&files, &["hn-root.img", "hn-root-old.img"], &["hn-root-new.img"])?;
    if vm.console().matches("hninit: upgraded").count() != 1 {
        return Err(Failure::new("the kexec'd boot rotated again"));
    }
    expect_clean_poweroff(&mut vm)
}

fn revert_by_flag(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let flag = ctx.dir().join("system-revert");
    std::fs::write(&flag, "")?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_b), ("hn-root-old.img", &s.image_a), ("system-revert", &flag)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.expect("hninit: reverted (system-revert flag present): hn-root-old.img is now hn-root.img, the image reverted from is kept as hn-root-broken.img", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-broken.img"], &["hn-root-old.img", "system-revert"])?;
    expect_clean_poweroff(&mut vm)
}

fn revert_by_cmdline(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_b), ("hn-root-old.img", &s.image_a)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw hn.revert=1")?;
    vm.expect("hninit: reverted (hn.revert=1)", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-broken.img"], &["hn-root-old.img"])?;
    expect_clean_poweroff(&mut vm)
}

fn revert_without_old(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let flag = ctx.dir().join("system-revert");
    std::fs::write(&flag, "")?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("system-revert", &flag)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.expect("hninit: revert requested (system-revert flag present) but there is no hn-root-old.img; booting hn-root.img", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img"], &["system-revert", "hn-root-broken.img"])?;
    expect_clean_poweroff(&mut vm)
}

fn staged_rejected(ctx: &mut Ctx, staged: &Path, reason: &str) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", staged)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.expect(&format!("hninit: staged hn-root-new.img rejected ({reason}"), STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-rejected.img"], &["hn-root-new.img", "hn-root-old.img"])?;
    expect_clean_poweroff(&mut vm)
}

fn staged_garbage(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    staged_rejected(ctx, &s.image_garbage, "no filesystem recognised")
}

fn staged_truncated(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let cut = ctx.dir().join("truncated.img");
    let data = std::fs::read(&s.image_b)?;
    std::fs::write(&cut, &data[..data.len() / 4])?;
    staged_rejected(ctx, &cut, "trial mount failed")
}

fn staged_empty(ctx: &mut Ctx) -> Result<(), Failure> {
    let empty = ctx.dir().join("empty.img");
    std::fs::write(&empty, b"")?;
    staged_rejected(ctx, &empty, "only 0 bytes")
}

fn trial_init_fails(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", &s.image_badinit)]))?;
    // Boot 1 rotates B-badinit in; its init exits, the kernel panics (QEMU exits: -no-reboot).
    let boot = |ctx: &mut Ctx| -> Result<Vm, Failure> {
        let s = shared()?;
        let spec = QemuSpec {
            drives: vec![Drive::virtio(&disk)],
            ..QemuSpec::new(Boot::Direct {
                kernel: s.kernel.vmlinuz.clone(),
                initrd: Some(s.initramfs.clone()),
                append: format!("{BASE} rw hn.tries=2"),
            })
        };
        ctx.spawn(qemu_command(&spec), BOOT_TIMEOUT)
    };
    let mut vm = boot(ctx)?;
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img (2 tries", STEP)?;
    vm.expect("HNROOT: booted image=B-badinit, failing", STEP)?;
    vm.expect("Kernel panic", STEP)?;
    vm.wait_exit(Duration::from_secs(30))?;
    let mut vm = boot(ctx)?;
    vm.expect("hninit: hn-root.img on trial: try 2 of 2", STEP)?;
    vm.expect("Kernel panic", STEP)?;
    vm.wait_exit(Duration::from_secs(30))?;
    let mut vm = boot(ctx)?;
    vm.forbid("Kernel panic");
    vm.expect("hninit: reverted (hn-root.img used all 2 tries without being marked good)", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-broken.img"], &["hn-root-old.img"])?;
    expect_clean_poweroff(&mut vm)
}

fn marked_good_stays(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", &s.image_b)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw hn.tries=1 hntest.mark_good")?;
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img (1 tries", STEP)?;
    expect_root(&vm, "B", "rw")?;
    vm.expect("HNROOT: mark-good exit=0", STEP)?;
    expect_clean_poweroff(&mut vm)?;
    // With its only try spent, an unmarked image would revert now; a late
    // hn.revert=auto from a boot loader must not touch it either.
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw hn.revert=auto")?;
    vm.forbid("hninit: reverted");
    vm.expect("hninit: hn.revert=auto ignored: hn-root.img is not on trial (it was marked good)", STEP)?;
    expect_root(&vm, "B", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-old.img"], &["hn-root-broken.img"])?;
    expect_clean_poweroff(&mut vm)
}

/// Image "B-panic": a root whose own kernel cannot boot (its initramfs is garbage).
fn image_kernel_panics() -> Result<&'static PathBuf, Failure> {
    static IMG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMG.get_or_init(|| {
        let s = shared().map_err(|e| e.to_string())?;
        let dir = qemu_tests::runner::default_out_dir().join("_shared");
        let junk = dir.join("garbage-initramfs");
        std::fs::write(&junk, vec![0x5au8; 4096]).map_err(|e| e.to_string())?;
        let out = dir.join("image-B-panic.img");
        build_root_image(
            &RootImageSpec {
                kernel: Some((s.kernel.vmlinuz.clone(), junk)),
                image_id: "B-panic".into(),
                extra_files: vec![("/etc/hnroot.d/probe.sh".to_string(), PROBE_HOOK.as_bytes().to_vec(), 0o644)],
                ..Default::default()
            },
            &out,
        )
        .map_err(|e| format!("{e:#}"))?;
        Ok(out)
    })
    .as_ref()
    .map_err(|e| Failure::new(e.clone()))
}

fn boot_uefi(ctx: &mut Ctx, disk: &Path) -> Result<Vm, Failure> {
    let vars = fresh_ovmf_vars(ctx.dir()).or_fail("copying OVMF vars")?;
    let spec = QemuSpec { drives: vec![Drive::virtio(disk)], ..QemuSpec::new(Boot::Uefi { vars }) };
    ctx.spawn(qemu_command(&spec), Duration::from_secs(180))
}

fn grub_counter_rollback(ctx: &mut Ctx) -> Result<(), Failure> {
    grub_counter_on(ctx, boot_uefi, |_| Ok(()))
}

/// The GRUB counter scenario booting with `boot`, after `prepare` (e.g. GRUB
/// for BIOS put on the disk).
fn grub_counter_on(
    ctx: &mut Ctx,
    boot_uefi: fn(&mut Ctx, &Path) -> Result<Vm, Failure>,
    prepare: fn(&Path) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let s = shared()?;
    let bad = image_kernel_panics()?;
    let cfg = GrubVars { timeout: 0, hostpart_label: "hostpart".into(), image_dir: String::new(), cmdline: BASE.to_string() + " rw hn.tries=2" }.render();
    let (disk, _) = make_disk(
        ctx,
        DiskSpec {
            esp: Some(EspSpec { grub_cfg: cfg, grubenv: None }),
            hostpart: HostpartSpec { size_mib: 128, ..hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", bad)]) },
            extra_hostparts: Vec::new(),
        },
    )?;
    prepare(&disk)?;
    // Boot 1: A's kernel; hninit rotates B-panic in and starts GRUB's counter (2 tries, this one spent).
    let mut vm = boot_uefi(ctx, &disk)?;
    vm.forbid("Kernel panic");
    vm.expect("hninit: upgraded: hn-root-new.img is now hn-root.img (2 tries", STEP)?;
    vm.expect("hninit: boot counter in /dev/vda1's grubenv set", STEP)?;
    expect_root(&vm, "B-panic", "rw")?;
    expect_clean_poweroff(&mut vm)?;
    // Boot 2: GRUB spends the last try before loading B-panic's kernel, which panics.
    let mut vm = boot_uefi(ctx, &disk)?;
    vm.expect("hninit: trial boot, 0 tries left", STEP)?;
    vm.expect("hn.tries_by=grub", STEP)?;
    vm.expect("Kernel panic", STEP)?;
    vm.wait_exit(Duration::from_secs(30))?;
    // Boot 3: no tries left: GRUB boots the previous image with hn.revert=auto.
    let mut vm = boot_uefi(ctx, &disk)?;
    vm.forbid("Kernel panic");
    vm.expect("hninit: automatic revert to hn-root-old.img", STEP)?;
    vm.expect("hninit: reverted (hn.revert=auto)", STEP)?;
    vm.expect("hninit: boot counter in /dev/vda1's grubenv cleared", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-broken.img"], &["hn-root-old.img"])?;
    expect_clean_poweroff(&mut vm)
}

// ---- Power cuts ------------------------------------------------------------------

/// A pristine disk with A current and B staged, and a working copy of it.
fn power_cut_disks(ctx: &mut Ctx) -> Result<(PathBuf, PathBuf), Failure> {
    let s = shared()?;
    let (pristine, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", &s.image_b)]))?;
    Ok((pristine.clone(), ctx.dir().join("work.img")))
}

/// After a power cut, the next boot must boot a complete image and finish the upgrade.
fn boot_after_cut(ctx: &mut Ctx, disk: &Path, what: &str) -> Result<(), Failure> {
    let mut vm = boot_direct(ctx, disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    expect_root(&vm, "B", "rw").map_err(|f| Failure::new(format!("after a power cut {what}: {f}")))?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-old.img"], &["hn-root-new.img", "hn-root-new.img.part"])?;
    expect_clean_poweroff(&mut vm)
}

fn power_cut_at_each_step(ctx: &mut Ctx) -> Result<(), Failure> {
    let (pristine, work) = power_cut_disks(ctx)?;
    // An uninterrupted upgrade with hn.debug tells how many slot steps there are.
    std::fs::copy(&pristine, &work)?;
    let mut vm = boot_direct(ctx, &work, DiskIf::Virtio, "rw hn.debug")?;
    expect_root(&vm, "B", "rw")?;
    expect_clean_poweroff(&mut vm)?;
    let steps: Vec<String> = vm
        .console()
        .lines()
        .filter_map(|l| l.split("hninit: slot step ").nth(1).map(String::from))
        .collect();
    if steps.len() < 8 {
        return Err(Failure::new(format!("only {} slot steps logged: {steps:?}", steps.len())));
    }
    for (k, step) in steps.iter().enumerate() {
        std::fs::copy(&pristine, &work)?;
        let mut vm = boot_direct(ctx, &work, DiskIf::Virtio, "rw hn.debug")?;
        vm.expect(&format!("hninit: slot step {k}: "), STEP)?;
        vm.kill(); // SIGKILL: the guest's unwritten page cache is lost, like a power cut.
        boot_after_cut(ctx, &work, &format!("at step {step}"))?;
    }
    ctx.note(format!("{} power cuts, one at each slot step: every next boot booted image B", steps.len()));
    Ok(())
}

fn power_cut_at_random_moments(ctx: &mut Ctx) -> Result<(), Failure> {
    let (pristine, work) = power_cut_disks(ctx)?;
    // Moments spread over the rotation window and the start of the new root,
    // anchored on the console line that precedes them (a fixed delay after QEMU
    // starts would depend on the machine's load): milliseconds after "mounted
    // ... read-write at /hostpart", then some after "switching root".
    let cuts: [(&str, u64); 7] = [
        ("read-write at /hostpart", 0),
        ("read-write at /hostpart", 15),
        ("read-write at /hostpart", 40),
        ("read-write at /hostpart", 90),
        ("read-write at /hostpart", 170),
        ("hninit: switching root", 0),
        ("HNROOT: booted", 50),
    ];
    for (anchor, ms) in cuts {
        std::fs::copy(&pristine, &work)?;
        let mut vm = boot_direct(ctx, &work, DiskIf::Virtio, "rw")?;
        vm.expect(anchor, STEP)?;
        std::thread::sleep(Duration::from_millis(ms));
        vm.kill();
        let last = vm.console().lines().rev().find(|l| l.contains("hninit:") || l.contains("HNROOT:")).unwrap_or("").to_string();
        boot_after_cut(ctx, &work, &format!("{ms} ms after {anchor:?} (last line: {last:?})"))?;
        ctx.note(format!("cut {ms} ms after {anchor:?}; last line seen: {}", last.trim()));
    }
    Ok(())
}

pub fn all() -> Vec<Scenario> {
    let mut all = vec![
        Scenario { name: "direct-boot", about: "direct kernel boot, ext4 host partition, default mode (ro mount on a writable loop)", run: direct_boot },
        Scenario { name: "shutdown-parked-hostpart", about: "systemd >= 253's handover emulated: host partition parked in /run/shutdown/mounts, still unmounted cleanly", run: shutdown_parked_hostpart },
        Scenario { name: "shutdown-busy-root-rw", about: "old root held busy: lazy detach, host partition frozen (rw loop), clean on disk", run: shutdown_busy_root_rw },
        Scenario { name: "shutdown-busy-root-ro", about: "old root held busy: lazy detach, host partition remounted read-only (ro loop), clean on disk", run: shutdown_busy_root_ro },
        Scenario { name: "grub-uefi", about: "OVMF + GRUB loopback boot from the ESP menu, rw", run: grub_uefi },
        Scenario { name: "ro", about: "`ro`: read-only loop device and mount", run: read_only },
        Scenario { name: "rw", about: "`rw` and loopdev_hostpart_flags=noatime", run: read_write },
        Scenario { name: "uuid", about: "host partition found by filesystem UUID", run: by_uuid },
        Scenario { name: "partlabel", about: "host partition found by GPT partition name (quoted, with a space)", run: by_partlabel },
        Scenario { name: "partuuid", about: "host partition found by PARTUUID via raw_loop_root_host_partition=", run: by_partuuid },
        Scenario { name: "subdir", about: "image in a subdirectory: real_root=/images/hn-root.img", run: subdirectory },
        Scenario { name: "btrfs", about: "btrfs host partition", run: btrfs_hostpart },
        Scenario { name: "ahci", about: "disk on AHCI (ahci + sd_mod loaded by modalias)", run: ahci_disk },
        Scenario { name: "hostpart-missing", about: "no such host partition: diagnosis lists the devices, then reboot", run: hostpart_missing },
        Scenario { name: "hostpart-ambiguous", about: "two partitions labelled hostpart: an error naming both", run: hostpart_ambiguous },
        Scenario { name: "image-missing", about: "real_root names no file: error lists what the partition holds", run: image_missing },
        Scenario { name: "image-garbage", about: "the image is not a filesystem", run: image_garbage },
        Scenario { name: "init-missing", about: "the image has no /sbin/init", run: init_missing },
        Scenario { name: "hostpart-xfs-no-module", about: "an xfs host partition without the xfs module: the error names the fix", run: hostpart_xfs_no_module },
        Scenario { name: "on-error-shell", about: "hn.on_error=shell gives the console a shell; leaving it reboots", run: on_error_shell },
        Scenario { name: "on-error-halt", about: "hn.on_error=halt halts; unknown hn.* keys warn", run: on_error_halt },
        Scenario { name: "upgrade", about: "staged image with the same kernel rotated in; the next boot spends a try", run: upgrade_same_kernel },
        Scenario { name: "upgrade-kexec", about: "staged image with another kernel: kexec into it, no second rotation", run: upgrade_kexec },
        Scenario { name: "revert-flag", about: "system-revert flag: previous image back, the other kept as broken", run: revert_by_flag },
        Scenario { name: "revert-cmdline", about: "hn.revert=1 on the command line (the GRUB revert entry)", run: revert_by_cmdline },
        Scenario { name: "revert-no-old", about: "revert requested with no previous image: flag cleared, current boots", run: revert_without_old },
        Scenario { name: "staged-garbage", about: "a staged image that is no filesystem is rejected", run: staged_garbage },
        Scenario { name: "staged-truncated", about: "a truncated staged image fails its trial mount and is rejected", run: staged_truncated },
        Scenario { name: "staged-empty", about: "an empty staged image is rejected", run: staged_empty },
        Scenario { name: "signed-good", about: "keys trusted: a staged image signed by a trusted key (real minisign) is verified and rotated in with its sidecar", run: signed_good },
        Scenario { name: "signed-unsigned", about: "keys trusted: an unsigned staged image is rejected (unsigned)", run: signed_unsigned },
        Scenario { name: "signed-tampered", about: "keys trusted: one byte changed after signing: rejected (bad-signature)", run: signed_tampered },
        Scenario { name: "signed-unknown-key", about: "keys trusted: signed by another key: rejected (unknown-key)", run: signed_unknown_key },
        Scenario { name: "signed-revoked-key", about: "keys trusted: signed by a key both trusted and revoked: rejected (revoked-key)", run: signed_revoked_key },
        Scenario { name: "signed-key-rotation", about: "K1,K2 → K2,K3: an image signed by K2, then by K3 is accepted, one signed by K1 no longer", run: signed_key_rotation },
        Scenario { name: "signed-downgrade", about: "keys trusted: a signed image below the anti-rollback floor is rejected (downgrade)", run: signed_downgrade },
        Scenario { name: "signed-downgrade-allowed", about: "keys trusted: the operator's one-shot allowance lets that signed image below the floor, once", run: signed_downgrade_allowed },
        Scenario { name: "signed-compat", about: "keys trusted: a signed image of another compat= than the running image's is rejected", run: signed_compat_mismatch },
        Scenario { name: "trial-init-fails", about: "a trial image whose init fails is rolled back after its tries", run: trial_init_fails },
        Scenario { name: "grub-counter", about: "a trial image whose kernel panics is rolled back by GRUB's counter (OVMF)", run: grub_counter_rollback },
        Scenario { name: "power-cut-steps", about: "QEMU killed at each slot step of an upgrade (hn.debug marks them); the next boot completes it", run: power_cut_at_each_step },
        Scenario { name: "power-cut-random", about: "QEMU killed at moments across the rotation and the root's start; the next boot always boots a complete image", run: power_cut_at_random_moments },
        Scenario { name: "marked-good", about: "hnctl mark-good ends the trial; a late hn.revert=auto does nothing", run: marked_good_stays },
    ];
    all.extend(hostile::all());
    all.extend(hardware::all());
    all.extend(install::all());
    all.extend(gandi::all());
    all
}
