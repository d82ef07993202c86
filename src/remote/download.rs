//! The download loop of `hnctl stage URL`.
//!
//! 1. The resume record ([`super::state`]) decides: fresh, or resume at
//!    `written`/`offset` (the `.part` is cut to `written`, its prefix re-hashed).
//! 2. The verifier's pre-check ([`Verifier::before_download`]), then `GET` with
//!    `Range: bytes=OFFSET-` and `If-Range: <ETag or Last-Modified>`: a 206 goes
//!    on, a 200 means the file changed on the server (or the server ignores
//!    ranges) and the download restarts cleanly from the first byte.
//! 3. Bytes are written at their place in the `.part` (zstd decompressed on the
//!    fly, detected by its magic number) by a writer thread
//!    ([`super::writer`], which also keeps the sha256 of the raw image) while
//!    this thread receives and decodes (zstd output goes straight into the
//!    writer's buffers), and made durable at checkpoints (the writer's fsync, then the
//!    record) at most a second apart. zstd is resumed at a frame boundary: the decoder's state within a
//!    frame cannot be saved, so an image published as several frames (`pzstd`,
//!    or `zstd` of the parts, see docs/publishing.md) loses at most one frame on
//!    an interruption, and a single-frame image restarts from its first byte.
//! 4. Network errors and stalls (no byte for `stall`) are retried with backoff
//!    (1 s, 2 s, 4 s … at most 30 s) from the exact byte reached (the decoder is
//!    still in memory); after `retries` attempts without progress, the record
//!    is written and the error says how to resume.
//! 5. The end: the length announced is checked, the `.part` fsynced, the
//!    verifier's final check, then `complete_part` (space, image, digest,
//!    rename) and the record removed. A refusal removes the `.part` and record.

use super::adaptive::{Delta, Skip};
use super::http::{self, Reply};
use super::sha256_resume::Sha256State;
use super::state::{self, ResumeState, Start};
use super::writer::Sink;
use crate::slots::dir::{remove_if_exists, write_atomic, CopyInfo, CopyMethod, Dir};
use crate::slots::stage::{complete_part, required_space, StageError, StageReport};
use crate::slots::Names;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const READ_BUF: usize = 256 * 1024;
/// The record is rewritten at most this often (and at the end of an attempt).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// `--sha256`: the raw image's digest, checked and kept like a local stage's.
    pub sha256: Option<[u8; 32]>,
    /// `--ca FILE`: trust only these CAs (PEM) for https.
    pub ca: Option<PathBuf>,
    /// Attempts after a failure that made no progress (`--retries`).
    pub retries: u32,
    /// No byte for this long is a stall (`--stall-timeout`); also the connect timeout.
    pub stall: Duration,
    /// The first retry's delay, doubled each time up to 30 s.
    pub retry_delay: Duration,
    /// Free bytes in the images directory's filesystem before the stage.
    pub free_bytes: u64,
    /// Use `URL.bidx` when the server has it (`--whole` clears it).
    pub adaptive: bool,
    /// The block index, already fetched (a registry's layer), instead of `URL.bidx`.
    pub index: Option<Vec<u8>>,
    /// The `Authorization` header of every request for the image (a registry's).
    pub auth: Option<String>,
    /// The sha256 of the resource's bytes as served (a registry's zstd blob
    /// digest; a raw blob's is `sha256`). Checked at the end; for zstd the
    /// hash state of the compressed prefix is kept in the resume record, so a
    /// later process resumes it too.
    pub blob_sha256: Option<[u8; 32]>,
    /// The state directory (`hn-state/`) holding the local images' index cache.
    pub state_dir: Option<PathBuf>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            sha256: None,
            ca: None,
            retries: 5,
            stall: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
            free_bytes: 0,
            adaptive: true,
            index: None,
            auth: None,
            blob_sha256: None,
            state_dir: None,
        }
    }
}

/// What the download is doing, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Re-hashing the prefix kept from an interrupted download.
    Rehash,
    Download,
    /// Waiting before another attempt.
    Retry,
    /// The final checks and the rename.
    Check,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Bytes of the image in the `.part`.
    pub done: u64,
    /// The image's size when known (raw downloads).
    pub total: Option<u64>,
}

