//! `hnctl publish oci://REGISTRY/REPO:TAG IMAGE`: pushes an image as an hninit
//! OCI artifact per the distribution spec. Each blob (the empty config, the image
//! — raw, or zstd when the file starts with zstd's magic number —, `IMAGE.minisig`
//! and `IMAGE.bidx` when present) is skipped when the registry has it (`HEAD`),
//! else uploaded in one piece (`POST …/blobs/uploads/`, then `PUT LOCATION&digest=`);
//! then the manifest is put under the tag. The image file is read twice: once
//! for its digest, once to send it.

use super::auth::{self, Session};
use super::{digest_of, Descriptor, Manifest, Reference, ARTIFACT_TYPE, EMPTY_DIGEST, EMPTY_JSON, MT_BIDX, MT_EMPTY, MT_MANIFEST, MT_MINISIG, MT_RAW, MT_ZSTD, TITLE};
use crate::ctl::{CtlError, ErrorKind};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `publish` did.
pub struct Published {
    /// The manifest's digest: `oci://REGISTRY/REPO@DIGEST` pins this artifact.
    pub digest: String,
    pub manifest: Manifest,
    /// Per blob: its media type, size, and whether the registry already had it.
    pub blobs: Vec<(String, u64, bool)>,
}

fn err(what: &str, kind: ErrorKind, found: impl Into<String>) -> CtlError {
    CtlError { what: what.to_string(), found: found.into(), kind }
}

enum Content<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// The sha256 and size of a file, read once.
fn digest_file(p: &Path) -> std::io::Result<([u8; 32], u64, [u8; 4])> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    let mut head = [0u8; 4];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if n_total < 4 {
            for (i, b) in buf[..n].iter().take(4 - n_total as usize).enumerate() {
                head[n_total as usize + i] = *b;
            }
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((h.finalize().into(), n_total, head))
}

fn with_auth<B>(mut q: ureq::RequestBuilder<B>, a: Option<&str>) -> ureq::RequestBuilder<B> {
    if let Some(a) = a {
        q = q.header("Authorization", a);
    }
    q
}

/// Uploads one blob unless the registry has it; returns whether it had it.
fn upload(session: &mut Session, agent: &ureq::Agent, r: &Reference, digest: &str, content: Content, what: &str) -> Result<bool, CtlError> {
    let fail = |e: String| err(what, ErrorKind::Failed, e);
    let blob = r.blob_url(digest);
    let head = session.send(&format!("HEAD {blob}"), &|a| with_auth(agent.head(&blob), a).call()).map_err(fail)?;
    if head.status().as_u16() == 200 {
        return Ok(true);
    }
    let start = r.uploads_url();
    let reply = session
        .send(&format!("POST {start}"), &|a| with_auth(agent.post(&start), a).send_empty())
        .map_err(fail)?;
    let status = reply.status().as_u16();
    let location = reply.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    let location = match (status, location) {
        (202, Some(l)) => l,
        (s, _) => return Err(fail(format!("the registry answered {s} to POST {start} (202 with a Location expected)"))),
    };
    let mut put = if location.starts_with("http://") || location.starts_with("https://") {
        location
    } else if location.starts_with('/') {
        format!("{}{location}", r.base)
    } else {
        return Err(fail(format!("an upload Location {location:?} that is not a URL or an absolute path")));
    };
    put.push(if put.contains('?') { '&' } else { '?' });
    put.push_str(&format!("digest={}", digest.replace(':', "%3A")));
    let q = with_auth(agent.put(&put), session.authorization()).header("Content-Type", "application/octet-stream");
    let reply = match content {
        Content::Bytes(b) => q.send(b),
        Content::File(p) => {
            let f = File::open(p).map_err(|e| fail(format!("opening {}: {e}", p.display())))?;
            q.send(f)
        }
    }
    .map_err(|e| fail(format!("PUT {digest}: {e}")))?;
    match reply.status().as_u16() {
        201 => Ok(false),
        s => Err(fail(format!("the registry answered {s} to the upload of {digest} (201 expected)"))),
    }
}

