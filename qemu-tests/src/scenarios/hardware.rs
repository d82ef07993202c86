//! Boot scenarios for the disks of real servers (issue 17): the host partition
//! behind the emulated RAID/SAS/SCSI HBAs, USB, IDE and SD controllers QEMU has,
//! with the default (`server`) initramfs profile; the `vm` profile on the VM
//! disks; and GRUB for i386-pc under SeaBIOS with its boot counter.

use super::*;
use xtask::Profile;

/// The `vm`-profile initramfs (with busybox, like the shared one).
fn vm_initramfs() -> Result<&'static PathBuf, Failure> {
    static VM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VM.get_or_init(|| {
        let s = shared().map_err(|e| e.to_string())?;
        let out = qemu_tests::runner::default_out_dir().join("_shared").join("initramfs-vm.cpio.zst");
        let init = build_init().map_err(|e| format!("{e:#}"))?;
        let mut spec = InitramfsSpec::new(&init, &s.kernel.release, &s.kernel.modules_dir);
        spec.profile = Some(Profile::Vm);
        spec.busybox = Some(PathBuf::from("/bin/busybox"));
        build_initramfs(&spec, &out).map_err(|e| format!("building the vm-profile initramfs: {e:#}"))?;
        Ok(out)
    })
    .as_ref()
    .map_err(|e| Failure::new(e.clone()))
}

/// A direct boot of `disk` on `iface` with `initramfs`.
pub(super) fn boot_direct_with(ctx: &mut Ctx, disk: &Path, iface: DiskIf, extra: &str, initramfs: &Path) -> Result<Vm, Failure> {
    let s = shared()?;
    let spec = QemuSpec {
        drives: vec![Drive::on(disk, iface)],
        ..QemuSpec::new(Boot::Direct {
            kernel: s.kernel.vmlinuz.clone(),
            initrd: Some(initramfs.to_path_buf()),
            append: format!("{BASE} {extra}"),
        })
    };
    let mut vm = ctx.spawn(qemu_command(&spec), BOOT_TIMEOUT)?;
    vm.forbid("Kernel panic");
    Ok(vm)
}

/// Some `hninit: loaded drivers:` line names `module`.
fn expect_driver_loaded(vm: &Vm, module: &str) -> Result<(), Failure> {
    let console = vm.console();
    let loaded: Vec<&str> = console
        .lines()
        .filter_map(|l| l.split("hninit: loaded drivers: ").nth(1))
        .flat_map(str::split_whitespace)
        .collect();
    if loaded.contains(&module) {
        Ok(())
    } else {
        Err(Failure::new(format!("{module} was not among the drivers hninit loaded: {loaded:?}")))
    }
}

/// Boots image A from a host partition behind `iface`, which the kernel names
/// `dev`, loaded by `driver`; the root reports that host partition.
fn boot_behind(ctx: &mut Ctx, iface: DiskIf, dev: &str, driver: &str, initramfs: Option<&Path>) -> Result<(), Failure> {
    let s = shared()?;
    // QEMU's sd-card wants a power-of-2 image: 1 MiB GPT + 126 MiB + 1 MiB backup GPT.
    let size_mib = if iface == DiskIf::SdCard { 126 } else { 96 };
    let (disk, layout) = simple_disk(ctx, HostpartSpec { size_mib, ..hostpart(&[("hn-root.img", &s.image_a)]) })?;
    let initramfs = initramfs.unwrap_or(&s.initramfs);
    let mut vm = boot_direct_with(ctx, &disk, iface, "rw", initramfs)?;
    vm.forbid("hninit: boot failed");
    vm.expect(&format!("hninit: host partition LABEL=hostpart is {dev}"), STEP)?;
    expect_root(&vm, "A", "rw")?;
    vm.expect(&format!("HNROOT: hostpart {dev} ext4 rw"), STEP)?;
    expect_driver_loaded(&vm, driver)?;
    if let (Some(a), Some(b)) = (stamp(&vm, "hninit: hninit "), stamp(&vm, "hninit: switching root")) {
        ctx.note(format!("initrd phase {:.3} s (hninit's first to last line)", b - a));
    }
    expect_clean_poweroff(&mut vm)?;
    expect_hostpart_clean(ctx, &disk, &layout)
}

