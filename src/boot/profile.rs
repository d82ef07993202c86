//! Where hninit's time goes, for `hn.debug`: at the end of each step, the wall
//! clock, the process's CPU time (every thread, finished ones included) and the
//! CPU time the module loader spent inside `finit_module` (the kernel's work).
//! The difference is hninit's own CPU time; the rest of the wall time is
//! waiting (devices, disk reads). One debug line at the handoff gives the table.

use crate::modules::load::kernel_load_time;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
struct Sample {
    wall: Instant,
    cpu: Duration,
    kernel: Duration,
}

impl Sample {
    fn now() -> Sample {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Sample {
            wall: Instant::now(),
            cpu: Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32),
            kernel: kernel_load_time().0,
        }
    }
}

/// Per step: (step, wall, hninit's own CPU, CPU in finit_module).
pub struct Profile {
    first: Sample,
    last: Sample,
    rows: Vec<(&'static str, Duration, Duration, Duration)>,
}

impl Default for Profile {
    fn default() -> Self {
        let s = Sample::now();
        Profile { first: s, last: s, rows: Vec::new() }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Profile {
    /// Ends the step `step` (a short label) at this instant.
    pub fn mark(&mut self, step: &'static str) {
        let now = Sample::now();
        let kernel = now.kernel.saturating_sub(self.last.kernel);
        let own = now.cpu.saturating_sub(self.last.cpu).saturating_sub(kernel);
        self.rows.push((step, now.wall - self.last.wall, own, kernel));
        self.last = now;
    }

    /// `profile: step wall/own cpu/module cpu ms: 2 cmdline 4.1/0.3/0; …; total …`.
    pub fn summary(&self) -> String {
        let mut s = String::from("profile, ms wall/own cpu/finit_module cpu:");
        for (step, wall, own, kernel) in &self.rows {
            let _ = write!(s, " {step} {:.1}/{:.1}/{:.1};", ms(*wall), ms(*own), ms(*kernel));
        }
        let (kernel, calls) = kernel_load_time();
        let cpu = self.last.cpu.saturating_sub(self.first.cpu);
        let _ = write!(
            s,
            " total {:.1}/{:.1}/{:.1} ({calls} finit_module calls)",
            ms(self.last.wall - self.first.wall),
            ms(cpu.saturating_sub(kernel)),
            ms(kernel)
        );
        s
    }
}
