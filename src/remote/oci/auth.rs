//! Registry authentication. Credentials come from a JSON file in the shape
//! `docker login` writes (`~/.docker/config.json`):
//! `{"auths": {"REGISTRY": {"auth": "BASE64(user:password)"}}}` (or `"username"`
//! and `"password"` fields); the key may carry a scheme and a path
//! (`https://REGISTRY/v1/`). Default file: `$DOCKER_CONFIG/config.json`, else
//! `$HOME/.docker/config.json`; absent means anonymous. Credential helpers
//! (`credsStore`) are not run.
//!
//! The flow is the registry's: a request is sent as is; a `401` with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` makes a token request to
//! the realm (with the credentials as basic auth when there are any, anonymous
//! otherwise) and the request is sent again with `Authorization: Bearer TOKEN`;
//! a `Basic` challenge is answered with the credentials.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A credentials file larger than this is refused.
pub const MAX_AUTH_FILE: u64 = 1 << 20;
const MAX_TOKEN_REPLY: u64 = 1 << 20;

#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Creds({}, <password>)", self.user)
    }
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The default credentials file.
pub fn default_file() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// The key of `auths` reduced to `host[:port]`.
fn auth_host(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The credentials for `registry` in `file` (`None`: the default file). A file
/// given explicitly must exist; the default one may be absent.
pub fn load(file: Option<&Path>, registry: &str) -> Result<Option<Creds>, String> {
    let (path, explicit) = match file {
        Some(p) => (p.to_path_buf(), true),
        None => match default_file() {
            Some(p) => (p, false),
            None => return Ok(None),
        },
    };
    let what = |e: &dyn std::fmt::Display| format!("the credentials file {}: {e}", path.display());
    let md = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => return Err(what(&e)),
    };
    if !md.is_file() || md.len() > MAX_AUTH_FILE {
        return Err(what(&format!("not a regular file of at most {MAX_AUTH_FILE} bytes")));
    }
    let text = std::fs::read(&path).map_err(|e| what(&e))?;
    let f: AuthFile = serde_json::from_slice(&text).map_err(|e| what(&e))?;
    let docker_hub = matches!(registry, "docker.io" | "registry-1.docker.io" | "index.docker.io");
    let entry = f
        .auths
        .iter()
        .find(|(k, _)| auth_host(k) == registry || (docker_hub && auth_host(k) == "index.docker.io"));
    let Some((key, e)) = entry else { return Ok(None) };
    let what_key = |why: &str| what(&format!("auths.{key:?}: {why}"));
    if let Some(a) = &e.auth {
        let raw = base64_decode(a.trim()).ok_or_else(|| what_key("auth is not base64"))?;
        let s = String::from_utf8(raw).map_err(|_| what_key("auth is not UTF-8"))?;
        let (u, p) = s.split_once(':').ok_or_else(|| what_key("auth is not base64 of user:password"))?;
        return Ok(Some(Creds { user: u.into(), password: p.into() }));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) => Ok(Some(Creds { user: u.clone(), password: p.clone() })),
        _ => Err(what_key("neither auth nor username and password")),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for b in t.bytes() {
        let v = B64.iter().position(|&c| c == b)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// `WWW-Authenticate: SCHEME k="v", k2=v2`: the scheme (lower case) and parameters.
pub fn parse_challenge(v: &str) -> Option<(String, BTreeMap<String, String>)> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => val.push(c),
                }
            }
            (val, q.get(end?..).unwrap_or(""))
        } else {
            let (val, next) = after.split_once(',').map_or((after, ""), |(a, b)| (a, b));
            (val.trim().to_string(), next)
        };
        params.insert(k, val);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub type Response = ureq::http::Response<ureq::Body>;

/// The authorization state of a session with one registry.
pub struct Session<'a> {
    agent: &'a ureq::Agent,
    creds: Option<Creds>,
    /// The scope asked for when the challenge names none.
    scope: String,
    auth: Option<String>,
}

