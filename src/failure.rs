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
pub fn fail(cmd: &Cmdline, err: &BootError, diagnosis: &[String]) -> ! {
    crit!("boot failed: {err}");
    for line in diagnosis {
        error!("  {line}");
    }
    follow_policy(cmd)
}

pub fn follow_policy(cmd: &Cmdline) -> ! {
    match cmd.on_error {
        OnError::Shell if Path::new("/bin/sh").exists() => {
            crit!("starting /bin/sh on the console (hn.on_error=shell); leaving it reboots");
            let status = std::process::Command::new("/bin/sh").arg("-i").status();
            info!("shell ended ({status:?})");
            reboot(Duration::ZERO)
        }
        OnError::Shell => {
            crit!("hn.on_error=shell but this initramfs has no /bin/sh; rebooting in {:.0} s instead", cmd.reboot_delay.as_secs_f64());
            reboot(cmd.reboot_delay)
        }
        OnError::Halt => {
            crit!("system halted (hn.on_error=halt)");
            rustix::fs::sync();
            let _ = rustix::system::reboot(RebootCommand::Halt);
            park()
        }
        OnError::Reboot => {
            crit!("rebooting in {:.0} s (hn.on_error=reboot; set hn.reboot_delay= or hn.on_error=halt|shell to change)", cmd.reboot_delay.as_secs_f64());
            reboot(cmd.reboot_delay)
        }
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
