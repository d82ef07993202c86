//! The image factory: builds a generic Debian root image (`hn-root.img`) that
//! hninit boots from a host partition, the way ganeti-instance-debootstrap
//! builds instance disks.
//!
//! Steps (each timed, see [`ImageReport::steps`]):
//! 1. **base** — a `debootstrap --variant=minbase` tree of the suite, arch and
//!    package set, kept as a zstd tarball in
//!    `cache_dir()/debootstrap/<suite>-<arch>-<hash of the package list>.tar.zst`,
//!    rebuilt when older than `max_age_days` (one builder at a time: a lock file);
//! 2. **unpack** it into a staging directory;
//! 3. **configure** the generic system: fstab without a root entry (the loop
//!    root is hninit's), `/hostpart`, `/data0 -> /hostpart/data`,
//!    systemd-networkd (+ a DHCP fallback that any first-boot config sorting
//!    before `zz-` overrides) and systemd-resolved, ssh host keys generated at
//!    boot when absent, systemd-firstboot masked, `hnctl` and its mark-good unit;
//! 4. **hooks**: executables of each hook directory, run-parts style (sorted by
//!    name, names of `[A-Za-z0-9_-]` only), with `TARGET`, `SUITE`, `ARCH`,
//!    `MIRROR` and `KERNEL_RELEASE` in the environment; a failing hook fails the
//!    build, naming it;
//! 5. **kernel**: the image's own newest `/boot/vmlinuz-*` as `/boot/kernel` and
//!    an hninit initramfs built from the image's `/lib/modules/<release>` as
//!    `/boot/initramfs`;
//! 6. **generalize**: host specifics removed (empty `/etc/machine-id`, ssh host
//!    keys, random seed, logs, apt lists and caches, `/etc/hostname` =
//!    `localhost`, resolv.conf);
//! 7. **mkfs**: `mkfs.ext4 -d` of the staging tree into the image file (sparse).
//!
//! Needs root (debootstrap, chroot, owners). `docs/image-factory.md` has the
//! reasons behind each choice.

use crate::initramfs::{build_initramfs, InitramfsSpec};
use crate::paths::cache_dir;
use crate::util::{self, cmd};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Packages every image gets (besides `linux-image-<arch>`): systemd as init
/// (udev, or getty and networking wait 90 s), networkd's resolver (with
/// `dbus` named explicitly: debootstrap does not resolve the virtual
/// `default-dbus-system-bus` that systemd-resolved depends on), sshd,
/// iproute2 and sudo. networkd itself is part of `systemd` and has the DHCP
/// client minbase lacks. `e2fsprogs` (no longer `Priority: required` in
/// Debian 13, so minbase lacks it there) gives `fsck.ext4`: data disks are
/// checked before they are mounted (`hnctl platform disk`). `xz-utils`: the
/// hninit package depends on it (Debian 13's modules are `.ko.xz`, which the
/// kernel hooks' `hnctl initramfs update` unpacks with `xz`), and minbase
/// lacks it.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "e2fsprogs",
    "xz-utils",
    "udev",
    "dbus",
    "systemd-resolved",
    "openssh-server",
    "iproute2",
    "sudo",
];

/// The suite built without `--suite`: Debian 13, stable since August 2025.
/// `bookworm` (Debian 12, oldstable) is supported and tested too
/// (`docs/image-factory.md`, *Suites*).
pub const DEFAULT_SUITE: &str = "trixie";

/// Filesystem label of factory images.
pub const IMAGE_LABEL: &str = "hnroot";
/// Default image size (the filesystem; the file is sparse).
pub const DEFAULT_SIZE_MIB: u64 = 2048;
/// Default maximum age of the cached base tarball.
pub const DEFAULT_MAX_AGE_DAYS: u64 = 7;
/// The networkd file giving every Ethernet interface DHCP until the host is
/// instantiated. networkd uses the first matching `.network` file in lexical
/// order, so any first-boot config named e.g. `10-eth0.network` wins.
pub const DHCP_FALLBACK: &str = "etc/systemd/network/zz-hninit-dhcp-fallback.network";

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Debian suite, e.g. `trixie` ([`DEFAULT_SUITE`]) or `bookworm`.
    pub suite: String,
    /// Debian architecture; only the host's own (debootstrap runs natively).
    pub arch: String,
    /// Mirror URL; `None`: the one apt on this machine uses ([`default_mirror`]).
    pub mirror: Option<String>,
    /// Packages beyond [`BASE_PACKAGES`] and the kernel.
    pub include: Vec<String>,
    /// Hook directories, run in this order, each run-parts style.
    pub hooks: Vec<PathBuf>,
    /// Filesystem size of the image.
    pub size_mib: u64,
    /// Rebuild the cached base tarball when older than this (0: always).
    pub max_age_days: u64,
    /// The hninit init binary; `None`: build it ([`crate::build_init`]).
    pub init: Option<PathBuf>,
    /// `hnctl` for `/usr/sbin/hnctl`; `None`: build it. See `with_hnctl`.
    pub hnctl: Option<PathBuf>,
    /// Install the `hninit` package (`hnctl`, `hninit-mark-good.service`,
    /// kernel hooks, platform units) in place of initramfs-tools.
    pub with_hnctl: bool,
    /// Install [`DHCP_FALLBACK`].
    pub dhcp_fallback: bool,
    /// Modules for `/boot/initramfs` beyond the default set (e.g. `xfs`).
    pub add_modules: Vec<String>,
    /// minisign public keys trusted for the next images: installed in the
    /// image's initramfs (for `/init`) and in its `/etc/hninit/trusted.d/` (for `hnctl`).
    pub trust_keys: Vec<PathBuf>,
    /// Revoked key ids, installed in both places as `revoked.d/<id>`.
    pub revoke_keys: Vec<String>,
    /// Sign the finished image (`OUT.minisig`) with this key and metadata.
    pub sign: Option<crate::signing::SignSpec>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            suite: DEFAULT_SUITE.into(),
            arch: "amd64".into(),
            mirror: None,
            include: Vec::new(),
            hooks: Vec::new(),
            size_mib: DEFAULT_SIZE_MIB,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
            init: None,
            hnctl: None,
            with_hnctl: true,
            dhcp_fallback: true,
            add_modules: Vec::new(),
            trust_keys: Vec::new(),
            revoke_keys: Vec::new(),
            sign: None,
        }
    }
}

