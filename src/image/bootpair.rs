//! The image's boot pair, `/boot/kernel` + `/boot/initramfs`, kept by the
//! kernel hooks (`hnctl initramfs update`): built for the newest installed
//! kernel and switched atomically.
//!
//! Layout (paths under the root, e.g. `/`):
//!
//! ```text
//! boot/kernel     -> hninit/kernel          (fixed symlinks)
//! boot/initramfs  -> hninit/initramfs
//! boot/hninit     -> hninit.d/<release>-<digest>   (the switch)
//! boot/hninit.d/<release>-<digest>/{kernel,initramfs}
//! ```
//!
//! A pair is a directory made complete (files fsynced) under a temporary name
//! and renamed; the switch is one `rename` of the `boot/hninit` symlink, so a
//! crash leaves the old pair or the new one, never a mix. GRUB (`(loop)/boot/kernel`)
//! and `/init`'s kexec step (reads inside the image, symlinks resolved in it)
//! both follow the links. The digest is the pair's content: a rebuild that
//! gives the same bytes changes nothing (idempotent). An image whose pair is two
//! regular files (the factory's, older images) is first adopted: the same files
//! hard-linked into a pair directory, then the links put in their place.
//!
//! [`decide`] is the pure part (which kernel, what to remove); [`update`] runs
//! it through [`BootFs`], whose real implementation is [`RealBootFs`] and whose
//! faulty one cuts the power between steps in `tests/bootpair_crash.rs`.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `boot/hninit`, the switch symlink.
pub const SWITCH: &str = "boot/hninit";
/// Directory of the pairs.
pub const PAIRS: &str = "boot/hninit.d";
/// Target of `boot/kernel`.
pub const KERNEL_LINK: &str = "hninit/kernel";
/// Target of `boot/initramfs`.
pub const INITRAMFS_LINK: &str = "hninit/initramfs";

/// What `boot/kernel` or `boot/initramfs` is now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Entry {
    #[default]
    Absent,
    File,
    Link(String),
    Other,
}

/// What the hook sees of the root, read by [`BootFs::view`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// Releases with `boot/vmlinuz-R` and `lib/modules/R/modules.dep`.
    pub kernels: Vec<String>,
    /// Releases with `boot/vmlinuz-R` but no module index (not usable).
    pub without_modules: Vec<String>,
    /// The target of `boot/hninit`, if a symlink.
    pub switch: Option<String>,
    pub kernel: Entry,
    pub initramfs: Entry,
    /// Names in `boot/hninit.d/`.
    pub pairs: Vec<String>,
}

/// What to do, decided from a [`View`] alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The release to boot, the newest usable one.
    pub release: String,
    /// `boot/kernel` and `boot/initramfs` are regular files (an older image):
    /// adopt them as a pair first, so that the switch below is one rename.
    pub adopt: bool,
}

/// Orders kernel releases as dpkg orders versions (`6.1.0-9` < `6.1.0-10`,
/// `6.12~rc1` < `6.12`): digit runs numerically, other runs by character with
/// `~` before everything, letters before other characters.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit run.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = (i < a.len() && !a[i].is_ascii_digit()).then(|| a[i]);
            let cb = (j < b.len() && !b[j].is_ascii_digit()).then(|| b[j]);
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            i += ca.is_some() as usize;
            j += cb.is_some() as usize;
        }
        // Digit run, numerically (leading zeros ignored).
        let (si, sj) = (i, j);
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let na = std::str::from_utf8(&a[si..i]).unwrap_or("").trim_start_matches('0');
        let nb = std::str::from_utf8(&b[sj..j]).unwrap_or("").trim_start_matches('0');
        let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// The pure decision: the newest usable kernel other than `exclude` (the one a
/// `prerm` hook is removing), and whether the current pair must be adopted.
/// `None` when no kernel is left to boot.
pub fn decide(view: &View, exclude: Option<&str>) -> Option<Decision> {
    let release = view
        .kernels
        .iter()
        .filter(|k| Some(k.as_str()) != exclude)
        .max_by(|a, b| compare_releases(a, b))?
        .clone();
    let adopt = view.switch.is_none() && (view.kernel == Entry::File || view.initramfs == Entry::File);
    Some(Decision { release, adopt })
}

