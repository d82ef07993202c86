//! Step 6 at boot: the slots on the mounted host partition. Opens the image
//! directory and `hn-state/`, validates a staged image (size, superblock,
//! read-only trial mount with its init checked, then one read of the image for
//! the optional sha256 digest and the minisign signature against the
//! initramfs's `/etc/hninit` key store), runs
//! `slots::settle`, logs each decision to kmsg and `hn-state/boot.log`, and
//! starts GRUB's trial counter on the ESP when an image was rotated in.

use crate::cmdline::{Cmdline, Revert};
use crate::slots::esp::EspAccess;
use crate::modules::drivers::Drivers;
use crate::error::{sys, BootError, Result};
use crate::slots::dir::{CopyInfo, CopyOpts, Dir, FileId, RealDir};
use crate::slots::{self, Names, Outcome, Request, SlotError};
use crate::slots::bootlog;
use crate::slots::trust_state;
use crate::sys::{loopmount, probe, saferead};
use super::step8_rootfs as rootfs;
use crate::trust::policy::{Context, Reject, Verdict};
use crate::trust::stream::{self, Check};
use crate::trust::KeyStore;
use rustix::mount::MountFlags;
use sha2::Digest;
use std::path::{Path, PathBuf};

use crate::layout::{STATE_DIR, TRIAL_MOUNT};

/// The image path on the mounted host partition for `real_root=`.
pub fn image_path(hostpart: &Path, real_root: &str) -> PathBuf {
    hostpart.join(real_root.trim_start_matches('/'))
}

/// Settles the slots and returns the outcome (events already logged).
pub fn settle_at_boot(cmd: &Cmdline, hostpart: &Path, hostpart_dev: &str, drivers: &Drivers) -> Result<Outcome> {
    let image = image_path(hostpart, &cmd.real_root);
    let dir = image.parent().unwrap_or(hostpart).to_path_buf();
    let file = image.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let missing = || BootError::ImageMissing {
        path: image.display().to_string(),
        dev: hostpart_dev.to_string(),
    };
    let images = RealDir::open(&dir, false).map_err(|_| missing())?;
    let state = RealDir::open(&hostpart.join(STATE_DIR), true).map_err(sys(format!("open {}/{STATE_DIR}", hostpart.display())))?;
    let counter = std::cell::Cell::new(0);
    let images = Stepped { inner: &images, n: &counter };
    let state = Stepped { inner: &state, n: &counter };
    let names = Names::new(&file);
    let req = Request {
        revert: if cmd.kexeced { None } else { cmd.revert },
        tries: cmd.tries,
        count_tries: !cmd.kexeced && !cmd.tries_by_grub,
    };
    let trust = boot_trust(cmd, &images, &state, &names);
    let mut validate = |name: &str| validate_staged(&dir.join(name), drivers, &cmd.init, &trust);
    let result = slots::settle(&images, &state, &names, &req, &mut validate);
    let mut lines = vec![format!("boot: {}", std::fs::read_to_string("/proc/cmdline").unwrap_or_default().trim())];
    let outcome = match result {
        Ok(o) => o,
        Err(SlotError::NoImage { .. }) => return Err(missing()),
        Err(e) => {
            // A failing disk must not stop a boot that can still go on with hn-root.img.
            error!("slots: {e}; booting {} as it is", names.current);
            lines.push(format!("error: {e}"));
            crate::log::ignored(
                bootlog::append(&state, &bootlog::now(), &lines, true),
                "append the slot error to the boot log",
                "the error is on the console already",
            );
            return Ok(Outcome::default());
        }
    };
    for e in &outcome.events {
        notice!("{e}");
    }
    // The downgrade allowance is for the staged image it names, once: gone with it.
    if trust.allowance.is_some() && !images.exists(&names.new).unwrap_or(true) {
        match trust_state::clear_allowance(&state) {
            Ok(_) => info!("the operator's downgrade allowance was used up"),
            Err(e) => warn!("cannot remove {STATE_DIR}/{}: {e}", trust_state::ALLOW_FILE),
        }
    }
    lines.extend(outcome.events.iter().cloned());
    // A boot that changed nothing logs its header line without an fsync (≈ 20 ms
    // of a journal commit under QEMU TCG): a power cut may lose it, nothing else.
    if let Err(e) = bootlog::append(&state, &bootlog::now(), &lines, !outcome.events.is_empty()) {
        warn!("cannot append to {}/{STATE_DIR}/{}: {e}", hostpart.display(), bootlog::BOOT_LOG);
    }
    let load = |fs: &str| drivers.load_for_fs(fs);
    let esp = EspAccess::with_module_loader(&load);
    // After a revert, or when the boot loader's hn.revert=auto was ignored (the image
    // was marked good), GRUB's counter must stop choosing the revert entry.
    let auto_ignored = cmd.revert == Some(Revert::Auto) && !outcome.reverted && !cmd.kexeced;
    if outcome.reverted || auto_ignored {
        match esp.clear_trial_counter() {
            Ok(Some(f)) => info!("boot counter in {}'s grubenv cleared", f.device.display()),
            Ok(None) => {}
            Err(e) => warn!("cannot clear the boot counter on the ESP: {e}"),
        }
    } else if let Some(t) = outcome.trial.filter(|_| outcome.rotated) {
        match esp.start_trial_counter(t.tries) {
            Ok(Some(f)) => info!("boot counter in {}'s grubenv set: GRUB counts the next boots of the trial", f.device.display()),
            Ok(None) => debug!("no ESP with hninit's grubenv: hninit counts the trial's boots itself"),
            Err(e) => warn!("cannot set the boot counter on the ESP: {e}; hninit counts the trial's boots itself"),
        }
    }
    Ok(outcome)
}

