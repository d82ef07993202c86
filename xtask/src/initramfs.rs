//! The product's initramfs builder: resolves kernel modules (names or aliases,
//! with their dependency closure from `modules.dep`, using the init's own
//! [`hninit::modules::index::ModIndex`]) and writes the hninit newc cpio archive,
//! deterministically, optionally compressed.

use crate::profile::{host_storage_drivers, HostDriver, Profile};
use crate::util;
use anyhow::{bail, Context, Result};
use hninit::modules::drivers::{storage_aliases_text, STORAGE_ALIASES};
use hninit::modules::index::{subset_index_text, ModIndex};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::Write;
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

/// Files of the key store: (path under `/etc/hninit/`, content).
pub type TrustFiles = Vec<(String, Vec<u8>)>;

/// The key store files for `/etc/hninit/` (`trusted.d/NAME.pub` → content,
/// `revoked.d/ID`), each key file checked with the parser `/init` uses. A key
/// file keeps its name (`.pub` added if missing); two files of one name, or two
/// different keys with one id, are errors.
pub fn trust_files(trust_keys: &[PathBuf], revoke_keys: &[String]) -> Result<(TrustFiles, InitramfsKeys)> {
    use hninit::trust::{KeyId, KeyStore, PublicKey};
    let mut files = Vec::new();
    let mut store = KeyStore::default();
    let mut keys = InitramfsKeys::default();
    for path in trust_keys {
        let data = fs::read(path).with_context(|| format!("reading the trusted key {}", path.display()))?;
        let key = PublicKey::parse_file(&data)
            .map_err(|e| anyhow::anyhow!("trusted key {}: {e}", path.display()))?;
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("trusted key {}: no usable file name", path.display()))?;
        let name = if base.ends_with(".pub") { base.to_string() } else { format!("{base}.pub") };
        if name.starts_with('.') || files.iter().any(|(n, _): &(String, Vec<u8>)| n == &format!("trusted.d/{name}")) {
            bail!("trusted key {}: the name {name} is hidden or given twice", path.display());
        }
        let id = key.id.to_string();
        store.add(key, &name).map_err(|e| anyhow::anyhow!("trusted key {}: {e}", path.display()))?;
        files.push((format!("trusted.d/{name}"), data));
        keys.trusted.push((name, id));
    }
    for r in revoke_keys {
        let id: KeyId = r.parse().map_err(|e: String| anyhow::anyhow!("--revoke-key: {e}"))?;
        let shown = id.to_string();
        if !keys.revoked.contains(&shown) {
            files.push((format!("revoked.d/{shown}"), b"revoked (cargo xtask --revoke-key)\n".to_vec()));
            keys.revoked.push(shown);
        }
    }
    Ok((files, keys))
}

