//! The product's initramfs builder: resolves kernel modules (names or aliases,
//! with their dependency closure from `modules.dep`, using the init's own
//! [`crate::modules::index::ModIndex`]) and writes the hninit newc cpio archive,
//! deterministically, optionally compressed.

use super::cpio::{compress, Archive, Node};
use super::keys::trust_files;
use super::kmod::{is_static_elf, plain_module_path, read_module_plain, write_atomic};
use super::profile::{host_storage_drivers, HostDriver, Profile};
use crate::modules::drivers::{storage_aliases_text, STORAGE_ALIASES};
use crate::modules::index::{subset_index_text, ModIndex};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Default force list (`initramfs/modules.force`).
const DEFAULT_FORCE: &str = include_str!("../../initramfs/modules.force");

/// Compression of the cpio archive. The Debian kernel has `CONFIG_RD_ZSTD`
/// and `CONFIG_RD_GZIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

/// zstd level used for [`Compression::Zstd`]. Measured on the default set with
/// the trimmed module index (15.4 MB of cpio, a 0.79 MB `/init`, Debian's 6.1
/// kernel; one thread of a 2-core Xeon, build time of the compression alone):
///
/// | compression | size | build | kernel unpack under QEMU TCG |
/// |---|---|---|---|
/// | zstd 12 | 3.39 MB (3.23 MiB) | 0.7 s | ≈ 0.4 s |
/// | zstd 18 | 3.11 MB (2.96 MiB) | 5.3 s | |
/// | **zstd 19** | 3.08 MB (2.94 MiB) | 6.3 s | ≈ 0.4 s |
/// | zstd 19, long distance matching, window 2^27 | 3.09 MB | 7.2 s | ≈ 0.4 s |
/// | zstd 22 (ultra) | 3.09 MB | 7.4 s | ≈ 0.4 s |
/// | zstd 22, long, window 2^27 | 3.09 MB | 8.0 s | ≈ 0.4 s |
/// | xz -9 (`xz` 5.4, for comparison) | 2.76 MB (2.63 MiB) | 7.5 s | ≈ 1.3 s |
///
/// zstd decompresses as fast at any level, so 19 costs build time only; past it
/// nothing is gained. xz is 11 % smaller, but the kernel unpacks it ≈ 0.9 s
/// slower under TCG (and ≈ 6× slower than zstd natively), on every boot. All of
/// these boot with Debian's 6.1 kernel.
pub const ZSTD_LEVEL: i32 = 19;

/// What to put into an initramfs.
#[derive(Debug, Clone)]
pub struct InitramfsSpec {
    /// The init binary (static), installed as `/init`.
    pub init_binary: PathBuf,
    /// Kernel release, the directory name under `/lib/modules`.
    pub kernel_release: String,
    /// The kernel's module tree (with `modules.dep`), e.g. `/lib/modules/<release>`.
    pub modules_dir: PathBuf,
    /// The profile whose module set is the base (`initramfs/profiles/`); `None`
    /// means [`Profile::Server`] when [`Self::modules`] is empty, no base otherwise.
    pub profile: Option<Profile>,
    /// Module names or aliases to include (on top of the profile, if any); each
    /// must exist in the kernel. Empty with no profile means the default profile.
    pub modules: Vec<String>,
    /// sysfs of the machine the `host` profile describes (`/sys`).
    pub sysfs: PathBuf,
    /// Modules the init loads unconditionally, in order; empty means [`default_force`].
    /// They are included in the archive as well.
    pub force: Vec<String>,
    /// A static busybox to add as `/bin/busybox` and `/bin/sh`.
    pub busybox: Option<PathBuf>,
    pub compression: Compression,
    /// minisign public key files installed as `/etc/hninit/trusted.d/<name>.pub`:
    /// with at least one, `/init` requires a valid signature on staged images.
    pub trust_keys: Vec<PathBuf>,
    /// Key ids (as minisign prints them) installed as `/etc/hninit/revoked.d/<id>`.
    pub revoke_keys: Vec<String>,
}

