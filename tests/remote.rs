//! `hnctl stage URL` against a real nginx (Debian's), started per test on
//! 127.0.0.1 with a generated config, and stopped on every exit path (Drop).
//! nginx's access log (`$request $status $body_bytes_sent "$http_range"`) is the
//! judge of the bytes sent. The misbehaving servers nginx cannot be made to be
//! (a stall mid-body, a wrong Content-Length) are small std::net servers here.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::nginx::Nginx;
use common::remote_host::*;

/// The TLS material of a test CA made by `openssl`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// nginx (tests/common/nginx.rs) serving `prefix/www`, with `pki`'s certificate on a TLS port.
fn nginx(prefix: &Path, rate: &str, pki: Option<&Pki>) -> Nginx {
    Nginx::start(prefix, rate, pki.map(|k| (k.cert.as_path(), k.key.as_path())))
        .expect("nginx (Debian nginx-light) is needed")
}

#[test]
fn full_download_raw_and_zstd() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "0", None);
    let raw = image(&ngx.www("web.img"), 4, 7);
    zstd_one_frame(&ngx.www("web.img"), &ngx.www("web.img.zst"));
    for (name, sha) in [("web.img", true), ("web.img.zst", false)] {
        let h = host();
        let mut args = vec!["stage".to_string(), ngx.url(name), "--progress".into(), "json".into()];
        if sha {
            args.extend(["--sha256".to_string(), sha256_hex(&raw)]);
        }
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = hnctl(&h, &args);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", show(&o));
        assert_eq!(staged(&h).as_deref(), Some(&raw[..]), "{name}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(&format!("sha256 {}", sha256_hex(&raw))), "{out}");
        assert!(out.contains("downloaded"), "{out}");
        assert!(!h.dir.join(PART).exists() && !h.dir.join(RECORD).exists());
        // --progress=json: JSON lines with the phases, the last one at the end.
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<serde_json::Value> = err.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.iter().any(|v| v["phase"] == "download"), "{err}");
        let last = lines.last().unwrap();
        assert_eq!(last["phase"], "check");
        assert_eq!(last["done"], raw.len() as u64);
        assert_eq!(ngx.log(name).len(), 1, "one request for {name}");
        if sha {
            let d = std::fs::read_to_string(h.dir.join("hn-root-new.img.sha256")).unwrap();
            assert!(d.starts_with(&sha256_hex(&raw)));
        }
    }
}

#[test]
fn not_found_and_not_an_image_are_refused_without_leftovers() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "0", None);
    std::fs::write(ngx.www("junk.img"), vec![0u8; 2 << 20]).unwrap();
    let h = host();
    let o = hnctl(&h, &["stage", &ngx.url("missing.img")]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("404"), "{}", show(&o));
    let o = hnctl(&h, &["stage", &ngx.url("junk.img")]);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no filesystem"), "{}", show(&o));
    assert_nothing_staged(&h);
    assert!(!h.dir.join(PART).exists() && !h.dir.join(RECORD).exists());
}

