//! nginx (Debian's) as a test's own child process: a generated config
//! (`daemon off;`, every path under a temp prefix), bound to 127.0.0.1 on
//! free ports, stopped on every exit path (Drop). Its access log
//! (`$request $status $body_bytes_sent "$http_range"`) is the judge of the
//! bytes sent. Std only: shared by `tests/remote.rs` (through `common`) and
//! the qemu-tests scenario `debian-stage-http` (included with `#[path]`).
#![allow(dead_code)]

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Nginx {
    child: Child,
    pub prefix: PathBuf,
    pub port: u16,
    /// The TLS server's port, when started with a certificate.
    pub tls_port: Option<u16>,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Serves `PREFIX/www` on 127.0.0.1; `/slow/` is the same tree at `rate`
    /// bytes/s (nginx's `limit_rate`, "0": unlimited). `tls`: (certificate,
    /// key) for a second, TLS server on the same tree. Returns once every
    /// port accepts connections.
    pub fn start(prefix: &Path, rate: &str, tls: Option<(&Path, &Path)>) -> io::Result<Nginx> {
        Self::start_with(prefix, rate, tls, None)
    }

    /// [`Nginx::start`], and with `upstream` a reverse proxy of `/v2/` (a
    /// registry on that port of 127.0.0.1) at `rate` bytes/s, ranges passed on.
    pub fn start_with(prefix: &Path, rate: &str, tls: Option<(&Path, &Path)>, upstream: Option<u16>) -> io::Result<Nginx> {
        std::fs::create_dir_all(prefix.join("www"))?;
        std::fs::create_dir_all(prefix.join("tmp"))?;
        let port = free_port()?;
        let tls_port = match tls {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let p = prefix.display();
        let tls_server = match (tls, tls_port) {
            (Some((cert, key)), Some(tp)) => format!(
                "server {{ listen 127.0.0.1:{tp} ssl; server_name localhost; root {p}/www;
                   ssl_certificate {}; ssl_certificate_key {}; }}",
                cert.display(),
                key.display()
            ),
            _ => String::new(),
        };
        let proxy = match upstream {
            Some(up) => format!("location /v2/ {{ proxy_pass http://127.0.0.1:{up}; limit_rate {rate}; }}"),
            None => String::new(),
        };
        let conf = format!(
            "daemon off;
master_process off;
pid {p}/nginx.pid;
error_log {p}/error.log;
events {{ worker_connections 64; }}
http {{
  log_format ranges '$request $status $body_bytes_sent \"$http_range\"';
  access_log {p}/access.log ranges;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {p}/www;
    location /slow/ {{ alias {p}/www/; limit_rate {rate}; }}
    {proxy}
  }}
  {tls_server}
}}
"
        );
        std::fs::write(prefix.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting nginx (Debian nginx-light): {e}")))?;
        let mut n = Nginx { child, prefix: prefix.to_path_buf(), port, tls_port };
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in [Some(port), tls_port].into_iter().flatten() {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                if let Some(st) = n.child.try_wait()? {
                    let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
                    return Err(io::Error::other(format!("nginx exited ({st}): {}", log.trim())));
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!("nginx did not listen on 127.0.0.1:{p} within 20 s")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(n)
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Where the file served as `/NAME` lives.
    pub fn www(&self, name: &str) -> PathBuf {
        self.prefix.join("www").join(name)
    }

    /// The paths requested, in the order of the access log.
    pub fn log_paths(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default();
        text.lines().filter_map(|l| l.split_whitespace().nth(1).map(str::to_string)).collect()
    }

    /// The access log's lines for `/PATH`: (status, bytes sent, Range header).
    pub fn log(&self, path: &str) -> Vec<(u16, u64, String)> {
        let text = std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(&format!(" /{path} ")))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // GET /path HTTP/1.1 STATUS BYTES "RANGE"
                Some((f.get(3)?.parse().ok()?, f.get(4)?.parse().ok()?, f.get(5..)?.join(" ").trim_matches('"').to_string()))
            })
            .collect()
    }
}
