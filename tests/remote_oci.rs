//! `hnctl publish oci://…` and `hnctl stage oci://…` against a real registry:
//! Debian's `docker-registry` (the CNCF distribution registry, v2), started per
//! test on 127.0.0.1 with filesystem storage in a temp dir and a generated
//! config, stopped on every exit path (Drop). Its access log (combined format)
//! is the judge of the requests and bytes sent. One case pushes with plain `curl`
//! calls per the distribution spec, so `publish` is not the only writer tested.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::remote_host::*;


struct Registry {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// `auth`: extra YAML for the `auth:` section (token auth), or none.
    fn start(dir: &Path, auth: &str) -> Registry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = format!(
            "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {}
http:
  addr: 127.0.0.1:{port}
  secret: test-secret
{auth}",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), conf).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) is needed");
        let mut r = Registry { child, dir: dir.to_path_buf(), port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = r.child.try_wait() {
                panic!("docker-registry exited ({st}): {}", std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn oci(&self, path: &str) -> String {
        format!("oci://127.0.0.1:{}/{path}", self.port)
    }

    fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Access log lines for requests whose path contains `needle`: (method, status, bytes, range-less path).
    fn log(&self, needle: &str) -> Vec<(String, u16, u64)> {
        let text = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                // 127.0.0.1 - - [date] "GET /v2/… HTTP/1.1" 206 10 "" "ua"
                let q = l.split_once(" \"")?.1;
                let (req, rest) = q.split_once("\" ")?;
                let mut f = rest.split_whitespace();
                let status = f.next()?.parse().ok()?;
                let bytes = f.next()?.parse().ok()?;
                let mut rq = req.split_whitespace();
                let method = rq.next()?.to_string();
                let path = rq.next()?;
                path.contains(needle).then_some((method, status, bytes))
            })
            .collect()
    }

    /// The file holding blob `digest` in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

/// `sha256:HEX`, as a registry names a blob.
fn digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

fn manifest_of(reg: &Registry, repo_tag: &str) -> serde_json::Value {
    let (repo, tag) = repo_tag.rsplit_once(':').unwrap();
    let o = Command::new("curl")
        .args(["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(reg.http(&format!("/v2/{repo}/manifests/{tag}")))
        .output()
        .expect("curl is needed");
    assert!(o.status.success(), "{}", show(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// publish (raw with its signature and index; zstd), then stage by tag and by
/// digest with trusted keys: the issue's media types, the signature kept, the
/// image bytes sent once.
#[test]
fn publish_then_stage_raw_and_zstd_signed() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    let key = SignKey::new(t.path(), "k");
    let etc = key.etc();
    let keys = etc.to_str().unwrap();
    let img = t.path().join("web.img");
    let raw = image(&img, 4, 3);
    key.sign(&img, &format!("version=7 size={}", raw.len()), &t.path().join("web.img.minisig"));
    let h = host();
    let idx = hnctl(&h, &["index", img.to_str().unwrap()]);
    std::fs::write(t.path().join("web.img.bidx"), &idx.stdout).unwrap();

    let out = ok(hnctl(&h, &["publish", &reg.oci("fleet/web:7"), img.to_str().unwrap()]));
    assert!(out.contains("published") && out.contains("manifest sha256:"), "{out}");
    let m = manifest_of(&reg, "fleet/web:7");
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["artifactType"], "application/vnd.hninit.image.v1");
    assert_eq!(m["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
    let layers = m["layers"].as_array().unwrap();
    let types: Vec<&str> = layers.iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["application/vnd.hninit.image.raw.v1", "application/vnd.hninit.image.minisig.v1", "application/vnd.hninit.image.bidx.v1"]
    );
    assert_eq!(layers[0]["annotations"]["org.opencontainers.image.title"], "web.img");
    assert_eq!(layers[0]["digest"], digest(&raw).as_str());
    assert_eq!(layers[0]["size"], raw.len() as u64);
    // Again: every blob is already there.
    let out = ok(hnctl(&h, &["publish", &reg.oci("fleet/web:7b"), img.to_str().unwrap()]));
    assert_eq!(out.matches("already in the registry").count(), 4, "{out}");

    let out = ok(hnctl(&h, &["stage", &reg.oci("fleet/web:7"), "--keys", keys, "--whole"]));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    assert!(out.contains("signature: accepted") && out.contains("version=7"), "{out}");
    assert_eq!(std::fs::read(h.dir.join("hn-root-new.img.minisig")).unwrap(), std::fs::read(t.path().join("web.img.minisig")).unwrap());
    // The raw layer's digest is the image's sha256: checked and kept.
    let kept = std::fs::read_to_string(h.dir.join("hn-root-new.img.sha256")).unwrap();
    assert!(kept.starts_with(&digest(&raw)[7..]), "{kept}");
    let pin = out.lines().find_map(|l| l.strip_prefix("manifest ")).unwrap().to_string();
    let image_gets = reg.log(&format!("/blobs/{}", digest(&raw)));
    assert_eq!(image_gets.iter().filter(|l| l.0 == "GET").count(), 1, "{image_gets:?}");
    assert_eq!(image_gets.iter().filter(|l| l.0 == "GET").map(|l| l.2).sum::<u64>(), raw.len() as u64);
    ok(hnctl(&h, &["unstage"]));
    ok(hnctl(&h, &["stage", &reg.oci(&format!("fleet/web@{pin}")), "--keys", keys]));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    ok(hnctl(&h, &["unstage"]));

    // zstd: the layer type says so, the signature is over the raw image.
    let zst = t.path().join("z/web.img.zst");
    std::fs::create_dir(t.path().join("z")).unwrap();
    let st = Command::new("zstd").args(["-q", "-3", "-o"]).arg(&zst).arg(&img).status().unwrap();
    assert!(st.success());
    std::fs::copy(t.path().join("web.img.minisig"), t.path().join("z/web.img.zst.minisig")).unwrap();
    ok(hnctl(&h, &["publish", &reg.oci("fleet/web:7z"), zst.to_str().unwrap()]));
    let m = manifest_of(&reg, "fleet/web:7z");
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.hninit.image.raw.v1+zstd");
    let out = ok(hnctl(&h, &["stage", &reg.oci("fleet/web:7z"), "--keys", keys]));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    assert!(out.contains("signature: accepted"), "{out}");
}

/// A push made of plain `curl` calls per the distribution spec (POST an upload,
/// PUT the blob with its digest, PUT the manifest) is pulled by `hnctl stage`;
/// a blob with a wrong digest (altered in the registry's storage) and a
/// manifest that is not an hninit artifact are refused, leaving nothing; an
/// unsigned artifact on a host with keys is refused before its image blob is
/// requested.
#[test]
fn curl_push_is_pulled_and_bad_blobs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    let img = t.path().join("web.img");
    let raw = image(&img, 4, 9);
    let empty = t.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let curl_push = |file: &Path, repo: &str| -> String {
        let d = digest(&std::fs::read(file).unwrap());
        let o = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "-D", "-", "-X", "POST"])
            .arg(reg.http(&format!("/v2/{repo}/blobs/uploads/")))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&o.stdout).to_string();
        let loc = head.lines().find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: "))).unwrap().trim();
        let loc = if loc.starts_with('/') { reg.http(loc) } else { loc.to_string() };
        let st = Command::new("curl")
            .args(["-sf", "-X", "PUT", "-H", "Content-Type: application/octet-stream", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("{loc}&digest={d}"))
            .status()
            .unwrap();
        assert!(st.success());
        d
    };
    let put_manifest = |repo_tag: &str, json: &str| {
        let (repo, tag) = repo_tag.rsplit_once(':').unwrap();
        let st = Command::new("curl")
            .args(["-sf", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json", "--data-binary", json])
            .arg(reg.http(&format!("/v2/{repo}/manifests/{tag}")))
            .status()
            .unwrap();
        assert!(st.success());
    };
    let cfg = curl_push(&empty, "fleet/web");
    let d = curl_push(&img, "fleet/web");
    let manifest = |artifact: &str, layer_type: &str, d: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"{artifact}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{cfg}","size":2}},"layers":[{{"mediaType":"{layer_type}","digest":"{d}","size":{},"annotations":{{"org.opencontainers.image.title":"web.img"}}}}]}}"#,
            raw.len()
        )
    };
    put_manifest("fleet/web:curl", &manifest("application/vnd.hninit.image.v1", "application/vnd.hninit.image.raw.v1", &d));
    let h = host();
    ok(hnctl(&h, &["stage", &reg.oci("fleet/web:curl")]));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    ok(hnctl(&h, &["unstage"]));

    // Not an hninit artifact (a container image's config type).
    put_manifest("fleet/web:other", &manifest("application/vnd.example.thing", "application/vnd.hninit.image.raw.v1", &d));
    assert_refused(&h, &hnctl(&h, &["stage", &reg.oci("fleet/web:other")]), "not an hninit image");

    // Unsigned, keys trusted: refused from the manifest, no image blob request.
    let key = SignKey::new(t.path(), "k");
    let etc = key.etc();
    let gets = reg.log(&format!("/blobs/{d}")).len();
    assert_refused(&h, &hnctl(&h, &["stage", &reg.oci("fleet/web:curl"), "--keys", etc.to_str().unwrap()]), "unsigned");
    assert_eq!(reg.log(&format!("/blobs/{d}")).len(), gets, "the image blob was requested");

    // A byte of the stored blob changes: the registry serves it, hnctl refuses it.
    let f = reg.blob_file(&d);
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[(2 << 20) + 5] ^= 1;
    std::fs::write(&f, &bytes).unwrap();
    let o = hnctl(&h, &["stage", &reg.oci("fleet/web:curl")]);
    assert_refused(&h, &o, "sha256");
    eprintln!("{}", show(&o));
    // zstd layer: the compressed blob's digest is checked over the bytes served.
    let zst = t.path().join("web.img.zst");
    assert!(Command::new("zstd").args(["-q", "-3", "-o"]).arg(&zst).arg(&img).status().unwrap().success());
    let dz = curl_push(&zst, "fleet/web");
    let zlen = std::fs::metadata(&zst).unwrap().len();
    put_manifest("fleet/web:z", &manifest("application/vnd.hninit.image.v1", "application/vnd.hninit.image.raw.v1+zstd", &dz).replace(&format!("\"size\":{}", raw.len()), &format!("\"size\":{zlen}")));
    ok(hnctl(&h, &["stage", &reg.oci("fleet/web:z")]));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    ok(hnctl(&h, &["unstage"]));
    let f = reg.blob_file(&dz);
    let mut bytes = std::fs::read(&f).unwrap();
    // Inside zstd's block data the change may still decode: the digest catches it
    // if the decoder does not.
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&f, &bytes).unwrap();
    let o = hnctl(&h, &["stage", &reg.oci("fleet/web:z")]);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert!(!h.dir.join(NEW).exists() && !h.dir.join(PART).exists());
}