/// Pushes `image` (and its `.minisig`, `.bidx` unless given otherwise) as the tag of `reference`.
pub fn publish(
    reference: &str,
    image: &Path,
    signature: Option<&Path>,
    index: Option<&Path>,
    ca: Option<&Path>,
    auth_file: Option<&Path>,
    stall: Duration,
) -> Result<Published, CtlError> {
    let what = &format!("publishing {} as {reference}", image.display());
    let r = Reference::parse(reference).map_err(|e| err(what, ErrorKind::Usage, e))?;
    if r.reference.starts_with("sha256:") {
        return Err(err(what, ErrorKind::Usage, "publish takes a tag (oci://REGISTRY/REPO:TAG), not a digest"));
    }
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| err(what, ErrorKind::Failed, format!("reading {p}: {e}"))
    };
    if !std::fs::metadata(image).map_err(io(image))?.is_file() {
        return Err(err(what, ErrorKind::Usage, format!("{} is not a regular file", image.display())));
    }
    let (sha, size, head) = digest_file(image).map_err(io(image))?;
    let zstd = head == [0x28, 0xb5, 0x2f, 0xfd];
    let beside = |given: Option<&Path>, suffix: &str| -> Option<PathBuf> {
        match given {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from(format!("{}{suffix}", image.display()));
                p.is_file().then_some(p)
            }
        }
    };
    let small = |p: &Path, max: u64| -> Result<Vec<u8>, CtlError> {
        let b = std::fs::read(p).map_err(io(p))?;
        if b.len() as u64 > max {
            return Err(err(what, ErrorKind::Usage, format!("{}: larger than {max} bytes", p.display())));
        }
        Ok(b)
    };
    let sig = beside(signature, crate::trust::SIG_SUFFIX)
        .map(|p| small(&p, crate::trust::minisign::MAX_SIGNATURE_FILE as u64))
        .transpose()?;
    if let Some(s) = &sig {
        crate::trust::Signature::parse(s).map_err(|e| err(what, ErrorKind::Refused, format!("the signature: {e}")))?;
    }
    let idx = beside(index, ".bidx").map(|p| small(&p, crate::remote::bidx::MAX_INDEX)).transpose()?;
    if let Some(i) = &idx {
        crate::remote::bidx::Index::parse(i).map_err(|e| err(what, ErrorKind::Refused, format!("the index: {e}")))?;
    }

    let agent = crate::remote::http::agent(ca, stall).map_err(|e| err(what, ErrorKind::Failed, e))?;
    let creds = auth::load(auth_file, &r.registry).map_err(|e| err(what, ErrorKind::Usage, e))?;
    let mut session = Session::new(&agent, creds, r.scope("pull,push"));
    let desc = |media: &str, digest: String, size: u64, title: Option<String>| Descriptor {
        media_type: media.to_string(),
        digest,
        size,
        data: None,
        annotations: title.map(|t| BTreeMap::from([(TITLE.to_string(), t)])).unwrap_or_default(),
    };
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut blobs = Vec::new();
    let had = upload(&mut session, &agent, &r, EMPTY_DIGEST, Content::Bytes(EMPTY_JSON), what)?;
    blobs.push((MT_EMPTY.to_string(), EMPTY_JSON.len() as u64, had));
    let image_mt = if zstd { MT_ZSTD } else { MT_RAW };
    let mut layers = vec![desc(image_mt, digest_of(&sha), size, name.clone())];
    let had = upload(&mut session, &agent, &r, &layers[0].digest, Content::File(image), what)?;
    blobs.push((image_mt.to_string(), size, had));
    for (mt, bytes, suffix) in [(MT_MINISIG, &sig, ".minisig"), (MT_BIDX, &idx, ".bidx")] {
        let Some(b) = bytes else { continue };
        let d = desc(mt, digest_of(&Sha256::digest(b).into()), b.len() as u64, name.as_ref().map(|n| format!("{n}{suffix}")));
        let had = upload(&mut session, &agent, &r, &d.digest, Content::Bytes(b), what)?;
        blobs.push((mt.to_string(), b.len() as u64, had));
        layers.push(d);
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_MANIFEST.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: Descriptor { data: Some("e30=".into()), ..desc(MT_EMPTY, EMPTY_DIGEST.into(), 2, None) },
        layers,
        annotations: BTreeMap::new(),
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| err(what, ErrorKind::Failed, e.to_string()))?;
    let url = r.manifest_url(&r.reference);
    let reply = session
        .send(&format!("PUT {url}"), &|a| with_auth(agent.put(&url), a).header("Content-Type", MT_MANIFEST).send(&body[..]))
        .map_err(|e| err(what, ErrorKind::Failed, e))?;
    let status = reply.status().as_u16();
    if status != 201 {
        let mut text = String::new();
        let _ = reply.into_body().into_reader().take(4096).read_to_string(&mut text);
        return Err(err(what, ErrorKind::Failed, format!("the registry answered {status} to PUT {url}: {}", text.trim())));
    }
    Ok(Published { digest: digest_of(&Sha256::digest(&body).into()), manifest, blobs })
}
