//! QEMU command lines shared by `cargo xtask run` and the boot-test harness:
//! TCG, memory, OVMF pflash with a fresh vars copy (or direct `-kernel`
//! boot), disks on virtio/AHCI/NVMe/virtio-scsi and on the emulated hardware
//! of real servers (MegaRAID, LSI SAS and SCSI, USB, IDE, SD), serial wiring,
//! no reboot.

use crate::util;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Read-only OVMF firmware code.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Template of the writable OVMF variable store (copy it per run).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// How the machine boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// OVMF from the disks; `vars` is a writable copy made by [`fresh_ovmf_vars`].
    Uefi { vars: PathBuf },
    /// SeaBIOS from the disks.
    Bios,
    /// `-kernel/-initrd/-append` (SeaBIOS loads the kernel directly).
    Direct {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: String,
    },
}

/// The controller a disk hangs off.
/// SAS address of the first `mptsas1068` disk (NAA 5, a made-up OUI); the
/// next drives count up from it.
pub const SAS_WWN_BASE: u64 = 0x5000_c500_1e1e_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskIf {
    /// virtio-blk (`/dev/vdX`).
    #[default]
    Virtio,
    /// AHCI SATA (`/dev/sdX`).
    Ahci,
    /// NVMe (`/dev/nvmeXn1`).
    Nvme,
    /// virtio-scsi (`/dev/sdX`).
    VirtioScsi,
    /// LSI MegaRAID SAS 1078 (`megasas`, driver megaraid_sas; `/dev/sdX`).
    Megasas,
    /// LSI SAS 1068 (`mptsas1068`, driver mptsas; `/dev/sdX`); the disk gets a
    /// WWN (`SAS_WWN_BASE` + drive index) as real SAS disks have.
    Mptsas1068,
    /// LSI 53C895A parallel SCSI (`lsi53c895a`, driver sym53c8xx; `/dev/sdX`).
    Lsi53c895a,
    /// USB mass storage (bulk-only) on an xHCI controller (`qemu-xhci`; `/dev/sdX`).
    UsbXhci,
    /// USB mass storage on an EHCI controller (`usb-ehci`; `/dev/sdX`).
    UsbEhci,
    /// USB Attached SCSI (`usb-uas`) on an xHCI controller (`/dev/sdX`).
    Uas,
    /// IDE on the PIIX controller of the `pc` machine (`if=ide`, driver ata_piix; `/dev/sdX`).
    Ide,
    /// An SD card on a PCI SDHCI controller (`sdhci-pci` + `sd-card`; `/dev/mmcblkN`).
    /// QEMU wants the image size to be a power of 2.
    SdCard,
}

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub interface: DiskIf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Writes go to a temporary overlay; the file stays pristine.
    pub snapshot: bool,
    pub readonly: bool,
}

impl Drive {
    /// A raw virtio disk, writable, changes kept.
    pub fn virtio(path: &Path) -> Self {
        Drive {
            path: path.to_path_buf(),
            interface: DiskIf::Virtio,
            format: "raw".into(),
            snapshot: false,
            readonly: false,
        }
    }
    /// A raw disk on `interface`.
    pub fn on(path: &Path, interface: DiskIf) -> Self {
        Drive {
            interface,
            ..Drive::virtio(path)
        }
    }
}

/// Where the first serial port (the console, `ttyS0`) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// QEMU's stdout (no monitor): for harnesses reading a pipe.
    Stdio,
    /// Terminal with the monitor multiplexed (Ctrl-A X quits): interactive.
    MonStdio,
    /// Appended to a file.
    File(PathBuf),
    /// A raw `-serial` value (e.g. `unix:/tmp/s,server,nowait`).
    Raw(String),
}

/// A whole QEMU invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    pub boot: Boot,
    pub memory_mib: u32,
    pub cpus: u32,
    pub drives: Vec<Drive>,
    pub serial: Serial,
    /// `-nic` value, e.g. `user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22`; `None`: no NIC.
    pub nic: Option<String>,
    /// `-machine` value (QEMU's default `pc` when `None`).
    pub machine: Option<String>,
    /// `-nodefaults`: no default CD-ROM (OVMF then skips trying it, ~0.5 s),
    /// no VGA (GRUB then says "no suitable video mode", harmless).
    pub nodefaults: bool,
    /// Appended verbatim.
    pub extra_args: Vec<String>,
}

