//! Image trust against files made by the real `minisign` tool (Debian package
//! `minisign`): keys from `minisign -G -W`, signatures from `minisign -S` (and
//! `-S -l` for legacy ones), then every verdict of the policy — accepted,
//! not verified, unsigned, malformed, unknown key, revoked key, altered image,
//! altered trusted comment, bad comment, compat mismatch, downgrade with and
//! without the operator's allowance, size mismatch — the three-step key
//! rotation, the key store's safe reads and the one-read streaming check.

use hninit::trust::comment::Version;
use hninit::trust::keystore::{KeyStore, REVOKED_DIR, TRUSTED_DIR};
use hninit::trust::minisign::{Algorithm, PublicKey, Signature};
use hninit::trust::policy::{decide, Allowance, Context, Reject, SignedPart, Verdict};
use hninit::trust::stream::{self, Check};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn minisign(args: &[&str], dir: &Path) -> String {
    let out = Command::new("minisign")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the minisign tool is needed (Debian package minisign)");
    assert!(
        out.status.success(),
        "minisign {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key pair made by `minisign -G -W` and the key id the tool printed in the
/// public key file's comment.
struct Key {
    name: String,
    dir: PathBuf,
    shown_id: String,
}

impl Key {
    fn new(dir: &Path, name: &str) -> Key {
        let (p, s) = (format!("{name}.pub"), format!("{name}.key"));
        minisign(&["-G", "-W", "-p", &p, "-s", &s], dir);
        let text = std::fs::read_to_string(dir.join(&p)).unwrap();
        let shown_id = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("untrusted comment: minisign public key "))
            .expect("minisign's public key comment")
            .to_string();
        Key {
            name: name.into(),
            dir: dir.to_path_buf(),
            shown_id,
        }
    }

    fn pub_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pub", self.name))
    }

    fn public(&self) -> PublicKey {
        PublicKey::parse_file(&std::fs::read(self.pub_path()).unwrap()).unwrap()
    }

    /// `minisign -S` of `img` with `comment` as the trusted comment; returns the
    /// signature file's path (`<img>.<suffix>.minisig`).
    fn sign(&self, img: &Path, comment: &str, legacy: bool, suffix: &str) -> PathBuf {
        let sig = PathBuf::from(format!("{}.{suffix}.minisig", img.display()));
        let key = self.dir.join(format!("{}.key", self.name));
        let mut args = vec!["-S", "-s", key.to_str().unwrap(), "-m", img.to_str().unwrap(), "-x", sig.to_str().unwrap()];
        if !comment.is_empty() {
            args.extend(["-t", comment]);
        }
        if legacy {
            args.push("-l");
        }
        minisign(&args, &self.dir);
        sig
    }
}

struct Lab {
    dir: tempfile::TempDir,
    k1: Key,
    k2: Key,
    k3: Key,
    img: PathBuf,
}

/// Three keys and a 2.5 MiB image (more than two read chunks).
fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let k1 = Key::new(dir.path(), "k1");
    let k2 = Key::new(dir.path(), "k2");
    let k3 = Key::new(dir.path(), "k3");
    let img = dir.path().join("hn-root-2.img");
    let data: Vec<u8> = (0..(5u32 << 19)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&img, data).unwrap();
    Lab { dir, k1, k2, k3, img }
}

fn store(keys: &[&Key], revoked: &[&Key]) -> KeyStore {
    let mut s = KeyStore::default();
    for k in keys {
        s.add(k.public(), &format!("{}.pub", k.name)).unwrap();
    }
    for k in revoked {
        s.revoked.push(k.public().id);
    }
    s
}

fn sig(path: &Path) -> Signature {
    Signature::parse(&std::fs::read(path).unwrap()).unwrap()
}

fn judge(store: &KeyStore, sig: Option<&Signature>, ctx: &Context, img: &Path) -> Verdict {
    decide(store, sig, ctx, &std::fs::read(img).unwrap())
}

fn accepted(v: &Verdict) -> &hninit::trust::policy::Accepted {
    match v {
        Verdict::Accept(a) => a,
        other => panic!("expected acceptance, got {other}"),
    }
}