fn megasas(ctx: &mut Ctx) -> Result<(), Failure> {
    boot_behind(ctx, DiskIf::Megasas, "/dev/sda1", "megaraid_sas", None)
}
/// LSI SAS 1068 (`mptsas1068`, fusion mptsas). The disk needs a WWN (its SAS
/// address, set by `qemu_base_args`): with scsi-hd's default of 0, QEMU
/// reports the end device at SAS address 0 and mptsas attaches nothing.
fn mptsas(ctx: &mut Ctx) -> Result<(), Failure> {
    boot_behind(ctx, DiskIf::Mptsas1068, "/dev/sda1", "mptsas", None)
}
fn lsi53c895a(ctx: &mut Ctx) -> Result<(), Failure> {
    boot_behind(ctx, DiskIf::Lsi53c895a, "/dev/sda1", "sym53c8xx", None)
}
fn usb_xhci(ctx: &mut Ctx) -> Result<(), Failure> {
    boot_behind(ctx, DiskIf::UsbXhci, "/dev/sda1", "usb_storage", None)
}
fn usb_ehci(ctx: &mut Ctx) -> Result<(), Failure> {
    boot_behind(ctx, DiskIf::UsbEhci, "/dev/sda1", "usb_storage", None)
}
fn uas(ctx: &mut Ctx) -> Result<(), Failure> {
    boot_behind(ctx, DiskIf::Uas, "/dev/sda1", "uas", None)
}
fn ide_piix(ctx: &mut Ctx) -> Result<(), Failure> {
    boot_behind(ctx, DiskIf::Ide, "/dev/sda1", "ata_piix", None)
}
fn sd_card(ctx: &mut Ctx) -> Result<(), Failure> {
    boot_behind(ctx, DiskIf::SdCard, "/dev/mmcblk0p1", "mmc_block", None)
}
fn vm_virtio(ctx: &mut Ctx) -> Result<(), Failure> {
    let i = vm_initramfs()?;
    boot_behind(ctx, DiskIf::Virtio, "/dev/vda1", "virtio_blk", Some(i))
}
fn vm_ahci(ctx: &mut Ctx) -> Result<(), Failure> {
    let i = vm_initramfs()?;
    boot_behind(ctx, DiskIf::Ahci, "/dev/sda1", "ahci", Some(i))
}
fn vm_nvme(ctx: &mut Ctx) -> Result<(), Failure> {
    let i = vm_initramfs()?;
    boot_behind(ctx, DiskIf::Nvme, "/dev/nvme0n1p1", "nvme", Some(i))
}

/// The `vm` profile lacks the legacy ATA drivers: a host partition that is not
/// found is diagnosed with the module the PIIX IDE controller of QEMU's `pc`
/// machine would need.
fn vm_hostpart_missing(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let i = vm_initramfs()?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a)]))?;
    let mut vm = boot_direct_with(ctx, &disk, DiskIf::Virtio, "loopdev_hostpart=LABEL=nosuch hn.timeout=3", i)?;
    expect_failure_then_reboot(
        &mut vm,
        "host partition LABEL=nosuch not found after waiting",
        &[
            "looked for the host partition LABEL=nosuch",
            "block devices:",
            "/dev/vda1 (96 MiB) TYPE=ext4 LABEL=\"hostpart\"",
            "ata_piix or ata_generic for /devices/pci0000:00/0000:00:01.1",
        ],
    )
}

/// SeaBIOS (QEMU's default firmware) booting `disk` from its MBR.
fn boot_bios(ctx: &mut Ctx, disk: &Path) -> Result<Vm, Failure> {
    let spec = QemuSpec { drives: vec![Drive::virtio(disk)], ..QemuSpec::new(Boot::Bios) };
    ctx.spawn(qemu_command(&spec), Duration::from_secs(180))
}

/// SeaBIOS → GRUB i386-pc → the menu → hninit → image A, read-write, from
/// the host partition /dev/vda2; the VM is left running.
pub(super) fn bios_boot_to_image_a(ctx: &mut Ctx, disk: &Path) -> Result<Vm, Failure> {
    let mut vm = boot_bios(ctx, disk)?;
    vm.forbid("Kernel panic");
    vm.forbid("hninit: boot failed");
    vm.forbid("efi: EFI v"); // SeaBIOS, not OVMF, started GRUB
    vm.expect("hninit: boot counter: hn_trial= hn_tries=", STEP)?;
    vm.expect("Command line: BOOT_IMAGE=(loop)/boot/kernel", STEP)?;
    vm.expect("real_root=/hn-root.img loopdev_hostpart=LABEL=hostpart", STEP)?;
    expect_root(&vm, "A", "rw")?;
    vm.expect("HNROOT: hostpart /dev/vda2 ext4 rw", STEP)?;
    Ok(vm)
}

