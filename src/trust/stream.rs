//! Checking an image in one read: [`Check`] takes the policy's admission, is fed
//! the image's bytes chunk by chunk (the same chunks may feed a digest), and
//! gives the verdict; [`check_reader`] drives it over a reader. Also the safe
//! read of a signature sidecar (`X.minisig`).

use super::keystore::KeyStore;
use super::minisign::{ImageVerifier, Signature, MAX_SIGNATURE_FILE};
use super::policy::{self, Admission, Context, Pending, Reject, Verdict};
use std::io::{self, Read};
use std::path::Path;

/// Read size for images (the same buffer feeds every consumer).
pub const CHUNK: usize = 1 << 20;

/// An image check in progress.
pub struct Check<'s> {
    state: CheckState<'s>,
}

enum CheckState<'s> {
    Final(Verdict),
    Verifying(Pending<'s>, ImageVerifier),
}

impl<'s> Check<'s> {
    /// Applies the policy to the signature (`Err`: the sidecar was unreadable
    /// or malformed, which is a rejection when keys are present).
    pub fn start(store: &'s KeyStore, sig: Result<Option<&Signature>, String>, ctx: &Context) -> Check<'s> {
        let state = match sig {
            Err(e) if !store.is_empty() => CheckState::Final(Verdict::Reject(Reject::MalformedSignature(e))),
            Err(_) => CheckState::Final(Verdict::NotVerified),
            Ok(sig) => match (policy::admit(store, sig, ctx), sig) {
                (Admission::Verify(p), Some(sig)) => {
                    let v = ImageVerifier::new(&p.key.key, sig);
                    CheckState::Verifying(p, v)
                }
                (Admission::Verify(_), None) => CheckState::Final(Verdict::Reject(Reject::Unsigned)),
                (Admission::Final(v), _) => CheckState::Final(v),
            },
        };
        Check { state }
    }

    /// A refusal (or "not verified") known before reading any byte.
    pub fn decided(&self) -> Option<&Verdict> {
        match &self.state {
            CheckState::Final(v) => Some(v),
            CheckState::Verifying(..) => None,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if let CheckState::Verifying(_, v) = &mut self.state {
            v.update(chunk);
        }
    }

    pub fn finish(self) -> Verdict {
        match self.state {
            CheckState::Final(v) => v,
            CheckState::Verifying(p, v) => {
                let len = v.len();
                policy::conclude(p, v.finish(), len)
            }
        }
    }
}

/// Another consumer of the image's bytes (e.g. a digest).
pub type Feed<'a> = Option<&'a mut dyn FnMut(&[u8])>;

/// Reads `r` to its end once, feeding `check` and `also` (e.g. a digest) from
/// the same buffer; returns the verdict and the number of bytes read. Stops
/// reading early only when the verdict is already known and `also` is `None`.
pub fn check_reader(
    mut check: Check,
    r: &mut dyn Read,
    mut also: Feed,
) -> io::Result<(Verdict, u64)> {
    if also.is_none() && check.decided().is_some() {
        return Ok((check.finish(), 0));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        check.update(chunk);
        if let Some(f) = also.as_mut() {
            f(chunk);
        }
        total += n as u64;
    }
    Ok((check.finish(), total))
}

/// Reads and parses the signature file `path`: `Ok(None)` if it does not exist;
/// `Err` (naming the file) if it is a link, not a regular file, too large or
/// malformed — a damaged sidecar is never taken as absent.
pub fn read_signature(path: &Path) -> Result<Option<Signature>, String> {
    let buf = match crate::sys::saferead::read_path(path, MAX_SIGNATURE_FILE as u64) {
        Ok(b) => b,
        Err(e) if e.is_absent() => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    Signature::parse(&buf).map(Some).map_err(|e| format!("{}: {e}", path.display()))
}