/// An image with 5 % of its 64 KiB blocks changed, pulled from the registry with
/// its index layer: only the changed blocks are requested (the registry's log).
#[test]
fn adaptive_pull_fetches_only_changed_blocks() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    let h = host();
    let img = t.path().join("web.img");
    let (_, new, changed) = next_image(&h, 8, 31, five_percent, &img);
    let block = BLOCK;
    ok(hnctl(&h, &["publish", &reg.oci("fleet/web:8"), img.to_str().unwrap()]));
    let out = ok(hnctl(&h, &["stage", &reg.oci("fleet/web:8")]));
    assert_eq!(staged(&h).as_deref(), Some(&new[..]));
    assert!(out.contains("adaptive:"), "{out}");
    let log = reg.log(&format!("/blobs/{}", digest(&new)));
    let gets: Vec<_> = log.iter().filter(|l| l.0 == "GET").collect();
    assert!(gets.iter().all(|l| l.1 == 206), "{log:?}");
    let sent: u64 = gets.iter().map(|l| l.2).sum();
    let changed_bytes = (changed.len() * block) as u64;
    eprintln!("registry: changed {changed_bytes} bytes in {} blocks, sent {sent} in {} requests", changed.len(), gets.len());
    assert!(sent as f64 <= 1.15 * changed_bytes as f64, "{sent} bytes for {changed_bytes} changed");
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let o = Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output().expect("openssl is needed");
    assert!(o.status.success(), "openssl {args:?}: {}", show(&o));
    o.stdout
}

