//! Small shared helpers, now in the product (`hninit::image::tools`): re-exported,
//! plus the scratch directory under `target/xtask/`.

pub use hninit::image::tools::*;
use anyhow::{Context, Result};
use std::fs;
use std::path::PathBuf;

/// A fresh, empty scratch directory `build_dir()/<prefix>-<pid>-<n>`.
pub fn scratch_dir(prefix: &str) -> Result<PathBuf> {
    let d = crate::paths::build_dir().join(format!("{prefix}-{}", unique_suffix()));
    remove_any(&d)?;
    fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