/// GRUB for i386-pc put on a disk `build_disk` made (BIOS boot partition + MBR).
fn install_bios(disk: &Path) -> Result<(), Failure> {
    let b = xtask::install_bios_grub(disk).or_fail("installing GRUB for BIOS")?;
    if b.partition != 3 {
        return Err(Failure::new(format!("the BIOS boot partition is number {}, expected 3 (after the ESP and hostpart)", b.partition)));
    }
    Ok(())
}

/// SeaBIOS → boot.img in the MBR → core.img in the BIOS boot partition →
/// the ESP's /EFI/hninit/grub.cfg → the image's kernel → hninit.
fn bios_grub(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let cfg = GrubVars { timeout: 0, hostpart_label: "hostpart".into(), image_dir: String::new(), cmdline: BASE.to_string() + " rw" }.render();
    let (disk, layout) = make_disk(
        ctx,
        DiskSpec { esp: Some(EspSpec { grub_cfg: cfg, grubenv: None }), hostpart: hostpart(&[("hn-root.img", &s.image_a)]), extra_hostparts: Vec::new() },
    )?;
    install_bios(&disk)?;
    let mut vm = bios_boot_to_image_a(ctx, &disk)?;
    expect_clean_poweroff(&mut vm)?;
    expect_hostpart_clean(ctx, &disk, &layout)
}

/// `grub-counter` under SeaBIOS: rotation, GRUB's trial counter in the ESP's
/// grubenv (save_env writes through the BIOS disk services), and the
/// automatic revert of an image whose kernel panics.
fn bios_grub_counter(ctx: &mut Ctx) -> Result<(), Failure> {
    grub_counter_on(ctx, boot_bios, install_bios)
}

pub(super) fn all() -> Vec<Scenario> {
    vec![
        Scenario { name: "hw-megasas", about: "host partition behind an LSI MegaRAID SAS (megasas: megaraid_sas), default profile", run: megasas },
        Scenario { name: "hw-mptsas", about: "LSI SAS 1068 (mptsas1068, a disk with a WWN): the default profile boots the host partition through fusion mptsas", run: mptsas },
        Scenario { name: "hw-lsi53c895a", about: "host partition behind an LSI 53C895A SCSI HBA (sym53c8xx), default profile", run: lsi53c895a },
        Scenario { name: "hw-usb-xhci", about: "host partition on a USB stick (usb-storage) on xHCI, default profile", run: usb_xhci },
        Scenario { name: "hw-usb-ehci", about: "host partition on a USB stick (usb-storage) on EHCI, default profile", run: usb_ehci },
        Scenario { name: "hw-uas", about: "host partition on a USB Attached SCSI disk (usb-uas) on xHCI, default profile", run: uas },
        Scenario { name: "hw-ide", about: "host partition on IDE on the PIIX controller (ata_piix), default profile", run: ide_piix },
        Scenario { name: "hw-sd", about: "host partition on an SD card (sdhci-pci + sd-card: mmc_block), default profile", run: sd_card },
        Scenario { name: "vm-profile-virtio", about: "the vm initramfs profile boots virtio-blk", run: vm_virtio },
        Scenario { name: "vm-profile-ahci", about: "the vm initramfs profile boots AHCI", run: vm_ahci },
        Scenario { name: "vm-profile-nvme", about: "the vm initramfs profile boots NVMe", run: vm_nvme },
        Scenario { name: "bios-grub", about: "SeaBIOS boots GRUB i386-pc from a BIOS boot partition, the hninit menu, image A", run: bios_grub },
        Scenario { name: "bios-grub-counter", about: "under SeaBIOS, GRUB's counter rolls back a trial image whose kernel panics (as grub-counter under OVMF)", run: bios_grub_counter },
        Scenario { name: "vm-profile-hostpart-missing", about: "vm profile, no host partition: the diagnosis names ata_piix for the PIIX IDE controller", run: vm_hostpart_missing },
    ]
}