fn b64url(data: &[u8]) -> String {
    hninit::remote::oci::auth::base64_encode(data).replace('+', "-").replace('/', "_").trim_end_matches('=').to_string()
}

/// A token server for the registry's `auth: token` (the distribution spec's
/// flow): answers `GET /token?service=…&scope=…` from `user:secret` (basic auth)
/// with a JWT signed by `openssl` (RS256, the certificate in `x5c`), granting the
/// scope asked; anything else gets 401.
fn token_server(dir: &Path) -> (u16, PathBuf) {
    use std::io::{BufRead, BufReader, Write};
    openssl(
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "tok.key", "-out", "tok.crt", "-subj", "/CN=token", "-days", "2"],
        dir,
    );
    let der = openssl(&["x509", "-in", "tok.crt", "-outform", "DER"], dir);
    let x5c = hninit::remote::oci::auth::base64_encode(&der);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = dir.to_path_buf();
    let want = format!("Basic {}", hninit::remote::oci::auth::base64_encode(b"user:secret"));
    let d2 = dir.clone();
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let authed = head.iter().any(|l| l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == want);
            let target = head.first().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string();
            if !authed {
                let _ = write!(s, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let access: Vec<String> = target
                .split(['?', '&'])
                .filter_map(|kv| kv.strip_prefix("scope="))
                .map(|sc| sc.replace("%3A", ":").replace("%2F", "/").replace("%2C", ","))
                .filter_map(|sc| {
                    let mut p = sc.splitn(3, ':');
                    let (t, name, acts) = (p.next()?, p.next()?, p.next()?);
                    let acts: Vec<String> = acts.split(',').map(|a| format!("\"{a}\"")).collect();
                    Some(format!(r#"{{"type":"{t}","name":"{name}","actions":[{}]}}"#, acts.join(",")))
                })
                .collect();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let header = format!(r#"{{"alg":"RS256","typ":"JWT","x5c":["{x5c}"]}}"#);
            let claims = format!(
                r#"{{"iss":"test-issuer","sub":"user","aud":"test-registry","exp":{},"nbf":{},"iat":{},"jti":"t{n}","access":[{}]}}"#,
                now + 600,
                now - 60,
                now - 60,
                access.join(",")
            );
            let input = format!("{}.{}", b64url(header.as_bytes()), b64url(claims.as_bytes()));
            let inp = d2.join(format!("jwt{n}.in"));
            std::fs::write(&inp, &input).unwrap();
            let sig = openssl(&["dgst", "-sha256", "-sign", "tok.key", inp.to_str().unwrap()], &d2);
            let body = format!(r#"{{"token":"{input}.{}","expires_in":600}}"#, b64url(&sig));
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, dir.join("tok.crt"))
}

/// A registry with token auth: without credentials the token server refuses and
/// nothing is staged; with a credentials file in the `~/.docker/config.json`
/// shape, publish and stage go through the Bearer flow.
#[test]
fn token_auth_with_a_docker_config_file() {
    let t = tempfile::tempdir().unwrap();
    let (tport, crt) = token_server(t.path());
    let auth = format!(
        "auth:
  token:
    realm: http://127.0.0.1:{tport}/token
    service: test-registry
    issuer: test-issuer
    rootcertbundle: {}
",
        crt.display()
    );
    let reg = Registry::start(&t.path().join("reg"), &auth);
    let img = t.path().join("web.img");
    let raw = image(&img, 4, 21);
    let h = host();
    let o = hnctl(&h, &["publish", &reg.oci("fleet/web:1"), img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"), "{}", show(&o));

    let cfg = t.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{}"}}}}}}"#, reg.port, hninit::remote::oci::auth::base64_encode(b"user:secret")),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    ok(hnctl(&h, &["publish", &reg.oci("fleet/web:1"), img.to_str().unwrap(), "--auth", c]));
    let o = hnctl(&h, &["stage", &reg.oci("fleet/web:1")]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(!h.dir.join(NEW).exists());
    ok(hnctl(&h, &["stage", &reg.oci("fleet/web:1"), "--auth", c]));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    // Every registry request after the challenge carried the token.
    let log = reg.log("/v2/fleet/web/");
    assert!(log.iter().any(|l| l.1 == 401) && log.iter().any(|l| l.1 == 200), "{log:?}");
}

/// An interrupted pull (the `.part` and its resume record as a killed `hnctl`
/// leaves them) continues with a Range request for the rest of the blob: the
/// registry sends the digest as a strong ETag, so `If-Range` holds.
#[test]
fn an_interrupted_pull_resumes_with_a_range() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    let img = t.path().join("web.img");
    let raw = image(&img, 8, 17);
    let h = host();
    ok(hnctl(&h, &["publish", &reg.oci("fleet/web:r"), img.to_str().unwrap()]));
    let d = digest(&raw);
    let kept = 3 << 20;
    std::fs::write(h.dir.join(PART), &raw[..kept]).unwrap();
    let record = serde_json::json!({
        "version": 1,
        "url": reg.http(&format!("/v2/fleet/web/blobs/{d}")),
        "etag": format!("\"{d}\""),
        "last_modified": null,
        "remote_len": raw.len(),
        "zstd": false,
        "written": kept,
        "offset": kept,
    });
    std::fs::write(h.dir.join("hn-root-new.img.part.json"), record.to_string()).unwrap();
    let out = ok(hnctl(&h, &["stage", &reg.oci("fleet/web:r"), "--whole"]));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]), "{out}");
    let gets: Vec<_> = reg.log(&format!("/blobs/{d}")).into_iter().filter(|l| l.0 == "GET").collect();
    assert_eq!(gets, vec![("GET".to_string(), 206, (raw.len() - kept) as u64)], "only the rest was sent");
}

/// A zstd layer, pulled through nginx in front of the registry at 1 MiB/s and
/// killed (-9) twice at random points with a boot in between: each run resumes
/// at the last frame boundary with the hash state of the compressed bytes kept
/// in its record, so the layer's digest is still checked over every byte; the
/// blob goes over the wire once plus at most a frame and a second per
/// interruption. A record whose hash state was altered ends in a digest refusal.
#[test]
fn a_zstd_layer_resumes_after_kill_and_its_digest_is_still_checked() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    let ngx = common::nginx::Nginx::start_with(&t.path().join("ngx"), "1m", None, Some(reg.port))
        .expect("nginx (Debian nginx-light) is needed");
    let via = ngx
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let img = t.path().join("web.img");
    let raw = image(&img, 10, 23);
    std::fs::create_dir(t.path().join("z")).unwrap();
    let zst = t.path().join("z/web.img.zst");
    zstd_frames(&img, &zst);
    let blob = std::fs::read(&zst).unwrap();
    let h = host();
    ok(hnctl(
        &h,
        &["publish", &reg.oci("fleet/web:z"), zst.to_str().unwrap()],
    ));
    let reference = format!("oci://{via}/fleet/web:z");

    let first = (2 << 20) + random_below(1 << 20);
    let record = kill_twice_with_a_boot(&h, &reference, first);
    assert!(record["zstd"] == true && record["blob_sha256_state"].is_string(), "{record}");
    let out = ok(hnctl(&h, &["stage", &reference]));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]), "{out}");
    assert!(!h.dir.join(RECORD).exists());

    let path = format!("v2/fleet/web/blobs/{}", digest(&blob));
    let log = ngx.log(&path);
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0].2, "-", "the first request has no Range: {log:?}");
    assert!(log[1..].iter().all(|l| l.0 == 206), "{log:?}");
    let sent: u64 = log.iter().map(|l| l.1).sum();
    eprintln!("blob {} bytes, sent {sent}: {log:?}", blob.len());
    // Per interruption: a second at 1 MiB/s past the last checkpoint and the rest of a 1 MiB frame.
    assert!(
        sent >= blob.len() as u64 && sent - blob.len() as u64 <= 2 * (3 << 20),
        "{log:?}"
    );

    // The same interruption, then the record's hash state replaced by that of
    // other bytes of the same length: the resumed pull fails the layer's digest.
    ok(hnctl(&h, &["unstage"]));
    kill_at(&h, &reference, 2 << 20);
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.dir.join(RECORD)).unwrap()).unwrap();
    let state = rec["blob_sha256_state"].as_str().unwrap().to_string();
    let mut other = hninit::remote::sha256_resume::Sha256State::new();
    other.update(&vec![0u8; rec["offset"].as_u64().unwrap() as usize]);
    assert_ne!(other.to_hex(), state);
    rec["blob_sha256_state"] = other.to_hex().into();
    std::fs::write(h.dir.join(RECORD), rec.to_string()).unwrap();
    let o = hnctl(&h, &["stage", &reference]);
    assert_refused(&h, &o, "its manifest says sha256:");
    assert_nothing_staged(&h);
}

