//! Signed staging from a URL: the minisign [`Verifier`] of `hnctl stage URL`.
//! It fetches `URL.minisig` (or reads `--signature FILE`) before any image byte,
//! applies the same acceptance policy as a local stage and the next boot
//! ([`crate::trust::stream::Check`]: keys, revocations, `compat=`, the
//! anti-rollback floor, the one-shot downgrade allowance), so a refused image
//! costs a few hundred bytes; then it is fed the raw image's bytes in the one
//! pass that writes them (again from the first byte on a restart or a resume)
//! and gives the verdict before the `.part` is renamed. The raw signature is kept
//! as the staged image's sidecar. With no trusted key the image is staged "not
//! verified", its signature kept when the server has one.

use super::download::{RemoteError, Verifier};
use super::http;
use crate::trust::minisign::MAX_SIGNATURE_FILE;
use crate::trust::stream::Check;
use crate::trust::{Allowance, Context, KeyStore, Meta, Signature, Verdict, Version};
use std::io::Read;

/// The host's side of the policy (what the next boot will apply).
pub struct Policy<'s> {
    pub store: &'s KeyStore,
    /// The anti-rollback floor.
    pub floor: Option<Version>,
    /// `compat=` of the image running now.
    pub compat: Option<String>,
    /// `--allow-downgrade`: allow this signed image below the floor, once.
    pub allow_downgrade: bool,
}

/// Where the signature comes from.
pub enum SigSource {
    /// `URL.minisig` (absent when the server answers 404 or 410).
    Remote,
    /// `--signature FILE` or a registry's signature layer, already read.
    Given(Vec<u8>),
    /// None (a registry artifact without a signature layer).
    Absent,
}

pub struct SigVerifier<'s> {
    policy: Policy<'s>,
    source: SigSource,
    raw: Option<Vec<u8>>,
    sig: Result<Option<Signature>, String>,
    allowance: Option<Allowance>,
    check: Option<Check<'s>>,
    verdict: Option<Verdict>,
}

impl<'s> SigVerifier<'s> {
    pub fn new(policy: Policy<'s>, source: SigSource) -> SigVerifier<'s> {
        SigVerifier { policy, source, raw: None, sig: Ok(None), allowance: None, check: None, verdict: None }
    }

    /// The verdict once the image was accepted (`None` before).
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// The downgrade allowance to record after the stage, when this image goes
    /// below the floor with `--allow-downgrade` (as a local stage does).
    pub fn allowance_to_record(&self) -> Option<(&Allowance, &Version)> {
        let a = self.allowance.as_ref()?;
        let floor = self.policy.floor.as_ref()?;
        (&a.version < floor).then_some((a, floor))
    }

    fn start(&self) -> Check<'s> {
        let ctx = Context {
            current_compat: self.policy.compat.as_deref(),
            floor: self.policy.floor.as_ref(),
            allowance: self.allowance.as_ref(),
        };
        let sig = self.sig.as_ref().map(Option::as_ref).map_err(Clone::clone);
        Check::start(self.policy.store, sig, &ctx)
    }

    /// `URL.minisig`: `Ok(None)` when the server has none.
    fn fetch(&self, url: &str, agent: &ureq::Agent) -> Result<Option<Vec<u8>>, RemoteError> {
        let sig_url = format!("{url}{}", crate::trust::SIG_SUFFIX);
        let keys = !self.policy.store.is_empty();
        let reply = match http::get(agent, &sig_url, 0, None) {
            Ok(r) => r,
            // Without keys the signature is only kept: a failure to fetch it is not fatal.
            Err(_) if !keys => return Ok(None),
            Err(e) => return Err(RemoteError::BadReply { url: sig_url, reason: e.to_string() }),
        };
        match reply.status {
            200 => {}
            404 | 410 => return Ok(None),
            _ if !keys => return Ok(None),
            status => return Err(RemoteError::Status { url: sig_url, status }),
        }
        let mut raw = Vec::new();
        let read = reply.body.take(MAX_SIGNATURE_FILE as u64 + 1).read_to_end(&mut raw);
        match read {
            // Without keys, only a signature is kept (not an error page served as 200).
            Ok(_) if !keys => Ok((raw.len() <= MAX_SIGNATURE_FILE && Signature::parse(&raw).is_ok()).then_some(raw)),
            Ok(_) if raw.len() <= MAX_SIGNATURE_FILE => Ok(Some(raw)),
            Ok(_) => Err(RemoteError::Refused(format!("{sig_url}: larger than {MAX_SIGNATURE_FILE} bytes, not a signature"))),
            Err(_) if !keys => Ok(None),
            Err(e) => Err(RemoteError::BadReply { url: sig_url, reason: e.to_string() }),
        }
    }
}

