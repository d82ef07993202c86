//! The scenario list. Placeholder: two harness self-tests that need no QEMU (the real
//! boot scenarios replace them).

use std::process::Command;
use std::time::Duration;

use qemu_tests::{Ctx, Failure, Scenario};

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "selftest-expect",
            about: "harness self-test: a shell prints lines, expect finds them in order",
            run: selftest_expect,
        },
        Scenario {
            name: "selftest-missing-line",
            about: "harness self-test: a missing line is detected and the child is killed",
            run: selftest_missing_line,
        },
    ]
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

fn selftest_expect(ctx: &mut Ctx) -> Result<(), Failure> {
    let mut vm = ctx.spawn(
        sh("echo hello; echo READY; sleep 1; echo done"),
        Duration::from_secs(30),
    )?;
    vm.forbid("Kernel panic");
    vm.expect("hello", Duration::from_secs(5))?;
    vm.expect("READY", Duration::from_secs(5))?;
    ctx.note(format!("READY after {:.2}s", vm.elapsed().as_secs_f64()));
    vm.expect("done", Duration::from_secs(5))?;
    let status = vm.wait_exit(Duration::from_secs(5))?;
    if !status.success() {
        return Err(Failure::new(format!("shell exited with {status}")));
    }
    Ok(())
}

/// Expected-to-fail inside: passes only if the harness reports the missing line.
fn selftest_missing_line(ctx: &mut Ctx) -> Result<(), Failure> {
    let mut vm = ctx.spawn(sh("echo booting; sleep 100"), Duration::from_secs(30))?;
    vm.expect("booting", Duration::from_secs(5))?;
    match vm.expect("login:", Duration::from_millis(500)) {
        Ok(line) => {
            return Err(Failure::new(format!(
                "matched a line never printed: {line:?}"
            )))
        }
        Err(f) if f.message.contains("\"login:\"") => ctx.note(format!("detected: {f}")),
        Err(f) => return Err(Failure::new(format!("wrong failure message: {f}"))),
    }
    vm.kill();
    match vm.try_status() {
        Some(s) if !s.success() => Ok(()),
        other => Err(Failure::new(format!("child not killed: status {other:?}"))),
    }
}
