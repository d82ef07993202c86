//! Adaptive download: when `URL.bidx` exists (a block index, [`super::bidx`])
//! (and no whole download is being resumed), the blocks the host already has
//! in its current and previous images are copied locally and only the others are
//! fetched, with coalesced `Range` requests. On a copy-on-write filesystem
//! (btrfs, xfs) the `.part` starts as a reflink of the current image, so blocks
//! at the same place are neither copied nor stored again. The image's sha256 in
//! the index is checked at the end: any mismatch (a lying index, a block that
//! changed under us) discards the `.part` and the caller downloads the whole
//! image once.
//!
//! Resumable like a whole download: once the local copies are in place and
//! fsynced, the resume record ([`super::state`], `adaptive`) says up to which
//! image offset the `.part` is final (ranges are fetched in ascending order),
//! checkpointed at most a second apart. A later `hnctl stage` of the same URL
//! takes it up when `URL.bidx` has the same sha256 and the local images are
//! the same files; otherwise it starts over. A network failure that outlasts
//! the retries ends in [`RemoteError::Interrupted`] with the `.part` kept.
//!
//! The signature check ([`super::download::Verifier`]) is fed by the one
//! read-back of the assembled `.part` that also checks the index's sha256.
//!
//! The local images' indexes come from `hn-state/bidx-cache/`
//! ([`super::index_cache`]) when it has them, and the new image's index is
//! stored there once it checked out.

use super::bidx::{self, Have, Index};
use super::download::{Phase, Progress, RemoteError, RemoteOptions, Verifier};
use super::http;
use super::index_cache::{self, Cache};
use super::state::{AdaptiveMark, ResumeState};
use crate::slots::dir::{remove_if_exists, write_atomic, Dir};
use crate::slots::stage::{required_space, StageError};
use crate::slots::Names;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// What an adaptive download did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Delta {
    /// Image bytes fetched from the server.
    pub fetched: u64,
    /// Image bytes taken from local images.
    pub reused: u64,
    /// Range requests made.
    pub requests: u32,
    pub index_bytes: u64,
    /// Local images whose index came from `hn-state/bidx-cache/` (not re-hashed).
    pub cached_indexes: u32,
    /// An interrupted adaptive download was taken up at this image offset.
    pub resumed_at: Option<u64>,
}

/// Why the adaptive path was not taken (the caller downloads the whole image).
pub enum Skip {
    /// No index (404) or an unusable one: a whole download, said in `why`.
    NoIndex(String),
    /// The adaptive result did not check out: a whole download once.
    Mismatch(String),
}

fn io_step(step: impl Into<String>) -> impl FnOnce(io::Error) -> RemoteError {
    let step = step.into();
    move |source| RemoteError::Io { step, source }
}

/// A filled `.part`: the figures, its sha256, its size.
pub type Filled = (Delta, [u8; 32], u64);

