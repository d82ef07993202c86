//! A Debian VM of the Debian bench ([`super::debian`]): QEMU started in its
//! own process group (killed when the [`Vm`] is dropped), every console line
//! timestamped on arrival and written to a log, and ssh to root through the
//! forwarded port: one bounded try, and waiting until a given image answers.

use crate::console::{in_new_group, GroupGuard, LineSplitter};
use crate::util;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One ssh try (connect and run the probe).
const SSH_TRY: Duration = Duration::from_secs(20);
/// Pause between ssh tries: the granularity of the "ssh answered" figure.
const SSH_PAUSE: Duration = Duration::from_millis(500);

/// A free TCP port on 127.0.0.1 for the ssh forward.
pub(super) fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The console lines seen so far (seconds since QEMU was started, text) and the log.
struct Shared {
    lines: Vec<(f64, String)>,
    log: fs::File,
}

/// A running QEMU.
pub(super) struct Vm {
    child: Child,
    group: GroupGuard,
    shared: Arc<Mutex<Shared>>,
    /// When QEMU was started.
    pub(super) t0: Instant,
    pub(super) port: u16,
}

impl Vm {
    /// Starts `cmd` (a QEMU command line) with its console captured to `log`.
    pub(super) fn start(mut cmd: Command, port: u16, log: &Path) -> Result<Vm> {
        in_new_group(&mut cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut logf = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        writeln!(logf, "# {}", util::display_cmd(&cmd))?;
        let shared = Arc::new(Mutex::new(Shared { lines: Vec::new(), log: logf }));
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("starting QEMU")?;
        let group = GroupGuard::of(&child);
        let streams: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for mut s in streams {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut lines = LineSplitter::default();
                let mut keep = |l: String| {
                    let t = t0.elapsed().as_secs_f64();
                    if let Ok(mut sh) = shared.lock() {
                        let _ = writeln!(sh.log, "{t:9.3} {l}");
                        sh.lines.push((t, l));
                    }
                };
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    lines.feed(&buf[..n], &mut keep);
                }
                if let Some(l) = lines.finish() {
                    keep(l);
                }
            });
        }
        Ok(Vm { child, group, shared, t0, port })
    }

    /// Seconds since QEMU was started.
    pub(super) fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// The arrival time of the first console line at or after `after` s containing `pat`.
    pub(super) fn seen_after(&self, pat: &str, after: f64) -> Option<f64> {
        let sh = self.shared.lock().ok()?;
        sh.lines.iter().find(|(t, l)| *t >= after && l.contains(pat)).map(|(t, _)| *t)
    }

    /// A note in the console log (not a console line).
    pub(super) fn note(&self, text: &str) {
        let t = self.now();
        if let Ok(mut sh) = self.shared.lock() {
            let _ = writeln!(sh.log, "# {t:9.3} bench: {text}");
        }
    }

    /// Whether QEMU has exited.
    pub(super) fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The last `n` console lines, for an error.
    pub(super) fn tail(&self, n: usize) -> String {
        let sh = match self.shared.lock() {
            Ok(sh) => sh,
            Err(_) => return String::new(),
        };
        let from = sh.lines.len().saturating_sub(n);
        sh.lines[from..].iter().map(|(t, l)| format!("{t:9.3} {l}\n")).collect()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.group.kill();
        let _ = self.child.wait();
        self.group.disarm();
    }
}

/// ssh as root with `key` to the VM's forwarded port (host keys neither
/// checked nor kept: each boot of a fresh image makes its own).
fn ssh_command(key: &Path, port: u16, script: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-i")
        .arg(key)
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"])
        .args(["-o", "LogLevel=ERROR", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-p", &port.to_string(), "root@127.0.0.1"])
        .arg(script);
    c
}

/// One ssh command, bounded by `limit` (its process group is killed after).
/// Returns stdout on success.
pub(super) fn ssh(key: &Path, port: u16, script: &str, limit: Duration) -> Result<String> {
    let mut c = ssh_command(key, port, script);
    in_new_group(&mut c).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().context("starting ssh")?;
    let group = GroupGuard::of(&child);
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= until {
            group.kill();
            let _ = child.wait();
            bail!("ssh `{script}` timed out after {:.0} s", limit.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        bail!("ssh `{script}`: {status}: {}", err.trim());
    }
    Ok(out)
}

/// Tries ssh until `/etc/hn-image-id` reads `id` (an ssh that answers with
/// another image, the one shutting down, does not count), QEMU exits, or
/// `limit` passes. Returns the seconds since QEMU start when it answered.
pub(super) fn wait_ssh(vm: &mut Vm, key: &Path, id: &str, limit: Duration) -> Result<f64> {
    let until = Instant::now() + limit;
    let mut last: String;
    let mut tries = 0;
    loop {
        tries += 1;
        match ssh(key, vm.port, "cat /etc/hn-image-id", SSH_TRY) {
            Ok(out) if out.trim() == id => {
                let t = vm.now();
                vm.note(&format!("ssh answered by image {id} (try {tries})"));
                return Ok(t);
            }
            Ok(out) => last = format!("image {:?} answered", out.trim()),
            Err(e) => last = format!("{e:#}"),
        }
        if vm.exited() {
            bail!("QEMU exited before image {id} answered ssh (last try: {last}); console tail:\n{}", vm.tail(25));
        }
        if Instant::now() >= until {
            bail!(
                "image {id} did not answer ssh within {:.0} s ({tries} tries; last: {last}); console tail:\n{}",
                limit.as_secs_f64(),
                vm.tail(25)
            );
        }
        std::thread::sleep(SSH_PAUSE);
    }
}