impl ImageSpec {
    /// The full, sorted, deduplicated package list given to debootstrap.
    pub fn packages(&self) -> Vec<String> {
        let mut p: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        p.push(format!("linux-image-{}", self.arch));
        p.extend(
            self.include
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
        p.sort();
        p.dedup();
        p
    }

    /// The mirror used: the spec's, else [`default_mirror`].
    pub fn mirror(&self) -> String {
        self.mirror
            .clone()
            .unwrap_or_else(|| default_mirror(&self.suite))
    }
}

/// One timed step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    pub took: Duration,
    /// e.g. "cached" or what was done.
    pub detail: String,
}

/// What [`build_image`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub out: PathBuf,
    pub base_tarball: PathBuf,
    /// The base came from the cache (no debootstrap).
    pub base_cached: bool,
    pub kernel_release: String,
    pub packages: Vec<String>,
    pub mirror: String,
    /// Hooks run, in order.
    pub hooks_run: Vec<PathBuf>,
    /// Bytes of the staged tree (apparent sizes).
    pub tree_bytes: u64,
    /// Filesystem size.
    pub image_bytes: u64,
    /// Bytes the image file occupies on disk (it is sparse).
    pub image_allocated_bytes: u64,
    pub steps: Vec<Step>,
}

impl ImageReport {
    /// The step timings as aligned text lines.
    pub fn timings(&self) -> String {
        let mut s = String::new();
        let total: Duration = self.steps.iter().map(|s| s.took).sum();
        for st in &self.steps {
            s.push_str(&format!(
                "  {:<11} {:>7.1} s  {}\n",
                st.name,
                st.took.as_secs_f64(),
                st.detail
            ));
        }
        s.push_str(&format!(
            "  {:<11} {:>7.1} s\n",
            "total",
            total.as_secs_f64()
        ));
        s
    }
}

/// Metadata kept beside a cached base tarball (`.json`).
#[derive(Debug, Serialize, Deserialize)]
struct BaseManifest {
    suite: String,
    arch: String,
    mirror: String,
    variant: String,
    packages: Vec<String>,
    created_unix: u64,
    debootstrap_seconds: f64,
}

/// Builds the image `out` (replaced atomically) from `spec`. Root only.
pub fn build_image(spec: &ImageSpec, out: &Path) -> Result<ImageReport> {
    if !util::running_as_root() {
        bail!("the image factory needs root (debootstrap, chroot and file owners)");
    }
    check_arch(&spec.arch)?;
    for h in &spec.hooks {
        if !h.is_dir() {
            bail!("hook directory {} does not exist", h.display());
        }
    }
    // Keys and signing metadata checked before the long build.
    crate::initramfs::trust_files(&spec.trust_keys, &spec.revoke_keys)?;
    if let Some(s) = &spec.sign {
        crate::signing::trusted_comment(s, 0)?;
        if !s.key.is_file() {
            bail!("--sign-key {}: no such file", s.key.display());
        }
    }
    let mut steps = Vec::new();
    let mirror = spec.mirror();
    let packages = spec.packages();

    let t = Instant::now();
    let (tarball, cached, detail) = base_tarball(spec)?;
    steps.push(Step {
        name: "base".into(),
        took: t.elapsed(),
        detail,
    });

    let stage = util::scratch_dir("image-stage")?;
    let res = build_in(spec, out, &stage, &tarball, &mut steps);
    let cleaned = remove_tree(&stage);
    let (kernel_release, hooks_run, tree_bytes) =
        res.with_context(|| format!("building the image {}", out.display()))?;
    cleaned?;
    // The block index next to the image (`OUT.bidx`, as `hnctl index` writes
    // it): hosts staging it from a mirror or registry fetch only changed blocks.
    let t = Instant::now();
    let bidx = write_index(out)?;
    steps.push(Step {
        name: "index".into(),
        took: t.elapsed(),
        detail: format!("{} ({} bytes)", bidx.display(), fs::metadata(&bidx)?.len()),
    });
    if let Some(sign) = &spec.sign {
        let t = Instant::now();
        let (sig, comment) = crate::signing::sign_image(out, sign)?;
        steps.push(Step {
            name: "sign".into(),
            took: t.elapsed(),
            detail: format!("{} ({comment})", sig.display()),
        });
    }
    let meta = fs::metadata(out)?;
    use std::os::unix::fs::MetadataExt;
    Ok(ImageReport {
        out: out.to_path_buf(),
        base_tarball: tarball,
        base_cached: cached,
        kernel_release,
        packages,
        mirror,
        hooks_run,
        tree_bytes,
        image_bytes: meta.len(),
        image_allocated_bytes: meta.blocks() * 512,
        steps,
    })
}

