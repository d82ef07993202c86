//! Console and kernel log output: one `write(2)` to `/dev/kmsg` per record, with
//! the syslog priority honoured (`<3>hninit: …`). Before `/dev` is mounted (or if
//! `/dev/kmsg` cannot be opened) records go to stderr, which is the console for PID 1.
//! Debug records are emitted only when `hn.debug` is on.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Syslog priorities used by hninit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Crit = 2,
    Err = 3,
    Warn = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

static SINK: Mutex<Option<File>> = Mutex::new(None);
static DEBUG: AtomicBool = AtomicBool::new(false);
static START: Mutex<Option<Instant>> = Mutex::new(None);

/// The kernel truncates a `/dev/kmsg` record at 1024 bytes including the prefix.
const MAX_RECORD: usize = 976;

/// Opens `/dev/kmsg` (after devtmpfs is mounted). Safe to call again.
pub fn open_kmsg() {
    if let Ok(f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        if let Ok(mut sink) = SINK.lock() {
            *sink = Some(f);
        }
    }
    if let Ok(mut s) = START.lock() {
        s.get_or_insert_with(Instant::now);
    }
}

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Milliseconds since the logger was opened (for step timings in debug records).
pub fn elapsed_ms() -> u128 {
    START
        .lock()
        .ok()
        .and_then(|s| s.map(|t| t.elapsed().as_millis()))
        .unwrap_or(0)
}

/// Formats one record per line of `msg`, each as a single write.
pub fn format_records(level: Level, msg: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in msg.lines() {
        let mut rest = line;
        loop {
            let mut cut = rest.len().min(MAX_RECORD);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at(cut);
            out.push(format!("<{}>hninit: {}\n", level as u8, head));
            if tail.is_empty() {
                break;
            }
            rest = tail;
        }
    }
    if out.is_empty() {
        out.push(format!("<{}>hninit:\n", level as u8));
    }
    out
}

pub fn log(level: Level, args: fmt::Arguments<'_>) {
    if level == Level::Debug && !debug_enabled() {
        return;
    }
    let msg = args.to_string();
    let records = format_records(level, &msg);
    let mut guard = SINK.lock().unwrap_or_else(|p| p.into_inner());
    for rec in records {
        let written = match guard.as_mut() {
            Some(f) => f.write_all(rec.as_bytes()).is_ok(),
            None => false,
        };
        if !written {
            // No kmsg: the console is our stderr. Strip the priority prefix.
            let plain = rec.split_once('>').map(|(_, r)| r).unwrap_or(&rec);
            let _ = std::io::stderr().write_all(plain.as_bytes());
        }
    }
}

/// A failure ignored on purpose: `why` says why the boot goes on regardless
/// (systemd's `(void)` with a comment). Logged at debug level, so `hn.debug`
/// shows every one of them.
pub fn ignored<T, E: fmt::Display>(result: Result<T, E>, what: &str, why: &str) {
    if let Err(e) = result {
        log(Level::Debug, format_args!("{what}: {e} (ignored: {why})"));
    }
}

#[macro_export]
macro_rules! crit { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Crit, format_args!($($t)*)) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Err, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! notice { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Notice, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Debug, format_args!($($t)*)) } }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_line_with_priority() {
        let r = format_records(Level::Err, "first\nsecond");
        assert_eq!(r, vec!["<3>hninit: first\n", "<3>hninit: second\n"]);
    }

    #[test]
    fn long_lines_are_split_on_char_boundaries() {
        let long = "é".repeat(1000);
        let r = format_records(Level::Info, &long);
        assert!(r.len() >= 2);
        assert!(r.iter().all(|x| x.len() <= MAX_RECORD + 20));
        let joined: String = r
            .iter()
            .map(|x| x.trim_start_matches("<6>hninit: ").trim_end_matches('\n'))
            .collect();
        assert_eq!(joined, long);
    }
}
