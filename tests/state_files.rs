//! Damaged or hostile state files on the host partition (issue 10, items 1, 2 and
//! 6): a FIFO, a symlink, an oversized or garbled file under the name of the
//! trial state, the boot log or the staged image's digest never blocks the boot,
//! is treated as invalid (never as absent), is set aside as `NAME.bad-N` and
//! rebuilt; setting it aside is crash-safe. Each read runs under a watchdog: a
//! read that blocks fails the test instead of hanging it.

mod common;

use common::faulty::{Faulty, Plan};
use hninit::slots::dir::{Dir, FileId, RealDir};
use hninit::slots::{settle, Names, Request, Trial, TRIAL};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on another thread; fails if it does not return within 10 s (a read
/// blocked on a FIFO never returns).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what}: blocked for 10 s"))
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
}

struct Host {
    _t: tempfile::TempDir,
    img: PathBuf,
    state: PathBuf,
}

fn host() -> Host {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    let state = t.path().join("state");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(img.join("hn-root.img"), "IMAGE B").unwrap();
    std::fs::write(img.join("hn-root-old.img"), "IMAGE A").unwrap();
    Host { _t: t, img, state }
}

fn current_id(h: &Host) -> FileId {
    let md = std::fs::metadata(h.img.join("hn-root.img")).unwrap();
    FileId { ino: md.ino(), size: md.len() }
}

