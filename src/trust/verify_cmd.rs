//! `hnctl verify FILE`: the check `/init` makes of a staged image, on any file,
//! without staging it: the signature (`FILE.minisig` or a given one) against the
//! key store of an etc directory (`/etc/hninit` by default), one read of the
//! file, and a report (key id, version, compat, other metadata, verdict, time).
//! `hnctl` turns a refusal into exit 3; this module depends on nothing above
//! `trust/`.

use super::keystore::KeyStore;
use super::minisign::Signature;
use super::policy::{Context, Verdict};
use super::stream::{self, Check};
use super::{comment::Meta, SIG_SUFFIX};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why no verdict could be given.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The key store is damaged: a refusal (nothing can be accepted).
    #[error("{what}: the key store: {found}")]
    KeyStore { what: String, found: String },
    /// The file could not be read.
    #[error("{what}: {found}")]
    Io { what: String, found: String },
}

/// What `hnctl verify` found.
#[derive(Debug)]
pub struct VerifyReport {
    pub image: PathBuf,
    pub bytes: u64,
    pub signature_path: PathBuf,
    /// The signature as parsed (`None`: absent); `Err`: unreadable or malformed.
    pub signature: Result<Option<Signature>, String>,
    pub keys_dir: PathBuf,
    pub trusted_keys: usize,
    pub verdict: Verdict,
    pub elapsed: Duration,
}

/// Checks `image` with `signature` (default `IMAGE.minisig`) against the keys in
/// `etc` (`trusted.d/`, `revoked.d/`).
pub fn verify(image: &Path, signature: Option<&Path>, etc: &Path) -> Result<VerifyReport, VerifyError> {
    let what = format!("verifying {}", image.display());
    let store = KeyStore::load(etc).map_err(|e| VerifyError::KeyStore {
        what: what.clone(),
        found: e.to_string(),
    })?;
    let io = |what: &String, e: &dyn std::fmt::Display| VerifyError::Io {
        what: what.clone(),
        found: e.to_string(),
    };
    let signature_path = signature
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("{}{SIG_SUFFIX}", image.display())));
    let sig = stream::read_signature(&signature_path);
    let mut f = std::fs::File::open(image).map_err(|e| io(&what, &e))?;
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(io(&what, &"not a regular file"));
    }
    let started = Instant::now();
    let check = Check::start(&store, sig.as_ref().map(Option::as_ref).map_err(Clone::clone), &Context::default());
    let (verdict, bytes) = stream::check_reader(check, &mut f, None).map_err(|e| io(&what, &e))?;
    Ok(VerifyReport {
        image: image.to_path_buf(),
        bytes,
        signature_path,
        signature: sig,
        keys_dir: etc.to_path_buf(),
        trusted_keys: store.trusted.len(),
        verdict,
        elapsed: started.elapsed(),
    })
}

impl VerifyReport {
    /// Refused: `hnctl verify` exits 3.
    pub fn is_refused(&self) -> bool {
        !self.verdict.is_accepted()
    }

    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "image      {}", self.image.display());
        match &self.signature {
            Ok(None) => {
                let _ = writeln!(s, "signature  none ({} does not exist)", self.signature_path.display());
            }
            Err(e) => {
                let _ = writeln!(s, "signature  unreadable: {e}");
            }
            Ok(Some(sig)) => {
                let _ = writeln!(s, "signature  {} ({})", self.signature_path.display(), sig.algorithm);
                let _ = writeln!(s, "key id     {}", sig.key_id);
                // Shown even when not verified, marked so.
                let verified = matches!(self.verdict, Verdict::Accept(_));
                let mark = if verified { "" } else { " (not verified)" };
                match Meta::parse(&sig.trusted_comment) {
                    Ok(m) => {
                        let v = m.version.as_ref().map(|v| v.to_string());
                        let _ = writeln!(s, "version    {}{mark}", v.as_deref().unwrap_or("-"));
                        let _ = writeln!(s, "compat     {}{mark}", m.compat.as_deref().unwrap_or("-"));
                        if let Some(n) = m.size {
                            let _ = writeln!(s, "size       {n}{mark}");
                        }
                        for (k, v) in &m.other {
                            let _ = writeln!(s, "{k:<10} {v}{mark}");
                        }
                    }
                    Err(_) => {
                        let _ = writeln!(
                            s,
                            "comment    {}{mark}",
                            String::from_utf8_lossy(&sig.trusted_comment)
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            "keys       {} trusted in {}/trusted.d",
            self.trusted_keys,
            self.keys_dir.display()
        );
        let _ = writeln!(s, "verdict    {}", self.verdict);
        if self.bytes > 0 {
            let secs = self.elapsed.as_secs_f64();
            let rate = if secs > 0.0 { self.bytes as f64 / secs / (1 << 20) as f64 } else { 0.0 };
            let _ = writeln!(s, "read       {} bytes in {secs:.2} s ({rate:.0} MiB/s)", self.bytes);
        }
        s
    }
}
