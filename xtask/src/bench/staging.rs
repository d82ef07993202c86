//! The staging comparison: `hnctl stage` (plain, `--sha256`, `--no-reflink`)
//! against `cp` + `sync FILE` and `sha256sum`, on the build directory's
//! filesystem and on a loop-mounted btrfs, with the page cache dropped before
//! each copy.

use super::report::human_bytes;
use super::BenchOptions;
use crate::initbin::build_workspace_bin;
use crate::util::{self, cmd};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The staging comparison.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct StagingSection {
    /// Why the section was not run.
    pub(super) skipped: Option<String>,
    pub(super) image_bytes: u64,
    pub(super) runs: usize,
    pub(super) caches_dropped: bool,
    pub(super) filesystems: Vec<StagingFs>,
    pub(super) notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct StagingFs {
    pub(super) name: String,
    pub(super) note: Option<String>,
    /// Method → seconds per run.
    pub(super) methods: Vec<StagingMethod>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct StagingMethod {
    pub(super) label: String,
    pub(super) secs: Vec<f64>,
    /// How hnctl copied (its own words), for hnctl rows.
    pub(super) how: Option<String>,
    pub(super) error: Option<String>,
}

/// The staging methods, in the order measured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    /// `cp` (reflink=auto, the default) and `sync FILE`.
    Cp,
    /// `cp --reflink=never` and `sync FILE`.
    CpNever,
    /// `sha256sum` of the copy just made (page cache warm, as after a cp).
    Sha256sum,
    HnctlStage,
    HnctlSha,
    HnctlNoReflink,
}

impl Method {
    pub(super) fn label(self) -> &'static str {
        match self {
            Method::Cp => "cp + sync FILE",
            Method::CpNever => "cp --reflink=never + sync FILE",
            Method::Sha256sum => "cp + sync FILE + sha256sum",
            Method::HnctlStage => "hnctl stage",
            Method::HnctlSha => "hnctl stage --sha256",
            Method::HnctlNoReflink => "hnctl stage --no-reflink",
        }
    }
}

/// The hnctl binary, if it has `stage`.
pub(super) fn find_hnctl() -> Result<PathBuf> {
    let p = build_workspace_bin("hnctl")?;
    let help = Command::new(&p).args(["stage", "--help"]).output()?;
    if !help.status.success() {
        bail!("`hnctl stage --help` fails: hnctl has no stage command yet");
    }
    Ok(p)
}

pub(super) fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

pub(super) fn bench_staging(opts: &BenchOptions, dir: &Path) -> StagingSection {
    let mut sec = StagingSection {
        runs: if opts.smoke {
            1
        } else {
            opts.staging_runs.max(1)
        },
        image_bytes: opts.staging_mib << 20,
        ..Default::default()
    };
    let hnctl = match find_hnctl() {
        Ok(p) => p,
        Err(e) => {
            sec.skipped = Some(format!("hnctl stage is not available: {e:#}"));
            return sec;
        }
    };
    sec.caches_dropped = drop_caches();
    let work = dir.join("staging");
    let res = (|| -> Result<()> {
        util::remove_any(&work)?;
        fs::create_dir_all(&work)?;
        let src = work.join("source.img");
        eprintln!(
            "bench: staging: making a {} image",
            human_bytes(sec.image_bytes)
        );
        make_stage_image(&src, sec.image_bytes)?;
        let sha = util::run_stdout(cmd("sha256sum").arg(&src))?;
        let sha = sha.split_whitespace().next().unwrap_or("").to_string();
        let fsname = mount_fstype(&work).unwrap_or_else(|| "?".into());
        let ext = measure_fs(
            &format!("{fsname} (the build directory's filesystem)"),
            &work,
            &src,
            &sha,
            &hnctl,
            sec.runs,
            &[
                Method::Cp,
                Method::Sha256sum,
                Method::HnctlStage,
                Method::HnctlSha,
                Method::HnctlNoReflink,
            ],
        );
        sec.filesystems.push(ext);
        match BtrfsMount::new(dir, sec.image_bytes) {
            Ok(m) => {
                let bsrc = m.dir.join("source.img");
                util::run(cmd("cp").arg("--reflink=never").arg(&src).arg(&bsrc))?;
                util::remove_any(&src)?;
                let r = measure_fs(
                    "btrfs (a file-backed filesystem on a loop device)",
                    &m.dir,
                    &bsrc,
                    &sha,
                    &hnctl,
                    sec.runs,
                    // The full-copy paths are measured on the first filesystem.
                    &[
                        Method::Cp,
                        Method::Sha256sum,
                        Method::HnctlStage,
                        Method::HnctlSha,
                    ],
                );
                sec.filesystems.push(r);
            }
            Err(e) => sec.filesystems.push(StagingFs {
                name: "btrfs".into(),
                note: Some(format!("not measured: {e:#}")),
                methods: Vec::new(),
            }),
        }
        Ok(())
    })();
    if let Err(e) = res {
        sec.notes.push(format!("staging stopped early: {e:#}"));
    }
    let _ = util::remove_any(&work);
    sec
}

