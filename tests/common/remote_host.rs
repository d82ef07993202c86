//! The host side of the remote staging tests (`remote.rs`: a URL from nginx,
//! `remote_oci.rs`: `oci://` from docker-registry): a temp host partition with a
//! current image, ext4 images with incompressible blocks, `hnctl` run against
//! the partition, minisign key pairs, and the checks of what a user sees (exit
//! code, messages, the staged image, no leftovers).
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PART: &str = "hn-root-new.img.part";
pub const RECORD: &str = "hn-root-new.img.part.json";
pub const NEW: &str = "hn-root-new.img";

/// A port free on 127.0.0.1 for a server the test starts.
pub fn free_port() -> u16 {
    super::nginx::free_port().expect("a free port on 127.0.0.1")
}

/// A host partition (`dir`) in a temp dir (`t`) with a 4 MiB current image.
pub struct Host {
    pub t: tempfile::TempDir,
    pub dir: PathBuf,
}

pub fn host() -> Host {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("hostpart");
    std::fs::create_dir(&dir).unwrap();
    mkfs(&dir.join("hn-root.img"), 4);
    Host { t, dir }
}

pub fn mkfs(path: &Path, mib: u32) {
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .arg(format!("{mib}M"))
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success());
}

/// An ext4 image of `mib` MiB whose blocks past the first MiB are incompressible
/// (so that zstd leaves it large and a rate limit takes seconds).
pub fn image(path: &Path, mib: u32, seed: u64) -> Vec<u8> {
    mkfs(path, mib);
    let mut data = std::fs::read(path).unwrap();
    let mut x = seed | 1;
    for b in data[1 << 20..].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// `hnctl` on the host partition, output captured, with no proxy for
/// 127.0.0.1 and no docker credentials from the test's environment.
pub fn hnctl_cmd(h: &Host, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hnctl"));
    cmd.arg("--hostpart").arg(&h.dir).args(["--real-root", "/hn-root.img"]).args(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env("no_proxy", "127.0.0.1").env("NO_PROXY", "127.0.0.1");
    cmd.env("DOCKER_CONFIG", h.dir.join("no-docker-config"));
    cmd
}

pub fn hnctl(h: &Host, args: &[&str]) -> Output {
    hnctl_cmd(h, args).output().unwrap()
}

pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit 0; the stdout.
#[track_caller]
pub fn ok(o: Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn staged(h: &Host) -> Option<Vec<u8>> {
    std::fs::read(h.dir.join(NEW)).ok()
}

#[track_caller]
pub fn assert_nothing_staged(h: &Host) {
    assert!(!h.dir.join(NEW).exists(), "a staged image was left");
}

/// Refused (exit 3) naming `reason`, and nothing left: no staged image,
/// `.part`, resume record or signature.
#[track_caller]
pub fn assert_refused(h: &Host, o: &Output, reason: &str) {
    assert_eq!(o.status.code(), Some(3), "{}", show(o));
    assert!(String::from_utf8_lossy(&o.stderr).contains(reason), "{reason}: {}", show(o));
    assert_nothing_staged(h);
    assert!(!h.dir.join(PART).exists() && !h.dir.join(RECORD).exists(), "a .part or record was left");
    assert!(!h.dir.join("hn-root-new.img.minisig").exists(), "a signature was left");
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// `minisign` (Debian's) in `dir`.
pub fn minisign(args: &[&str], dir: &Path) {
    let o = Command::new("minisign")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the minisign tool is needed (Debian package minisign)");
    assert!(o.status.success(), "minisign {args:?}: {}", show(&o));
}

/// A key pair from `minisign -G -W`; `sign` writes `X.minisig` next to `X`
/// (or at `to`) with `comment` as the trusted comment.
pub struct SignKey {
    pub dir: PathBuf,
    pub name: &'static str,
}

impl SignKey {
    pub fn new(dir: &Path, name: &'static str) -> SignKey {
        minisign(&["-G", "-W", "-p", &format!("{name}.pub"), "-s", &format!("{name}.key")], dir);
        SignKey { dir: dir.to_path_buf(), name }
    }

    pub fn sign(&self, img: &Path, comment: &str, to: &Path) {
        let key = self.dir.join(format!("{}.key", self.name));
        minisign(
            &["-S", "-s", key.to_str().unwrap(), "-m", img.to_str().unwrap(), "-x", to.to_str().unwrap(), "-t", comment],
            &self.dir,
        );
    }

    /// An etc directory trusting this key (`trusted.d/NAME.pub`).
    pub fn etc(&self) -> PathBuf {
        let etc = self.dir.join(format!("etc-{}", self.name));
        std::fs::create_dir_all(etc.join("trusted.d")).unwrap();
        std::fs::copy(self.dir.join(format!("{}.pub", self.name)), etc.join(format!("trusted.d/{}.pub", self.name))).unwrap();
        etc
    }
}

/// `zstd` of the whole file: one frame.
pub fn zstd_one_frame(src: &Path, dst: &Path) {
    let st = Command::new("zstd").args(["-q", "-f", "-3", "-o"]).arg(dst).arg(src).status().unwrap();
    assert!(st.success());
}

/// One zstd frame per MiB (docs/publishing.md's recipe: split, zstd, cat).
pub fn zstd_frames(src: &Path, dst: &Path) {
    let data = std::fs::read(src).unwrap();
    let mut out = Vec::new();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let piece = dst.with_extension(format!("piece{i}"));
        std::fs::write(&piece, chunk).unwrap();
        let z = piece.with_extension(format!("piece{i}.zst"));
        zstd_one_frame(&piece, &z);
        out.extend(std::fs::read(&z).unwrap());
        std::fs::remove_file(&piece).unwrap();
        std::fs::remove_file(&z).unwrap();
    }
    std::fs::write(dst, out).unwrap();
}

/// Starts `hnctl stage URL`, waits until its record says at least `at` bytes are
/// durable, then kills it with SIGKILL.
pub fn kill_at(h: &Host, url: &str, at: u64) {
    kill_at_with(h, &["stage", url], at)
}

pub fn kill_at_with(h: &Host, args: &[&str], at: u64) {
    let mut child = hnctl_cmd(h, args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(b) = std::fs::read(h.dir.join(RECORD)) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                if v["written"].as_u64().unwrap_or(0) >= at {
                    break;
                }
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("hnctl ended ({st}) before {at} bytes were durable");
        }
        assert!(Instant::now() < deadline, "no progress to {at} bytes");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Somewhere between two checkpoints, not right after one.
    std::thread::sleep(Duration::from_millis(random_below(1000)));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// kill -9 at `first` durable bytes, then a power cut and a boot (which must
/// keep the resumable `.part`), then kill -9 again 2–3 MiB further: an
/// interrupted stage, twice. Returns the record the first kill left.
pub fn kill_twice_with_a_boot(h: &Host, url: &str, first: u64) -> serde_json::Value {
    kill_at(h, url, first);
    assert_nothing_staged(h);
    let record = serde_json::from_slice(&std::fs::read(h.dir.join(RECORD)).unwrap()).unwrap();
    boot(h);
    assert!(h.dir.join(PART).exists(), "the boot removed a resumable .part");
    kill_at(h, url, first + (2 << 20) + random_below(1 << 20));
    assert_nothing_staged(h);
    record
}

/// The block size of the indexes the tests publish (`hnctl index`'s default).
pub const BLOCK: usize = 64 * 1024;

/// A current image of `mib` MiB on `h` (`hn-root.img`) and the next one,
/// written at `at` with its index at `at.bidx`, differing in the blocks
/// `changed(number of blocks)` names (one byte of each flipped): (current,
/// next, the changed blocks).
pub fn next_image(h: &Host, mib: u32, seed: u64, changed: impl Fn(usize) -> Vec<usize>, at: &Path) -> (Vec<u8>, Vec<u8>, Vec<usize>) {
    let old = image(&h.dir.join("hn-root.img"), mib, seed);
    let blocks = changed(old.len() / BLOCK);
    let mut new = old.clone();
    for &b in &blocks {
        new[b * BLOCK + 100] ^= 0x5a;
    }
    std::fs::write(at, &new).unwrap();
    let idx = hnctl(h, &["index", at.to_str().unwrap()]);
    assert_eq!(idx.status.code(), Some(0), "{}", show(&idx));
    std::fs::write(format!("{}.bidx", at.display()), &idx.stdout).unwrap();
    (old, new, blocks)
}

/// 5 % of the blocks, past the first MiB (the filesystem's metadata stays valid).
pub fn five_percent(blocks: usize) -> Vec<usize> {
    (0..blocks * 5 / 100).map(|k| 16 + k * 17 % (blocks - 16)).collect()
}

/// The 64 KiB blocks the adaptive resume tests change in a 16 MiB image: a run
/// of 9 MiB from the second MiB, fetched as one Range request (nginx's
/// `limit_rate` lets every reply send its first second's worth at once, so
/// only a reply longer than that is slowed: one-block replies would go at
/// full speed), then every fourth block of the last 5 MiB (small ranges with
/// skipped blocks between them).
pub fn resume_test_blocks(blocks: usize) -> Vec<usize> {
    (16..160).chain((176..blocks).step_by(4)).collect()
}

/// What the boot does to the host partition when nothing is staged (`slots::settle`).
pub fn boot(h: &Host) {
    use hninit::slots::dir::RealDir;
    use hninit::slots::{settle, Names, Request};
    let images = RealDir::open(&h.dir, false).unwrap();
    let state = RealDir::open(&h.dir.join("hn-state"), true).unwrap();
    let req = Request { revert: None, tries: 3, count_tries: false };
    settle(&images, &state, &Names::new("hn-root.img"), &req, &mut |_| Ok(())).unwrap();
}

pub fn random_below(n: u64) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    (t ^ (std::process::id() as u64).wrapping_mul(0x9e37_79b9)) % n
}
