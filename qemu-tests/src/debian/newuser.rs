//! Issue 13's "Done when" walk-through, `debian-newuser`: a new user's path
//! from a stock Debian 13 server to hninit, driven over ssh.
//!
//! 1. **The stock VM**: the factory's cached trixie debootstrap base (its
//!    package set plus `gdisk dosfstools mtools grub-efi-amd64-bin`, what
//!    `hnctl install` needs, and `xz-utils`, which the package depends on), unpacked, given an fstab root on `/dev/vda`,
//!    networkd DHCP, a hostname and root's test key, and an initramfs-tools
//!    initrd made in a chroot by its own `mkinitramfs` (the base is
//!    debootstrapped with `INITRD=No`); a plain ext4 (`mkfs.ext4 -d`, no root
//!    mount, no loop device). It is booted with its own kernel and that initrd
//!    directly (`-kernel/-initrd`, SeaBIOS): the bootloader of the stock
//!    system is not what is tested, GRUB on the hninit disk is.
//! 2. **The carrier disk** (`/dev/vdb`, ext4 from `mkfs.ext4 -d`): the
//!    `hninit_<ver>_amd64.deb` (`xtask::deb::build_deb`, what `cargo xtask
//!    deb` makes) and the `cloud-amd64` flavour of the base's kernel
//!    (`linux-image-<R>-cloud-amd64`, fetched once with `apt-get download`
//!    from a private trixie apt state and kept in the run's output dir): the
//!    same version with another release name, which sorts after the base's
//!    `-amd64` one, so it becomes the newest kernel. (The kernel cache's
//!    `cloud-amd64` is Debian 12's 6.1: older than trixie's 6.12, the hooks
//!    would rightly keep booting 6.12.)
//! 3. Over ssh on the stock VM: `apt-get install ./hninit_….deb` (it
//!    replaces initramfs-tools: both provide and conflict with
//!    `linux-initramfs-tool`), `hnctl image create --from / --out
//!    /mnt/hn-root.img`, `hnctl install --disk /dev/vdc --image … --yes` on
//!    the third, empty disk, poweroff.
//! 4. The third disk booted through OVMF (removable path, GRUB, loopback of
//!    `hn-root.img`, hninit): ssh answers, `/` is the loop-mounted image. The
//!    image was generalized (README, "Make an image from your system"): its
//!    ssh host key is new (made at first boot by `hninit-ssh-hostkeys.service`)
//!    and its hostname `localhost`, asserted as documented.
//! 5. Inside it: `dpkg -i` of the cloud kernel runs the kernel hook, which
//!    builds the pair for it (`/boot/hninit -> hninit.d/<cloud R>-…`); a
//!    reboot through OVMF and GRUB runs the cloud kernel (`uname -r`, same
//!    host key); `apt-get purge` of it re-points `/boot/hninit` to the first
//!    kernel's pair and its modules are gone; after one more reboot the
//!    first kernel runs again.
//!
//! Measured 780 s under TCG on the loaded test machine (a cached base;
//! the first run debootstraps it, ≈ 4 min more): it runs only when named
//! (`BY_NAME_ONLY`): `cargo run --release -p qemu-tests -- -j 1 debian-newuser`.

use super::*;
use xtask::fresh_ovmf_vars;

/// Packages of the stock system beyond the factory's: the tools `hnctl
/// install` runs (GRUB's EFI modules and grub-mkstandalone, sgdisk,
/// mkfs.vfat, mtools, mkfs.ext4).
/// `xz-utils` is the package's dependency (Debian 13's modules are `.ko.xz`)
/// that a real install has and minbase lacks; the VM has no apt lists.
const STOCK_EXTRA: &[&str] = &["dosfstools", "e2fsprogs", "gdisk", "grub-efi-amd64-bin", "mtools", "xz-utils"];
/// Filesystem sizes (sparse files).
const STOCK_MIB: u64 = 3072;
const CARRIER_MIB: u64 = 4096;
const TARGET_MIB: u64 = 3072;
/// The stock VM's command line.
const STOCK_CMDLINE: &str = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1";
/// One long guest command (apt, image create, install) under TCG.
const LONG_WAIT: Duration = Duration::from_secs(900);
/// Whole life of one VM.
const LIFE: Duration = Duration::from_secs(1500);
/// Host key aliases: the stock system and the image made from it.
const STOCK_ALIAS: &str = "hn-newuser-stock";
const IMAGE_ALIAS: &str = "hn-newuser-image";

