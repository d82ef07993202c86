//! The boot counting in GRUB's menu (`grub/grub.cfg.in`): the rendered menu
//! parses (`grub-script-check`), and its structure does what DESIGN.md
//! "Automatic rollback" asks: load `hn_trial`/`hn_tries` from the ESP's
//! grubenv, count down 9→8 … 1→0 and `save_env` before the current image
//! boots (passing `hn.tries_by=grub`), and make the automatic revert the
//! default when no try is left. `grub-emu` is not available, so the real run
//! is an ignored test: `cargo test --test grub_counting -- --ignored` boots
//! OVMF + GRUB under QEMU three times on a disk whose kernel panics, and
//! checks GRUB's console lines and the grubenv left on the ESP.

use hninit::slots::grubenv::{self, GrubEnv};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TEMPLATE: &str = include_str!("../grub/grub.cfg.in");

/// The template with its variables replaced (what `cargo xtask grub-cfg` does).
fn render(image_dir: &str, cmdline: &str) -> String {
    TEMPLATE
        .replace("@TIMEOUT@", "0")
        .replace("@HOSTPART_LABEL@", "hostpart")
        .replace("@IMAGE_DIR@", image_dir)
        .replace("@CMDLINE@", cmdline)
}

fn have(prog: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()));
    if !found {
        eprintln!("{prog} missing; skipping");
    }
    found
}

/// The text of `menuentry "<title>" … { … }` (up to its closing brace line).
fn entry<'a>(cfg: &'a str, title: &str) -> &'a str {
    let start = cfg
        .find(&format!("menuentry \"{title}\""))
        .unwrap_or_else(|| panic!("no entry {title:?}"));
    let rest = &cfg[start..];
    let indent = cfg[..start].rsplit('\n').next().unwrap_or("");
    let end = rest
        .find(&format!("\n{indent}}}"))
        .expect("entry not closed");
    &rest[..end]
}

fn pos(hay: &str, needle: &str) -> usize {
    hay.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found in:\n{hay}"))
}