/// kill -9 at a random point, twice, then the download completes: each byte range
/// went over the wire once, plus at most `overlap` per interruption.
fn resume_after_kill(name: &str, zstd: bool) {
    let t = tempfile::tempdir().unwrap();
    // 1 MiB/s: a 10 MiB image takes seconds, a checkpoint is at most a second behind.
    let ngx = nginx(&t.path().join("ngx"), "1m", None);
    let raw = image(&t.path().join("src.img"), 10, 11);
    if zstd {
        zstd_frames(&t.path().join("src.img"), &ngx.www(name));
    } else {
        std::fs::copy(t.path().join("src.img"), ngx.www(name)).unwrap();
    }
    let size = std::fs::metadata(ngx.www(name)).unwrap().len();
    let url = ngx.url(&format!("slow/{name}"));
    let h = host();
    let first = (1 << 20) + random_below(2 << 20);
    kill_twice_with_a_boot(&h, &url, first);
    // `hnctl status` shows the interrupted stage.
    let st = hnctl(&h, &["status"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("staging") && text.contains(&url), "{text}");
    let o = hnctl(&h, &["stage", &url, "--sha256", &sha256_hex(&raw)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    assert!(!h.dir.join(RECORD).exists());
    let log = ngx.log(&format!("slow/{name}"));
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0].2, "-", "the first request has no Range: {log:?}");
    let mut starts = Vec::new();
    for (status, _, range) in &log[1..] {
        assert_eq!(*status, 206, "{log:?}");
        let from: u64 = range.strip_prefix("bytes=").unwrap().trim_end_matches('-').parse().unwrap();
        starts.push(from);
    }
    assert!(starts[0] > 0 && starts[1] > starts[0], "each resume starts further: {log:?}");
    let sent: u64 = log.iter().map(|l| l.1).sum();
    eprintln!("{name}: {size} bytes, sent {sent}: {log:?}");
    // Per interruption: the bytes past the last checkpoint (≤ 1 s at 1 MiB/s,
    // plus what was in flight) and, for zstd, the rest of a 1 MiB frame.
    let overlap = if zstd { 3 << 20 } else { 2 << 20 };
    assert!(sent >= size, "{sent} < {size}");
    assert!(sent - size <= 2 * overlap, "{} bytes sent again: {log:?}", sent - size);
}

#[test]
fn resume_after_kill_raw() {
    resume_after_kill("web.img", false);
}

#[test]
fn resume_after_kill_zstd() {
    resume_after_kill("web.img.zst", true);
}

#[test]
fn a_file_changed_on_the_server_restarts_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "1m", None);
    image(&ngx.www("web.img"), 8, 3);
    let url = ngx.url("slow/web.img");
    let h = host();
    kill_at(&h, &url, 1 << 20);
    // Replaced by a new image (a new inode: nginx's ETag and Last-Modified change).
    let tmp = t.path().join("new.img");
    let new = image(&tmp, 6, 99);
    std::fs::rename(&tmp, ngx.www("web.img")).unwrap();
    // Make sure the modification time differs from the old one's second.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(ngx.www("web.img")).unwrap().set_modified(later).unwrap();
    let o = hnctl(&h, &["stage", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&new[..]));
    let log = ngx.log("slow/web.img");
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].0, 200, "If-Range did not match: the whole new file: {log:?}");
    assert!(log[1].2.starts_with("bytes="), "{log:?}");
    assert_eq!(log[1].1, new.len() as u64);
}

/// A server that sends headers and part of the body, then nothing: `respond` gets
/// each request's head and writes what it likes.
fn tiny_server(respond: impl Fn(&str, &mut TcpStream) + Send + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut head = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            respond(&head, &mut s);
        }
    });
    port
}

