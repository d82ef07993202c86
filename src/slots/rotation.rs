//! Image slots on the host partition: which image boots, and the crash-safe
//! moves between `hn-root.img`, `-new`, `-old`, `-broken` and `-rejected`.
//! Every mutating step is one `Dir` operation; the sequence is ordered so that
//! `hn-root.img` names a complete image at every instant and running `settle`
//! again after a crash at any step converges to the same result.
//!
//! An image's signature sidecar (`X.minisig`) moves with it. The orders keep
//! two rules at every instant: a slot never has another image's sidecar (a
//! sidecar is removed or linked before its image is replaced, and a staged
//! image's moves to `-rejected` first), and a sidecar left behind by an
//! interrupted move (`-new`, `-old` or `-broken` sidecar without its image,
//! `hn-root.img` without one) is the current image's and is completed at the
//! next run.
//!
//! A stage (`slots::stage`) writes the signature and the digest as
//! `hn-root-new.img.part.minisig` and `hn-root-new.img.part.sha256` before its
//! commit (the rename of `.part` to `hn-root-new.img`) and renames them over the
//! staged image's sidecars after: beside their `.part` they are an uncommitted
//! stage's and are removed; without it, the stage committed and they are completed.

use crate::slots::dir::{remove_if_exists, write_atomic, Dir, FileId};
use serde::{Deserialize, Serialize};
use std::io;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revert {
    /// `hn.revert=1`: the operator asked for the previous image.
    Manual,
    /// `hn.revert=auto`: the boot counter ran out (set by GRUB).
    Auto,
}

/// The names of the slots, derived from `real_root=`'s file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub current: String,
    pub new: String,
    pub part: String,
    pub digest: String,
    pub old: String,
    pub broken: String,
    pub rejected: String,
    pub revert_flag: String,
}

impl Names {
    /// `hn-root.img` → `hn-root-new.img`, `hn-root-old.img`, …
    pub fn new(file_name: &str) -> Names {
        let (stem, ext) = match file_name.rfind('.') {
            Some(i) if i > 0 => (&file_name[..i], &file_name[i..]),
            _ => (file_name, ""),
        };
        let slot = |s: &str| format!("{stem}-{s}{ext}");
        Names {
            current: file_name.to_string(),
            new: slot("new"),
            part: format!("{}.part", slot("new")),
            digest: format!("{}.sha256", slot("new")),
            old: slot("old"),
            broken: slot("broken"),
            rejected: slot("rejected"),
            revert_flag: "system-revert".to_string(),
        }
    }

    fn tmp(name: &str) -> String {
        format!("{name}.tmp")
    }

    fn next(name: &str) -> String {
        format!("{name}.next")
    }

    /// The signature sidecar of slot `name`: `NAME.minisig`.
    pub fn sig(name: &str) -> String {
        format!("{name}{}", crate::trust::SIG_SUFFIX)
    }
}

/// Name of the trial state in `hn-state/`.
pub const TRIAL: &str = crate::layout::TRIAL;
const MAX_STATE: usize = 64 * 1024;

/// A freshly rotated image on trial: it reverts by itself when its tries run out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The image on trial (its identity survives the rename to `hn-root.img`).
    pub image: FileId,
    /// Boots still allowed after the current one; at 0 the next boot reverts.
    pub tries_left: u32,
    pub tries: u32,
}

impl Trial {
    /// `tries_left` never above `tries` (a hand-edited or damaged file), and
    /// `tries` at least 1.
    pub fn clamped(self) -> Trial {
        let tries = self.tries.max(1);
        Trial { tries, tries_left: self.tries_left.min(tries), ..self }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub revert: Option<Revert>,
    /// Tries of a new trial.
    pub tries: u32,
    /// hninit spends a try per boot (no boot loader counting for it).
    pub count_tries: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A different image is now `hn-root.img` than at the start of this boot.
    pub rotated: bool,
    pub reverted: bool,
    pub trial: Option<Trial>,
    /// One line per decision, for kmsg and `boot.log`.
    pub events: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("no image to boot in {dir}: none of {names} exists")]
    NoImage { dir: String, names: String },
    #[error("{step} in {dir}: {source}")]
    Io {
        step: String,
        dir: String,
        #[source]
        source: io::Error,
    },
}

