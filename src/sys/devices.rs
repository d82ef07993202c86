//! Devices: kernel uevents (netlink, so nothing is missed while we work), the
//! coldplug walk of /sys/bus/*/devices for modaliases, the /sys/class/block scan with a
//! superblock probe per device, and the bounded wait for the host partition.
//! Module loading for the modaliases found is delegated to `drivers`.

use crate::sys::devspec::{BlockDev, DevSpec};
use crate::modules::drivers::Drivers;
pub use crate::modules::DeviceAlias;
use crate::error::{BootError, Result};
use crate::sys::probe;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::OwnedFd;
use rustix::net::{netlink, AddressFamily, RecvFlags, SocketFlags, SocketType};
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One kernel uevent, the fields hninit uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub subsystem: String,
    pub devname: Option<String>,
    pub modalias: Option<String>,
}

/// Parses a kernel uevent datagram (`action@devpath\0KEY=value\0…`). Messages
/// from udev (`libudev` header) or anything malformed give `None`.
pub fn parse_uevent(buf: &[u8]) -> Option<Uevent> {
    let mut fields = buf.split(|b| *b == 0).filter(|f| !f.is_empty());
    let head = std::str::from_utf8(fields.next()?).ok()?;
    let (action, devpath) = head.split_once('@')?;
    let mut ev = Uevent {
        action: action.to_string(),
        devpath: devpath.to_string(),
        ..Default::default()
    };
    for f in fields {
        let Ok(f) = std::str::from_utf8(f) else { continue };
        let Some((k, v)) = f.split_once('=') else { continue };
        match k {
            "ACTION" => ev.action = v.to_string(),
            "SUBSYSTEM" => ev.subsystem = v.to_string(),
            "DEVNAME" => ev.devname = Some(v.to_string()),
            "MODALIAS" => ev.modalias = Some(v.to_string()),
            _ => {}
        }
    }
    Some(ev)
}

/// The kernel's uevent broadcast, opened before anything is loaded so no event is lost.
pub struct UeventSocket(OwnedFd);

