//! The `hnctl` binary against a temporary host partition: every command, its
//! output (text and JSON) and its exit code (0 ok, 1 failed, 2 usage, 3 refused).

use hninit::ctl::Status;
use hninit::slots::dir::FileId;
use hninit::slots::{Trial, TRIAL};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Host {
    _t: tempfile::TempDir,
    dir: PathBuf,
    /// An image to stage, outside the host partition.
    image: PathBuf,
}

fn mkfs(path: &Path) {
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .arg("4M")
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success());
}

fn host() -> Host {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("hostpart");
    std::fs::create_dir(&dir).unwrap();
    mkfs(&dir.join("hn-root.img"));
    let image = t.path().join("next.img");
    mkfs(&image);
    Host { _t: t, dir, image }
}

fn hnctl(h: &Host, args: &[&str]) -> Output {
    hnctl_in(h, args, None)
}

fn hnctl_in(h: &Host, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hnctl"));
    cmd.arg("--hostpart")
        .arg(&h.dir)
        .args(["--real-root", "/hn-root.img"])
        .args(args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: Output) -> String {
    assert_eq!(code(&o), 0, "stdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    stdout(&o)
}

fn status(h: &Host) -> Status {
    serde_json::from_str(&ok(hnctl(h, &["status", "--json"]))).unwrap()
}

fn sha256sum(path: &Path) -> String {
    use sha2::Digest;
    hninit::slots::stage::hex(&sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn status_text_and_json() {
    let h = host();
    let text = ok(hnctl(&h, &["status"]));
    assert!(text.contains("current   hn-root.img"), "{text}");
    assert!(text.contains("not on trial"), "{text}");
    assert!(text.contains("revert          not requested"), "{text}");
    let st = status(&h);
    assert_eq!(st.real_root, "/hn-root.img");
    assert_eq!(st.slots.len(), 1);
    assert_eq!(st.slots[0].role, "current");
    assert_eq!(st.slots[0].size, 4 << 20);
    assert_eq!(st.trial, None);
    assert!(!st.revert_requested);
    assert_eq!(st.staged_digest, None);
    // The JSON keys are the documented ones.
    let v: serde_json::Value = serde_json::from_str(&ok(hnctl(&h, &["status", "--json"]))).unwrap();
    for key in [
        "hostpart",
        "images_dir",
        "real_root",
        "booted",
        "slots",
        "trial",
        "revert_requested",
        "staged_digest",
        "boot_log",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }
    assert!(v["booted"]["image"].is_string());
}

#[test]
fn stage_status_unstage() {
    let h = host();
    let sha = sha256sum(&h.image);
    let out = ok(hnctl(&h, &["stage", h.image.to_str().unwrap(), "--sha256", &sha]));
    assert!(out.contains("staged hn-root-new.img"), "{out}");
    assert!(out.contains(&sha), "{out}");
    assert_eq!(
        std::fs::read(h.dir.join("hn-root-new.img")).unwrap(),
        std::fs::read(&h.image).unwrap()
    );
    let st = status(&h);
    assert!(
        st.slots
            .iter()
            .any(|s| s.role == "staged" && s.name == "hn-root-new.img"),
        "{st:?}"
    );
    assert_eq!(st.staged_digest.as_deref(), Some(sha.as_str()));
    let text = ok(hnctl(&h, &["status"]));
    assert!(text.contains("staged    hn-root-new.img"), "{text}");

    // Again, from standard input and without a digest: replaces it, drops the digest.
    let data = std::fs::read(&h.image).unwrap();
    let out = ok(hnctl_in(&h, &["stage", "-", "--no-reflink"], Some(&data)));
    assert!(out.contains("standard input") && out.contains("read/write"), "{out}");
    assert!(out.contains("replacing"), "{out}");
    assert_eq!(status(&h).staged_digest, None);

    let out = ok(hnctl(&h, &["unstage"]));
    assert!(out.contains("removed hn-root-new.img"), "{out}");
    assert!(!status(&h).slots.iter().any(|s| s.role == "staged"));
    let out = ok(hnctl(&h, &["unstage"]));
    assert!(out.contains("nothing staged"), "{out}");
}

#[test]
fn revert_sets_the_flag() {
    let h = host();
    let out = ok(hnctl(&h, &["revert"]));
    assert!(out.contains("warning: there is no hn-root-old.img"), "{out}");
    assert!(h.dir.join("system-revert").exists());
    std::fs::copy(&h.image, h.dir.join("hn-root-old.img")).unwrap();
    let out = ok(hnctl(&h, &["revert"]));
    assert!(out.contains("already requested"), "{out}");
    assert!(out.contains("the next boot reverts to hn-root-old.img"), "{out}");
    let st = status(&h);
    assert!(st.revert_requested);
    let text = ok(hnctl(&h, &["status"]));
    assert!(
        text.contains("requested: the next boot reverts to hn-root-old.img"),
        "{text}"
    );
}

#[test]
fn mark_good_ends_a_trial() {
    let h = host();
    let state = h.dir.join("hn-state");
    std::fs::create_dir(&state).unwrap();
    let md = std::fs::metadata(h.dir.join("hn-root.img")).unwrap();
    let t = Trial {
        image: FileId {
            ino: md.ino(),
            size: md.len(),
        },
        tries_left: 1,
        tries: 3,
    };
    std::fs::write(state.join(TRIAL), serde_json::to_vec(&t).unwrap()).unwrap();
    let st = status(&h);
    let trial = st.trial.expect("on trial");
    assert_eq!((trial.tries_left, trial.tries), (1, 3));
    assert!(ok(hnctl(&h, &["status"])).contains("on trial: 1 of 3 tries left"));

    // --no-grub: the test machine's own EFI system partition is left alone.
    let out = ok(hnctl(&h, &["mark-good", "--no-grub"]));
    assert!(out.contains("hn-root.img marked good"), "{out}");
    assert!(out.contains("it was on try 2 of 3"), "{out}");
    assert!(!state.join(TRIAL).exists());
    assert_eq!(status(&h).trial, None);
    let out = ok(hnctl(&h, &["mark-good", "--no-grub"]));
    assert!(out.contains("not on trial"), "{out}");
}

#[test]
fn log_prints_the_end_of_boot_log() {
    let h = host();
    let o = hnctl(&h, &["log"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).starts_with("hnctl: reading "), "{}", stderr(&o));
    std::fs::create_dir(h.dir.join("hn-state")).unwrap();
    let text: String = (1..=25).map(|i| format!("2026-01-01T00:00:00Z boot {i}\n")).collect();
    std::fs::write(h.dir.join("hn-state/boot.log"), &text).unwrap();
    assert_eq!(ok(hnctl(&h, &["log"])), text);
    assert_eq!(
        ok(hnctl(&h, &["log", "-n", "2"])),
        "2026-01-01T00:00:00Z boot 24\n2026-01-01T00:00:00Z boot 25\n"
    );
    let st = status(&h);
    assert_eq!(st.boot_log.len(), 10);
    assert_eq!(st.boot_log[9], "2026-01-01T00:00:00Z boot 25");
}

#[test]
fn exit_codes() {
    let h = host();
    // 1: the operation failed.
    let gone = h.dir.parent().unwrap().join("gone.img");
    let o = hnctl(&h, &["stage", gone.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("hnctl: staging {}: ", gone.display())),
        "{}",
        stderr(&o)
    );
    let missing = h.dir.parent().unwrap().join("no-such-dir");
    let o = Command::new(env!("CARGO_BIN_EXE_hnctl"))
        .arg("--hostpart")
        .arg(&missing)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("hnctl: locating the host partition: "),
        "{}",
        stderr(&o)
    );

    // 3: refused, nothing left behind.
    let junk = h.dir.parent().unwrap().join("junk.img");
    std::fs::write(&junk, vec![0x5au8; 2 << 20]).unwrap();
    let o = hnctl(&h, &["stage", junk.to_str().unwrap()]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("no filesystem recognised"), "{}", stderr(&o));
    let wrong = "0".repeat(64);
    let o = hnctl(&h, &["stage", h.image.to_str().unwrap(), "--sha256", &wrong]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("sha256 mismatch"), "{}", stderr(&o));
    let o = hnctl_in(&h, &["stage", "-"], Some(b""));
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let names: Vec<String> = std::fs::read_dir(&h.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["hn-root.img"]);

    // 2: usage.
    for args in [
        &["frobnicate"][..],
        &["stage"],
        &["stage", "x.img", "--sha256", "xyz"],
        &["log", "-n", "many"],
        &["--real-root", "relative.img", "status"],
    ] {
        let o = hnctl(&h, args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    let help = ok(hnctl(&h, &["--help"]));
    assert!(help.contains("Exit codes") && help.contains("3  refused"), "{help}");
}

#[test]
fn man_and_completions() {
    let h = host();
    let man = ok(hnctl(&h, &["man"]));
    assert!(man.starts_with(".TH"), "{}", &man[..man.len().min(200)]);
    assert!(man.contains("mark\\-good"), "{man}");
    let bash = ok(hnctl(&h, &["completions", "bash"]));
    assert!(bash.contains("mark-good"), "{bash}");
    let zsh = ok(hnctl(&h, &["completions", "zsh"]));
    assert!(zsh.contains("mark-good"));
}

/// A minimal valid configuration (the full format is in docs/config.md).
const CONFIG: &str = r#"{"vm_hostname": "web1", "nameservers": ["192.0.2.53"],
  "vif": [{"vif_number": 0, "pna": [{"pna_address": "192.0.2.10", "pbn": {"pbn_network": "192.0.2.0/24", "pbn_gateway": "192.0.2.1"}}]}],
  "vm_conf": {"user": "admin", "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHQ9yL0sEr2sSMGkL4Y6UomzWpLW4eEqvXB6M7AqEo3y admin@example"}}"#;

#[test]
fn config_validate_and_offline_firstboot() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good.json");
    std::fs::write(&good, CONFIG).unwrap();
    let bad = t.path().join("bad.json");
    std::fs::write(&bad, r#"{"vm_hostname": "x", "vm_conf": {"user": "bob", "password": "hunter2"}}"#).unwrap();
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_hnctl")).args(args).output().unwrap();

    let o = run(&["config", "validate", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("valid, host web1"));
    let o = run(&["config", "validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("vm_conf.password") && !err.contains("hunter2"), "{err}");

    let root = t.path().join("root");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roots/debian-networkd");
    assert!(std::process::Command::new("cp").arg("-a").arg(&src).arg(&root).status().unwrap().success());
    let state = t.path().join("identity");
    let before = std::fs::read(root.join("etc/hostname")).ok();
    let o = run(&["firstboot", "--config", good.to_str().unwrap(), "--root", root.to_str().unwrap(), "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("write /etc/hostname"));
    assert_eq!(std::fs::read(root.join("etc/hostname")).ok(), before, "a dry run wrote");
    let o = run(&["firstboot", "--config", good.to_str().unwrap(), "--root", root.to_str().unwrap(), "--state", state.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).unwrap(), "web1\n");
    assert!(root.join("etc/hninit/instance.json").exists());
    let o = run(&["firstboot", "--config", good.to_str().unwrap(), "--root", root.to_str().unwrap(), "--state", state.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already instantiated"), "{}", String::from_utf8_lossy(&o.stdout));
}

/// Issue 10 item 9: `hnctl` never blocks on a FIFO given as a file, keeps the
/// identity directory private, and its dry run uses a private throwaway directory.
#[test]
fn fifo_arguments_private_state_and_dry_run_dir() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("config.fifo");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
    let good = t.path().join("good.json");
    std::fs::write(&good, CONFIG).unwrap();
    let run = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hnctl"));
        c.args(args).env("TMPDIR", t.path()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        // A blocked hnctl is killed after 10 s and fails the test.
        for _ in 0..100 {
            if let Some(_st) = child.try_wait().unwrap() {
                return child.wait_with_output().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("hnctl {args:?} blocked");
    };
    let o = run(&["config", "validate", fifo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a FIFO, not a regular file"), "{}", String::from_utf8_lossy(&o.stderr));
    let h = host();
    let o = hnctl(&h, &["stage", fifo.to_str().unwrap()]);
    assert_ne!(code(&o), 0);

    let root = t.path().join("root");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roots/debian-networkd");
    assert!(Command::new("cp").arg("-a").arg(&src).arg(&root).status().unwrap().success());
    // The dry run leaves no predictable (or any) directory behind.
    let o = run(&["firstboot", "--config", good.to_str().unwrap(), "--root", root.to_str().unwrap(), "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with("hnctl-dry-run")).collect();
    assert!(left.is_empty(), "{left:?}");
    // --state is created 0700, parents included.
    let state = t.path().join("new/identity");
    let o = run(&["firstboot", "--config", good.to_str().unwrap(), "--root", root.to_str().unwrap(), "--state", state.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    for d in [&state, &t.path().join("new")] {
        assert_eq!(std::fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
    }
}
