//! The acceptance policy, pure: from the key store, the image's signature (or
//! none), the running image's `compat=`, the anti-rollback floor and a one-shot
//! downgrade allowance, decide whether a staged image may become the root, and
//! name the reason when not. It runs in two halves around the one read of the
//! image: [`admit`] decides everything the signature file alone can tell (so a
//! refusal needs no read), [`conclude`] adds the outcome of the streamed image
//! check. [`decide`] joins the two for callers that have the bytes at hand.
//!
//! Order of the checks: no trusted key → not verified (accepted, the caller says
//! so once); no signature → unsigned; the key id revoked (even if also trusted)
//! → revoked; not trusted → unknown key; the global signature over the trusted
//! comment → bad signature; the comment's tokens → bad comment (`version=` is
//! required); `compat=` against the running image's, when it declares one; the
//! version against the floor, unless the allowance names this very signature and
//! version; then the image bytes → bad signature, and `size=` → size mismatch.

use super::comment::{Meta, Version};
use super::keystore::{KeyStore, TrustedKey};
use super::minisign::{Algorithm, KeyId, Signature};
use std::fmt;

/// What the running system knows when judging a staged image.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    /// `compat=` of the image running now (`None`: it declares none, any is fine).
    pub current_compat: Option<&'a str>,
    /// The highest `version=` that booted and was marked good.
    pub floor: Option<&'a Version>,
    /// The operator's recorded one-shot permission to go below the floor.
    pub allowance: Option<&'a Allowance>,
}

/// `hnctl stage --allow-downgrade`: this signed image (identified by its
/// signature, which covers its bytes and key) at this version may go below the
/// floor, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub version: Version,
    pub signature: [u8; 64],
}

impl Allowance {
    pub fn for_signature(sig: &Signature, version: Version) -> Allowance {
        Allowance {
            version,
            signature: sig.signature,
        }
    }

    fn covers(&self, sig: &Signature, version: &Version) -> bool {
        self.signature == sig.signature && &self.version == version
    }
}

/// Which signed part did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedPart {
    /// The trusted comment (global signature): the metadata was altered.
    Comment,
    /// The image bytes.
    Image,
}

/// Why a staged image is refused; [`Reject::name`] is the short name shown in
/// logs and JSON, the `Display` form says what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Keys are trusted but the image has no `.minisig`.
    Unsigned,
    /// The `.minisig` (or the key store) could not be read or parsed.
    MalformedSignature(String),
    /// `trusted.d/` or `revoked.d/` is damaged: nothing can be verified (fail closed).
    KeyStore(String),
    UnknownKey(KeyId),
    RevokedKey(KeyId),
    BadSignature { key_id: KeyId, part: SignedPart },
    BadComment(String),
    CompatMismatch { current: String, image: Option<String> },
    Downgrade { floor: Version, version: Version },
    SizeMismatch { signed: u64, actual: u64 },
}

impl Reject {
    pub fn name(&self) -> &'static str {
        match self {
            Reject::Unsigned => "unsigned",
            Reject::MalformedSignature(_) => "malformed-signature",
            Reject::KeyStore(_) => "key-store",
            Reject::UnknownKey(_) => "unknown-key",
            Reject::RevokedKey(_) => "revoked-key",
            Reject::BadSignature { .. } => "bad-signature",
            Reject::BadComment(_) => "bad-comment",
            Reject::CompatMismatch { .. } => "compat-mismatch",
            Reject::Downgrade { .. } => "downgrade",
            Reject::SizeMismatch { .. } => "size-mismatch",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name())?;
        match self {
            Reject::Unsigned => f.write_str("trusted keys are installed but the image has no signature (.minisig)"),
            Reject::MalformedSignature(e) => write!(f, "{e}"),
            Reject::KeyStore(e) => write!(f, "{e}; no image can be verified until it is repaired"),
            Reject::UnknownKey(id) => write!(f, "signed by key {id}, which is not in trusted.d/"),
            Reject::RevokedKey(id) => write!(f, "signed by key {id}, which is revoked (revoked.d/{id})"),
            Reject::BadSignature { key_id, part: SignedPart::Comment } => {
                write!(f, "the trusted comment does not match its signature by key {key_id} (altered metadata)")
            }
            Reject::BadSignature { key_id, part: SignedPart::Image } => {
                write!(f, "the image does not match its signature by key {key_id} (altered or incomplete image)")
            }
            Reject::BadComment(e) => write!(f, "trusted comment: {e}"),
            Reject::CompatMismatch { current, image: Some(i) } => {
                write!(f, "the image is compat={i}, the running image is compat={current}")
            }
            Reject::CompatMismatch { current, image: None } => {
                write!(f, "the image declares no compat=, the running image is compat={current}")
            }
            Reject::Downgrade { floor, version } => write!(
                f,
                "version {version} is lower than {floor}, the highest version that booted good (hnctl stage --allow-downgrade to allow it once)"
            ),
            Reject::SizeMismatch { signed, actual } => {
                write!(f, "the trusted comment says size={signed}, the image has {actual} bytes")
            }
        }
    }
}