impl InitramfsSpec {
    /// A spec with the default module and force lists, zstd, no busybox.
    pub fn new(init_binary: &Path, kernel_release: &str, modules_dir: &Path) -> Self {
        InitramfsSpec {
            init_binary: init_binary.to_path_buf(),
            kernel_release: kernel_release.to_string(),
            modules_dir: modules_dir.to_path_buf(),
            profile: None,
            modules: Vec::new(),
            sysfs: PathBuf::from("/sys"),
            force: Vec::new(),
            busybox: None,
            compression: Compression::Zstd,
            trust_keys: Vec::new(),
            revoke_keys: Vec::new(),
        }
    }
}

/// What [`build_initramfs`] put into the archive.
#[derive(Debug, Clone, Serialize)]
pub struct InitramfsReport {
    /// The profile used as the base, if any.
    pub profile: Option<Profile>,
    /// The `host` profile's findings: drivers bound to this machine's disks.
    pub host_drivers: Vec<HostDriver>,
    /// Module names included (sorted), dependencies included.
    pub modules: Vec<String>,
    /// The force list as written to `/etc/hninit/modules.force`.
    pub force: Vec<String>,
    /// Requested names that are built into the kernel (nothing to include).
    pub builtin: Vec<String>,
    /// Profile names (and host drivers) this kernel has neither as module nor built in.
    pub skipped: Vec<String>,
    /// Size of the cpio archive before compression.
    pub uncompressed_size: u64,
    /// Size of the file written.
    pub compressed_size: u64,
    pub compression: Compression,
    /// `trusted.d/` file name and key id of each trusted key.
    pub trusted_keys: Vec<(String, String)>,
    /// Revoked key ids, as minisign prints them.
    pub revoked_keys: Vec<String>,
}

/// The default module set: the names of the default profile ([`Profile::Server`]).
pub fn default_modules() -> Vec<String> {
    Profile::default().listed()
}

/// What `--profile`, `--module` and `--add-module` mean together: the profile
/// (if given) plus the modules plus the added ones. `--module` without a
/// profile is an exact list (the default profile is not added); `--add-module`
/// alone adds to the default profile.
pub fn with_added_modules(
    profile: Option<Profile>,
    mut modules: Vec<String>,
    add: &[String],
) -> (Option<Profile>, Vec<String>) {
    let profile = match profile {
        None if modules.is_empty() && !add.is_empty() => Some(Profile::default()),
        p => p,
    };
    modules.extend(add.iter().cloned());
    (profile, modules)
}

/// The default force list, from `initramfs/modules.force`.
pub fn default_force() -> Vec<String> {
    list_lines(DEFAULT_FORCE)
}

fn list_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// How a requested name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Loadable modules (one for a name, maybe several for an alias), sorted.
    Modules(Vec<String>),
    /// Built into the kernel.
    Builtin,
}

/// Resolves a module name or alias the way the init does at boot
/// ([`ModIndex::resolve`]): loadable modules win over built-in ones; `None`
/// when the kernel has no such thing.
pub fn resolve(index: &ModIndex, request: &str) -> Option<Resolved> {
    let found = index.resolve(request);
    let mut loadable: Vec<String> = found
        .iter()
        .filter(|m| index.path_of(m).is_some())
        .cloned()
        .collect();
    if !loadable.is_empty() {
        loadable.sort();
        loadable.dedup();
        return Some(Resolved::Modules(loadable));
    }
    found
        .iter()
        .any(|m| index.is_builtin(m))
        .then_some(Resolved::Builtin)
}

/// Reads the module index of `modules_dir` (`modules.dep` is required).
pub fn load_index(modules_dir: &Path) -> Result<ModIndex> {
    Ok(IndexTexts::read(modules_dir)?.parse())
}

/// The text index files of a module tree (`modules.dep` required, the others
/// empty when absent).
struct IndexTexts {
    dep: String,
    alias: String,
    builtin: String,
    builtin_alias: String,
}

impl IndexTexts {
    fn read(dir: &Path) -> Result<IndexTexts> {
        let read = |name: &str, required: bool| -> Result<String> {
            match fs::read(dir.join(name)) {
                Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(e).with_context(|| {
                    format!("reading the module index: {}", dir.join(name).display())
                }),
            }
        };
        Ok(IndexTexts {
            dep: read("modules.dep", true)?,
            alias: read("modules.alias", false)?,
            builtin: read("modules.builtin", false)?,
            builtin_alias: read("modules.builtin.alias", false)?,
        })
    }