/// Writes `IMAGE.bidx` (temp, fsync, rename) with the default block size.
pub fn write_index(image: &Path) -> Result<PathBuf> {
    use hninit::remote::bidx::{Index, DEFAULT_BLOCK};
    use std::io::Write;
    let f = fs::File::open(image).with_context(|| format!("indexing {}", image.display()))?;
    let idx = Index::build(&mut std::io::BufReader::with_capacity(1 << 20, f), DEFAULT_BLOCK)
        .with_context(|| format!("indexing {}", image.display()))?;
    let path = PathBuf::from(format!("{}.bidx", image.display()));
    let tmp = PathBuf::from(format!("{}.bidx.tmp", image.display()));
    let mut w = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    w.write_all(&idx.to_bytes()).and_then(|_| w.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(path)
}

fn timed<T>(
    steps: &mut Vec<Step>,
    name: &str,
    f: impl FnOnce() -> Result<(T, String)>,
) -> Result<T> {
    let t = Instant::now();
    let (v, detail) = f().with_context(|| format!("image step `{name}`"))?;
    steps.push(Step {
        name: name.into(),
        took: t.elapsed(),
        detail,
    });
    Ok(v)
}

fn build_in(
    spec: &ImageSpec,
    out: &Path,
    stage: &Path,
    tarball: &Path,
    steps: &mut Vec<Step>,
) -> Result<(String, Vec<PathBuf>, u64)> {
    timed(steps, "unpack", || {
        untar(tarball, stage)?;
        Ok(((), format!("{}", tarball.display())))
    })?;
    let release_before = newest_kernel(stage)?.1;
    timed(steps, "configure", || {
        configure(spec, stage)?;
        Ok(((), "fstab, networkd/resolved, units, hnctl".to_string()))
    })?;
    let hooks_run = timed(steps, "hooks", || {
        let ran = run_hooks(spec, stage, &release_before)?;
        let d = format!("{} hook(s)", ran.len());
        Ok((ran, d))
    })?;
    let release = timed(steps, "kernel", || {
        let (r, d) = install_kernel(spec, stage)?;
        Ok((r.clone(), d))
    })?;
    timed(steps, "generalize", || {
        generalize(stage)?;
        write_image_info(spec, stage, &release)?;
        Ok(((), "machine-id, ssh host keys, logs, apt lists".to_string()))
    })?;
    let tree_bytes = tree_size(stage)?;
    timed(steps, "mkfs", || {
        ensure_no_mounts(stage)?;
        let tmp = util::tmp_sibling(out);
        crate::rootfs::make_ext4(stage, IMAGE_LABEL, None, spec.size_mib, &tmp)
            .inspect_err(|_| {
                util::remove_any(&tmp).ok();
            })
            .with_context(|| {
                format!(
                    "the tree is {} MiB; is --size {} MiB enough?",
                    tree_bytes >> 20,
                    spec.size_mib
                )
            })?;
        fs::rename(&tmp, out)
            .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
        Ok((
            (),
            format!(
                "{} MiB tree into {} MiB ext4",
                tree_bytes >> 20,
                spec.size_mib
            ),
        ))
    })?;
    Ok((release, hooks_run, tree_bytes))
}

fn check_arch(arch: &str) -> Result<()> {
    let host = util::run_stdout(Command::new("dpkg").arg("--print-architecture"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "amd64".into());
    if arch != host {
        bail!("--arch {arch}: only the host's architecture ({host}) is supported (a foreign one needs debootstrap --foreign and qemu-user)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The mirror

/// The Debian mirror apt on this machine uses for `suite`, from
/// `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}`:
/// the first entry naming that suite, else the first non-security entry of a
/// plain suite, else `http://deb.debian.org/debian`.
pub fn default_mirror(suite: &str) -> String {
    let entries = apt_sources(Path::new("/etc/apt"));
    pick_mirror(&entries, suite).unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// `(uri, suites)` of each `deb` entry.
fn apt_sources(etc_apt: &Path) -> Vec<(String, Vec<String>)> {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(rd) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if f.extension().is_some_and(|x| x == "sources") {
            out.extend(parse_deb822(&text));
        } else {
            out.extend(parse_one_line(&text));
        }
    }
    out
}

fn parse_one_line(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        // Options: `[arch=amd64 signed-by=...]`.
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            rest.drain(..=end);
        }
        if let [uri, suite, ..] = rest.as_slice() {
            out.push((uri.to_string(), vec![suite.to_string()]));
        }
    }
    out
}

fn parse_deb822(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| -> Option<String> {
            para.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                })
        };
        if field("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|w| w == "deb")) {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        let suites: Vec<String> = suites.split_whitespace().map(str::to_string).collect();
        for u in uris.split_whitespace() {
            out.push((u.to_string(), suites.clone()));
        }
    }
    out
}

fn pick_mirror(entries: &[(String, Vec<String>)], suite: &str) -> Option<String> {
    let clean = |u: &str| u.trim_end_matches('/').to_string();
    if let Some((u, _)) = entries.iter().find(|(_, s)| s.iter().any(|x| x == suite)) {
        return Some(clean(u));
    }
    entries
        .iter()
        .find(|(u, s)| {
            !u.contains("security") && s.iter().any(|x| !x.contains('-') && !x.contains('/'))
        })
        .map(|(u, _)| clean(u))
}

// ---------------------------------------------------------------------------
// The cached base tarball

/// Path of the cached base tarball for `spec`.
pub fn base_tarball_path(spec: &ImageSpec) -> PathBuf {
    let key = format!("minbase\n{}\n", spec.packages().join("\n"));
    cache_dir().join("debootstrap").join(format!(
        "{}-{}-{:016x}.tar.zst",
        spec.suite,
        spec.arch,
        util::fnv64(key.as_bytes())
    ))
}

/// Makes sure the base tarball exists and is fresh; returns it, whether it
/// was cached, and a description.
pub fn base_tarball(spec: &ImageSpec) -> Result<(PathBuf, bool, String)> {
    let path = base_tarball_path(spec);
    let dir = path.parent().expect("in the cache dir").to_path_buf();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let age = |p: &Path| -> Option<Duration> {
        let m = fs::metadata(p).ok()?.modified().ok()?;
        Some(SystemTime::now().duration_since(m).unwrap_or_default())
    };
    let max_age = Duration::from_secs(spec.max_age_days * 86_400);
    let fresh = |p: &Path| age(p).is_some_and(|a| a < max_age);
    if fresh(&path) {
        return Ok((path.clone(), true, cached_detail(&path, age(&path))));
    }
    // One builder per tarball; the others wait and then find it fresh.
    let lock_path = beside(&path, "lock");
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "xtask: waiting for another build of {} (lock {})",
            path.display(),
            lock_path.display()
        );
        lock.lock().context("locking the base tarball")?;
    }
    if fresh(&path) {
        return Ok((path.clone(), true, cached_detail(&path, age(&path))));
    }
    let t = Instant::now();
    match debootstrap_tarball(spec, &path) {
        Ok(()) => Ok((
            path,
            false,
            format!("debootstrap {:.0} s", t.elapsed().as_secs_f64()),
        )),
        Err(e) if path.is_file() => {
            eprintln!(
                "xtask: warning: refreshing the base tarball failed, using the stale one ({}): {e:#}",
                path.display()
            );
            Ok((path.clone(), true, cached_detail(&path, age(&path))))
        }
        Err(e) => Err(e),
    }
}

