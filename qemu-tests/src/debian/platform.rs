//! Issue 14 on the factory Debian 13 image, one VM (the Debian boots are
//! expensive): the platform duties of the booted system, checked over ssh.
//! The machine has the Gandi swap/config disk (`/dev/vdb`), a data disk
//! labelled `www` attached at boot (`/dev/vdc`), one whose ext4 is corrupt
//! (`/dev/vdd`, labelled `bad`), one vCPU of two (`-smp 1,maxcpus=2`) and
//! memory slots; QMP adds data disks, a vCPU and a `pc-dimm` while it runs.
//! Checked in order: the swap disk is active swap (its archive wiped first:
//! hnctl refuses otherwise), the sshd policy is in effect (`sshd -T`), `www`
//! is at `/srv/www`, the corrupt disk is not mounted and its unit's journal
//! says fsck refused it, a hot-added disk without a label appears at
//! `/srv/vde` within 10 s, is unmounted after its idle timeout (read in
//! `/proc/self/mountinfo`, which does not trigger the automount) and
//! `device_del` succeeds; a disk yanked while mounted takes its mount and
//! automount with it; root logs in with the management key; a login
//! prompt runs on the serial console; a hot-added `pc-dimm` and NIC are online
//! (the NIC addressed); with `data_disks` switched off in the host settings, a
//! disk hot-added afterwards is left alone; with `sshd` switched off the drop-in
//! goes and `sshd_config` is unchanged. Only the corrupt disk's unit
//! failed. vCPU hot-add is checked on Debian 12 (`debian-boot-bookworm`).

use super::qmp::Qmp;
use super::*;

/// The host configuration; `{MGMT}` becomes the management public key.
const CONFIG: &str = r#"{"vm_hostname": "plat-host",
 "hninit": {"data_disks": {"idle_timeout": 5},
            "sshd": {"password_authentication": false, "compression": false,
                     "management": true, "management_key": "{MGMT}"}}}"#;

/// A fresh ed25519 key pair in `dir`: (private key path, public key line).
fn key_pair(dir: &Path, name: &str) -> Result<(PathBuf, String), Failure> {
    let key = dir.join(name);
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&key).output()?;
    if !o.status.success() {
        return Err(Failure::new(format!("ssh-keygen: {}", String::from_utf8_lossy(&o.stderr))));
    }
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub")))?;
    Ok((key, public.trim().to_string()))
}

