//! Kernel uevents from a NETLINK_KOBJECT_UEVENT socket, without udev.
//!
//! The kernel announces every device it adds, changes or removes with a
//! datagram `ACTION@DEVPATH\0KEY=VALUE\0...` to multicast group 1 of this
//! netlink family. The boot listens to see block devices the moment they
//! appear and to load drivers (MODALIAS) for hardware that shows up late.
//!
//! Pure part: [`parse`] (unit-tested, never panics on any input). Thin part:
//! [`Listener`] (socket, bind, poll, recv). If the receive buffer overflows
//! the kernel drops events and reports ENOBUFS once: [`Received::Overflow`]
//! tells the caller to rescan sysfs, since it may have missed something.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};

use crate::error::{Context, Error, Result};

/// What happened to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
    Change,
    Move,
    Online,
    Offline,
    Bind,
    Unbind,
    /// An action this code does not know by name.
    Other(String),
}

impl Action {
    fn parse(s: &str) -> Action {
        match s {
            "add" => Action::Add,
            "remove" => Action::Remove,
            "change" => Action::Change,
            "move" => Action::Move,
            "online" => Action::Online,
            "offline" => Action::Offline,
            "bind" => Action::Bind,
            "unbind" => Action::Unbind,
            other => Action::Other(other.to_string()),
        }
    }

    /// The kernel's name for it ("add", "change", ...).
    pub fn name(&self) -> &str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Change => "change",
            Action::Move => "move",
            Action::Online => "online",
            Action::Offline => "offline",
            Action::Bind => "bind",
            Action::Unbind => "unbind",
            Action::Other(s) => s,
        }
    }
}

/// One kernel uevent. Only the keys the boot uses are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: Action,
    /// The device's path below /sys ("/devices/pci0000:00/.../block/vda").
    pub devpath: String,
    /// `SUBSYSTEM` ("block", "pci", "usb", "scsi", ...).
    pub subsystem: Option<String>,
    /// `DEVNAME`: the node name below /dev ("vda1", "bus/usb/001/002").
    pub devname: Option<String>,
    /// `DEVTYPE` ("disk", "partition", "usb_device", ...).
    pub devtype: Option<String>,
    /// `MODALIAS`: what a driver module must match to drive this device.
    pub modalias: Option<String>,
    /// `DRIVER`, on bind/unbind.
    pub driver: Option<String>,
    /// `MAJOR` and `MINOR` of the device node, when it has one.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `PARTN`: the partition number, for partitions.
    pub partn: Option<u32>,
    /// `SEQNUM`: the kernel's event counter.
    pub seqnum: Option<u64>,
}

impl Uevent {
    /// A block device (disk or partition) event.
    pub fn is_block(&self) -> bool {
        self.subsystem.as_deref() == Some("block")
    }
}

/// Parse one kernel uevent datagram. `None` for anything that is not a
/// well-formed kernel message: a libudev message (they start with
/// "libudev\0"), a missing `ACTION@DEVPATH` header, or a header that
/// contradicts its own ACTION=/DEVPATH= keys. Bytes that are not UTF-8 are
/// replaced (U+FFFD); numbers that do not parse are left out.
pub fn parse(msg: &[u8]) -> Option<Uevent> {
    if msg.starts_with(b"libudev") {
        return None;
    }
    let mut fields = msg.split(|&b| b == 0);
    let header = String::from_utf8_lossy(fields.next()?);
    let (action, devpath) = header.split_once('@')?;
    if action.is_empty() || !devpath.starts_with('/') {
        return None;
    }
    let mut ev = Uevent {
        action: Action::parse(action),
        devpath: devpath.to_string(),
        subsystem: None,
        devname: None,
        devtype: None,
        modalias: None,
        driver: None,
        major: None,
        minor: None,
        partn: None,
        seqnum: None,
    };
    for field in fields {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        let text = || Some(value.to_string());
        match key {
            "ACTION" if value != action => return None,
            "DEVPATH" if value != devpath => return None,
            "SUBSYSTEM" => ev.subsystem = text(),
            "DEVNAME" => ev.devname = text(),
            "DEVTYPE" => ev.devtype = text(),
            "MODALIAS" => ev.modalias = text(),
            "DRIVER" => ev.driver = text(),
            "MAJOR" => ev.major = value.parse().ok(),
            "MINOR" => ev.minor = value.parse().ok(),
            "PARTN" => ev.partn = value.parse().ok(),
            "SEQNUM" => ev.seqnum = value.parse().ok(),
            _ => {}
        }
    }
    Some(ev)
}

/// What [`Listener::recv`] got.
// Returned by value once per event and never stored in bulk: no Box needed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A kernel uevent.
    Event(Uevent),
    /// The receive buffer overflowed and the kernel dropped events: rescan.
    Overflow,
}

/// The kernel's uevent multicast group (udev's own messages go to group 2).
const KERNEL_GROUP: u32 = 1;
/// Receive buffer asked for: udevd coldplugs thousands of events at once; a
/// boot sees a few hundred. Memory is only used while events are queued.
const RCVBUF: usize = 16 << 20;
/// Largest message read: the kernel's uevent environment is at most 2 KiB
/// plus the header.
const MAX_MSG: usize = 8192;