#[test]
fn rendered_menu_passes_grub_script_check() {
    if !have("grub-script-check") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for (i, dir) in ["", "/images"].iter().enumerate() {
        let p = d.path().join(format!("grub{i}.cfg"));
        std::fs::write(&p, render(dir, "console=ttyS0 rw")).unwrap();
        let out = Command::new("grub-script-check").arg(&p).output().unwrap();
        assert!(
            out.status.success(),
            "grub-script-check {dir:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And it does reject a broken script (the check is not vacuous).
    let p = d.path().join("broken.cfg");
    std::fs::write(&p, render("", "").replace("\nfi\n", "\n")).unwrap();
    assert!(!Command::new("grub-script-check")
        .arg(&p)
        .output()
        .unwrap()
        .status
        .success());
}

#[test]
fn loads_the_counter_from_the_esp_before_any_entry() {
    let cfg = render("/images", "console=ttyS0");
    let first_entry = pos(&cfg, "menuentry ");
    let load = pos(&cfg, "load_env --file \"$hn_env\" hn_trial hn_tries");
    assert!(load < first_entry);
    assert!(pos(&cfg, "insmod loadenv") < load);
    // The grubenv beside this menu, else on the ESP GRUB made $root.
    assert!(pos(&cfg, "set hn_env=\"$config_directory/grubenv\"") < load);
    assert!(pos(&cfg, "set hn_env=\"($root)/EFI/hninit/grubenv\"") < load);
    // Exhausted (anything but 1..9) with an old image: the automatic revert is the default.
    let decide = &cfg[load..first_entry];
    assert!(decide.contains("for hn_n in 1 2 3 4 5 6 7 8 9; do"));
    let revert_default = pos(decide, "set default=hn-auto-revert");
    assert!(
        pos(
            decide,
            "if [ -f \"($hostpart)/images/hn-root-old.img\" ]; then"
        ) < revert_default
    );
    assert!(decide.contains("set fallback=0"));
    // Without an old image GRUB ends the trial itself.
    let end = pos(
        decide,
        "set hn_trial=0\n            save_env --file \"$hn_env\" hn_trial",
    );
    assert!(revert_default < end);
}

#[test]
fn current_entry_spends_a_try_before_booting() {
    let cfg = render("/images", "console=ttyS0 rw");
    let cur = entry(&cfg, "hninit: current image");
    // The decrement chain, 9→8 … 1→0, in order, each compared exactly.
    let mut at = 0;
    for n in (1..=9u32).rev() {
        let kw = if n == 9 { "if" } else { "elif" };
        let line = format!("{kw} [ \"$hn_tries\" = {n} ]; then set hn_left={}\n", n - 1);
        let p = pos(&cur[at..], &line) + at;
        at = p + line.len();
    }
    assert!(
        !cur.contains("= 0 ]; then set hn_left"),
        "0 must not be decremented"
    );
    let save = pos(cur, "if save_env --file \"$hn_env\" hn_tries; then");
    assert!(pos(cur, "set hn_tries=\"$hn_left\"") < save);
    // hn.tries_by=grub only when the try was saved.
    let by = pos(cur, "set hn_tries_by=\"hn.tries_by=grub\"");
    assert!(save < by && by < pos(cur, "else"));
    let linux = pos(cur, "linux (loop)/boot/kernel");
    assert!(by < linux && save < linux);
    assert!(cur.contains(
        "linux (loop)/boot/kernel real_root=/images/hn-root.img loopdev_hostpart=LABEL=hostpart console=ttyS0 rw $hn_tries_by\n"
    ));
    assert!(cur.contains("echo \"hninit: trial boot, $hn_tries tries left\""));
    assert!(cur.contains("loopback loop ($hostpart)/images/hn-root.img"));
}

#[test]
fn entries_are_kept_and_the_auto_revert_is_conditional() {
    let cfg = render("", "console=ttyS0");
    assert_eq!(cfg.matches("menuentry ").count(), 4);
    let prev = entry(&cfg, "hninit: previous image (hn-root-old.img)");
    assert!(
        prev.contains("real_root=/hn-root-old.img loopdev_hostpart=LABEL=hostpart console=ttyS0")
    );
    let rev = entry(&cfg, "hninit: revert to previous image");
    assert!(rev.contains("loopback loop ($hostpart)/hn-root-old.img"));
    assert!(rev.contains(
        "real_root=/hn-root.img hn.revert=1 loopdev_hostpart=LABEL=hostpart console=ttyS0"
    ));
    let auto = entry(
        &cfg,
        "hninit: automatic revert (hn-root.img ran out of tries)",
    );
    assert!(auto.contains("--id hn-auto-revert"));
    assert!(auto.contains("loopback loop ($hostpart)/hn-root-old.img"));
    assert!(auto.contains(
        "real_root=/hn-root.img hn.revert=auto loopdev_hostpart=LABEL=hostpart console=ttyS0\n"
    ));
    // Defined only when the trial ran out, after the three fixed entries (so
    // `set default=0` and `fallback=0` still mean the current image).
    let guard = pos(
        &cfg,
        "if [ \"$hn_auto_revert\" = 1 ]; then\n    menuentry \"hninit: automatic revert",
    );
    assert!(pos(&cfg, "menuentry \"hninit: revert to previous image\"") < guard);
    assert!(
        pos(&cfg, "menuentry \"hninit: current image\" --id hn-current")
            < pos(&cfg, "menuentry \"hninit: previous")
    );
}

/// GRUB wraps console output at 80 columns: a console test can only match
/// lines shorter than that.
#[test]
fn echo_lines_fit_on_one_console_line() {
    let cfg = render("/a/long/image/directory", "console=ttyS0");
    let mut n = 0;
    for line in cfg
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("echo \"hninit: "))
    {
        n += 1;
        let text = line.trim_start_matches("echo \"").trim_end_matches('"');
        let shown = text
            .replace("$hn_trial", "1")
            .replace("$hn_tries", "9")
            .replace("$hn_env", "(hd0,gpt1)/EFI/hninit/grubenv");
        assert!(shown.len() < 80, "{shown:?} is {} columns", shown.len());
    }
    assert!(n >= 8, "{n} echo lines");
}

// ---------------------------------------------------------------- QEMU (ignored)

/// The standalone GRUB's embedded config, as in xtask/src/grub.rs.
const EMBEDDED_CFG: &str = "search --no-floppy --set=hnesp --file /EFI/hninit/grub.cfg
if [ -n \"$hnesp\" ]; then
    set root=$hnesp
    configfile ($hnesp)/EFI/hninit/grub.cfg
fi
echo \"hninit: no disk holds /EFI/hninit/grub.cfg\"
";
const GRUB_MODULES: &str = "part_gpt part_msdos fat ext2 btrfs xfs loopback search search_label \
search_fs_uuid search_fs_file linux gzio xzio zstd normal echo serial terminal test configfile \
efi_gop all_video loadenv sleep halt reboot ls cat";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const ESP_START: u64 = 1 << 20;
const HOSTPART_SECTOR: u64 = 83968;

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn test_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("HNINIT_TEST_KERNEL") {
        return Some(PathBuf::from(k));
    }
    let cache = PathBuf::from(std::env::var_os("HOME")?).join(".cache/hninit/kernel");
    for e in std::fs::read_dir(cache).ok()?.flatten() {
        let boot = e.path().join("root/boot");
        for k in std::fs::read_dir(&boot).into_iter().flatten().flatten() {
            if k.file_name().to_string_lossy().starts_with("vmlinuz-") {
                return Some(k.path());
            }
        }
    }
    None
}

/// A GPT disk: ESP (FAT32 `EFI-BOOT`, standalone GRUB, the menu, `grubenv`)
/// and an ext4 `hostpart` with images whose kernel panics (no root).
fn build_disk(d: &Path, kernel: &Path, grubenv_block: &[u8]) -> PathBuf {
    let w = |name: &str| d.join(name);
    std::fs::write(w("embedded.cfg"), EMBEDDED_CFG).unwrap();
    run(Command::new("grub-mkstandalone")
        .args(["-O", "x86_64-efi", "--locales=", "--fonts=", "--themes="])
        .arg(format!("--modules={GRUB_MODULES}"))
        .arg("-o")
        .arg(w("BOOTX64.EFI"))
        .arg(format!(
            "boot/grub/grub.cfg={}",
            w("embedded.cfg").display()
        )));
    std::fs::write(w("grub.cfg"), render("/images", "console=ttyS0 panic=1")).unwrap();
    std::fs::write(w("grubenv"), grubenv_block).unwrap();
    run(Command::new("mkfs.vfat")
        .args(["-C", "-F", "32", "-n", "EFI-BOOT"])
        .arg(w("esp.img"))
        .arg("40960"));
    let mtools = |args: &[&str]| {
        run(Command::new(args[0])
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(w("esp.img"))
            .args(&args[1..]));
    };
    mtools(&["mmd", "::/EFI", "::/EFI/BOOT", "::/EFI/hninit"]);
    for (src, dst) in [
        ("BOOTX64.EFI", "::/EFI/BOOT/BOOTX64.EFI"),
        ("grub.cfg", "::/EFI/hninit/grub.cfg"),
        ("grubenv", "::/EFI/hninit/grubenv"),
    ] {
        mtools(&["mcopy", w(src).to_str().unwrap(), dst]);
    }
    for img in ["cur", "old"] {
        let root = w(img);
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::copy(kernel, root.join("boot/kernel")).unwrap();
        std::fs::write(root.join("boot/initramfs"), [0u8; 512]).unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-d"])
            .arg(&root)
            .arg(w(&format!("{img}.img")))
            .arg("40M"));
    }
    std::fs::create_dir_all(w("hp/images")).unwrap();
    std::fs::rename(w("cur.img"), w("hp/images/hn-root.img")).unwrap();
    std::fs::rename(w("old.img"), w("hp/images/hn-root-old.img")).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-L", "hostpart", "-d"])
        .arg(w("hp"))
        .arg(w("hp.img"))
        .arg("120M"));
    let disk = w("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+40M", "-t", "1:ef00"])
        .args([
            "-n",
            &format!("2:{HOSTPART_SECTOR}:+120M"),
            "-t",
            "2:8300",
            "-c",
            "2:hostpart",
        ])
        .arg(&disk));
    for (img, seek) in [("esp.img", ESP_START), ("hp.img", HOSTPART_SECTOR * 512)] {
        run(Command::new("dd")
            .arg(format!("if={}", w(img).display()))
            .arg(format!("of={}", disk.display()))
            .args([
                "bs=512",
                &format!("seek={}", seek / 512),
                "conv=notrunc",
                "status=none",
            ]));
    }
    disk
}