fn rejected(v: Verdict) -> Reject {
    match v {
        Verdict::Reject(r) => r,
        other => panic!("expected a rejection, got {other}"),
    }
}

const META: &str = "version=2026.12.5 compat=web-amd64";

#[test]
fn key_ids_match_what_minisign_prints() {
    let l = lab();
    for k in [&l.k1, &l.k2, &l.k3] {
        assert_eq!(k.public().id.to_string(), k.shown_id);
        assert_eq!(k.shown_id.parse::<hninit::trust::KeyId>().unwrap(), k.public().id);
    }
    let s = sig(&l.k1.sign(&l.img, META, false, "k1"));
    assert_eq!(s.key_id, l.k1.public().id);
}

#[test]
fn prehashed_and_legacy_signatures_of_the_real_tool_are_accepted() {
    let l = lab();
    let st = store(&[&l.k1], &[]);
    for legacy in [false, true] {
        let s = sig(&l.k1.sign(&l.img, &format!("{META}\tbuild=ci-7"), legacy, if legacy { "legacy" } else { "ed" }));
        assert_eq!(s.algorithm, if legacy { Algorithm::Legacy } else { Algorithm::Prehashed });
        let v = judge(&st, Some(&s), &Context::default(), &l.img);
        let a = accepted(&v);
        assert_eq!(a.key_id.to_string(), l.k1.shown_id);
        assert_eq!(a.key_file, "k1.pub");
        assert_eq!(a.meta.version, Some(Version::parse("2026.12.5").unwrap()));
        assert_eq!(a.meta.compat.as_deref(), Some("web-amd64"));
        assert_eq!(a.meta.other, [("build".to_string(), "ci-7".to_string())]);
        assert!(!a.downgrade);
        assert_eq!(
            v.to_string(),
            format!("accepted: signed by key {} (trusted.d/k1.pub), version=2026.12.5 compat=web-amd64 build=ci-7", l.k1.shown_id)
        );
    }
}

#[test]
fn every_refusal_has_its_own_reason() {
    let l = lab();
    let ctx = Context::default();
    let good_path = l.k1.sign(&l.img, META, false, "k1");
    let good = sig(&good_path);
    let st = store(&[&l.k1], &[]);

    // No trusted keys: not verified, whatever the signature.
    assert_eq!(judge(&KeyStore::default(), Some(&good), &ctx, &l.img), Verdict::NotVerified);
    assert_eq!(judge(&KeyStore::default(), None, &ctx, &l.img), Verdict::NotVerified);

    assert_eq!(rejected(judge(&st, None, &ctx, &l.img)), Reject::Unsigned);

    // One byte changed after signing, in the middle of the second chunk.
    let tampered = l.dir.path().join("tampered.img");
    let mut data = std::fs::read(&l.img).unwrap();
    data[1_500_000] ^= 0x01;
    std::fs::write(&tampered, &data).unwrap();
    for legacy in [false, true] {
        let s = sig(&l.k1.sign(&l.img, META, legacy, &format!("t{legacy}")));
        let r = rejected(judge(&st, Some(&s), &ctx, &tampered));
        assert_eq!(r, Reject::BadSignature { key_id: s.key_id, part: SignedPart::Image });
        assert_eq!(r.name(), "bad-signature");
    }
    // Truncated and extended images too.
    let r = rejected(decide(&st, Some(&good), &ctx, &data[..data.len() - 1]));
    assert_eq!(r.name(), "bad-signature");

    // Signed by a key that is not trusted.
    let other = sig(&l.k2.sign(&l.img, META, false, "k2"));
    assert_eq!(rejected(judge(&st, Some(&other), &ctx, &l.img)), Reject::UnknownKey(l.k2.public().id));

    // Revoked wins over trusted.
    let revoked = store(&[&l.k1, &l.k2], &[&l.k1]);
    let r = rejected(judge(&revoked, Some(&good), &ctx, &l.img));
    assert_eq!(r, Reject::RevokedKey(l.k1.public().id));
    assert!(r.to_string().contains(&format!("revoked.d/{}", l.k1.shown_id)), "{r}");

    // The trusted comment changed after signing: the global signature fails.
    let text = std::fs::read_to_string(&good_path).unwrap();
    let forged = Signature::parse(text.replace("version=2026.12.5", "version=2027.1.1").as_bytes()).unwrap();
    assert_eq!(
        rejected(judge(&st, Some(&forged), &ctx, &l.img)),
        Reject::BadSignature { key_id: l.k1.public().id, part: SignedPart::Comment }
    );

    // Comments that are signed but unusable.
    let no_version = sig(&l.k1.sign(&l.img, "compat=web-amd64", false, "nov"));
    assert_eq!(rejected(judge(&st, Some(&no_version), &ctx, &l.img)), Reject::BadComment("no version= token".into()));
    let default_comment = sig(&l.k1.sign(&l.img, "", false, "default"));
    let r = rejected(judge(&st, Some(&default_comment), &ctx, &l.img));
    assert!(matches!(&r, Reject::BadComment(e) if e.contains("timestamp:")), "{r}");

    // compat= must match the running image's when it declares one.
    let web = Context { current_compat: Some("web-amd64"), ..Context::default() };
    assert!(judge(&st, Some(&good), &web, &l.img).is_accepted());
    let db = Context { current_compat: Some("db-amd64"), ..Context::default() };
    assert_eq!(
        rejected(judge(&st, Some(&good), &db, &l.img)),
        Reject::CompatMismatch { current: "db-amd64".into(), image: Some("web-amd64".into()) }
    );
    let bare = sig(&l.k1.sign(&l.img, "version=2026.12.5", false, "bare"));
    assert_eq!(rejected(judge(&st, Some(&bare), &web, &l.img)).name(), "compat-mismatch");

    // size= must be the image's length.
    let len = std::fs::metadata(&l.img).unwrap().len();
    let sized = sig(&l.k1.sign(&l.img, &format!("version=1 size={len}"), false, "sized"));
    assert!(judge(&st, Some(&sized), &ctx, &l.img).is_accepted());
    let wrong = sig(&l.k1.sign(&l.img, &format!("version=1 size={}", len + 1), false, "wrongsize"));
    assert_eq!(
        rejected(judge(&st, Some(&wrong), &ctx, &l.img)),
        Reject::SizeMismatch { signed: len + 1, actual: len }
    );
}