/// `<name>.<ext>` beside the tarball `<name>.tar.zst`.
fn beside(tarball: &Path, ext: &str) -> PathBuf {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".tar.zst").unwrap_or(&name);
    tarball.with_file_name(format!("{stem}.{ext}"))
}

fn cached_detail(path: &Path, age: Option<Duration>) -> String {
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    format!(
        "cached, {:.1} days old, {} MiB",
        age.unwrap_or_default().as_secs_f64() / 86_400.0,
        size >> 20
    )
}

fn debootstrap_tarball(spec: &ImageSpec, path: &Path) -> Result<()> {
    let dir = path.parent().expect("in the cache dir");
    let mirror = spec.mirror();
    let packages = spec.packages();
    let work = dir.join(format!("build-{}", util::unique_suffix()));
    let root = work.join("root");
    fs::create_dir_all(&work)?;
    let log = beside(path, "log");
    eprintln!(
        "xtask: debootstrap {} {} from {mirror} (a few minutes; log {})",
        spec.suite,
        spec.arch,
        log.display()
    );
    let t = Instant::now();
    let mut c = cmd("debootstrap");
    c.args(["--variant=minbase", "--arch", &spec.arch])
        .arg(format!("--include={}", packages.join(",")))
        .arg(&spec.suite)
        .arg(&root)
        .arg(&mirror)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // The kernel's postinst would build an initramfs-tools initrd (minutes
        // under load) that an hninit image never uses.
        .env("INITRD", "No");
    let res = run_logged(&mut c, &log).and_then(|_| {
        ensure_no_mounts(&root)?;
        let tmp = util::tmp_sibling(path);
        let r = util::run(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .args([
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--acls",
                    "--use-compress-program=zstd -T0 -6",
                    "-cf",
                ])
                .arg(&tmp)
                .arg("."),
        )
        .context("packing the debootstrap tree");
        if let Err(e) = r {
            util::remove_any(&tmp).ok();
            return Err(e);
        }
        let manifest = BaseManifest {
            suite: spec.suite.clone(),
            arch: spec.arch.clone(),
            mirror: mirror.clone(),
            variant: "minbase".into(),
            packages: packages.clone(),
            created_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            debootstrap_seconds: t.elapsed().as_secs_f64(),
        };
        util::write_atomic(
            &beside(path, "json"),
            serde_json::to_string_pretty(&manifest)?.as_bytes(),
        )?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    let cleaned = remove_tree(&work);
    res.with_context(|| format!("debootstrap of {} {}", spec.suite, spec.arch))?;
    cleaned
}

/// Runs `c` with stdout and stderr into `log`; on failure the error carries
/// the log's last lines.
fn run_logged(c: &mut Command, log: &Path) -> Result<()> {
    let shown = util::display_cmd(c);
    let f = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let st = c
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !st.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`{shown}` failed ({st}); log {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

fn untar(tarball: &Path, dest: &Path) -> Result<()> {
    util::run(
        Command::new("tar")
            .arg("-C")
            .arg(dest)
            .args([
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "-p",
                "--use-compress-program=zstd -T0",
                "-xf",
            ])
            .arg(tarball),
    )
    .with_context(|| format!("unpacking {}", tarball.display()))
}

// ---------------------------------------------------------------------------
// Mounts left in a tree (a hook or debootstrap that died)

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

/// Fails unless nothing is mounted inside `dir` (after trying to unmount
/// what is): neither mkfs nor a recursive delete may cross into /proc or /dev.
fn ensure_no_mounts(dir: &Path) -> Result<()> {
    let found = mounts_under(dir);
    if found.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: unmounting what was left mounted in {}: {}",
        dir.display(),
        found
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for m in &found {
        let _ = util::run(cmd("umount").arg("-l").arg(m));
    }
    let still = mounts_under(dir);
    if !still.is_empty() {
        bail!(
            "still mounted inside {}: {}",
            dir.display(),
            still
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

/// Removes a staging tree, never crossing into something mounted inside it.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    ensure_no_mounts(dir).with_context(|| {
        format!(
            "not removing {} (something is mounted in it)",
            dir.display()
        )
    })?;
    util::remove_any(dir)
}

// ---------------------------------------------------------------------------
// Configure

pub(crate) use hninit::image::generalize::{at, generalize, has_unit, link, put};

const FSTAB: &str = "\
# /etc/fstab of an hninit image.
#
# No entry for /: the root is this image, loop-mounted by hninit from the host
# partition (read-write with `rw` on the kernel command line, which hninit's
# GRUB menu passes). With no / line, systemd-remount-fs leaves it as mounted.
# The host partition is mounted by hninit too and moved to /hostpart;
# /data0 -> /hostpart/data.
#
# <file system> <mount point> <type> <options> <dump> <pass>
";

const DHCP_FALLBACK_NETWORK: &str = "\
# hninit image factory: DHCP on every Ethernet interface until the host is
# instantiated. systemd-networkd applies the first matching .network file in
# lexical order, so a first-boot config named e.g. 10-eth0.network wins.
[Match]
Name=en* eth*

[Network]
DHCP=yes
";

pub(crate) const HOSTPART_MOUNT_DROPIN: &str = "\
# hninit: the host partition holds the image that is the root filesystem;
# it is unmounted by hninit's shutdown program after the root, not by systemd.
[Unit]
DefaultDependencies=no
";

/// Only when hninit did not install the host's key: an ed25519 key, the one
/// type hninit keeps per host (an RSA key also takes tens of seconds under
/// emulation).
pub(crate) const SSH_HOSTKEYS_UNIT: &str = "\
[Unit]
Description=Generate the SSH host key this image was built without
Documentation=file:/etc/hninit/image.json
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
";

pub(crate) const MARK_GOOD_UNIT: &str = "\
[Unit]
Description=End the trial of the image hninit booted (hnctl mark-good)
Requires=boot-complete.target
After=boot-complete.target
ConditionPathIsDirectory=/hostpart

[Service]
Type=oneshot
ExecStart=/usr/sbin/hnctl mark-good
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
";

/// The same key store as the initramfs's, for hnctl in the running system:
/// `STAGE/etc/hninit/trusted.d/*.pub` and `revoked.d/<id>`.
pub fn install_keys(spec: &ImageSpec, stage: &Path) -> Result<()> {
    let (trust, _) = crate::initramfs::trust_files(&spec.trust_keys, &spec.revoke_keys)?;
    for (rel, data) in trust {
        put(stage, &format!("etc/hninit/{rel}"), &String::from_utf8_lossy(&data), 0o644)?;
    }
    Ok(())
}

fn configure(spec: &ImageSpec, stage: &Path) -> Result<()> {
    put(stage, "etc/fstab", FSTAB, 0o644)?;
    for d in ["hostpart", "boot", "etc/hninit"] {
        fs::create_dir_all(at(stage, d))?;
    }
    install_keys(spec, stage)?;
    link(stage, "data0", "/hostpart/data")?;

    // /hostpart backs the loop root: systemd cannot unmount it while the root
    // is mounted, and hninit's /run/initramfs/shutdown unmounts both at the
    // end. Without default dependencies systemd does not try (no "[FAILED]
    // Failed unmounting hostpart.mount" at every shutdown).
    put(
        stage,
        "etc/systemd/system/hostpart.mount.d/hninit.conf",
        HOSTPART_MOUNT_DROPIN,
        0o644,
    )?;

    // systemd-firstboot would prompt on the console for locale and time zone
    // on the first boot (empty machine-id): instantiation is hninit's job.
    link(
        stage,
        "etc/systemd/system/systemd-firstboot.service",
        "/dev/null",
    )?;

    let mut enable: Vec<&str> = Vec::new();
    if has_unit(stage, "systemd-networkd.service") {
        enable.push("systemd-networkd.service");
        if spec.dhcp_fallback {
            put(stage, DHCP_FALLBACK, DHCP_FALLBACK_NETWORK, 0o644)?;
        }
    }
    if has_unit(stage, "systemd-resolved.service") {
        enable.push("systemd-resolved.service");
    }
    if has_unit(stage, "ssh.service") {
        put(
            stage,
            "etc/systemd/system/hninit-ssh-hostkeys.service",
            SSH_HOSTKEYS_UNIT,
            0o644,
        )?;
        enable.push("hninit-ssh-hostkeys.service");
    }
    if spec.with_hnctl {
        install_package(spec, stage)?;
        enable.push("hninit-mark-good.service");
        enable.extend(hninit::runtime::shipped::ENABLED);
    }
    if !enable.is_empty() {
        // The image's own systemctl, offline (it detects the chroot).
        util::run(
            Command::new("chroot")
                .arg(stage)
                .args(["systemctl", "enable", "--quiet"])
                .args(&enable)
                .env("SYSTEMD_OFFLINE", "1"),
        )
        .with_context(|| format!("enabling {}", enable.join(" ")))?;
    }
    Ok(())
}

/// Installs hninit's Debian package (`cargo xtask deb`, built from this
/// tree's `/init` and `hnctl`) in the image with the image's own dpkg, as a
/// user's `apt install ./hninit_*.deb` would: hnctl, the kernel hooks, the
/// units and the udev rule come from the package, and dpkg knows them (an
/// upgrade of the package replaces them). initramfs-tools, which the kernel
/// package pulled in, is purged first: both provide `linux-initramfs-tool`
/// and conflict; hninit's package satisfies the kernel's dependency again.
/// The package's postinst rebuilds nothing here (no `/boot/kernel` yet: the
/// kernel step builds `/boot/initramfs` with the image's own options).
fn install_package(spec: &ImageSpec, stage: &Path) -> Result<()> {
    let hnctl = match &spec.hnctl {
        Some(p) => p.clone(),
        None => crate::initbin::build_workspace_bin("hnctl")?,
    };
    let init = match &spec.init {
        Some(p) => p.clone(),
        None => crate::initbin::build_init()?,
    };
    let out = stage.join("tmp/hninit-factory");
    util::remove_any(&out)?;
    fs::create_dir_all(&out)?;
    let deb = crate::deb::build_deb(&init, &hnctl, &out)?;
    let inside = Path::new("/").join(deb.strip_prefix(stage).context("the package is in the image")?);
    let chroot_dpkg = |args: &[&str]| -> Result<()> {
        util::run(
            Command::new("chroot")
                .arg(stage)
                .arg("dpkg")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("SYSTEMD_OFFLINE", "1"),
        )
        .with_context(|| format!("dpkg {} in the image", args.join(" ")))
    };
    let installed: Vec<&str> = ["initramfs-tools", "initramfs-tools-core"]
        .into_iter()
        .filter(|p| stage.join(format!("var/lib/dpkg/info/{p}.list")).is_file())
        .collect();
    if !installed.is_empty() {
        let mut args = vec!["--purge", "--force-depends"];
        args.extend(&installed);
        chroot_dpkg(&args)?;
    }
    chroot_dpkg(&["--install", &inside.to_string_lossy()])?;
    util::remove_any(&out)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Hooks

/// The executables of `dir` run-parts would run, sorted by name.
pub fn hook_list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut hooks = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing hooks in {}", dir.display()))? {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let exec = fs::metadata(&p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if valid && exec {
            hooks.push(p);
        }
    }
    hooks.sort();
    Ok(hooks)
}

fn run_hooks(spec: &ImageSpec, stage: &Path, release: &str) -> Result<Vec<PathBuf>> {
    let target = stage.canonicalize()?;
    let mut ran = Vec::new();
    for dir in &spec.hooks {
        for hook in hook_list(dir)? {
            let t = Instant::now();
            let out = Command::new(&hook)
                .current_dir(&target)
                .env("TARGET", &target)
                .env("SUITE", &spec.suite)
                .env("ARCH", &spec.arch)
                .env("MIRROR", spec.mirror())
                .env("KERNEL_RELEASE", release)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("cannot run hook {}", hook.display()))?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() {
                ensure_no_mounts(&target).ok();
                bail!(
                    "hook {} failed ({}):\n{}",
                    hook.display(),
                    out.status,
                    text.trim_end()
                );
            }
            if !mounts_under(&target).is_empty() {
                ensure_no_mounts(&target)?;
                eprintln!(
                    "xtask: warning: hook {} left mounts behind (unmounted)",
                    hook.display()
                );
            }
            for line in text.lines() {
                eprintln!("xtask: hook {}: {line}", hook.display());
            }
            eprintln!(
                "xtask: hook {} ok ({:.1} s)",
                hook.display(),
                t.elapsed().as_secs_f64()
            );
            ran.push(hook);
        }
    }
    Ok(ran)
}

// ---------------------------------------------------------------------------
// Kernel and initramfs

/// Compares Debian-style kernel releases (`6.1.0-50-amd64` < `6.1.0-9-amd64`
/// is wrong as text): digit runs compare as numbers.
fn version_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let mut text = String::new();
        while let Some(&c) = chars.peek().filter(|c| !c.is_ascii_digit()) {
            text.push(c);
            chars.next();
        }
        let mut num = String::new();
        while let Some(&c) = chars.peek().filter(|c| c.is_ascii_digit()) {
            num.push(c);
            chars.next();
        }
        out.push((0, text));
        out.push((num.parse().unwrap_or(0), String::new()));
    }
    out
}

