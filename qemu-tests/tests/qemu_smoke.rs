//! Manual check of the harness against real QEMU (ignored by default): boots the
//! Debian kernel with no initrd and expects it to panic and QEMU to exit.
//! `HNINIT_TEST_KERNEL=/path/vmlinuz cargo test -p qemu-tests -- --ignored --nocapture`
//! (default: the first `~/.cache/hninit/kernel/*/boot/vmlinuz-*`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_tests::Vm;

fn find_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("HNINIT_TEST_KERNEL") {
        return Some(k.into());
    }
    let base = PathBuf::from(std::env::var_os("HOME")?).join(".cache/hninit/kernel");
    for ver in std::fs::read_dir(base).ok()?.flatten() {
        for f in std::fs::read_dir(ver.path().join("boot")).ok()?.flatten() {
            if f.file_name().to_string_lossy().starts_with("vmlinuz-") {
                return Some(f.path());
            }
        }
    }
    None
}

#[test]
#[ignore = "needs qemu-system-x86_64 and a kernel; run with --ignored"]
fn kernel_without_initrd_panics() {
    let Some(kernel) = find_kernel() else {
        eprintln!("no kernel found; set HNINIT_TEST_KERNEL");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel", "tcg", "-m", "512", "-display", "none", "-serial", "stdio",
    ])
    .args(["-no-reboot", "-kernel"])
    .arg(&kernel)
    .args(["-append", "console=ttyS0 panic=-1"]);
    let t = Instant::now();
    let mut vm = Vm::spawn(
        cmd,
        &dir.path().join("console.log"),
        Duration::from_secs(120),
    )
    .unwrap();
    let version = vm.expect("Linux version", Duration::from_secs(60)).unwrap();
    let t_version = t.elapsed();
    let panic = vm.expect("Kernel panic", Duration::from_secs(60)).unwrap();
    let t_panic = t.elapsed();
    let status = vm.wait_exit(Duration::from_secs(30)).unwrap();
    eprintln!("{version}\n{panic}");
    eprintln!(
        "Linux version after {:.1}s, Kernel panic after {:.1}s, QEMU exited ({status}) after {:.1}s",
        t_version.as_secs_f64(),
        t_panic.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "needs qemu-system-x86_64; run with --ignored"]
fn watchdog_kills_qemu() {
    // No kernel, no disk: SeaBIOS finds nothing to boot and QEMU just sits there.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "64",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-nodefaults",
    ]);
    let vm = Vm::spawn(cmd, &dir.path().join("console.log"), Duration::from_secs(3)).unwrap();
    let pid = vm.pid();
    let e = vm
        .expect("this never appears", Duration::from_secs(60))
        .unwrap_err();
    assert!(e.message.contains("VM deadline"), "{e:?}");
    // The reaper has collected QEMU: its /proc entry is gone.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
