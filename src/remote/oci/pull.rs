//! `hnctl stage oci://REGISTRY/REPO:TAG` (or `@sha256:…`): the manifest (its
//! digest checked when pinned), the signature and index layers (small, read whole,
//! digests checked), then the image layer through the download loop of `stage URL`
//! with the registry's authorization: resume with `Range`/`If-Range` (registries
//! send the blob digest as a strong ETag), adaptive download from the index
//! layer, the signature policy before the image blob is requested and the
//! signature over its bytes, and the blob digest (a raw layer's digest is the
//! image's sha256, checked and kept like `--sha256`; a zstd layer's is checked
//! over the compressed bytes).

use super::auth::{self, Session};
use super::{digest_of, parse_digest, Artifact, Descriptor, Manifest, Reference, MAX_MANIFEST, MT_MANIFEST};
use crate::ctl::{CtlError, ErrorKind};
use crate::remote::signed::{self, SigSource};
use crate::remote::{http, Progress, RemoteOptions, RemoteReport};
use crate::trust::Verdict;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// What a pull staged, besides the stage itself.
pub struct Pulled {
    pub report: RemoteReport,
    pub verdict: Option<Verdict>,
    /// The manifest's digest (`sha256:…`): pin it with `oci://…@DIGEST`.
    pub manifest: String,
    pub artifact: Artifact,
}

fn err(what: &str, kind: ErrorKind, found: impl Into<String>) -> CtlError {
    CtlError { what: what.to_string(), found: found.into(), kind }
}

/// `GET url` (with `Accept: accept`), a 200 required, and at most `max + 1`
/// bytes of its body read (the caller judges the size); `shown` names the body
/// in a read error.
fn get_capped(
    session: &mut Session,
    agent: &ureq::Agent,
    url: &str,
    accept: Option<&str>,
    max: u64,
    shown: &str,
    what: &str,
) -> Result<Vec<u8>, CtlError> {
    let reply = session
        .send(&format!("GET {url}"), &|a| {
            let mut q = agent.get(url);
            if let Some(t) = accept {
                q = q.header("Accept", t);
            }
            if let Some(a) = a {
                q = q.header("Authorization", a);
            }
            q.call()
        })
        .map_err(|e| err(what, ErrorKind::Failed, e))?;
    let status = reply.status().as_u16();
    if status != 200 {
        return Err(err(what, ErrorKind::Failed, format!("the registry answered {status} to GET {url}")));
    }
    let mut body = Vec::new();
    reply
        .into_body()
        .into_reader()
        .take(max + 1)
        .read_to_end(&mut body)
        .map_err(|e| err(what, ErrorKind::Failed, format!("reading {shown}: {e}")))?;
    Ok(body)
}

/// The manifest of `r` and its digest.
pub fn manifest(session: &mut Session, agent: &ureq::Agent, r: &Reference, what: &str) -> Result<(Manifest, String), CtlError> {
    let url = r.manifest_url(&r.reference);
    let body = get_capped(session, agent, &url, Some(MT_MANIFEST), MAX_MANIFEST, "the manifest", what)?;
    if body.len() as u64 > MAX_MANIFEST {
        return Err(err(what, ErrorKind::Refused, format!("the manifest is larger than {MAX_MANIFEST} bytes")));
    }
    let digest = digest_of(&Sha256::digest(&body).into());
    if r.reference.starts_with("sha256:") && digest != r.reference {
        return Err(err(what, ErrorKind::Refused, format!("the manifest served for {} has digest {digest}", r.reference)));
    }
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| err(what, ErrorKind::Refused, format!("the manifest is not an OCI image manifest: {e}")))?;
    Ok((m, digest))
}

/// A small blob read whole, its size and digest checked.
pub fn small_blob(session: &mut Session, agent: &ureq::Agent, r: &Reference, d: &Descriptor, what: &str) -> Result<Vec<u8>, CtlError> {
    let url = r.blob_url(&d.digest);
    let want = parse_digest(&d.digest).map_err(|e| err(what, ErrorKind::Refused, e))?;
    let body = get_capped(session, agent, &url, None, d.size, &url, what)?;
    let got: [u8; 32] = Sha256::digest(&body).into();
    if body.len() as u64 != d.size || got != want {
        return Err(err(
            what,
            ErrorKind::Refused,
            format!(
                "the {} blob is {} bytes with digest {}, the manifest says {} bytes with {}",
                d.media_type,
                body.len(),
                digest_of(&got),
                d.size,
                d.digest
            ),
        ));
    }
    Ok(body)
}

/// Stages the image of the artifact `reference` (see the module doc).
#[allow(clippy::too_many_arguments)]
pub fn stage(
    host: &crate::ctl::Host,
    images: &dyn crate::slots::dir::Dir,
    reference: &str,
    mut opts: RemoteOptions,
    signature: Option<&Path>,
    keys: &Path,
    allow_downgrade: bool,
    auth_file: Option<&Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Pulled, CtlError> {
    let what = format!("staging {reference}");
    let r = Reference::parse(reference).map_err(|e| err(&what, ErrorKind::Usage, e))?;
    let agent = http::agent(opts.ca.as_deref(), opts.stall).map_err(|e| err(&what, ErrorKind::Failed, e))?;
    let creds = auth::load(auth_file, &r.registry).map_err(|e| err(&what, ErrorKind::Usage, e))?;
    let mut session = Session::new(&agent, creds, r.scope("pull"));
    let (m, manifest) = manifest(&mut session, &agent, &r, &what)?;
    let art = m.artifact().map_err(|e| err(&what, ErrorKind::Refused, format!("{}: {e}", r.manifest_url(&r.reference))))?;

    // The signature first: a refusal costs no image byte.
    let source = match (signature, &art.signature) {
        (Some(p), _) => signed::read_given(p, &what)?,
        (None, Some(d)) => SigSource::Given(small_blob(&mut session, &agent, &r, d, &what)?),
        (None, None) => SigSource::Absent,
    };
    let image_digest = parse_digest(&art.image.digest).map_err(|e| err(&what, ErrorKind::Refused, e))?;
    if art.zstd {
        opts.blob_sha256 = Some(image_digest);
        opts.adaptive = false;
    } else {
        if opts.sha256.is_some_and(|s| s != image_digest) {
            return Err(err(&what, ErrorKind::Usage, format!("--sha256 differs from the image layer's digest {}", art.image.digest)));
        }
        opts.sha256 = Some(image_digest);
    }
    match (&art.index, opts.adaptive) {
        (Some(d), true) => opts.index = Some(small_blob(&mut session, &agent, &r, d, &what)?),
        _ => opts.adaptive = false,
    }
    opts.auth = session.authorization().map(str::to_string);
    let url = r.blob_url(&art.image.digest);
    let (report, verdict) = signed::stage_with(host, images, &url, &opts, source, keys, allow_downgrade, progress)
        .map_err(|mut e| {
            e.what = what.clone();
            e
        })?;
    Ok(Pulled { report, verdict, manifest, artifact: art })
}