#[test]
fn a_stalled_server_ends_in_a_clear_error_and_no_staged_image() {
    let t = tempfile::tempdir().unwrap();
    let data = image(&t.path().join("x.img"), 4, 5);
    let port = tiny_server(move |_, s| {
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\r\n", data.len());
        let _ = s.write_all(&data[..100_000]);
        let _ = s.flush();
        // Then nothing, the connection open: a stall.
        std::thread::sleep(Duration::from_secs(30));
    });
    let h = host();
    let started = Instant::now();
    let o = hnctl(
        &h,
        &["stage", &format!("http://127.0.0.1:{port}/x.img"), "--stall-timeout", "1", "--retries", "1"],
    );
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(err.contains("timeout") || err.contains("timed out"), "{err}");
    assert!(err.contains("run the same command again to resume"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(25), "the stall timeout did not end it");
    assert_nothing_staged(&h);
}

#[test]
fn a_wrong_content_length_leaves_no_staged_image() {
    let t = tempfile::tempdir().unwrap();
    let data = image(&t.path().join("x.img"), 4, 6);
    // Announces 4096 bytes more than it sends, then closes; to a Range request
    // answers 416 as nginx would past the end of the real file.
    let port = tiny_server(move |head, s| {
        if head.contains("Range:") || head.contains("range:") {
            let _ = write!(s, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n");
        } else {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\r\n", data.len() + 4096);
            let _ = s.write_all(&data);
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let h = host();
    let o = hnctl(&h, &["stage", &format!("http://127.0.0.1:{port}/x.img"), "--retries", "1"]);
    eprintln!("{}", show(&o));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong Content-Length"), "{}", show(&o));
    assert_nothing_staged(&h);
    assert!(!h.dir.join(PART).exists(), "{}", show(&o));
}

fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is needed");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A CA and a certificate for 127.0.0.1 signed by it.
fn pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    openssl(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", "/CN=hninit test CA"], dir);
    openssl(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "srv.key",
        "-out", "srv.csr", "-subj", "/CN=127.0.0.1"], dir);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(&["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf"], dir);
    Pki { ca: dir.join("ca.pem"), cert: dir.join("srv.pem"), key: dir.join("srv.key") }
}

#[test]
fn tls_unknown_ca_is_refused_and_accepted_with_ca() {
    let t = tempfile::tempdir().unwrap();
    let k = pki(&t.path().join("pki"));
    let ngx = nginx(&t.path().join("ngx"), "0", Some(&k));
    let raw = image(&ngx.www("web.img"), 4, 8);
    let url = format!("https://127.0.0.1:{}/web.img", ngx.tls_port.unwrap());
    let h = host();
    let o = hnctl(&h, &["stage", &url, "--retries", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    eprintln!("{err}");
    assert!(err.contains("unknownissuer") && err.contains("--ca file"), "{err}");
    assert_nothing_staged(&h);
    assert!(!h.dir.join(PART).exists());
    let o = hnctl(&h, &["stage", &url, "--ca", k.ca.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
}

#[test]
fn a_local_stage_drops_an_interrupted_download() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "1m", None);
    image(&ngx.www("web.img"), 8, 4);
    let h = host();
    kill_at(&h, &ngx.url("slow/web.img"), 1 << 20);
    let local = h.t.path().join("local.img");
    let raw = image(&local, 4, 21);
    let o = hnctl(&h, &["stage", local.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    assert!(!h.dir.join(RECORD).exists() && !h.dir.join(PART).exists());
}

/// `hnctl index` + `URL.bidx`: an image with 5 % of its blocks changed costs its
/// changed blocks (the access log says so); an index that does not match the
/// image ends in its sha256 check and one whole download.
#[test]
fn adaptive_fetches_only_the_changed_blocks_and_falls_back_once() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "0", None);
    let h = host();
    let (_, new, changed) = next_image(&h, 8, 31, five_percent, &ngx.www("web.img"));
    let block = BLOCK;
    let idx = std::fs::read(ngx.www("web.img.bidx")).unwrap();

    let o = hnctl(&h, &["stage", &ngx.url("web.img"), "--sha256", &sha256_hex(&new)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&new[..]));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("adaptive:"), "{out}");
    let log = ngx.log("web.img");
    assert!(log.iter().all(|l| l.0 == 206), "{log:?}");
    let sent: u64 = log.iter().map(|l| l.1).sum();
    let changed_bytes = (changed.len() * block) as u64;
    eprintln!("changed {changed_bytes} bytes in {} blocks, sent {sent} in {} requests", changed.len(), log.len());
    assert!(sent as f64 <= 1.15 * changed_bytes as f64, "{sent} bytes for {changed_bytes} changed");
    assert_eq!(ngx.log("web.img.bidx").len(), 1);

    // An index of another image: the assembled image fails the index's sha256,
    // the stage downloads the whole file once, and the right image is staged.
    let other = image(&ngx.www("other.img"), 8, 77);
    std::fs::write(ngx.www("other.img.bidx"), &idx).unwrap();
    let o = hnctl(&h, &["stage", &ngx.url("other.img")]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&other[..]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("did not check out"), "{}", show(&o));
    let log = ngx.log("other.img");
    assert_eq!(log.iter().filter(|l| l.0 == 200).count(), 1, "one whole download: {log:?}");

    // --whole ignores the index.
    let o = hnctl(&h, &["stage", &ngx.url("web.img"), "--whole"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(ngx.log("web.img.bidx").len(), 1, "--whole fetched the index");
}

/// kill -9 of an adaptive stage, twice, at random points of its ranges (and a
/// boot in between): each run asks only for the missing ranges past what the
/// record says is final, so the changed blocks go over the wire once plus the
/// bytes after the last checkpoint; the image staged is the server's.
#[test]
fn an_adaptive_stage_resumes_after_kill() {
    let t = tempfile::tempdir().unwrap();
    // 1 MiB/s: the 9 MiB run of changed blocks takes about 8 s; both kills
    // come inside it (at 1.5-2.5 MiB, then 2-3 MiB later).
    let ngx = nginx(&t.path().join("ngx"), "1m", None);
    let h = host();
    let (old, new, changed) = next_image(&h, 16, 41, resume_test_blocks, &ngx.www("web.img"));
    let block = BLOCK;
    let url = ngx.url("slow/web.img");

    let first = (3 << 19) + random_below(1 << 20);
    let record = kill_twice_with_a_boot(&h, &url, first);
    assert!(record["adaptive"]["index_sha256"].is_string(), "{record}");
    let st = hnctl(&h, &["status"]);
    assert!(
        String::from_utf8_lossy(&st.stdout).contains(&url),
        "{}",
        show(&st)
    );

    let o = hnctl(&h, &["stage", &url, "--sha256", &sha256_hex(&new)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&new[..]));
    assert!(!h.dir.join(RECORD).exists() && !h.dir.join(PART).exists());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("resumed the interrupted download at byte"),
        "{out}"
    );

    // The judge: which bytes nginx sent. Every request is a range of the changed
    // blocks; a byte is sent more than once only past an interruption's last checkpoint.
    let log = ngx.log("slow/web.img");
    assert!(log.iter().all(|l| l.0 == 206), "{log:?}");
    let mut sent_per_byte = vec![0u8; new.len()];
    let mut sent = 0u64;
    for (_, n, range) in &log {
        let from: usize = range
            .strip_prefix("bytes=")
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        for c in &mut sent_per_byte[from..from + *n as usize] {
            *c += 1;
        }
        sent += n;
    }
    for (i, &c) in sent_per_byte.iter().enumerate() {
        if c > 0 {
            assert!(
                changed.contains(&(i / block)),
                "byte {i} of an unchanged block was fetched: {log:?}"
            );
        }
    }
    let again: u64 = sent_per_byte
        .iter()
        .map(|&c| c.saturating_sub(1) as u64)
        .sum();
    let changed_bytes = (changed.len() * block) as u64;
    eprintln!(
        "changed {changed_bytes}, sent {sent} in {} requests, {again} bytes again",
        log.len()
    );
    assert!(sent_per_byte
        .iter()
        .enumerate()
        .all(|(i, &c)| c > 0 || !changed.contains(&(i / block))));
    // Per interruption: at most a second at 1 MiB/s after the last checkpoint,
    // what was in flight, and a resumed reply's first second sent at once.
    assert!(again <= 2 * (3 << 20), "{again} bytes sent again: {log:?}");
    assert_eq!(
        ngx.log("slow/web.img.bidx").len(),
        3,
        "the index is fetched by each run"
    );

    // The image changes on the server between two runs: its index does too, the
    // interrupted stage starts over and stages the new image.
    let h = host();
    std::fs::write(h.dir.join("hn-root.img"), &old).unwrap();
    kill_at(&h, &url, 2 << 20);
    let mut newer = new.clone();
    for &b in &changed {
        newer[b * block + 9] ^= 0x3c;
    }
    std::fs::write(ngx.www("web.img"), &newer).unwrap();
    let idx = hnctl(&h, &["index", ngx.www("web.img").to_str().unwrap()]);
    std::fs::write(ngx.www("web.img.bidx"), &idx.stdout).unwrap();
    let o = hnctl(&h, &["stage", &url, "--sha256", &sha256_hex(&newer)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&newer[..]));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("resumed"),
        "{}",
        show(&o)
    );
}

/// An interrupted adaptive stage whose index is gone from the server when it
/// is taken up: its `.part` and record go, and the image is downloaded whole
/// from byte 0 (no Range), the right image staged.
#[test]
fn an_interrupted_adaptive_stage_without_its_index_downloads_whole() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "1m", None);
    let h = host();
    let every_other = |blocks: usize| (16..blocks).step_by(2).collect();
    let (_, new, _) = next_image(&h, 6, 43, every_other, &ngx.www("web.img"));
    let url = ngx.url("slow/web.img");
    kill_at(&h, &url, 1 << 20);
    assert!(h.dir.join(PART).exists() && h.dir.join(RECORD).exists());
    std::fs::remove_file(ngx.www("web.img.bidx")).unwrap();
    let o = hnctl(&h, &["stage", &url, "--sha256", &sha256_hex(&new)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&new[..]));
    assert!(!h.dir.join(RECORD).exists() && !h.dir.join(PART).exists());
    let log = ngx.log("slow/web.img");
    let last = log.last().unwrap();
    assert_eq!((last.0, last.1, last.2.as_str()), (200, new.len() as u64, "-"), "{log:?}");
}

fn sig_of(p: &Path) -> PathBuf {
    PathBuf::from(format!("{}.minisig", p.display()))
}

/// `URL.minisig` with trusted keys: a good signature is verified in the download's
/// one pass and kept as the sidecar (raw, zstd, adaptive); unsigned, unknown-key
/// and compat refusals cost no image byte; a bad signature is found after the
/// download and leaves nothing.
#[test]
fn signed_url_stage_checks_before_and_during_the_download() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "0", None);
    let k1 = SignKey::new(t.path(), "k1");
    let k2 = SignKey::new(t.path(), "k2");
    let etc = k1.etc();
    let keys = etc.to_str().unwrap();
    let raw = image(&ngx.www("web.img"), 4, 5);
    let comment = format!("version=2026.12.6 compat=web size={}", raw.len());
    k1.sign(&ngx.www("web.img"), &comment, &sig_of(&ngx.www("web.img")));
    zstd_frames(&ngx.www("web.img"), &ngx.www("web.img.zst"));
    // The signature is over the raw image, also for the .zst.
    std::fs::copy(sig_of(&ngx.www("web.img")), sig_of(&ngx.www("web.img.zst"))).unwrap();

    for name in ["web.img", "web.img.zst"] {
        let h = host();
        let o = hnctl(&h, &["stage", &ngx.url(name), "--keys", keys]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", show(&o));
        assert_eq!(staged(&h).as_deref(), Some(&raw[..]), "{name}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("signature: accepted: signed by key") && out.contains("version=2026.12.6"), "{out}");
        assert_eq!(
            std::fs::read(h.dir.join("hn-root-new.img.minisig")).unwrap(),
            std::fs::read(sig_of(&ngx.www(name))).unwrap(),
            "the sidecar is the served signature"
        );
        assert_eq!(ngx.log(name).len(), 1, "one pass over the image");
        assert_eq!(ngx.log(&format!("{name}.minisig")).len(), 1);
    }

    let h = host();
    // Unsigned: refused before the download.
    image(&ngx.www("unsigned.img"), 4, 6);
    assert_refused(&h, &hnctl(&h, &["stage", &ngx.url("unsigned.img"), "--keys", keys]), "unsigned");
    assert_eq!(ngx.log("unsigned.img").len(), 0, "an image byte was fetched before the refusal");
    // Signed by a key that is not trusted: refused before the download.
    image(&ngx.www("other.img"), 4, 8);
    k2.sign(&ngx.www("other.img"), "version=2026.12.6", &sig_of(&ngx.www("other.img")));
    assert_refused(&h, &hnctl(&h, &["stage", &ngx.url("other.img"), "--keys", keys]), "unknown-key");
    assert_eq!(ngx.log("other.img").len(), 0, "an image byte was fetched before the refusal");
    // Another image under web.img's signature: found in the pass, nothing staged.
    std::fs::copy(sig_of(&ngx.www("web.img")), sig_of(&ngx.www("other.img"))).unwrap();
    assert_refused(&h, &hnctl(&h, &["stage", &ngx.url("other.img"), "--keys", keys]), "bad-signature");
    assert_eq!(ngx.log("other.img").len(), 1);
    // A damaged signature file.
    std::fs::write(sig_of(&ngx.www("other.img")), "untrusted comment: x\nnot base64\n").unwrap();
    assert_refused(&h, &hnctl(&h, &["stage", &ngx.url("other.img"), "--keys", keys]), "malformed-signature");
    assert_eq!(ngx.log("other.img").len(), 1);
    // --signature FILE instead of URL.minisig.
    let local_sig = t.path().join("local.minisig");
    k1.sign(&ngx.www("other.img"), "version=2026.12.7", &local_sig);
    let o = hnctl(&h, &["stage", &ngx.url("other.img"), "--keys", keys, "--signature", local_sig.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(std::fs::read(h.dir.join("hn-root-new.img.minisig")).unwrap(), std::fs::read(&local_sig).unwrap());
    hnctl(&h, &["unstage"]);

    // The running image is compat=web: a compat=db image is refused from its
    // signature alone.
    k1.sign(&h.dir.join("hn-root.img"), "version=2026.12.1 compat=web", &h.dir.join("hn-root.img.minisig"));
    image(&ngx.www("db.img"), 4, 10);
    k1.sign(&ngx.www("db.img"), "version=2026.12.6 compat=db", &sig_of(&ngx.www("db.img")));
    assert_refused(&h, &hnctl(&h, &["stage", &ngx.url("db.img"), "--keys", keys]), "compat-mismatch");
    assert_eq!(ngx.log("db.img").len(), 0, "an image byte was fetched before the refusal");

    // Adaptive (URL.bidx): the assembled image is verified too.
    let cur = std::fs::read(h.dir.join("hn-root.img")).unwrap();
    let mut new = cur.clone();
    new[(2 << 20) + 7] ^= 0xff;
    std::fs::write(ngx.www("next.img"), &new).unwrap();
    let idx = hnctl(&h, &["index", ngx.www("next.img").to_str().unwrap()]);
    std::fs::write(ngx.www("next.img.bidx"), &idx.stdout).unwrap();
    k1.sign(&ngx.www("next.img"), "version=2026.12.6 compat=web", &sig_of(&ngx.www("next.img")));
    let o = hnctl(&h, &["stage", &ngx.url("next.img"), "--keys", keys]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("adaptive:"), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&new[..]));
    hnctl(&h, &["unstage"]);
    // ... and an adaptive result under another image's signature is refused.
    k1.sign(&ngx.www("db.img"), "version=2026.12.6 compat=web", &sig_of(&ngx.www("next.img")));
    assert_refused(&h, &hnctl(&h, &["stage", &ngx.url("next.img"), "--keys", keys]), "bad-signature");
}

/// A signed download interrupted by kill -9 and resumed is still verified: the
/// kept prefix is fed to the signature check again, so a prefix damaged on disk
/// between the attempts is refused, and an intact one is accepted.
#[test]
fn a_resumed_signed_download_is_still_verified() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "1m", None);
    let k1 = SignKey::new(t.path(), "k1");
    let etc = k1.etc();
    let keys = etc.to_str().unwrap();
    let raw = image(&ngx.www("web.img"), 6, 12);
    k1.sign(&ngx.www("web.img"), "version=3", &sig_of(&ngx.www("web.img")));
    let url = ngx.url("slow/web.img");

    let h = host();
    kill_at_with(&h, &["stage", &url, "--keys", keys], (1 << 20) + random_below(1 << 20));
    let o = hnctl(&h, &["stage", &url, "--keys", keys]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&raw[..]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("signature: accepted"), "{}", show(&o));
    let log = ngx.log("slow/web.img");
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].0, 206, "resumed, not downloaded again: {log:?}");

    let h = host();
    kill_at_with(&h, &["stage", &url, "--keys", keys], (1 << 20) + random_below(1 << 20));
    // A byte of the kept prefix changes on disk (past the filesystem's metadata).
    let part = std::fs::OpenOptions::new().write(true).open(h.dir.join(PART)).unwrap();
    use std::os::unix::fs::FileExt;
    part.write_all_at(&[raw[(1 << 20) - 1] ^ 1], (1 << 20) - 1).unwrap();
    drop(part);
    let o = hnctl(&h, &["stage", &url, "--keys", keys]);
    assert_refused(&h, &o, "bad-signature");
}