/// The newest `/boot/vmlinuz-<release>` of the tree: (path, release).
fn newest_kernel(stage: &Path) -> Result<(PathBuf, String)> {
    let boot = stage.join("boot");
    let mut found: Vec<(PathBuf, String)> = fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = name.strip_prefix("vmlinuz-")?.to_string();
            e.path().is_file().then_some((e.path(), rel))
        })
        .collect();
    found.sort_by_key(|(_, r)| version_key(r));
    found
        .pop()
        .context("the image has no /boot/vmlinuz-* (is linux-image-<arch> installed?)")
}

/// The module tree of `release` inside the tree.
fn modules_dir(stage: &Path, release: &str) -> Result<PathBuf> {
    for base in ["usr/lib/modules", "lib/modules"] {
        let d = stage.join(base).join(release);
        if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            return Ok(d);
        }
    }
    bail!("the image has no /lib/modules/{release}")
}

fn install_kernel(spec: &ImageSpec, stage: &Path) -> Result<(String, String)> {
    let (vmlinuz, release) = newest_kernel(stage)?;
    let mdir = modules_dir(stage, &release)?;
    if !mdir.join("modules.dep").is_file() {
        util::run(cmd("depmod").arg("-b").arg(stage).arg(&release))
            .with_context(|| format!("depmod of {release} in the image"))?;
    }
    let init = match &spec.init {
        Some(p) => p.clone(),
        None => crate::initbin::build_init()?,
    };
    let initramfs = stage.join("boot/initramfs");
    // Debian 13's modules are .ko.xz: build_initramfs puts the chosen ones in
    // plain (decompressing 27 files instead of copying and decompressing the
    // tree's ~4000 took the kernel step from 24 s to a few).
    let mut ispec = InitramfsSpec::new(&init, &release, &mdir);
    (ispec.profile, ispec.modules) =
        crate::initramfs::with_added_modules(ispec.profile, ispec.modules, &spec.add_modules);
    ispec.trust_keys = spec.trust_keys.clone();
    ispec.revoke_keys = spec.revoke_keys.clone();
    let rep = build_initramfs(&ispec, &initramfs).with_context(|| format!("building the initramfs for {release}"))?;
    fs::set_permissions(&initramfs, fs::Permissions::from_mode(0o644))?;
    let kernel = stage.join("boot/kernel");
    util::remove_any(&kernel)?;
    // A hard link: one copy in the image, and a later dpkg replacing
    // vmlinuz-* (a new inode) leaves /boot/kernel alone.
    if fs::hard_link(&vmlinuz, &kernel).is_err() {
        fs::copy(&vmlinuz, &kernel)?;
    }
    // initramfs-tools' initrd is never used: hninit's is /boot/initramfs.
    for e in fs::read_dir(stage.join("boot"))?.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with("initrd.img-") {
            fs::remove_file(e.path())?;
        }
    }
    for l in ["initrd.img", "initrd.img.old"] {
        let p = stage.join(l);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&p)?;
        }
    }
    Ok((
        release.clone(),
        format!(
            "{release}: /boot/kernel, /boot/initramfs {} modules {} KiB",
            rep.modules.len(),
            rep.compressed_size >> 10
        ),
    ))
}

