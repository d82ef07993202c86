//! Crash-safety of staging (`hnctl stage`, `unstage`, `revert`), proven by
//! enumeration as in `slots_crash.rs`: each scenario runs once per mutating step
//! with a power cut at that step (a cut copy or write leaves a torn file, as a
//! real one would); then the boot-time `slots::settle` runs on what is left.
//! At every point `hn-root.img` is the original image and no partial
//! `hn-root-new.img` exists; after the boot the staged image was either rotated in
//! complete or nothing happened; running again converges. Also: every refusal
//! (space, garbage, empty, truncated, swap, wrong sha256) leaves nothing behind.
//!
//! Signed stages (signatures by the real `minisign` tool, a host that trusts its
//! key): at every cut, the staged image has its own signature (in its sidecar, or
//! in the `.part.minisig` the boot completes), and the boot rotates in either the
//! image staged before or the new one, each with its signature; none is rejected.

mod common;

use common::faulty::{Faulty, Plan};
use hninit::slots::dir::{CopyMethod, RealDir};
use hninit::sys::probe::{self, FsType};
use hninit::slots::{settle, Names, Request};
use hninit::slots::stage::{self, StageError, StageOptions, StageSource};
use hninit::trust::{KeyStore, PublicKey, Signature};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The images of the scenarios, built once: three ext4 filesystems and junk,
/// and `minisign` signatures of B and C (`sig(B)`, `sig(C)`) by the key `key`.
struct Images {
    dir: tempfile::TempDir,
    contents: BTreeMap<&'static str, Vec<u8>>,
    store: KeyStore,
}

fn mkfs(path: &Path, label: &str) {
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label])
        .arg(path)
        .arg("4M")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success(), "mkfs.ext4 {}", path.display());
}

fn sha_hex(data: &[u8]) -> String {
    stage::hex(&Sha256::digest(data))
}

impl Images {
    fn build() -> Images {
        let dir = tempfile::tempdir().unwrap();
        let mut contents = BTreeMap::new();
        for key in ["A", "B", "C"] {
            let p = dir.path().join(key);
            mkfs(&p, key);
            contents.insert(key, std::fs::read(&p).unwrap());
        }
        let junk: Vec<u8> = (0..2u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        contents.insert("junk", junk.clone());
        std::fs::write(dir.path().join("junk"), junk).unwrap();
        for key in ["B", "C"] {
            let line = format!("{}  hn-root-new.img\n", sha_hex(&contents[key]));
            contents.insert(if key == "B" { "sha(B)" } else { "sha(C)" }, line.into_bytes());
        }
        contents.insert("empty", Vec::new());
        let minisign = |args: &[&str]| {
            let st = Command::new("minisign")
                .args(args)
                .current_dir(dir.path())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .status()
                .expect("the minisign tool is needed (Debian package minisign)");
            assert!(st.success(), "minisign {args:?}");
        };
        minisign(&["-G", "-W", "-p", "key.pub", "-s", "key.key"]);
        for (img, sig) in [("B", "sig(B)"), ("C", "sig(C)")] {
            let out = format!("{img}.minisig");
            minisign(&["-S", "-s", "key.key", "-m", img, "-x", &out, "-t", "version=1"]);
            contents.insert(sig, std::fs::read(dir.path().join(&out)).unwrap());
        }
        let mut store = KeyStore::default();
        let key = PublicKey::parse_file(&std::fs::read(dir.path().join("key.pub")).unwrap()).unwrap();
        store.add(key, "key.pub").unwrap();
        Images { dir, contents, store }
    }
    fn path(&self, key: &str) -> PathBuf {
        self.dir.path().join(key)
    }
    fn sha(&self, key: &str) -> [u8; 32] {
        Sha256::digest(&self.contents[key]).into()
    }
    /// The key of a known content, else a description of the unknown one.
    fn name_of(&self, data: &[u8]) -> String {
        match self.contents.iter().find(|(_, c)| c.as_slice() == data) {
            Some((k, _)) => k.to_string(),
            None => format!("unknown {} bytes", data.len()),
        }
    }
}

/// name -> content key of every file in `dir`.
fn snapshot(imgs: &Images, dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            let data = std::fs::read(e.path()).unwrap();
            m.insert(e.file_name().to_string_lossy().into_owned(), imgs.name_of(&data));
        }
    }
    m
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Stage the image of that key, with its sha256 (`Some(key)` of the digest's image).
    Stage {
        src: &'static str,
        sha: Option<&'static str>,
        reflink: bool,
        /// Signed: the signature given (a content key) to a host that trusts the key.
        sig: Option<&'static str>,
    },
    Unstage,
    Revert,
}

