//! OCI registries (`hnctl stage oci://…`, `hnctl publish oci://…`): an image is
//! an OCI 1.1 artifact, an image manifest (schema 2) with
//! `artifactType: application/vnd.hninit.image.v1`, the empty config, and as
//! layers the image (raw or zstd), its minisign signature and its block index,
//! pulled and pushed per the OCI distribution spec with any registry.
//!
//! - this file: the media types, the `oci://` reference, the manifest and its
//!   strict validation (pure).
//! - [`auth`]: credentials (the `~/.docker/config.json` `auths` shape) and the
//!   registry's `WWW-Authenticate` flow (anonymous, bearer token, basic).
//! - [`pull`]: manifest, small blobs, and the image blob through the download
//!   loop of `stage URL` (resume, adaptive, signature, digest).
//! - [`push`]: blob uploads and the manifest.

pub mod auth;
pub mod pull;
pub mod push;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ARTIFACT_TYPE: &str = "application/vnd.hninit.image.v1";
pub const MT_RAW: &str = "application/vnd.hninit.image.raw.v1";
pub const MT_ZSTD: &str = "application/vnd.hninit.image.raw.v1+zstd";
pub const MT_MINISIG: &str = "application/vnd.hninit.image.minisig.v1";
pub const MT_BIDX: &str = "application/vnd.hninit.image.bidx.v1";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's bytes (`{}`) and digest, per the image spec.
pub const EMPTY_JSON: &[u8] = b"{}";
pub const EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
pub const TITLE: &str = "org.opencontainers.image.title";
/// A manifest larger than this is refused (registries cap them at 4 MiB too).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// `oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO@sha256:HEX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    pub repo: String,
    /// The tag, or the manifest's digest (`sha256:…`).
    pub reference: String,
    /// `https://REGISTRY`, or `http://` for a loopback registry (127.0.0.1, ::1, localhost).
    pub base: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, String> {
        let bad = |why: &str| format!("{s:?} is not oci://REGISTRY/REPO:TAG or oci://REGISTRY/REPO@sha256:HEX: {why}");
        let rest = s.strip_prefix("oci://").ok_or_else(|| bad("no oci:// prefix"))?;
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("no repository"))?;
        if registry.is_empty()
            || registry.len() > 255
            || !registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad("the registry is not host[:port]"));
        }
        let (repo, reference) = if let Some((r, d)) = path.split_once('@') {
            parse_digest(d).map_err(|e| bad(&e))?;
            (r, d.to_string())
        } else {
            let (r, t) = match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t),
                _ => return Err(bad("no :TAG or @sha256:HEX")),
            };
            let tag_ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().enumerate().all(|(i, b)| b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-')));
            if !tag_ok {
                return Err(bad("the tag is not [A-Za-z0-9_][A-Za-z0-9._-]{0,127}"));
            }
            (r, t.to_string())
        };
        let repo_ok = !repo.is_empty()
            && repo.len() <= 255
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                    && c.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
                    && c.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
            });
        if !repo_ok {
            return Err(bad("the repository is not lower-case components a-z0-9 separated by . _ - and /"));
        }
        let host = registry.rsplit_once(':').filter(|(h, p)| !h.ends_with(']') || p.is_empty()).map_or(registry, |(h, _)| h);
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]") || registry == "[::1]";
        let scheme = if loopback { "http" } else { "https" };
        Ok(Reference {
            registry: registry.to_string(),
            repo: repo.to_string(),
            reference,
            base: format!("{scheme}://{registry}"),
        })
    }

    pub fn manifest_url(&self, reference: &str) -> String {
        format!("{}/v2/{}/manifests/{reference}", self.base, self.repo)
    }

    pub fn blob_url(&self, digest: &str) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.base, self.repo)
    }

    pub fn uploads_url(&self) -> String {
        format!("{}/v2/{}/blobs/uploads/", self.base, self.repo)
    }

    /// The token scope for this repository (`pull` or `pull,push`).
    pub fn scope(&self, actions: &str) -> String {
        format!("repository:{}:{actions}", self.repo)
    }
}

