//! A power cut for crash tests: `Faulty` wraps a real directory, counts every
//! mutating step, and at step `fail_at` the power goes out: that step does not
//! happen (a write or copy cut there leaves a torn file, as a real cut would) and
//! every later operation fails. Shared by `slots_crash.rs` and `stage_crash.rs`.
#![allow(dead_code)]

use hninit::slots::dir::{CopyInfo, CopyOpts, Dir, FileId, RealDir};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::unix::fs::FileExt;

pub struct Plan {
    pub count: Cell<usize>,
    pub fail_at: Option<usize>,
    pub crashed: Cell<bool>,
    pub steps: RefCell<Vec<String>>,
}

impl Plan {
    pub fn new(fail_at: Option<usize>) -> Plan {
        Plan {
            count: Cell::new(0),
            fail_at,
            crashed: Cell::new(false),
            steps: RefCell::new(Vec::new()),
        }
    }
    pub fn alive(&self) -> io::Result<()> {
        if self.crashed.get() {
            Err(io::Error::other("power cut"))
        } else {
            Ok(())
        }
    }
    /// Called before each mutating step. `Ok(false)`: the power is cut at this
    /// very step (the caller may leave it torn); `Err`: it was cut before.
    pub fn step(&self, what: String) -> io::Result<bool> {
        self.alive()?;
        let n = self.count.get();
        self.count.set(n + 1);
        self.steps.borrow_mut().push(what);
        if Some(n) == self.fail_at {
            self.crashed.set(true);
            return Ok(false);
        }
        Ok(true)
    }
}

pub fn cut() -> io::Error {
    io::Error::other("power cut")
}

pub struct Faulty<'a> {
    pub inner: RealDir,
    pub plan: &'a Plan,
    pub tag: &'static str,
}

impl Faulty<'_> {
    fn go(&self, what: String) -> io::Result<()> {
        if self.plan.step(format!("{}: {what}", self.tag))? {
            Ok(())
        } else {
            Err(cut())
        }
    }
    /// The power went out in the middle of writing `name`: half of it is there.
    fn torn(&self, name: &str, data: &[u8]) -> io::Error {
        let _ = std::fs::write(self.inner.path().join(name), &data[..data.len() / 2]);
        cut()
    }
}

impl Dir for Faulty<'_> {
    fn label(&self) -> String {
        self.inner.label()
    }
    fn id(&self, name: &str) -> io::Result<Option<FileId>> {
        self.plan.alive()?;
        self.inner.id(name)
    }
    fn read(&self, name: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
        self.plan.alive()?;
        self.inner.read(name, max)
    }
    fn link(&self, from: &str, to: &str) -> io::Result<()> {
        self.go(format!("link {from} {to}"))?;
        self.inner.link(from, to)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.go(format!("rename {from} {to}"))?;
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.go(format!("unlink {name}"))?;
        self.inner.remove(name)
    }
    fn write_synced(&self, name: &str, data: &[u8]) -> io::Result<()> {
        if !self.plan.step(format!("{}: write+fsync {name}", self.tag))? {
            return Err(self.torn(name, data));
        }
        self.inner.write_synced(name, data)
    }
    fn append_synced(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.go(format!("append+fsync {name}"))?;
        self.inner.append_synced(name, data)
    }
    fn sync(&self) -> io::Result<()> {
        self.go("fsync dir".into())?;
        self.inner.sync()
    }
    fn create_from(
        &self,
        name: &str,
        src: &std::fs::File,
        len_hint: Option<u64>,
        opts: CopyOpts,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<CopyInfo> {
        if !self.plan.step(format!("{}: create+copy+fsync {name}", self.tag))? {
            let mut data = vec![0u8; len_hint.unwrap_or(0) as usize];
            let n = src.read_at(&mut data, 0).unwrap_or(0);
            data.truncate(n);
            return Err(self.torn(name, &data));
        }
        self.inner.create_from(name, src, len_hint, opts, progress)
    }
    fn open_read(&self, name: &str) -> io::Result<std::fs::File> {
        self.plan.alive()?;
        self.inner.open_read(name)
    }
}