/// A NETLINK_KOBJECT_UEVENT socket bound to the kernel's multicast group
/// (close-on-exec, non-blocking; [`Listener::recv`] waits with poll).
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Open the socket. Events are queued from this moment on, so open it
    /// before looking at sysfs to miss nothing in between.
    pub fn open() -> Result<Listener> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(netlink::KOBJECT_UEVENT),
        )
        .context(|| "opening a NETLINK_KOBJECT_UEVENT socket")?;
        // SO_RCVBUFFORCE passes rmem_max (needs CAP_NET_ADMIN, which PID 1 has).
        if let Err(force) = rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, RCVBUF) {
            if let Err(e) = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, RCVBUF) {
                log::debug!("uevent socket: cannot grow the receive buffer (SO_RCVBUFFORCE: {force}, SO_RCVBUF: {e})");
            }
        }
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, KERNEL_GROUP))
            .context(|| "binding the uevent socket to the kernel's multicast group")?;
        Ok(Listener { fd })
    }

    /// The next kernel uevent, waiting until `deadline` at most (`Ok(None)`
    /// then). Messages already queued are returned even if the deadline has
    /// passed, so `recv(Instant::now())` drains without blocking. Messages not
    /// sent by the kernel, malformed and truncated ones are skipped.
    pub fn recv(&self, deadline: Instant) -> Result<Option<Received>> {
        let mut buf = [0u8; MAX_MSG];
        loop {
            match rustix::net::recvfrom(&self.fd, &mut buf, RecvFlags::DONTWAIT | RecvFlags::TRUNC) {
                Ok((_, len, from)) => {
                    let from_kernel =
                        from.and_then(|a| SocketAddrNetlink::try_from(a).ok()).is_some_and(|a| a.pid() == 0);
                    if !from_kernel {
                        continue;
                    }
                    let Some(msg) = buf.get(..len) else {
                        log::warn!("skipped a uevent of {len} bytes (more than {MAX_MSG})");
                        continue;
                    };
                    match parse(msg) {
                        Some(ev) => return Ok(Some(Received::Event(ev))),
                        None => continue,
                    }
                }
                Err(Errno::NOBUFS) => return Ok(Some(Received::Overflow)),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {}
                Err(e) => return Err(Error::with("receiving a uevent", e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            wait_readable(&self.fd, left)?;
        }
    }
}

/// Wait until `fd` is readable (or has an error to report), `left` at most.
fn wait_readable(fd: &OwnedFd, left: Duration) -> Result<()> {
    let timeout = Timespec::try_from(left).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 });
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(Errno::INTR) => Ok(()),
        Err(e) => Err(Error::with("waiting for uevents (poll)", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(parts: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_a_block_add() {
        let m = msg(&[
            "add@/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1",
            "ACTION=add",
            "DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1",
            "SUBSYSTEM=block",
            "MAJOR=254",
            "MINOR=1",
            "DEVNAME=vda1",
            "DEVTYPE=partition",
            "DISKSEQ=9",
            "PARTN=1",
            "SEQNUM=1234",
        ]);
        let ev = parse(&m).unwrap();
        assert_eq!(ev.action, Action::Add);
        assert_eq!(ev.devpath, "/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1");
        assert!(ev.is_block());
        assert_eq!(ev.devname.as_deref(), Some("vda1"));
        assert_eq!(ev.devtype.as_deref(), Some("partition"));
        assert_eq!((ev.major, ev.minor, ev.partn, ev.seqnum), (Some(254), Some(1), Some(1), Some(1234)));
        assert_eq!(ev.modalias, None);
    }

    #[test]
    fn parses_a_modalias_without_trailing_nul() {
        let mut m = msg(&[
            "add@/devices/pci0000:00/0000:00:05.0",
            "ACTION=add",
            "DEVPATH=/devices/pci0000:00/0000:00:05.0",
            "SUBSYSTEM=pci",
            "PCI_CLASS=10802",
            "MODALIAS=pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
        ]);
        m.pop();
        let ev = parse(&m).unwrap();
        assert!(!ev.is_block());
        assert_eq!(ev.modalias.as_deref(), Some("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"));
        assert_eq!(ev.major, None);
        // A header-only message is still an event.
        let ev = parse(b"change@/devices/virtual/block/loop0").unwrap();
        assert_eq!((ev.action, ev.devpath.as_str()), (Action::Change, "/devices/virtual/block/loop0"));
        assert_eq!(parse(b"bind@/devices/x\0DRIVER=nvme\0").unwrap().driver.as_deref(), Some("nvme"));
        assert_eq!(parse(b"weird@/devices/x\0").unwrap().action, Action::Other("weird".into()));
        assert_eq!(Action::Other("weird".into()).name(), "weird");
        assert_eq!(Action::Unbind.name(), "unbind");
    }

    #[test]
    fn rejects_what_is_not_a_kernel_uevent() {
        for bad in [
            &b""[..],
            b"\0",
            b"libudev\0\xfe\xed\xca\xfe",
            b"add/devices/x\0ACTION=add\0",
            b"@/devices/x\0",
            b"add@devices/x\0",
            b"add@/devices/x\0ACTION=remove\0",
            b"add@/devices/x\0DEVPATH=/devices/y\0",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn odd_values_are_tolerated() {
        let ev =
            parse(b"add@/devices/x\0MAJOR=abc\0MINOR=99999999999\0=\0junk\0DEVNAME=\xffx\0\0\0SEQNUM=-1\0").unwrap();
        assert_eq!((ev.major, ev.minor, ev.seqnum), (None, None, None));
        assert_eq!(ev.devname.as_deref(), Some("\u{fffd}x"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let seed = msg(&["add@/devices/a/b", "ACTION=add", "SUBSYSTEM=block", "MAJOR=8", "MINOR=1", "PARTN=1"]);
        for _ in 0..5000 {
            let mut m = seed.clone();
            for _ in 0..(next() % 6) {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            m.truncate((next() % (m.len() as u64 + 1)) as usize);
            let _ = parse(&m);
        }
    }
}