#[test]
fn anti_rollback_floor_and_the_one_shot_allowance() {
    let l = lab();
    let st = store(&[&l.k1], &[]);
    let old = sig(&l.k1.sign(&l.img, "version=2026.11.30 compat=web-amd64", false, "old"));
    let floor = Version::parse("2026.12.5").unwrap();
    let ctx = Context { floor: Some(&floor), ..Context::default() };
    assert_eq!(
        rejected(judge(&st, Some(&old), &ctx, &l.img)),
        Reject::Downgrade { floor: floor.clone(), version: Version::parse("2026.11.30").unwrap() }
    );
    // Equal and higher versions pass the floor (numeric: 2026.12.10 > 2026.12.5).
    for v in ["2026.12.5", "2026.12.5.0", "2026.12.10"] {
        let s = sig(&l.k1.sign(&l.img, &format!("version={v}"), false, v));
        assert!(judge(&st, Some(&s), &ctx, &l.img).is_accepted(), "{v}");
    }
    // The operator's allowance for this very signature and version.
    let allow = Allowance::for_signature(&old, Version::parse("2026.11.30").unwrap());
    let allowed = Context { floor: Some(&floor), allowance: Some(&allow), ..Context::default() };
    let v = judge(&st, Some(&old), &allowed, &l.img);
    assert!(accepted(&v).downgrade);
    assert!(v.to_string().ends_with("downgrade allowed once by the operator"));
    // ... and for no other: another image of the same version is refused.
    let img2 = l.dir.path().join("other.img");
    std::fs::write(&img2, b"another image").unwrap();
    let other = sig(&l.k1.sign(&img2, "version=2026.11.30 compat=web-amd64", false, "other"));
    assert_eq!(rejected(judge(&st, Some(&other), &allowed, &img2)).name(), "downgrade");
    let wrong_version = Allowance::for_signature(&old, Version::parse("2026.11.29").unwrap());
    let c = Context { floor: Some(&floor), allowance: Some(&wrong_version), ..Context::default() };
    assert_eq!(rejected(judge(&st, Some(&old), &c, &l.img)).name(), "downgrade");
}