struct Ctx<'a> {
    images: &'a dyn Dir,
    state: &'a dyn Dir,
    n: &'a Names,
    out: Outcome,
}

impl Ctx<'_> {
    fn io<T>(&self, dir: &dyn Dir, step: String, r: io::Result<T>) -> Result<T, SlotError> {
        r.map_err(|source| SlotError::Io {
            step,
            dir: dir.label(),
            source,
        })
    }
    fn exists(&self, name: &str) -> Result<bool, SlotError> {
        self.io(self.images, format!("stat {name}"), self.images.exists(name))
    }
    fn rename(&self, from: &str, to: &str) -> Result<(), SlotError> {
        self.io(self.images, format!("rename {from} -> {to}"), self.images.rename(from, to))
    }
    fn sync(&self) -> Result<(), SlotError> {
        self.io(self.images, "fsync".into(), self.images.sync())
    }
    fn remove(&self, name: &str) -> Result<bool, SlotError> {
        self.io(self.images, format!("remove {name}"), remove_if_exists(self.images, name))
    }
    /// `to` becomes another name of `from`'s image, without a moment where `to` is partial.
    fn copy_by_link(&self, from: &str, to: &str) -> Result<(), SlotError> {
        let tmp = Names::tmp(to);
        self.remove(&tmp)?;
        self.io(self.images, format!("link {from} -> {tmp}"), self.images.link(from, &tmp))?;
        self.rename(&tmp, to)
    }
    fn same_file(&self, a: &str, b: &str) -> Result<bool, SlotError> {
        let ia = self.io(self.images, format!("stat {a}"), self.images.id(a))?;
        let ib = self.io(self.images, format!("stat {b}"), self.images.id(b))?;
        Ok(ia.is_some() && ia == ib)
    }
    /// Slot `to` (already a link to `from`'s image, its stale sidecar removed
    /// before that) gets `from`'s sidecar by a second link, if it has one.
    fn link_sig(&self, from: &str, to: &str) -> Result<(), SlotError> {
        let fs = Names::sig(from);
        if self.exists(&fs)? {
            self.copy_by_link(&fs, &Names::sig(to))?;
        }
        Ok(())
    }
    /// The staged image becomes `-rejected` with its sidecar. The sidecar waits
    /// as `-rejected.img.minisig.next` while the image moves, so that a crash
    /// leaves no doubt whose it is (see `clean_leftovers`).
    fn move_to_rejected(&self) -> Result<(), SlotError> {
        let (new, rej) = (self.n.new.clone(), self.n.rejected.clone());
        let (nsig, rsig, next) = (Names::sig(&new), Names::sig(&rej), Names::next(&Names::sig(&rej)));
        if self.remove(&rsig)? {
            self.sync()?;
        }
        let signed = self.exists(&nsig)?;
        if signed {
            self.rename(&nsig, &next)?;
            self.sync()?;
        }
        self.rename(&new, &rej)?;
        self.sync()?;
        if signed {
            self.rename(&next, &rsig)?;
        }
        Ok(())
    }
    /// Image `from` becomes the current one: the current sidecar is removed
    /// first, the image renamed, then its sidecar follows.
    fn move_to_current(&self, from: &str) -> Result<(), SlotError> {
        let cur = self.n.current.clone();
        if self.remove(&Names::sig(&cur))? {
            self.sync()?;
        }
        self.rename(from, &cur)?;
        self.sync()?;
        let fs = Names::sig(from);
        if self.exists(&fs)? {
            self.rename(&fs, &Names::sig(&cur))?;
            self.sync()?;
        }
        Ok(())
    }
    fn event(&mut self, e: String) {
        self.out.events.push(e);
    }
    fn read_trial(&mut self) -> Result<Option<Trial>, SlotError> {
        // A damaged trial file (a FIFO, a symlink, too large, not the JSON of a
        // trial) is invalid, never absent: it is set aside as `trial.json.bad-N`
        // and the trial state starts afresh (the current image is not on trial).
        let why = match self.state.read(TRIAL, MAX_STATE) {
            Ok(None) => return Ok(None),
            Ok(Some(b)) => match serde_json::from_slice::<Trial>(&b) {
                Ok(t) => return Ok(Some(t.clamped())),
                Err(e) => e.to_string(),
            },
            Err(e) if crate::slots::dir::is_invalid(&e) => e.to_string(),
            Err(e) => return Err(SlotError::Io { step: format!("read {TRIAL}"), dir: self.state.label(), source: e }),
        };
        let to = self.io(self.state, format!("set {TRIAL} aside"), crate::slots::dir::set_aside(self.state, TRIAL))?;
        self.event(format!("trial state {}/{TRIAL} is invalid ({why}): set aside as {to}; no image is on trial", self.state.label()));
        Ok(None)
    }
    fn write_trial(&self, t: &Trial) -> Result<(), SlotError> {
        let data = serde_json::to_vec(t).unwrap_or_default();
        self.io(self.state, format!("write {TRIAL}"), write_atomic(self.state, TRIAL, &data))
    }
    fn clear_trial(&self) -> Result<(), SlotError> {
        if self.io(self.state, format!("remove {TRIAL}"), remove_if_exists(self.state, TRIAL))? {
            self.io(self.state, "fsync".into(), self.state.sync())?;
        }
        Ok(())
    }
}

