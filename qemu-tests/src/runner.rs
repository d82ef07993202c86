//! Runs a list of scenarios on a small job pool (default 2 at a time): filtering,
//! per-scenario work dirs, panic capture, PASS/FAIL lines with console tails, and the
//! final `N passed, N failed` summary.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Once};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{ConsoleHandle, Failure, Vm, TAIL_LINES};

/// One named test: `run` gets a [`Ctx`] and returns `Ok(())` on success.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// Unique; also the name of its work dir.
    pub name: &'static str,
    /// One line shown by `--list`.
    pub about: &'static str,
    pub run: fn(&mut Ctx) -> Result<(), Failure>,
}

/// How to run: parsed from the command line by `main.rs`.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// Scenarios running at once (at least 1).
    pub jobs: usize,
    /// Substrings of scenario names; empty = all. Each must match something.
    pub filter: Vec<String>,
    /// Print the selected scenarios instead of running them.
    pub list_only: bool,
    /// false = start no further scenario after the first failure (those are skipped).
    pub keep_going: bool,
    /// Parent of the per-scenario work dirs.
    pub out_dir: PathBuf,
}

impl Default for RunArgs {
    fn default() -> RunArgs {
        RunArgs {
            jobs: 2,
            filter: Vec::new(),
            list_only: false,
            keep_going: true,
            out_dir: default_out_dir(),
        }
    }
}

/// `$QEMU_TESTS_OUT` if set, else `<workspace>/target/qemu-tests`.
pub fn default_out_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QEMU_TESTS_OUT") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target")
        .join("qemu-tests")
}

/// What a running scenario can use.
pub struct Ctx {
    name: &'static str,
    dir: PathBuf,
    started: Instant,
    notes: Vec<String>,
    spawned: usize,
    last: Option<ConsoleHandle>,
}

impl Ctx {
    fn new(name: &'static str, dir: PathBuf) -> Ctx {
        Ctx {
            name,
            dir,
            started: Instant::now(),
            notes: Vec::new(),
            spawned: 0,
            last: None,
        }
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The scenario's own work dir (`<out>/<name>/`), empty at the start of each run.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Time since the scenario started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Spawns a VM whose console goes to `<dir>/console.log` (the second one in the
    /// same scenario to `console-2.log`, and so on). The runner prints the last VM's
    /// console tail if the scenario fails.
    pub fn spawn(&mut self, cmd: Command, timeout: Duration) -> Result<Vm, Failure> {
        self.spawned += 1;
        let file = match self.spawned {
            1 => "console.log".to_owned(),
            n => format!("console-{n}.log"),
        };
        let vm = Vm::spawn(cmd, &self.dir.join(file), timeout)?;
        self.last = Some(vm.console_handle());
        Ok(vm)
    }

    /// Records a note (printed under the scenario's result line, stamped with the
    /// time since the scenario started), e.g. `ctx.note(format!("booted in {:?}", t))`.
    pub fn note(&mut self, msg: impl fmt::Display) {
        self.notes.push(format!(
            "[{:6.1}s] {msg}",
            self.started.elapsed().as_secs_f64()
        ));
    }
}

struct Outcome {
    name: &'static str,
    took: Duration,
    result: Result<(), Failure>,
    notes: Vec<String>,
    last: Option<ConsoleHandle>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    passed: usize,
    failed: usize,
    skipped: usize,
    /// Something went wrong before running (bad filter, duplicate names).
    error: bool,
}

impl Summary {
    fn ok(&self) -> bool {
        !self.error && self.failed == 0 && self.passed > 0
    }
}

/// Runs (or lists) the selected scenarios, printing to stdout. Returns true only if
/// at least one scenario ran and none failed (for `--list`: if anything was selected).
pub fn run_all(scenarios: &[Scenario], args: RunArgs) -> bool {
    let mut out = std::io::stdout();
    if args.list_only {
        return list_into(scenarios, &args, &mut out);
    }
    run_into(scenarios, &args, &mut out).ok()
}

/// Applies the filter; prints an error and returns None if a filter word matches
/// nothing or names are not unique.
fn select<'a>(
    scenarios: &'a [Scenario],
    args: &RunArgs,
    out: &mut dyn Write,
) -> Option<Vec<&'a Scenario>> {
    let mut names: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        let _ = writeln!(out, "error: scenario name {:?} is used twice", w[0]);
        return None;
    }
    let unmatched: Vec<&String> = args
        .filter
        .iter()
        .filter(|f| !scenarios.iter().any(|s| s.name.contains(f.as_str())))
        .collect();
    if !unmatched.is_empty() {
        let _ = writeln!(
            out,
            "error: no scenario matches filter {unmatched:?} (try --list)"
        );
        return None;
    }
    let chosen: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| {
            args.filter.is_empty() || args.filter.iter().any(|f| s.name.contains(f.as_str()))
        })
        .collect();
    if chosen.is_empty() {
        let _ = writeln!(out, "error: no scenarios to run");
        return None;
    }
    Some(chosen)
}