// ---------------------------------------------------------------------------
// Generalize

#[derive(Serialize)]
struct ImageInfo<'a> {
    suite: &'a str,
    arch: &'a str,
    mirror: String,
    packages: Vec<String>,
    kernel_release: &'a str,
    built_unix: u64,
    builder: String,
}

fn write_image_info(spec: &ImageSpec, stage: &Path, release: &str) -> Result<()> {
    let info = ImageInfo {
        suite: &spec.suite,
        arch: &spec.arch,
        mirror: spec.mirror(),
        packages: spec.packages(),
        kernel_release: release,
        built_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        builder: format!("hninit-xtask {} image factory", env!("CARGO_PKG_VERSION")),
    };
    let mut json = serde_json::to_string_pretty(&info)?;
    json.push('\n');
    put(stage, "etc/hninit/image.json", &json, 0o644)
}

/// Apparent size of the files of a tree (not following symlinks).
fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_factory_index_is_hnctl_index() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("x.img");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&img, &data).unwrap();
        let p = write_index(&img).unwrap();
        assert_eq!(p, t.path().join("x.img.bidx"));
        let idx = hninit::remote::bidx::Index::parse(&fs::read(&p).unwrap()).unwrap();
        let want = hninit::remote::bidx::Index::build(&mut &data[..], hninit::remote::bidx::DEFAULT_BLOCK).unwrap();
        assert_eq!(idx.to_bytes(), want.to_bytes());
        assert!(!t.path().join("x.img.bidx.tmp").exists());
    }

    use super::*;

    #[test]
    fn mirror_from_sources() {
        let d = tempfile::tempdir().unwrap();
        let apt = d.path();
        fs::create_dir_all(apt.join("sources.list.d")).unwrap();
        fs::write(
            apt.join("sources.list"),
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://ftp.fr.debian.org/debian/ trixie main\n",
        )
        .unwrap();
        fs::write(
            apt.join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
             Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n",
        )
        .unwrap();
        fs::write(
            apt.join("sources.list.d/off.sources.disabled"),
            "Types: deb\nURIs: http://nope/\nSuites: bookworm\n",
        )
        .unwrap();
        fs::write(
            apt.join("sources.list.d/x.sources"),
            "Enabled: no\nTypes: deb\nURIs: http://disabled/\nSuites: sid\n",
        )
        .unwrap();
        let e = apt_sources(apt);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            pick_mirror(&e, "bookworm").unwrap(),
            "http://deb.debian.org/debian"
        );
        assert_eq!(
            pick_mirror(&e, "trixie").unwrap(),
            "http://ftp.fr.debian.org/debian"
        );
        assert_eq!(
            pick_mirror(&e, "sid").unwrap(),
            "http://ftp.fr.debian.org/debian"
        );
        assert_eq!(pick_mirror(&[], "sid"), None);
    }

    #[test]
    fn packages_and_cache_key() {
        let a = ImageSpec::default();
        let p = a.packages();
        assert!(p.contains(&"linux-image-amd64".to_string()));
        assert!(p.windows(2).all(|w| w[0] < w[1]));
        let b = ImageSpec {
            include: vec!["vim".into(), " sudo ".into()],
            ..ImageSpec::default()
        };
        let c = ImageSpec {
            include: vec!["vim".into()],
            ..ImageSpec::default()
        };
        assert_ne!(base_tarball_path(&a), base_tarball_path(&b));
        assert_eq!(base_tarball_path(&b), base_tarball_path(&c));
        let name = base_tarball_path(&a)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with("trixie-amd64-") && name.ends_with(".tar.zst"),
            "{name}"
        );
        // One cached base per suite: the suite names the tarball, the package
        // list (the same for both) keys the rest.
        let old = ImageSpec {
            suite: "bookworm".into(),
            ..ImageSpec::default()
        };
        let old_name = base_tarball_path(&old).file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(old_name, name.replacen("trixie", "bookworm", 1));
    }

    #[test]
    fn newest_kernel_by_version() {
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("boot");
        fs::create_dir_all(&boot).unwrap();
        for r in ["6.1.0-9-amd64", "6.1.0-50-amd64", "6.1.0-10-amd64"] {
            fs::write(boot.join(format!("vmlinuz-{r}")), r).unwrap();
        }
        fs::write(boot.join("config-6.1.0-99-amd64"), "").unwrap();
        assert_eq!(newest_kernel(d.path()).unwrap().1, "6.1.0-50-amd64");
    }

    #[test]
    fn hooks_run_parts_style() {
        let d = tempfile::tempdir().unwrap();
        let mk = |n: &str, mode: u32| {
            let p = d.path().join(n);
            fs::write(&p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        mk("20-b", 0o755);
        mk("10-a", 0o755);
        mk("30-c.sh", 0o755); // a dot: run-parts skips it
        mk("40-d", 0o644); // not executable
        mk("50_e", 0o700);
        let names: Vec<String> = hook_list(d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-a", "20-b", "50_e"]);
    }


}