/// Decides which image boots and makes it `hn-root.img`: cleans up leftovers of an
/// interrupted run, recovers a missing current image, reverts (flag, command line or
/// an exhausted trial), or validates and rotates in a staged image.
pub fn settle(
    images: &dyn Dir,
    state: &dyn Dir,
    names: &Names,
    req: &Request,
    validate: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<Outcome, SlotError> {
    let mut c = Ctx {
        images,
        state,
        n: names,
        out: Outcome::default(),
    };
    clean_leftovers(&mut c)?;
    recover_current(&mut c, validate)?;
    let trial = current_trial(&mut c)?;

    let flag = c.exists(&c.n.revert_flag)?;
    let exhausted = req.count_tries && trial.is_some_and(|t| t.tries_left == 0);
    // The boot loader's counter may be late (mark-good could not reach it): an
    // image that is not on trial is never reverted by `hn.revert=auto`.
    let mut revert_req = req.revert;
    if revert_req == Some(Revert::Auto) && trial.is_none() {
        c.event(format!("hn.revert=auto ignored: {} is not on trial (it was marked good)", c.n.current));
        revert_req = None;
    }
    if flag || revert_req.is_some() || exhausted {
        let why = if flag {
            format!("{} flag present", c.n.revert_flag)
        } else if let Some(r) = revert_req {
            format!("hn.revert={}", if r == Revert::Auto { "auto" } else { "1" })
        } else {
            format!("{} used all {} tries without being marked good", c.n.current, trial.map(|t| t.tries).unwrap_or(0))
        };
        revert(&mut c, &why)?;
    } else if c.exists(&c.n.new)? {
        upgrade(&mut c, req, validate)?;
    } else if let Some(mut t) = trial {
        if req.count_tries {
            t.tries_left = t.tries_left.saturating_sub(1);
            c.write_trial(&t)?;
            c.event(format!("{} on trial: try {} of {}", c.n.current, t.tries - t.tries_left, t.tries));
        }
        c.out.trial = Some(t);
    }
    Ok(c.out)
}

/// The sidecars a stage writes beside its `.part` before the commit, each with
/// the staged image's sidecar it becomes: (`NEW.part.minisig`, `NEW.minisig`),
/// (`NEW.part.sha256`, `NEW.sha256`).
pub fn stage_sidecars(n: &Names) -> [(String, String); 2] {
    [(Names::sig(&n.part), Names::sig(&n.new)), (format!("{}.sha256", n.part), n.digest.clone())]
}

/// Settles the sidecars of an interrupted stage (see the module doc): beside
/// their `.part` (or without a staged image) the stage did not commit and they
/// are removed; otherwise it committed and they become the staged image's.
/// Returns each one found with where it went (`None`: removed).
pub fn finish_stage_sidecars(images: &dyn Dir, n: &Names) -> io::Result<Vec<(String, Option<String>)>> {
    let mut done = Vec::new();
    for (pending, sidecar) in stage_sidecars(n) {
        if !images.exists(&pending)? {
            continue;
        }
        let committed = !images.exists(&n.part)? && images.exists(&n.new)?;
        if committed {
            images.rename(&pending, &sidecar)?;
        } else {
            images.remove(&pending)?;
        }
        images.sync()?;
        done.push((pending, committed.then_some(sidecar)));
    }
    Ok(done)
}

fn clean_leftovers(c: &mut Ctx) -> Result<(), SlotError> {
    let mut removed = Vec::new();
    // The sidecars of a stage, first: they go by their `.part` (removed below).
    match finish_stage_sidecars(c.images, c.n) {
        Ok(done) => {
            for (from, to) in done {
                match to {
                    Some(to) => c.event(format!("completed an interrupted stage: {from} is now {to}")),
                    None => removed.push(from),
                }
            }
        }
        Err(source) => {
            return Err(SlotError::Io {
                step: format!("settle {}.*", c.n.part),
                dir: c.images.label(),
                source,
            })
        }
    }
    // An interrupted download (`hnctl stage URL`) keeps its `.part` while its resume
    // record is there, so that the next `hnctl stage` of the URL resumes it after a
    // power cut too; the record is only ever written after the `.part`'s bytes.
    let record = format!("{}.json", c.n.part);
    let resumable = c.exists(&record)?;
    let leftovers = [
        Names::tmp(&c.n.old),
        Names::tmp(&c.n.broken),
        if resumable { Names::tmp(&record) } else { c.n.part.clone() },
        Names::tmp(&c.n.digest),
        Names::tmp(&c.n.revert_flag),
        Names::tmp(&Names::sig(&c.n.old)),
        Names::tmp(&Names::sig(&c.n.broken)),
        Names::tmp(&Names::sig(&c.n.new)),
        Names::tmp(&Names::sig(&c.n.part)),
        Names::tmp(&format!("{}.sha256", c.n.part)),
    ];
    for name in leftovers {
        if c.remove(&name)? {
            removed.push(name);
        }
    }
    // The sidecar of a staged image on its way to -rejected goes back to the
    // staged image if that has not moved yet, else on to -rejected.
    let next = Names::next(&Names::sig(&c.n.rejected));
    if c.exists(&next)? {
        let to = if c.exists(&c.n.new)? { Names::sig(&c.n.new) } else { Names::sig(&c.n.rejected) };
        c.rename(&next, &to)?;
        c.sync()?;
        c.event(format!("completed an interrupted move: {next} is now {to}"));
    }
    // A sidecar whose image moved to hn-root.img before it could follow: it is the
    // current image's when that has none; otherwise an orphan.
    for slot in [c.n.new.clone(), c.n.old.clone(), c.n.broken.clone()] {
        let sig = Names::sig(&slot);
        if c.exists(&slot)? || !c.exists(&sig)? {
            continue;
        }
        let cur_sig = Names::sig(&c.n.current);
        if c.exists(&c.n.current)? && !c.exists(&cur_sig)? {
            c.rename(&sig, &cur_sig)?;
            c.sync()?;
            c.event(format!("completed an interrupted move: {sig} is now {cur_sig}"));
        } else if c.remove(&sig)? {
            removed.push(sig);
        }
    }
    // A rejected image's sidecar without the image is an orphan too.
    let rsig = Names::sig(&c.n.rejected);
    if !c.exists(&c.n.rejected)? && c.remove(&rsig)? {
        removed.push(rsig);
    }
    // A digest without its staged image (a crash after the image was moved away)
    // must not be applied to a later staged image.
    if !c.exists(&c.n.new)? && c.remove(&c.n.digest)? {
        removed.push(c.n.digest.clone());
    }
    if !removed.is_empty() {
        c.sync()?;
        c.event(format!("removed leftovers of an interrupted run: {}", removed.join(" ")));
    }
    Ok(())
}

/// `hn-root.img` missing is repaired from old, then new, then broken: never "no OS".
fn recover_current(c: &mut Ctx, validate: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), SlotError> {
    if c.exists(&c.n.current)? {
        return Ok(());
    }
    for from in [c.n.old.clone(), c.n.new.clone(), c.n.broken.clone()] {
        if !c.exists(&from)? {
            continue;
        }
        if from == c.n.new {
            if let Err(e) = validate(&from) {
                c.event(format!("{} is missing and {from} is not bootable ({e})", c.n.current));
                continue;
            }
        }
        c.move_to_current(&from)?;
        c.event(format!("{} was missing: recovered it from {from}", c.n.current));
        return Ok(());
    }
    Err(SlotError::NoImage {
        dir: c.images.label(),
        names: [&c.n.current, &c.n.old, &c.n.new, &c.n.broken].map(|s| s.as_str()).join(", "),
    })
}

/// The trial state if it is about the current image; a stale one is removed.
fn current_trial(c: &mut Ctx) -> Result<Option<Trial>, SlotError> {
    let Some(t) = c.read_trial()? else { return Ok(None) };
    let cur = c.io(c.images, format!("stat {}", c.n.current), c.images.id(&c.n.current))?;
    if cur == Some(t.image) {
        Ok(Some(t))
    } else {
        c.clear_trial()?;
        c.event(format!("trial state was for another image; removed (current {} is not on trial)", c.n.current));
        Ok(None)
    }
}

fn revert(c: &mut Ctx, why: &str) -> Result<(), SlotError> {
    let n = c.n.clone();
    if c.exists(&n.new)? {
        c.move_to_rejected()?;
        c.sync()?;
        c.event(format!("revert requested while {} was staged: moved it to {} (revert wins)", n.new, n.rejected));
    }
    if c.exists(&n.old)? {
        if !c.same_file(&n.current, &n.broken)? {
            if c.remove(&Names::sig(&n.broken))? {
                c.sync()?;
            }
            c.copy_by_link(&n.current, &n.broken)?;
            c.sync()?;
        }
        c.link_sig(&n.current, &n.broken)?;
        c.sync()?;
        c.move_to_current(&n.old)?;
        c.clear_trial()?;
        c.out.rotated = true;
        c.out.reverted = true;
        c.event(format!("reverted ({why}): {} is now {}, the image reverted from is kept as {}", n.old, n.current, n.broken));
    } else {
        c.clear_trial()?;
        c.event(format!("revert requested ({why}) but there is no {}; booting {}", n.old, n.current));
    }
    if c.remove(&n.revert_flag)? {
        c.sync()?;
    }
    Ok(())
}

fn upgrade(c: &mut Ctx, req: &Request, validate: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), SlotError> {
    let n = c.n.clone();
    if let Err(reason) = validate(&n.new) {
        c.move_to_rejected()?;
        c.sync()?;
        c.remove(&n.digest)?;
        c.event(format!("staged {} rejected ({reason}): moved to {}; booting {}", n.new, n.rejected, n.current));
        return Ok(());
    }
    let Some(id) = c.io(c.images, format!("stat {}", n.new), c.images.id(&n.new))? else {
        return Ok(());
    };
    // The trial is keyed by the staged image's identity, which the rename keeps;
    // written first, so a crash before the rename leaves a trial that is simply rewritten.
    let tries = req.tries.max(1);
    let trial = Trial { image: id, tries_left: tries - 1, tries };
    c.write_trial(&trial)?;
    // A rerun after a crash finds hn-root-old.img already linked to the current
    // image, and keeps its sidecar.
    if !c.same_file(&n.current, &n.old)? {
        if c.remove(&Names::sig(&n.old))? {
            c.sync()?;
        }
        c.copy_by_link(&n.current, &n.old)?;
        c.sync()?;
    }
    c.link_sig(&n.current, &n.old)?;
    c.sync()?;
    c.move_to_current(&n.new)?;
    c.remove(&n.digest)?;
    c.out.rotated = true;
    c.out.trial = Some(trial);
    c.event(format!("upgraded: {} is now {} ({} tries to be marked good), the previous image is {}", n.new, n.current, tries, n.old));
    Ok(())
}

/// `hnctl mark-good`: ends the current image's trial.
pub fn mark_good(images: &dyn Dir, state: &dyn Dir, names: &Names) -> Result<Option<Trial>, SlotError> {
    let mut c = Ctx {
        images,
        state,
        n: names,
        out: Outcome::default(),
    };
    let t = current_trial(&mut c)?;
    if t.is_some() {
        c.clear_trial()?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_real_root() {
        let n = Names::new("hn-root.img");
        assert_eq!(n.new, "hn-root-new.img");
        assert_eq!(n.part, "hn-root-new.img.part");
        assert_eq!(n.old, "hn-root-old.img");
        assert_eq!(n.broken, "hn-root-broken.img");
        assert_eq!(n.rejected, "hn-root-rejected.img");
        let n = Names::new("root");
        assert_eq!(n.old, "root-old");
    }
}
