//! `qemu-tests [-j N] [--list] [--fail-fast] [--out DIR] [FILTER...]`: runs the boot
//! scenarios from `scenarios.rs`; exits non-zero if any failed or none ran.
//! `debian-newuser` runs only when named exactly (see `BY_NAME_ONLY`).

mod debian;
mod scenarios;

use std::path::PathBuf;

use clap::Parser;
use qemu_tests::{run_all, RunArgs};

#[derive(Parser)]
#[command(about = "Run the QEMU boot scenarios")]
struct Cli {
    /// Scenarios running at once.
    #[arg(short = 'j', long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// List the (filtered) scenarios instead of running them.
    #[arg(long)]
    list: bool,
    /// Start no further scenario after the first failure.
    #[arg(short = 'x', long)]
    fail_fast: bool,
    /// Parent dir of the per-scenario work dirs [default: $QEMU_TESTS_OUT or target/qemu-tests].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only scenarios whose name contains one of these substrings.
    filter: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let mut args = RunArgs {
        jobs: cli.jobs.into(),
        filter: cli.filter,
        list_only: cli.list,
        keep_going: !cli.fail_fast,
        ..RunArgs::default()
    };
    if let Some(out) = cli.out {
        args.out_dir = out;
    }
    // The long scenarios first, so the two job slots finish together.
    const LONG: [&str; 7] = [
        "debian-e2e",
        "debian-boot",
        "debian-stage-http",
        "power-cut-steps",
        "debian-platform",
        "debian-boot-bookworm",
        "power-cut-random",
    ];
    // Run only when named exactly (`cargo xtask test debian-newuser`): about
    // 13 min under TCG (a stock VM copies its / into an image, installs it,
    // four boots and two kernel package operations), too long for every run.
    const BY_NAME_ONLY: [&str; 1] = ["debian-newuser"];
    let named = |n: &str| args.filter.iter().any(|f| f == n);
    let mut all = debian::scenarios();
    all.extend(debian::platform_scenarios());
    all.extend(scenarios::all());
    all.retain(|s| !BY_NAME_ONLY.contains(&s.name) || named(s.name));
    all.sort_by_key(|s| LONG.iter().position(|l| *l == s.name).unwrap_or(LONG.len()));
    let ok = run_all(&all, args);
    std::process::exit(if ok { 0 } else { 1 });
}
