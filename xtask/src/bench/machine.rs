//! The machine a bench ran on, for the report: CPU, memory, QEMU, host and
//! guest kernels, date, commit, and the host's load average.

use super::boot::load_average;
use super::prepare::package_version;
use crate::kernel::Kernel;
use crate::paths::workspace_root;
use crate::qemu::QEMU;
use crate::util;
use serde::Serialize;
use std::fs;
use std::process::Command;

#[derive(Debug, Clone, Serialize)]
pub(super) struct Machine {
    pub(super) nproc: usize,
    pub(super) memory: String,
    pub(super) cpu: String,
    pub(super) qemu: String,
    pub(super) host_kernel: String,
    pub(super) guest_kernel: String,
    pub(super) date: String,
    pub(super) commit: String,
    /// The host's 1-minute load average when the bench started and ended.
    pub(super) load_start: Option<f64>,
    pub(super) load_end: Option<f64>,
}

impl Machine {
    pub(super) fn probe(kernel: &Kernel) -> Machine {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "?".into());
        let first_line = |c: &mut Command| {
            util::run_stdout(c)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_string))
                .unwrap_or_else(|| "?".into())
        };
        let root = workspace_root();
        let mut commit = first_line(Command::new("git").arg("-C").arg(&root).args([
            "rev-parse",
            "--short",
            "HEAD",
        ]));
        if util::run_stdout(
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["status", "--porcelain"]),
        )
        .is_ok_and(|s| !s.trim().is_empty())
        {
            commit.push_str(" + uncommitted changes");
        }
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory: format!("{:.1} GiB", mem_kb as f64 / 1048576.0),
            cpu,
            qemu: first_line(Command::new(QEMU).arg("--version")),
            host_kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            guest_kernel: format!(
                "{} ({})",
                kernel.release,
                package_version(&format!("linux-image-{}", kernel.release))
                    .or_else(|| kernel_package_version(kernel))
                    .unwrap_or_else(|| "Debian".into())
            ),
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            commit,
            load_start: None,
            load_end: load_average(),
        }
    }
}

/// The Debian package version recorded in the kernel cache's directory name.
pub(super) fn kernel_package_version(kernel: &Kernel) -> Option<String> {
    kernel.vmlinuz.ancestors().find_map(|a| {
        let name = a.file_name()?.to_str()?;
        let (pkg, ver) = name.split_once('_')?;
        pkg.starts_with("linux-image-")
            .then(|| format!("{pkg} {}", ver.replace("%3a", ":")))
    })
}