/// The name of a pair directory: the release and the first 16 hex digits of
/// the sha256 of the kernel and the initramfs.
pub fn pair_name(release: &str, kernel: &[u8], initramfs: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((kernel.len() as u64).to_le_bytes());
    h.update(kernel);
    h.update(initramfs);
    let d = h.finalize();
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{release}-{hex}")
}

/// The mutating steps of [`update`], each one crash-consistent on its own,
/// paths relative to the root. The faulty test implementation cuts between
/// (and inside) them.
pub trait BootFs {
    fn root(&self) -> &Path;
    fn read(&self, rel: &str) -> Result<Vec<u8>>;
    fn view(&self) -> Result<View> {
        read_view(self.root())
    }
    fn create_dir(&self, rel: &str) -> Result<()>;
    /// Writes a new file and fsyncs it (no rename: its directory is new).
    fn write_new(&self, rel: &str, data: &[u8]) -> Result<()>;
    /// A hard link of `from` at `to` (a new name).
    fn hard_link(&self, from: &str, to: &str) -> Result<()>;
    fn symlink(&self, target: &str, rel: &str) -> Result<()>;
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    fn fsync_dir(&self, rel: &str) -> Result<()>;
    fn remove_tree(&self, rel: &str) -> Result<()>;
}

/// [`BootFs`] on a real directory.
pub struct RealBootFs(pub PathBuf);

impl BootFs for RealBootFs {
    fn root(&self) -> &Path {
        &self.0
    }
    fn read(&self, rel: &str) -> Result<Vec<u8>> {
        let p = self.0.join(rel);
        fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }
    fn create_dir(&self, rel: &str) -> Result<()> {
        let p = self.0.join(rel);
        fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))
    }
    fn write_new(&self, rel: &str, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.0.join(rel);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        f.write_all(data).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", p.display()))
    }
    fn hard_link(&self, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.0.join(from), self.0.join(to));
        if fs::hard_link(&a, &b).is_err() {
            let data = fs::read(&a).with_context(|| format!("reading {}", a.display()))?;
            return self.write_new(to, &data);
        }
        Ok(())
    }
    fn symlink(&self, target: &str, rel: &str) -> Result<()> {
        let p = self.0.join(rel);
        std::os::unix::fs::symlink(target, &p).with_context(|| format!("linking {} -> {target}", p.display()))
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.0.join(from), self.0.join(to));
        fs::rename(&a, &b).with_context(|| format!("renaming {} to {}", a.display(), b.display()))
    }
    fn fsync_dir(&self, rel: &str) -> Result<()> {
        let p = self.0.join(rel);
        fs::File::open(&p).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", p.display()))
    }
    fn remove_tree(&self, rel: &str) -> Result<()> {
        let p = self.0.join(rel);
        match fs::symlink_metadata(&p) {
            Err(_) => Ok(()),
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display())),
            Ok(_) => fs::remove_file(&p).with_context(|| format!("removing {}", p.display())),
        }
    }
}

fn entry(p: &Path) -> Entry {
    match fs::symlink_metadata(p) {
        Err(_) => Entry::Absent,
        Ok(m) if m.file_type().is_symlink() => {
            Entry::Link(fs::read_link(p).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default())
        }
        Ok(m) if m.is_file() => Entry::File,
        Ok(_) => Entry::Other,
    }
}

/// Reads the [`View`] of `root`.
pub fn read_view(root: &Path) -> Result<View> {
    let mut v = View::default();
    let boot = root.join("boot");
    let rd = fs::read_dir(&boot).with_context(|| format!("listing {}", boot.display()))?;
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rel) = name.strip_prefix("vmlinuz-") else { continue };
        if rel.is_empty() || rel.contains('/') || rel.starts_with('.') {
            continue;
        }
        if root.join("lib/modules").join(rel).join("modules.dep").is_file() {
            v.kernels.push(rel.to_string());
        } else {
            v.without_modules.push(rel.to_string());
        }
    }
    v.kernels.sort();
    v.without_modules.sort();
    v.switch = match entry(&root.join(SWITCH)) {
        Entry::Link(t) => Some(t),
        _ => None,
    };
    v.kernel = entry(&root.join("boot/kernel"));
    v.initramfs = entry(&root.join("boot/initramfs"));
    if let Ok(rd) = fs::read_dir(root.join(PAIRS)) {
        v.pairs = rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        v.pairs.sort();
    }
    Ok(v)
}