/// The trust part of an initramfs, for reports.
#[derive(Debug, Clone, Default)]
pub struct InitramfsKeys {
    pub trusted: Vec<(String, String)>,
    pub revoked: Vec<String>,
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

/// One archive member.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// A deterministic newc archive under construction (paths without a leading `/`).
#[derive(Debug, Default)]
pub(crate) struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    pub(crate) fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.nodes
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Node::Dir);
            parent = p.parent();
        }
        self.nodes.insert(path, node);
    }

    pub(crate) fn add_file(&mut self, path: &str, src: &Path, mode: u32) -> Result<()> {
        let data =
            fs::read(src).with_context(|| format!("reading {} for {path}", src.display()))?;
        self.add(path, Node::File { data, mode });
        Ok(())
    }

    /// Serialises in path order: parents come before children.
    pub(crate) fn to_cpio(&self) -> Result<Vec<u8>> {
        use cpio::newc::{Builder, ModeFileType};
        let mut out = Vec::new();
        for (i, (path, node)) in self.nodes.iter().enumerate() {
            let b = Builder::new(path).ino(i as u32 + 1).uid(0).gid(0).mtime(0);
            let (b, data): (Builder, &[u8]) = match node {
                Node::Dir => (
                    b.mode(0o755)
                        .set_mode_file_type(ModeFileType::Directory)
                        .nlink(2),
                    &[],
                ),
                Node::File { data, mode } => (
                    b.mode(*mode).set_mode_file_type(ModeFileType::Regular),
                    data,
                ),
                Node::Symlink(t) => (
                    b.mode(0o777).set_mode_file_type(ModeFileType::Symlink),
                    t.as_bytes(),
                ),
                Node::CharDev { major, minor, mode } => (
                    b.mode(*mode)
                        .set_mode_file_type(ModeFileType::Char)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
            };
            let size = u32::try_from(data.len())
                .with_context(|| format!("{path} is too large for cpio"))?;
            let mut w = b.write(&mut out, size);
            w.write_all(data)
                .with_context(|| format!("archiving {path}"))?;
            w.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        Ok(out)
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
        let data = crate::kernel::read_module_plain(&mdir.join(rel))?;
        let name = crate::kernel::plain_module_path(rel).unwrap_or_else(|| rel.to_string());
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
        builder: format!("hninit-xtask {}", env!("CARGO_PKG_VERSION")),
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
        if !util::is_static_elf(bb)? {
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
    util::write_atomic(out, &data)
        .with_context(|| format!("writing the initramfs {}", out.display()))?;
    Ok(InitramfsReport {
        profile,
        host_drivers,
        modules,
        force,
        builtin: builtin.into_iter().collect(),
        skipped,
        uncompressed_size: raw.len() as u64,
        compressed_size: data.len() as u64,
        compression: spec.compression,
        trusted_keys: keys.trusted,
        revoked_keys: keys.revoked,
    })
}

/// A (trimmed) `modules.dep` naming the plain `.ko` files the archive holds
/// instead of the kernel's compressed ones.
fn plain_dep_paths(dep: &str) -> String {
    let mut out = String::with_capacity(dep.len());
    for line in dep.split_inclusive('\n') {
        let mut rest = line;
        while let Some(i) = rest.find(|c: char| c == ':' || c.is_whitespace()) {
            let (word, tail) = rest.split_at(i);
            out.push_str(&crate::kernel::plain_module_path(word).unwrap_or_else(|| word.to_string()));
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
        out.push_str(&crate::kernel::plain_module_path(rest).unwrap_or_else(|| rest.to_string()));
    }
    out
}

/// `raw` compressed as the product's initramfs is.
pub(crate) fn compress(raw: &[u8], c: Compression) -> Result<Vec<u8>> {
    Ok(match c {
        Compression::None => raw.to_vec(),
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
            enc.include_checksum(true)?;
            enc.set_pledged_src_size(Some(raw.len() as u64))?;
            enc.write_all(raw)?;
            enc.finish().context("zstd compression")?
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(raw)?;
            enc.finish().context("gzip compression")?
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn added_modules_extend_the_given_list_or_the_default_set() {
        let add = vec!["xfs".to_string()];
        let x = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(with_added_modules(None, Vec::new(), &add), (Some(Profile::Server), x(&["xfs"])));
        assert_eq!(with_added_modules(None, x(&["ext4"]), &add), (None, x(&["ext4", "xfs"])));
        assert_eq!(with_added_modules(Some(Profile::Vm), x(&["ext4"]), &add), (Some(Profile::Vm), x(&["ext4", "xfs"])));
        assert_eq!(with_added_modules(None, Vec::new(), &[]), (None, Vec::new()));
    }

    use super::*;
    use std::process::Command;

    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n\
kernel/crypto/crc32c_generic.ko:\nkernel/drivers/block/loop.ko:\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/net/dummy-x.ko:\n\
kernel/drivers/ata/ata_piix.ko:\nkernel/sound/core/snd.ko:\n";
    const ALIAS: &str = "# Aliases extracted from modules themselves.\nalias fs-ext4 ext4\nalias crypto-crc32c crc32c_generic\n\
alias virtio:d00000002v* virtio_blk\nalias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix\nalias sound-service-*-0 snd\n\
alias devname:loop-control loop\n";
    const BUILTIN: &str = "kernel/fs/vfat.ko\n";

    fn fake_kernel(dir: &Path) -> PathBuf {
        let m = dir.join("lib/modules/9.9.9-test");
        for line in DEP.lines() {
            let p = m.join(line.split(':').next().unwrap());
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, format!("module {}", p.display())).unwrap();
        }
        fs::write(m.join("modules.dep"), DEP).unwrap();
        fs::write(m.join("modules.alias"), ALIAS).unwrap();
        fs::write(m.join("modules.builtin"), BUILTIN).unwrap();
        m
    }

    fn spec(dir: &Path, mdir: &Path, c: Compression) -> InitramfsSpec {
        let init = dir.join("init-bin");
        fs::write(&init, b"#!/bin/true\n").unwrap();
        let mut s = InitramfsSpec::new(&init, "9.9.9-test", mdir);
        s.modules = vec![
            "fs-ext4".into(),
            "virtio:d00000002v00001AF4".into(),
            "vfat".into(),
            "dummy_x".into(),
        ];
        s.compression = c;
        s
    }

    /// A Debian 13 style tree: the same modules compressed (`.ko.zst` here,
    /// `.ko.xz` there; `kernel::read_module_plain` handles both).
    #[test]
    fn compressed_modules_go_in_plain() {
        let d = tempfile::tempdir().unwrap();
        let m = fake_kernel(d.path());
        let mut dep = String::new();
        for line in DEP.lines() {
            let (path, deps) = line.split_once(':').unwrap();
            let plain = m.join(path);
            let data = fs::read(&plain).unwrap();
            fs::write(m.join(format!("{path}.zst")), zstd::stream::encode_all(&data[..], 3).unwrap()).unwrap();
            fs::remove_file(&plain).unwrap();
            let deps: Vec<String> = deps.split_whitespace().map(|x| format!("{x}.zst")).collect();
            dep.push_str(&format!("{path}.zst: {}\n", deps.join(" ")));
        }
        fs::write(m.join("modules.dep"), &dep).unwrap();
        let out = d.path().join("initramfs.cpio");
        let rep = build_initramfs(&spec(d.path(), &m, Compression::None), &out).unwrap();
        assert!(rep.modules.contains(&"virtio_blk".to_string()));
        let x = d.path().join("x");
        fs::create_dir(&x).unwrap();
        util::run(
            Command::new("cpio")
                .current_dir(&x)
                .args(["-id", "--quiet", "--no-absolute-filenames", "-F"])
                .arg(&out),
        )
        .unwrap();
        let lib = x.join("lib/modules/9.9.9-test");
        let ext4 = lib.join("kernel/fs/ext4/ext4.ko");
        assert_eq!(fs::read_to_string(&ext4).unwrap(), format!("module {}", m.join("kernel/fs/ext4/ext4.ko").display()));
        assert!(!lib.join("kernel/fs/ext4/ext4.ko.zst").exists());
        let dep = fs::read_to_string(lib.join("modules.dep")).unwrap();
        assert!(!dep.contains(".zst"), "{dep}");
        assert!(dep.contains("kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"), "{dep}");
        // The boot's index finds every module's file.
        let idx = ModIndex::parse(&dep, "", "");
        for name in &rep.modules {
            assert!(lib.join(idx.path_of(name).unwrap()).is_file(), "{name}");
        }
    }

    #[test]
    fn plain_dep_paths_keeps_the_format() {
        assert_eq!(
            plain_dep_paths("a/x.ko.xz: b/y.ko.xz c/z.ko\nc/z.ko:\nb/y.ko.xz:\n"),
            "a/x.ko: b/y.ko c/z.ko\nc/z.ko:\nb/y.ko:\n"
        );
        assert_eq!(plain_dep_paths(""), "");
    }

    #[test]
    fn resolves_names_aliases_builtins() {
        let idx = ModIndex::parse(DEP, ALIAS, BUILTIN);
        let r = |q: &str| resolve(&idx, q);
        assert_eq!(r("fs-ext4"), Some(Resolved::Modules(vec!["ext4".into()])));
        assert_eq!(
            r("dummy-x"),
            Some(Resolved::Modules(vec!["dummy_x".into()]))
        );
        assert_eq!(
            r("crypto-crc32c"),
            Some(Resolved::Modules(vec!["crc32c_generic".into()]))
        );
        assert_eq!(
            r("virtio:d00000002v00001AF4"),
            Some(Resolved::Modules(vec!["virtio_blk".into()]))
        );
        assert_eq!(r("vfat"), Some(Resolved::Builtin));
        assert_eq!(r("nope"), None);
    }

    #[test]
    fn closure_includes_dependencies() {
        let d = tempfile::tempdir().unwrap();
        let m = fake_kernel(d.path());
        let mut s = spec(d.path(), &m, Compression::None);
        s.modules = vec!["virtio_blk".into(), "ext4".into()];
        let rep = build_initramfs(&s, &d.path().join("x")).unwrap();
        let mut want = vec![
            "crc16",
            "crc32c_generic",
            "ext4",
            "jbd2",
            "loop",
            "mbcache",
            "virtio",
            "virtio_blk",
            "virtio_ring",
        ];
        want.sort();
        assert_eq!(rep.modules, want);
    }

    #[test]
    fn default_lists() {
        assert!(default_modules().contains(&"virtio_blk".to_string()));
        assert_eq!(default_force(), ["crc32c_generic", "loop"]);
    }

    #[test]
    fn unknown_module_is_named() {
        let d = tempfile::tempdir().unwrap();
        let m = fake_kernel(d.path());
        let mut s = spec(d.path(), &m, Compression::None);
        s.modules.push("no-such-thing".into());
        let e = build_initramfs(&s, &d.path().join("x")).unwrap_err();
        assert!(format!("{e:#}").contains("no-such-thing"), "{e:#}");
    }

    #[test]
    fn archive_layout_read_back_with_cpio() {
        if util::find_program("cpio").is_none() {
            eprintln!("cpio not installed; skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let m = fake_kernel(d.path());
        let out = d.path().join("initramfs.cpio");
        let mut s = spec(d.path(), &m, Compression::None);
        s.busybox = Some(PathBuf::from("/bin/busybox")).filter(|p| p.exists());
        let rep = build_initramfs(&s, &out).unwrap();
        assert_eq!(rep.force, ["crc32c_generic", "loop"]);
        assert_eq!(rep.builtin, ["vfat"]);
        assert!(rep.modules.contains(&"jbd2".to_string()));
        let listing =
            util::run_stdout(Command::new("cpio").arg("-itv").arg("-F").arg(&out)).unwrap();
        let line = |name: &str| {
            listing
                .lines()
                .find(|l| {
                    l.split_whitespace().last() == Some(name) || l.contains(&format!(" {name} -> "))
                })
                .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
                .to_string()
        };
        assert!(line("init").starts_with("-rwxr-xr-x"));
        assert!(line("init").contains("root     root"), "{}", line("init"));
        assert!(line("dev/console").starts_with("crw-------"));
        assert!(
            line("dev/console").contains("5,   1"),
            "{}",
            line("dev/console")
        );
        assert!(line("sbin/modprobe").starts_with("lrwxrwxrwx"));
        assert!(line("sbin/modprobe").ends_with("-> /init"));
        line("lib/modules/9.9.9-test/kernel/fs/jbd2/jbd2.ko");
        line("lib/modules/9.9.9-test/kernel/drivers/block/loop.ko");
        line("lib/modules/9.9.9-test/modules.alias");
        line("newroot");
        line("etc/hninit/initramfs.json");
        if s.busybox.is_some() {
            line("bin/busybox");
        }
        // Parents precede children; names are sorted.
        let names = util::run_stdout(
            Command::new("cpio")
                .arg("-it")
                .arg("--quiet")
                .arg("-F")
                .arg(&out),
        )
        .unwrap();
        let names: Vec<&str> = names.lines().collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);

        // Extract and compare contents.
        let x = d.path().join("x");
        fs::create_dir(&x).unwrap();
        util::run(
            Command::new("cpio")
                .current_dir(&x)
                .args(["-id", "--quiet", "--no-absolute-filenames", "-F"])
                .arg(&out)
                .args(["etc/*", "lib/modules/9.9.9-test/modules.*", "lib/modules/9.9.9-test/hninit.*"]),
        )
        .unwrap();
        // The index holds the modules in the archive only; the absent storage
        // driver's aliases are in their own file; the absent sound module nowhere.
        let lib = x.join("lib/modules/9.9.9-test");
        let dep = fs::read_to_string(lib.join("modules.dep")).unwrap();
        assert_eq!(dep.lines().count(), rep.modules.len(), "{dep}");
        assert!(!dep.contains("ata_piix") && !dep.contains("snd.ko"), "{dep}");
        assert_eq!(
            fs::read_to_string(lib.join("modules.alias")).unwrap(),
            "# Aliases extracted from modules themselves.\nalias fs-ext4 ext4\nalias crypto-crc32c crc32c_generic\n\
alias virtio:d00000002v* virtio_blk\nalias devname:loop-control loop\n"
        );
        let storage = fs::read_to_string(lib.join("hninit.storage-aliases")).unwrap();
        let storage: Vec<&str> = storage.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(storage, ["alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix"]);
        assert_eq!(fs::read_to_string(lib.join("modules.builtin")).unwrap(), BUILTIN);
        // What the boot builds from them (src/drivers.rs) resolves as the full index does.
        let full = ModIndex::parse(DEP, ALIAS, BUILTIN);
        let trimmed = ModIndex::parse(&dep, &fs::read_to_string(lib.join("modules.alias")).unwrap(), BUILTIN);
        for q in ["fs-ext4", "crypto-crc32c", "virtio:d00000002v00001AF4", "devname:loop-control", "ext4", "vfat"] {
            assert_eq!(trimmed.resolve(q), full.resolve(q), "{q}");
        }
        assert!(trimmed.resolve("pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80").is_empty());
        assert_eq!(
            fs::read_to_string(x.join("etc/hninit/modules.force")).unwrap(),
            "crc32c_generic\nloop\n"
        );
        let j: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(x.join("etc/hninit/initramfs.json")).unwrap())
                .unwrap();
        assert_eq!(j["kernel_release"], "9.9.9-test");
        assert_eq!(j["force"][1], "loop");
        assert!(j["builder"].as_str().unwrap().starts_with("hninit-xtask "));
    }

    /// `--trust-key`/`--revoke-key`: the key store lands in the archive as `/init`
    /// reads it (keys made by the real minisign tool).
    #[test]
    fn trusted_and_revoked_keys_in_the_archive() {
        let d = tempfile::tempdir().unwrap();
        for k in ["ops-2026", "ops-2027"] {
            let st = Command::new("minisign")
                .args(["-G", "-W", "-p", &format!("{k}.pub"), "-s", &format!("{k}.key")])
                .current_dir(d.path())
                .stdout(std::process::Stdio::null())
                .status()
                .expect("minisign (Debian package minisign) is needed");
            assert!(st.success());
        }
        // A key file without .pub gets it.
        fs::copy(d.path().join("ops-2027.pub"), d.path().join("ops-2027")).unwrap();
        let id = |k: &str| {
            let t = fs::read(d.path().join(format!("{k}.pub"))).unwrap();
            hninit::trust::PublicKey::parse_file(&t).unwrap().id
        };
        let m = fake_kernel(d.path());
        let out = d.path().join("initramfs.cpio");
        let mut s = spec(d.path(), &m, Compression::None);
        s.trust_keys = vec![d.path().join("ops-2026.pub"), d.path().join("ops-2027")];
        s.revoke_keys = vec![id("ops-2026").to_string().to_lowercase(), "7DF4BED35476C6A".into()];
        let rep = build_initramfs(&s, &out).unwrap();
        assert_eq!(
            rep.trusted_keys,
            [("ops-2026.pub".to_string(), id("ops-2026").to_string()), ("ops-2027.pub".to_string(), id("ops-2027").to_string())]
        );
        let x = d.path().join("x");
        fs::create_dir(&x).unwrap();
        util::run(
            Command::new("cpio")
                .current_dir(&x)
                .args(["-id", "--quiet", "--no-absolute-filenames", "-F"])
                .arg(&out)
                .arg("etc/*"),
        )
        .unwrap();
        let store = hninit::trust::KeyStore::load(&x.join("etc/hninit")).unwrap();
        assert_eq!(store.trusted.len(), 2);
        assert!(store.find(id("ops-2027")).is_some());
        assert!(store.is_revoked(id("ops-2026")));
        assert_eq!(store.revoked.len(), 2);

        // Refused: a file that is no key, a malformed id, two files of one name.
        s.revoke_keys.clear();
        s.trust_keys = vec![d.path().join("ops-2026.key")];
        let e = build_initramfs(&s, &out).unwrap_err().to_string();
        assert!(e.contains("ops-2026.key: public key line 2"), "{e}");
        s.trust_keys.clear();
        s.revoke_keys = vec!["nothex".into()];
        assert!(build_initramfs(&s, &out).unwrap_err().to_string().contains("--revoke-key"));
        s.revoke_keys.clear();
        s.trust_keys = vec![d.path().join("ops-2027.pub"), d.path().join("ops-2027")];
        assert!(build_initramfs(&s, &out).unwrap_err().to_string().contains("given twice"));
    }

    #[test]
    fn deterministic_and_compressed_forms_agree() {
        let d = tempfile::tempdir().unwrap();
        let m = fake_kernel(d.path());
        let s = spec(d.path(), &m, Compression::None);
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        build_initramfs(&s, &a).unwrap();
        build_initramfs(&s, &b).unwrap();
        let raw = fs::read(&a).unwrap();
        assert_eq!(raw, fs::read(&b).unwrap());

        let z = d.path().join("z");
        let rep = build_initramfs(&spec(d.path(), &m, Compression::Zstd), &z).unwrap();
        assert_eq!(rep.uncompressed_size, raw.len() as u64);
        assert_eq!(
            zstd::stream::decode_all(fs::File::open(&z).unwrap()).unwrap(),
            raw
        );
        let g = d.path().join("g");
        build_initramfs(&spec(d.path(), &m, Compression::Gzip), &g).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(fs::File::open(&g).unwrap()),
            &mut back,
        )
        .unwrap();
        assert_eq!(back, raw);
    }
}