/// Fills `names.part` (complete, fsynced) from `URL.bidx`, local blocks and ranges,
/// taking up `resume` (an adaptive record of the same URL) when it still fits.
/// `Ok(Err(skip))`: nothing is left, download the whole image instead.
#[allow(clippy::too_many_arguments)]
pub fn fill_part(
    images: &dyn Dir,
    names: &Names,
    url: &str,
    resume: Option<&ResumeState>,
    opts: &RemoteOptions,
    agent: &ureq::Agent,
    free_total: u64,
    verifier: &mut dyn Verifier,
    progress: &mut dyn FnMut(Progress),
) -> Result<Result<Filled, Skip>, RemoteError> {
    let idx_url = match &opts.index {
        Some(_) => "the index layer".to_string(),
        None => format!("{url}.bidx"),
    };
    let raw = match &opts.index {
        Some(b) => b.clone(),
        None => {
            let reply = match http::get(agent, &idx_url, 0, None) {
                Ok(r) => r,
                // The network is down: an interrupted adaptive stage stays for later.
                Err(e) if http::is_transient(&e) && resume.is_some() => {
                    return Err(RemoteError::Interrupted {
                        url: url.to_string(),
                        reason: format!("fetching {idx_url}: {e}"),
                        attempts: 1,
                        done: resume.map_or(0, |r| r.written),
                        part: names.part.clone(),
                    })
                }
                Err(e) => return Ok(Err(Skip::NoIndex(format!("{idx_url}: {e}")))),
            };
            if reply.status != 200 {
                return Ok(Err(Skip::NoIndex(format!("{idx_url}: the server answered {}", reply.status))));
            }
            let mut raw = Vec::new();
            if let Err(e) = reply.body.take(bidx::MAX_INDEX + 1).read_to_end(&mut raw) {
                return Ok(Err(Skip::NoIndex(format!("{idx_url}: {e}"))));
            }
            raw
        }
    };
    let target = match Index::parse(&raw) {
        Ok(i) if (raw.len() as u64) <= bidx::MAX_INDEX => i,
        Ok(_) => return Ok(Err(Skip::NoIndex(format!("{idx_url}: larger than {} bytes", bidx::MAX_INDEX)))),
        Err(e) => return Ok(Err(Skip::NoIndex(format!("{idx_url}: {e}")))),
    };
    let need = required_space(target.size);
    if need > free_total {
        return Err(StageError::NoSpace { dir: images.label(), size: target.size, need, free: free_total }.into());
    }

    // The blocks this host has: its current and previous images.
    let locals: Vec<(String, File)> = [&names.current, &names.old]
        .into_iter()
        .filter_map(|n| images.open_read(n).ok().map(|f| (n.clone(), f)))
        .collect();
    let mut have = Have::new();
    let cache = opts.state_dir.as_deref().and_then(|s| Cache::open(s).ok().flatten());
    let keep: Vec<String> = locals.iter().filter_map(|(_, f)| index_cache::key(f, target.block).ok()).collect();
    let mut cached_indexes = 0;
    // The current image's block hashes: a block equal at the same place stays shared.
    let mut same_place: Vec<[u8; 32]> = Vec::new();
    for (i, (name, f)) in locals.iter().enumerate() {
        progress(Progress { phase: Phase::Rehash, done: 0, total: f.metadata().ok().map(|m| m.len()) });
        let (idx, cached) =
            index_cache::local_index(cache.as_ref(), f, target.block, &keep).map_err(io_step(format!("indexing {name}")))?;
        cached_indexes += cached as u32;
        if i == 0 {
            same_place = idx.blocks.clone();
        }
        bidx::add_local(&mut have, &idx, i);
    }
    let plan = bidx::plan(&target, &have, 0);
    let record_name = super::state::state_name(&names.part);
    let mark = AdaptiveMark {
        index_sha256: crate::util::hex(&Sha256::digest(&raw)),
        locals: keep.clone(),
    };
    let part_len = images.id(&names.part).ok().flatten().map(|i| i.size);
    // Taken up only against the same index and local images, over a `.part` of the image's size.
    let resume_at = resume
        .filter(|r| {
            r.adaptive.as_ref() == Some(&mark)
                && part_len == Some(target.size)
                && r.written <= target.size
        })
        .map(|r| r.written);

    let part = match resume_at {
        Some(_) => images
            .open_rw(&names.part)
            .map_err(io_step(format!("opening {}", names.part)))?,
        None => {
            // An interrupted stage's sidecars go by their `.part` first: removed
            // beside it, or completed (see slots::rotation::finish_stage_sidecars).
            crate::slots::rotation::finish_stage_sidecars(images, names)
                .map_err(io_step(format!("settling the sidecars of {}", names.part)))?;
            remove_if_exists(images, &record_name)
                .map_err(io_step(format!("removing the stale {record_name}")))?;
            remove_if_exists(images, &names.part)
                .map_err(io_step(format!("removing the stale {}", names.part)))?;
            images
                .open_rw(&names.part)
                .map_err(io_step(format!("creating {}", names.part)))?
        }
    };
    let checkpoint = |at: u64| -> io::Result<()> {
        part.sync_data()?;
        let r = ResumeState {
            version: super::state::VERSION,
            url: url.to_string(),
            etag: None,
            last_modified: None,
            remote_len: Some(target.size),
            zstd: false,
            written: at,
            offset: at,
            adaptive: Some(mark.clone()),
            blob_sha256_state: None,
        };
        write_atomic(images, &record_name, &r.to_json())
    };
    // Copy-on-write: start from the current image; same-place blocks stay shared.
    let cloned = resume_at.is_none()
        && locals
            .first()
            .is_some_and(|(_, cur)| rustix::fs::ioctl_ficlone(&part, cur).is_ok());
    let done = (|| -> Result<Result<Delta, Skip>, RemoteError> {
        let mut delta = Delta {
            index_bytes: raw.len() as u64,
            cached_indexes,
            resumed_at: resume_at,
            ..Default::default()
        };
        // Every byte below `from` is final (a resumed `.part`'s record says so).
        let from = match resume_at {
            Some(at) => at,
            None => {
                part.set_len(target.size)
                    .map_err(io_step(format!("sizing {}", names.part)))?;
                copy_local(
                    &target,
                    &plan,
                    &locals,
                    &same_place,
                    cloned,
                    &part,
                    names,
                    &mut delta,
                )?;
                // The local blocks are durable before a record says anything is.
                let first = plan.fetch.first().map_or(target.size, |r| r.0);
                checkpoint(first)
                    .map_err(io_step(format!("recording the progress in {record_name}")))?;
                first
            }
        };
        if resume_at.is_some() {
            delta.reused = plan
                .local
                .iter()
                .map(|&(i, _, _)| target.range(i))
                .map(|(s, e)| e - s)
                .sum();
        }
        let todo: Vec<(u64, u64)> = plan
            .fetch
            .iter()
            .filter(|r| r.1 > from)
            .map(|&(s, e)| (s.max(from), e))
            .collect();
        let total: u64 = todo.iter().map(|(s, e)| e - s).sum();
        let mut fetched_before = 0;
        let mut last = Instant::now();
        for (k, &(s, e)) in todo.iter().enumerate() {
            // Where the record's offset goes once this range is in: the next one's start.
            let next = todo.get(k + 1).map_or(target.size, |r| r.0);
            let mut on_bytes = |n: u64| -> io::Result<()> {
                progress(Progress {
                    phase: Phase::Download,
                    done: fetched_before + n,
                    total: Some(total),
                });
                if last.elapsed() >= CHECKPOINT_EVERY {
                    last = Instant::now();
                    checkpoint(if s + n == e { next } else { s + n })?;
                }
                Ok(())
            };
            match fetch_range(agent, url, &part, s, e, target.size, opts, &mut on_bytes) {
                Ok(Ok(())) => {}
                Ok(Err(skip)) => return Ok(Err(skip)),
                Err(Cut { reason, at }) => {
                    // Kept for the next `hnctl stage`: the bytes up to `at` are in.
                    checkpoint(at)
                        .map_err(io_step(format!("recording the progress in {record_name}")))?;
                    return Err(RemoteError::Interrupted {
                        url: url.to_string(),
                        reason,
                        attempts: opts.retries + 1,
                        done: at,
                        part: names.part.clone(),
                    });
                }
            }
            fetched_before += e - s;
            delta.requests += 1;
        }
        delta.fetched = fetched_before;
        part.sync_all()
            .map_err(io_step(format!("fsync {}", names.part)))?;
        Ok(Ok(delta))
    })();
    let delta = match done {
        Ok(Ok(d)) => d,
        Ok(Err(skip)) => {
            drop(part);
            let _ = remove_if_exists(images, &names.part);
            let _ = remove_if_exists(images, &record_name);
            return Ok(Err(skip));
        }
        Err(e @ RemoteError::Interrupted { .. }) => return Err(e),
        Err(e) => {
            drop(part);
            let _ = remove_if_exists(images, &names.part);
            let _ = remove_if_exists(images, &record_name);
            return Err(e);
        }
    };
    progress(Progress { phase: Phase::Check, done: 0, total: Some(target.size) });
    // One read-back feeds the index's sha256 and the signature check.
    let mut h = Sha256::new();
    verifier.restart();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < target.size {
        let n = part.read_at(&mut buf, off).map_err(io_step(format!("reading back {}", names.part)))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        verifier.update(&buf[..n]);
        off += n as u64;
    }
    let sha: [u8; 32] = h.finalize().into();
    if sha != target.sha256 {
        drop(part);
        let _ = remove_if_exists(images, &names.part);
        let _ = remove_if_exists(images, &record_name);
        return Ok(Err(Skip::Mismatch(format!(
            "the image assembled from {idx_url} has sha256 {}, the index says {}",
            crate::util::hex(&sha),
            crate::util::hex(&target.sha256)
        ))));
    }
    // The new image's index, for the stage after it is rotated in.
    if let Some(c) = &cache {
        let _ = c.put(&part, &target, &keep);
    }
    Ok(Ok((delta, sha, target.size)))
}

