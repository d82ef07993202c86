//! One running VM (or any child process) and its console: spawning it in its own
//! process group, capturing stdout+stderr into a line buffer and a log file, waiting
//! for console lines, forbidden patterns, the overall deadline (watchdog), and killing
//! the whole process group on `kill`/`Drop`. The process-group calls and the console
//! cleaner are [`xtask::console`]'s, shared with `cargo xtask bench`.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};
use xtask::console::{in_new_group, kill_group, Cleaner};

/// Lines kept in a [`Failure`]'s console tail.
pub const TAIL_LINES: usize = 40;

/// A console line longer than this (after cleaning) is split, so a guest that never
/// prints a newline cannot make every append quadratic.
const MAX_LINE: usize = 4096;

/// After the child exits, how long output still in flight may take to arrive before
/// `expect*` gives up. Ends early when both pipes reach EOF (the normal case).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// A line without its `\n` yet (e.g. a `login: ` prompt) is matched only once no
/// byte was added to it for this long, so a match never sees half a line.
const PARTIAL_QUIET: Duration = Duration::from_millis(300);

/// How long `kill`/`Drop` wait for the reaper after SIGKILL.
const REAP_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Failure

/// Why a scenario step failed: a message plus the console tail at that moment.
pub struct Failure {
    /// What was expected, how long it waited, and the child's state.
    pub message: String,
    /// The last [`TAIL_LINES`] console lines (empty if no VM was involved).
    pub tail: String,
    /// The console log of the VM involved, if any.
    pub log: Option<PathBuf>,
}

impl Failure {
    /// A failure with just a message (no console attached).
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            tail: String::new(),
            log: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.tail.is_empty() {
            write!(f, "\n--- console tail ---\n{}", self.tail)?;
        }
        if let Some(log) = &self.log {
            write!(f, "\n--- log: {}", log.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::new(format!("I/O error: {e}"))
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::new(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::new(message)
    }
}

/// Turns any `Result` with a displayable error into a `Result<_, Failure>`:
/// `build_disk(&dir).or_fail("building the disk")?`.
pub trait OrFail<T> {
    fn or_fail(self, what: &str) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(format!("{what}: {e}")))
    }
}

// ---------------------------------------------------------------------------
// Shared console state

struct Line {
    bytes: Vec<u8>,
    text: String,
    complete: bool,
    /// When bytes were last added.
    touched: Instant,
}

#[derive(Default)]
struct Stream {
    esc: Cleaner,
    /// Index in `lines` of this stream's unfinished line.
    open: Option<usize>,
}

struct State {
    lines: Vec<Line>,
    streams: [Stream; 2],
    log: Option<File>,
    log_error: Option<String>,
    status: Option<ExitStatus>,
    exited_at: Option<Instant>,
    eof: u8,
    deadline_hit: bool,
    killed: bool,
    dropped: bool,
}

