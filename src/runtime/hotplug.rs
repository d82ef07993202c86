//! CPU and memory hot-add: what is offline is brought online (the Gandi agent's
//! CPU/memory udev hooks). The udev rule only tags an offline CPU or memory
//! block (`SYSTEMD_WANTS=hninit-hotplug@<device>.service`); each instance runs
//! `hnctl platform hotplug`, which calls [`online`] on `/sys`. Takes the sysfs
//! root as an argument so that tests run it on a directory tree.

use std::fs;
use std::io;
use std::path::Path;

/// What was done, one line per CPU or memory block (and per failure).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub onlined: Vec<String>,
    pub failed: Vec<String>,
}

fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<(u64, String)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let num = n.strip_prefix(prefix)?.parse::<u64>().ok()?;
                    Some((num, n))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// Writes `value` (`online`/`1`) to `file`. A refused write after which the
/// file reads `value` is no failure: the units run one instance per device,
/// so two may online the same block at once (the kernel refuses the second).
fn set(file: &Path, value: &str, what: String, r: &mut Report) {
    match fs::write(file, value) {
        Ok(()) => r.onlined.push(what),
        Err(_) if fs::read_to_string(file).is_ok_and(|s| s.trim() == value) => {}
        Err(e) => r.failed.push(format!("{what}: writing {value:?} to {}: {e}", file.display())),
    }
}

/// Brings offline CPUs (`cpu/cpuN/online` = 0) and memory blocks
/// (`memory/memoryN/state` = offline) under `sys` (`/sys/devices/system`)
/// online, as `cpu` and `memory` allow.
pub fn online(sys: &Path, cpu: bool, memory: bool) -> io::Result<Report> {
    let mut r = Report::default();
    if cpu {
        let dir = sys.join("cpu");
        for n in entries(&dir, "cpu") {
            let f = dir.join(&n).join("online");
            if fs::read_to_string(&f).is_ok_and(|s| s.trim() == "0") {
                set(&f, "1", format!("{n} online"), &mut r);
            }
        }
    }
    if memory {
        let dir = sys.join("memory");
        for n in entries(&dir, "memory") {
            let f = dir.join(&n).join("state");
            if fs::read_to_string(&f).is_ok_and(|s| s.trim() == "offline") {
                set(&f, "online", format!("{n} online"), &mut r);
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, v: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    }

    #[test]
    fn offline_cpus_and_memory_are_onlined_as_allowed() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        put(s, "cpu/cpu0/crash_notes", "x"); // cpu0 has no online file
        put(s, "cpu/cpu1/online", "0\n");
        put(s, "cpu/cpu10/online", "1\n");
        put(s, "cpu/cpufreq/x", "");
        put(s, "memory/memory3/state", "offline\n");
        put(s, "memory/memory4/state", "online\n");
        put(s, "memory/block_size_bytes", "8000000\n");
        let r = online(s, false, false).unwrap();
        assert_eq!(r, Report::default());
        let r = online(s, true, false).unwrap();
        assert_eq!(r.onlined, ["cpu1 online"]);
        assert_eq!(fs::read_to_string(s.join("cpu/cpu1/online")).unwrap(), "1");
        assert_eq!(fs::read_to_string(s.join("memory/memory3/state")).unwrap(), "offline\n");
        let r = online(s, true, true).unwrap();
        assert_eq!(r.onlined, ["memory3 online"]);
        assert_eq!(fs::read_to_string(s.join("memory/memory3/state")).unwrap(), "online");
        assert!(online(s, true, true).unwrap().onlined.is_empty(), "idempotent");
    }
}