/// Logs each mutating step (debug) before doing it: the power-cut tests kill the
/// machine when they see a step's line.
struct Stepped<'a> {
    inner: &'a dyn Dir,
    n: &'a std::cell::Cell<usize>,
}

impl Stepped<'_> {
    fn step(&self, what: std::fmt::Arguments) {
        let n = self.n.get();
        self.n.set(n + 1);
        debug!("slot step {n}: {what} in {}", self.inner.label());
    }
}

impl Dir for Stepped<'_> {
    fn label(&self) -> String {
        self.inner.label()
    }
    fn id(&self, name: &str) -> std::io::Result<Option<FileId>> {
        self.inner.id(name)
    }
    fn read(&self, name: &str, max: usize) -> std::io::Result<Option<Vec<u8>>> {
        self.inner.read(name, max)
    }
    fn link(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.step(format_args!("link {from} {to}"));
        self.inner.link(from, to)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.step(format_args!("rename {from} {to}"));
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.step(format_args!("unlink {name}"));
        self.inner.remove(name)
    }
    fn write_synced(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.step(format_args!("write+fsync {name}"));
        self.inner.write_synced(name, data)
    }
    fn append_synced(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.inner.append_synced(name, data)
    }
    fn append(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.inner.append(name, data)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.step(format_args!("fsync"));
        self.inner.sync()
    }
    fn create_from(
        &self,
        name: &str,
        src: &std::fs::File,
        len_hint: Option<u64>,
        opts: CopyOpts,
        progress: &mut dyn FnMut(u64),
    ) -> std::io::Result<CopyInfo> {
        self.step(format_args!("create {name}"));
        self.inner.create_from(name, src, len_hint, opts, progress)
    }
    fn open_read(&self, name: &str) -> std::io::Result<std::fs::File> {
        self.inner.open_read(name)
    }
}

/// What step 6 judges a staged image by: the initramfs's key store
/// (`/etc/hninit`; `Err` when damaged: every staged image is rejected), the
/// anti-rollback floor and the downgrade allowance from `hn-state/`, and the
/// current image's `compat=` from its verified sidecar.
pub struct BootTrust {
    pub store: std::result::Result<KeyStore, String>,
    pub floor: std::result::Result<Option<crate::trust::Version>, String>,
    pub allowance: Option<crate::trust::Allowance>,
    pub compat: Option<String>,
}

fn boot_trust(cmd: &Cmdline, images: &dyn Dir, state: &dyn Dir, names: &Names) -> BootTrust {
    let store = KeyStore::load(Path::new(crate::trust::keystore::DEFAULT_ETC)).map_err(|e| e.to_string());
    if cmd.verify_off && store.as_ref().map_or(true, |s| !s.is_empty()) {
        warn!("hn.verify=off refused: this initramfs trusts signing keys, and whoever can edit the command line could otherwise boot any image; to stop verifying, boot an initramfs built without --trust-key");
    }
    let allowance = trust_state::read_allowance(state).unwrap_or_else(|e| {
        warn!("{e}: no downgrade is allowed");
        None
    });
    let compat = store
        .as_ref()
        .ok()
        .and_then(|s| trust_state::slot_meta(images, &names.current, s))
        .and_then(|(_, m)| m.compat);
    BootTrust { floor: trust_state::read_floor(state), store, allowance, compat }
}

/// Checks a staged image before it may become current. The reason is logged and kept.
pub fn validate_staged(
    path: &Path,
    drivers: &Drivers,
    init: &str,
    trust: &BootTrust,
) -> std::result::Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let size = meta.len();
    if size < 1 << 20 {
        return Err(format!("only {size} bytes"));
    }
    if size % 512 != 0 {
        return Err(format!("{size} bytes is not a whole number of 512-byte sectors (truncated?)"));
    }
    let sb = saferead::open_path(path).map_err(std::io::Error::from).and_then(probe::probe_file).map_err(|e| format!("cannot read: {e}"))?;
    let fstype = match sb {
        Some(sb) if sb.fstype != probe::FsType::Swap => sb.fstype.mount_type(),
        _ => return Err("no filesystem recognised".into()),
    };
    trial_mount(path, fstype, drivers, init)?;
    check_bytes(path, trust)
}