fn boot(img: &Path, state: &Path, count: bool) -> Result<hninit::slots::Outcome, String> {
    let (img, state) = (img.to_path_buf(), state.to_path_buf());
    within("settle", move || {
        let images = RealDir::open(&img, false).unwrap();
        let st = RealDir::open(&state, false).unwrap();
        let mut ok = |_: &str| Ok(());
        settle(&images, &st, &Names::new("hn-root.img"), &Request { revert: None, tries: 3, count_tries: count }, &mut ok).map_err(|e| e.to_string())
    })
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn tries_left_above_tries_is_clamped_not_underflowed() {
    let h = host();
    let t = serde_json::json!({"image": current_id(&h), "tries_left": 5, "tries": 1});
    std::fs::write(h.state.join(TRIAL), t.to_string()).unwrap();
    let out = boot(&h.img, &h.state, true).unwrap();
    assert!(out.events.iter().any(|e| e == "hn-root.img on trial: try 1 of 1"), "{:?}", out.events);
    let t: Trial = serde_json::from_slice(&std::fs::read(h.state.join(TRIAL)).unwrap()).unwrap();
    assert_eq!((t.tries_left, t.tries), (0, 1));
    // The next boot finds the trial exhausted and reverts.
    let out = boot(&h.img, &h.state, true).unwrap();
    assert!(out.reverted, "{:?}", out.events);
    // tries 0 is read as 1.
    assert_eq!(Trial { image: current_id(&h), tries_left: 7, tries: 0 }.clamped().tries_left, 1);
}

#[test]
fn a_damaged_trial_file_is_set_aside_never_blocking() {
    for (what, make) in [
        ("fifo", (|p: &Path| mkfifo(p)) as fn(&Path)),
        ("symlink", |p: &Path| symlink("/dev/zero", p).unwrap()),
        ("garbage", |p: &Path| std::fs::write(p, b"\xff\xfe not json").unwrap()),
        ("too big", |p: &Path| std::fs::write(p, vec![b' '; 200 * 1024]).unwrap()),
    ] {
        let h = host();
        make(&h.state.join(TRIAL));
        let out = boot(&h.img, &h.state, true).unwrap_or_else(|e| panic!("{what}: {e}"));
        let ev = out.events.join("\n");
        assert!(ev.contains("trial.json is invalid") && ev.contains("set aside as trial.json.bad-1"), "{what}: {ev}");
        assert!(!out.reverted && out.trial.is_none(), "{what}: {out:?}");
        assert_eq!(names_in(&h.state), ["trial.json.bad-1"], "{what}");
        // A second damaged file gets the next number; the first is kept.
        make(&h.state.join(TRIAL));
        boot(&h.img, &h.state, true).unwrap();
        assert_eq!(names_in(&h.state), ["trial.json.bad-1", "trial.json.bad-2"], "{what}");
    }
}

#[test]
fn setting_the_trial_aside_survives_a_crash_at_every_step() {
    let run = |h: &Host, plan: &Plan| {
        let images = Faulty { inner: RealDir::open(&h.img, false).unwrap(), plan, tag: "img" };
        let state = Faulty { inner: RealDir::open(&h.state, false).unwrap(), plan, tag: "state" };
        let mut ok = |_: &str| Ok(());
        settle(&images, &state, &Names::new("hn-root.img"), &Request { revert: None, tries: 3, count_tries: true }, &mut ok)
    };
    let fresh = || {
        let h = host();
        mkfifo(&h.state.join(TRIAL));
        h
    };
    let h = fresh();
    let full = Plan::new(None);
    run(&h, &full).unwrap();
    let steps = full.count.get();
    assert!(steps >= 2, "set aside = rename + fsync, got {steps}");
    let want = names_in(&h.state);
    for k in 0..steps {
        let h = fresh();
        assert!(run(&h, &Plan::new(Some(k))).is_err());
        let o = run(&h, &Plan::new(None)).unwrap();
        assert!(o.trial.is_none());
        assert_eq!(names_in(&h.state), want, "after a crash at step {k}");
        assert_eq!(names_in(&h.img), ["hn-root-old.img", "hn-root.img"]);
    }
}

#[test]
fn a_damaged_boot_log_is_set_aside_and_a_new_one_started() {
    for (what, make) in [
        ("fifo", (|p: &Path| mkfifo(p)) as fn(&Path)),
        ("symlink", |p: &Path| symlink("/dev/zero", p).unwrap()),
        ("too big", |p: &Path| std::fs::write(p, vec![b'x'; 2 << 20]).unwrap()),
    ] {
        let t = tempfile::tempdir().unwrap();
        make(&t.path().join("boot.log"));
        let p = t.path().to_path_buf();
        within(what, move || {
            let d = RealDir::open(&p, false).unwrap();
            hninit::slots::bootlog::append(&d, "T", &["boot: x".into()], true)
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(names_in(t.path()), ["boot.log", "boot.log.bad-1"], "{what}");
        let log = std::fs::read_to_string(t.path().join("boot.log")).unwrap();
        assert!(log.starts_with("T boot.log was invalid (") && log.contains("set aside as boot.log.bad-1") && log.ends_with("T boot: x\n"), "{what}: {log}");
    }
}

#[test]
fn writing_over_a_fifo_or_symlink_never_blocks_nor_follows() {
    let t = tempfile::tempdir().unwrap();
    mkfifo(&t.path().join("trial.json.tmp"));
    std::fs::write(t.path().join("outside"), "keep").unwrap();
    symlink(t.path().join("outside"), t.path().join("boot.log")).unwrap();
    let p = t.path().to_path_buf();
    within("write", move || {
        let d = RealDir::open(&p, false).unwrap();
        hninit::slots::dir::write_atomic(&d, "trial.json", b"{}").unwrap();
        d.append_synced("boot.log", b"line\n").unwrap();
    });
    assert_eq!(std::fs::read(t.path().join("trial.json")).unwrap(), b"{}");
    assert_eq!(std::fs::read(t.path().join("outside")).unwrap(), b"keep");
    assert_eq!(std::fs::read(t.path().join("boot.log")).unwrap(), b"line\n");
}

#[test]
fn staged_digest_sidecar_is_valid_or_rejects() {
    use hninit::boot::step6_slots::{parse_digest, read_digest};
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    std::fs::write(d.join("ok.sha256"), format!("{}  hn-root-new.img\n", hex.to_uppercase())).unwrap();
    assert_eq!(read_digest(&d.join("ok.sha256")).unwrap().as_deref(), Some(hex));
    assert_eq!(read_digest(&d.join("none.sha256")).unwrap(), None);
    mkfifo(&d.join("fifo.sha256"));
    symlink("/dev/zero", d.join("zero.sha256")).unwrap();
    std::fs::write(d.join("latin1.sha256"), b"\xe9t\xe9\n").unwrap();
    std::fs::write(d.join("big.sha256"), vec![b'a'; 8192]).unwrap();
    std::fs::write(d.join("short.sha256"), "abc\n").unwrap();
    std::fs::write(d.join("empty.sha256"), "").unwrap();
    for (f, why) in [
        ("fifo", "is a FIFO"),
        ("zero", "symbolic link"),
        ("latin1", "not UTF-8"),
        ("big", "larger than"),
        ("short", "not 64 hexadecimal digits"),
        ("empty", "not 64 hexadecimal digits"),
    ] {
        let p = d.join(format!("{f}.sha256"));
        let e = within(f, move || read_digest(&p)).unwrap_err();
        assert!(e.contains("digest file invalid") && e.contains(why), "{f}: {e}");
    }
    assert!(parse_digest(hex.as_bytes()).is_ok());
}