impl QemuSpec {
    /// 512 MiB, one CPU, serial on stdout, no NIC, no disks.
    pub fn new(boot: Boot) -> Self {
        QemuSpec {
            boot,
            memory_mib: 512,
            cpus: 1,
            drives: Vec::new(),
            serial: Serial::Stdio,
            nic: None,
            machine: None,
            nodefaults: false,
            extra_args: Vec::new(),
        }
    }
}

/// Escapes a value for QEMU's `key=value,...` option syntax (`,` → `,,`).
pub fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The arguments (without the program name) for `spec`.
pub fn qemu_base_args(spec: &QemuSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-accel", "tcg", "-no-reboot", "-display", "none"]);
    push(&[
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.cpus.to_string(),
    ]);
    if let Some(m) = &spec.machine {
        push(&["-machine", m]);
    }
    if spec.nodefaults {
        push(&["-nodefaults"]);
    }
    match &spec.serial {
        Serial::Stdio => push(&["-serial", "stdio", "-monitor", "none"]),
        Serial::MonStdio => push(&["-serial", "mon:stdio"]),
        Serial::File(p) => push(&[
            "-serial",
            &format!("file:{}", p.display()),
            "-monitor",
            "none",
        ]),
        Serial::Raw(s) => push(&["-serial", s, "-monitor", "none"]),
    }
    match &spec.nic {
        Some(n) => push(&["-nic", n]),
        None => push(&["-nic", "none"]),
    }
    match &spec.boot {
        Boot::Uefi { vars } => {
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            ]);
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", qemu_escape(vars)),
            ]);
        }
        Boot::Bios => {}
        Boot::Direct {
            kernel,
            initrd,
            append,
        } => {
            push(&["-kernel", &kernel.to_string_lossy()]);
            if let Some(i) = initrd {
                push(&["-initrd", &i.to_string_lossy()]);
            }
            push(&["-append", append]);
        }
    }
    for (i, d) in spec.drives.iter().enumerate() {
        let mut opts = format!("file={},format={}", qemu_escape(&d.path), d.format);
        if d.snapshot {
            opts.push_str(",snapshot=on");
        }
        if d.readonly {
            opts.push_str(",readonly=on");
        }
        let id = format!("hd{i}");
        match d.interface {
            DiskIf::Virtio => push(&["-drive", &format!("{opts},if=virtio")]),
            DiskIf::Ahci => {
                push(&["-device", &format!("ahci,id=ahci{i}")]);
                push(&["-drive", &format!("{opts},if=none,id={id}")]);
                push(&["-device", &format!("ide-hd,drive={id},bus=ahci{i}.0")]);
            }
            DiskIf::Nvme => {
                push(&["-drive", &format!("{opts},if=none,id={id}")]);
                push(&["-device", &format!("nvme,serial=hn{i},drive={id}")]);
            }
            DiskIf::VirtioScsi | DiskIf::Megasas | DiskIf::Mptsas1068 | DiskIf::Lsi53c895a => {
                let hba = match d.interface {
                    DiskIf::VirtioScsi => "virtio-scsi-pci",
                    DiskIf::Megasas => "megasas",
                    DiskIf::Mptsas1068 => "mptsas1068",
                    _ => "lsi53c895a",
                };
                push(&["-device", &format!("{hba},id=scsi{i}")]);
                push(&["-drive", &format!("{opts},if=none,id={id}")]);
                // A SAS disk has a WWN, its SAS address: QEMU's mptsas reports
                // scsi-hd's `wwn` (0 unless set) as the end device's address,
                // and Linux mptsas attaches no end device at address 0.
                let wwn = if d.interface == DiskIf::Mptsas1068 { format!(",wwn={:#x}", SAS_WWN_BASE + i as u64) } else { String::new() };
                push(&["-device", &format!("scsi-hd,drive={id},bus=scsi{i}.0{wwn}")]);
            }
            DiskIf::UsbXhci | DiskIf::UsbEhci => {
                let hc = if d.interface == DiskIf::UsbXhci { "qemu-xhci" } else { "usb-ehci" };
                push(&["-device", &format!("{hc},id=usb{i}")]);
                push(&["-drive", &format!("{opts},if=none,id={id}")]);
                push(&["-device", &format!("usb-storage,bus=usb{i}.0,drive={id}")]);
            }
            DiskIf::Uas => {
                push(&["-device", &format!("qemu-xhci,id=usb{i}")]);
                push(&["-device", &format!("usb-uas,id=uas{i},bus=usb{i}.0")]);
                push(&["-drive", &format!("{opts},if=none,id={id}")]);
                push(&["-device", &format!("scsi-hd,bus=uas{i}.0,scsi-id=0,lun=0,drive={id}")]);
            }
            DiskIf::Ide => push(&["-drive", &format!("{opts},if=ide")]),
            DiskIf::SdCard => {
                push(&["-device", &format!("sdhci-pci,id=sdhci{i}")]);
                push(&["-drive", &format!("{opts},if=none,id={id}")]);
                push(&["-device", &format!("sd-card,drive={id}")]);
            }
        }
    }
    a.extend(spec.extra_args.iter().cloned());
    a
}

