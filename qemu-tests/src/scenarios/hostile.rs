//! Issue 10: whatever is on the disks, the boot goes on. Each scenario puts a
//! hostile or damaged object where hninit reads at boot (a FIFO as the staged
//! digest, as `hn-state/trial.json`, as a staged image's `/boot/kernel`; a raw
//! tar archive on a second disk of an instantiated host; `/etc` as the home of
//! the configured user) and checks that the current image boots within the
//! timeout and that the console names what was set aside or ignored.

use super::{boot_direct, expect_clean_poweroff, expect_files, expect_root, files_line, hostpart, shared, simple_disk, BASE, BOOT_TIMEOUT, STEP};
use qemu_tests::{Ctx, Failure, Scenario};
use std::path::PathBuf;
use std::process::Command;
use xtask::{build_root_image, qemu_command, Boot, DiskIf, Drive, QemuSpec, RootImageSpec};

fn sh(cmd: &mut Command) -> Result<(), Failure> {
    let out = cmd.output().map_err(|e| Failure::new(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

fn fifo(ctx: &Ctx, name: &str) -> Result<PathBuf, Failure> {
    let p = ctx.dir().join(name);
    let _ = std::fs::remove_file(&p);
    sh(Command::new("mkfifo").arg(&p))?;
    Ok(p)
}

fn staged_digest_fifo(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let f = fifo(ctx, "digest.fifo")?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", &s.image_b), ("hn-root-new.img.sha256", &f)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.expect("hninit: staged hn-root-new.img rejected (digest file invalid: /hostpart/hn-root-new.img.sha256 is a FIFO, not a regular file): moved to hn-root-rejected.img; booting hn-root.img", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-rejected.img"], &["hn-root-new.img", "hn-root-new.img.sha256", "hn-root-old.img"])?;
    expect_clean_poweroff(&mut vm)
}

fn trial_fifo(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let f = fifo(ctx, "trial.fifo")?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-state/trial.json", &f)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.expect(
        "hninit: trial state /hostpart/hn-state/trial.json is invalid (/hostpart/hn-state/trial.json is a FIFO, not a regular file): set aside as trial.json.bad-1; no image is on trial",
        STEP,
    )?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)?;
    // The next boot finds nothing to set aside: the state was rebuilt. (The
    // booted root replays boot.log as `HNROOT: bootlog …`, where the first
    // boot's line rightly remains: only hninit's own line is forbidden.)
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: trial state");
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

/// Image B with a FIFO as /boot/kernel (debugfs edits a copy of the shared image).
fn image_with_fifo_kernel(ctx: &Ctx) -> Result<PathBuf, Failure> {
    let s = shared()?;
    let img = ctx.dir().join("image-B-fifo-kernel.img");
    std::fs::copy(&s.image_b, &img)?;
    let cmds = ctx.dir().join("debugfs.cmd");
    std::fs::write(&cmds, "rm /boot/kernel\ncd /boot\nmknod kernel p\n")?;
    sh(Command::new("debugfs").arg("-w").arg("-f").arg(&cmds).arg(&img))?;
    let out = Command::new("debugfs").arg("-R").arg("stat /boot/kernel").arg(&img).output()?;
    if !String::from_utf8_lossy(&out.stdout).contains("Type: FIFO") {
        return Err(Failure::new(format!("debugfs did not make /boot/kernel a FIFO: {}", String::from_utf8_lossy(&out.stdout))));
    }
    Ok(img)
}

