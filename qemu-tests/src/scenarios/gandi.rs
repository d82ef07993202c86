//! Issue 14: `vm_conf.run` on images whose init is not systemd (the busybox
//! test image). With `/etc/rc.local` (run by the image's init, as sysvinit's
//! rc.local service does) the command runs once, and not again at the next
//! boot; with no mechanism the image still boots and the console and
//! `boot.log` name the command that was not scheduled.

use super::{boot_direct, expect_clean_poweroff, expect_root, hostpart, shared, simple_disk, STEP, PROBE_HOOK};
use qemu_tests::{Ctx, Failure, Scenario};
use std::path::PathBuf;
use xtask::{build_root_image, RootImageSpec};

/// The command: one console line and one line per run on the host partition.
const CONFIG: &str = r##"{"vm_hostname": "busy1", "vm_conf": {"run": "#!/bin/sh\necho \"HNROOT: run-once ran args=$1,$2\" > /dev/console\necho ran >> /hostpart/data/runs\n", "script_args": "a b"}}"##;

/// Reports how many times the command ran (sourced by the image's init after
/// rc.local, hooks run in name order).
const RUNS_HOOK: &str = "say \"runs $(cat /hostpart/data/runs 2>/dev/null | wc -l)\"\n";

fn image(ctx: &Ctx, id: &str, rc_local: bool) -> Result<PathBuf, Failure> {
    let s = shared()?;
    let hnctl_free = vec![
        ("/etc/hnroot.d/probe.sh".to_string(), PROBE_HOOK.as_bytes().to_vec(), 0o644),
        ("/etc/hnroot.d/zz-runs.sh".to_string(), RUNS_HOOK.as_bytes().to_vec(), 0o644),
    ];
    let mut extra = hnctl_free;
    if rc_local {
        extra.push(("/etc/rc.local".into(), b"#!/bin/sh -e\n# the image's own line\nexit 0\n".to_vec(), 0o755));
        // The image's init runs rc.local as sysvinit's rc.local service does.
        extra.push(("/etc/hnroot.d/rclocal.sh".into(), b"[ -x /etc/rc.local ] && /etc/rc.local\n".to_vec(), 0o644));
    }
    let out = ctx.dir().join(format!("image-{id}.img"));
    build_root_image(
        &RootImageSpec {
            kernel: Some((s.kernel.vmlinuz.clone(), s.initramfs.clone())),
            image_id: id.into(),
            extra_files: extra,
            with_init: true,
            ..Default::default()
        },
        &out,
    )
    .map_err(|e| Failure::new(format!("building image {id}: {e:#}")))?;
    Ok(out)
}

fn runonce_rclocal(ctx: &mut Ctx) -> Result<(), Failure> {
    let img = image(ctx, "rclocal", true)?;
    let cfg = ctx.dir().join("host.json");
    std::fs::write(&cfg, CONFIG)?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &img), ("hn-state/host.json", &cfg)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.forbid("NOT scheduled");
    vm.expect("hninit: first boot: instantiated as busy1", STEP)?;
    expect_root(&vm, "rclocal", "rw")?;
    vm.expect("HNROOT: run-once ran args=a,b", STEP)?;
    vm.expect("HNROOT: runs 1", STEP)?;
    expect_clean_poweroff(&mut vm)?;
    ctx.note("boot 1: rc.local ran vm_conf.run once, with its script_args");
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    vm.forbid("hninit: boot failed");
    vm.forbid("run-once ran");
    expect_root(&vm, "rclocal", "rw")?;
    vm.expect("HNROOT: runs 1", STEP)?;
    expect_clean_poweroff(&mut vm)?;
    ctx.note("boot 2: not run again (done-marker in hn-state/run-done)");
    Ok(())
}

fn runonce_none(ctx: &mut Ctx) -> Result<(), Failure> {
    let img = image(ctx, "nomech", false)?;
    let cfg = ctx.dir().join("host.json");
    std::fs::write(&cfg, CONFIG)?;
    let (disk, _) = simple_disk(ctx, hostpart(&[("hn-root.img", &img), ("hn-state/host.json", &cfg)]))?;
    let mut vm = boot_direct(ctx, &disk, DiskIf::Virtio, "rw")?;
    // (The warning quotes the command, "run-once ran" included: `runs 0` is the check.)
    vm.forbid("hninit: boot failed");
    vm.expect("hninit: first boot: vm_conf.run NOT scheduled: the image has neither systemd, OpenRC's /etc/local.d nor /etc/rc.local; the command is kept as /etc/hninit/run, run it by hand: \"echo \\\"HNROOT: run-once ran args=$1,$2\\\" > /dev/console\"", STEP)?;
    expect_root(&vm, "nomech", "rw")?;
    vm.expect("HNROOT: bootlog first boot: vm_conf.run NOT scheduled", STEP)?;
    vm.expect("HNROOT: runs 0", STEP)?;
    expect_clean_poweroff(&mut vm)
}

use xtask::DiskIf;

pub(super) fn all() -> Vec<Scenario> {
    vec![
        Scenario { name: "runonce-rclocal", about: "vm_conf.run on a busybox image with /etc/rc.local: run once, not again at the next boot", run: runonce_rclocal },
        Scenario { name: "runonce-none", about: "vm_conf.run on an image with no run-once mechanism: it boots, console and boot.log name the command", run: runonce_none },
    ]
}