impl UeventSocket {
    pub fn open() -> std::io::Result<UeventSocket> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(netlink::KOBJECT_UEVENT),
        )?;
        // A burst of events while modules load must not overflow the queue.
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, 4 << 20).is_err() {
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 4 << 20);
        }
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 1))?;
        Ok(UeventSocket(fd))
    }

    /// Waits up to `timeout` for events, then returns every event queued.
    /// `overflowed` is set when the kernel dropped events (ENOBUFS): rescan then.
    pub fn wait(&self, timeout: Duration, overflowed: &mut bool) -> Vec<Uevent> {
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as i64,
        };
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&ts));
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            match rustix::net::recv(&self.0, &mut buf[..], RecvFlags::empty()) {
                Ok((n, _)) => {
                    if let Some(ev) = buf.get(..n).and_then(parse_uevent) {
                        out.push(ev);
                    }
                }
                Err(rustix::io::Errno::NOBUFS) => *overflowed = true,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// Every device on a bus that has a `modalias` and no driver bound, from
/// `<sys>/bus/*/devices/*` (what `udevadm trigger` walks): one directory read per
/// bus and a few syscalls per device, where a recursive walk of /sys/devices reads
/// every attribute directory (≈ 90 ms under QEMU TCG). `devpath` is the device's
/// directory under `<sys>/devices`. Devices with a driver are left out: nothing
/// needs their modalias.
pub fn coldplug_modaliases(sys: &Path) -> Vec<DeviceAlias> {
    let mut out = Vec::new();
    let Ok(buses) = fs::read_dir(sys.join("bus")) else { return out };
    for bus in buses.flatten() {
        let Ok(devices) = fs::read_dir(bus.path().join("devices")) else { continue };
        for dev in devices.flatten() {
            let link = dev.path();
            // The link's presence is the answer: no need to follow it.
            if fs::symlink_metadata(link.join("driver")).is_ok() {
                continue;
            }
            let Ok(text) = fs::read_to_string(link.join("modalias")) else { continue };
            let alias = text.trim();
            if alias.is_empty() {
                continue;
            }
            let devpath = device_dir(sys, &link).unwrap_or(link);
            out.push(DeviceAlias {
                modalias: alias.to_string(),
                devpath: devpath.to_string_lossy().into_owned(),
                bound: false,
            });
        }
    }
    crate::util::sort(&mut out);
    out
}

/// `<sys>/bus/pci/devices/0000:00:01.1` (a link to `../../../devices/…`) →
/// `<sys>/devices/pci0000:00/0000:00:01.1`.
fn device_dir(sys: &Path, link: &Path) -> Option<PathBuf> {
    let target = fs::read_link(link).ok()?;
    let mut rest = target.as_path();
    while let Ok(r) = rest.strip_prefix("..") {
        rest = r;
    }
    rest.starts_with("devices").then(|| sys.join(rest))
}

/// Block devices seen so far, probed once per (name, device number, size).
#[derive(Default)]
pub struct BlockScanner {
    cache: HashMap<(String, u32, u32, u64), BlockDev>,
    partuuids: HashMap<(String, u32), Option<String>>,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

impl BlockScanner {
    /// Scans `/sys/class/block`, probing new or resized devices via `/dev/<name>`.
    pub fn scan(&mut self, want_partuuid: bool) -> Vec<BlockDev> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/sys/class/block") else { return out };
        let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        crate::util::sort(&mut names);
        for name in names {
            if name.starts_with("ram") {
                continue;
            }
            let sys = PathBuf::from("/sys/class/block").join(&name);
            // Size first: the empty ones (unattached loop devices) need nothing more.
            let size_bytes = read_trim(&sys.join("size")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512;
            if size_bytes == 0 {
                continue;
            }
            let Some((major, minor)) = read_trim(&sys.join("dev")).and_then(|d| {
                let (a, b) = d.split_once(':')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            }) else {
                continue;
            };
            let key = (name.clone(), major, minor, size_bytes);
            let mut dev = match self.cache.get(&key) {
                Some(d) => d.clone(),
                None => {
                    let d = describe(&name, &sys, major, minor, size_bytes);
                    self.cache.insert(key.clone(), d.clone());
                    d
                }
            };
            if want_partuuid && dev.partuuid.is_none() {
                if let (Some(parent), Some(partn)) = (dev.parent.clone(), dev.partn) {
                    let pu = self
                        .partuuids
                        .entry((parent.clone(), partn))
                        .or_insert_with(|| {
                            let mut f = fs::File::open(Path::new("/dev").join(&parent)).ok()?;
                            crate::sys::partition::partuuid(&mut f, partn).ok().flatten()
                        })
                        .clone();
                    dev.partuuid = pu;
                    if let Some(c) = self.cache.get_mut(&key) {
                        c.partuuid = dev.partuuid.clone();
                    }
                }
            }
            out.push(dev);
        }
        out
    }
}

fn describe(name: &str, sys: &Path, major: u32, minor: u32, size_bytes: u64) -> BlockDev {
    let mut dev = BlockDev {
        name: name.to_string(),
        path: PathBuf::from("/dev").join(name),
        major,
        minor,
        size_bytes,
        ..Default::default()
    };
    if let Ok(uevent) = fs::read_to_string(sys.join("uevent")) {
        for line in uevent.lines() {
            match line.split_once('=') {
                Some(("DEVNAME", v)) => dev.path = PathBuf::from("/dev").join(v),
                Some(("PARTN", v)) => dev.partn = v.parse().ok(),
                Some(("PARTNAME", v)) if !v.is_empty() => dev.partname = Some(v.to_string()),
                _ => {}
            }
        }
    }
    let real = fs::canonicalize(sys).ok();
    if dev.partn.is_some() {
        // /sys/class/block/vda2 -> ../../devices/.../vda/vda2: the parent is the directory above.
        if let Some(real) = &real {
            dev.parent = real.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        }
    }
    let disk = dev.parent.clone().unwrap_or_else(|| name.to_string());
    dev.removable = read_trim(&Path::new("/sys/class/block").join(disk).join("removable")).as_deref() == Some("1")
        || real.is_some_and(|r| r.to_string_lossy().contains("/usb"));
    match probe::probe_path(&dev.path) {
        Ok(sb) => dev.superblock = sb,
        Err(e) => dev.probe_error = Some(e.to_string()),
    }
    dev
}

/// What the wait saw, for the diagnosis when it fails.
#[derive(Default)]
pub struct WaitReport {
    pub devices: Vec<BlockDev>,
    pub aliases: Vec<DeviceAlias>,
    /// The wait's scanner: a later scan (step 9) probes only devices that are
    /// new or changed since.
    pub scanner: BlockScanner,
}

/// Loads drivers for present and arriving devices and waits (bounded by
/// `timeout`; `None` = forever) for exactly one block device matching `spec`.
pub fn wait_for(spec: &DevSpec, timeout: Option<Duration>, drivers: &Drivers, report: &mut WaitReport) -> Result<BlockDev> {
    let start = Instant::now();
    let socket = match UeventSocket::open() {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("uevent socket unavailable ({e}); rescanning /sys every 250 ms instead");
            None
        }
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let coldplug = |seen: &mut BTreeSet<String>| {
        let aliases = coldplug_modaliases(Path::new("/sys"));
        let fresh: Vec<String> = aliases
            .iter()
            .filter(|a| !a.bound && seen.insert(a.modalias.clone()))
            .map(|a| a.modalias.clone())
            .collect();
        if !fresh.is_empty() {
            drivers.load_for_modaliases(&fresh);
        }
    };
    coldplug(&mut seen);
    let mut next_progress = Duration::from_secs(5);
    // /sys/class/block is read again only when block devices may have come: a
    // block uevent, drivers loaded, or events lost.
    let mut devices = Vec::new();
    let mut rescan = true;
    loop {
        if rescan {
            devices = report.scanner.scan(spec.needs_partuuid());
            let found: Vec<&BlockDev> = devices.iter().filter(|d| spec.matches(d)).collect();
            match found.as_slice() {
                [one] => {
                    debug!("found {spec} at {} after {} ms", one.describe(), start.elapsed().as_millis());
                    return Ok((*one).clone());
                }
                [] => {}
                many => {
                    return Err(BootError::HostpartAmbiguous {
                        spec: spec.to_string(),
                        devices: many.iter().map(|d| d.path.display().to_string()).collect(),
                    })
                }
            }
        }
        let waited = start.elapsed();
        let remaining = match timeout {
            Some(t) if waited >= t => {
                report.devices = devices;
                report.aliases = coldplug_modaliases(Path::new("/sys"));
                return Err(BootError::HostpartNotFound {
                    spec: spec.to_string(),
                    waited,
                });
            }
            Some(t) => t - waited,
            None => Duration::from_secs(3600),
        };
        if waited >= next_progress {
            let left = timeout.map(|t| format!(", {:.0} s left", (t.saturating_sub(waited)).as_secs_f64())).unwrap_or_default();
            info!("still waiting for host partition {spec} ({} block devices seen{left})", devices.len());
            next_progress += Duration::from_secs(5);
        }
        let slice = remaining.min(next_progress.saturating_sub(waited)).max(Duration::from_millis(1));
        match &socket {
            Some(s) => {
                let mut overflowed = false;
                let events = s.wait(slice, &mut overflowed);
                let fresh: Vec<String> = events
                    .iter()
                    .filter(|e| e.action == "add" || e.action == "bind" || e.action == "change")
                    .filter_map(|e| e.modalias.clone())
                    .filter(|m| seen.insert(m.clone()))
                    .collect();
                rescan = events.iter().any(|e| e.subsystem == "block") || !fresh.is_empty() || overflowed;
                if !fresh.is_empty() {
                    drivers.load_for_modaliases(&fresh);
                }
                if overflowed {
                    coldplug(&mut seen);
                }
            }
            None => {
                std::thread::sleep(slice.min(Duration::from_millis(250)));
                coldplug(&mut seen);
                rescan = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_uevent() {
        let msg = b"add@/devices/pci0000:00/0000:00:04.0/virtio1\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1\0SUBSYSTEM=virtio\0MODALIAS=virtio:d00000002v00001AF4\0SEQNUM=812\0";
        let ev = parse_uevent(msg).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.subsystem, "virtio");
        assert_eq!(ev.modalias.as_deref(), Some("virtio:d00000002v00001AF4"));
        assert_eq!(parse_uevent(b"libudev\0\xfe\xed"), None);
        assert_eq!(parse_uevent(b""), None);
    }

    #[test]
    fn coldplug_walk_finds_modaliases_and_binding() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let a = sys.join("devices/pci0000:00/0000:00:01.0");
        let b = sys.join("devices/pci0000:00/0000:00:02.0");
        let c = sys.join("devices/platform/serial8250");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(b.join("driver")).unwrap();
        fs::create_dir_all(&c).unwrap();
        fs::write(a.join("modalias"), "pci:v00001AF4d00001001\n").unwrap();
        fs::write(b.join("modalias"), "pci:v00008086d00002922\n").unwrap();
        std::os::unix::fs::symlink("../../../bus/pci", a.join("subsystem")).unwrap();
        fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(sys.join("bus/platform/devices")).unwrap();
        fs::create_dir_all(sys.join("bus/cpu")).unwrap(); // no devices directory
        std::os::unix::fs::symlink("../../../devices/pci0000:00/0000:00:01.0", sys.join("bus/pci/devices/0000:00:01.0")).unwrap();
        std::os::unix::fs::symlink("../../../devices/pci0000:00/0000:00:02.0", sys.join("bus/pci/devices/0000:00:02.0")).unwrap();
        // A device without a modalias is skipped.
        std::os::unix::fs::symlink("../../../devices/platform/serial8250", sys.join("bus/platform/devices/serial8250")).unwrap();
        // Only the device without a driver, named by its /sys/devices path.
        let found = coldplug_modaliases(sys);
        assert_eq!(
            found,
            [DeviceAlias { modalias: "pci:v00001AF4d00001001".into(), devpath: a.to_string_lossy().into_owned(), bound: false }]
        );
    }
}
