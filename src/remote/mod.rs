//! `hnctl stage URL` (host only, feature `remote`; /init never references it): an
//! image on any HTTP(S) server or CDN streamed into the staged `.part`, raw or
//! zstd-compressed (decompressed on the fly), resumable after an interruption,
//! and ending in the same checks and rename as a local stage
//! ([`crate::slots::stage::complete_part`]).
//!
//! - [`state`]: the resume record kept next to the `.part` and the pure decision
//!   whether to resume (`hn-root-new.img.part.json`).
//! - [`http`]: the HTTP client (ureq, rustls, `--ca`, proxies from the
//!   environment, the stall timeout) and the parsing of the reply headers.
//! - [`writer`]: the `.part`'s writer thread (bounded buffers, writeback
//!   started early, checkpoint fsyncs off the receiving thread).
//! - [`download`]: the download loop: Range/If-Range requests, retries with
//!   backoff, zstd frames, durable checkpoints, progress, and the verifier seam
//!   for signatures ([`download::Verifier`]).
//! - [`signed`]: the minisign verifier (`URL.minisig` checked before the
//!   download, the image verified in the same pass that writes it).
//! - [`oci`]: `oci://` registries (pull into the same download loop, and
//!   `hnctl publish`).
//! - [`sha256_resume`]: a sha256 whose state the resume record keeps (a
//!   registry's zstd blob digest across an interruption).
//! - [`bidx`], [`adaptive`], [`index_cache`]: the block-hash index (`hnctl
//!   index`), the download of only the blocks the host does not have, and the
//!   local images' indexes cached in `hn-state/`.

pub mod adaptive;
pub mod bidx;
pub mod download;
pub mod http;
pub mod index_cache;
pub mod oci;
pub mod sha256_resume;
pub mod signed;
pub mod state;
pub mod writer;

pub use download::{stage_url, NoVerifier, Phase, Progress, RemoteError, RemoteOptions, RemoteReport, Verifier};

/// `hnctl stage` takes this argument as a URL rather than a path.
pub fn is_url(arg: &str) -> bool {
    let lower = arg.get(..8).unwrap_or(arg).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}
