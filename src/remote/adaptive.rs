//! Adaptive download: when `URL.bidx` exists (a block index, [`super::bidx`])
//! and no interrupted download is being resumed, the blocks the host already has
//! in its current and previous images are copied locally and only the others are
//! fetched, with coalesced `Range` requests. On a copy-on-write filesystem
//! (btrfs, xfs) the `.part` starts as a reflink of the current image, so blocks
//! at the same place are neither copied nor stored again. The image's sha256 in
//! the index is checked at the end: any mismatch (a lying index, a block that
//! changed under us) discards the `.part` and the caller downloads the whole
//! image once. Not resumable yet: an interrupted adaptive stage starts over, its
//! local copies being cheap.
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
use crate::slots::dir::{remove_if_exists, Dir};
use crate::slots::stage::{required_space, StageError};
use crate::slots::Names;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::time::Duration;

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

/// Fills `names.part` (complete, fsynced) from `URL.bidx`, local blocks and ranges.
/// `Ok(Err(skip))`: nothing is left, download the whole image instead.
#[allow(clippy::too_many_arguments)]
pub fn fill_part(
    images: &dyn Dir,
    names: &Names,
    url: &str,
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

    // An interrupted stage's sidecars go by their `.part` first: removed
    // beside it, or completed (see slots::rotation::finish_stage_sidecars).
    crate::slots::rotation::finish_stage_sidecars(images, names).map_err(io_step(format!("settling the sidecars of {}", names.part)))?;
    remove_if_exists(images, &names.part).map_err(io_step(format!("removing the stale {}", names.part)))?;
    let part = images.open_rw(&names.part).map_err(io_step(format!("creating {}", names.part)))?;
    // Copy-on-write: start from the current image; same-place blocks stay shared.
    let cloned = locals
        .first()
        .is_some_and(|(_, cur)| rustix::fs::ioctl_ficlone(&part, cur).is_ok());
    let done = (|| -> Result<Result<Delta, Skip>, RemoteError> {
        part.set_len(target.size).map_err(io_step(format!("sizing {}", names.part)))?;
        let mut delta = Delta { index_bytes: raw.len() as u64, cached_indexes, ..Default::default() };
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
            locals[src].1.read_exact_at(b, off).map_err(io_step(format!("reading {}", locals[src].0)))?;
            part.write_all_at(b, s).map_err(io_step(format!("writing {}", names.part)))?;
            delta.reused += e - s;
        }
        let total = plan.fetch_bytes();
        let mut fetched_before = 0;
        for &(s, e) in &plan.fetch {
            match fetch_range(agent, url, &part, s, e, target.size, opts, &mut |n| {
                progress(Progress { phase: Phase::Download, done: fetched_before + n, total: Some(total) })
            })? {
                Ok(()) => {}
                Err(skip) => return Ok(Err(skip)),
            }
            fetched_before += e - s;
            delta.requests += 1;
        }
        delta.fetched = fetched_before;
        part.sync_all().map_err(io_step(format!("fsync {}", names.part)))?;
        Ok(Ok(delta))
    })();
    let delta = match done {
        Ok(Ok(d)) => d,
        Ok(Err(skip)) => {
            drop(part);
            let _ = remove_if_exists(images, &names.part);
            return Ok(Err(skip));
        }
        Err(e) => {
            drop(part);
            let _ = remove_if_exists(images, &names.part);
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

/// Bytes [s, e) of the image into `part`, retried like the whole download.
#[allow(clippy::too_many_arguments)]
fn fetch_range(
    agent: &ureq::Agent,
    url: &str,
    part: &File,
    s: u64,
    e: u64,
    size: u64,
    opts: &RemoteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Result<(), Skip>, RemoteError> {
    let mut at = s;
    let mut failures = 0u32;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let before = at;
        let res: Result<(), String> = (|| {
            let reply = http::get_auth(agent, url, at, Some(e - 1), None, opts.auth.as_deref()).map_err(|e| e.to_string())?;
            if reply.status == 200 {
                return Err("ranges-ignored".into());
            }
            if reply.status != 206 {
                return Err(format!("the server answered {}", reply.status));
            }
            match reply.content_range {
                Some(cr) if cr.start == at && cr.end == e - 1 && cr.total == Some(size) => {}
                other => return Err(format!("asked for bytes {at}-{} of {size}, the server sent {other:?}", e - 1)),
            }
            let mut body = reply.body;
            while at < e {
                let n = body.read(&mut buf).map_err(|x| x.to_string())?;
                if n == 0 {
                    return Err(format!("the connection closed at byte {at}"));
                }
                let n = n.min((e - at) as usize);
                part.write_all_at(&buf[..n], at).map_err(|x| format!("writing: {x}"))?;
                at += n as u64;
                progress(at - s);
            }
            Ok(())
        })();
        match res {
            Ok(()) => return Ok(Ok(())),
            Err(r) if r == "ranges-ignored" => {
                return Ok(Err(Skip::NoIndex(format!("{url}: the server does not serve ranges"))))
            }
            Err(r) => {
                if at > before {
                    failures = 0;
                }
                failures += 1;
                if failures > opts.retries {
                    return Ok(Err(Skip::Mismatch(format!("{url}: bytes {s}-{}: {r}", e - 1))));
                }
                std::thread::sleep(opts.retry_delay.saturating_mul(1 << (failures - 1).min(5)).min(Duration::from_secs(30)));
            }
        }
    }
}