    fn parse(&self) -> ModIndex {
        let mut idx = ModIndex::parse(&self.dep, &self.alias, &self.builtin);
        idx.add_builtin_aliases(&self.builtin_alias);
        idx
    }
}

/// Directories every hninit initramfs has.
const DIRS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "hostpart",
    "newroot",
    "sbin",
    "etc",
    "etc/hninit",
    "lib",
    "lib/modules",
];

#[derive(Serialize)]
struct Manifest<'a> {
    kernel_release: &'a str,
    profile: Option<Profile>,
    modules: &'a [String],
    force: &'a [String],
    builder: String,
}

/// Builds the initramfs described by `spec` into `out` (written atomically).
pub fn build_initramfs(spec: &InitramfsSpec, out: &Path) -> Result<InitramfsReport> {
    let (data, report) = build_initramfs_data(spec)?;
    write_atomic(out, &data).with_context(|| format!("writing the initramfs {}", out.display()))?;
    Ok(report)
}

/// Builds the initramfs described by `spec`: the (compressed) archive's bytes.
pub fn build_initramfs_data(spec: &InitramfsSpec) -> Result<(Vec<u8>, InitramfsReport)> {
    let mdir = &spec.modules_dir;
    let texts = IndexTexts::read(mdir)?;
    let index = texts.parse();

    let profile = match spec.profile {
        None if spec.modules.is_empty() => Some(Profile::default()),
        p => p,
    };
    // (name, must exist): the profile's names are skipped when the kernel lacks
    // them (built in, or not built at all); names asked for by hand must exist.
    let mut requested: Vec<(String, bool)> = Vec::new();
    let mut host_drivers = Vec::new();
    if let Some(p) = profile {
        requested.extend(p.listed().into_iter().map(|n| (n, false)));
        if p == Profile::Host {
            host_drivers = host_storage_drivers(&spec.sysfs)?;
            for h in &host_drivers {
                requested.push((h.module.clone(), false));
                if let Some(a) = &h.modalias {
                    requested.push((a.clone(), false));
                }
            }
        }
    }
    requested.extend(spec.modules.iter().map(|n| (n.clone(), true)));
    let force_req = if spec.force.is_empty() {
        default_force()
    } else {
        spec.force.clone()
    };

    let mut roots = BTreeSet::new();
    let (mut builtin, mut skipped) = (BTreeSet::new(), Vec::new());
    for (name, explicit) in &requested {
        match resolve(&index, name) {
            Some(Resolved::Modules(m)) => roots.extend(m),
            Some(Resolved::Builtin) => {
                builtin.insert(name.clone());
            }
            None if *explicit => bail!(
                "kernel module `{name}` not found in {}/modules.dep, modules.alias or modules.builtin",
                mdir.display()
            ),
            None => {
                if !skipped.contains(name) {
                    skipped.push(name.clone())
                }
            }
        }
    }
    let mut force = Vec::new();
    for name in &force_req {
        match resolve(&index, name) {
            Some(Resolved::Modules(m)) => {
                for m in m {
                    if !force.contains(&m) {
                        force.push(m.clone());
                    }
                    roots.insert(m);
                }
            }
            Some(Resolved::Builtin) => {
                builtin.insert(name.clone());
            }
            None => bail!(
                "forced kernel module `{name}` not found in {}/modules.dep or modules.builtin",
                mdir.display()
            ),
        }
    }
    let roots: Vec<String> = roots.into_iter().collect();
    let closure: BTreeSet<String> = index
        .load_order(&roots)
        .with_context(|| format!("module dependencies in {}/modules.dep", mdir.display()))?
        .into_iter()
        .collect();
    let modules: Vec<String> = closure.into_iter().collect();

    let mut ar = Archive::default();
    for d in DIRS {
        ar.add(d, Node::Dir);
    }
    ar.add_file("init", &spec.init_binary, 0o755)?;
    ar.add("sbin/modprobe", Node::Symlink("/init".into()));
    ar.add(
        "dev/console",
        Node::CharDev {
            major: 5,
            minor: 1,
            mode: 0o600,
        },
    );
    let lib = format!("lib/modules/{}", spec.kernel_release);
    let mut paths = HashSet::new();
    for m in &modules {
        let rel = index
            .path_of(m)
            .expect("closure only holds indexed modules");
        // Compressed modules (Debian 13: .ko.xz) go in plain: the kernel
        // could decompress them (finit_module's MODULE_INIT_COMPRESSED_FILE,
        // which /init sets for such names), but in-kernel xz costs every boot
        // 0.4-1.7 s under TCG for ext4 + btrfs, while the archive is only 4 %
        // larger (zstd compresses the plain modules well).
        let data = read_module_plain(&mdir.join(rel))?;
        let name = plain_module_path(rel).unwrap_or_else(|| rel.to_string());
        ar.add(&format!("{lib}/{name}"), Node::File { data, mode: 0o644 });
        paths.insert(rel.to_string());
    }
    // The index as the boot reads it: only the modules in the archive, so the init
    // parses a few KiB instead of the kernel's whole index; the storage drivers it
    // lacks go to a separate file, read only to diagnose a failed boot.
    let (dep, alias, names) = subset_index_text(&texts.dep, &texts.alias, &paths);
    let dep = plain_dep_paths(&dep);
    let storage = storage_aliases_text(&texts.dep, &texts.alias, &names);
    let mut text_file = |name: &str, text: String| {
        ar.add(
            &format!("{lib}/{name}"),
            Node::File {
                data: text.into_bytes(),
                mode: 0o644,
            },
        )
    };
    text_file("modules.dep", dep);
    text_file("modules.alias", alias);
    text_file(STORAGE_ALIASES, storage);
    if mdir.join("modules.builtin").exists() {
        text_file("modules.builtin", texts.builtin);
    }
    let mut force_txt = force.join("\n");
    force_txt.push('\n');
    ar.add(
        "etc/hninit/modules.force",
        Node::File {
            data: force_txt.into_bytes(),
            mode: 0o644,
        },
    );
    let manifest = Manifest {
        kernel_release: &spec.kernel_release,
        profile,
        modules: &modules,
        force: &force,
        builder: format!("hninit {}", env!("CARGO_PKG_VERSION")),
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    ar.add(
        "etc/hninit/initramfs.json",
        Node::File {
            data: json,
            mode: 0o644,
        },
    );
    let (trust, keys) = trust_files(&spec.trust_keys, &spec.revoke_keys)?;
    for (rel, data) in trust {
        ar.add(&format!("etc/hninit/{rel}"), Node::File { data, mode: 0o644 });
    }
    if let Some(bb) = &spec.busybox {
        if !is_static_elf(bb)? {
            bail!(
                "busybox {} is not a static executable (install busybox-static)",
                bb.display()
            );
        }
        ar.add_file("bin/busybox", bb, 0o755)?;
        ar.add("bin/sh", Node::Symlink("busybox".into()));
    }

    let raw = ar.to_cpio()?;
    let data = compress(&raw, spec.compression)?;
    let compressed_size = data.len() as u64;
    Ok((data, InitramfsReport {
        profile,
        host_drivers,
        modules,
        force,
        builtin: builtin.into_iter().collect(),
        skipped,
        uncompressed_size: raw.len() as u64,
        compressed_size,
        compression: spec.compression,
        trusted_keys: keys.trusted,
        revoked_keys: keys.revoked,
    }))
}

/// A (trimmed) `modules.dep` naming the plain `.ko` files the archive holds
/// instead of the kernel's compressed ones.
fn plain_dep_paths(dep: &str) -> String {
    let mut out = String::with_capacity(dep.len());
    for line in dep.split_inclusive('\n') {
        let mut rest = line;
        while let Some(i) = rest.find(|c: char| c == ':' || c.is_whitespace()) {
            let (word, tail) = rest.split_at(i);
            out.push_str(&plain_module_path(word).unwrap_or_else(|| word.to_string()));
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
        out.push_str(&plain_module_path(rest).unwrap_or_else(|| rest.to_string()));
    }
    out
}

#[cfg(test)]
#[path = "initramfs_tests.rs"]
mod tests;