/// A [`Command`] running QEMU for `spec`, in a new process group (so that
/// `kill(-pid, SIGKILL)` takes QEMU and nothing else down).
pub fn qemu_command(spec: &QemuSpec) -> Command {
    let mut c = util::cmd(QEMU);
    c.args(qemu_base_args(spec));
    crate::console::in_new_group(&mut c);
    c
}

/// Copies the OVMF variable store template into `dir` under a name unique to
/// this process and call; returns the copy's path.
pub fn fresh_ovmf_vars(dir: &Path) -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(format!(
        "OVMF_VARS-{}-{}.fd",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::copy(OVMF_VARS, &p).with_context(|| format!("copying {OVMF_VARS} (install ovmf)"))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uefi_args() {
        let mut s = QemuSpec::new(Boot::Uefi {
            vars: "/tmp/v,x.fd".into(),
        });
        s.drives.push(Drive::virtio(Path::new("/tmp/disk.img")));
        s.drives.push(Drive {
            snapshot: true,
            ..Drive::on(Path::new("/tmp/b.img"), DiskIf::Nvme)
        });
        let a = qemu_base_args(&s).join(" ");
        assert!(a.starts_with("-accel tcg -no-reboot"), "{a}");
        assert!(a.contains("-m 512"));
        assert!(a.contains(
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        ));
        assert!(a.contains("file=/tmp/v,,x.fd"));
        assert!(a.contains("-drive file=/tmp/disk.img,format=raw,if=virtio"));
        assert!(a.contains("-drive file=/tmp/b.img,format=raw,snapshot=on,if=none,id=hd1 -device nvme,serial=hn1,drive=hd1"));
        assert!(a.contains("-serial stdio -monitor none"));
        assert!(a.contains("-nic none"));
    }

    #[test]
    fn sas_disk_has_a_wwn() {
        let spec = QemuSpec {
            drives: vec![Drive::on(Path::new("/d"), DiskIf::Mptsas1068), Drive::on(Path::new("/e"), DiskIf::Megasas)],
            ..QemuSpec::new(Boot::Bios)
        };
        let a = qemu_base_args(&spec);
        assert!(a.contains(&"scsi-hd,drive=hd0,bus=scsi0.0,wwn=0x5000c5001e1e0000".to_string()), "{a:?}");
        assert!(a.contains(&"scsi-hd,drive=hd1,bus=scsi1.0".to_string()), "{a:?}");
    }

    #[test]
    fn direct_args() {
        let s = QemuSpec::new(Boot::Direct {
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            append: "console=ttyS0 a=b".into(),
        });
        let a = qemu_base_args(&s);
        let i = a.iter().position(|x| x == "-append").unwrap();
        assert_eq!(a[i + 1], "console=ttyS0 a=b");
        assert!(a.windows(2).any(|w| w[0] == "-kernel" && w[1] == "/k"));
        assert!(!a.iter().any(|x| x.contains("pflash")));
    }
}