/// One read of the staged image for its digest (`X.sha256`, when present) and its
/// signature (`X.minisig`, required when keys are trusted).
fn check_bytes(path: &Path, trust: &BootTrust) -> std::result::Result<(), String> {
    let digest_file = PathBuf::from(format!("{}.sha256", path.display()));
    // The sidecar is optional, but one that is there and damaged (a FIFO, a
    // symlink, too large, not text, not a sha256) rejects the image: invalid,
    // never absent.
    let want = read_digest(&digest_file)?;
    let empty = KeyStore::default();
    let (store, mut broken) = match &trust.store {
        Ok(s) => (s, None),
        Err(e) => (&empty, Some(e.clone())),
    };
    let floor = match &trust.floor {
        Ok(f) => f.clone(),
        Err(e) if !store.is_empty() => {
            broken = Some(format!("anti-rollback state {e}"));
            None
        }
        Err(_) => None,
    };
    let ctx = Context { current_compat: trust.compat.as_deref(), floor: floor.as_ref(), allowance: trust.allowance.as_ref() };
    let sig_path = PathBuf::from(format!("{}{}", path.display(), crate::trust::SIG_SUFFIX));
    let sig = stream::read_signature(&sig_path);
    let check = match &broken {
        Some(e) => return Err(format!("signature: {}", Verdict::Reject(Reject::KeyStore(e.clone())))),
        None => Check::start(store, sig.as_ref().map(Option::as_ref).map_err(Clone::clone), &ctx),
    };
    let started = std::time::Instant::now();
    let mut f = saferead::open_path(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut h = sha2::Sha256::new();
    let mut feed = |c: &[u8]| h.update(c);
    let also: stream::Feed = if want.is_some() { Some(&mut feed) } else { None };
    let (verdict, n) = stream::check_reader(check, &mut f, also).map_err(|e| format!("cannot read: {e}"))?;
    let took = started.elapsed();
    if let Some(want) = want {
        let got = crate::util::hex(&h.finalize());
        if want != got {
            return Err(format!("sha256 {got} does not match {}", digest_file.display()));
        }
        info!("{}: sha256 matches", path.display());
    }
    match verdict {
        Verdict::Reject(r) => Err(format!("signature rejected: {r}")),
        Verdict::NotVerified => {
            notice!("{}: not verified: this initramfs trusts no signing keys", path.display());
            Ok(())
        }
        Verdict::Accept(a) => {
            info!("{}: signature verified in {:.2} s ({n} bytes): {a}", path.display(), took.as_secs_f64());
            Ok(())
        }
    }
}

/// The digest a sidecar `X.sha256` asks for (`sha256sum` format: 64 hex digits,
/// then anything), `None` when there is no sidecar; an error names what is wrong.
pub fn read_digest(file: &Path) -> std::result::Result<Option<String>, String> {
    let raw = match saferead::read_path(file, MAX_DIGEST_FILE) {
        Ok(b) => b,
        Err(e) if e.is_absent() => return Ok(None),
        Err(e) => return Err(format!("digest file invalid: {e}")),
    };
    parse_digest(&raw).map(Some).map_err(|why| format!("digest file invalid: {}: {why}", file.display()))
}

/// The sha256 at the start of a sidecar's bytes, lowercase. Pure.
pub fn parse_digest(raw: &[u8]) -> std::result::Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8 text".to_string())?;
    let want = text.split_whitespace().next().unwrap_or("");
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{:?} is not 64 hexadecimal digits", want.chars().take(80).collect::<String>()));
    }
    Ok(want.to_ascii_lowercase())
}

/// A sidecar is one line; anything larger is not one.
const MAX_DIGEST_FILE: u64 = 4096;

/// Mounts the image read-only on a read-only loop device, checks its init, unmounts.
fn trial_mount(path: &Path, fstype: &str, drivers: &Drivers, init: &str) -> std::result::Result<(), String> {
    let target = Path::new(TRIAL_MOUNT);
    let req = loopmount::Request { fstype: Some(fstype), options: &Default::default(), flags: MountFlags::RDONLY, read_only_device: true };
    loopmount::mount_image_file(path, target, &req, drivers).map_err(|e| format!("trial mount failed: {e}"))?;
    let checked = rootfs::check_init(target, init).map_err(|e| format!("its init {init} {e}")).and_then(|()| check_boot_files(target));
    if let Err(e) = rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()) {
        // The verdict stands; a trial mount left behind only costs a loop device
        // until the handoff empties the initramfs.
        warn!("cannot unmount the trial mount {TRIAL_MOUNT}: {e}");
    }
    checked
}

/// The kernel and initramfs step 7 would load from the image, when it has them:
/// regular files inside the image (symlinks resolved in it). A FIFO, a device
/// node or a link out of the image rejects it.
pub fn check_boot_files(root: &Path) -> std::result::Result<(), String> {
    let dir = saferead::SafeDir::open(root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    for f in [super::step7_kexec::KERNEL, super::step7_kexec::INITRAMFS] {
        match dir.open_file(f, saferead::Follow::InRoot) {
            Ok(_) => {}
            Err(e) if e.is_absent() => {}
            Err(e) => return Err(format!("its /{f} is unusable: {e}")),
        }
    }
    Ok(())
}
