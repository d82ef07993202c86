//! The resume record of a download in progress, `hn-root-new.img.part.json`,
//! written atomically (temp, fsync, rename, fsync dir) after the `.part` itself
//! was fsynced up to `written`: whatever a crash leaves, the record never claims
//! more than the disk holds. Bytes of the `.part` past `written` are discarded on
//! resume. The decision whether to resume is pure ([`decide`]).

use serde::{Deserialize, Serialize};

/// Format of the record; another value is not resumed.
pub const VERSION: u32 = 1;
/// The record's size cap when read back (it is a few hundred bytes).
pub const MAX_STATE: usize = 16 * 1024;
/// URLs longer than this are not recorded (nor resumed).
pub const MAX_URL: usize = 4096;

/// The name of the record next to the `.part`.
pub fn state_name(part: &str) -> String {
    format!("{part}.json")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeState {
    pub version: u32,
    /// The URL as given to `hnctl stage`.
    pub url: String,
    /// The server's validators of the resource: `If-Range` sends the ETag when it
    /// is strong, else `Last-Modified`.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The resource's size (compressed, for zstd), when the server said it.
    pub remote_len: Option<u64>,
    /// The resource is zstd: `offset` is at a frame boundary.
    pub zstd: bool,
    /// The bytes at the start of the `.part` that are durable and of the image.
    pub written: u64,
    /// The offset in the resource where `written` ends (raw: `written`).
    pub offset: u64,
    /// An adaptive download ([`super::adaptive`]): every byte of the `.part`
    /// below `written` (= `offset`) is final, the blocks past it that are
    /// fetched are fetched again, those copied from local images are in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveMark>,
    /// zstd whose blob digest is checked (a registry layer): the sha256 state
    /// of the compressed bytes before `offset` ([`super::sha256_resume`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_sha256_state: Option<String>,
}

/// What an adaptive download is resumed against: the same index (its sha256
/// pins the image, as a validator would) and the same local images (their
/// identities, as `hn-state/bidx-cache/` keys them), else it starts over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdaptiveMark {
    pub index_sha256: String,
    pub locals: Vec<String>,
}