/// The signature side of a download ([`super::signed::SigVerifier`] checks
/// minisign signatures with the host's trusted keys; [`NoVerifier`] checks
/// nothing). The image's bytes are fed in order, from the first, in the same pass
/// that writes and hashes them; a restart from the first byte says so first.
pub trait Verifier {
    /// Before any image byte is fetched (a refusal here costs only the
    /// signature's bytes). `Ok(Some(size))`: the image's signed size.
    fn before_download(&mut self, _url: &str, _agent: &ureq::Agent) -> Result<Option<u64>, RemoteError> {
        Ok(None)
    }
    /// The image's bytes start again from the first.
    fn restart(&mut self) {}
    /// The next bytes of the raw image.
    fn update(&mut self, _chunk: &[u8]) {}
    /// Every byte was fed: accept, or refuse with the reason.
    fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// The raw signature file, kept as the staged image's `.minisig`.
    fn sidecar(&self) -> Option<&[u8]> {
        None
    }
}

/// No signature checks (no keys trusted yet).
pub struct NoVerifier;
impl Verifier for NoVerifier {}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Setup(String),
    #[error("the server answered {status} to GET {url}")]
    Status { url: String, status: u16 },
    #[error("{url}: {reason} (after {attempts} attempts; {done} bytes kept in {part}: run the same command again to resume)")]
    Interrupted {
        url: String,
        reason: String,
        attempts: u32,
        done: u64,
        part: String,
    },
    #[error("{url}: {reason}")]
    BadReply { url: String, reason: String },
    #[error("the zstd stream is corrupt: {0}")]
    Zstd(String),
    #[error("signature: {0}")]
    Refused(String),
    /// A blob whose bytes do not have the digest the manifest names.
    #[error("{0}")]
    Digest(String),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: io::Error,
    },
}

impl RemoteError {
    /// The image or the space was refused (exit 3).
    pub fn is_refusal(&self) -> bool {
        match self {
            RemoteError::Stage(e) => e.is_refusal(),
            RemoteError::Refused(_) | RemoteError::Zstd(_) | RemoteError::Digest(_) => true,
            _ => false,
        }
    }

    /// The `.part` is kept: the same command resumes (exit 4).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, RemoteError::Interrupted { .. })
    }
}

fn io_step(step: impl Into<String>) -> impl FnOnce(io::Error) -> RemoteError {
    let step = step.into();
    move |source| RemoteError::Io { step, source }
}

/// How one attempt ended badly.
enum Failure {
    /// Worth another attempt from where it stopped.
    Transient(String),
    /// The download cannot succeed: the `.part` and its record are removed.
    Fatal(RemoteError),
}

/// The download's state in memory.
struct Dl<'a> {
    url: &'a str,
    file: File,
    /// Image bytes written to the `.part`.
    written: u64,
    /// Resource bytes consumed.
    offset: u64,
    hash: Sha256,
    /// `None` until the first bytes of the resource were seen.
    zstd: Option<bool>,
    decoder: Option<zstd::stream::raw::Decoder<'static>>,
    /// zstd: the last frame boundary (written, offset), where a later process can resume.
    boundary: (u64, u64),
    /// zstd: inside a frame (the stream may not end here).
    frame_open: bool,
    etag: Option<String>,
    last_modified: Option<String>,
    remote_len: Option<u64>,
    /// What the record on disk says (written), and when it was written.
    durable: u64,
    last_checkpoint: Instant,
    /// The server's file changed and the download started over.
    restarts: u32,
    out: Vec<u8>,
    /// The first bytes of a fresh download, until the magic number can be read.
    head: Vec<u8>,
    /// The size signed by the image's publisher, when a verifier gave it.
    signed_size: Option<u64>,
    /// Fed every image byte in order, with the hash.
    verifier: &'a mut dyn Verifier,
    auth: Option<&'a str>,
    /// sha256 of the resource's bytes (only with `blob_sha256`, from byte 0;
    /// zstd only: a raw resource's is `hash`), and its state at `boundary`,
    /// which the resume record keeps.
    blob_hash: Option<Sha256State>,
    boundary_blob: Option<Sha256State>,
    /// The `.part`'s writer thread during an attempt ([`super::writer`]).
    sink: Option<Sink>,
}