/// The type of the filesystem `path` is on, from `/proc/self/mounts`.
pub(super) fn mount_fstype(path: &Path) -> Option<String> {
    let path = fs::canonicalize(path).ok()?;
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_, mnt, ty) = (w.next()?, w.next()?, w.next()?);
            let mnt = mnt.replace("\\040", " ");
            path.starts_with(&mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, t)| t)
}

/// A valid ext4 image of `bytes`, full of random data (no holes, nothing to compress).
pub(super) fn make_stage_image(path: &Path, bytes: u64) -> Result<()> {
    {
        let mut r = fs::File::open("/dev/urandom")?;
        let mut w = fs::File::create(path)?;
        let mut buf = vec![0u8; 4 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..n])?;
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
        w.sync_all()?;
    }
    // nodiscard: mke2fs would punch holes into a regular file.
    util::run(
        cmd("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard", "-L", "staged"])
            .arg(path),
    )
    .context("mkfs.ext4 of the staging image")
}

/// A btrfs filesystem in a file, loop-mounted for the time of the measurement.
pub(super) struct BtrfsMount {
    pub(super) dir: PathBuf,
    pub(super) file: PathBuf,
}

impl BtrfsMount {
    pub(super) fn new(parent: &Path, image_bytes: u64) -> Result<BtrfsMount> {
        let file = parent.join("btrfs.img");
        let dir = parent.join("btrfs-mnt");
        util::remove_any(&file)?;
        fs::create_dir_all(&dir)?;
        // The source, a full copy and slack.
        let size = image_bytes * 3 + (512 << 20);
        fs::File::create(&file)?.set_len(size)?;
        util::run(cmd("mkfs.btrfs").args(["-q", "-f"]).arg(&file)).context("mkfs.btrfs")?;
        util::run(
            cmd("mount")
                .args(["-t", "btrfs", "-o", "loop"])
                .arg(&file)
                .arg(&dir),
        )
        .context("mounting it (needs root and a free loop device)")?;
        Ok(BtrfsMount { dir, file })
    }
}

impl Drop for BtrfsMount {
    fn drop(&mut self) {
        let _ = util::run(cmd("umount").arg(&self.dir));
        let _ = fs::remove_dir(&self.dir);
        let _ = fs::remove_file(&self.file);
    }
}