fn list_into(scenarios: &[Scenario], args: &RunArgs, out: &mut dyn Write) -> bool {
    let Some(chosen) = select(scenarios, args, out) else {
        return false;
    };
    let width = chosen.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in chosen {
        let _ = writeln!(out, "{:width$}  {}", s.name, s.about);
    }
    true
}

fn run_into(scenarios: &[Scenario], args: &RunArgs, out: &mut dyn Write) -> Summary {
    let mut sum = Summary::default();
    let Some(chosen) = select(scenarios, args, out) else {
        sum.error = true;
        let _ = writeln!(out, "0 passed, 0 failed");
        return sum;
    };
    install_panic_hook();

    let jobs = args.jobs.clamp(1, chosen.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Outcome>();
    thread::scope(|scope| {
        for j in 0..jobs {
            let tx = tx.clone();
            let (next, stop, chosen) = (&next, &stop, &chosen);
            thread::Builder::new()
                .name(format!("job-{j}"))
                .spawn_scoped(scope, move || loop {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(s) = chosen.get(i) else { break };
                    let outcome = run_one(s, &args.out_dir);
                    if outcome.result.is_err() && !args.keep_going {
                        stop.store(true, Ordering::SeqCst);
                    }
                    if tx.send(outcome).is_err() {
                        break;
                    }
                })
                .expect("spawning job thread");
        }
        drop(tx);
        for o in rx {
            report(&o, out);
            match o.result {
                Ok(()) => sum.passed += 1,
                Err(_) => sum.failed += 1,
            }
        }
    });
    sum.skipped = chosen.len() - sum.passed - sum.failed;
    let mut line = format!("{} passed, {} failed", sum.passed, sum.failed);
    if sum.skipped > 0 {
        line.push_str(&format!(", {} skipped", sum.skipped));
    }
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    sum
}

fn run_one(s: &Scenario, out_dir: &Path) -> Outcome {
    let started = Instant::now();
    let dir = out_dir.join(s.name);
    let mut ctx = Ctx::new(s.name, dir.clone());
    let result = match fresh_dir(&dir) {
        Err(e) => Err(Failure::new(format!(
            "preparing work dir {}: {e}",
            dir.display()
        ))),
        Ok(()) => {
            CAPTURE_PANIC.with(|c| c.set(true));
            let r = panic::catch_unwind(AssertUnwindSafe(|| (s.run)(&mut ctx)));
            CAPTURE_PANIC.with(|c| c.set(false));
            match r {
                Ok(r) => r,
                Err(payload) => {
                    let msg = PANIC_MSG
                        .with(|m| m.borrow_mut().take())
                        .unwrap_or_else(|| payload_str(payload.as_ref()).to_owned());
                    Err(Failure::new(format!("panicked: {msg}")))
                }
            }
        }
    };
    Outcome {
        name: s.name,
        took: started.elapsed(),
        result,
        notes: ctx.notes,
        last: ctx.last,
    }
}

fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)
}

fn report(o: &Outcome, out: &mut dyn Write) {
    let took = o.took.as_secs_f64();
    match &o.result {
        Ok(()) => {
            let _ = writeln!(out, "PASS {} ({took:.1}s)", o.name);
            write_notes(o, out);
        }
        Err(f) => {
            let mut lines = f.message.lines();
            let _ = writeln!(
                out,
                "FAIL {} ({took:.1}s): {}",
                o.name,
                lines.next().unwrap_or("")
            );
            for l in lines {
                let _ = writeln!(out, "    {l}");
            }
            write_notes(o, out);
            // Prefer the tail captured with the failure; else the scenario's last VM.
            let (tail, log) = if !f.tail.is_empty() {
                (f.tail.clone(), f.log.clone())
            } else if let Some(h) = &o.last {
                (h.tail(TAIL_LINES), Some(h.log.clone()))
            } else {
                (String::new(), f.log.clone())
            };
            if !tail.is_empty() {
                let _ = writeln!(out, "    console tail:");
                for l in tail.lines() {
                    let _ = writeln!(out, "      | {l}");
                }
            }
            if let Some(log) = log {
                let _ = writeln!(out, "    console log: {}", log.display());
            }
        }
    }
    let _ = out.flush();
}