/// Image N trusts K1 and K2 and is signed by K1; N+1 is signed by K2 and trusts
/// K2 and K3; then N+2 signed by K3 is accepted and one signed by K1 is not. The
/// staged image is always judged by the keys of the image running now.
#[test]
fn three_step_key_rotation() {
    let l = lab();
    let ctx = Context::default();
    let by = |k: &Key, v: &str| sig(&k.sign(&l.img, &format!("version={v}"), false, &format!("{}-{v}", k.name)));
    let first_keys = store(&[&l.k1], &[]); // the image before N trusts only K1
    let n_keys = store(&[&l.k1, &l.k2], &[]);
    let n1_keys = store(&[&l.k2, &l.k3], &[]);

    let n = by(&l.k1, "1");
    assert!(judge(&first_keys, Some(&n), &ctx, &l.img).is_accepted());
    // Running N: N+1 signed by K2 is accepted; K3 is not known yet.
    let n1 = by(&l.k2, "2");
    assert!(judge(&n_keys, Some(&n1), &ctx, &l.img).is_accepted());
    let early = by(&l.k3, "3");
    assert_eq!(rejected(judge(&n_keys, Some(&early), &ctx, &l.img)), Reject::UnknownKey(l.k3.public().id));
    // Running N+1: K3 accepted, K1 no longer.
    let n2 = by(&l.k3, "3");
    assert!(judge(&n1_keys, Some(&n2), &ctx, &l.img).is_accepted());
    let stale = by(&l.k1, "3");
    assert_eq!(rejected(judge(&n1_keys, Some(&stale), &ctx, &l.img)), Reject::UnknownKey(l.k1.public().id));
    // A revoked K2 (say, leaked) is refused even though N+1 still trusts it.
    let mut leaked = n1_keys.clone();
    leaked.revoked.push(l.k2.public().id);
    assert_eq!(rejected(judge(&leaked, Some(&by(&l.k2, "4")), &ctx, &l.img)), Reject::RevokedKey(l.k2.public().id));
}

fn etc_with(l: &Lab, keys: &[&Key]) -> PathBuf {
    let etc = l.dir.path().join("etc-hninit");
    std::fs::create_dir_all(etc.join(TRUSTED_DIR)).unwrap();
    std::fs::create_dir_all(etc.join(REVOKED_DIR)).unwrap();
    for k in keys {
        std::fs::copy(k.pub_path(), etc.join(TRUSTED_DIR).join(format!("{}.pub", k.name))).unwrap();
    }
    etc
}

#[test]
fn key_store_loads_trusted_and_revoked_with_safe_reads() {
    let l = lab();
    let etc = etc_with(&l, &[&l.k2, &l.k1]);
    // Ignored: hidden entries and files not named *.pub.
    std::fs::write(etc.join(TRUSTED_DIR).join("README"), "keys go here").unwrap();
    std::fs::write(etc.join(TRUSTED_DIR).join(".k3.pub.swp"), "junk").unwrap();
    // A revocation by the id as minisign prints it (either case).
    std::fs::write(etc.join(REVOKED_DIR).join(l.k3.shown_id.to_lowercase()), "leaked 2026-12-01\n").unwrap();
    let s = KeyStore::load(&etc).unwrap();
    assert_eq!(s.trusted.iter().map(|t| t.file.as_str()).collect::<Vec<_>>(), ["k1.pub", "k2.pub"]);
    assert_eq!(s.revoked, [l.k3.public().id]);
    assert!(!s.is_empty());

    // Missing directories: no keys.
    assert!(KeyStore::load(&l.dir.path().join("nowhere")).unwrap().is_empty());

    let refused = |what: &dyn Fn(&Path), expect: &str| {
        let etc = l.dir.path().join(format!("etc-{}", expect.replace(' ', "-")));
        let _ = std::fs::remove_dir_all(&etc);
        std::fs::create_dir_all(etc.join(TRUSTED_DIR)).unwrap();
        std::fs::create_dir_all(etc.join(REVOKED_DIR)).unwrap();
        std::fs::copy(l.k1.pub_path(), etc.join(TRUSTED_DIR).join("k1.pub")).unwrap();
        what(&etc);
        let e = KeyStore::load(&etc).expect_err(expect).to_string();
        assert!(e.contains(expect), "{e} (expected {expect:?})");
    };
    refused(
        &|etc| std::os::unix::fs::symlink(l.k2.pub_path(), etc.join(TRUSTED_DIR).join("k2.pub")).unwrap(),
        "symbolic link",
    );
    refused(
        &|etc| {
            let st = Command::new("mkfifo").arg(etc.join(TRUSTED_DIR).join("k2.pub")).status().unwrap();
            assert!(st.success());
        },
        "not a regular file",
    );
    refused(&|etc| std::fs::write(etc.join(TRUSTED_DIR).join("k2.pub"), vec![b'x'; 4096]).unwrap(), "larger than");
    refused(
        &|etc| std::fs::write(etc.join(TRUSTED_DIR).join("k2.pub"), "untrusted comment: x\nnot base64\n").unwrap(),
        "public key line 2 (key)",
    );
    refused(&|etc| std::fs::write(etc.join(REVOKED_DIR).join("k2"), "").unwrap(), "is not a key id");
    refused(
        &|etc| {
            // Same key id, other key material.
            let text = std::fs::read_to_string(l.k2.pub_path()).unwrap();
            let k1 = std::fs::read_to_string(l.k1.pub_path()).unwrap();
            let id_b64 = &k1.lines().nth(1).unwrap()[..14];
            let mut line = text.lines().nth(1).unwrap().to_string();
            line.replace_range(..14, id_b64);
            std::fs::write(etc.join(TRUSTED_DIR).join("k9.pub"), format!("untrusted comment: x\n{line}\n")).unwrap();
        },
        "with a different key",
    );
}