impl Dl<'_> {
    fn reset(&mut self) -> io::Result<()> {
        // The writer's queue is written before the cut, then it starts again at 0.
        if let Some(sink) = self.sink.take() {
            sink.finish()?;
            self.file.set_len(0)?;
            self.sink = Some(Sink::start(&self.file, 0, Sha256::new())?);
        }
        self.file.set_len(0)?;
        self.written = 0;
        self.offset = 0;
        self.hash = Sha256::new();
        self.verifier.restart();
        if self.blob_hash.is_some() {
            self.blob_hash = Some(Sha256State::new());
            self.boundary_blob = Some(Sha256State::new());
        }
        self.zstd = None;
        self.decoder = None;
        self.boundary = (0, 0);
        self.frame_open = false;
        self.durable = 0;
        Ok(())
    }

    fn record(&self) -> Option<ResumeState> {
        let (written, offset) = if self.zstd == Some(true) {
            self.boundary
        } else {
            (self.written, self.offset)
        };
        let r = ResumeState {
            version: state::VERSION,
            url: self.url.to_string(),
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            remote_len: self.remote_len,
            zstd: self.zstd == Some(true),
            written,
            offset,
            adaptive: None,
            blob_sha256_state: match (self.zstd, &self.boundary_blob) {
                (Some(true), Some(h)) => Some(h.to_hex()),
                _ => None,
            },
        };
        (r.url.len() <= state::MAX_URL && r.validator().is_some() && written > 0).then_some(r)
    }

    /// Makes what can be resumed durable: the `.part`'s data, then the record.
    /// During an attempt the writer thread fsyncs and [`Dl::settle`] writes
    /// the record; between attempts both happen here.
    fn checkpoint(&mut self, images: &dyn Dir, record_name: &str) -> io::Result<()> {
        self.last_checkpoint = Instant::now();
        let Some(r) = self.record() else { return Ok(()) };
        if r.written == self.durable {
            return Ok(());
        }
        if let Some(sink) = &mut self.sink {
            return sink.checkpoint(r);
        }
        self.file.sync_data()?;
        write_atomic(images, record_name, &r.to_json())?;
        self.durable = r.written;
        Ok(())
    }

    /// Writes the newest record whose bytes the writer made durable.
    fn record_synced(&mut self, synced: Vec<ResumeState>, images: &dyn Dir, record_name: &str) -> io::Result<()> {
        if let Some(r) = synced.into_iter().last() {
            if r.written > self.durable {
                write_atomic(images, record_name, &r.to_json())?;
                self.durable = r.written;
            }
        }
        Ok(())
    }

    /// The writer's checkpoints that completed, recorded.
    fn settle(&mut self, images: &dyn Dir, record_name: &str) -> io::Result<()> {
        let synced = match &mut self.sink {
            Some(s) => s.synced()?,
            None => return Ok(()),
        };
        self.record_synced(synced, images, record_name)
    }

    /// Stops the writer once everything given to it is written.
    fn stop_sink(&mut self, images: &dyn Dir, record_name: &str) -> io::Result<()> {
        let Some(sink) = self.sink.take() else { return Ok(()) };
        let (synced, hash) = sink.finish()?;
        self.hash = hash;
        self.record_synced(synced, images, record_name)
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            // The writer hashes what it is given.
            Some(sink) => sink.put(data)?,
            None => {
                self.file.write_all_at(data, self.written)?;
                self.hash.update(data);
            }
        }
        self.verifier.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// `n` raw bytes were received straight into the writer's buffer.
    fn commit_raw(&mut self, n: usize) -> io::Result<()> {
        let Some(sink) = self.sink.as_mut() else { return Ok(()) };
        self.verifier.update(sink.filled(n));
        sink.commit(n)?;
        self.written += n as u64;
        self.offset += n as u64;
        Ok(())
    }

    /// Takes `data` (resource bytes at `offset`): written, or decompressed and written.
    fn consume(&mut self, data: &[u8]) -> Result<(), Failure> {
        use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
        let write_err = |e: io::Error| Failure::Fatal(io_step("writing the .part")(e));
        if self.zstd != Some(true) {
            self.write(data).map_err(write_err)?;
            self.offset += data.len() as u64;
            return Ok(());
        }
        // The blob hash follows the frame boundaries, where its state is kept.
        let mut hashed = 0;
        let mut dec = match self.decoder.take() {
            Some(d) => d,
            None => Decoder::new().map_err(|e| Failure::Fatal(RemoteError::Zstd(e.to_string())))?,
        };
        let mut input = InBuffer::around(data);
        let res = loop {
            let before = input.pos();
            // Decoded straight into the writer's buffer when there is one.
            let mut out = std::mem::take(&mut self.out);
            let step = {
                let space = match &mut self.sink {
                    Some(sink) => match sink.space() {
                        Ok(s) => s,
                        Err(e) => break Err(write_err(e)),
                    },
                    None => {
                        out.resize(ZSTD_OUT, 0);
                        &mut out[..]
                    }
                };
                let mut ob = OutBuffer::around(space);
                dec.run(&mut input, &mut ob).map(|hint| (hint, ob.pos()))
            };
            let (hint, n) = match step {
                Ok(x) => x,
                Err(e) => {
                    self.out = out;
                    break Err(Failure::Fatal(RemoteError::Zstd(format!(
                        "at byte {} of the compressed image: {e}",
                        self.offset + before as u64
                    ))));
                }
            };
            if n > 0 {
                let wrote = match &mut self.sink {
                    Some(sink) => {
                        self.verifier.update(sink.filled(n));
                        self.written += n as u64;
                        sink.commit(n)
                    }
                    None => self.write(&out[..n]),
                };
                if let Err(e) = wrote {
                    self.out = out;
                    break Err(write_err(e));
                }
            }
            self.out = out;
            self.frame_open = hint != 0;
            if hint == 0 {
                // A frame ended and was flushed: a later process can start here.
                self.boundary = (self.written, self.offset + input.pos() as u64);
                if let Some(h) = &mut self.blob_hash {
                    h.update(&data[hashed..input.pos()]);
                    hashed = input.pos();
                    self.boundary_blob = Some(h.clone());
                }
            }
            // Done when the input is used and the frame ended (another call
            // would wait for the next frame's header) or a call made no
            // output: with a buffer that was nearly full, the decoder may hold
            // decoded bytes that a later call still gives.
            if input.pos() == data.len() && (hint == 0 || n == 0) {
                break Ok(());
            }
        };
        self.decoder = Some(dec);
        if let Some(h) = &mut self.blob_hash {
            h.update(&data[hashed..]);
        }
        self.offset += data.len() as u64;
        res
    }
}