fn write_notes(o: &Outcome, out: &mut dyn Write) {
    for n in &o.notes {
        let _ = writeln!(out, "    {n}");
    }
}

// --- panic capture: message + location of a panic inside a scenario -------------

thread_local! {
    static CAPTURE_PANIC: Cell<bool> = const { Cell::new(false) };
    static PANIC_MSG: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Chains a hook that, on scenario threads, records the panic instead of printing
/// it (the runner prints it as the FAIL message); other threads keep the old hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURE_PANIC.with(|c| c.get()) {
                let mut msg = payload_str(info.payload()).to_owned();
                if let Some(loc) = info.location() {
                    msg.push_str(&format!(" (at {}:{})", loc.file(), loc.line()));
                }
                PANIC_MSG.with(|m| *m.borrow_mut() = Some(msg));
            } else {
                prev(info);
            }
        }));
    });
}

fn payload_str(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> RunArgs {
        RunArgs {
            out_dir: dir.to_path_buf(),
            ..RunArgs::default()
        }
    }

    fn run(list: &[Scenario], a: &RunArgs) -> (Summary, String) {
        let mut out = Vec::new();
        let s = run_into(list, a, &mut out);
        (s, String::from_utf8(out).unwrap())
    }

    fn ok(_: &mut Ctx) -> Result<(), Failure> {
        Ok(())
    }
    fn fails(ctx: &mut Ctx) -> Result<(), Failure> {
        ctx.note("about to fail");
        Err(Failure::new("it broke\nsecond line"))
    }
    fn panics(_: &mut Ctx) -> Result<(), Failure> {
        panic!("boom {}", 7)
    }
    fn vm_then_other_failure(ctx: &mut Ctx) -> Result<(), Failure> {
        let mut c = Command::new("sh");
        c.args(["-c", "echo VM-OUTPUT-LINE; sleep 100"]);
        let vm = ctx.spawn(c, Duration::from_secs(30))?;
        vm.expect("VM-OUTPUT-LINE", Duration::from_secs(5))?;
        Err(Failure::new("checking the disk afterwards failed"))
    }
    fn expect_fails(ctx: &mut Ctx) -> Result<(), Failure> {
        let mut c = Command::new("sh");
        c.args(["-c", "echo only-this"]);
        let vm = ctx.spawn(c, Duration::from_secs(30))?;
        vm.expect("missing-line", Duration::from_secs(5))?;
        Ok(())
    }

    const fn sc(name: &'static str, run: fn(&mut Ctx) -> Result<(), Failure>) -> Scenario {
        Scenario {
            name,
            about: "test",
            run,
        }
    }

    #[test]
    fn summary_and_status() {
        let d = tempfile::tempdir().unwrap();
        let list = [
            sc("a-ok", ok),
            sc("b-fails", fails),
            sc("c-panics", panics),
            sc("d-ok", ok),
        ];
        let (s, out) = run(&list, &args(d.path()));
        assert_eq!((s.passed, s.failed, s.skipped), (2, 2, 0));
        assert!(!s.ok());
        assert_eq!(out.lines().last().unwrap(), "2 passed, 2 failed", "{out}");
        assert!(out.contains("PASS a-ok ("), "{out}");
        assert!(out.contains("FAIL b-fails ("), "{out}");
        assert!(out.contains("): it broke\n    second line\n"), "{out}");
        assert!(out.contains("] about to fail"), "{out}");
        assert!(out.contains("panicked: boom 7 (at "), "{out}");
        assert_eq!(out.matches(" passed, ").count(), 1);
    }

    #[test]
    fn all_pass_is_ok() {
        let d = tempfile::tempdir().unwrap();
        let (s, out) = run(&[sc("x", ok), sc("y", ok), sc("z", ok)], &args(d.path()));
        assert!(s.ok());
        assert_eq!(out.lines().last().unwrap(), "3 passed, 0 failed");
    }

    #[test]
    fn filter_selects_and_unmatched_filter_is_error() {
        let d = tempfile::tempdir().unwrap();
        let list = [
            sc("boot-ext4", ok),
            sc("boot-btrfs", fails),
            sc("kexec", ok),
        ];
        let mut a = args(d.path());
        a.filter = vec!["ext4".into(), "kexec".into()];
        let (s, out) = run(&list, &a);
        assert!(s.ok(), "{out}");
        assert_eq!(out.lines().last().unwrap(), "2 passed, 0 failed");

        a.filter = vec!["ext4".into(), "nosuch".into()];
        let (s, out) = run(&list, &a);
        assert!(!s.ok());
        assert!(out.contains("nosuch"), "{out}");
        assert_eq!(out.lines().last().unwrap(), "0 passed, 0 failed");

        let (s, _) = run(&[], &args(d.path()));
        assert!(!s.ok(), "nothing ran is a failure");
    }

    #[test]
    fn list_only() {
        let d = tempfile::tempdir().unwrap();
        let mut a = args(d.path());
        a.list_only = true;
        let mut out = Vec::new();
        assert!(list_into(&[sc("one", fails), sc("two", ok)], &a, &mut out));
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, "one  test\ntwo  test\n");
        a.filter = vec!["three".into()];
        assert!(!list_into(&[sc("one", fails)], &a, &mut Vec::new()));
    }

    #[test]
    fn duplicate_names_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        let (s, out) = run(&[sc("same", ok), sc("same", ok)], &args(d.path()));
        assert!(s.error && !s.ok(), "{out}");
    }

    #[test]
    fn fail_fast_skips_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let mut a = args(d.path());
        a.jobs = 1;
        a.keep_going = false;
        let (s, out) = run(&[sc("f1", fails), sc("p1", ok), sc("p2", ok)], &a);
        assert_eq!((s.passed, s.failed, s.skipped), (0, 1, 2));
        assert_eq!(out.lines().last().unwrap(), "0 passed, 1 failed, 2 skipped");
    }

    #[test]
    fn tail_of_last_vm_printed_when_failure_has_none() {
        let d = tempfile::tempdir().unwrap();
        let (s, out) = run(&[sc("vm-other", vm_then_other_failure)], &args(d.path()));
        assert_eq!(s.failed, 1);
        assert!(out.contains("      | VM-OUTPUT-LINE"), "{out}");
        let log = d.path().join("vm-other").join("console.log");
        assert!(
            out.contains(&format!("console log: {}", log.display())),
            "{out}"
        );
        assert!(std::fs::read_to_string(log)
            .unwrap()
            .contains("VM-OUTPUT-LINE"));
    }

    #[test]
    fn expect_failure_carries_tail() {
        let d = tempfile::tempdir().unwrap();
        let (s, out) = run(&[sc("exp", expect_fails)], &args(d.path()));
        assert_eq!(s.failed, 1);
        assert!(out.contains("FAIL exp ("), "{out}");
        assert!(out.contains("\"missing-line\""), "{out}");
        assert!(out.contains("      | only-this"), "{out}");
    }

    #[test]
    fn work_dir_is_recreated() {
        fn check_empty(ctx: &mut Ctx) -> Result<(), Failure> {
            let n = std::fs::read_dir(ctx.dir())?.count();
            std::fs::write(ctx.dir().join("stale"), "x")?;
            if n == 0 {
                Ok(())
            } else {
                Err(Failure::new(format!("{n} entries left over")))
            }
        }
        let d = tempfile::tempdir().unwrap();
        let list = [sc("fresh", check_empty)];
        assert!(run(&list, &args(d.path())).0.ok());
        assert!(d.path().join("fresh/stale").exists());
        assert!(run(&list, &args(d.path())).0.ok());
    }

    #[test]
    fn two_jobs_run_concurrently() {
        // Each scenario waits (bounded) for the other to have started: only passes
        // if both run at the same time.
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        fn meet(_: &mut Ctx) -> Result<(), Failure> {
            STARTED.fetch_add(1, Ordering::SeqCst);
            let until = Instant::now() + Duration::from_secs(10);
            while STARTED.load(Ordering::SeqCst) < 2 {
                if Instant::now() > until {
                    return Err(Failure::new("the other job never started"));
                }
                thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        }
        let d = tempfile::tempdir().unwrap();
        let (s, out) = run(&[sc("m1", meet), sc("m2", meet)], &args(d.path()));
        assert!(s.ok(), "{out}");
    }
}
