//! Tests of the initramfs builder against a fake kernel module tree, read back
//! with the real `cpio` and `minisign`.

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

/// The real tools, failing the test with their stderr.
mod util {
    use std::process::Command;
    pub fn run_stdout(c: &mut Command) -> anyhow::Result<String> {
        let o = c.output()?;
        anyhow::ensure!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
    pub fn run(c: &mut Command) -> anyhow::Result<()> {
        run_stdout(c).map(|_| ())
    }
    pub fn find_program(name: &str) -> Option<()> {
        Command::new(name).arg("--version").output().ok().map(|_| ())
    }
}

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
    assert!(j["builder"].as_str().unwrap().starts_with("hninit "));
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
        crate::trust::PublicKey::parse_file(&t).unwrap().id
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
    let store = crate::trust::KeyStore::load(&x.join("etc/hninit")).unwrap();
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