/// How often the progress of the ranges is made durable.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The blocks of the plan that local images have, into `part` (those already in
/// place in a reflinked current image are left as they are).
#[allow(clippy::too_many_arguments)]
fn copy_local(
    target: &Index,
    plan: &bidx::Plan,
    locals: &[(String, File)],
    same_place: &[[u8; 32]],
    cloned: bool,
    part: &File,
    names: &Names,
    delta: &mut Delta,
) -> Result<(), RemoteError> {
    let mut buf = vec![0u8; target.block as usize];
    for &(i, src, off) in &plan.local {
        let (s, e) = target.range(i);
        // Equal content at the same place of the reflinked current image
        // (e.g. one of many zero blocks, which the plan maps to the first).
        if cloned && ((src == 0 && off == s) || same_place.get(i) == target.blocks.get(i)) {
            delta.reused += e - s;
            continue;
        }
        let b = &mut buf[..(e - s) as usize];
        locals[src]
            .1
            .read_exact_at(b, off)
            .map_err(io_step(format!("reading {}", locals[src].0)))?;
        part.write_all_at(b, s)
            .map_err(io_step(format!("writing {}", names.part)))?;
        delta.reused += e - s;
    }
    Ok(())
}

/// A range that the retries could not get: the bytes before `at` are in.
struct Cut {
    reason: String,
    at: u64,
}

