//! A child process whose console we read (QEMU, or any command in a test):
//! starting it in its own process group, killing that whole group, and turning
//! the raw bytes it prints into clean text lines (ANSI CSI and string
//! sequences such as OSC, `\r` and other control characters stripped).
//!
//! Shared by `cargo xtask bench` ([`crate::bench`]) and the `qemu-tests`
//! harness, so that both read the same text from the same console.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

// ---------------------------------------------------------------------------
// Process group

/// Makes `cmd` start in a new process group whose id is the child's pid, so
/// that [`kill_group`] takes it and everything it started, and nothing else.
pub fn in_new_group(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
}

/// SIGKILL to every process in group `pgid`; errors (group already gone) ignored.
pub fn kill_group(pgid: u32) {
    if let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Kills a child's process group when dropped, unless disarmed (the child was
/// started with [`in_new_group`]).
#[derive(Debug)]
pub struct GroupGuard(Option<u32>);

impl GroupGuard {
    /// Guards the group led by `child`.
    pub fn of(child: &Child) -> GroupGuard {
        GroupGuard(Some(child.id()))
    }

    /// Kills the group now (it stays armed: dropping kills again, harmlessly).
    pub fn kill(&self) {
        if let Some(pgid) = self.0 {
            kill_group(pgid);
        }
    }

    /// Leaves the group alone from now on (e.g. once its leader was reaped,
    /// after which the id may be reused).
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Cleaning

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
enum Esc {
    #[default]
    Ground,
    /// Saw ESC.
    Escaped,
    /// ESC followed by intermediates (0x20..=0x2F), waiting for the final byte.
    Inter,
    /// ESC [ ... waiting for the final byte (0x40..=0x7E).
    Csi,
    /// ESC ] / P / X / ^ / _ ... (OSC, DCS, SOS, PM, APC) terminated by BEL or ESC \.
    Str,
    /// ESC inside a string: `\` ends it.
    StrEscaped,
}

/// Streaming stripper of escape sequences and control characters: keeps its
/// state between calls, so a sequence split across reads is still removed.
/// Use one per stream.
#[derive(Clone, Copy, Default, Debug)]
pub struct Cleaner {
    state: Esc,
}

impl Cleaner {
    /// Feeds one byte; returns it if it is text to keep (`\t` and printable
    /// bytes outside escape sequences; UTF-8 continuation bytes included).
    pub fn push(&mut self, b: u8) -> Option<u8> {
        match self.state {
            Esc::Ground => match b {
                0x1b => {
                    self.state = Esc::Escaped;
                    None
                }
                b'\t' => Some(b),
                0x00..=0x1f | 0x7f => None, // \r and other controls
                _ => Some(b),
            },
            Esc::Escaped => {
                self.state = match b {
                    b'[' => Esc::Csi,
                    b']' | b'P' | b'X' | b'^' | b'_' => Esc::Str,
                    0x20..=0x2f => Esc::Inter,
                    _ => Esc::Ground,
                };
                None
            }
            Esc::Inter => {
                if !(0x20..=0x2f).contains(&b) {
                    self.state = Esc::Ground;
                }
                None
            }
            Esc::Csi => {
                if (0x40..=0x7e).contains(&b) {
                    self.state = Esc::Ground;
                }
                None
            }
            Esc::Str => {
                match b {
                    0x07 => self.state = Esc::Ground,
                    0x1b => self.state = Esc::StrEscaped,
                    _ => {}
                }
                None
            }
            Esc::StrEscaped => {
                self.state = if b == b'\\' { Esc::Ground } else { Esc::Str };
                None
            }
        }
    }
}

/// Strips ANSI escape sequences, `\r` and other control characters (except `\t`).
pub fn clean_line(raw: &[u8]) -> String {
    let mut c = Cleaner::default();
    let kept: Vec<u8> = raw.iter().filter_map(|&b| c.push(b)).collect();
    String::from_utf8_lossy(&kept).into_owned()
}

/// Splits one stream's bytes into cleaned lines at `\n` (the newline ends a
/// line even inside an escape sequence; the cleaner's state carries over).
#[derive(Default, Debug)]
pub struct LineSplitter {
    cleaner: Cleaner,
    line: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; calls `done` with each line completed by a `\n` in it.
    pub fn feed(&mut self, data: &[u8], mut done: impl FnMut(String)) {
        for &b in data {
            if b == b'\n' {
                done(String::from_utf8_lossy(&self.line).into_owned());
                self.line.clear();
            } else if let Some(c) = self.cleaner.push(b) {
                self.line.push(c);
            }
        }
    }

    /// The text after the last `\n`, if any (at end of stream).
    pub fn finish(self) -> Option<String> {
        (!self.line.is_empty()).then(|| String::from_utf8_lossy(&self.line).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_and_cr_are_stripped() {
        assert_eq!(clean_line(b"\x1b[0;32mOK\x1b[0m done\r"), "OK done");
        assert_eq!(
            clean_line(b"\x1bc\x1b[2J\x1b[1;1HBdsDxe: loading"),
            "BdsDxe: loading"
        );
    }

    #[test]
    fn osc_and_other_strings_are_stripped() {
        // OSC (window title, BEL-terminated), a charset designation with an
        // intermediate byte, a DCS ended by ESC \.
        assert_eq!(
            clean_line(b"\x1b]0;title\x07a\x1b(Bb\x1bP..\x1b\\c\tz"),
            "abc\tz"
        );
        // An OSC ended by ESC \ (ST) rather than BEL.
        assert_eq!(clean_line(b"\x1b]8;;http://x\x1b\\link"), "link");
    }

    #[test]
    fn utf8_text_is_kept() {
        assert_eq!(clean_line("init → root\r".as_bytes()), "init → root");
    }

    #[test]
    fn splitter_keeps_state_across_reads() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        s.feed(b"A\x1b[", |l| lines.push(l));
        s.feed(b"31mB\r\nsecond\x1b]0;t", |l| lines.push(l));
        s.feed(b"itle\x07 line\nrest", |l| lines.push(l));
        assert_eq!(lines, ["AB", "second line"]);
        assert_eq!(s.finish().as_deref(), Some("rest"));
        assert_eq!(LineSplitter::default().finish(), None);
    }

    #[test]
    fn guard_kills_the_group() {
        let mut c = Command::new("sh");
        c.args(["-c", "sleep 100 & wait"]);
        in_new_group(&mut c);
        let mut child = c.spawn().unwrap();
        let guard = GroupGuard::of(&child);
        drop(guard);
        // The shell dies with SIGKILL (not its own exit code 0 or 127).
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9), "{st:?}");
    }
}