const ZSTD_OUT: usize = 1 << 20;

/// Stages the image at `url` as `names.new` (see the module doc). `progress` is
/// called after every chunk and at each phase change.
pub fn stage_url(
    images: &dyn Dir,
    names: &Names,
    url: &str,
    opts: &RemoteOptions,
    verifier: &mut dyn Verifier,
    progress: &mut dyn FnMut(Progress),
) -> Result<RemoteReport, RemoteError> {
    if !super::is_url(url) || url.len() > state::MAX_URL || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RemoteError::Usage(format!(
            "{url:?} is not an http:// or https:// URL of at most {} bytes without spaces",
            state::MAX_URL
        )));
    }
    let agent = http::agent(opts.ca.as_deref(), opts.stall).map_err(RemoteError::Setup)?;
    let record_name = state::state_name(&names.part);
    let digest_tmp = format!("{}.tmp", names.digest);
    remove_if_exists(images, &digest_tmp).map_err(io_step(format!("removing the stale {digest_tmp}")))?;
    let signed_size = verifier.before_download(url, &agent)?;

    let record = images
        .read(&record_name, state::MAX_STATE)
        .ok()
        .flatten()
        .and_then(|b| state::parse(&b));
    let part_size = images
        .id(&names.part)
        .map_err(io_step(format!("stat {}", names.part)))?
        .map(|i| i.size);
    let mut start = state::decide(record, url, part_size);
    if opts.blob_sha256.is_some() && matches!(&start, Start::Resume(r) if r.zstd && r.blob_sha256_state.is_none()) {
        // A record without the compressed prefix's hash: the blob's digest needs every byte.
        start = Start::Fresh;
    }
    if start == Start::Fresh {
        // An interrupted stage's sidecars go by their `.part` first: removed
        // beside it, or completed (see slots::rotation::finish_stage_sidecars).
        crate::slots::rotation::finish_stage_sidecars(images, names).map_err(io_step(format!("settling the sidecars of {}", names.part)))?;
        remove_if_exists(images, &names.part).map_err(io_step(format!("removing the stale {}", names.part)))?;
        remove_if_exists(images, &record_name).map_err(io_step(format!("removing the stale {record_name}")))?;
    }
    // The `.part`'s blocks are either reclaimed (fresh) or the image's (resume).
    let free_total = opts.free_bytes.saturating_add(part_size.unwrap_or(0));
    let check_space = |size: u64| {
        let need = required_space(size);
        if need > free_total {
            Err(StageError::NoSpace {
                dir: images.label(),
                size,
                need,
                free: free_total,
            })
        } else {
            Ok(())
        }
    };
    if let Some(size) = signed_size {
        check_space(size)?;
    }

    let mut fell_back = None;
    let raw_url = !url.to_ascii_lowercase().ends_with(".zst");
    let adaptive_resume = match &start {
        Start::Resume(r) if r.adaptive.is_some() => Some(r.clone()),
        _ => None,
    };
    if adaptive_resume.is_some() && !(opts.adaptive && raw_url && opts.blob_sha256.is_none()) {
        // `--whole` after an interrupted adaptive stage: a whole download from byte 0.
        discard(images, names, &record_name);
        start = Start::Fresh;
    }
    if (start == Start::Fresh || adaptive_resume.is_some()) && opts.adaptive && raw_url && opts.blob_sha256.is_none() {
        let resume = adaptive_resume.as_ref();
        let filled = super::adaptive::fill_part(images, names, url, resume, opts, &agent, free_total, verifier, progress);
        if adaptive_resume.is_some() {
            // What follows, if anything, is a whole download from byte 0: the
            // interrupted adaptive stage's `.part` and record go first.
            start = Start::Fresh;
            if matches!(filled, Ok(Err(_))) {
                discard(images, names, &record_name);
            }
        }
        match filled? {
            Ok((delta, sha, size)) => {
                // fill_part fed the verifier from its read-back of the `.part`.
                if let Err(e) = verifier.finish() {
                    discard(images, names, &record_name);
                    return Err(RemoteError::Refused(e));
                }
                let info = CopyInfo { bytes: size, method: CopyMethod::Download, sha256: Some(sha) };
                let late: &dyn Fn(u64) -> Result<(), StageError> = &check_space;
                let stage = complete_part(images, names, &info, opts.sha256, Some(late), verifier.sidecar());
                // As for a whole download: the record goes after the rename (or the refusal).
                remove_if_exists(images, &record_name).map_err(io_step(format!("removing {record_name}")))?;
                images.sync().map_err(io_step("fsync of the images directory"))?;
                return Ok(RemoteReport { stage: stage?, delta: Some(delta), fell_back: None, restarts: 0 });
            }
            Err(Skip::NoIndex(_)) => {}
            Err(Skip::Mismatch(why)) => fell_back = Some(why),
        }
    }

    let file = images.open_rw(&names.part).map_err(io_step(format!("opening {}", names.part)))?;
    let mut dl = Dl {
        url,
        file,
        written: 0,
        offset: 0,
        hash: Sha256::new(),
        zstd: None,
        decoder: None,
        boundary: (0, 0),
        frame_open: false,
        etag: None,
        last_modified: None,
        remote_len: None,
        durable: 0,
        last_checkpoint: Instant::now(),
        restarts: 0,
        out: Vec::new(),
        head: Vec::new(),
        signed_size,
        verifier,
        auth: opts.auth.as_deref(),
        blob_hash: opts.blob_sha256.map(|_| Sha256State::new()),
        boundary_blob: opts.blob_sha256.map(|_| Sha256State::new()),
        sink: None,
    };
    dl.verifier.restart();
    match start {
        Start::Fresh => dl.file.set_len(0).map_err(io_step(format!("truncating {}", names.part)))?,
        Start::Resume(r) => {
            dl.file.set_len(r.written).map_err(io_step(format!("cutting {} to its durable bytes", names.part)))?;
            progress(Progress { phase: Phase::Rehash, done: 0, total: Some(r.written) });
            rehash(&dl.file, r.written, &mut dl.hash, &mut *dl.verifier, progress)
                .map_err(io_step(format!("reading back {}", names.part)))?;
            dl.written = r.written;
            dl.offset = r.offset;
            dl.zstd = Some(r.zstd);
            dl.boundary = (r.written, r.offset);
            dl.durable = r.written;
            dl.etag = r.etag;
            dl.last_modified = r.last_modified;
            dl.remote_len = r.remote_len;
            if dl.blob_hash.is_some() && r.zstd {
                // `parse` checked that it is a state of the `offset` bytes before.
                let h = r.blob_sha256_state.as_deref().and_then(Sha256State::from_hex).unwrap_or_default();
                dl.blob_hash = Some(h.clone());
                dl.boundary_blob = Some(h);
            }
        }
    }

    let mut failures = 0u32;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let before = dl.offset;
        let one = |dl: &mut Dl| attempt(&agent, dl, images, &record_name, &check_space, progress);
        let fail = match with_writer(&mut dl, images, &record_name, one) {
            Ok(()) => break,
            Err(f) => f,
        };
        match fail {
            Failure::Fatal(e) => {
                drop(dl);
                discard(images, names, &record_name);
                return Err(disk_full(images, e));
            }
            Failure::Transient(reason) => {
                if dl.offset > before {
                    failures = 0;
                }
                failures += 1;
                dl.checkpoint(images, &record_name)
                    .map_err(io_step(format!("recording the progress in {record_name}")))?;
                if failures > opts.retries {
                    return Err(RemoteError::Interrupted {
                        url: url.to_string(),
                        reason,
                        attempts,
                        done: dl.durable,
                        part: names.part.clone(),
                    });
                }
                let delay = opts
                    .retry_delay
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(MAX_BACKOFF);
                progress(Progress { phase: Phase::Retry, done: dl.written, total: dl.total() });
                std::thread::sleep(delay);
            }
        }
    }

    progress(Progress { phase: Phase::Check, done: dl.written, total: dl.total() });
    let finished = (|| {
        dl.file.sync_all().map_err(io_step(format!("fsync {}", names.part)))?;
        let sha: [u8; 32] = dl.hash.clone().finalize().into();
        if let (Some(want), Some(h)) = (opts.blob_sha256, dl.blob_hash.clone()) {
            let got: [u8; 32] = if dl.zstd == Some(true) { h.finish() } else { sha };
            if got != want {
                return Err(RemoteError::Digest(format!(
                    "the blob {url} has sha256:{}, its manifest says sha256:{}",
                    crate::util::hex(&got),
                    crate::util::hex(&want)
                )));
            }
        }
        dl.verifier.finish().map_err(RemoteError::Refused)?;
        Ok(sha)
    })();
    let sha = match finished {
        Ok(s) => s,
        Err(e) => {
            drop(dl);
            discard(images, names, &record_name);
            return Err(e);
        }
    };
    let info = CopyInfo {
        bytes: dl.written,
        method: CopyMethod::Download,
        sha256: Some(sha),
    };
    let restarts = dl.restarts;
    let verifier = dl.verifier;
    drop(dl.file);
    let late: &dyn Fn(u64) -> Result<(), StageError> = &check_space;
    let staged = complete_part(images, names, &info, opts.sha256, Some(late), verifier.sidecar());
    // The record goes after the rename (or after a refusal removed the `.part`):
    // a record without its `.part` is never resumed.
    remove_if_exists(images, &record_name).map_err(io_step(format!("removing {record_name}")))?;
    images.sync().map_err(io_step("fsync of the images directory"))?;
    Ok(RemoteReport { stage: staged?, delta: None, fell_back, restarts })
}

