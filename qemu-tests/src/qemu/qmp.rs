//! QEMU's JSON monitor (QMP) on a unix socket: the thin I/O part of hotplugging a
//! disk into a running VM (`blockdev-add`, `device_add`).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{DiskInterface, DiskSpec};

/// The xHCI controller hot-plugged USB disks go on.
pub(crate) const HOTPLUG_XHCI: &str = "hotplug-xhci";

/// A QMP connection (QEMU's JSON monitor) on a unix socket.
pub(crate) struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and leaves capabilities negotiation.
    pub(crate) fn connect(path: &Path) -> Result<Qmp, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(format!("connecting to {}: {e}", path.display())),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| format!("QMP socket: {e}"))?;
        let writer = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
        let mut q = Qmp { reader: std::io::BufReader::new(stream), writer };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected QMP greeting {greeting}"));
        }
        q.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, String> {
        use std::io::BufRead;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| format!("reading from QMP: {e}"))?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command; its `return` value, or the error QEMU gave.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let msg = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}").map_err(|e| format!("writing to QMP: {e}"))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {msg}: {e}"));
            }
            // Anything else is an asynchronous event: skip it.
        }
    }

    /// Plugs `disk` in as device `id`.
    pub(crate) fn hotplug(&mut self, id: &str, disk: &DiskSpec) -> Result<(), String> {
        let node = format!("{id}-node");
        self.execute(
            "blockdev-add",
            serde_json::json!({
                "driver": "raw",
                "node-name": node,
                "file": {"driver": "file", "filename": disk.path.display().to_string()},
            }),
        )?;
        let device = match disk.interface {
            DiskInterface::Virtio => serde_json::json!({"driver": "virtio-blk-pci", "id": id, "drive": node}),
            DiskInterface::Usb => serde_json::json!({
                "driver": "usb-storage", "id": id, "drive": node, "bus": format!("{HOTPLUG_XHCI}.0"), "serial": id,
            }),
            other => return Err(format!("hotplug of a {} disk is not supported by the harness", other.name())),
        };
        self.execute("device_add", device)?;
        Ok(())
    }
}
