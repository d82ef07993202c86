//! The kernel hooks' boot pair switch (`hninit::image::bootpair::update`) under
//! a power cut at every step: whatever the cut, `/boot/kernel` and
//! `/boot/initramfs` resolve to the previous pair or the new one (never a mix,
//! never missing), and running the update again finishes the job.
#![cfg(feature = "image")]

use anyhow::Result;
use hninit::image::bootpair::{self, BootFs, RealBootFs};
use std::cell::Cell;
use std::fs;
use std::path::Path;

/// Cuts the power at mutating step `fail_at`: that step does not happen (a
/// file write is left torn: half its bytes, not synced) and every later step
/// fails.
struct Faulty {
    inner: RealBootFs,
    fail_at: usize,
    count: Cell<usize>,
}

impl Faulty {
    fn step(&self) -> Result<bool> {
        let n = self.count.get();
        self.count.set(n + 1);
        if n > self.fail_at {
            anyhow::bail!("power cut");
        }
        Ok(n < self.fail_at)
    }
}

macro_rules! cut {
    ($self:ident, $torn:expr, $op:expr) => {{
        if !$self.step()? {
            #[allow(clippy::redundant_closure_call)]
            ($torn)();
            anyhow::bail!("power cut");
        }
        $op
    }};
}

impl BootFs for Faulty {
    fn root(&self) -> &Path {
        self.inner.root()
    }
    fn read(&self, rel: &str) -> Result<Vec<u8>> {
        if self.count.get() > self.fail_at {
            anyhow::bail!("power cut");
        }
        self.inner.read(rel)
    }
    fn create_dir(&self, rel: &str) -> Result<()> {
        cut!(self, || (), self.inner.create_dir(rel))
    }
    fn write_new(&self, rel: &str, data: &[u8]) -> Result<()> {
        cut!(self, || { let _ = fs::write(self.root().join(rel), &data[..data.len() / 2]); }, self.inner.write_new(rel, data))
    }
    fn hard_link(&self, from: &str, to: &str) -> Result<()> {
        cut!(self, || (), self.inner.hard_link(from, to))
    }
    fn symlink(&self, target: &str, rel: &str) -> Result<()> {
        cut!(self, || (), self.inner.symlink(target, rel))
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        cut!(self, || (), self.inner.rename(from, to))
    }
    fn fsync_dir(&self, rel: &str) -> Result<()> {
        cut!(self, || (), self.inner.fsync_dir(rel))
    }
    fn remove_tree(&self, rel: &str) -> Result<()> {
        // A cut removal of a tree may have removed part of it.
        cut!(self, || { let _ = fs::remove_file(self.root().join(rel).join("kernel")); }, self.inner.remove_tree(rel))
    }
}

fn kernel(root: &Path, release: &str) {
    fs::create_dir_all(root.join("lib/modules").join(release)).unwrap();
    fs::write(root.join("lib/modules").join(release).join("modules.dep"), "").unwrap();
    fs::write(root.join("boot").join(format!("vmlinuz-{release}")), format!("KERNEL {release}")).unwrap();
}

/// The initramfs "built" for a release: its content names the release, so a
/// mix of kernel and initramfs is visible.
fn build(release: &str) -> Result<Vec<u8>> {
    Ok(format!("INITRAMFS for {release} ").repeat(64).into_bytes())
}

/// What boots: the contents `/boot/kernel` and `/boot/initramfs` resolve to.
fn booted(root: &Path) -> (String, String) {
    let k = fs::read_to_string(root.join("boot/kernel")).unwrap_or_else(|e| panic!("/boot/kernel: {e}"));
    let i = fs::read_to_string(root.join("boot/initramfs")).unwrap_or_else(|e| panic!("/boot/initramfs: {e}"));
    (k, i)
}

fn pair(release: &str) -> (String, String) {
    (format!("KERNEL {release}"), String::from_utf8(build(release).unwrap()).unwrap())
}