/// Bytes [s, e) of the image into `part`, retried like the whole download.
/// `Ok(Err(skip))`: the server cannot serve this (no ranges, wrong ranges).
/// `on_bytes(n)`: n bytes of the range are written.
#[allow(clippy::too_many_arguments)]
fn fetch_range(
    agent: &ureq::Agent,
    url: &str,
    part: &File,
    s: u64,
    e: u64,
    size: u64,
    opts: &RemoteOptions,
    on_bytes: &mut dyn FnMut(u64) -> io::Result<()>,
) -> Result<Result<(), Skip>, Cut> {
    let mut at = s;
    let mut failures = 0u32;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let before = at;
        let res: Result<(), Fail> = (|| {
            let reply = http::get_auth(agent, url, at, Some(e - 1), None, opts.auth.as_deref())
                .map_err(|e| Fail::Retry(e.to_string()))?;
            if reply.status == 200 {
                return Err(Fail::Skip(Skip::NoIndex(format!(
                    "{url}: the server does not serve ranges"
                ))));
            }
            if reply.status != 206 {
                return Err(Fail::Retry(format!("the server answered {}", reply.status)));
            }
            match reply.content_range {
                Some(cr) if cr.start == at && cr.end == e - 1 && cr.total == Some(size) => {}
                other => {
                    return Err(Fail::Skip(Skip::Mismatch(format!(
                        "{url}: asked for bytes {at}-{} of {size}, the server sent {other:?}",
                        e - 1
                    ))))
                }
            }
            let mut body = reply.body;
            while at < e {
                let n = body
                    .read(&mut buf)
                    .map_err(|x| Fail::Retry(x.to_string()))?;
                if n == 0 {
                    return Err(Fail::Retry(format!("the connection closed at byte {at}")));
                }
                let n = n.min((e - at) as usize);
                part.write_all_at(&buf[..n], at)
                    .map_err(|x| Fail::Retry(format!("writing: {x}")))?;
                at += n as u64;
                on_bytes(at - s)
                    .map_err(|x| Fail::Retry(format!("recording the progress: {x}")))?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => return Ok(Ok(())),
            Err(Fail::Skip(skip)) => return Ok(Err(skip)),
            Err(Fail::Retry(reason)) => {
                if at > before {
                    failures = 0;
                }
                failures += 1;
                if failures > opts.retries {
                    return Err(Cut {
                        reason: format!("bytes {at}-{}: {reason}", e - 1),
                        at,
                    });
                }
                std::thread::sleep(
                    opts.retry_delay
                        .saturating_mul(1 << (failures - 1).min(5))
                        .min(Duration::from_secs(30)),
                );
            }
        }
    }
}

enum Fail {
    Retry(String),
    Skip(Skip),
}