impl State {
    fn push_bytes(&mut self, stream: usize, data: &[u8]) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.write_all(data) {
                self.log_error.get_or_insert_with(|| e.to_string());
            }
        }
        let mut touched: Option<usize> = None;
        for &b in data {
            if b == b'\n' {
                let idx = self.open_line(stream);
                self.refresh(idx);
                touched = None;
                self.lines[idx].complete = true;
                self.streams[stream].open = None;
                continue;
            }
            let Some(c) = self.streams[stream].esc.push(b) else {
                continue;
            };
            let idx = self.open_line(stream);
            if touched != Some(idx) {
                if let Some(t) = touched {
                    self.refresh(t);
                }
                touched = Some(idx);
            }
            self.lines[idx].bytes.push(c);
            if self.lines[idx].bytes.len() >= MAX_LINE {
                self.refresh(idx);
                touched = None;
                self.lines[idx].complete = true;
                self.streams[stream].open = None;
            }
        }
        if let Some(t) = touched {
            self.refresh(t);
        }
    }

    fn open_line(&mut self, stream: usize) -> usize {
        if let Some(idx) = self.streams[stream].open {
            return idx;
        }
        self.lines.push(Line {
            bytes: Vec::new(),
            text: String::new(),
            complete: false,
            touched: Instant::now(),
        });
        let idx = self.lines.len() - 1;
        self.streams[stream].open = Some(idx);
        idx
    }

    fn refresh(&mut self, idx: usize) {
        let line = &mut self.lines[idx];
        line.text = String::from_utf8_lossy(&line.bytes).into_owned();
        line.touched = Instant::now();
    }

    fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        let mut out = String::new();
        for l in &self.lines[start..] {
            out.push_str(&l.text);
            out.push('\n');
        }
        out
    }

    /// Output has stopped for good: the child exited and the pipes are drained
    /// (or the drain grace passed because something else holds them open).
    fn finished(&self, now: Instant) -> bool {
        match self.exited_at {
            Some(t) => self.eof >= 2 || now >= t + DRAIN_GRACE,
            None => false,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent in a way
        // that matters for reporting, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A read-only handle on a VM's console that outlives the [`Vm`] (the runner uses it
/// to print the tail of a scenario's last VM).
#[derive(Clone)]
pub(crate) struct ConsoleHandle {
    shared: Arc<Shared>,
    pub(crate) log: PathBuf,
}

impl ConsoleHandle {
    pub(crate) fn tail(&self, lines: usize) -> String {
        self.shared.lock().tail(lines)
    }
}

// ---------------------------------------------------------------------------
// Vm

/// A child process in its own process group, with its console captured.
///
/// Dropping a `Vm` SIGKILLs its whole process group.
pub struct Vm {
    shared: Arc<Shared>,
    pid: u32,
    log: PathBuf,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    cursor: Cell<usize>,
    forbidden: Vec<String>,
    /// Lines before this index are complete and free of forbidden patterns.
    forbid_scanned: Cell<usize>,
    /// QEMU's stdin: the guest console's input (`-serial stdio`).
    stdin: Option<std::process::ChildStdin>,
}

/// What `wait_for` is looking for.
enum Want<'a> {
    Any(&'a [&'a str]),
    Regex(&'a regex::Regex),
}

impl Want<'_> {
    fn describe(&self) -> String {
        match self {
            Want::Any([one]) => format!("{one:?}"),
            Want::Any(many) => format!("one of {many:?}"),
            Want::Regex(re) => format!("/{}/", re.as_str()),
        }
    }

    /// Index of the matching alternative (0 for a regex).
    fn matches(&self, text: &str) -> Option<usize> {
        match self {
            Want::Any(needles) => needles.iter().position(|n| text.contains(n)),
            Want::Regex(re) => re.is_match(text).then_some(0),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Vm {
    /// Spawns `cmd` in a new process group with stdin piped (see [`Vm::send`]) and stdout+stderr captured
    /// into the console buffer and `log_path` (raw bytes, truncated first). A watchdog
    /// SIGKILLs the group `timeout` after the start.
    pub fn spawn(mut cmd: Command, log_path: &Path, timeout: Duration) -> Result<Vm, Failure> {
        let log = File::create(log_path)
            .map_err(|e| Failure::new(format!("creating {}: {e}", log_path.display())))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        in_new_group(&mut cmd);
        let mut child: Child = cmd
            .spawn()
            .map_err(|e| Failure::new(format!("spawning {cmd:?}: {e}")))?;
        let started = Instant::now();
        let pid = child.id();
        let stdin = child.stdin.take();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lines: Vec::new(),
                streams: Default::default(),
                log: Some(log),
                log_error: None,
                status: None,
                exited_at: None,
                eof: 0,
                deadline_hit: false,
                killed: false,
                dropped: false,
            }),
            cond: Condvar::new(),
        });

        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout piped")),
            Box::new(child.stderr.take().expect("stderr piped")),
        ];
        for (stream, mut pipe) in pipes.into_iter().enumerate() {
            let sh = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("console-{pid}-{stream}"))
                .spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match pipe.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                sh.lock().push_bytes(stream, &buf[..n]);
                                sh.cond.notify_all();
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    sh.lock().eof += 1;
                    sh.cond.notify_all();
                })
                .expect("spawning console reader thread");
        }

        // Reaper: owns the Child and publishes its exit status.
        let sh = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("reaper-{pid}"))
            .spawn(move || {
                let status = child.wait();
                let mut st = sh.lock();
                // wait() only fails if the child was already reaped, which cannot
                // happen here; treat it as "exited" with an unknown status.
                st.status =
                    Some(status.unwrap_or_else(|_| {
                        std::os::unix::process::ExitStatusExt::from_raw(0xff00)
                    }));
                st.exited_at = Some(Instant::now());
                drop(st);
                sh.cond.notify_all();
            })
            .expect("spawning reaper thread");

        // Watchdog: kills the group at the deadline even if nobody is waiting.
        let deadline = started + timeout;
        let sh = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("watchdog-{pid}"))
            .spawn(move || {
                let mut st = sh.lock();
                loop {
                    if st.status.is_some() || st.dropped {
                        return;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        st.deadline_hit = true;
                        drop(st);
                        kill_group(pid);
                        sh.cond.notify_all();
                        return;
                    }
                    st = sh
                        .cond
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })
            .expect("spawning watchdog thread");

        Ok(Vm {
            shared,
            pid,
            log: log_path.to_path_buf(),
            started,
            deadline,
            timeout,
            cursor: Cell::new(0),
            forbidden: Vec::new(),
            forbid_scanned: Cell::new(0),
            stdin,
        })
    }

    /// Types `text` on the guest's console (QEMU's stdin, with `-serial stdio`).
    pub fn send(&mut self, text: &str) -> Result<(), Failure> {
        use std::io::Write;
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| Failure::new("the VM's stdin is closed"))?;
        w.write_all(text.as_bytes())
            .and_then(|()| w.flush())
            .map_err(|e| Failure::new(format!("typing {text:?} on the console: {e}")))
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Time since the child was spawned.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The console log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub(crate) fn console_handle(&self) -> ConsoleHandle {
        ConsoleHandle {
            shared: Arc::clone(&self.shared),
            log: self.log.clone(),
        }
    }

    /// Waits until a console line containing `needle` appears after the read cursor,
    /// moves the cursor past it and returns the (cleaned) line.
    pub fn expect(&self, needle: &str, within: Duration) -> Result<String, Failure> {
        self.wait_for(&Want::Any(&[needle]), within)
            .map(|(_, line)| line)
    }

    /// Like [`expect`](Vm::expect) for several needles: returns the index of the needle
    /// that matched and the line (the earliest line wins; within one line the lowest
    /// index).
    pub fn expect_any(
        &self,
        needles: &[&str],
        within: Duration,
    ) -> Result<(usize, String), Failure> {
        if needles.is_empty() {
            return Err(self.failure("expect_any called with no needles".into()));
        }
        self.wait_for(&Want::Any(needles), within)
    }

    /// Like [`expect`](Vm::expect) for a regex (matched against each cleaned line).
    /// Returns `[whole line, group 1, group 2, …]`; a group that did not participate
    /// is an empty string.
    pub fn expect_regex(
        &self,
        re: &regex::Regex,
        within: Duration,
    ) -> Result<Vec<String>, Failure> {
        let (_, line) = self.wait_for(&Want::Regex(re), within)?;
        let caps = re.captures(&line).expect("line matched the regex");
        let mut out = vec![line.clone()];
        out.extend(
            caps.iter()
                .skip(1)
                .map(|m| m.map(|m| m.as_str().to_owned()).unwrap_or_default()),
        );
        Ok(out)
    }

    fn wait_for(&self, want: &Want<'_>, within: Duration) -> Result<(usize, String), Failure> {
        let begin = Instant::now();
        let until = begin + within;
        let what = want.describe();
        let mut from = self.cursor.get();
        let mut st = self.shared.lock();
        loop {
            if let Some((pat, line)) = self.scan_forbidden(&st) {
                let msg = format!(
                    "forbidden {pat:?} appeared on the console while waiting {} for {what}: {line:?}",
                    secs(begin.elapsed())
                );
                drop(st);
                return Err(self.failure(msg));
            }
            let now = Instant::now();
            let finished = st.finished(now);
            let mut first_open = None;
            // When the first matching line, still unfinished, becomes quiet.
            let mut settle: Option<Instant> = None;
            let mut pending: Option<(usize, usize)> = None;
            for (i, line) in st.lines.iter().enumerate().skip(from) {
                if let Some(k) = want.matches(&line.text) {
                    let quiet_at = line.touched + PARTIAL_QUIET;
                    if line.complete || finished || now >= quiet_at {
                        self.cursor.set(i + 1);
                        return Ok((k, line.text.clone()));
                    }
                    // Wait for this one; later lines must not overtake it.
                    settle = Some(quiet_at);
                    pending = Some((i, k));
                    first_open = first_open.or(Some(i));
                    break;
                }
                if !line.complete && first_open.is_none() {
                    first_open = Some(i);
                }
            }
            // Complete lines that did not match never need rescanning.
            from = first_open.unwrap_or(st.lines.len());

            if finished {
                let msg = if st.deadline_hit {
                    format!(
                        "expected {what} within {}: VM deadline of {} passed after waiting {}; \
                         the watchdog killed the process group ({})",
                        secs(within),
                        secs(self.timeout),
                        secs(begin.elapsed()),
                        describe_status(st.status),
                    )
                } else {
                    let how = if st.killed { "was killed" } else { "exited" };
                    format!(
                        "expected {what} within {}: child {how} ({}) after waiting {} \
                         ({} since spawn) without printing it",
                        secs(within),
                        describe_status(st.status),
                        secs(begin.elapsed()),
                        secs(self.started.elapsed()),
                    )
                };
                drop(st);
                return Err(self.failure(msg));
            }
            if now >= until {
                if let Some((i, k)) = pending {
                    // Out of time while the matching line was still growing: take it.
                    self.cursor.set(i + 1);
                    return Ok((k, st.lines[i].text.clone()));
                }
                let msg = format!(
                    "expected {what} within {}: not seen after waiting {} ({} since spawn; \
                     child still running, pid {})",
                    secs(within),
                    secs(begin.elapsed()),
                    secs(self.started.elapsed()),
                    self.pid,
                );
                drop(st);
                return Err(self.failure(msg));
            }
            let mut wake = until;
            if let Some(t) = settle {
                wake = wake.min(t);
            }
            if let Some(t) = st.exited_at {
                wake = wake.min(t + DRAIN_GRACE);
            }
            let deadline_check = self.deadline + Duration::from_millis(50);
            if st.status.is_none() && deadline_check > now {
                // The watchdog will notify, but don't rely on it for the deadline.
                wake = wake.min(deadline_check);
            }
            let dur = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            st = self
                .shared
                .cond
                .wait_timeout(st, dur)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Scans lines not yet known clean; returns the first forbidden hit.
    fn scan_forbidden(&self, st: &State) -> Option<(String, String)> {
        if self.forbidden.is_empty() {
            return None;
        }
        let mut clean_upto = None;
        for (i, line) in st.lines.iter().enumerate().skip(self.forbid_scanned.get()) {
            if let Some(p) = self
                .forbidden
                .iter()
                .find(|p| line.text.contains(p.as_str()))
            {
                return Some((p.clone(), line.text.clone()));
            }
            if !line.complete && clean_upto.is_none() {
                clean_upto = Some(i);
            }
        }
        self.forbid_scanned
            .set(clean_upto.unwrap_or(st.lines.len()));
        None
    }

    /// Registers a pattern that must never appear on the console (checked over the
    /// whole console, including what was printed before this call).
    pub fn forbid(&mut self, needle: &str) {
        self.forbidden.push(needle.to_owned());
        self.forbid_scanned.set(0);
    }

    /// Fails if any forbidden pattern appears anywhere on the console.
    pub fn check_forbidden(&self) -> Result<(), Failure> {
        let st = self.shared.lock();
        for line in &st.lines {
            if let Some(p) = self
                .forbidden
                .iter()
                .find(|p| line.text.contains(p.as_str()))
            {
                let msg = format!("forbidden {p:?} appeared on the console: {:?}", line.text);
                drop(st);
                return Err(self.failure(msg));
            }
        }
        Ok(())
    }

    /// Waits for the child (the process group leader) to exit. Does not kill it on
    /// timeout (Drop or [`kill`](Vm::kill) does).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, Failure> {
        let begin = Instant::now();
        let until = begin + within;
        let mut st = self.shared.lock();
        loop {
            if let Some(status) = st.status {
                if st.deadline_hit {
                    let msg = format!(
                        "waiting for exit: VM deadline of {} passed; the watchdog killed the \
                         process group ({})",
                        secs(self.timeout),
                        describe_status(Some(status))
                    );
                    drop(st);
                    return Err(self.failure(msg));
                }
                return Ok(status);
            }
            let now = Instant::now();
            if now >= until {
                let msg = format!(
                    "expected the child to exit within {}: still running after waiting {} \
                     ({} since spawn, pid {})",
                    secs(within),
                    secs(begin.elapsed()),
                    secs(self.started.elapsed()),
                    self.pid
                );
                drop(st);
                return Err(self.failure(msg));
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// SIGKILLs the whole process group and waits (bounded) until the leader is reaped.
    pub fn kill(&mut self) {
        self.shared.lock().killed = true;
        kill_group(self.pid);
        let until = Instant::now() + REAP_WAIT;
        let mut st = self.shared.lock();
        while st.status.is_none() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The whole cleaned console, one line per `\n`.
    pub fn console(&self) -> String {
        self.shared.lock().tail(usize::MAX)
    }

    /// The last `lines` cleaned console lines.
    pub fn console_tail(&self, lines: usize) -> String {
        self.shared.lock().tail(lines)
    }

    /// The exit status if the child has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.shared.lock().status
    }

    fn failure(&self, mut message: String) -> Failure {
        let st = self.shared.lock();
        if let Some(e) = &st.log_error {
            message.push_str(&format!(" [writing {} failed: {e}]", self.log.display()));
        }
        Failure {
            message,
            tail: st.tail(TAIL_LINES),
            log: Some(self.log.clone()),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.dropped = true;
        }
        self.shared.cond.notify_all();
        // Always kill the group: the leader may be gone while members still run.
        self.kill();
    }
}

fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "not reaped yet".into(),
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    fn spawn(script: &str, timeout: Duration) -> (Vm, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let vm = Vm::spawn(sh(script), &dir.path().join("console.log"), timeout).unwrap();
        (vm, dir)
    }

    const S: Duration = Duration::from_secs(1);

    /// Process-group id and state of `pid` from /proc, None if gone.
    fn proc_stat(pid: u32) -> Option<(u32, char)> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 2..];
        let mut f = rest.split_whitespace();
        let state = f.next()?.chars().next()?;
        let _ppid = f.next()?;
        let pgrp = f.next()?.parse().ok()?;
        Some((pgrp, state))
    }

    fn alive(pid: u32) -> bool {
        matches!(proc_stat(pid), Some((_, s)) if s != 'Z' && s != 'X')
    }

    /// Polls until `f` holds, up to `within` (a bounded wait, not an assertion sleep).
    fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + within;
        loop {
            if f() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn expect_success_and_cursor() {
        let (vm, dir) = spawn("echo hello; echo READY 42; echo done", 10 * S);
        assert_eq!(vm.expect("hello", 5 * S).unwrap(), "hello");
        assert_eq!(vm.expect("READY", 5 * S).unwrap(), "READY 42");
        // The cursor is past "hello" now.
        let e = vm.expect("hello", 5 * S).unwrap_err();
        assert!(e.message.contains("exited"), "{e:?}");
        let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
        assert_eq!(log, "hello\nREADY 42\ndone\n");
        assert_eq!(vm.console(), "hello\nREADY 42\ndone\n");
        assert_eq!(vm.console_tail(2), "READY 42\ndone\n");
    }

    #[test]
    fn expect_timeout_names_needle() {
        let (vm, _d) = spawn("echo one; sleep 100", 30 * S);
        vm.expect("one", 5 * S).unwrap();
        let t = Instant::now();
        let e = vm
            .expect("NEVER-PRINTED", Duration::from_millis(300))
            .unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(t.elapsed() < 5 * S);
        assert!(e.message.contains("\"NEVER-PRINTED\""), "{e:?}");
        assert!(e.message.contains("still running"), "{e:?}");
        assert!(e.tail.contains("one"), "{e:?}");
        assert!(e.to_string().contains("NEVER-PRINTED"));
    }

    #[test]
    fn expect_any_and_regex() {
        let (vm, _d) = spawn(
            "echo 'boot: stage=2 ok'; echo 'root=/dev/vda'; echo 'x'",
            10 * S,
        );
        let (k, line) = vm.expect_any(&["nope", "stage="], 5 * S).unwrap();
        assert_eq!((k, line.as_str()), (1, "boot: stage=2 ok"));
        let re = regex::Regex::new(r"root=(\S+)(?: (\w+))?").unwrap();
        let caps = vm.expect_regex(&re, 5 * S).unwrap();
        assert_eq!(
            caps,
            vec![
                "root=/dev/vda".to_string(),
                "/dev/vda".into(),
                String::new()
            ]
        );
    }

    #[test]
    fn stderr_is_captured() {
        let (vm, _d) = spawn("echo to-stderr >&2", 10 * S);
        vm.expect("to-stderr", 5 * S).unwrap();
    }

    #[test]
    fn half_line_is_not_matched_early() {
        // The line arrives in two writes; the regex must see the whole of it.
        let (vm, _d) = spawn(
            r"printf 'root=/dev/vd'; sleep 0.05; printf 'a rw\n'",
            10 * S,
        );
        let re = regex::Regex::new(r"root=(\S+)").unwrap();
        assert_eq!(vm.expect_regex(&re, 5 * S).unwrap()[1], "/dev/vda");
    }

    #[test]
    fn partial_line_matches() {
        let (vm, _d) = spawn("printf 'login: '; sleep 100", 30 * S);
        assert_eq!(vm.expect("login:", 5 * S).unwrap(), "login: ");
    }

    #[test]
    fn forbid_fails_expect_and_check() {
        let (mut vm, _d) = spawn("echo 'Kernel panic - not syncing'; sleep 100", 30 * S);
        vm.forbid("Kernel panic");
        let t = Instant::now();
        let e = vm.expect("login:", 20 * S).unwrap_err();
        assert!(t.elapsed() < 10 * S, "forbid must fail early");
        assert!(e.message.contains("forbidden \"Kernel panic\""), "{e:?}");
        assert!(vm.check_forbidden().is_err());
    }

    #[test]
    fn check_forbidden_ok_when_absent() {
        let (mut vm, _d) = spawn("echo fine", 10 * S);
        vm.forbid("Kernel panic");
        vm.expect("fine", 5 * S).unwrap();
        vm.check_forbidden().unwrap();
    }

    #[test]
    fn child_exit_is_detected_quickly() {
        let (mut vm, _d) = spawn("echo started; exit 3", 60 * S);
        let t = Instant::now();
        let e = vm.expect("READY", 30 * S).unwrap_err();
        assert!(t.elapsed() < 10 * S);
        assert!(e.message.contains("exited (exit status: 3)"), "{e:?}");
        assert_eq!(vm.wait_exit(5 * S).unwrap().code(), Some(3));
    }

    #[test]
    fn output_just_before_exit_is_not_lost() {
        for _ in 0..20 {
            let (vm, _d) = spawn("echo LAST", 10 * S);
            vm.expect("LAST", 5 * S).unwrap();
        }
    }

    #[test]
    fn kill_takes_the_whole_group() {
        let (mut vm, _d) = spawn(
            "sleep 100 & echo BG=$!; sleep 100; echo unreachable",
            60 * S,
        );
        let caps = vm
            .expect_regex(&regex::Regex::new(r"BG=(\d+)").unwrap(), 5 * S)
            .unwrap();
        let bg: u32 = caps[1].parse().unwrap();
        let leader = vm.pid();
        assert_eq!(
            proc_stat(bg).map(|s| s.0),
            Some(leader),
            "bg sleep is in the group"
        );
        assert!(alive(leader) && alive(bg));
        vm.kill();
        assert!(vm.try_status().is_some(), "leader reaped by kill()");
        assert!(
            eventually(5 * S, || !alive(bg)),
            "background sleep survived the kill"
        );
    }

    #[test]
    fn drop_kills_the_group() {
        let (vm, _d) = spawn("sleep 100 & echo BG=$!; sleep 100", 60 * S);
        let caps = vm
            .expect_regex(&regex::Regex::new(r"BG=(\d+)").unwrap(), 5 * S)
            .unwrap();
        let bg: u32 = caps[1].parse().unwrap();
        let leader = vm.pid();
        drop(vm);
        assert!(eventually(5 * S, || !alive(bg) && !alive(leader)));
    }

    #[test]
    fn watchdog_kills_at_deadline_without_expect() {
        let (mut vm, _d) = spawn("echo up; sleep 100", Duration::from_millis(500));
        let t = Instant::now();
        // Nobody calls expect; wait_exit only observes.
        let e = vm.wait_exit(20 * S).unwrap_err();
        assert!(t.elapsed() < 10 * S);
        assert!(e.message.contains("deadline"), "{e:?}");
        assert!(vm.try_status().is_some());
    }

    #[test]
    fn expect_fails_at_vm_deadline() {
        let (vm, _d) = spawn("sleep 100", Duration::from_millis(300));
        let t = Instant::now();
        let e = vm.expect("never", 30 * S).unwrap_err();
        assert!(t.elapsed() < 10 * S);
        assert!(e.message.contains("VM deadline"), "{e:?}");
    }

    #[test]
    fn wait_exit_times_out_without_killing() {
        let (mut vm, _d) = spawn("sleep 100", 60 * S);
        let e = vm.wait_exit(Duration::from_millis(200)).unwrap_err();
        assert!(e.message.contains("still running"), "{e:?}");
        assert!(alive(vm.pid()));
    }

    #[test]
    fn ansi_and_cr_are_stripped() {
        // The cleaner itself is tested beside it (xtask::console); this checks
        // that the console the harness matches against goes through it.
        let (vm, dir) = spawn(
            r"printf '\033[1;31mRED\033[0m line\r\n\033[?25lhidden cursor\r\n'",
            10 * S,
        );
        assert_eq!(vm.expect("RED line", 5 * S).unwrap(), "RED line");
        assert_eq!(vm.expect("cursor", 5 * S).unwrap(), "hidden cursor");
        let raw = std::fs::read(dir.path().join("console.log")).unwrap();
        assert!(raw.starts_with(b"\x1b[1;31mRED"), "log keeps raw bytes");
    }

    #[test]
    fn escape_split_across_reads() {
        // The escape sequence is split between two writes with a pause between.
        let (vm, _d) = spawn(r"printf 'A\033['; sleep 0.2; printf '31mB\n'", 10 * S);
        assert_eq!(vm.expect("AB", 5 * S).unwrap(), "AB");
    }

    #[test]
    fn spawn_error_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let e = Vm::spawn(
            Command::new("/nonexistent/qemu"),
            &dir.path().join("c.log"),
            S,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("spawning"), "{e:?}");
    }
}
