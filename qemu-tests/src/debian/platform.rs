//! Issue 14 on the factory Debian 13 image, one VM (the Debian boots are
//! expensive): the platform duties of the booted system, checked over ssh.
//! The machine has the Gandi swap/config disk (`/dev/vdb`), a data disk
//! labelled `www` attached at boot (`/dev/vdc`), one vCPU of two
//! (`-smp 1,maxcpus=2`) and memory slots; QMP adds a second data disk without
//! a label, a vCPU and a `pc-dimm` while it runs. Checked in order:
//! the swap disk is active swap (its archive wiped first: hnctl refuses
//! otherwise), the sshd policy is in effect (`sshd -T`), `www` is at
//! `/srv/www`, the hot-added disk appears at `/srv/vdd` within 10 s, no
//! hninit unit failed. (Idle unmount, device_del and CPU/memory hot-add are
//! not checked yet.)

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

const CONFIG: &str = r#"{"vm_hostname": "plat-host",
 "hninit": {"data_disks": {"idle_timeout": 5},
            "sshd": {"password_authentication": false, "compression": false}}}"#;

/// A small QMP client: one command at a time, events skipped.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(path: &Path, within: Duration) -> Result<Qmp, Failure> {
        let until = Instant::now() + within;
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > until => return Err(Failure::new(format!("QMP {}: {e}", path.display()))),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = Qmp { r: BufReader::new(s.try_clone()?), w: s };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting)?;
        q.cmd(r#"{"execute": "qmp_capabilities"}"#)?;
        Ok(q)
    }

    /// Sends `json`; returns the `return` line, or the error as a failure.
    fn cmd(&mut self, json: &str) -> Result<String, Failure> {
        self.w.write_all(json.as_bytes())?;
        self.w.write_all(b"\n")?;
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(Failure::new(format!("QMP closed after {json}")));
            }
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                return Err(Failure::new(format!("QMP {json}: {}", line.trim())));
            }
        }
    }

    /// Waits for the event `name` (e.g. DEVICE_DELETED).
    #[allow(dead_code)] // for the device_del check still to write (issue 14)
    fn event(&mut self, name: &str) -> Result<String, Failure> {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(Failure::new(format!("QMP closed waiting for {name}")));
            }
            if line.contains(&format!("\"event\": \"{name}\"")) {
                return Ok(line);
            }
        }
    }
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
    let t = Instant::now();
    loop {
        let out = m.ssh(r, &m.imgs.root_key, "root", HostKey::Strict, script).unwrap_or_default();
        if out.contains(want) {
            return Ok((out, t.elapsed()));
        }
        if t.elapsed() > within {
            let journal = m
                .ssh(r, &m.imgs.root_key, "root", HostKey::Strict, "journalctl --no-pager -o cat -u 'hninit-disk@*' -u hninit-hotplug.service | tail -n 30")
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
    let m = Machine::new(ctx, imgs, Some(CONFIG.as_bytes()))?;
    let www = ext4_disk(ctx, "www", Some("www"), "www-marker")?;
    let hot = ext4_disk(ctx, "hot", None, "hot-marker")?;
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

    // Hot-add a disk without a label.
    let mut q = Qmp::connect(&qmp_path, Duration::from_secs(10))?;
    q.cmd(r#"{"execute": "device_add", "arguments": {"driver": "virtio-blk-pci", "drive": "hot0", "id": "hotdisk"}}"#)?;
    let (_, took) = wait_for(&m, &r, "cat /srv/vdd/marker 2>/dev/null", "hot-marker", Duration::from_secs(10))?;
    ctx.note(format!("disks: hot-added disk at /srv/vdd {:.1} s after device_add", took.as_secs_f64()));
    // Not checked yet (issue 14 left open): the idle unmount and device_del,
    // and vCPU / pc-dimm hot-add. A first attempt polled with `findmnt`, which
    // may itself keep the automount busy; see the closing note of the stop.
    let units = root("systemctl list-units --state=failed --no-legend --plain 'hninit-*' | cut -d' ' -f1 | tr '\\n' ' '")?;
    if !units.trim().is_empty() {
        return Err(vm_failure(&r.vm, format!("failed hninit units: {units}")));
    }
    m.poweroff(ctx, r, "boot")
}

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "debian-platform",
        about: "factory Debian 13: swap disk active after the wipe, sshd policy (sshd -T), www disk at /srv/www, hot-added disk at /srv/vdd via QMP",
        run: debian_platform,
    }]
}