/// `sha256:` and 64 lower-case hex digits (the only algorithm taken).
pub fn parse_digest(d: &str) -> Result<[u8; 32], String> {
    let hex = d.strip_prefix("sha256:").ok_or_else(|| format!("digest {d:?}: not sha256:"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest {d:?}: not 64 lower-case hex digits"));
    }
    crate::slots::stage::parse_sha256(hex).map_err(|e| format!("digest {d:?}: {e}"))
}

pub fn digest_of(sha: &[u8; 32]) -> String {
    format!("sha256:{}", crate::util::hex(sha))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The layers of an hninit artifact, found and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub image: Descriptor,
    pub zstd: bool,
    pub signature: Option<Descriptor>,
    pub index: Option<Descriptor>,
}

impl Manifest {
    /// The artifact this manifest describes, or why it is not one.
    pub fn artifact(&self) -> Result<Artifact, String> {
        if self.schema_version != 2 {
            return Err(format!("schemaVersion {}, not 2", self.schema_version));
        }
        if let Some(mt) = &self.media_type {
            if mt != MT_MANIFEST {
                return Err(format!("mediaType {mt}, not {MT_MANIFEST}"));
            }
        }
        if self.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
            return Err(format!("artifactType {:?}, not {ARTIFACT_TYPE} (not an hninit image)", self.artifact_type));
        }
        let mut image = None;
        let mut signature = None;
        let mut index = None;
        for l in &self.layers {
            parse_digest(&l.digest).map_err(|e| format!("layer {}: {e}", l.media_type))?;
            let slot = match l.media_type.as_str() {
                MT_RAW | MT_ZSTD => &mut image,
                MT_MINISIG => &mut signature,
                MT_BIDX => &mut index,
                // Other layers are not ours: ignored, as the spec allows.
                _ => continue,
            };
            if slot.replace(l.clone()).is_some() {
                return Err(format!("more than one layer of type {}", l.media_type));
            }
        }
        let image = image.ok_or_else(|| format!("no layer of type {MT_RAW} or {MT_ZSTD}"))?;
        if signature.as_ref().is_some_and(|s| s.size > crate::trust::minisign::MAX_SIGNATURE_FILE as u64) {
            return Err("the signature layer is larger than a signature".into());
        }
        if index.as_ref().is_some_and(|i| i.size > super::bidx::MAX_INDEX) {
            return Err(format!("the index layer is larger than {} bytes", super::bidx::MAX_INDEX));
        }
        let zstd = image.media_type == MT_ZSTD;
        Ok(Artifact { image, zstd, signature, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("oci://127.0.0.1:5000/fleet/web:2026.12").unwrap();
        assert_eq!((r.registry.as_str(), r.repo.as_str(), r.reference.as_str()), ("127.0.0.1:5000", "fleet/web", "2026.12"));
        assert_eq!(r.base, "http://127.0.0.1:5000");
        assert_eq!(r.manifest_url("x"), "http://127.0.0.1:5000/v2/fleet/web/manifests/x");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("oci://ghcr.io/a/b@{d}")).unwrap();
        assert_eq!((r.reference.as_str(), r.base.as_str()), (d.as_str(), "https://ghcr.io"));
        for bad in [
            "https://x/y:1",
            "oci://reg/Web:1",
            "oci://reg/web",
            "oci://reg/web:-x",
            "oci://reg/web@sha256:12",
            "oci://reg/web@md5:ab",
            "oci:///web:1",
            "oci://reg/we//b:1",
            "oci://re g/web:1",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests() {
        let d = |c: &str| format!("sha256:{}", c.repeat(64));
        let layer = |mt: &str, c: &str| Descriptor {
            media_type: mt.into(),
            digest: d(c),
            size: 10,
            data: None,
            annotations: BTreeMap::new(),
        };
        let mut m = Manifest {
            schema_version: 2,
            media_type: Some(MT_MANIFEST.into()),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor { media_type: MT_EMPTY.into(), digest: EMPTY_DIGEST.into(), size: 2, data: None, annotations: BTreeMap::new() },
            layers: vec![layer(MT_ZSTD, "a"), layer(MT_MINISIG, "b"), layer("text/plain", "c")],
            annotations: BTreeMap::new(),
        };
        let a = m.artifact().unwrap();
        assert!(a.zstd && a.signature.is_some() && a.index.is_none());
        m.layers.push(layer(MT_RAW, "d"));
        assert!(m.artifact().unwrap_err().contains("more than one"));
        m.layers.pop();
        m.artifact_type = Some("application/vnd.oci.image.config.v1+json".into());
        assert!(m.artifact().unwrap_err().contains("not an hninit image"));
        m.artifact_type = Some(ARTIFACT_TYPE.into());
        m.layers[0].digest = "sha256:XY".into();
        assert!(m.artifact().is_err());
        m.layers.remove(0);
        assert!(m.artifact().unwrap_err().contains("no layer"));
    }
}