#[test]
fn one_read_feeds_the_digest_and_the_signature() {
    let l = lab();
    let etc = etc_with(&l, &[&l.k1]);
    let st = KeyStore::load(&etc).unwrap();
    let sig_path = l.k1.sign(&l.img, META, false, "stream");
    // The sidecar as staged: X.minisig.
    let sidecar = PathBuf::from(format!("{}.minisig", l.img.display()));
    std::fs::copy(&sig_path, &sidecar).unwrap();
    let s = stream::read_signature(&sidecar).unwrap().unwrap();
    let mut sha = Sha256::new();
    let mut feed = |c: &[u8]| sha.update(c);
    let check = Check::start(&st, Ok(Some(&s)), &Context::default());
    assert!(check.decided().is_none());
    let mut f = std::fs::File::open(&l.img).unwrap();
    let (v, n) = stream::check_reader(check, &mut f, Some(&mut feed)).unwrap();
    let data = std::fs::read(&l.img).unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(sha.finalize().as_slice(), Sha256::digest(&data).as_slice());
    assert!(v.is_accepted(), "{v}");

    // A refusal known from the signature alone reads nothing.
    let other = sig(&l.k2.sign(&l.img, META, false, "other"));
    let check = Check::start(&st, Ok(Some(&other)), &Context::default());
    assert_eq!(check.decided().map(|v| v.is_accepted()), Some(false));
    let (v, n) = stream::check_reader(check, &mut std::fs::File::open(&l.img).unwrap(), None).unwrap();
    assert_eq!((rejected(v).name(), n), ("unknown-key", 0));

    // A damaged sidecar is invalid, never absent.
    assert_eq!(stream::read_signature(&l.dir.path().join("none.minisig")).unwrap(), None);
    let damaged = l.dir.path().join("damaged.minisig");
    std::fs::write(&damaged, "untrusted comment: x\n").unwrap();
    let e = stream::read_signature(&damaged).unwrap_err();
    assert!(e.contains("signature line 2"), "{e}");
    let check = Check::start(&st, Err(e), &Context::default());
    assert_eq!(rejected(check.finish()).name(), "malformed-signature");
    let link = l.dir.path().join("link.minisig");
    std::os::unix::fs::symlink(&sidecar, &link).unwrap();
    assert!(stream::read_signature(&link).unwrap_err().contains("symbolic link"));
}

