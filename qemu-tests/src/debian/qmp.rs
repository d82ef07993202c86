//! A small QMP client for the Debian scenarios that hot-add devices (disks,
//! NICs, vCPUs, memory) to a running VM: one command at a time, events
//! skipped unless awaited.

use qemu_tests::Failure;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// A small QMP client: one command at a time, events skipped.
pub(super) struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    pub(super) fn connect(path: &Path, within: Duration) -> Result<Qmp, Failure> {
        let until = Instant::now() + within;
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > until => return Err(Failure::new(format!("QMP {}: {e}", path.display()))),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = Qmp { r: BufReader::new(s.try_clone()?), w: s };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting)?;
        q.cmd(r#"{"execute": "qmp_capabilities"}"#)?;
        Ok(q)
    }

    /// Sends `json`; returns the `return` line, or the error as a failure.
    pub(super) fn cmd(&mut self, json: &str) -> Result<String, Failure> {
        self.w.write_all(json.as_bytes())?;
        self.w.write_all(b"\n")?;
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(Failure::new(format!("QMP closed after {json}")));
            }
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                return Err(Failure::new(format!("QMP {json}: {}", line.trim())));
            }
        }
    }

    /// Waits up to `within` for the event `name` (e.g. DEVICE_DELETED).
    pub(super) fn event(&mut self, name: &str, within: Duration) -> Result<String, Failure> {
        let until = Instant::now() + within;
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => return Err(Failure::new(format!("QMP closed waiting for {name}"))),
                Ok(_) if line.contains(&format!("\"event\": \"{name}\"")) => return Ok(line),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > until {
                return Err(Failure::new(format!("no QMP event {name} within {} s", within.as_secs())));
            }
        }
    }

    /// Plugs the first free vCPU slot of `query-hotpluggable-cpus` (QEMU's
    /// `-smp N,maxcpus=M`) as device `id`.
    pub(super) fn add_cpu(&mut self, id: &str) -> Result<(), Failure> {
        let line = self.cmd(r#"{"execute": "query-hotpluggable-cpus"}"#)?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| Failure::new(format!("query-hotpluggable-cpus: {e}: {line}")))?;
        let free = v["return"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c.get("qom-path").is_none()))
            .ok_or_else(|| Failure::new(format!("no free vCPU slot: {line}")))?;
        let mut args = free["props"].clone();
        args["driver"] = free["type"].clone();
        args["id"] = id.into();
        self.cmd(&serde_json::json!({"execute": "device_add", "arguments": args}).to_string()).map(|_| ())
    }

    /// Plugs a `pc-dimm` of `mib` MiB (QEMU's `-m N,slots=S,maxmem=M`) as device `id`.
    pub(super) fn add_dimm(&mut self, id: &str, mib: u64) -> Result<(), Failure> {
        let mem = format!("{id}-mem");
        self.cmd(&serde_json::json!({"execute": "object-add", "arguments": {"qom-type": "memory-backend-ram", "id": mem, "size": mib << 20}}).to_string())?;
        self.cmd(&serde_json::json!({"execute": "device_add", "arguments": {"driver": "pc-dimm", "id": id, "memdev": mem}}).to_string()).map(|_| ())
    }
}