/// What `stage_url` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteReport {
    pub stage: StageReport,
    /// The adaptive download's figures, when `URL.bidx` was used.
    pub delta: Option<Delta>,
    /// Why an adaptive download was abandoned for a whole one.
    pub fell_back: Option<String>,
    /// The file changed on the server during the download: it started over.
    pub restarts: u32,
}

impl Dl<'_> {
    fn total(&self) -> Option<u64> {
        match self.zstd {
            Some(false) => self.remote_len,
            _ => self.signed_size,
        }
    }
}

/// sha256 of the first `len` bytes of the `.part` (a resumed download's prefix).
fn rehash(
    file: &File,
    len: u64,
    hash: &mut Sha256,
    verifier: &mut dyn Verifier,
    progress: &mut dyn FnMut(Progress),
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], done)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("ends at {done} of {len} bytes")));
        }
        hash.update(&buf[..n]);
        verifier.update(&buf[..n]);
        done += n as u64;
        progress(Progress { phase: Phase::Rehash, done, total: Some(len) });
    }
    Ok(())
}

/// A failed download leaves nothing: no `.part`, no record.
fn discard(images: &dyn Dir, names: &Names, record_name: &str) {
    let a = remove_if_exists(images, &names.part);
    let b = remove_if_exists(images, record_name);
    if matches!(a, Ok(true)) || matches!(b, Ok(true)) {
        let _ = images.sync();
    }
}