struct Case {
    name: &'static str,
    start: &'static [(&'static str, &'static str)],
    op: Op,
    /// The images dir after the operation, uninterrupted.
    after_op: &'static [(&'static str, &'static str)],
    /// … and after the next boot.
    after_boot: &'static [(&'static str, &'static str)],
}

impl Case {
    /// The host trusts the key: its boot requires a valid signature.
    fn keys(&self) -> bool {
        matches!(self.op, Op::Stage { sig: Some(_), .. }) || self.name.contains("signed")
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "stage fresh",
            start: &[("hn-root.img", "A")],
            op: Op::Stage {
                src: "C",
                sha: None,
                reflink: true,
                sig: None,
            },
            after_op: &[("hn-root.img", "A"), ("hn-root-new.img", "C")],
            after_boot: &[("hn-root.img", "C"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "stage fresh with a digest",
            start: &[("hn-root.img", "A")],
            op: Op::Stage {
                src: "C",
                sha: Some("C"),
                reflink: true,
                sig: None,
            },
            after_op: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img", "C"),
                ("hn-root-new.img.sha256", "sha(C)"),
            ],
            after_boot: &[("hn-root.img", "C"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "stage over a staged image",
            start: &[("hn-root.img", "A"), ("hn-root-new.img", "B")],
            op: Op::Stage {
                src: "C",
                sha: None,
                reflink: false,
                sig: None,
            },
            after_op: &[("hn-root.img", "A"), ("hn-root-new.img", "C")],
            after_boot: &[("hn-root.img", "C"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "stage with a digest over a staged image with its digest",
            start: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img", "B"),
                ("hn-root-new.img.sha256", "sha(B)"),
            ],
            op: Op::Stage {
                src: "C",
                sha: Some("C"),
                reflink: false,
                sig: None,
            },
            after_op: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img", "C"),
                ("hn-root-new.img.sha256", "sha(C)"),
            ],
            after_boot: &[("hn-root.img", "C"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "stage without a digest over a staged image with its digest",
            start: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img", "B"),
                ("hn-root-new.img.sha256", "sha(B)"),
            ],
            op: Op::Stage {
                src: "C",
                sha: None,
                reflink: true,
                sig: None,
            },
            after_op: &[("hn-root.img", "A"), ("hn-root-new.img", "C")],
            after_boot: &[("hn-root.img", "C"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "stage over leftovers of an interrupted stage",
            start: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img.part", "junk"),
                ("hn-root-new.img.sha256.tmp", "sha(B)"),
            ],
            op: Op::Stage {
                src: "C",
                sha: Some("C"),
                reflink: true,
                sig: None,
            },
            after_op: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img", "C"),
                ("hn-root-new.img.sha256", "sha(C)"),
            ],
            after_boot: &[("hn-root.img", "C"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "refused garbage over a staged image",
            start: &[("hn-root.img", "A"), ("hn-root-new.img", "B")],
            op: Op::Stage {
                src: "junk",
                sha: None,
                reflink: true,
                sig: None,
            },
            after_op: &[("hn-root.img", "A"), ("hn-root-new.img", "B")],
            after_boot: &[("hn-root.img", "B"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "refused digest mismatch",
            start: &[("hn-root.img", "A")],
            op: Op::Stage {
                src: "C",
                sha: Some("B"),
                reflink: false,
                sig: None,
            },
            after_op: &[("hn-root.img", "A")],
            after_boot: &[("hn-root.img", "A")],
        },
        Case {
            name: "stage signed fresh",
            start: &[("hn-root.img", "A")],
            op: Op::Stage {
                src: "C",
                sha: None,
                reflink: true,
                sig: Some("sig(C)"),
            },
            after_op: &[("hn-root.img", "A"), ("hn-root-new.img", "C"), ("hn-root-new.img.minisig", "sig(C)")],
            after_boot: &[("hn-root.img", "C"), ("hn-root.img.minisig", "sig(C)"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "stage signed over a signed staged image",
            start: &[("hn-root.img", "A"), ("hn-root-new.img", "B"), ("hn-root-new.img.minisig", "sig(B)")],
            op: Op::Stage {
                src: "C",
                sha: None,
                reflink: false,
                sig: Some("sig(C)"),
            },
            after_op: &[("hn-root.img", "A"), ("hn-root-new.img", "C"), ("hn-root-new.img.minisig", "sig(C)")],
            after_boot: &[("hn-root.img", "C"), ("hn-root.img.minisig", "sig(C)"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "stage signed with a digest over leftovers of an interrupted signed stage",
            start: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img", "B"),
                ("hn-root-new.img.minisig", "sig(B)"),
                ("hn-root-new.img.part", "junk"),
                ("hn-root-new.img.part.minisig", "sig(C)"),
            ],
            op: Op::Stage {
                src: "C",
                sha: Some("C"),
                reflink: true,
                sig: Some("sig(C)"),
            },
            after_op: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img", "C"),
                ("hn-root-new.img.minisig", "sig(C)"),
                ("hn-root-new.img.sha256", "sha(C)"),
            ],
            after_boot: &[("hn-root.img", "C"), ("hn-root.img.minisig", "sig(C)"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "refused signature of another image over a signed staged image",
            start: &[("hn-root.img", "A"), ("hn-root-new.img", "B"), ("hn-root-new.img.minisig", "sig(B)")],
            op: Op::Stage {
                src: "C",
                sha: None,
                reflink: true,
                sig: Some("sig(B)"),
            },
            after_op: &[("hn-root.img", "A"), ("hn-root-new.img", "B"), ("hn-root-new.img.minisig", "sig(B)")],
            after_boot: &[("hn-root.img", "B"), ("hn-root.img.minisig", "sig(B)"), ("hn-root-old.img", "A")],
        },
        Case {
            name: "unstage",
            start: &[
                ("hn-root.img", "A"),
                ("hn-root-new.img", "B"),
                ("hn-root-new.img.sha256", "sha(B)"),
            ],
            op: Op::Unstage,
            after_op: &[("hn-root.img", "A")],
            after_boot: &[("hn-root.img", "A")],
        },
        Case {
            name: "revert",
            start: &[("hn-root.img", "A"), ("hn-root-old.img", "B")],
            op: Op::Revert,
            after_op: &[
                ("hn-root.img", "A"),
                ("hn-root-old.img", "B"),
                ("system-revert", "empty"),
            ],
            after_boot: &[("hn-root.img", "B"), ("hn-root-broken.img", "A")],
        },
    ]
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn prepare(imgs: &Images, root: &Path, case: &Case) {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("img")).unwrap();
    std::fs::create_dir_all(root.join("state")).unwrap();
    for (name, key) in case.start {
        std::fs::write(root.join("img").join(name), &imgs.contents[key]).unwrap();
    }
}

const FREE: u64 = 1 << 40;

/// The operation, with every mutating step going through `plan`.
fn run_op(imgs: &Images, root: &Path, case: &Case, plan: &Plan) -> Result<(), StageError> {
    let images = Faulty {
        inner: RealDir::open(&root.join("img"), false).unwrap(),
        plan,
        tag: "img",
    };
    let names = Names::new("hn-root.img");
    match case.op {
        Op::Stage { src, sha, reflink, sig } => {
            let mut source = StageSource::open(&imgs.path(src)).unwrap();
            let opts = StageOptions {
                sha256: sha.map(|k| imgs.sha(k)),
                reflink,
                free_bytes: FREE,
            };
            let trust = sig.map(|k| stage::StageTrust {
                store: &imgs.store,
                signature: Some(imgs.contents[k].clone()),
                context: Default::default(),
            });
            stage::stage_signed(&images, &names, &mut source, &opts, trust.as_ref(), &mut |_, _| {}).map(|_| ())
        }
        Op::Unstage => stage::unstage(&images, &names).map(|_| ()),
        Op::Revert => stage::request_revert(&images, &names).map(|_| ()),
    }
}

/// What the boot checks of a staged image (`select::validate_staged` without
/// the trial mount): size, filesystem, digest, and with `store` (a host that
/// trusts keys) a valid signature in the sidecar.
fn validate<'a>(dir: &'a Path, store: Option<&'a KeyStore>) -> impl FnMut(&str) -> Result<(), String> + 'a {
    move |name| {
        let path = dir.join(name);
        let data = std::fs::read(&path).map_err(|e| e.to_string())?;
        if data.len() < 1 << 20 || data.len() % 512 != 0 {
            return Err(format!("{} bytes", data.len()));
        }
        match probe::probe(&data) {
            Some(sb) if sb.fstype != FsType::Swap => {}
            _ => return Err("no filesystem recognised".into()),
        }
        if let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}.sha256"))) {
            let want = text.split_whitespace().next().unwrap_or("").to_string();
            if !imgs_sha_matches(&want, &data) {
                return Err("sha256 mismatch".into());
            }
        }
        if let Some(store) = store {
            let raw = std::fs::read(dir.join(format!("{name}.minisig"))).map_err(|e| format!("signature: {e}"))?;
            let sig = Signature::parse(&raw).map_err(|e| e.to_string())?;
            let v = hninit::trust::policy::decide(store, Some(&sig), &Default::default(), &data);
            if !v.is_accepted() {
                return Err(format!("signature {v}"));
            }
        }
        Ok(())
    }
}

/// Digests of the scenario images, computed once (sha256 is slow unoptimised).
fn imgs_sha_matches(want: &str, data: &[u8]) -> bool {
    use std::sync::Mutex;
    static KNOWN: Mutex<Vec<(Vec<u8>, String)>> = Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap();
    if let Some((_, h)) = known.iter().find(|(d, _)| d.as_slice() == data) {
        return h == want;
    }
    let h = sha_hex(data);
    let ok = h == want;
    known.push((data.to_vec(), h));
    ok
}

fn boot(root: &Path, store: Option<&KeyStore>) {
    let images = RealDir::open(&root.join("img"), false).unwrap();
    let state = RealDir::open(&root.join("state"), false).unwrap();
    let req = Request {
        revert: None,
        tries: 3,
        count_tries: false,
    };
    let dir = root.join("img");
    let mut v = validate(&dir, store);
    settle(&images, &state, &Names::new("hn-root.img"), &req, &mut v).unwrap();
}

/// Leftovers no one reads that `settle` does not remove (the next stage, unstage
/// or revert does): a torn `<name>.tmp` of write_atomic.
fn without_tmp(mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.retain(|n, _| !n.ends_with(".tmp"));
    m
}

const IMAGE_KEYS: &[&str] = &["A", "B", "C"];

#[test]
fn every_case_without_a_crash() {
    let imgs = Images::build();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("x");
    for case in cases() {
        prepare(&imgs, &root, &case);
        let r = run_op(&imgs, &root, &case, &Plan::new(None));
        let refused = case.name.starts_with("refused");
        assert_eq!(r.is_err(), refused, "{}: {r:?}", case.name);
        assert_eq!(snapshot(&imgs, &root.join("img")), map(case.after_op), "{}", case.name);
        boot(&root, case.keys().then_some(&imgs.store));
        assert_eq!(
            snapshot(&imgs, &root.join("img")),
            map(case.after_boot),
            "{}: after the boot",
            case.name
        );
    }
}

/// The enumeration fsyncs a lot: on tmpfs when there is one (the other tests use /tmp).
fn scratch() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        false => tempfile::tempdir().unwrap(),
    }
}

#[test]
fn every_case_survives_a_crash_at_every_step() {
    let imgs = Images::build();
    let t = scratch();
    let root = t.path().join("x");
    let mut total = 0;
    let mut report = Vec::new();
    for case in cases() {
        prepare(&imgs, &root, &case);
        let full = Plan::new(None);
        let _ = run_op(&imgs, &root, &case, &full);
        let steps = full.count.get();
        let start = map(case.start);
        let staged_before = start.get("hn-root-new.img").cloned();
        let src = match case.op {
            Op::Stage { src, .. } => Some(src),
            _ => None,
        };
        for k in 0..steps {
            prepare(&imgs, &root, &case);
            let plan = Plan::new(Some(k));
            assert!(
                run_op(&imgs, &root, &case, &plan).is_err(),
                "{}: crash at step {k} not reached",
                case.name
            );
            let at = plan.steps.borrow()[k].clone();
            let ctx = format!("{}: crash at step {k} ({at})", case.name);
            let now = snapshot(&imgs, &root.join("img"));

            // At the crash: the current image is untouched; a staged image is complete:
            // the one staged before or the source, nothing else.
            assert_eq!(now.get("hn-root.img").map(String::as_str), Some("A"), "{ctx}: {now:?}");
            if let Some(new) = now.get("hn-root-new.img") {
                let ok = Some(new) == staged_before.as_ref() || Some(new.as_str()) == src;
                assert!(ok, "{ctx}: hn-root-new.img holds {new}");
            }
            if case.keys() {
                // The staged image has its own signature: in its sidecar, or in a
                // committed stage's `.part.minisig` that the boot completes.
                if let Some(new) = now.get("hn-root-new.img") {
                    let pending = now
                        .get("hn-root-new.img.part.minisig")
                        .filter(|_| !now.contains_key("hn-root-new.img.part"));
                    let sig = pending.or(now.get("hn-root-new.img.minisig"));
                    assert_eq!(sig.cloned(), Some(format!("sig({new})")), "{ctx}: the staged image's signature: {now:?}");
                }
            }
            for (name, what) in &now {
                let image_name = name.ends_with(".img");
                assert!(
                    !image_name || IMAGE_KEYS.contains(&what.as_str()),
                    "{ctx}: {name} holds {what}"
                );
            }

            // The next boot: the staged image went in complete, or nothing happened.
            boot(&root, case.keys().then_some(&imgs.store));
            let booted = without_tmp(snapshot(&imgs, &root.join("img")));
            let cur = booted.get("hn-root.img").cloned().unwrap_or_default();
            assert!(
                !booted.contains_key("hn-root-new.img.part"),
                "{ctx}: .part left after the boot"
            );
            assert!(
                !booted.contains_key("hn-root-new.img"),
                "{ctx}: still staged after the boot"
            );
            match cur.as_str() {
                "A" => {}
                c if Some(c) == src || Some(c) == staged_before.as_deref() => {
                    assert_eq!(
                        booted.get("hn-root-old.img").map(String::as_str),
                        Some("A"),
                        "{ctx}: {booted:?}"
                    );
                }
                // A revert swaps in the previous image.
                "B" if matches!(case.op, Op::Revert) => {
                    assert_eq!(booted, map(case.after_boot), "{ctx}");
                }
                other => panic!("{ctx}: after the boot hn-root.img holds {other}: {booted:?}"),
            }
            if case.keys() {
                // Either image went in with its signature; none was rejected.
                assert!(!booted.contains_key("hn-root-rejected.img"), "{ctx}: an image was rejected: {booted:?}");
                if cur != "A" {
                    assert_eq!(booted.get("hn-root.img.minisig").cloned(), Some(format!("sig({cur})")), "{ctx}: {booted:?}");
                }
            }
            if cur == "A" {
                // Nothing happened: no image was lost either (a staged image that was
                // not booted was replaced, unstaged or rejected).
                for (name, key) in &start {
                    if name == "hn-root-old.img" {
                        assert_eq!(booted.get(name), Some(key), "{ctx}: {booted:?}");
                    }
                }
            }
            // Converges: another boot changes nothing.
            let before = snapshot(&imgs, &root.join("img"));
            boot(&root, case.keys().then_some(&imgs.store));
            assert_eq!(
                snapshot(&imgs, &root.join("img")),
                before,
                "{ctx}: a second boot changed something"
            );

            // Idempotent: running the operation again after the crash (before any
            // boot) gives the uninterrupted result.
            prepare(&imgs, &root, &case);
            let _ = run_op(&imgs, &root, &case, &Plan::new(Some(k)));
            let again = run_op(&imgs, &root, &case, &Plan::new(None));
            assert_eq!(
                again.is_err(),
                case.name.starts_with("refused"),
                "{ctx}: rerun {again:?}"
            );
            assert_eq!(snapshot(&imgs, &root.join("img")), map(case.after_op), "{ctx}: rerun");
            total += 1;
        }
        report.push(format!("{}: {steps} crash points", case.name));
    }
    eprintln!("{}\n{total} crash points in all", report.join("\n"));
    assert!(total >= 30, "suspiciously few crash points: {total}");
}

// Refusals: each one names its reason and leaves the directory as it was.

struct Host {
    _t: tempfile::TempDir,
    dir: PathBuf,
}

fn host(imgs: &Images, start: &[(&str, &str)]) -> Host {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("img");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, key) in start {
        std::fs::write(dir.join(name), &imgs.contents[key]).unwrap();
    }
    Host { _t: t, dir }
}

fn stage_file(h: &Host, path: &Path, opts: StageOptions) -> Result<stage::StageReport, StageError> {
    let images = RealDir::open(&h.dir, false).unwrap();
    let mut source = StageSource::open(path).unwrap();
    stage::stage(&images, &Names::new("hn-root.img"), &mut source, &opts, &mut |_, _| {})
}

fn opts() -> StageOptions {
    StageOptions {
        sha256: None,
        reflink: true,
        free_bytes: FREE,
    }
}

#[test]
fn refuses_when_space_is_short() {
    let imgs = Images::build();
    let h = host(&imgs, &[("hn-root.img", "A"), ("hn-root-new.img", "B")]);
    let before = snapshot(&imgs, &h.dir);
    let size = imgs.contents["C"].len() as u64;
    let need = size + size / 100 + (16 << 20);
    let e = stage_file(
        &h,
        &imgs.path("C"),
        StageOptions {
            free_bytes: need - 1,
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(e, StageError::NoSpace { .. }), "{e}");
    assert!(e.is_refusal());
    let msg = e.to_string();
    assert!(
        msg.contains(&need.to_string()) && msg.contains(&(need - 1).to_string()),
        "{msg}"
    );
    assert_eq!(snapshot(&imgs, &h.dir), before);
    // Exactly enough is enough.
    stage_file(
        &h,
        &imgs.path("C"),
        StageOptions {
            free_bytes: need,
            ..opts()
        },
    )
    .unwrap();
    // A stale .part's space counts as free: it is removed first.
    let h = host(&imgs, &[("hn-root.img", "A"), ("hn-root-new.img.part", "C")]);
    stage_file(
        &h,
        &imgs.path("C"),
        StageOptions {
            free_bytes: need - size,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(
        snapshot(&imgs, &h.dir),
        map(&[("hn-root.img", "A"), ("hn-root-new.img", "C")])
    );
}

#[test]
fn refuses_bad_images_and_leaves_nothing() {
    let imgs = Images::build();
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let cut_mid_sector = t.path().join("cut");
    std::fs::write(&cut_mid_sector, &imgs.contents["C"][..(3 << 20) + 100]).unwrap();
    let short = t.path().join("short");
    std::fs::write(&short, &imgs.contents["C"][..512 * 1024]).unwrap();
    let swap = t.path().join("swap");
    let mut sw = vec![0u8; 2 << 20];
    sw[4086..4096].copy_from_slice(b"SWAPSPACE2");
    sw[1024] = 1; // version
    std::fs::write(&swap, sw).unwrap();

    for start in [
        &[("hn-root.img", "A")][..],
        &[
            ("hn-root.img", "A"),
            ("hn-root-new.img", "B"),
            ("hn-root-new.img.sha256", "sha(B)"),
        ][..],
    ] {
        let h = host(&imgs, start);
        let before = snapshot(&imgs, &h.dir);
        let check = |what: &str, r: Result<stage::StageReport, StageError>, ok: &dyn Fn(&StageError) -> bool| {
            let e = r.expect_err(what);
            assert!(ok(&e), "{what}: {e:?}");
            assert!(e.is_refusal(), "{what}");
            assert_eq!(snapshot(&imgs, &h.dir), before, "{what}: something left behind");
        };
        check("garbage", stage_file(&h, &imgs.path("junk"), opts()), &|e| {
            matches!(e, StageError::NoFilesystem)
        });
        check("empty", stage_file(&h, &empty, opts()), &|e| {
            matches!(e, StageError::Empty)
        });
        check("cut", stage_file(&h, &cut_mid_sector, opts()), &|e| {
            matches!(e, StageError::Truncated { .. })
        });
        check("short", stage_file(&h, &short, opts()), &|e| {
            matches!(e, StageError::TooSmall { .. })
        });
        check("swap", stage_file(&h, &swap, opts()), &|e| {
            matches!(e, StageError::Swap)
        });
        let wrong = StageOptions {
            sha256: Some(imgs.sha("B")),
            ..opts()
        };
        check(
            "wrong sha256",
            stage_file(&h, &imgs.path("C"), wrong),
            &|e| matches!(e, StageError::DigestMismatch { expected, actual } if *expected == sha_hex(&imgs.contents["B"]) && *actual == sha_hex(&imgs.contents["C"])),
        );
        let wrong = StageOptions {
            sha256: Some(imgs.sha("B")),
            reflink: false,
            ..opts()
        };
        check("wrong sha256 copied", stage_file(&h, &imgs.path("C"), wrong), &|e| {
            matches!(e, StageError::DigestMismatch { .. })
        });
    }
}

/// A stream source (`hnctl stage -`): read/write, digest computed on the way,
/// the space checked once the size is known.
#[test]
fn stages_from_a_stream() {
    let imgs = Images::build();
    let stream = |key: &str| {
        let mut child = Command::new("cat")
            .arg(imgs.path(key))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out: std::os::fd::OwnedFd = child.stdout.take().unwrap().into();
        (
            child,
            StageSource::from_file(std::fs::File::from(out), "pipe".into(), true).unwrap(),
        )
    };
    let h = host(&imgs, &[("hn-root.img", "A")]);
    let images = RealDir::open(&h.dir, false).unwrap();
    let names = Names::new("hn-root.img");
    let (mut child, mut src) = stream("C");
    assert_eq!(src.len(), None);
    let mut seen = Vec::new();
    let o = StageOptions {
        sha256: Some(imgs.sha("C")),
        ..opts()
    };
    let r = stage::stage(&images, &names, &mut src, &o, &mut |d, t| seen.push((d, t))).unwrap();
    drop(src);
    child.wait().unwrap();
    assert_eq!(r.method, CopyMethod::ReadWrite);
    assert_eq!(r.bytes, imgs.contents["C"].len() as u64);
    assert_eq!(r.sha256.as_deref(), Some(sha_hex(&imgs.contents["C"]).as_str()));
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0) && seen.last().unwrap().0 == r.bytes,
        "{seen:?}"
    );
    assert_eq!(
        snapshot(&imgs, &h.dir),
        map(&[
            ("hn-root.img", "A"),
            ("hn-root-new.img", "C"),
            ("hn-root-new.img.sha256", "sha(C)")
        ])
    );
    // Unknown size: too little space shows only after the copy, and nothing stays.
    let (mut child, mut src) = stream("B");
    let o = StageOptions {
        free_bytes: 18 << 20,
        ..opts()
    };
    let e = stage::stage(&images, &names, &mut src, &o, &mut |_, _| {}).unwrap_err();
    drop(src);
    child.wait().unwrap();
    assert!(matches!(e, StageError::NoSpace { .. }), "{e}");
    assert_eq!(
        snapshot(&imgs, &h.dir),
        map(&[
            ("hn-root.img", "A"),
            ("hn-root-new.img", "C"),
            ("hn-root-new.img.sha256", "sha(C)")
        ])
    );
}

#[test]
fn copies_report_progress_up_to_the_size() {
    let imgs = Images::build();
    for reflink in [true, false] {
        let h = host(&imgs, &[("hn-root.img", "A")]);
        let images = RealDir::open(&h.dir, false).unwrap();
        let mut src = StageSource::open(&imgs.path("C")).unwrap();
        let mut last = (0, 0);
        let r = stage::stage(
            &images,
            &Names::new("hn-root.img"),
            &mut src,
            &StageOptions { reflink, ..opts() },
            &mut |d, t| last = (d, t),
        )
        .unwrap();
        let size = imgs.contents["C"].len() as u64;
        assert_eq!(last, (size, size));
        assert_eq!(r.fstype, "ext4");
        if !reflink {
            assert_eq!(r.method, CopyMethod::ReadWrite);
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.dir.join("hn-root-new.img"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