/// `hnctl verify`: what the operator sees, and the exit codes (0 accepted or not
/// verified, 3 refused).
#[test]
fn hnctl_verify_prints_key_version_compat_and_verdict() {
    let l = lab();
    let etc = etc_with(&l, &[&l.k1]);
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_hnctl")).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let img = l.img.to_str().unwrap();
    let keys = etc.to_str().unwrap();
    // The sidecar by its default name.
    let s = l.k1.sign(&l.img, &format!("{META} build=7"), false, "cli");
    std::fs::copy(&s, format!("{img}.minisig")).unwrap();
    let (code, out, _) = run(&["verify", img, "--keys", keys]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("key id     {}\n", l.k1.shown_id)), "{out}");
    assert!(out.contains("version    2026.12.5\n"), "{out}");
    assert!(out.contains("compat     web-amd64\n"), "{out}");
    assert!(out.contains("build      7\n"), "{out}");
    assert!(out.contains(&format!("verdict    accepted: signed by key {} (trusted.d/k1.pub)", l.k1.shown_id)), "{out}");

    // Another key's signature, given with --signature: refused, exit 3.
    let other = l.k2.sign(&l.img, META, false, "cli2");
    let (code, out, err) = run(&["verify", img, "--keys", keys, "--signature", other.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.contains("version    2026.12.5 (not verified)"), "{out}");
    assert!(err.contains(&format!("unknown-key: signed by key {}", l.k2.shown_id)), "{err}");

    // Unsigned.
    std::fs::remove_file(format!("{img}.minisig")).unwrap();
    let (code, out, err) = run(&["verify", img, "--keys", keys]);
    assert_eq!(code, Some(3));
    assert!(out.contains("signature  none"), "{out}");
    assert!(err.contains("rejected: unsigned"), "{err}");

    // No trusted keys: not verified, as /init would boot it.
    let empty = l.dir.path().join("no-keys");
    let (code, out, _) = run(&["verify", img, "--keys", empty.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(out.contains("verdict    not verified: no trusted keys are installed"), "{out}");
}

/// `hnctl stage` with signatures: the same verdicts as `/init`, exit 3 and nothing
/// left on the host partition for a refused image, the signature kept as
/// `hn-root-new.img.minisig` for an accepted one.
#[test]
fn hnctl_stage_verifies_and_keeps_the_signature() {
    let l = lab();
    let etc = etc_with(&l, &[&l.k1]);
    let hp = l.dir.path().join("hostpart");
    std::fs::create_dir(&hp).unwrap();
    let mkfs = |p: &Path| {
        let st = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(p).arg("4M").stdout(std::process::Stdio::null()).status().unwrap();
        assert!(st.success());
    };
    mkfs(&hp.join("hn-root.img"));
    let img = l.dir.path().join("next.img");
    mkfs(&img);
    let stage = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_hnctl"))
            .arg("--hostpart")
            .arg(&hp)
            .args(["--real-root", "/hn-root.img", "stage"])
            .args(args)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(&hp).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    let i = img.to_str().unwrap();
    let keys = etc.to_str().unwrap();

    // Refusals: nothing left behind.
    let (code, err) = stage(&[i, "--keys", keys]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("signature rejected: unsigned"), "{err}");
    assert_eq!(listing(), ["hn-root.img"]);
    let other = l.k2.sign(&img, META, false, "k2");
    let (code, err) = stage(&[i, "--keys", keys, "--signature", other.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains(&format!("unknown-key: signed by key {}", l.k2.shown_id)), "{err}");
    assert_eq!(listing(), ["hn-root.img"]);
    let good = l.k1.sign(&img, META, false, "k1");
    let tampered = l.dir.path().join("tampered.img");
    let mut data = std::fs::read(&img).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    std::fs::write(&tampered, data).unwrap();
    let (code, err) = stage(&[tampered.to_str().unwrap(), "--keys", keys, "--signature", good.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("bad-signature: the image does not match"), "{err}");
    assert_eq!(listing(), ["hn-root.img"]);

    // A revoked key (also in trusted.d): refused, nothing left.
    let revoking = l.dir.path().join("etc-revoking");
    std::fs::create_dir_all(revoking.join(TRUSTED_DIR)).unwrap();
    std::fs::create_dir_all(revoking.join(REVOKED_DIR)).unwrap();
    std::fs::copy(l.k1.pub_path(), revoking.join(TRUSTED_DIR).join("k1.pub")).unwrap();
    std::fs::write(revoking.join(REVOKED_DIR).join(&l.k1.shown_id), b"").unwrap();
    let (code, err) = stage(&[i, "--keys", revoking.to_str().unwrap(), "--signature", good.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains(&format!("revoked-key: signed by key {}, which is revoked", l.k1.shown_id)), "{err}");
    assert_eq!(listing(), ["hn-root.img"]);
    // A compat= other than the running image's (from its signed sidecar): refused.
    let current_sig = l.k1.sign(&hp.join("hn-root.img"), "version=2026.12.1 compat=db-amd64", false, "cur");
    std::fs::rename(&current_sig, hp.join("hn-root.img.minisig")).unwrap();
    let (code, err) = stage(&[i, "--keys", keys, "--signature", good.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("compat-mismatch") && err.contains("db-amd64"), "{err}");
    assert_eq!(listing(), ["hn-root.img", "hn-root.img.minisig"]);
    std::fs::remove_file(hp.join("hn-root.img.minisig")).unwrap();

    // Accepted: the signature by its default name is found and kept.
    std::fs::copy(&good, format!("{i}.minisig")).unwrap();
    let (code, err) = stage(&[i, "--keys", keys]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(listing(), ["hn-root-new.img", "hn-root-new.img.minisig", "hn-root.img"]);
    assert_eq!(std::fs::read(hp.join("hn-root-new.img.minisig")).unwrap(), std::fs::read(&good).unwrap());
    // ... and what was staged verifies as /init will check it.
    let s = sig(&hp.join("hn-root-new.img.minisig"));
    assert!(judge(&KeyStore::load(&etc).unwrap(), Some(&s), &Context::default(), &hp.join("hn-root-new.img")).is_accepted());

    // hnctl status shows the staged image's signature (this machine's /etc/hninit
    // does not trust k1: shown as unverified) and the floor.
    let status = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hnctl"));
        c.arg("--hostpart").arg(&hp).args(["--real-root", "/hn-root.img", "status"]);
        if json {
            c.arg("--json");
        }
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };
    let j: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let staged = j["slots"].as_array().unwrap().iter().find(|x| x["role"] == "staged").unwrap();
    assert_eq!(staged["signature"]["key_id"], l.k1.shown_id.as_str());
    assert_eq!(staged["signature"]["version"], "2026.12.5");
    assert_eq!(staged["signature"]["compat"], "web-amd64");
    let text = status(false);
    assert!(text.contains(&format!("signed by key {}", l.k1.shown_id)), "{text}");
    assert!(text.contains("unsigned"), "{text}"); // the current image
    assert!(text.contains("anti-rollback   no floor yet"), "{text}");

    // Anti-rollback: below the floor in hn-state/ is refused, unless allowed once.
    std::fs::create_dir_all(hp.join("hn-state")).unwrap();
    std::fs::write(hp.join("hn-state/trust.json"), r#"{"floor":"2026.12.6"}"#).unwrap();
    let (code, err) = stage(&[i, "--keys", keys]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("downgrade: version 2026.12.5 is lower than 2026.12.6"), "{err}");
    let (code, err) = stage(&[i, "--keys", keys, "--allow-downgrade"]);
    assert_eq!(code, Some(0), "{err}");
    let allow = std::fs::read_to_string(hp.join("hn-state/allow-downgrade.json")).unwrap();
    assert!(allow.contains("\"version\": \"2026.12.5\""), "{allow}");
    let st = hninit::slots::dir::RealDir::open(&hp.join("hn-state"), false).unwrap();
    let a = hninit::slots::trust_state::read_allowance(&st).unwrap().unwrap();
    assert_eq!(a.signature, sig(&good).signature);
    assert!(status(false).contains("anti-rollback   floor 2026.12.6"));
    std::fs::remove_file(hp.join("hn-state/trust.json")).unwrap();

    // Staging an unsigned image without keys replaces it and drops the old sidecar.
    std::fs::remove_file(format!("{i}.minisig")).unwrap();
    let (code, err) = stage(&[i, "--keys", l.dir.path().join("none").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(listing(), ["hn-root-new.img", "hn-root.img", "hn-state"]);
}