pub(super) fn scenario() -> Scenario {
    Scenario {
        name: "debian-newuser",
        about: "stock Debian 13 VM: apt install the .deb, hnctl image create --from /, hnctl install --disk; OVMF boots it; kernel hook on dpkg -i / apt purge of a second kernel",
        run: newuser,
    }
}

fn cmd_ok(c: &mut Command) -> Result<String, Failure> {
    let o = c.output().map_err(|e| Failure::new(format!("starting {c:?}: {e}")))?;
    if !o.status.success() {
        return Err(Failure::new(format!(
            "{c:?}: {}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The stock system's root filesystem, its kernel release and files.
struct Stock {
    disk: PathBuf,
    release: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

/// The base tree made a stock server (see the module doc, step 1).
fn build_stock(ctx: &mut Ctx, pubkey: &str) -> Result<Stock, Failure> {
    let spec = ImageSpec {
        include: STOCK_EXTRA.iter().map(|s| s.to_string()).collect(),
        ..ImageSpec::default()
    };
    let t = Instant::now();
    let (tarball, _, detail) = xtask::factory::base_tarball(&spec).or_fail("the debootstrap base")?;
    ctx.note(format!("stock base {}: {detail}", tarball.display()));
    let tree = ctx.dir().join("stock");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    cmd_ok(Command::new("tar").args(["--numeric-owner", "-I", "zstd", "-xpf"]).arg(&tarball).arg("-C").arg(&tree))?;
    let put = |rel: &str, text: &str, mode: u32| -> Result<(), Failure> {
        let p = tree.join(rel);
        std::fs::create_dir_all(p.parent().expect("in the tree"))?;
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n", 0o644)?;
    put("etc/hostname", "stock-server\n", 0o644)?;
    put("etc/hosts", "127.0.0.1 localhost\n127.0.1.1 stock-server\n", 0o644)?;
    put("etc/systemd/network/50-dhcp.network", "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n", 0o644)?;
    put("root/.ssh/authorized_keys", &format!("{}\n", pubkey.trim()), 0o600)?;
    std::fs::set_permissions(tree.join("root/.ssh"), std::fs::Permissions::from_mode(0o700))?;
    // systemd-firstboot would prompt on the console (the base has no locale set).
    std::os::unix::fs::symlink("/dev/null", tree.join("etc/systemd/system/systemd-firstboot.service"))?;
    cmd_ok(Command::new("chroot").arg(&tree).args(["systemctl", "enable", "--quiet", "systemd-networkd.service", "systemd-resolved.service"]))?;
    let release = std::fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("vmlinuz-").map(str::to_string))
        .max()
        .ok_or_else(|| Failure::new("the base has no /boot/vmlinuz-*"))?;
    if !tree.join("etc/ssh/ssh_host_ed25519_key.pub").is_file() {
        cmd_ok(Command::new("chroot").arg(&tree).args(["ssh-keygen", "-A"]))?;
    }
    // The initramfs-tools initrd a stock install has (the base was made with INITRD=No).
    let t_rd = Instant::now();
    cmd_ok(Command::new("chroot").arg(&tree).args(["mkinitramfs", "-o", &format!("/boot/initrd.img-{release}"), &release]))?;
    ctx.note(format!("stock initrd (mkinitramfs in a chroot): {:.1} s", t_rd.elapsed().as_secs_f64()));
    let vmlinuz = ctx.dir().join("stock-vmlinuz");
    let initrd = ctx.dir().join("stock-initrd");
    std::fs::copy(tree.join(format!("boot/vmlinuz-{release}")), &vmlinuz)?;
    std::fs::copy(tree.join(format!("boot/initrd.img-{release}")), &initrd)?;
    let disk = ctx.dir().join("stock.img");
    cmd_ok(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "stock-root", "-d"]).arg(&tree).arg(&disk).arg(format!("{STOCK_MIB}M")))?;
    let _ = std::fs::remove_dir_all(&tree);
    ctx.note(format!("stock root disk (kernel {release}): {:.1} s", t.elapsed().as_secs_f64()));
    Ok(Stock { disk, release, vmlinuz, initrd })
}

/// `linux-image-<R>-cloud-amd64` of trixie, where `R` is the base's
/// `-amd64` release minus the flavour: `apt-get download` with a private
/// sources list and state (the host's apt is not trixie's), kept in the
/// run's output dir for the next runs.
fn cloud_kernel_deb(release: &str) -> Result<(PathBuf, String), Failure> {
    let base = release
        .strip_suffix("-amd64")
        .ok_or_else(|| Failure::new(format!("the base's kernel {release} is not an -amd64 flavour")))?;
    let cloud = format!("{base}-cloud-amd64");
    let package = format!("linux-image-{cloud}");
    let dir = qemu_tests::runner::default_out_dir().join("_newuser-apt");
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let find = || {
        std::fs::read_dir(&debs).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
        })
    };
    if let Some(p) = find() {
        return Ok((p, cloud));
    }
    for d in ["lists/partial", "cache/archives/partial", "etc"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let sources = dir.join("etc/sources.list");
    std::fs::write(&sources, format!("deb {} trixie main\n", xtask::default_mirror("trixie")))?;
    let opts = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".into(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        format!("Dir::Cache={}", dir.join("cache").display()),
        "Dir::State::status=/dev/null".into(),
        "APT::Architecture=amd64".into(),
    ];
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.current_dir(&debs);
        for o in &opts {
            c.arg("-o").arg(o);
        }
        c.arg("-q").args(args);
        c
    };
    cmd_ok(&mut apt(&["update"]))?;
    cmd_ok(&mut apt(&["download", &package]))?;
    let p = find().ok_or_else(|| Failure::new(format!("apt-get download {package} left no .deb in {}", debs.display())))?;
    Ok((p, cloud))
}

/// One guest: its ssh key and known_hosts.
struct Guest {
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Guest {
    fn ssh_cmd(&self, port: u16, alias: &str, hk: HostKey, script: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.key)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-o")
            .arg(format!("HostKeyAlias={alias}"))
            .arg("-o")
            .arg(match hk {
                HostKey::AcceptNew => "StrictHostKeyChecking=accept-new",
                HostKey::Strict => "StrictHostKeyChecking=yes",
            })
            .args(["-p", &port.to_string(), "root@127.0.0.1", script]);
        c
    }

    /// Retries until sshd answers (`within`), then returns the script's output.
    fn ready(&self, vm: &Vm, port: u16, alias: &str, hk: HostKey, script: &str, within: Duration) -> Result<String, Failure> {
        let until = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < until {
            match run_limited(self.ssh_cmd(port, alias, hk, script), SSH_TRY) {
                Ok(o) if o.status.success() => return Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
                Ok(o) => last = format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => last = e,
            }
            if vm.try_status().is_some() {
                return Err(vm_failure(vm, format!("ssh: QEMU exited ({last})")));
            }
            thread::sleep(Duration::from_secs(2));
        }
        Err(vm_failure(vm, format!("ssh root@127.0.0.1:{port} did not answer within {:.0} s; last: {last}", within.as_secs_f64())))
    }

    /// `script` must succeed within `limit`; returns stdout and stderr together.
    fn run(&self, vm: &Vm, port: u16, alias: &str, script: &str, limit: Duration) -> Result<String, Failure> {
        let o = run_limited(self.ssh_cmd(port, alias, HostKey::Strict, script), limit)
            .map_err(|e| vm_failure(vm, format!("ssh `{script}`: {e}")))?;
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        if !o.status.success() {
            return Err(vm_failure(vm, format!("ssh `{script}`: {}\n{text}", o.status)));
        }
        Ok(text)
    }
}

/// What the booted hninit image reports.
const IMAGE_PROBE: &str = "echo kernel=$(uname -r); \
     echo root=$(findmnt -no SOURCE,FSTYPE /); \
     echo backing=$(cat /sys/block/loop0/loop/backing_file); \
     echo hostpart=$(findmnt -no SOURCE,FSTYPE /hostpart); \
     echo hostname=$(hostname); \
     echo hostkey=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2); \
     echo pair=$(readlink /boot/hninit); \
     echo kernel_link=$(readlink /boot/kernel); \
     echo pairs=$(ls /boot/hninit.d | tr '\\n' ' '); \
     echo modules=$(ls /lib/modules | tr '\\n' ' '); \
     echo hninit=$(dpkg-query -W -f='${Version}' hninit); \
     echo state=$(systemctl is-system-running --wait)";

fn new_vm(ctx: &mut Ctx, boot: Boot, disks: &[&Path], port: u16) -> Result<Vm, Failure> {
    let mut spec = QemuSpec::new(boot);
    spec.memory_mib = 1024;
    spec.nodefaults = true;
    for d in disks {
        spec.drives.push(Drive::virtio(d));
    }
    spec.nic = Some(format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"));
    let mut vm = ctx.spawn(qemu_command(&spec), LIFE)?;
    vm.forbid("Kernel panic");
    vm.forbid("hninit: boot failed");
    Ok(vm)
}

/// A boot of the installed disk through OVMF and GRUB, up to ssh.
fn boot_installed(ctx: &mut Ctx, g: &Guest, vars: &Path, disks: &[&Path], what: &str, hk: HostKey) -> Result<(Vm, u16, String), Failure> {
    let port = free_port()?;
    let t = Instant::now();
    let vm = new_vm(ctx, Boot::Uefi { vars: vars.to_path_buf() }, disks, port)?;
    vm.expect("hninit: switching root", BOOT_WAIT)?;
    let report = g.ready(&vm, port, IMAGE_ALIAS, hk, IMAGE_PROBE, BOOT_WAIT + SSH_WAIT)?;
    ctx.note(format!("{what}: ssh answered {:.1} s after QEMU start", t.elapsed().as_secs_f64()));
    let fail = |m: String| Err(vm_failure(&vm, format!("{what}: {m}\nreport:\n{report}")));
    if !field(&report, "root").starts_with("/dev/loop0 ext4") || field(&report, "backing") != "/hostpart/hn-root.img" {
        return fail("expected / on /dev/loop0 backed by /hostpart/hn-root.img".into());
    }
    if !field(&report, "hostpart").starts_with("/dev/vda2 ext4") {
        return fail("expected /hostpart on /dev/vda2 ext4".into());
    }
    Ok((vm, port, report))
}

/// `systemctl VERB` over ssh; QEMU (`-no-reboot`) must exit, and for an hninit
/// boot its shutdown must report a clean unmount.
fn shut_down(ctx: &mut Ctx, g: &Guest, mut vm: Vm, port: u16, alias: &str, verb: &str, hninit: bool) -> Result<(), Failure> {
    let t = Instant::now();
    g.run(&vm, port, alias, &format!("systemctl {verb} --no-block"), SSH_TRY)?;
    if hninit {
        vm.forbid("detaching it lazily");
        vm.expect("hninit: shutdown: old root and host partition unmounted cleanly", POWEROFF_WAIT)?;
    }
    vm.wait_exit(POWEROFF_WAIT)?;
    vm.check_forbidden()?;
    ctx.note(format!("{verb} -> QEMU exit {:.1} s", t.elapsed().as_secs_f64()));
    Ok(())
}

fn newuser(ctx: &mut Ctx) -> Result<(), Failure> {
    let key = ctx.dir().join("root_ed25519");
    ssh_keygen(&key, "hninit-newuser").or_fail("ssh-keygen")?;
    let pubkey = std::fs::read_to_string(key.with_extension("pub"))?;
    let g = Guest { key, known_hosts: ctx.dir().join("known_hosts") };
    let _ = std::fs::remove_file(&g.known_hosts);

    // Host side: the three disks.
    let stock = build_stock(ctx, &pubkey)?;
    let (kdeb, cloud) = cloud_kernel_deb(&stock.release)?;
    let init = build_init().or_fail("building init")?;
    let hnctl = build_workspace_bin("hnctl").or_fail("building hnctl")?;
    let carrier_dir = ctx.dir().join("carrier");
    let _ = std::fs::remove_dir_all(&carrier_dir);
    let deb = xtask::deb::build_deb(&init, &hnctl, &carrier_dir).or_fail("building the .deb")?;
    std::fs::copy(&kdeb, carrier_dir.join(kdeb.file_name().expect("a file")))?;
    let carrier = ctx.dir().join("carrier.img");
    cmd_ok(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "carrier", "-d"]).arg(&carrier_dir).arg(&carrier).arg(format!("{CARRIER_MIB}M")))?;
    let target = ctx.dir().join("target.img");
    let _ = std::fs::remove_file(&target);
    std::fs::File::create(&target).and_then(|f| f.set_len(TARGET_MIB << 20))?;
    let deb_name = deb.file_name().expect("a file").to_string_lossy().into_owned();
    let kdeb_name = kdeb.file_name().expect("a file").to_string_lossy().into_owned();
    ctx.note(format!("carrier disk: {deb_name}, {kdeb_name}"));

    // Steps 1–3: the stock VM.
    let port = free_port()?;
    let t = Instant::now();
    let vm = new_vm(
        ctx,
        Boot::Direct { kernel: stock.vmlinuz.clone(), initrd: Some(stock.initrd.clone()), append: STOCK_CMDLINE.into() },
        &[&stock.disk, &carrier, &target],
        port,
    )?;
    vm.expect(&format!("Linux version {}", stock.release), BOOT_WAIT)?;
    let probe = "echo root=$(findmnt -no SOURCE,FSTYPE /); echo hostname=$(hostname); \
                 echo hostkey=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2); \
                 echo initramfs_tools=$(dpkg-query -W -f='${db:Status-Status}' initramfs-tools)";
    let report = g.ready(&vm, port, STOCK_ALIAS, HostKey::AcceptNew, probe, BOOT_WAIT + SSH_WAIT)?;
    ctx.note(format!("stock VM: ssh answered {:.1} s after QEMU start", t.elapsed().as_secs_f64()));
    if !field(&report, "root").starts_with("/dev/vda ext4") || field(&report, "initramfs_tools") != "installed" {
        return Err(vm_failure(&vm, format!("expected a stock system on /dev/vda ext4 with initramfs-tools:\n{report}")));
    }
    let stock_key = field(&report, "hostkey").to_string();

    let t = Instant::now();
    let out = g.run(
        &vm,
        port,
        STOCK_ALIAS,
        &format!(
            "set -e; mount /dev/vdb /mnt; DEBIAN_FRONTEND=noninteractive apt-get install -y /mnt/{deb_name} 2>&1; \
             echo hninit=$(dpkg-query -W -f='${{db:Status-Status}}' hninit); \
             echo initramfs_tools=$(dpkg-query -W -f='${{db:Status-Status}}' initramfs-tools 2>/dev/null)"
        ),
        LONG_WAIT,
    )?;
    if field(&out, "hninit") != "installed" || field(&out, "initramfs_tools") == "installed" {
        return Err(vm_failure(&vm, format!("apt-get install ./{deb_name}: expected hninit installed in place of initramfs-tools:\n{out}")));
    }
    ctx.note(format!(
        "stock VM: apt-get install ./{deb_name}: {:.1} s, initramfs-tools now {:?}",
        t.elapsed().as_secs_f64(),
        field(&out, "initramfs_tools")
    ));

    let t = Instant::now();
    let out = g.run(&vm, port, STOCK_ALIAS, "hnctl image create --from / --out /mnt/hn-root.img --headroom 256 2>&1", LONG_WAIT)?;
    let want = format!("kernel {}", stock.release);
    if !out.contains("/mnt/hn-root.img: ext4") || !out.contains(&want) {
        return Err(vm_failure(&vm, format!("hnctl image create printed:\n{out}")));
    }
    ctx.note(format!("stock VM: hnctl image create --from /: {:.1} s: {}", t.elapsed().as_secs_f64(), out.trim()));

    let t = Instant::now();
    let out = g.run(&vm, port, STOCK_ALIAS, "hnctl install --disk /dev/vdc --image /mnt/hn-root.img --yes 2>&1", LONG_WAIT)?;
    if !out.contains("partition 2: hostpart") {
        return Err(vm_failure(&vm, format!("hnctl install printed:\n{out}")));
    }
    ctx.note(format!("stock VM: hnctl install --disk /dev/vdc: {:.1} s", t.elapsed().as_secs_f64()));
    shut_down(ctx, &g, vm, port, STOCK_ALIAS, "poweroff", false)?;

    // Step 4: the installed disk through OVMF; the carrier disk again as vdb.
    let vars = fresh_ovmf_vars(ctx.dir()).or_fail("copying OVMF vars")?;
    let disks: [&Path; 2] = [&target, &carrier];
    let (vm, port, report) = boot_installed(ctx, &g, &vars, &disks, "hninit boot 1", HostKey::AcceptNew)?;
    let fail = |vm: &Vm, m: String, report: &str| Err(vm_failure(vm, format!("{m}\nreport:\n{report}")));
    if field(&report, "kernel") != stock.release || field(&report, "hninit") != xtask::deb::VERSION {
        return fail(&vm, format!("hninit boot 1: expected kernel {} and hninit {} installed", stock.release, xtask::deb::VERSION), &report);
    }
    // Documented: the image is generalized, a new host key and hostname localhost.
    let image_key = field(&report, "hostkey").to_string();
    if image_key.is_empty() || image_key == stock_key || field(&report, "hostname") != "localhost" {
        return fail(
            &vm,
            format!("hninit boot 1: expected the generalized identity (a new host key, not {stock_key}; hostname localhost)"),
            &report,
        );
    }
    let first_pair = field(&report, "pair").to_string();
    if !first_pair.starts_with(&format!("hninit.d/{}-", stock.release)) || field(&report, "kernel_link") != "hninit/kernel" {
        return fail(&vm, format!("hninit boot 1: expected /boot/kernel -> hninit/kernel, /boot/hninit -> hninit.d/{}-…", stock.release), &report);
    }
    ctx.note(format!(
        "hninit boot 1: kernel {}, generalized identity (host key {image_key}, was {stock_key}; hostname localhost), state {}",
        stock.release,
        field(&report, "state")
    ));

    // Step 5: a second kernel package.
    let t = Instant::now();
    let out = g.run(&vm, port, IMAGE_ALIAS, &format!("set -e; mount /dev/vdb /mnt; dpkg -i /mnt/{kdeb_name} 2>&1; readlink /boot/hninit; umount /mnt"), LONG_WAIT)?;
    let pair = out.lines().last().unwrap_or("").trim().to_string();
    if !pair.starts_with(&format!("hninit.d/{cloud}-")) {
        return Err(vm_failure(&vm, format!("dpkg -i {kdeb_name}: expected /boot/hninit -> hninit.d/{cloud}-…:\n{out}")));
    }
    ctx.note(format!("hninit boot 1: dpkg -i {kdeb_name}: {:.1} s, /boot/hninit -> {pair}", t.elapsed().as_secs_f64()));
    shut_down(ctx, &g, vm, port, IMAGE_ALIAS, "reboot", true)?;

    let (vm, port, report) = boot_installed(ctx, &g, &vars, &disks, "hninit boot 2", HostKey::Strict)?;
    if field(&report, "kernel") != cloud || field(&report, "hostkey") != image_key {
        return fail(&vm, format!("hninit boot 2: expected kernel {cloud} and the same host key {image_key}"), &report);
    }
    ctx.note(format!("hninit boot 2: uname -r {cloud}, same host key"));

    let t = Instant::now();
    let out = g.run(&vm, port, IMAGE_ALIAS, &format!("DEBIAN_FRONTEND=noninteractive apt-get purge -y linux-image-{cloud} 2>&1; echo; {IMAGE_PROBE}"), LONG_WAIT)?;
    if field(&out, "pair") != first_pair.as_str() && !field(&out, "pair").starts_with(&format!("hninit.d/{}-", stock.release))
        || field(&out, "modules").contains(&cloud)
        || field(&out, "pairs").contains(&cloud)
    {
        return fail(&vm, format!("apt-get purge linux-image-{cloud}: expected /boot/hninit back on hninit.d/{}-… and no {cloud} modules or pair left", stock.release), &out);
    }
    ctx.note(format!("hninit boot 2: apt-get purge: {:.1} s, /boot/hninit -> {}", t.elapsed().as_secs_f64(), field(&out, "pair")));
    shut_down(ctx, &g, vm, port, IMAGE_ALIAS, "reboot", true)?;

    // The first kernel boots again.
    let (vm, port, report) = boot_installed(ctx, &g, &vars, &disks, "hninit boot 3", HostKey::Strict)?;
    if field(&report, "kernel") != stock.release {
        return fail(&vm, format!("hninit boot 3: expected the first kernel {} again", stock.release), &report);
    }
    ctx.note(format!("hninit boot 3: uname -r {} again", stock.release));
    shut_down(ctx, &g, vm, port, IMAGE_ALIAS, "poweroff", true)
}