/// An accepted signed image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub key_id: KeyId,
    /// The key's file name in `trusted.d/`.
    pub key_file: String,
    pub algorithm: Algorithm,
    pub meta: Meta,
    /// Accepted below the floor thanks to the operator's allowance (to be used up).
    pub downgrade: bool,
}

impl fmt::Display for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "signed by key {} (trusted.d/{}), {}", self.key_id, self.key_file, self.meta.summary())?;
        if self.downgrade {
            f.write_str(", downgrade allowed once by the operator")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No trusted key is installed: accepted as before, without verification.
    NotVerified,
    Accept(Accepted),
    Reject(Reject),
}

impl Verdict {
    pub fn is_accepted(&self) -> bool {
        !matches!(self, Verdict::Reject(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::NotVerified => f.write_str("not verified: no trusted keys are installed"),
            Verdict::Accept(a) => write!(f, "accepted: {a}"),
            Verdict::Reject(r) => write!(f, "rejected: {r}"),
        }
    }
}

/// An image whose signature file passed every check: its bytes remain to be
/// verified with `key`.
#[derive(Clone, Debug)]
pub struct Pending<'s> {
    pub key: &'s TrustedKey,
    pub meta: Meta,
    pub downgrade: bool,
    pub algorithm: Algorithm,
}

#[derive(Clone, Debug)]
pub enum Admission<'s> {
    Final(Verdict),
    Verify(Pending<'s>),
}

/// Everything decidable from the signature file alone.
pub fn admit<'s>(store: &'s KeyStore, sig: Option<&Signature>, ctx: &Context) -> Admission<'s> {
    let reject = |r| Admission::Final(Verdict::Reject(r));
    if store.is_empty() {
        return Admission::Final(Verdict::NotVerified);
    }
    let Some(sig) = sig else {
        return reject(Reject::Unsigned);
    };
    if store.is_revoked(sig.key_id) {
        return reject(Reject::RevokedKey(sig.key_id));
    }
    let Some(key) = store.find(sig.key_id) else {
        return reject(Reject::UnknownKey(sig.key_id));
    };
    if !sig.comment_signed_by(&key.key) {
        return reject(Reject::BadSignature {
            key_id: sig.key_id,
            part: SignedPart::Comment,
        });
    }
    let meta = match Meta::parse(&sig.trusted_comment) {
        Ok(m) => m,
        Err(e) => return reject(Reject::BadComment(e)),
    };
    let Some(version) = meta.version.clone() else {
        return reject(Reject::BadComment("no version= token".into()));
    };
    if let Some(current) = ctx.current_compat {
        if meta.compat.as_deref() != Some(current) {
            return reject(Reject::CompatMismatch {
                current: current.to_string(),
                image: meta.compat.clone(),
            });
        }
    }
    let mut downgrade = false;
    if let Some(floor) = ctx.floor {
        if &version < floor {
            if ctx.allowance.is_some_and(|a| a.covers(sig, &version)) {
                downgrade = true;
            } else {
                return reject(Reject::Downgrade {
                    floor: floor.clone(),
                    version,
                });
            }
        }
    }
    Admission::Verify(Pending {
        key,
        meta,
        downgrade,
        algorithm: sig.algorithm,
    })
}

/// The verdict once the image's `len` bytes were checked (`image_ok`).
pub fn conclude(p: Pending, image_ok: bool, len: u64) -> Verdict {
    if !image_ok {
        return Verdict::Reject(Reject::BadSignature {
            key_id: p.key.key.id,
            part: SignedPart::Image,
        });
    }
    if let Some(signed) = p.meta.size {
        if signed != len {
            return Verdict::Reject(Reject::SizeMismatch { signed, actual: len });
        }
    }
    Verdict::Accept(Accepted {
        key_id: p.key.key.id,
        key_file: p.key.file.clone(),
        algorithm: p.algorithm,
        meta: p.meta,
        downgrade: p.downgrade,
    })
}

/// [`admit`] then [`conclude`], the image given whole.
pub fn decide(store: &KeyStore, sig: Option<&Signature>, ctx: &Context, image: &[u8]) -> Verdict {
    match admit(store, sig, ctx) {
        Admission::Final(v) => v,
        Admission::Verify(p) => {
            let Some(sig) = sig else {
                return Verdict::Reject(Reject::Unsigned);
            };
            let mut v = super::minisign::ImageVerifier::new(&p.key.key, sig);
            v.update(image);
            let len = v.len();
            let ok = v.finish();
            conclude(p, ok, len)
        }
    }
}
