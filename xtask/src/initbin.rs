//! Building the hninit `init` binary: a static musl release build of the
//! workspace's `hninit` package, located through cargo's JSON messages.

use crate::paths::workspace_root;
use crate::util;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The target triple the init is built for.
pub const INIT_TARGET: &str = "x86_64-unknown-linux-musl";

/// The cargo executable that runs us (`$CARGO`), else `cargo` from `PATH`.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo build --release --target x86_64-unknown-linux-musl -p hninit --bin NAME`;
/// returns the executable's path. Progress goes to stderr. `init` is built without
/// the default features: the `remote` feature (HTTP, TLS, zstd for `hnctl stage
/// URL`) is hnctl's only, and /init's build need not compile it.
pub fn build_workspace_bin(name: &str) -> Result<PathBuf> {
    let mut c = cargo();
    c.current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--target",
            INIT_TARGET,
            "-p",
            "hninit",
            "--bin",
            name,
        ])
        .args(if name == "init" { &["--no-default-features"][..] } else { &[] })
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let shown = util::display_cmd(&c);
    let mut child = c
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let mut exe = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name {
            if let Some(p) = msg["executable"].as_str() {
                exe = Some(PathBuf::from(p));
            }
        }
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("`{shown}` failed ({st})");
    }
    exe.with_context(|| format!("cargo built no executable named {name}"))
}

/// The size /init must stay under (stripped, static).
pub const INIT_BUDGET: u64 = 1 << 20;

/// Builds the init (static, release) and returns its path, e.g.
/// `target/x86_64-unknown-linux-musl/release/init`; fails if it is not static or
/// is over the 1 MiB budget.
pub fn build_init() -> Result<PathBuf> {
    let p = build_workspace_bin("init")?;
    if !util::is_static_elf(&p)? {
        bail!("{} is not a static executable", p.display());
    }
    let size = std::fs::metadata(&p)?.len();
    if size >= INIT_BUDGET {
        bail!("{} is {size} bytes: over the 1 MiB budget for /init", p.display());
    }
    Ok(p)
}
