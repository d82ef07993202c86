//! What happens when the boot cannot go on: one clear message of what was tried
//! and what was found (every block device with type and label; modules the
//! kernel asked for that the initramfs lacks), then the `hn.on_error` policy:
//! reboot after `hn.reboot_delay` (default), halt, or a shell if the initramfs
//! has one. Never returns, never panics.

use crate::cmdline::{Cmdline, OnError};
use crate::error::BootError;

use rustix::system::RebootCommand;
use std::path::Path;
use std::time::Duration;

/// Prints the error and its diagnosis, then follows the policy. Never returns.
pub fn fail(policy: Policy, err: &BootError, diagnosis: &[String]) -> ! {
    crit!("boot failed: {err}");
    for line in diagnosis {
        error!("  {line}");
    }
    follow_policy(policy)
}

/// What the command line says to do after a failure.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// `hn.on_error=`.
    pub on_error: OnError,
    /// `hn.reboot_delay=` (else `panic=`, else 30 s).
    pub reboot_delay: Duration,
}

impl Policy {
    pub fn from_cmdline(cmd: &Cmdline) -> Policy {
        Policy { on_error: cmd.on_error, reboot_delay: cmd.reboot_delay }
    }
}

pub fn follow_policy(cmd: Policy) -> ! {
    match cmd.on_error {
        OnError::Shell if Path::new("/bin/sh").exists() => {
            crit!("starting /bin/sh on the console (hn.on_error=shell); leaving it reboots");
            info!("shell ended ({})", run_shell());
            reboot(Duration::ZERO)
        }
        OnError::Shell => {
            crit!("hn.on_error=shell but this initramfs has no /bin/sh; rebooting in {:.0} s instead", cmd.reboot_delay.as_secs_f64());
            reboot(cmd.reboot_delay)
        }
        OnError::Halt => {
            crit!("system halted (hn.on_error=halt)");
            rustix::fs::sync();
            crate::log::ignored(rustix::system::reboot(RebootCommand::Halt), "reboot(HALT)", "parked below either way");
            park()
        }
        OnError::Reboot => {
            crit!("rebooting in {:.0} s (hn.on_error=reboot; set hn.reboot_delay= or hn.on_error=halt|shell to change)", cmd.reboot_delay.as_secs_f64());
            reboot(cmd.reboot_delay)
        }
    }
}

/// Runs `/bin/sh -i` on our console and waits for it; says how it ended.
fn run_shell() -> String {
    match crate::boot::step10_handoff::Argv::new("/bin/sh", &["-i".into()]) {
        Ok(argv) => run(&argv),
        Err(e) => format!("cannot start it: {e}"),
    }
}

/// Runs a program and waits for it: "exit status N" or why not.
fn run(argv: &crate::boot::step10_handoff::Argv) -> String {
    // SAFETY: the child only calls execv and _exit (no allocation, no locks).
    match unsafe { libc::fork() } {
        -1 => format!("cannot fork: {}", std::io::Error::last_os_error()),
        0 => {
            argv.exec();
            // SAFETY: ends the child without running any of PID 1's cleanup.
            unsafe { libc::_exit(127) }
        }
        pid => loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer.
            if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
                return if libc::WIFEXITED(status) {
                    format!("exit status {}", libc::WEXITSTATUS(status))
                } else {
                    format!("wait status {status:#x}")
                };
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return format!("cannot wait for it: {e}");
            }
        },
    }
}

pub fn reboot(after: Duration) -> ! {
    std::thread::sleep(after);
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(RebootCommand::Restart) {
        crit!("reboot failed: {e}");
    }
    park()
}

fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::step10_handoff::Argv;

    #[test]
    fn runs_a_program_and_reports_its_status() {
        let argv = Argv::new("/bin/sh", &["-c".into(), "exit 3".into()]).unwrap();
        assert_eq!(run(&argv), "exit status 3");
        // The program starts with SIGPIPE at its default, not ignored as in Rust.
        let argv = Argv::new("/bin/sh", &["-c".into(), "grep -q '^SigIgn:.*[13579bdf]...$' /proc/self/status && exit 9; exit 0".into()]).unwrap();
        assert_eq!(run(&argv), "exit status 0");
        let argv = Argv::new("/nonexistent/sh", &[]).unwrap();
        assert_eq!(run(&argv), "exit status 127");
        assert!(Argv::new("/bin/sh", &["a\0b".into()]).is_err());
    }
}