/// An adaptive pull (an index layer, 10 MiB of 16 changed) through nginx in
/// front of the registry at 1 MiB/s, killed twice with a boot in between: each
/// run asks the registry only for the missing ranges past the record's offset,
/// and the image staged is the published one.
#[test]
fn an_adaptive_pull_resumes_after_kill() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("reg"), "");
    let ngx = common::nginx::Nginx::start_with(&t.path().join("ngx"), "1m", None, Some(reg.port))
        .expect("nginx (Debian nginx-light) is needed");
    let via = ngx.url("").trim_start_matches("http://").trim_end_matches('/').to_string();
    let h = host();
    let img = t.path().join("web.img");
    let (_, new, changed) = next_image(&h, 16, 47, resume_test_blocks, &img);
    let block = BLOCK;
    ok(hnctl(&h, &["publish", &reg.oci("fleet/web:a"), img.to_str().unwrap()]));
    let reference = format!("oci://{via}/fleet/web:a");

    let record = kill_twice_with_a_boot(&h, &reference, (3 << 19) + random_below(1 << 20));
    assert!(record["adaptive"]["index_sha256"].is_string(), "{record}");
    let out = ok(hnctl(&h, &["stage", &reference]));
    assert_eq!(staged(&h).as_deref(), Some(&new[..]), "{out}");
    assert!(out.contains("resumed the interrupted download at byte"), "{out}");
    let log = ngx.log(&format!("v2/fleet/web/blobs/{}", digest(&new)));
    assert!(log.iter().all(|l| l.0 == 206), "{log:?}");
    let sent: u64 = log.iter().map(|l| l.1).sum();
    let changed_bytes = (changed.len() * block) as u64;
    eprintln!("changed {changed_bytes}, sent {sent} in {} requests", log.len());
    // Per interruption: a second at 1 MiB/s past the last checkpoint, what was
    // in flight, and a resumed reply's first second sent at once.
    assert!(sent >= changed_bytes && sent - changed_bytes <= 2 * (3 << 20), "{log:?}");
}