impl Verifier for SigVerifier<'_> {
    fn before_download(&mut self, url: &str, agent: &ureq::Agent) -> Result<Option<u64>, RemoteError> {
        let raw = match &self.source {
            SigSource::Given(b) => Some(b.clone()),
            SigSource::Remote => self.fetch(url, agent)?,
            SigSource::Absent => None,
        };
        self.sig = match &raw {
            None => Ok(None),
            Some(b) => Signature::parse(b).map(Some).map_err(|e| e.to_string()),
        };
        self.raw = raw;
        let meta = match &self.sig {
            Ok(Some(s)) => Meta::parse(&s.trusted_comment).ok(),
            _ => None,
        };
        if let (Ok(Some(sig)), true, Some(v)) = (&self.sig, self.policy.allow_downgrade, meta.as_ref().and_then(|m| m.version.clone())) {
            self.allowance = Some(Allowance::for_signature(sig, v));
        }
        let check = self.start();
        match check.decided() {
            Some(Verdict::Reject(r)) => Err(RemoteError::Refused(r.to_string())),
            // Keys are trusted and the signature file passed: its signed size counts.
            None => {
                self.check = Some(check);
                Ok(meta.and_then(|m| m.size))
            }
            Some(_) => {
                self.check = Some(check);
                Ok(None)
            }
        }
    }

    fn restart(&mut self) {
        if self.check.is_some() {
            self.check = Some(self.start());
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        if let Some(c) = &mut self.check {
            c.update(chunk);
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        let Some(check) = self.check.take() else {
            return Err("the signature was not checked before the download".into());
        };
        match check.finish() {
            Verdict::Reject(r) => Err(r.to_string()),
            v => {
                self.verdict = Some(v);
                Ok(())
            }
        }
    }

    fn sidecar(&self) -> Option<&[u8]> {
        self.raw.as_deref()
    }
}

/// `hnctl stage URL` on `host`: the key store in `keys`, the signature from
/// `signature` (a local file) or `URL.minisig`, the host's floor and `compat=`;
/// records a `--allow-downgrade` allowance after the stage, like a local stage.
#[allow(clippy::too_many_arguments)]
pub fn stage_on_host(
    host: &crate::ctl::Host,
    images: &dyn crate::slots::dir::Dir,
    url: &str,
    opts: &super::RemoteOptions,
    signature: Option<&std::path::Path>,
    keys: &std::path::Path,
    allow_downgrade: bool,
    progress: &mut dyn FnMut(super::Progress),
) -> Result<(super::RemoteReport, Option<Verdict>), crate::ctl::CtlError> {
    let source = match signature {
        None => SigSource::Remote,
        Some(p) => read_given(p, &format!("staging {url}"))?,
    };
    stage_with(host, images, url, opts, source, keys, allow_downgrade, progress)
}

/// `--signature FILE`, read with a size cap.
pub fn read_given(p: &std::path::Path, what: &str) -> Result<SigSource, crate::ctl::CtlError> {
    use crate::ctl::{CtlError, ErrorKind};
    match std::fs::read(p) {
        Ok(b) if b.len() <= MAX_SIGNATURE_FILE => Ok(SigSource::Given(b)),
        Ok(b) => Err(CtlError {
            what: what.to_string(),
            found: format!("{}: {} bytes, not a signature", p.display(), b.len()),
            kind: ErrorKind::Refused,
        }),
        Err(e) => Err(CtlError::failed(format!("reading the signature {}", p.display()), e)),
    }
}

/// [`stage_on_host`] with the signature's source chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn stage_with(
    host: &crate::ctl::Host,
    images: &dyn crate::slots::dir::Dir,
    url: &str,
    opts: &super::RemoteOptions,
    source: SigSource,
    keys: &std::path::Path,
    allow_downgrade: bool,
    progress: &mut dyn FnMut(super::Progress),
) -> Result<(super::RemoteReport, Option<Verdict>), crate::ctl::CtlError> {
    use crate::ctl::{self, CtlError, ErrorKind};
    let what = format!("staging {url}");
    let refused = |found: String| CtlError { what: what.clone(), found, kind: ErrorKind::Refused };
    let store = KeyStore::load(keys).map_err(|e| refused(format!("the key store: {e}")))?;
    let (floor, compat) = ctl::stage_policy(host, images, &store, &what)?;
    let policy = Policy { store: &store, floor, compat, allow_downgrade };
    let mut v = SigVerifier::new(policy, source);
    let mut opts = opts.clone();
    if opts.state_dir.is_none() {
        opts.state_dir = Some(host.state_dir());
    }
    let report = super::stage_url(images, &host.names, url, &opts, &mut v, progress).map_err(|e| to_ctl(&what, e))?;
    if let Some((a, _)) = v.allowance_to_record() {
        ctl::record_allowance(host, a, &what)?;
    }
    Ok((report, v.verdict().cloned()))
}

/// The exit code of a failed `stage URL`: 3 refused, 4 interrupted (resumable),
/// 2 usage, 1 otherwise.
pub fn to_ctl(what: &str, e: RemoteError) -> crate::ctl::CtlError {
    use crate::ctl::{CtlError, ErrorKind};
    CtlError {
        what: what.to_string(),
        kind: if e.is_refusal() {
            ErrorKind::Refused
        } else if e.is_interrupted() {
            ErrorKind::Interrupted
        } else if matches!(e, RemoteError::Usage(_)) {
            ErrorKind::Usage
        } else {
            ErrorKind::Failed
        },
        found: e.to_string(),
    }
}