/// The local images' indexes are cached in hn-state/bidx-cache/ keyed by file
/// identity: a second adaptive stage hashes nothing, and after the rotation the
/// new image's index (stored when it checked out) and the old one's are reused.
#[test]
fn adaptive_reuses_the_index_cache_across_a_rotation() {
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "0", None);
    let h = host();
    std::fs::create_dir(h.dir.join("hn-state")).unwrap();
    let old = image(&h.dir.join("hn-root.img"), 4, 41);
    let publish = |name: &str, data: &[u8]| {
        std::fs::write(ngx.www(name), data).unwrap();
        let idx = hnctl(&h, &["index", ngx.www(name).to_str().unwrap()]);
        std::fs::write(ngx.www(&format!("{name}.bidx")), &idx.stdout).unwrap();
    };
    let mut v2 = old.clone();
    v2[(2 << 20) + 3] ^= 1;
    publish("v2.img", &v2);
    let o = hnctl(&h, &["stage", &ngx.url("v2.img")]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(0 local indexes from hn-state/bidx-cache)"), "{}", show(&o));
    let o = hnctl(&h, &["stage", &ngx.url("v2.img")]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(1 local indexes from hn-state/bidx-cache)"), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&v2[..]));
    // The boot's rotation: renames keep the identity.
    std::fs::rename(h.dir.join("hn-root.img"), h.dir.join("hn-root-old.img")).unwrap();
    std::fs::rename(h.dir.join(NEW), h.dir.join("hn-root.img")).unwrap();
    let mut v3 = v2.clone();
    v3[(3 << 20) + 9] ^= 1;
    publish("v3.img", &v3);
    let o = hnctl(&h, &["stage", &ngx.url("v3.img")]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(2 local indexes from hn-state/bidx-cache)"), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&v3[..]));
    // A damaged entry costs one whole download, never a wrong image.
    for e in std::fs::read_dir(h.dir.join("hn-state/bidx-cache")).unwrap() {
        let p = e.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 1] ^= 0xff;
        b[n - 40] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    hnctl(&h, &["unstage"]);
    let o = hnctl(&h, &["stage", &ngx.url("v3.img")]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(staged(&h).as_deref(), Some(&v3[..]));
}

/// BENCHMARKS.md's *Staging from a mirror* figures, by hand (release hnctl):
/// `HNCTL_BIN=target/release/hnctl cargo test --release --test remote bench -- --ignored --nocapture`.
/// Same-run ratios on loopback: `hnctl stage URL` vs `curl -o` (raw and zstd),
/// an image with 5 % of its blocks changed (bytes sent by nginx), and on btrfs
/// the disk blocks the adaptive stage newly uses.
#[test]
#[ignore]
fn bench_remote() {
    let bin = std::env::var("HNCTL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hnctl").to_string());
    let mib: u32 = std::env::var("BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let t = tempfile::tempdir().unwrap();
    let ngx = nginx(&t.path().join("ngx"), "0", None);
    // An ext4 image, its second half incompressible, the first mostly zeros.
    let path = ngx.www("web.img");
    mkfs(&path, mib);
    let mut data = std::fs::read(&path).unwrap();
    let mut x = 99u64;
    let half = data.len() / 2;
    for b in data[half..].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&path, &data).unwrap();
    let st = Command::new("zstd").args(["-q", "-f", "-3", "-T0", "-o"]).arg(ngx.www("web.img.zst")).arg(&path).status().unwrap();
    assert!(st.success());
    let zlen = std::fs::metadata(ngx.www("web.img.zst")).unwrap().len();
    let run = |args: &[&str], dir: &Path| -> f64 {
        let s = Instant::now();
        let o = Command::new(&bin)
            .arg("--hostpart")
            .arg(dir)
            .args(["--real-root", "/hn-root.img"])
            .args(args)
            .env("no_proxy", "127.0.0.1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        s.elapsed().as_secs_f64()
    };
    let curl = |name: &str, out: &Path| -> f64 {
        let s = Instant::now();
        let st = Command::new("curl").args(["-sf", "-o"]).arg(out).arg(ngx.url(name)).status().unwrap();
        assert!(st.success());
        // Made durable like a stage is.
        std::fs::File::open(out).unwrap().sync_all().unwrap();
        s.elapsed().as_secs_f64()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let h = host();
    let size = data.len() as f64 / 1e6;
    for (name, wire) in [("web.img", data.len() as u64), ("web.img.zst", zlen)] {
        let mut c = Vec::new();
        let mut s = Vec::new();
        for _ in 0..3 {
            c.push(curl(name, &h.dir.join("curl.out")));
            std::fs::remove_file(h.dir.join("curl.out")).unwrap();
            s.push(run(&["stage", &ngx.url(name), "--whole", "--progress", "none"], &h.dir));
            run(&["unstage"], &h.dir);
        }
        let (c, s) = (median(c.clone()), median(s.clone()));
        println!(
            "BENCH full {name}: {wire} bytes on the wire, image {size:.0} MB: curl -o {c:.3} s ({:.0} MB/s of file), hnctl stage {s:.3} s ({:.0} MB/s of image); hnctl/curl throughput {:.2}",
            wire as f64 / 1e6 / c,
            size / s,
            c / s
        );
    }

    // 5 % of the 64 KiB blocks changed, past the first MiB.
    let block = 64 * 1024;
    std::fs::copy(&path, h.dir.join("hn-root.img")).unwrap();
    let blocks = data.len() / block;
    let mut new = data.clone();
    let changed: Vec<usize> = (0..blocks * 5 / 100).map(|k| 16 + k * 7919 % (blocks - 16)).collect();
    let mut uniq = changed.clone();
    uniq.sort();
    uniq.dedup();
    for &b in &uniq {
        new[b * block + 100] ^= 0x5a;
    }
    std::fs::write(ngx.www("v2.img"), &new).unwrap();
    let idx = Command::new(&bin).args(["index"]).arg(ngx.www("v2.img")).output().unwrap();
    std::fs::write(ngx.www("v2.img.bidx"), &idx.stdout).unwrap();
    let s = run(&["stage", &ngx.url("v2.img"), "--progress", "none"], &h.dir);
    let sent: u64 = ngx.log("v2.img").iter().map(|l| l.1).sum();
    let changed_bytes = (uniq.len() * block) as u64;
    println!(
        "BENCH adaptive: {} of {blocks} blocks changed ({changed_bytes} bytes), index {} bytes; nginx sent {sent} image bytes in {} requests: {:.3} x changed, ({:.3} x changed+index); {s:.2} s",
        uniq.len(),
        idx.stdout.len(),
        ngx.log("v2.img").len(),
        sent as f64 / changed_bytes as f64,
        (sent + idx.stdout.len() as u64) as f64 / (changed_bytes + idx.stdout.len() as u64) as f64
    );

    // btrfs: disk blocks newly used by the adaptive stage (the .part a reflink of the current image).
    let fsimg = t.path().join("btrfs.img");
    let f = std::fs::File::create(&fsimg).unwrap();
    f.set_len(4 * data.len() as u64 + (256 << 20)).unwrap();
    drop(f);
    let st = Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&fsimg).stdout(Stdio::null()).status().unwrap();
    assert!(st.success());
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount").args(["-o", "loop"]).arg(&fsimg).arg(&mnt).status().unwrap();
    if !st.success() {
        println!("BENCH btrfs: cannot mount (not root?)");
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let hp = mnt.join("hostpart");
    std::fs::create_dir(&hp).unwrap();
    std::fs::copy(&path, hp.join("hn-root.img")).unwrap();
    let used = || {
        Command::new("sync").status().unwrap();
        let o = Command::new("btrfs").args(["filesystem", "sync"]).arg(&mnt).output();
        drop(o);
        let s = rustix::fs::statvfs(&mnt).unwrap();
        (s.f_blocks - s.f_bfree) * s.f_frsize
    };
    let before = used();
    run(&["stage", &ngx.url("v2.img"), "--progress", "none"], &hp);
    let after = used();
    println!(
        "BENCH btrfs: {changed_bytes} bytes changed; the staged image newly uses {} bytes of disk ({:.2} x changed)",
        after - before,
        (after - before) as f64 / changed_bytes as f64
    );
}
