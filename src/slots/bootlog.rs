//! `hn-state/boot.log`: one line per slot decision, with a UTC timestamp, and one
//! header line per boot with its command line. Bounded: past `MAX_LOG` bytes the
//! oldest half is dropped (the rewrite is atomic; an append is one write, fsynced
//! when it records decisions: a boot that decided nothing only adds its header
//! line, which a power cut may lose without harm).

use crate::slots::dir::{write_atomic, Dir};
use std::io;

pub const BOOT_LOG: &str = crate::layout::BOOT_LOG;
pub const MAX_LOG: usize = 256 * 1024;

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (proleptic Gregorian), after H. Hinnant's algorithm.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc(secs)
}

/// Appends `lines` (each prefixed with `stamp`), trimming the log first if it is
/// too long; waits for the disk when `sync`.
pub fn append(state: &dyn Dir, stamp: &str, lines: &[String], sync: bool) -> io::Result<()> {
    append_bounded(state, stamp, lines, MAX_LOG, sync)
}

fn append_bounded(state: &dyn Dir, stamp: &str, lines: &[String], max: usize, sync: bool) -> io::Result<()> {
    let mut text = String::new();
    // A damaged log (a FIFO, a symlink, far too large) is set aside and a new
    // one started; the first line of the new one says so.
    let mut aside = None;
    let old = match state.read(BOOT_LOG, 4 * max) {
        Ok(old) => old,
        Err(e) if crate::slots::dir::is_invalid(&e) => {
            let to = crate::slots::dir::set_aside(state, BOOT_LOG)?;
            warn!("{}/{BOOT_LOG} is invalid ({e}): set aside as {to}", state.label());
            aside = Some(format!("{stamp} {BOOT_LOG} was invalid ({}): set aside as {to}\n", e.to_string().replace('\n', " ")));
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(a) = aside {
        text.push_str(&a);
    }
    for l in lines {
        let one_line = l.replace('\n', " ");
        text.push_str(&format!("{stamp} {one_line}\n"));
    }
    if let Some(old) = old {
        if old.len() + text.len() > max {
            let mut kept = kept_tail(&old, max).to_vec();
            kept.extend_from_slice(text.as_bytes());
            return write_atomic(state, BOOT_LOG, &kept);
        }
    }
    if sync {
        state.append_synced(BOOT_LOG, text.as_bytes())
    } else {
        state.append(BOOT_LOG, text.as_bytes())
    }
}

/// What a trim keeps of a log `old` bounded to `max` bytes: at most its last
/// `max / 2` bytes, starting after a newline (nothing when there is none). Pure.
pub fn kept_tail(old: &[u8], max: usize) -> &[u8] {
    let keep_from = old.len().saturating_sub(max / 2);
    let start = old
        .get(keep_from..)
        .and_then(|tail| tail.iter().position(|b| *b == b'\n'))
        .map(|p| keep_from + p + 1)
        .unwrap_or(old.len());
    old.get(start..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::dir::RealDir;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951782400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1795305600 + 3661), "2026-11-22T01:01:01Z");
    }

    #[test]
    fn log_stays_bounded_and_keeps_the_newest_lines() {
        let t = tempfile::tempdir().unwrap();
        let d = RealDir::open(t.path(), false).unwrap();
        for i in 0..300 {
            append_bounded(&d, "T", &[format!("event number {i} {}", "x".repeat(80))], 4096, i % 2 == 0).unwrap();
        }
        let text = std::fs::read_to_string(t.path().join(BOOT_LOG)).unwrap();
        assert!(text.len() <= 4096, "{}", text.len());
        assert!(text.ends_with(&format!("event number 299 {}\n", "x".repeat(80))));
        assert!(text.starts_with("T event number "), "trimmed at a line boundary");
    }
}