fn disk_full(images: &dyn Dir, e: RemoteError) -> RemoteError {
    match e {
        RemoteError::Io { source, .. } if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
            RemoteError::Stage(StageError::DiskFull { dir: images.label(), done: 0 })
        }
        e => e,
    }
}

/// Runs one attempt with the `.part` written by a writer thread
/// ([`super::writer`]) that has written everything on return.
fn with_writer<'a>(
    dl: &mut Dl<'a>,
    images: &dyn Dir,
    record_name: &str,
    attempt: impl FnOnce(&mut Dl<'a>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let sink = Sink::start(&dl.file, dl.written, dl.hash.clone()).map_err(|e| Failure::Fatal(io_step("starting the .part's writer thread")(e)))?;
    dl.sink = Some(sink);
    let res = attempt(dl);
    let stopped = dl.stop_sink(images, record_name).map_err(|e| Failure::Fatal(io_step("writing the .part")(e)));
    match (res, stopped) {
        (Err(Failure::Fatal(e)), _) => Err(Failure::Fatal(e)),
        (_, Err(f)) => Err(f),
        (res, Ok(())) => res,
    }
}

/// One request and its body, from `dl.offset` on.
fn attempt(
    agent: &ureq::Agent,
    dl: &mut Dl,
    images: &dyn Dir,
    record_name: &str,
    check_space: &dyn Fn(u64) -> Result<(), StageError>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), Failure> {
    let fatal_io = |step: &str| {
        let step = step.to_string();
        move |e: io::Error| Failure::Fatal(RemoteError::Io { step, source: e })
    };
    dl.head.clear();
    let validator = if dl.etag.as_deref().is_some_and(|e| !e.starts_with("W/")) {
        dl.etag.clone()
    } else {
        dl.last_modified.clone()
    };
    if dl.offset > 0 && validator.is_none() {
        // Without a validator a range could mix two versions of the file.
        dl.reset().map_err(fatal_io("truncating the .part"))?;
    }
    let from = dl.offset;
    let bad = |reason: String| Failure::Fatal(RemoteError::BadReply { url: dl.url.to_string(), reason });
    let reply: Reply = match http::get_auth(agent, dl.url, from, None, validator.as_deref(), dl.auth) {
        Ok(r) => r,
        Err(e) if http::is_transient(&e) => return Err(Failure::Transient(e.to_string())),
        Err(e) => {
            let mut reason = e.to_string();
            if reason.contains("certificate") {
                reason += " (a private mirror's CA is given with --ca FILE)";
            }
            return Err(bad(reason));
        }
    };
    match reply.status {
        206 if from > 0 => {
            let Some(cr) = reply.content_range else {
                return Err(bad("a 206 reply without a valid Content-Range".into()));
            };
            if cr.start != from {
                return Err(bad(format!("asked for bytes from {from}, the server sent from {}", cr.start)));
            }
            if let (Some(t), Some(k)) = (cr.total, dl.remote_len) {
                if t != k {
                    return Err(bad(format!("the file is now {t} bytes, it was {k}, under the same validator")));
                }
            }
            if dl.remote_len.is_none() {
                dl.remote_len = cr.total;
            }
        }
        200 => {
            if from > 0 {
                // If-Range did not match: the file changed (or ranges are not served).
                dl.reset().map_err(fatal_io("truncating the .part"))?;
                dl.restarts += 1;
            }
            dl.etag = reply.etag;
            dl.last_modified = reply.last_modified;
            dl.remote_len = reply.content_length;
            // The raw size, or (zstd) a lower bound of it; checked again at the end.
            if let Some(len) = dl.signed_size.or(reply.content_length) {
                check_space(len).map_err(|e| Failure::Fatal(e.into()))?;
            }
        }
        416 if from > 0 && dl.remote_len == Some(from) => return Ok(()),
        416 if from > 0 => {
            return Err(bad(format!(
                "the server has no byte at {from}{} (a wrong Content-Length, or a file cut short)",
                dl.remote_len.map(|n| format!(" of the {n} it announced")).unwrap_or_default()
            )))
        }
        408 | 429 | 500..=599 => return Err(Failure::Transient(format!("the server answered {}", reply.status))),
        status => {
            return Err(Failure::Fatal(RemoteError::Status {
                url: dl.url.to_string(),
                status,
            }))
        }
    }
    let mut body = reply.body;
    let mut buf = vec![0u8; READ_BUF];
    loop {
        // Raw bytes go straight into the writer's buffer (no copy).
        let direct = match (&mut dl.sink, dl.zstd) {
            (Some(sink), Some(false)) => Some(sink.space().map_err(fatal_io("writing the .part"))?),
            _ => None,
        };
        let is_direct = direct.is_some();
        let got = match direct {
            Some(space) => body.read(space),
            None => body.read(&mut buf),
        };
        let n = match got {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if http::is_transient_io(&e) => return Err(Failure::Transient(e.to_string())),
            Err(e) => return Err(bad(e.to_string())),
        };
        if let Some(len) = dl.remote_len {
            if dl.offset + (dl.head.len() + n) as u64 > len {
                return Err(bad(format!("the server sent more than the {len} bytes it announced")));
            }
        }
        if is_direct {
            dl.commit_raw(n).map_err(fatal_io("writing the .part"))?;
        } else if dl.zstd.is_none() {
            dl.head.extend_from_slice(&buf[..n]);
            if dl.head.len() < ZSTD_MAGIC.len() {
                continue;
            }
            start_stream(dl)?;
        } else {
            dl.consume(&buf[..n])?;
        }
        dl.settle(images, record_name).map_err(fatal_io("recording the progress"))?;
        if dl.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            dl.checkpoint(images, record_name).map_err(fatal_io("recording the progress"))?;
        }
        progress(Progress { phase: Phase::Download, done: dl.written, total: dl.total() });
    }
    if dl.zstd.is_none() {
        start_stream(dl)?;
    }
    if let Some(len) = dl.remote_len {
        if dl.offset < len {
            return Err(Failure::Transient(format!(
                "the connection closed after {} of the {len} bytes announced",
                dl.offset
            )));
        }
    }
    if dl.zstd == Some(true) && dl.frame_open {
        return Err(Failure::Fatal(RemoteError::Zstd(format!(
            "it ends inside a frame after {} bytes (a truncated file?)",
            dl.offset
        ))));
    }
    Ok(())
}

/// The first bytes of the resource decide raw or zstd; then they are consumed.
fn start_stream(dl: &mut Dl) -> Result<(), Failure> {
    let head = std::mem::take(&mut dl.head);
    dl.zstd = Some(head.starts_with(&ZSTD_MAGIC));
    dl.consume(&head)
}