/// What [`update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateReport {
    pub release: String,
    /// The pair directory now booted (`boot/hninit.d/NAME`).
    pub pair: String,
    /// False when the pair was already the booted one (nothing switched).
    pub switched: bool,
    pub adopted: bool,
    /// Pair directories removed (older kernels, leftovers).
    pub removed: Vec<String>,
}

/// Points `name` (a symlink) at `target` with one rename over it.
fn relink(fs_: &dyn BootFs, target: &str, name: &str) -> Result<()> {
    let tmp = format!("{name}.hninit-tmp");
    fs_.remove_tree(&tmp)?;
    fs_.symlink(target, &tmp)?;
    fs_.rename(&tmp, name)
}

/// Builds the pair for the newest kernel other than `exclude` with `build`
/// (release → initramfs bytes) and switches to it; removes the other pairs.
/// Any error leaves the previous pair booted.
pub fn update(
    fs_: &dyn BootFs,
    exclude: Option<&str>,
    build: &dyn Fn(&str) -> Result<Vec<u8>>,
) -> Result<UpdateReport> {
    let view = fs_.view()?;
    let Some(d) = decide(&view, exclude) else {
        bail!(
            "no kernel to boot in {}: no /boot/vmlinuz-R with /lib/modules/R/modules.dep{}{}",
            fs_.root().display(),
            exclude.map(|e| format!(" other than {e} (being removed)")).unwrap_or_default(),
            if view.without_modules.is_empty() {
                String::new()
            } else {
                format!(" (without modules: {})", view.without_modules.join(", "))
            }
        );
    };
    if !fs_.root().join(PAIRS).is_dir() {
        fs_.create_dir(PAIRS)?;
    }
    let mut adopted = false;
    if d.adopt {
        // The current files, hard-linked into a pair of their own.
        let k = fs_.read("boot/kernel").unwrap_or_default();
        let i = fs_.read("boot/initramfs").unwrap_or_default();
        let name = pair_name("adopted", &k, &i);
        let tmp = format!("{PAIRS}/.new-{name}");
        fs_.remove_tree(&tmp)?;
        fs_.create_dir(&tmp)?;
        if view.kernel == Entry::File {
            fs_.hard_link("boot/kernel", &format!("{tmp}/kernel"))?;
        }
        if view.initramfs == Entry::File {
            fs_.hard_link("boot/initramfs", &format!("{tmp}/initramfs"))?;
        }
        fs_.fsync_dir(&tmp)?;
        fs_.remove_tree(&format!("{PAIRS}/{name}"))?;
        fs_.rename(&tmp, &format!("{PAIRS}/{name}"))?;
        fs_.fsync_dir(PAIRS)?;
        relink(fs_, &format!("hninit.d/{name}"), SWITCH)?;
        fs_.fsync_dir("boot")?;
        adopted = true;
    }
    // The links are fixed; (re)placing them changes nothing that boots once the
    // switch names the same files.
    if fs_.view()?.switch.is_some() {
        for (name, target) in [("boot/kernel", KERNEL_LINK), ("boot/initramfs", INITRAMFS_LINK)] {
            if entry(&fs_.root().join(name)) != Entry::Link(target.into()) {
                relink(fs_, target, name)?;
            }
        }
        fs_.fsync_dir("boot")?;
    }

    // The new pair, complete before it gets its name.
    let release = d.release;
    let kernel = fs_.read(&format!("boot/vmlinuz-{release}"))?;
    let initramfs = build(&release).with_context(|| format!("building the initramfs for {release}"))?;
    let name = pair_name(&release, &kernel, &initramfs);
    let dir = format!("{PAIRS}/{name}");
    if !fs_.root().join(&dir).join("initramfs").is_file() {
        let tmp = format!("{PAIRS}/.new-{name}");
        fs_.remove_tree(&tmp)?;
        fs_.create_dir(&tmp)?;
        fs_.hard_link(&format!("boot/vmlinuz-{release}"), &format!("{tmp}/kernel"))?;
        fs_.write_new(&format!("{tmp}/initramfs"), &initramfs)?;
        fs_.fsync_dir(&tmp)?;
        fs_.remove_tree(&dir)?;
        fs_.rename(&tmp, &dir)?;
        fs_.fsync_dir(PAIRS)?;
    }
    let target = format!("hninit.d/{name}");
    let switched = fs_.view()?.switch.as_deref() != Some(target.as_str());
    if switched {
        relink(fs_, &target, SWITCH)?;
        fs_.fsync_dir("boot")?;
    }
    for (n, t) in [("boot/kernel", KERNEL_LINK), ("boot/initramfs", INITRAMFS_LINK)] {
        if entry(&fs_.root().join(n)) != Entry::Link(t.into()) {
            relink(fs_, t, n)?;
            fs_.fsync_dir("boot")?;
        }
    }
    // Everything else in hninit.d goes (older pairs, a cut build's leftovers).
    let mut removed = Vec::new();
    for p in fs_.view()?.pairs {
        if p != name {
            fs_.remove_tree(&format!("{PAIRS}/{p}"))?;
            removed.push(p);
        }
    }
    if !removed.is_empty() {
        fs_.fsync_dir(PAIRS)?;
    }
    Ok(UpdateReport { release, pair: name, switched, adopted, removed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_order_like_dpkg() {
        use Ordering::*;
        assert_eq!(compare_releases("6.1.0-9-amd64", "6.1.0-10-amd64"), Less);
        assert_eq!(compare_releases("6.12.9+bpo-amd64", "6.1.0-28-amd64"), Greater);
        assert_eq!(compare_releases("6.12~rc1", "6.12"), Less);
        assert_eq!(compare_releases("6.1.0-28-cloud-amd64", "6.1.0-28-amd64"), Greater);
        assert_eq!(compare_releases("6.1.0-28-amd64", "6.1.0-28-amd64"), Equal);
        assert_eq!(compare_releases("6.01", "6.1"), Equal);
    }

    fn view(kernels: &[&str]) -> View {
        View { kernels: kernels.iter().map(|s| s.to_string()).collect(), ..View::default() }
    }

    #[test]
    fn newest_kernel_other_than_the_one_removed() {
        let v = view(&["6.1.0-9-amd64", "6.1.0-10-amd64"]);
        assert_eq!(decide(&v, None).unwrap().release, "6.1.0-10-amd64");
        assert_eq!(decide(&v, Some("6.1.0-10-amd64")).unwrap().release, "6.1.0-9-amd64");
        assert_eq!(decide(&view(&["6.1.0-9-amd64"]), Some("6.1.0-9-amd64")), None);
        assert_eq!(decide(&view(&[]), None), None);
    }

    #[test]
    fn regular_files_are_adopted_once() {
        let mut v = view(&["6.1.0-9-amd64"]);
        v.kernel = Entry::File;
        v.initramfs = Entry::File;
        assert!(decide(&v, None).unwrap().adopt);
        v.switch = Some("hninit.d/x".into());
        assert!(!decide(&v, None).unwrap().adopt);
    }

    #[test]
    fn kernel_without_module_index_is_not_usable() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("boot")).unwrap();
        fs::create_dir_all(r.join("lib/modules/1.0-a")).unwrap();
        fs::create_dir_all(r.join("lib/modules/2.0-a")).unwrap();
        fs::write(r.join("lib/modules/1.0-a/modules.dep"), "").unwrap();
        fs::write(r.join("boot/vmlinuz-1.0-a"), "k1").unwrap();
        fs::write(r.join("boot/vmlinuz-2.0-a"), "k2").unwrap();
        fs::write(r.join("boot/vmlinuz-3.0-a"), "k3").unwrap();
        let v = read_view(r).unwrap();
        assert_eq!(v.kernels, ["1.0-a"]);
        assert_eq!(v.without_modules, ["2.0-a", "3.0-a"]);
        assert_eq!(v.kernel, Entry::Absent);
    }
}
