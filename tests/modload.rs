//! Module loading with a fake loader: dependency order, real parallelism (proved
//! with a rendezvous, not with timing), exactly-once loading under concurrent
//! `ensure` calls, failure propagation, missing files and names.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use hninit::modules::index::ModIndex;
use hninit::modules::load::{parse_proc_modules, KernelLoader, LoadReport, ModuleLoader, ModuleSet};

mod common;

/// Records every load; checks at the start of each load that the module's deps
/// are done; fails or reports missing the modules it is told to; modules in
/// `rendezvous` wait until all of them are inside `load` at the same time.
struct Fake<'a> {
    index: &'a ModIndex,
    fail: HashSet<String>,
    missing: HashSet<String>,
    rendezvous: HashSet<String>,
    state: Mutex<FakeState>,
    arrived: Condvar,
}

#[derive(Default)]
struct FakeState {
    started: Vec<String>,
    done: HashSet<String>,
    count: HashMap<String, usize>,
    violations: Vec<String>,
    at_rendezvous: usize,
    rendezvous_timeouts: usize,
    paths: HashMap<String, String>,
}

impl<'a> Fake<'a> {
    fn new(index: &'a ModIndex) -> Self {
        Fake {
            index,
            fail: HashSet::new(),
            missing: HashSet::new(),
            rendezvous: HashSet::new(),
            state: Mutex::new(FakeState::default()),
            arrived: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

impl ModuleLoader for Fake<'_> {
    fn load(&self, name: &str, path: &Path) -> io::Result<()> {
        {
            let mut st = self.state();
            st.started.push(name.to_string());
            *st.count.entry(name.to_string()).or_default() += 1;
            st.paths
                .insert(name.to_string(), path.display().to_string());
            for d in self.index.deps_of(name) {
                if !self.index.is_builtin(d) && !st.done.contains(d) {
                    st.violations
                        .push(format!("{name} started before its dep {d}"));
                }
            }
        }
        if self.rendezvous.contains(name) {
            let mut st = self.state();
            st.at_rendezvous += 1;
            self.arrived.notify_all();
            let (mut st, timeout) = self
                .arrived
                .wait_timeout_while(st, Duration::from_secs(20), |s| {
                    s.at_rendezvous < self.rendezvous.len()
                })
                .unwrap();
            if timeout.timed_out() {
                st.rendezvous_timeouts += 1;
            }
        }
        if self.missing.contains(name) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        if self.fail.contains(name) {
            return Err(io::Error::other("Exec format error"));
        }
        self.state().done.insert(name.to_string());
        Ok(())
    }
}

const DEP: &str = "\
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/loop.ko:
kernel/a.ko:
kernel/b.ko: kernel/a.ko
kernel/c.ko: kernel/b.ko
kernel/d.ko: kernel/c.ko kernel/builtin_dep.ko
kernel/cyc1.ko: kernel/cyc2.ko
kernel/cyc2.ko: kernel/cyc1.ko
";

const ALIAS: &str = "\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias fs-ext4 ext4
";

const BUILTIN: &str = "kernel/builtin_dep.ko\nkernel/fw.ko\n";

fn idx() -> ModIndex {
    ModIndex::parse(DEP, ALIAS, BUILTIN)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn loaded_names(r: &LoadReport) -> Vec<String> {
    r.loaded.iter().map(|(n, _)| n.clone()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn proc_modules_parser() {
    let text = "\
ext4 1003520 1 - Live 0x0000000000000000
crc16 16384 1 ext4, Live 0x0000000000000000
dm-mod 184320 0 - Live 0x0000000000000000

virtio_blk 20480 2 - Loading 0x0000000000000000
";
    let m = parse_proc_modules(text);
    assert_eq!(m.len(), 4);
    for n in ["ext4", "crc16", "dm_mod", "virtio_blk"] {
        assert!(m.contains(n), "{n}");
    }
    assert!(parse_proc_modules("").is_empty());
}

#[test]
fn loads_deps_before_dependents() {
    let i = idx();
    let fake = Fake::new(&i);
    let set = ModuleSet::with_loaded(&i, &fake, 4, HashSet::new());
    let r = set.ensure(&s(&[
        "ext4",
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        "virtio-blk",
    ]));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        sorted(loaded_names(&r)),
        s(&[
            "crc16",
            "ext4",
            "jbd2",
            "mbcache",
            "virtio",
            "virtio_blk",
            "virtio_pci",
            "virtio_ring"
        ])
    );
    let st = fake.state();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    assert!(st.count.values().all(|&c| c == 1));
    assert_eq!(
        st.paths.get("ext4").map(String::as_str),
        Some("kernel/fs/ext4/ext4.ko")
    );
    assert!(set.is_loaded("ext4") && set.is_loaded("virtio_ring") && !set.is_loaded("loop"));
}

#[test]
fn single_thread_works_too() {
    let i = idx();
    let fake = Fake::new(&i);
    let set = ModuleSet::with_loaded(&i, &fake, 1, HashSet::new());
    let r = set.ensure(&s(&["d", "ext4"]));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(loaded_names(&r).len(), 8);
    assert!(fake.state().violations.is_empty());
}

/// Independent modules must be inside `load` at the same time: each waits for
/// all the others, so sequential loading would time out the rendezvous.
#[test]
fn independent_modules_load_in_parallel() {
    let i = idx();
    let mut fake = Fake::new(&i);
    fake.rendezvous = s(&["crc16", "mbcache", "jbd2", "loop"])
        .into_iter()
        .collect();
    let set = ModuleSet::with_loaded(&i, &fake, 4, HashSet::new());
    let r = set.ensure(&s(&["ext4", "loop"]));
    assert!(r.is_ok(), "{r:?}");
    let st = fake.state();
    assert_eq!(
        st.rendezvous_timeouts, 0,
        "the four independent modules did not load concurrently"
    );
    assert_eq!(st.at_rendezvous, 4);
    assert_eq!(st.started.last().map(String::as_str), Some("ext4"));
    assert!(st.violations.is_empty(), "{:?}", st.violations);
}

#[test]
fn each_module_loaded_once_under_concurrent_ensure() {
    let i = idx();
    let fake = Fake::new(&i);
    let set = ModuleSet::with_loaded(&i, &fake, 3, HashSet::new());
    let requests = [
        s(&["ext4", "virtio_blk"]),
        s(&[
            "fs-ext4",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        ]),
        s(&["d", "jbd2", "virtio_ring"]),
        s(&["c", "ext4", "loop"]),
        s(&["virtio:d00000002v00001AF4", "b"]),
        s(&["loop", "d", "ext4", "virtio_pci"]),
    ];
    for _round in 0..20 {
        let reports: Vec<LoadReport> = std::thread::scope(|sc| {
            let handles: Vec<_> = requests
                .iter()
                .map(|req| sc.spawn(|| set.ensure(req)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &reports {
            assert!(r.is_ok(), "{r:?}");
        }
        let all: Vec<String> = reports.iter().flat_map(loaded_names).collect();
        let uniq: HashSet<&String> = all.iter().collect();
        assert_eq!(
            uniq.len(),
            all.len(),
            "a module was reported loaded twice: {all:?}"
        );
        // Each report accounts for its whole closure (loaded here or already there).
        for (req, r) in requests.iter().zip(&reports) {
            let mut have: HashSet<String> = loaded_names(r).into_iter().collect();
            have.extend(r.already.iter().cloned());
            for q in req {
                for m in i.resolve(q) {
                    for x in i.load_order(&[m]).unwrap() {
                        assert!(have.contains(&x), "{x} missing from {r:?}");
                    }
                }
            }
        }
    }
    let st = fake.state();
    assert!(st.count.values().all(|&c| c == 1), "{:?}", st.count);
    assert_eq!(st.count.len(), 13);
    assert!(st.violations.is_empty(), "{:?}", st.violations);
}

#[test]
fn failures_propagate_to_dependents() {
    let i = idx();
    let mut fake = Fake::new(&i);
    fake.fail.insert("a".into());
    let set = ModuleSet::with_loaded(&i, &fake, 4, HashSet::new());
    let r = set.ensure(&s(&["d", "loop"]));
    assert_eq!(loaded_names(&r), s(&["loop"]));
    let failed: HashMap<String, String> = r.failed.iter().cloned().collect();
    assert_eq!(failed.len(), 4, "{r:?}");
    assert_eq!(failed["a"], "Exec format error");
    assert_eq!(failed["b"], "dependency a failed");
    assert_eq!(failed["c"], "dependency b failed");
    assert_eq!(failed["d"], "dependency c failed");
    assert!(r.missing.is_empty());
    {
        let st = fake.state();
        assert_eq!(st.count.get("b"), None, "dependents are never attempted");
        assert_eq!(st.count.get("a"), Some(&1));
    }
    // A later call does not retry, and says why again.
    let r2 = set.ensure(&s(&["b"]));
    assert!(r2.loaded.is_empty());
    assert_eq!(
        r2.failed,
        vec![
            ("a".to_string(), "Exec format error".to_string()),
            ("b".to_string(), "dependency a failed".to_string())
        ]
    );
    assert_eq!(fake.state().count.get("a"), Some(&1));
}

#[test]
fn missing_names_and_files() {
    let i = idx();
    let mut fake = Fake::new(&i);
    fake.missing.insert("virtio".into());
    let set = ModuleSet::with_loaded(&i, &fake, 2, HashSet::new());
    let r = set.ensure(&s(&[
        "nonesuch",
        "pci:v00008086d00001234sv0sd0bc0sc0i0",
        "virtio_blk",
        "loop",
    ]));
    assert_eq!(
        r.missing,
        s(&["nonesuch", "pci:v00008086d00001234sv0sd0bc0sc0i0", "virtio"])
    );
    assert_eq!(
        r.failed,
        vec![(
            "virtio_blk".to_string(),
            "dependency virtio missing".to_string()
        )]
    );
    assert_eq!(sorted(loaded_names(&r)), s(&["loop", "virtio_ring"]));
    let r2 = set.ensure(&s(&["virtio"]));
    assert_eq!(r2.missing, s(&["virtio"]));
    assert_eq!(fake.state().count.get("virtio"), Some(&1));
}

#[test]
fn already_loaded_builtin_and_idempotent() {
    let i = idx();
    let fake = Fake::new(&i);
    let pre: HashSet<String> = s(&["virtio", "virtio-ring"]).into_iter().collect();
    let set = ModuleSet::with_loaded(&i, &fake, 4, pre);
    let r = set.ensure(&s(&["virtio_blk", "fw"]));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(loaded_names(&r), s(&["virtio_blk"]));
    assert_eq!(
        sorted(r.already.clone()),
        s(&["fw", "virtio", "virtio_ring"])
    );
    let r = set.ensure(&s(&["virtio_blk", "virtio_blk", "d"]));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(loaded_names(&r), s(&["a", "b", "c", "d"]));
    assert!(r.already.contains(&"virtio_blk".to_string()));
    let r = set.ensure(&s(&["d", "virtio_blk"]));
    assert!(r.loaded.is_empty());
    assert_eq!(
        sorted(r.already),
        s(&["a", "b", "c", "d", "virtio", "virtio_blk", "virtio_ring"])
    );
    assert!(fake.state().count.values().all(|&c| c == 1));
    assert_eq!(set.ensure(&[]), LoadReport::default());
}

#[test]
fn cycles_are_failures_not_hangs() {
    let i = idx();
    let fake = Fake::new(&i);
    let set = ModuleSet::with_loaded(&i, &fake, 4, HashSet::new());
    let r = set.ensure(&s(&["cyc1", "loop"]));
    assert_eq!(loaded_names(&r), s(&["loop"]));
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].0, "cyc1");
    assert!(r.failed[0].1.contains("cycle"), "{:?}", r.failed);
}

#[test]
fn kernel_loader_reports_absent_files_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let i = idx();
    let loader = KernelLoader::new(dir.path());
    assert_eq!(loader.root(), dir.path());
    let e = loader
        .load("loop", Path::new("kernel/drivers/block/loop.ko"))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    let set = ModuleSet::with_loaded(&i, loader, 2, HashSet::new());
    let r = set.ensure(&s(&["loop"]));
    assert_eq!(r.missing, s(&["loop"]));
    assert!(r.loaded.is_empty() && r.failed.is_empty());
}

/// With a real Debian tree (see tests/modindex.rs), the fake loader sees the
/// documented virtio + ext4 order constraints.
#[test]
fn real_tree_orders() {
    let Some(dir) = common::kernel_tree::real_tree() else {
        eprintln!("note: no real module tree, skipping");
        return;
    };
    let i = ModIndex::load(&dir).unwrap();
    let fake = Fake::new(&i);
    let set = ModuleSet::with_loaded(&i, &fake, 4, HashSet::new());
    let r = set.ensure(&s(&[
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        "virtio_blk",
        "crc32c_generic",
        "ext4",
        "loop",
    ]));
    assert!(r.is_ok(), "{r:?}");
    let st = fake.state();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    eprintln!("order: {:?}", st.started);
}

/// What the boot loads with the index the initramfs ships (trimmed to its modules
/// by the builder) is what it loaded with the full index: the same modules, with
/// the same paths, in a valid order; and a module the initramfs lacks is reported
/// missing instead of failing at its file.
#[test]
fn trimmed_index_loads_like_the_full_one() {
    use hninit::modules::index::subset_index_text;
    let Some(dir) = common::kernel_tree::real_tree() else {
        eprintln!("note: no real module tree, skipping");
        return;
    };
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (dep, alias, builtin) = (read("modules.dep"), read("modules.alias"), read("modules.builtin"));
    let full = ModIndex::parse(&dep, &alias, &builtin);
    let present = full.load_order(&s(&["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "loop", "ahci"])).unwrap();
    let paths: HashSet<String> = present.iter().map(|m| full.path_of(m).unwrap().to_string()).collect();
    let (tdep, talias, _) = subset_index_text(&dep, &alias, &paths);
    let trimmed = ModIndex::parse(&tdep, &talias, &builtin);
    let wanted = s(&[
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        "virtio:d00000002v00001AF4",
        "crc32c_generic",
        "fs-ext4",
        "loop",
    ]);
    let run = |i: &ModIndex| {
        let fake = Fake::new(i);
        let set = ModuleSet::with_loaded(i, &fake, 4, HashSet::new());
        let r = set.ensure(&wanted);
        assert!(r.is_ok(), "{r:?}");
        let st = fake.state();
        assert!(st.violations.is_empty(), "{:?}", st.violations);
        let mut paths: Vec<(String, String)> = st.paths.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
        paths.sort();
        (sorted(loaded_names(&r)), paths)
    };
    assert_eq!(run(&trimmed), run(&full));

    let fake = Fake::new(&trimmed);
    let set = ModuleSet::with_loaded(&trimmed, &fake, 2, HashSet::new());
    let r = set.ensure(&s(&["btrfs", "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80"]));
    assert_eq!(r.missing, s(&["btrfs", "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80"]));
    assert!(fake.state().started.is_empty());
}
