//! Crash-safety of the slot moves, proven by enumeration: every scenario is run
//! once per mutating step with a crash (every later operation fails, like a power
//! cut) injected at that step; then boot-time `settle` runs again on what is left.
//! At every crash point `hn-root.img` must name a complete image, and recovery must
//! converge to the same slots as an uninterrupted run; a further run changes nothing.
//! Signature sidecars (`X.minisig`, here "SIG A" for "IMAGE A") move with their
//! images: at no crash point does a bootable slot carry another image's sidecar,
//! and recovery puts each sidecar beside its image.

use hninit::cmdline::Revert;
mod common;

use common::faulty::{Faulty, Plan};
use hninit::slots::dir::{FileId, RealDir};
use hninit::slots::{settle, Names, Request, Trial, TRIAL};
use std::collections::BTreeMap;
use std::path::Path;

const IMAGES: &[&str] = &["IMAGE A", "IMAGE B", "IMAGE C"];

/// Like step 6: a filesystem, and with keys, a sidecar that signs this image.
fn validate(dir: &Path, keys: bool) -> impl FnMut(&str) -> Result<(), String> + '_ {
    move |name| {
        let data = std::fs::read(dir.join(name)).map_err(|e| e.to_string())?;
        if !data.starts_with(b"IMAGE ") {
            return Err("no filesystem recognised".into());
        }
        match std::fs::read(dir.join(Names::sig(name))) {
            Ok(sig) if sig[..] == [b"SIG ", &data[6..]].concat()[..] => Ok(()),
            Ok(_) => Err("bad-signature".into()),
            Err(_) if keys => Err("unsigned".into()),
            Err(_) => Ok(()),
        }
    }
}

/// At a crash point: no slot that may boot without validation (current, old,
/// broken) carries another image's sidecar. A staged image's sidecar is checked
/// by validation itself; a rejected one never boots.
fn sidecars_match(now: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, content) in now {
        let Some(image) = name.strip_suffix(".minisig") else { continue };
        if image.ends_with("-rejected.img") || image.ends_with("-new.img") {
            continue;
        }
        if let Some(img) = now.get(image) {
            if let Some(letter) = img.strip_prefix("IMAGE ") {
                if content != &format!("SIG {letter}") {
                    return Err(format!("{name} is {content:?} beside {img:?}"));
                }
            }
        }
    }
    Ok(())
}

/// name -> content of every file in the images dir (hn-state excluded).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            m.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap());
        }
    }
    m
}

struct Case {
    name: &'static str,
    start: &'static [(&'static str, &'static str)],
    /// Trial on the current image before the boot: tries_left.
    trial_left: Option<u32>,
    req: Request,
    expect: &'static [(&'static str, &'static str)],
}

