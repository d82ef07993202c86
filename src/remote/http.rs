//! The HTTP(S) client of `hnctl stage URL`: ureq with rustls (pure-Rust TLS
//! linked statically; the Mozilla roots built in, or only the CAs of `--ca`),
//! proxies from `http_proxy`/`https_proxy`/`all_proxy`/`no_proxy` (ureq's
//! reading of the environment), and a stall timeout on every read. Also the
//! parsing of the reply headers the download relies on.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// A CA file larger than this is refused.
pub const MAX_CA_FILE: u64 = 1 << 20;

/// The agent used for every request of one stage.
pub fn agent(ca: Option<&Path>, stall: Duration) -> Result<ureq::Agent, String> {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(stall))
        .timeout_recv_response(Some(stall))
        .timeout_per_read(Some(stall))
        .user_agent(concat!("hnctl/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        b = b.tls_config(TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(read_ca(ca)?))).build());
    }
    Ok(b.build().into())
}

/// The certificates of a PEM file (`--ca`): at least one.
pub fn read_ca(path: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let what = |e: &dyn std::fmt::Display| format!("reading the CA file {}: {e}", path.display());
    let md = std::fs::metadata(path).map_err(|e| what(&e))?;
    if !md.is_file() || md.len() > MAX_CA_FILE {
        return Err(what(&format!("not a regular file of at most {MAX_CA_FILE} bytes")));
    }
    let pem = std::fs::read(path).map_err(|e| what(&e))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| what(&e))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(what(&"no PEM certificate (-----BEGIN CERTIFICATE-----) in it"));
    }
    Ok(certs)
}

/// A reply's status and the headers the download uses, and its body.
pub struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_length: Option<u64>,
    /// `Content-Range: bytes START-END/TOTAL` of a 206.
    pub content_range: Option<ContentRange>,
    pub body: Box<dyn io::Read + Send>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    /// `None` for `*`.
    pub total: Option<u64>,
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`); `None` when malformed.
pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let start: u64 = s.trim().parse().ok()?;
    let end: u64 = e.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end && total.is_none_or(|t| end < t)).then_some(ContentRange { start, end, total })
}

/// GET `url`, from byte `from` on (`Range`), with `If-Range: if_range` when given.
pub fn get(agent: &ureq::Agent, url: &str, from: u64, if_range: Option<&str>) -> Result<Reply, ureq::Error> {
    get_range(agent, url, from, None, if_range)
}

/// GET `url`, bytes `from` to `to` (inclusive; `None`: to the end).
pub fn get_range(
    agent: &ureq::Agent,
    url: &str,
    from: u64,
    to: Option<u64>,
    if_range: Option<&str>,
) -> Result<Reply, ureq::Error> {
    get_auth(agent, url, from, to, if_range, None)
}

/// [`get_range`] with an `Authorization` header (a registry's token). ureq does
/// not forward it when a redirect leaves for another host (a blob store).
pub fn get_auth(
    agent: &ureq::Agent,
    url: &str,
    from: u64,
    to: Option<u64>,
    if_range: Option<&str>,
    auth: Option<&str>,
) -> Result<Reply, ureq::Error> {
    let mut req = agent.get(url).header("Accept-Encoding", "identity");
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if from > 0 || to.is_some() {
        let to = to.map(|t| t.to_string()).unwrap_or_default();
        req = req.header("Range", &format!("bytes={from}-{to}"));
        if let Some(v) = if_range {
            req = req.header("If-Range", v);
        }
    }
    let resp = req.call()?;
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s.len() <= 1024)
    };
    let status = resp.status().as_u16();
    let etag = h("etag");
    let last_modified = h("last-modified");
    let content_length = h("content-length").and_then(|v| v.parse().ok());
    let content_range = h("content-range").and_then(|v| parse_content_range(&v));
    let body = Box::new(resp.into_body().into_reader());
    Ok(Reply {
        status,
        etag,
        last_modified,
        content_length,
        content_range,
        body,
    })
}

/// An error worth another attempt (the network, a timeout), as opposed to one
/// that will not change (TLS refused, a bad URL, a protocol violation).
pub fn is_transient(e: &ureq::Error) -> bool {
    use ureq::Error as E;
    match e {
        E::Io(io) => is_transient_io(io),
        E::Timeout(_) | E::HostNotFound | E::ConnectionFailed | E::BodyStalled | E::ConnectProxyFailed(_) => true,
        _ => false,
    }
}

/// The same for an error of reading a body (ureq's errors come wrapped).
pub fn is_transient_io(e: &io::Error) -> bool {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        return is_transient(inner);
    }
    // TLS alerts and corrupt records come as InvalidData: they will not heal.
    e.kind() != io::ErrorKind::InvalidData
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some(ContentRange { start: 100, end: 199, total: Some(1000) })
        );
        assert_eq!(
            parse_content_range("bytes 0-0/*"),
            Some(ContentRange { start: 0, end: 0, total: None })
        );
        for bad in ["bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes 0-1", "bytes x-1/2", "bytes */10"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
