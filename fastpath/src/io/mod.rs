//! Packet I/O for the workers, behind one trait with three backends: [`afxdp`] (kernel bypass
//! through skiff's XDP program), [`packet`] (AF_PACKET, for machines without AF_XDP) and
//! [`memory`] (tests and benches). The engine and the worker are the same over all three.

pub mod afxdp;
pub mod memory;
pub mod packet;

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use skiff_common::meta::XdpMeta;

/// Frames in one receive or transmit batch, unless configured otherwise.
pub const BATCH: usize = 64;

/// Room for one frame wherever a worker holds frames (socket buffers, staging, hand-off): a
/// 1500-byte MTU with Ethernet and two VLAN tags, rounded up.
pub const FRAME_ROOM: usize = 2048;

/// A port a worker receives frames on and transmits frames out of.
pub trait PacketIo {
    /// Takes up to `batch` waiting frames without blocking, handing each to `f` (which may
    /// edit it in place) with the metadata the XDP program wrote for it, if any; returns how
    /// many.
    fn recv(&mut self, batch: usize, f: impl FnMut(&mut [u8], Option<XdpMeta>)) -> io::Result<usize>;

    /// Queues a copy of `frame` for transmission; fails (`WouldBlock`) when the queue is full.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Transmits what was queued, with at most one system call.
    fn flush(&mut self) -> io::Result<()>;

    /// The descriptor that becomes readable when frames wait; `None` if there is none to wait
    /// on (in memory).
    fn fd(&self) -> Option<RawFd>;

    /// The index of the interface it is bound to; `None` in memory, unless given one.
    fn ifindex(&self) -> Option<u32>;
}

/// Descriptors to wait on until one is readable: a worker's ports and inbox (any number:
/// a node has a port per pod).
#[derive(Default)]
pub struct Readiness(Vec<libc::pollfd>);

impl Readiness {
    pub fn new(fds: impl IntoIterator<Item = RawFd>) -> Readiness {
        Readiness(fds.into_iter().map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect())
    }

    /// Waits up to `timeout_ms` until one is readable; returns whether one is.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<bool> {
        let n = libc::nfds_t::try_from(self.0.len()).map_err(|_| io::Error::other("too many descriptors"))?;
        // SAFETY: the vector holds `n` initialised pollfd entries for the duration of the call.
        let rc = unsafe { libc::poll(self.0.as_mut_ptr(), n, timeout_ms) };
        match rc {
            0 => Ok(false),
            r if r > 0 => Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) }
            }
        }
    }
}

/// An eventfd that wakes a worker sleeping in [`Readiness::wait`]: rung by whoever has
/// something for it (frames handed over, a port change, new tables).
pub struct Bell(OwnedFd);

impl Bell {
    pub fn new() -> io::Result<Bell> {
        // SAFETY: eventfd(2) with valid flags; the descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Bell(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn ring(&self) {
        let one = 1u64;
        // SAFETY: an 8-byte write from a live u64 to our eventfd. A full counter (never
        // reached) would only mean the sleeper is already awake.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Silences it before the sleeper looks: whatever rings after this wakes the next wait,
    /// so no wakeup is lost.
    pub fn clear(&self) {
        let mut count = 0u64;
        // SAFETY: an 8-byte read into a live u64 from our non-blocking eventfd (it fails
        // harmlessly when nothing rang).
        unsafe { libc::read(self.0.as_raw_fd(), (&raw mut count).cast(), 8) };
    }

    /// Becomes readable when rung.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}"))),
        index => Ok(index),
    }
}

/// Waits up to `timeout_ms` until one of `fds` is readable; returns whether one is.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<bool> {
    Readiness::new(fds.iter().copied()).wait(timeout_ms)
}