impl<'a> Session<'a> {
    pub fn new(agent: &'a ureq::Agent, creds: Option<Creds>, scope: String) -> Session<'a> {
        Session { agent, creds, scope, auth: None }
    }

    /// The `Authorization` header value in use (after a challenge).
    pub fn authorization(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// Sends the request `make` builds with the current authorization; after a
    /// 401, answers the challenge and sends it once more.
    pub fn send(&mut self, what: &str, make: &dyn Fn(Option<&str>) -> Result<Response, ureq::Error>) -> Result<Response, String> {
        let r = make(self.auth.as_deref()).map_err(|e| format!("{what}: {e}"))?;
        if r.status().as_u16() != 401 {
            return Ok(r);
        }
        let challenge = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| format!("{what}: 401 without WWW-Authenticate"))?;
        if self.auth.is_some() && !challenge.contains("insufficient_scope") {
            return Err(format!("{what}: the registry refused the credentials (401)"));
        }
        self.answer(&challenge).map_err(|e| format!("{what}: {e}"))?;
        let r = make(self.auth.as_deref()).map_err(|e| format!("{what}: {e}"))?;
        if r.status().as_u16() == 401 {
            return Err(format!(
                "{what}: 401 after authenticating{}",
                if self.creds.is_none() { " anonymously (credentials: --auth FILE)" } else { "" }
            ));
        }
        Ok(r)
    }

    fn answer(&mut self, challenge: &str) -> Result<(), String> {
        let (scheme, params) = parse_challenge(challenge).ok_or_else(|| format!("unreadable WWW-Authenticate {challenge:?}"))?;
        match scheme.as_str() {
            "basic" => {
                let c = self.creds.as_ref().ok_or("the registry asks for a user and password (--auth FILE)")?;
                self.auth = Some(format!("Basic {}", base64_encode(format!("{}:{}", c.user, c.password).as_bytes())));
                Ok(())
            }
            "bearer" => {
                let realm = params.get("realm").ok_or("a Bearer challenge without realm")?;
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    return Err(format!("the token realm {realm:?} is not an http(s) URL"));
                }
                let mut q = Vec::new();
                if let Some(s) = params.get("service") {
                    q.push(format!("service={}", percent_encode(s)));
                }
                let scope = params.get("scope").cloned().unwrap_or_else(|| self.scope.clone());
                for s in scope.split(' ').filter(|s| !s.is_empty()) {
                    q.push(format!("scope={}", percent_encode(s)));
                }
                let sep = if realm.contains('?') { '&' } else { '?' };
                let url = format!("{realm}{sep}{}", q.join("&"));
                let mut req = self.agent.get(&url);
                if let Some(c) = &self.creds {
                    req = req.header(
                        "Authorization",
                        &format!("Basic {}", base64_encode(format!("{}:{}", c.user, c.password).as_bytes())),
                    );
                }
                let r = req.call().map_err(|e| format!("the token request to {realm}: {e}"))?;
                let status = r.status().as_u16();
                if status != 200 {
                    return Err(format!("the token server {realm} answered {status}"));
                }
                let mut body = Vec::new();
                r.into_body()
                    .into_reader()
                    .take(MAX_TOKEN_REPLY)
                    .read_to_end(&mut body)
                    .map_err(|e| format!("the token reply: {e}"))?;
                #[derive(serde::Deserialize)]
                struct Tok {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Tok = serde_json::from_slice(&body).map_err(|e| format!("the token reply: {e}"))?;
                let tok = t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or("a token reply without token")?;
                if tok.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err("a token with spaces or control characters".into());
                }
                self.auth = Some(format!("Bearer {tok}"));
                Ok(())
            }
            other => Err(format!("an authentication scheme not supported: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "user:pa ss:w0rd"] {
            assert_eq!(base64_decode(&base64_encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_decode("not*base64"), None);
    }

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#).unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="x \"y\"", charset=UTF-8"#).unwrap();
        assert_eq!(s, "basic");
        assert_eq!(p["realm"], "x \"y\"");
        assert_eq!(p["charset"], "UTF-8");
    }

    #[test]
    fn credentials_file() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths": {"https://reg.example:5000/v1/": {"auth": "dXNlcjpwYXNz"}, "other": {"username": "u", "password": "p:q"}}}"#,
        )
        .unwrap();
        assert_eq!(load(Some(&f), "reg.example:5000").unwrap(), Some(Creds { user: "user".into(), password: "pass".into() }));
        assert_eq!(load(Some(&f), "other").unwrap(), Some(Creds { user: "u".into(), password: "p:q".into() }));
        assert_eq!(load(Some(&f), "none").unwrap(), None);
        assert!(load(Some(&t.path().join("missing.json")), "x").is_err());
        std::fs::write(&f, r#"{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}"#).unwrap();
        assert!(load(Some(&f), "r").unwrap_err().contains("user:password"));
    }
}
