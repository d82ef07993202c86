//! Loading kernel modules: resolves names and modaliases through the
//! [`ModIndex`], loads each module's dependencies first and independent modules
//! in parallel (a module starts as soon as all of its dependencies are in), and
//! remembers what is loaded so that a module is never loaded twice, even when
//! [`ModuleSet::ensure`] runs on several threads at once. The syscall sits
//! behind [`ModuleLoader`] so that the scheduling is testable on the host.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::modules::index::{normalize_name, ModIndex};

/// Loads one module file into the kernel.
pub trait ModuleLoader: Sync {
    /// Loads module `name` from `path` (as `modules.dep` writes it, i.e. usually
    /// relative to the release directory). "Already loaded" is success; a
    /// missing file is an error of kind [`io::ErrorKind::NotFound`].
    fn load(&self, name: &str, path: &Path) -> io::Result<()>;
}

impl<T: ModuleLoader + ?Sized> ModuleLoader for &T {
    fn load(&self, name: &str, path: &Path) -> io::Result<()> {
        (**self).load(name, path)
    }
}

/// The real loader: `finit_module(2)` on the file under `root`
/// (e.g. `/lib/modules/<release>`).
#[derive(Debug, Clone)]
pub struct KernelLoader {
    root: PathBuf,
}

impl KernelLoader {
    pub fn new(root: impl Into<PathBuf>) -> KernelLoader {
        KernelLoader { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// CPU time (ns) the loading threads spent in `finit_module`, which is the
/// kernel's work (relocation, the module's init, its device probes), and the
/// number of calls: what the boot profile separates from hninit's own CPU time.
static KERNEL_CPU_NS: AtomicU64 = AtomicU64::new(0);
static KERNEL_CALLS: AtomicU64 = AtomicU64::new(0);

/// CPU time spent in `finit_module` so far, and the number of calls.
pub fn kernel_load_time() -> (Duration, u64) {
    (Duration::from_nanos(KERNEL_CPU_NS.load(Ordering::Relaxed)), KERNEL_CALLS.load(Ordering::Relaxed))
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// `MODULE_INIT_COMPRESSED_FILE`: let the kernel decompress (Linux ≥ 5.17).
const MODULE_INIT_COMPRESSED_FILE: core::ffi::c_int = 4;

impl ModuleLoader for KernelLoader {
    fn load(&self, _name: &str, path: &Path) -> io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        let full = self.root.join(path);
        let fd = rustix::fs::open(&full, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let compressed = path
            .extension()
            .is_some_and(|e| e == "xz" || e == "zst" || e == "gz");
        let flags = if compressed {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        let cpu = thread_cpu();
        let result = rustix::system::finit_module(&fd, c"", flags);
        KERNEL_CPU_NS.fetch_add(thread_cpu().saturating_sub(cpu).as_nanos() as u64, Ordering::Relaxed);
        KERNEL_CALLS.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The names of the modules listed in `/proc/modules` (first word of each line),
/// normalised.
pub fn parse_proc_modules(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(normalize_name)
        .filter(|n| !n.is_empty())
        .collect()
}

/// What one [`ModuleSet::ensure`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Modules this call loaded, in completion order, with the time each took.
    pub loaded: Vec<(String, Duration)>,
    /// Modules needed that were already present (built in, loaded before, or
    /// loaded meanwhile by a concurrent call).
    pub already: Vec<String>,
    /// Modules that failed (with the error), including those skipped because a
    /// dependency failed or is missing, and names whose dependencies are broken.
    pub failed: Vec<(String, String)>,
    /// Names or aliases that resolved to nothing, and modules whose file is
    /// not present.
    pub missing: Vec<String>,
}

impl LoadReport {
    /// True when nothing failed and nothing was missing.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Loading,
    Loaded,
    Failed(String),
    Missing,
}

/// A set of modules to load, shared by every caller: the index, the loader and
/// what has been loaded or attempted so far.
pub struct ModuleSet<'a, L: ModuleLoader> {
    index: &'a ModIndex,
    loader: L,
    threads: usize,
    status: Mutex<HashMap<String, Status>>,
    changed: Condvar,
}

/// Per-call state of one planned module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Pending,
    Taken,
    Ok,
    Bad,
}

struct Plan {
    names: Vec<String>,
    paths: Vec<String>,
    /// Indices (into `names`) of each module's dependencies within the plan.
    deps: Vec<Vec<usize>>,
}

struct Local {
    jobs: Vec<Job>,
    remaining: usize,
    report: LoadReport,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'a, L: ModuleLoader> ModuleSet<'a, L> {
    /// A set that counts the modules in `/proc/modules` as loaded (none when it
    /// cannot be read) and loads with up to `threads` threads.
    pub fn new(index: &'a ModIndex, loader: L, threads: usize) -> Self {
        let loaded = std::fs::read_to_string("/proc/modules")
            .map(|t| parse_proc_modules(&t))
            .unwrap_or_default();
        Self::with_loaded(index, loader, threads, loaded)
    }

    /// A set that counts `loaded` as already loaded.
    pub fn with_loaded(
        index: &'a ModIndex,
        loader: L,
        threads: usize,
        loaded: HashSet<String>,
    ) -> Self {
        let status = loaded
            .into_iter()
            .map(|n| (normalize_name(&n), Status::Loaded))
            .collect();
        ModuleSet {
            index,
            loader,
            threads: threads.max(1),
            status: Mutex::new(status),
            changed: Condvar::new(),
        }
    }

    pub fn index(&self) -> &'a ModIndex {
        self.index
    }

    pub fn loader(&self) -> &L {
        &self.loader
    }

    /// True when the module is loaded (by us or before us) or built in.
    pub fn is_loaded(&self, name: &str) -> bool {
        let name = normalize_name(name);
        self.index.is_builtin(&name) || lock(&self.status).get(&name) == Some(&Status::Loaded)
    }

    /// Makes sure the modules named (names or modaliases) and their dependencies
    /// are loaded. Never loads a module twice; a module that failed or was
    /// missing before is reported again, not retried.
    pub fn ensure(&self, names_or_aliases: &[String]) -> LoadReport {
        let mut report = LoadReport::default();
        let mut roots: Vec<String> = Vec::new();
        for query in names_or_aliases {
            let found = self.index.resolve(query);
            if found.is_empty() {
                if !report.missing.contains(query) {
                    report.missing.push(query.clone());
                }
                continue;
            }
            for m in found {
                if !roots.contains(&m) {
                    roots.push(m);
                }
            }
        }

        // One topological order for the union of the roots' closures.
        let mut order: Vec<String> = Vec::new();
        let mut in_order: HashSet<String> = HashSet::new();
        for root in roots {
            if self.index.path_of(&root).is_none() {
                report.already.push(root); // built in
                continue;
            }
            match self.index.load_order(std::slice::from_ref(&root)) {
                Ok(o) => {
                    for m in o {
                        if in_order.insert(m.clone()) {
                            order.push(m);
                        }
                    }
                }
                Err(e) => report.failed.push((root, e.to_string())),
            }
        }
        let pos: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let plan = Plan {
            paths: order
                .iter()
                .map(|n| self.index.path_of(n).unwrap_or_default().to_string())
                .collect(),
            deps: order
                .iter()
                .map(|n| {
                    self.index
                        .deps_of(n)
                        .iter()
                        .filter_map(|d| pos.get(d.as_str()).copied())
                        .collect()
                })
                .collect(),
            names: order.clone(),
        };
        if plan.names.is_empty() {
            return report;
        }

        let local = Mutex::new(Local {
            jobs: vec![Job::Pending; plan.names.len()],
            remaining: plan.names.len(),
            report,
        });
        let workers = self.threads.min(plan.names.len());
        if workers <= 1 {
            self.work(&plan, &local);
        } else {
            std::thread::scope(|s| {
                for _ in 1..workers {
                    s.spawn(|| self.work(&plan, &local));
                }
                self.work(&plan, &local);
            });
        }
        local.into_inner().unwrap_or_else(|e| e.into_inner()).report
    }

    /// One worker: repeatedly settles what can be settled and loads the first
    /// module whose dependencies are all loaded. Lock order: `status`, then `local`.
    fn work(&self, plan: &Plan, local: &Mutex<Local>) {
        let mut status = lock(&self.status);
        loop {
            let mut l = lock(local);
            if l.remaining == 0 {
                drop(l);
                self.changed.notify_all();
                return;
            }
            let pick = self.settle(plan, &status, &mut l);
            let Some(i) = pick else {
                if l.remaining == 0 {
                    continue;
                }
                drop(l);
                status = self.changed.wait(status).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let (Some(name), Some(path)) = (plan.names.get(i), plan.paths.get(i)) else {
                return; // cannot happen: `settle` returns indices of `plan`
            };
            if let Some(job) = l.jobs.get_mut(i) {
                *job = Job::Taken;
            }
            status.insert(name.clone(), Status::Loading);
            drop(l);
            drop(status);

            let start = Instant::now();
            let result = self.loader.load(name, Path::new(path));
            let took = start.elapsed();

            status = lock(&self.status);
            let mut l = lock(local);
            let (new_status, job) = match result {
                Ok(()) => {
                    l.report.loaded.push((name.clone(), took));
                    (Status::Loaded, Job::Ok)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    l.report.missing.push(name.clone());
                    (Status::Missing, Job::Bad)
                }
                Err(e) => {
                    let msg = e.to_string();
                    l.report.failed.push((name.clone(), msg.clone()));
                    (Status::Failed(msg), Job::Bad)
                }
            };
            status.insert(name.clone(), new_status);
            if let Some(j) = l.jobs.get_mut(i) {
                *j = job;
            }
            l.remaining = l.remaining.saturating_sub(1);
            drop(l);
            self.changed.notify_all();
        }
    }

    /// Settles every pending job whose outcome is already known (loaded,
    /// failed or missing before, or a dependency is bad) and returns the first
    /// pending job that is ready to load.
    fn settle(
        &self,
        plan: &Plan,
        status: &HashMap<String, Status>,
        l: &mut Local,
    ) -> Option<usize> {
        for (i, name) in plan.names.iter().enumerate() {
            if l.jobs.get(i) != Some(&Job::Pending) {
                continue;
            }
            let outcome = match status.get(name) {
                Some(Status::Loaded) => {
                    l.report.already.push(name.clone());
                    Some(Job::Ok)
                }
                Some(Status::Failed(e)) => {
                    l.report.failed.push((name.clone(), e.clone()));
                    Some(Job::Bad)
                }
                Some(Status::Missing) => {
                    l.report.missing.push(name.clone());
                    Some(Job::Bad)
                }
                Some(Status::Loading) => None, // another call is on it
                None => {
                    let mut ready = true;
                    let mut bad = None;
                    for &d in plan.deps.get(i).map_or(&[][..], |v| v.as_slice()) {
                        let dname = plan.names.get(d).map_or("?", |s| s.as_str());
                        match (l.jobs.get(d), status.get(dname)) {
                            (_, Some(Status::Missing)) => {
                                bad = Some(format!("dependency {dname} missing"));
                                break;
                            }
                            (Some(Job::Bad), _) | (_, Some(Status::Failed(_))) => {
                                bad = Some(format!("dependency {dname} failed"));
                                break;
                            }
                            (_, Some(Status::Loaded)) => {}
                            _ => ready = false,
                        }
                    }
                    if let Some(reason) = bad {
                        l.report.failed.push((name.clone(), reason));
                        Some(Job::Bad)
                    } else if ready {
                        return Some(i);
                    } else {
                        None
                    }
                }
            };
            if let Some(job) = outcome {
                if let Some(j) = l.jobs.get_mut(i) {
                    *j = job;
                }
                l.remaining = l.remaining.saturating_sub(1);
            }
        }
        None
    }
}