/// Runs `setup`, then the update with a cut at each step in turn; checks the
/// invariant after the cut and after a second, uncut run.
fn every_cut(setup: &dyn Fn(&Path), exclude: Option<&str>, old: (String, String), new: (String, String)) -> usize {
    for fail_at in 0.. {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        setup(root);
        let f = Faulty { inner: RealBootFs(root.to_path_buf()), fail_at, count: Cell::new(0) };
        let r = bootpair::update(&f, exclude, &build);
        let now = booted(root);
        assert!(now == old || now == new, "cut at step {fail_at}: boots {now:?}");
        if r.is_ok() {
            assert_eq!(now, new, "finished at step {fail_at}");
            return fail_at;
        }
        // The next run (the next apt run, or the same one retried) completes.
        let again = bootpair::update(&RealBootFs(root.to_path_buf()), exclude, &build).unwrap();
        assert_eq!(booted(root), new, "after a cut at {fail_at}");
        let pairs: Vec<_> = fs::read_dir(root.join("boot/hninit.d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(pairs, [std::ffi::OsString::from(&again.pair)], "after a cut at {fail_at}: leftovers");
        // And a third changes nothing.
        let third = bootpair::update(&RealBootFs(root.to_path_buf()), exclude, &build).unwrap();
        assert!(!third.switched && third.removed.is_empty(), "{third:?}");
    }
    unreachable!()
}

/// An image as the factory makes it (two regular files) gets a newer kernel.
#[test]
fn install_newer_kernel_over_factory_pair() {
    let setup = |root: &Path| {
        fs::create_dir_all(root.join("boot")).unwrap();
        kernel(root, "6.1.0-9-amd64");
        fs::write(root.join("boot/kernel"), pair("6.1.0-9-amd64").0).unwrap();
        fs::write(root.join("boot/initramfs"), pair("6.1.0-9-amd64").1).unwrap();
        kernel(root, "6.1.0-10-amd64");
    };
    let steps = every_cut(&setup, None, pair("6.1.0-9-amd64"), pair("6.1.0-10-amd64"));
    assert!(steps > 15, "{steps} steps");
}

/// A pair kept by the hooks; the booted kernel is being removed (prerm): the
/// pair moves to the newest remaining one before its modules go.
#[test]
fn remove_booted_kernel_repoints_to_the_newest_remaining() {
    let setup = |root: &Path| {
        fs::create_dir_all(root.join("boot")).unwrap();
        kernel(root, "6.1.0-9-amd64");
        kernel(root, "6.1.0-8-amd64");
        kernel(root, "6.1.0-10-amd64");
        bootpair::update(&RealBootFs(root.to_path_buf()), None, &build).unwrap();
    };
    every_cut(&setup, Some("6.1.0-10-amd64"), pair("6.1.0-10-amd64"), pair("6.1.0-9-amd64"));
}

/// postrm: the modules are gone, the kernel image too: the remaining kernel is
/// booted, the removed one's pair deleted.
#[test]
fn modules_gone_is_never_booted() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fs::create_dir_all(root.join("boot")).unwrap();
    kernel(root, "6.1.0-9-amd64");
    kernel(root, "6.1.0-10-amd64");
    let fs_ = RealBootFs(root.to_path_buf());
    assert_eq!(bootpair::update(&fs_, None, &build).unwrap().release, "6.1.0-10-amd64");
    fs::remove_dir_all(root.join("lib/modules/6.1.0-10-amd64")).unwrap();
    let r = bootpair::update(&fs_, None, &build).unwrap();
    assert_eq!((r.release.as_str(), r.switched, r.removed.len()), ("6.1.0-9-amd64", true, 1));
    assert_eq!(booted(root), pair("6.1.0-9-amd64"));
    // The links GRUB and /init follow.
    assert_eq!(fs::read_link(root.join("boot/kernel")).unwrap(), Path::new("hninit/kernel"));
    assert_eq!(fs::read_link(root.join("boot/hninit")).unwrap(), Path::new("hninit.d").join(&r.pair));
}

/// A failing build (a module missing, the disk full) leaves the pair and says why.
#[test]
fn failed_build_keeps_the_previous_pair() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    fs::create_dir_all(root.join("boot")).unwrap();
    kernel(root, "6.1.0-9-amd64");
    let fs_ = RealBootFs(root.to_path_buf());
    bootpair::update(&fs_, None, &build).unwrap();
    kernel(root, "6.1.0-10-amd64");
    let e = bootpair::update(&fs_, None, &|_| anyhow::bail!("kernel module `nvme` not found")).unwrap_err();
    assert!(format!("{e:#}").contains("building the initramfs for 6.1.0-10-amd64: kernel module `nvme` not found"), "{e:#}");
    assert_eq!(booted(root), pair("6.1.0-9-amd64"));
    // The last kernel being removed: refused, nothing changed.
    let e = bootpair::update(&fs_, Some("6.1.0-10-amd64"), &build).unwrap();
    assert_eq!(e.release, "6.1.0-9-amd64");
    fs::remove_dir_all(root.join("lib/modules/6.1.0-10-amd64")).unwrap();
    let e = bootpair::update(&fs_, Some("6.1.0-9-amd64"), &build).unwrap_err();
    assert!(e.to_string().contains("no kernel to boot") && e.to_string().contains("without modules: 6.1.0-10-amd64"), "{e}");
    assert_eq!(booted(root), pair("6.1.0-9-amd64"));
}