fn staged_kernel_fifo(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let bad = image_with_fifo_kernel(ctx)?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-root-new.img", &bad)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.forbid("kexec");
    vm.expect("hninit: staged hn-root-new.img rejected (its /boot/kernel is unusable: /run/hninit/trial/boot/kernel is a FIFO, not a regular file): moved to hn-root-rejected.img; booting hn-root.img", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_files(&files_line(&vm)?, &["hn-root.img", "hn-root-rejected.img"], &["hn-root-new.img", "hn-root-old.img"])?;
    expect_clean_poweroff(&mut vm)
}

/// A 2 MiB data disk without any signature: a tar backup (no config in it) at
/// byte 524288, where a Gandi swap device carries its config archive.
fn raw_tar_disk(ctx: &Ctx) -> Result<PathBuf, Failure> {
    let src = ctx.dir().join("backup");
    std::fs::create_dir_all(src.join("etc"))?;
    std::fs::write(src.join("etc/motd"), "a backup, not a config\n")?;
    let tar = ctx.dir().join("backup.tar");
    sh(Command::new("tar").arg("-C").arg(&src).args(["--format=ustar", "-cf"]).arg(&tar).arg("./etc/motd"))?;
    let disk = ctx.dir().join("data.img");
    let mut bytes = vec![0u8; 2 << 20];
    let t = std::fs::read(&tar)?;
    bytes[524288..524288 + t.len()].copy_from_slice(&t);
    std::fs::write(&disk, bytes)?;
    Ok(disk)
}

fn config_raw_tar_disk(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    // An instantiated host: its stored configuration in hn-state.
    let cfg = ctx.dir().join("config.json");
    std::fs::write(&cfg, r#"{"vm_hostname":"stored-host"}"#)?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &s.image_a), ("hn-state/config.json", &cfg)]))?;
    let data = raw_tar_disk(ctx)?;
    let spec = QemuSpec {
        drives: vec![Drive::on(&disk, DiskIf::Virtio), Drive::on(&data, DiskIf::Virtio)],
        ..QemuSpec::new(Boot::Direct {
            kernel: s.kernel.vmlinuz.clone(),
            initrd: Some(s.initramfs.clone()),
            append: format!("{BASE} rw"),
        })
    };
    let mut vm = ctx.spawn(qemu_command(&spec), BOOT_TIMEOUT)?;
    vm.forbid("Kernel panic");
    vm.forbid("hninit: boot failed");
    vm.forbid("no member gandi/config");
    vm.expect("hninit: config: /dev/vdb has no swap signature: not a configuration source", STEP)?;
    vm.expect("hninit: first boot: instantiated as stored-host from last applied config", STEP)?;
    expect_root(&vm, "A", "rw")?;
    expect_clean_poweroff(&mut vm)
}

/// The image's passwd gives the configured user `alice` the home `/etc`; a hook
/// reports `/etc`'s mode and owner and whether `/etc/.ssh` exists.
const HOME_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001:Alice:/etc:/bin/sh\n";
const HOME_GROUP: &str = "root:x:0:\nalice:x:1001:\n";
const HOME_HOOK: &str = "say \"etc-home $(stat -c '%a %u' /etc) ssh=$([ -e /etc/.ssh ] && echo yes || echo no)\"\n";
const HOME_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILk8jHDcGJtDF7OmqdGHA5EeLclOoNJlYg6fX7DMKhRX alice@laptop";

fn home_etc(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = shared()?;
    let img = ctx.dir().join("image-home-etc.img");
    build_root_image(
        &RootImageSpec {
            kernel: Some((s.kernel.vmlinuz.clone(), s.initramfs.clone())),
            image_id: "A-home".into(),
            extra_files: vec![
                ("/etc/passwd".into(), HOME_PASSWD.as_bytes().to_vec(), 0o644),
                ("/etc/group".into(), HOME_GROUP.as_bytes().to_vec(), 0o644),
                ("/etc/hnroot.d/home.sh".into(), HOME_HOOK.as_bytes().to_vec(), 0o644),
            ],
            ..Default::default()
        },
        &img,
    )
    .map_err(|e| Failure::new(format!("building the image: {e:#}")))?;
    let cfg = ctx.dir().join("config.json");
    std::fs::write(&cfg, format!(r#"{{"vm_hostname":"home-host","vm_conf":{{"user":"alice","ssh_key":"{HOME_KEY}"}}}}"#))?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &img), ("hn-state/config.json", &cfg)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.expect("hninit: first boot: instantiated as home-host", STEP)?;
    vm.expect("first boot: user alice: home /etc exists outside /home; left as it is, no ssh keys installed", STEP)?;
    expect_root(&vm, "A-home", "rw")?;
    vm.expect("HNROOT: etc-home 755 0 ssh=no", STEP)?;
    expect_clean_poweroff(&mut vm)
}

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario { name: "hostile-home-etc", about: "the configured user's passwd home is /etc: /etc keeps mode 755 and owner root, no /etc/.ssh, the console names it", run: home_etc },
        Scenario { name: "hostile-digest-fifo", about: "a FIFO as the staged image's .sha256: the staged image is rejected, the current one boots", run: staged_digest_fifo },
        Scenario { name: "hostile-trial-fifo", about: "a FIFO as hn-state/trial.json: set aside as trial.json.bad-1, the current image boots", run: trial_fifo },
        Scenario { name: "hostile-kernel-fifo", about: "a FIFO as a staged image's /boot/kernel: rejected at its trial mount, never loaded by step 7", run: staged_kernel_fifo },
        Scenario { name: "config-raw-tar-disk", about: "an instantiated host with a raw tar backup on /dev/vdb: not a config source, the host boots with its stored config", run: config_raw_tar_disk },
    ]
}