pub(super) fn measure_fs(
    name: &str,
    dir: &Path,
    src: &Path,
    sha: &str,
    hnctl: &Path,
    runs: usize,
    methods: &[Method],
) -> StagingFs {
    let host = dir.join("host");
    let copy = dir.join("copy.img");
    let mut out = StagingFs {
        name: name.to_string(),
        note: None,
        methods: methods
            .iter()
            .map(|m| StagingMethod {
                label: m.label().into(),
                ..Default::default()
            })
            .collect(),
    };
    if let Err(e) = fs::create_dir_all(&host) {
        out.note = Some(format!("cannot create {}: {e}", host.display()));
        return out;
    }
    let clean = || {
        for f in [
            "hn-root-new.img",
            "hn-root-new.img.part",
            "hn-root-new.img.sha256",
        ] {
            let _ = fs::remove_file(host.join(f));
        }
    };
    for run in 0..runs {
        let mut cp_secs = None;
        // cp (and the sha256sum of its copy) first on even runs, last on odd ones,
        // so that neither side always follows the other.
        let mut order: Vec<usize> = (0..methods.len()).collect();
        if run % 2 == 1 {
            let is_cp = |i: &usize| {
                matches!(
                    methods[*i],
                    Method::Cp | Method::Sha256sum | Method::CpNever
                )
            };
            let (cp, rest): (Vec<usize>, Vec<usize>) = order.iter().partition(|i| is_cp(i));
            order = rest.into_iter().chain(cp).collect();
        }
        for i in order {
            let m = methods[i];
            if m != Method::Sha256sum {
                clean();
                let _ = fs::remove_file(&copy);
                drop_caches();
            }
            eprintln!(
                "bench: staging on {name}: run {}/{runs}: {}",
                run + 1,
                m.label()
            );
            let t = Instant::now();
            let res: Result<Option<String>> = match m {
                Method::Cp | Method::CpNever => (|| {
                    let mut c = cmd("cp");
                    if m == Method::CpNever {
                        c.arg("--reflink=never");
                    }
                    util::run(c.arg(src).arg(&copy))?;
                    util::run(cmd("sync").arg(&copy))?;
                    Ok(None)
                })(),
                Method::Sha256sum => (|| {
                    let got = util::run_stdout(cmd("sha256sum").arg(&copy))?;
                    if !got.starts_with(sha) {
                        bail!("sha256sum of the copy differs");
                    }
                    Ok(None)
                })(),
                Method::HnctlStage | Method::HnctlSha | Method::HnctlNoReflink => {
                    let mut c = Command::new(hnctl);
                    c.arg("--hostpart")
                        .arg(&host)
                        .args(["--real-root", "/hn-root.img", "stage"])
                        .arg(src);
                    if m == Method::HnctlSha {
                        c.args(["--sha256", sha]);
                    }
                    if m == Method::HnctlNoReflink {
                        c.arg("--no-reflink");
                    }
                    util::run_stdout(&mut c).map(|o| hnctl_how(&o))
                }
            };
            let mut secs = t.elapsed().as_secs_f64();
            let row = &mut out.methods[i];
            match res {
                Ok(how) => {
                    if m == Method::Sha256sum {
                        // "cp + sync + sha256sum": the copy's time plus the digest's.
                        match cp_secs {
                            Some(c) => secs += c,
                            None => {
                                row.error = Some("no cp before it".into());
                                continue;
                            }
                        }
                    }
                    if m == Method::Cp {
                        cp_secs = Some(secs);
                    }
                    row.secs.push(secs);
                    if how.is_some() {
                        row.how = how;
                    }
                }
                Err(e) => row.error = Some(format!("{e:#}")),
            }
        }
    }
    clean();
    let _ = fs::remove_file(&copy);
    out
}

/// hnctl's summary says how it copied ("reflinked", "copied (copy_file_range)",
/// …) and whether it computed a sha256.
pub(super) fn hnctl_how(stdout: &str) -> Option<String> {
    let line = stdout.lines().find(|l| l.starts_with("staged "))?;
    let after = line.split("MB/s), ").nth(1)?;
    let mut how = after.split(',').next()?.trim().to_string();
    if let Some(d) = stdout.lines().find(|l| l.starts_with("sha256 ")) {
        if d.contains("verified") {
            how.push_str(", sha256 verified");
        } else if !d.contains("not computed") {
            how.push_str(", sha256 computed");
        }
    }
    Some(how)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hnctl_summary_method() {
        let out = "staged hn-root-new.img from /x: 2147483648 bytes in 3.10 s (692.7 MB/s), copied with copy_file_range, ext4\n";
        assert_eq!(
            hnctl_how(out).as_deref(),
            Some("copied with copy_file_range")
        );
    }
}