impl ResumeState {
    /// The value for `If-Range`: a strong ETag, else the Last-Modified date
    /// (a weak ETag may not be used there, RFC 9110 13.1.5).
    pub fn validator(&self) -> Option<&str> {
        match (&self.etag, &self.last_modified) {
            (Some(e), _) if !e.starts_with("W/") => Some(e),
            (_, Some(m)) => Some(m),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// A record read back; `None` when it is not one this version wrote.
pub fn parse(bytes: &[u8]) -> Option<ResumeState> {
    let s: ResumeState = serde_json::from_slice(bytes).ok()?;
    let sane = s.version == VERSION
        && s.url.len() <= MAX_URL
        && (s.zstd || s.offset == s.written)
        && s.remote_len.is_none_or(|n| s.offset <= n)
        && (s.validator().is_some() || s.adaptive.is_some())
        && !(s.adaptive.is_some() && s.zstd)
        && s.blob_sha256_state.as_deref().is_none_or(|h| {
            s.zstd && super::sha256_resume::Sha256State::from_hex(h).is_some_and(|st| st.len() == s.offset)
        });
    sane.then_some(s)
}

/// Where the next download starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// From the first byte (any `.part` and record are removed).
    Fresh,
    /// From `written`/`offset` of this record (the `.part` is cut to `written`).
    Resume(ResumeState),
}

/// Resume only the same URL, a record with a validator, and a `.part` holding at
/// least what the record says is durable.
pub fn decide(record: Option<ResumeState>, url: &str, part_size: Option<u64>) -> Start {
    match record {
        Some(r) if r.url == url && part_size.is_some_and(|p| p >= r.written) && r.written > 0 => Start::Resume(r),
        _ => Start::Fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> ResumeState {
        ResumeState {
            version: VERSION,
            url: "http://h/x.img".into(),
            etag: Some("\"abc\"".into()),
            last_modified: None,
            remote_len: Some(100),
            zstd: false,
            written: 40,
            offset: 40,
            adaptive: None,
            blob_sha256_state: None,
        }
    }

    #[test]
    fn round_trip_and_validation() {
        let r = rec();
        assert_eq!(parse(&r.to_json()), Some(r.clone()));
        assert_eq!(parse(b"{"), None);
        let bad = ResumeState { offset: 41, ..r.clone() };
        assert_eq!(parse(&bad.to_json()), None, "raw: offset must equal written");
        let zst = ResumeState { zstd: true, offset: 12, ..r.clone() };
        assert_eq!(parse(&zst.to_json()), Some(zst));
        let past = ResumeState { written: 200, offset: 200, ..r.clone() };
        assert_eq!(parse(&past.to_json()), None, "offset past the resource's end");
        let none = ResumeState { etag: None, ..r.clone() };
        assert_eq!(parse(&none.to_json()), None, "no validator: If-Range impossible");
        let other = ResumeState { version: 2, ..r.clone() };
        assert_eq!(parse(&other.to_json()), None);
        // An adaptive record: the index's sha256 stands for the validator.
        let mark = AdaptiveMark { index_sha256: "ab".into(), locals: vec!["k".into()] };
        let ad = ResumeState { etag: None, adaptive: Some(mark.clone()), ..r.clone() };
        assert_eq!(parse(&ad.to_json()), Some(ad.clone()));
        assert_eq!(parse(&ResumeState { zstd: true, ..ad }.to_json()), None, "adaptive is raw");
        // A blob hash state must be zstd's and end where `offset` does.
        let mut h = super::super::sha256_resume::Sha256State::new();
        h.update(&[7u8; 12]);
        let zb = ResumeState { zstd: true, offset: 12, blob_sha256_state: Some(h.to_hex()), ..r.clone() };
        assert_eq!(parse(&zb.to_json()), Some(zb.clone()));
        assert_eq!(parse(&ResumeState { offset: 13, ..zb.clone() }.to_json()), None, "state of other bytes");
        assert_eq!(parse(&ResumeState { blob_sha256_state: Some("00".into()), ..zb.clone() }.to_json()), None);
        assert_eq!(parse(&ResumeState { zstd: false, offset: 40, ..zb }.to_json()), None, "raw blobs rehash the .part");
        // Records of the earlier format (no new fields) still parse.
        let old = br#"{"version":1,"url":"http://h/x.img","etag":"\"abc\"","last_modified":null,"remote_len":100,"zstd":false,"written":40,"offset":40}"#;
        assert_eq!(parse(old), Some(r));
    }

    #[test]
    fn weak_etag_falls_back_to_last_modified() {
        let mut r = rec();
        r.etag = Some("W/\"x\"".into());
        assert_eq!(r.validator(), None);
        r.last_modified = Some("Sat, 05 Dec 2026 09:00:00 GMT".into());
        assert_eq!(r.validator(), Some("Sat, 05 Dec 2026 09:00:00 GMT"));
    }

    #[test]
    fn resumes_only_the_same_url_with_its_bytes_on_disk() {
        let r = rec();
        assert_eq!(decide(Some(r.clone()), "http://h/x.img", Some(40)), Start::Resume(r.clone()));
        assert_eq!(decide(Some(r.clone()), "http://h/x.img", Some(50)), Start::Resume(r.clone()));
        assert_eq!(decide(Some(r.clone()), "http://h/x.img", Some(39)), Start::Fresh);
        assert_eq!(decide(Some(r.clone()), "http://h/x.img", None), Start::Fresh);
        assert_eq!(decide(Some(r.clone()), "http://h/y.img", Some(40)), Start::Fresh);
        assert_eq!(decide(None, "http://h/x.img", Some(40)), Start::Fresh);
        let empty = ResumeState { written: 0, offset: 0, ..r };
        assert_eq!(decide(Some(empty), "http://h/x.img", Some(0)), Start::Fresh);
    }
}