fn req(revert: Option<Revert>, count: bool) -> Request {
    Request { revert, tries: 3, count_tries: count }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "upgrade",
            start: &[("hn-root.img", "IMAGE A"), ("hn-root-new.img", "IMAGE B")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A")],
        },
        Case {
            name: "upgrade over an old image",
            start: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A"), ("hn-root-new.img", "IMAGE C")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE C"), ("hn-root-old.img", "IMAGE B")],
        },
        Case {
            name: "upgrade with leftovers of an interrupted stage",
            start: &[("hn-root.img", "IMAGE A"), ("hn-root-new.img", "IMAGE B"), ("hn-root-new.img.part", "IMAGE C half"), ("hn-root-old.img.tmp", "IMAGE A")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A")],
        },
        Case {
            name: "an interrupted download is kept for resume",
            start: &[("hn-root.img", "IMAGE A"), ("hn-root-new.img.part", "IMAGE C half"), ("hn-root-new.img.part.json", "{}"), ("hn-root-new.img.part.json.tmp", "{")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root-new.img.part", "IMAGE C half"), ("hn-root-new.img.part.json", "{}")],
        },
        Case {
            name: "revert by flag",
            start: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A"), ("system-revert", "")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root-broken.img", "IMAGE B")],
        },
        Case {
            name: "revert by command line wins over a staged image",
            start: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A"), ("hn-root-new.img", "IMAGE C")],
            trial_left: None,
            req: req(Some(Revert::Manual), false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root-broken.img", "IMAGE B"), ("hn-root-rejected.img", "IMAGE C")],
        },
        Case {
            name: "revert with no old image",
            start: &[("hn-root.img", "IMAGE A"), ("system-revert", "")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A")],
        },
        Case {
            name: "garbage staged image is rejected",
            start: &[("hn-root.img", "IMAGE A"), ("hn-root-new.img", "garbage"), ("hn-root-new.img.sha256", "x")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root-rejected.img", "garbage")],
        },
        Case {
            name: "exhausted trial reverts by itself",
            start: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A")],
            trial_left: Some(0),
            req: req(None, true),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root-broken.img", "IMAGE B")],
        },
        Case {
            name: "hn.revert=auto from the boot loader",
            start: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A")],
            trial_left: Some(1),
            req: req(Some(Revert::Auto), false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root-broken.img", "IMAGE B")],
        },
        Case {
            name: "late hn.revert=auto on an image marked good changes nothing",
            start: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A")],
            trial_left: None,
            req: req(Some(Revert::Auto), false),
            expect: &[("hn-root.img", "IMAGE B"), ("hn-root-old.img", "IMAGE A")],
        },
        Case {
            name: "missing current image is recovered from old",
            start: &[("hn-root-old.img", "IMAGE A")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A")],
        },
        Case {
            name: "signed upgrade",
            start: &[("hn-root.img", "IMAGE A"), ("hn-root.img.minisig", "SIG A"), ("hn-root-new.img", "IMAGE B"), ("hn-root-new.img.minisig", "SIG B")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE B"), ("hn-root.img.minisig", "SIG B"), ("hn-root-old.img", "IMAGE A"), ("hn-root-old.img.minisig", "SIG A")],
        },
        Case {
            name: "signed upgrade over a signed old image",
            start: &[
                ("hn-root.img", "IMAGE B"), ("hn-root.img.minisig", "SIG B"),
                ("hn-root-old.img", "IMAGE A"), ("hn-root-old.img.minisig", "SIG A"),
                ("hn-root-new.img", "IMAGE C"), ("hn-root-new.img.minisig", "SIG C"),
            ],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE C"), ("hn-root.img.minisig", "SIG C"), ("hn-root-old.img", "IMAGE B"), ("hn-root-old.img.minisig", "SIG B")],
        },
        Case {
            name: "signed upgrade from an unsigned image over a signed old one",
            start: &[
                ("hn-root.img", "IMAGE B"),
                ("hn-root-old.img", "IMAGE A"), ("hn-root-old.img.minisig", "SIG A"),
                ("hn-root-new.img", "IMAGE C"), ("hn-root-new.img.minisig", "SIG C"),
            ],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE C"), ("hn-root.img.minisig", "SIG C"), ("hn-root-old.img", "IMAGE B")],
        },
        Case {
            name: "staged image signed for another image is rejected with its sidecar",
            start: &[
                ("hn-root.img", "IMAGE A"), ("hn-root.img.minisig", "SIG A"),
                ("hn-root-rejected.img", "IMAGE C"), ("hn-root-rejected.img.minisig", "SIG C"),
                ("hn-root-new.img", "IMAGE B"), ("hn-root-new.img.minisig", "SIG C"),
            ],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root.img.minisig", "SIG A"), ("hn-root-rejected.img", "IMAGE B"), ("hn-root-rejected.img.minisig", "SIG C")],
        },
        Case {
            name: "unsigned staged image is rejected when keys are present",
            start: &[
                ("hn-root.img", "IMAGE A"), ("hn-root.img.minisig", "SIG A"),
                ("hn-root-rejected.img", "IMAGE C"), ("hn-root-rejected.img.minisig", "SIG C"),
                ("hn-root-new.img", "IMAGE B"),
            ],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root.img.minisig", "SIG A"), ("hn-root-rejected.img", "IMAGE B")],
        },
        Case {
            name: "signed revert by flag",
            start: &[
                ("hn-root.img", "IMAGE B"), ("hn-root.img.minisig", "SIG B"),
                ("hn-root-old.img", "IMAGE A"), ("hn-root-old.img.minisig", "SIG A"),
                ("hn-root-broken.img", "IMAGE C"), ("hn-root-broken.img.minisig", "SIG C"),
                ("system-revert", ""),
            ],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root.img.minisig", "SIG A"), ("hn-root-broken.img", "IMAGE B"), ("hn-root-broken.img.minisig", "SIG B")],
        },
        Case {
            name: "signed revert wins over a signed staged image",
            start: &[
                ("hn-root.img", "IMAGE B"), ("hn-root.img.minisig", "SIG B"),
                ("hn-root-old.img", "IMAGE A"), ("hn-root-old.img.minisig", "SIG A"),
                ("hn-root-new.img", "IMAGE C"), ("hn-root-new.img.minisig", "SIG C"),
            ],
            trial_left: None,
            req: req(Some(Revert::Manual), false),
            expect: &[
                ("hn-root.img", "IMAGE A"), ("hn-root.img.minisig", "SIG A"),
                ("hn-root-broken.img", "IMAGE B"), ("hn-root-broken.img.minisig", "SIG B"),
                ("hn-root-rejected.img", "IMAGE C"), ("hn-root-rejected.img.minisig", "SIG C"),
            ],
        },
        Case {
            name: "missing signed current image is recovered from old with its sidecar",
            start: &[("hn-root.img.minisig", "SIG B"), ("hn-root-old.img", "IMAGE A"), ("hn-root-old.img.minisig", "SIG A")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE A"), ("hn-root.img.minisig", "SIG A")],
        },
        Case {
            name: "missing current image with only a staged one",
            start: &[("hn-root-new.img", "IMAGE B")],
            trial_left: None,
            req: req(None, false),
            expect: &[("hn-root.img", "IMAGE B")],
        },
    ]
}

fn prepare(root: &Path, case: &Case) {
    let images = root.join("img");
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("state")).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    for (name, content) in case.start {
        std::fs::write(images.join(name), content).unwrap();
    }
    if let Some(left) = case.trial_left {
        let md = std::fs::metadata(images.join("hn-root.img")).unwrap();
        use std::os::unix::fs::MetadataExt;
        let t = Trial { image: FileId { ino: md.ino(), size: md.len() }, tries_left: left, tries: 3 };
        std::fs::write(root.join("state").join(TRIAL), serde_json::to_vec(&t).unwrap()).unwrap();
    }
}

fn run(root: &Path, case: &Case, plan: &Plan) -> Result<hninit::slots::Outcome, hninit::slots::SlotError> {
    let images = Faulty { inner: RealDir::open(&root.join("img"), false).unwrap(), plan, tag: "img" };
    let state = Faulty { inner: RealDir::open(&root.join("state"), false).unwrap(), plan, tag: "state" };
    let names = Names::new("hn-root.img");
    let img_dir = root.join("img");
    let keys = case.start.iter().any(|(n, _)| n.ends_with(".minisig"));
    let mut v = validate(&img_dir, keys);
    settle(&images, &state, &names, &case.req, &mut v)
}

fn expected(case: &Case) -> BTreeMap<String, String> {
    case.expect.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn every_case_converges_without_a_crash() {
    let t = tempfile::tempdir().unwrap();
    for case in cases() {
        let root = t.path().join("x");
        prepare(&root, &case);
        let out = run(&root, &case, &Plan::new(None)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert!(!out.events.is_empty() || case.expect == case.start, "{}: no event logged", case.name);
        assert_eq!(snapshot(&root.join("img")), expected(&case), "{}", case.name);
        sidecars_match(&snapshot(&root.join("img"))).unwrap();
    }
}

#[test]
fn every_case_survives_a_crash_at_every_step() {
    let t = tempfile::tempdir().unwrap();
    let mut total = 0;
    let mut report = Vec::new();
    for case in cases() {
        let root = t.path().join("x");
        // How many mutating steps does an uninterrupted run take?
        prepare(&root, &case);
        let full = Plan::new(None);
        run(&root, &case, &full).unwrap();
        let steps = full.count.get();
        for k in 0..steps {
            prepare(&root, &case);
            let plan = Plan::new(Some(k));
            assert!(run(&root, &case, &plan).is_err(), "{}: crash at step {k} not reached", case.name);
            let crashed_at = plan.steps.borrow()[k].clone();
            let now = snapshot(&root.join("img"));
            // At the crash: hn-root.img names a complete image (unless it was missing from the start
            // and the crash came before its recovery).
            let started_without = !case.start.iter().any(|(n, _)| *n == "hn-root.img");
            match now.get("hn-root.img") {
                Some(c) => assert!(IMAGES.contains(&c.as_str()), "{}: crash at {crashed_at}: hn-root.img holds {c:?}", case.name),
                None => assert!(started_without, "{}: crash at {crashed_at}: hn-root.img missing", case.name),
            }
            sidecars_match(&now).unwrap_or_else(|e| panic!("{}: crash at {crashed_at}: {e}", case.name));
            // No image other than those the case replaces on purpose is gone.
            for (_, content) in case.expect {
                assert!(now.values().any(|c| c == content), "{}: crash at {crashed_at}: {content} lost", case.name);
            }
            // Reboot: settle again without faults, twice.
            run(&root, &case, &Plan::new(None)).unwrap_or_else(|e| panic!("{}: recovery after {crashed_at}: {e}", case.name));
            let mut after = snapshot(&root.join("img"));
            after.retain(|n, _| !n.ends_with(".tmp"));
            assert_eq!(after, expected(&case), "{}: after a crash at step {k} ({crashed_at})", case.name);
            if case.name.starts_with("upgrade") {
                // The image rotated in is on trial, whatever step the crash hit.
                use std::os::unix::fs::MetadataExt;
                let md = std::fs::metadata(root.join("img/hn-root.img")).unwrap();
                let t: Trial = serde_json::from_slice(&std::fs::read(root.join("state").join(TRIAL)).unwrap()).unwrap();
                assert_eq!(t.image, FileId { ino: md.ino(), size: md.len() }, "{}: trial after crash at {crashed_at}", case.name);
            }
            let again = Plan::new(None);
            let c2 = Case { req: Request { count_tries: false, ..case.req }, ..case_ref(&case) };
            run(&root, &c2, &again).unwrap();
            assert_eq!(snapshot(&root.join("img")), expected(&case), "{}: third run changed something", case.name);
            total += 1;
        }
        report.push(format!("{}: {steps} crash points", case.name));
    }
    eprintln!("{}\n{total} crash points in all", report.join("\n"));
    assert!(total > 40, "suspiciously few crash points: {total}");
}

fn case_ref(c: &Case) -> Case {
    Case { name: c.name, start: c.start, trial_left: c.trial_left, req: c.req, expect: c.expect }
}