fn ext4_disk(ctx: &Ctx, name: &str, label: Option<&str>, marker: &str) -> Result<PathBuf, Failure> {
    let dir = ctx.dir().join(format!("{name}-tree"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("marker"), marker)?;
    let out = ctx.dir().join(format!("{name}.img"));
    let _ = std::fs::remove_file(&out);
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-E", "root_owner=0:0", "-d"]).arg(&dir);
    if let Some(l) = label {
        c.args(["-L", l]);
    }
    c.arg(&out).arg("32M");
    let o = c.output()?;
    if !o.status.success() {
        return Err(Failure::new(format!("mkfs.ext4 {name}: {}", String::from_utf8_lossy(&o.stderr))));
    }
    Ok(out)
}

/// Polls `script` over ssh (as root) until its output contains `want`.
fn wait_for(m: &Machine, r: &Running, script: &str, want: &str, within: Duration) -> Result<(String, Duration), Failure> {
    wait_until(m, r, script, want, |out| out.contains(want), within)
}

/// Polls `script` over ssh (as root) until `ok` holds for its output (`want`
/// says what is awaited, for the failure).
fn wait_until(m: &Machine, r: &Running, script: &str, want: &str, ok: impl Fn(&str) -> bool, within: Duration) -> Result<(String, Duration), Failure> {
    let t = Instant::now();
    loop {
        let out = m.ssh(r, &m.imgs.root_key, "root", HostKey::Strict, script).unwrap_or_default();
        if ok(&out) {
            return Ok((out, t.elapsed()));
        }
        if t.elapsed() > within {
            let journal = m
                .ssh(r, &m.imgs.root_key, "root", HostKey::Strict, "journalctl --no-pager -o cat -u 'hninit-disk@*' -u 'hninit-hotplug@*' | tail -n 30")
                .unwrap_or_default();
            return Err(vm_failure(
                &r.vm,
                format!("`{script}` did not show {want:?} within {:.0} s; last: {out}\nhninit units' journal:\n{journal}", within.as_secs_f64()),
            ));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn debian_platform(ctx: &mut Ctx) -> Result<(), Failure> {
    let imgs = images(Suite::Trixie)?;
    for n in &imgs.notes {
        ctx.note(n);
    }
    let (mgmt_key, mgmt_pub) = key_pair(ctx.dir(), "mgmt")?;
    let config = CONFIG.replace("{MGMT}", &mgmt_pub);
    let m = Machine::new(ctx, imgs, Some(config.as_bytes()))?;
    let late = ext4_disk(ctx, "late", Some("late"), "late-marker")?;
    let yank = ext4_disk(ctx, "yank", Some("yank"), "yank-marker")?;
    let www = ext4_disk(ctx, "www", Some("www"), "www-marker")?;
    let hot = ext4_disk(ctx, "hot", None, "hot-marker")?;
    // An ext4 whose root inode is cleared, marked as having errors: `fsck.ext4
    // -a` cannot repair that unattended (exit 4).
    let bad = ext4_disk(ctx, "bad", Some("bad"), "bad-marker")?;
    for args in [vec!["debugfs", "-w", "-R", "clri <2>"], vec!["tune2fs", "-E", "force_fsck"]] {
        let o = Command::new(args[0]).args(&args[1..]).arg(&bad).output()?;
        if !o.status.success() {
            return Err(Failure::new(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr))));
        }
    }
    let qmp_path = ctx.dir().join("qmp.sock");
    let _ = std::fs::remove_file(&qmp_path);

    let port = free_port()?;
    let mut spec = QemuSpec::new(Boot::Direct { kernel: imgs.kernel.clone(), initrd: Some(imgs.initramfs.clone()), append: CMDLINE.to_string() });
    spec.memory_mib = 1024;
    spec.nodefaults = true;
    spec.drives.push(Drive::virtio(&m.disk));
    if let Some((s, _)) = &m.swap {
        spec.drives.push(Drive::virtio(s));
    }
    spec.drives.push(Drive::virtio(&www));
    spec.drives.push(Drive::virtio(&bad));
    spec.nic = Some(format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"));
    for a in [
        "-m".to_string(),
        "1024,slots=2,maxmem=2048M".into(),
        "-smp".into(),
        "1,maxcpus=2".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
        "-drive".into(),
        format!("file={},if=none,id=hot0,format=raw", hot.display()),
        "-drive".into(),
        format!("file={},if=none,id=late0,format=raw", late.display()),
        "-drive".into(),
        format!("file={},if=none,id=yank0,format=raw", yank.display()),
    ] {
        spec.extra_args.push(a);
    }
    let started = Instant::now();
    let mut vm = ctx.spawn(qemu_command(&spec), VM_TIMEOUT)?;
    vm.forbid("Kernel panic");
    vm.forbid("hninit: boot failed");
    vm.expect("hninit: switching root", BOOT_WAIT)?;
    vm.expect_any(&["Reached target multi-user.target", "Reached target Multi-User System", "login:"], BOOT_WAIT)?;
    let r = Running { vm, port, started };
    m.root_ssh_ready(ctx, &r, "boot", HostKey::AcceptNew)?;
    let root = |script: &str| m.ssh(&r, &imgs.root_key, "root", HostKey::Strict, script);

    // The swap disk.
    let (swaps, _) = wait_for(&m, &r, "swapon --show=NAME --noheadings", "/dev/vdb", Duration::from_secs(30))?;
    let journal = root("journalctl --no-pager -o cat -u hninit-swap.service")?;
    if !journal.contains("swap: /dev/vdb enabled (its configuration archive was wiped)") {
        return Err(vm_failure(&r.vm, format!("[swap] hninit-swap.service said: {journal}")));
    }
    ctx.note(format!("swap: {} active (hninit-swap: archive wiped first)", swaps.trim()));

    // The sshd policy.
    let t = root("sshd -T | grep -E '^(permitrootlogin|permitemptypasswords|passwordauthentication|compression) ' | sort")?;
    let want = ["compression no", "passwordauthentication no", "permitemptypasswords no"];
    if want.iter().any(|w| !t.lines().any(|l| l == *w)) || !t.lines().any(|l| l == "permitrootlogin without-password" || l == "permitrootlogin prohibit-password") {
        return Err(vm_failure(&r.vm, format!("[sshd] sshd -T shows:\n{t}")));
    }
    ctx.note(format!("sshd -T: {}", t.trim().replace('\n', ", ")));

    // The disk attached at boot, through its automount.
    let (out, _) = wait_for(&m, &r, "cat /srv/www/marker; echo; findmnt -no SOURCE,FSTYPE /srv/www | tail -n 1", "www-marker", Duration::from_secs(30))?;
    let words: Vec<&str> = out.split_whitespace().collect();
    if !words.ends_with(&["/dev/vdc", "ext4"]) {
        return Err(vm_failure(&r.vm, format!("[disks] /srv/www is not /dev/vdc: {out}")));
    }
    ctx.note("disks: the disk labelled www is at /srv/www");

    // The disk with a corrupt filesystem (vdd, labelled bad): fsck refuses it.
    let (j, _) = wait_for(&m, &r, "journalctl --no-pager -o cat -u hninit-disk@vdd.service", "disk vdd: not mounted: fsck -a exited 4", Duration::from_secs(60))?;
    let mi = root("cat /proc/self/mountinfo")?;
    if mi.lines().any(|l| l.contains(" /srv/bad ") || l.contains(" /srv/vdd ")) {
        return Err(vm_failure(&r.vm, format!("[disks] the corrupt disk is mounted:\n{mi}")));
    }
    let why = j.lines().find(|l| l.contains("not mounted")).unwrap_or_default().to_string();
    ctx.note(format!("disks: corrupt vdd not mounted; journal: {}", why.chars().take(160).collect::<String>()));

    // Hot-add a disk without a label.
    let mut q = Qmp::connect(&qmp_path, Duration::from_secs(10))?;
    q.cmd(r#"{"execute": "device_add", "arguments": {"driver": "virtio-blk-pci", "drive": "hot0", "id": "hotdisk"}}"#)?;
    let (_, took) = wait_for(&m, &r, "cat /srv/vde/marker 2>/dev/null", "hot-marker", Duration::from_secs(10))?;
    ctx.note(format!("disks: hot-added disk at /srv/vde {:.1} s after device_add", took.as_secs_f64()));

    // Idle: the ext4 mount goes after the idle timeout (5 s), the automount
    // stays. Polled in /proc/self/mountinfo: nothing touches /srv/vde.
    let (_, idle) = wait_for(
        &m,
        &r,
        "if grep -q ' /srv/vde .* - ext4 ' /proc/self/mountinfo; then echo mounted; else echo idle; fi",
        "idle",
        Duration::from_secs(90),
    )?;
    ctx.note(format!("disks: /srv/vde unmounted {:.1} s after the last access (idle_timeout 5 s)", idle.as_secs_f64()));
    q.cmd(r#"{"execute": "device_del", "arguments": {"id": "hotdisk"}}"#)?;
    q.event("DEVICE_DELETED", Duration::from_secs(90))?;
    wait_for(&m, &r, "test -e /sys/block/vde && echo present || echo gone", "gone", Duration::from_secs(30))?;
    ctx.note("disks: device_del of the idle disk succeeded (DEVICE_DELETED, vde gone in the guest)");

    // A disk yanked while mounted: its mount and automount go with it.
    q.cmd(r#"{"execute": "device_add", "arguments": {"driver": "virtio-blk-pci", "drive": "yank0", "id": "yankdisk"}}"#)?;
    wait_for(&m, &r, "cat /srv/yank/marker 2>/dev/null", "yank-marker", Duration::from_secs(30))?;
    q.cmd(r#"{"execute": "device_del", "arguments": {"id": "yankdisk"}}"#)?;
    q.event("DEVICE_DELETED", Duration::from_secs(90))?;
    let (_, gone) = wait_for(
        &m,
        &r,
        "if grep -q ' /srv/yank ' /proc/self/mountinfo; then echo still; else echo gone; fi",
        "gone",
        Duration::from_secs(30),
    )?;
    ctx.note(format!("disks: a disk yanked while mounted at /srv/yank: mount and automount gone {:.1} s after DEVICE_DELETED", gone.as_secs_f64()));

    // The management key (sshd.management): root accepts it beside its own key.
    let who = m.ssh(&r, &mgmt_key, "root", HostKey::Strict, "grep -c ' hninit-management-key$' /root/.ssh/authorized_keys; grep -c . /root/.ssh/authorized_keys")?;
    if who.split_whitespace().collect::<Vec<_>>() != ["1", "2"] {
        return Err(vm_failure(&r.vm, format!("[sshd] root's authorized_keys: management lines, all lines = {who:?} (want 1, 2)")));
    }
    ctx.note("sshd: the management key logs in as root, beside root's own key");

    // The emergency console (console.enabled): a prompt on ttyS0.
    let c = root("journalctl --no-pager -o cat -u hninit-console.service; systemctl is-active serial-getty@ttyS0.service")?;
    if !c.contains("console: login prompt on /dev/ttyS0 (serial-getty@ttyS0.service)") || !c.trim_end().ends_with("active") {
        return Err(vm_failure(&r.vm, format!("[console] hninit-console / serial-getty@ttyS0: {c}")));
    }
    ctx.note("console: login prompt on /dev/ttyS0 (hninit-console.service)");

    // Memory hot-add: a 256 MiB pc-dimm is online (Linux 6.12 onlines it
    // itself; hninit-hotplug onlines what a kernel leaves offline).
    let mem = "awk '/MemTotal/ {print $2}' /proc/meminfo; grep -l offline /sys/devices/system/memory/memory*/state | wc -l";
    let before: u64 = root(mem)?.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0);
    q.add_dimm("dimm1", 256)?;
    let (now, took) = wait_until(
        &m,
        &r,
        mem,
        "MemTotal up by 256 MiB and no memory block offline",
        |out| {
            let w: Vec<u64> = out.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            w.len() == 2 && w[0] >= before + 250 * 1024 && w[1] == 0
        },
        Duration::from_secs(60),
    )?;
    let after = now.split_whitespace().next().unwrap_or_default().to_string();
    ctx.note(format!("hotplug: pc-dimm of 256 MiB online {:.1} s after device_add (MemTotal {before} -> {after} kB)", took.as_secs_f64()));

    // NIC hot-add: the new interface gets an address (the image's DHCP for
    // every Ethernet interface without a configured address).
    let inet = "ip -4 -o addr show scope global | awk '{print $2}' | sort -u | tr '\\n' ' '";
    let first = root(inet)?;
    q.cmd(r#"{"execute": "netdev_add", "arguments": {"type": "user", "id": "hotnet"}}"#)?;
    q.cmd(r#"{"execute": "device_add", "arguments": {"driver": "virtio-net-pci", "netdev": "hotnet", "id": "hotnic"}}"#)?;
    let (both, took) = wait_until(
        &m,
        &r,
        inet,
        "a second interface with an IPv4 address",
        |out| out.split_whitespace().count() >= 2,
        Duration::from_secs(60),
    )?;
    ctx.note(format!("hotplug: NIC added, addressed {:.1} s after device_add (interfaces with IPv4: {first}-> {both})", took.as_secs_f64()));

    // data_disks off: the same host settings file with the switch off; a disk
    // hot-added afterwards is left alone and says why.
    root("sed -i 's/\"data_disks\":{\"enabled\":null/\"data_disks\":{\"enabled\":false/' /etc/hninit/runtime.host.json && hnctl platform show | grep '^data_disks.enabled'")
        .and_then(|o| if o.contains("= false") { Ok(o) } else { Err(Failure::new(format!("data_disks not switched off: {o}"))) })?;
    q.cmd(r#"{"execute": "device_add", "arguments": {"driver": "virtio-blk-pci", "drive": "late0", "id": "latedisk"}}"#)?;
    let (j, _) = wait_for(
        &m,
        &r,
        "journalctl --no-pager -o cat -u 'hninit-disk@*' | grep 'data disks are switched off'",
        "left alone: data disks are switched off",
        Duration::from_secs(30),
    )?;
    let mi = root("cat /proc/self/mountinfo")?;
    if mi.lines().any(|l| l.contains(" /srv/late ")) {
        return Err(vm_failure(&r.vm, format!("[disks] data_disks off, yet /srv/late is mounted:\n{mi}")));
    }
    ctx.note(format!("disks: data_disks off: the hot-added disk labelled late is not mounted ({})", j.trim()));

    // sshd.enabled off: the drop-in goes, sshd_config is left as it was.
    let before = root("sha256sum /etc/ssh/sshd_config")?;
    let off = root(
        "sed -i 's/\\(\"sshd\":{[^}]*\"enabled\":\\)null/\\1false/' /etc/hninit/runtime.host.json && hnctl platform show | grep -q '^sshd.enabled = false' && \
         systemctl restart hninit-sshd.service && journalctl --no-pager -o cat -u hninit-sshd.service | grep 'sshd: policy' | tail -n 1; \
         test -e /etc/ssh/sshd_config.d/60-hninit.conf && echo drop-in-present; sha256sum /etc/ssh/sshd_config",
    )?;
    if !off.contains("sshd: policy off: removed /etc/ssh/sshd_config.d/60-hninit.conf") || off.contains("drop-in-present") || !off.contains(before.trim()) {
        return Err(vm_failure(&r.vm, format!("[sshd] switched off: {off} (sshd_config before: {before})")));
    }
    ctx.note("sshd: switched off, the drop-in is removed and sshd_config is unchanged (sha256)");

    // vCPU hot-add is checked on Debian 12 (debian-boot-bookworm): Linux 6.12
    // under QEMU 7.2 sizes its CPUs to the enabled ones ("Allowing 1 present
    // CPUs plus 0 hotplug CPUs"), so no second CPU can appear here.
    let units = root("systemctl list-units --state=failed --no-legend --plain 'hninit-*' | cut -d' ' -f1 | tr '\\n' ' '")?;
    if units.trim() != "hninit-disk@vdd.service" {
        return Err(vm_failure(&r.vm, format!("failed hninit units (only the corrupt disk's expected): {units}")));
    }
    m.poweroff(ctx, r, "boot")
}

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "debian-platform",
        about: "factory Debian 13: swap disk active after the wipe, sshd policy (sshd -T), management key, console prompt, www disk at /srv/www, corrupt disk refused, hot-added disk at /srv/vde then idle-unmounted and device_del, yanked while mounted, pc-dimm and NIC hot-add, data_disks and sshd switched off",
        run: debian_platform,
    }]
}