/// GRUB's and the kernel's lines of interest, escape sequences removed, in order.
fn events(console: &str) -> Vec<String> {
    let mut clean = String::new();
    let mut chars = console.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for f in chars.by_ref() {
                    if f.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        clean.push(c);
    }
    let mut out: Vec<String> = Vec::new();
    for line in clean.split(['\r', '\n']) {
        // GRUB writes to both the serial and the EFI console, which OVMF also
        // sends to the serial port: each message arrives twice, glued.
        for part in line.split("hninit: ").skip(1) {
            out.push(format!("hninit: {}", part.trim_end()));
        }
        if let Some(i) = line.find("Command line: ") {
            out.push(line[i..].trim_end().to_string());
        }
    }
    out.dedup();
    out
}

#[test]
#[ignore = "boots OVMF + GRUB under QEMU three times (about a minute)"]
fn qemu_grub_counts_down_and_reverts() {
    for p in [
        "qemu-system-x86_64",
        "grub-mkstandalone",
        "mkfs.vfat",
        "mcopy",
        "mmd",
        "mkfs.ext4",
        "sgdisk",
        "dd",
    ] {
        if !have(p) {
            return;
        }
    }
    if !Path::new(OVMF_CODE).exists() || !Path::new("/usr/lib/grub/x86_64-efi/loadenv.mod").exists()
    {
        eprintln!("OVMF or GRUB EFI modules missing; skipping");
        return;
    }
    let Some(kernel) = test_kernel() else {
        eprintln!("no kernel (set HNINIT_TEST_KERNEL or run cargo xtask once); skipping");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let mut env = GrubEnv::new();
    hninit::slots::esp::start_trial(&mut env, 3).unwrap(); // as hninit does at the rotation boot
    let disk = build_disk(d.path(), &kernel, &env.to_block().unwrap());
    std::fs::copy(OVMF_VARS, d.path().join("vars.fd")).unwrap();

    let log = d.path().join("console.log");
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "512",
                "-nographic",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,file={}",
                d.path().join("vars.fd").display()
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let want_last = "hn.revert=auto";
    let start = std::time::Instant::now();
    let console = loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        let done = events(&text)
            .iter()
            .any(|e| e.starts_with("Command line:") && e.contains(want_last));
        if done || start.elapsed().as_secs() > 240 || child.try_wait().ok().flatten().is_some() {
            break text;
        }
    };
    // QEMU and anything it started: the whole process group.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    let ev = events(&console);
    let expect = [
        "hninit: boot counter: hn_trial=1 hn_tries=2",
        "hninit: trial boot, 1 tries left",
        "Command line: BOOT_IMAGE=(loop)/boot/kernel real_root=/images/hn-root.img loopdev_hostpart=LABEL=hostpart console=ttyS0 panic=1 hn.tries_by=grub",
        "hninit: boot counter: hn_trial=1 hn_tries=1",
        "hninit: trial boot, 0 tries left",
        "Command line: BOOT_IMAGE=(loop)/boot/kernel real_root=/images/hn-root.img loopdev_hostpart=LABEL=hostpart console=ttyS0 panic=1 hn.tries_by=grub",
        "hninit: boot counter: hn_trial=1 hn_tries=0",
        "hninit: no tries left: default is the automatic revert",
        "hninit: automatic revert to hn-root-old.img",
        "Command line: BOOT_IMAGE=(loop)/boot/kernel real_root=/images/hn-root.img hn.revert=auto loopdev_hostpart=LABEL=hostpart console=ttyS0 panic=1",
    ];
    let mut it = ev.iter();
    for want in expect {
        assert!(
            it.any(|e| e == want),
            "missing (in order) {want:?}\nevents: {ev:#?}"
        );
    }
    // GRUB's save_env rewrote the grubenv in place on the FAT ESP.
    let out = d.path().join("grubenv.out");
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{ESP_START}", disk.display()))
        .arg("::/EFI/hninit/grubenv")
        .arg(&out));
    let block = std::fs::read(&out).unwrap();
    let env = grubenv::parse(&block).unwrap();
    assert_eq!(
        hninit::slots::esp::counter(&env),
        hninit::slots::esp::Counter {
            trial: true,
            tries: 0
        }
    );
}
