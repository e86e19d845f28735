//! Packet I/O for the workers, behind one trait with three backends: [`afxdp`] (kernel bypass
//! through skiff's XDP program), [`packet`] (AF_PACKET, for machines without AF_XDP) and
//! [`memory`] (tests and benches). The engine and the worker are the same over all three.

pub mod afxdp;
pub mod memory;
pub mod packet;

use std::{io, os::fd::RawFd};

/// Frames in one receive or transmit batch, unless configured otherwise.
pub const BATCH: usize = 64;

/// Room for one frame wherever a worker holds frames (socket buffers, staging, hand-off): a
/// 1500-byte MTU with Ethernet and two VLAN tags, rounded up.
pub const FRAME_ROOM: usize = 2048;

/// A port a worker receives frames on and transmits frames out of.
pub trait PacketIo {
    /// Takes up to `batch` waiting frames without blocking, handing each to `f`, which may edit
    /// it in place; returns how many.
    fn recv(&mut self, batch: usize, f: impl FnMut(&mut [u8])) -> io::Result<usize>;

    /// Queues a copy of `frame` for transmission; fails (`WouldBlock`) when the queue is full.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Transmits what was queued, with at most one system call.
    fn flush(&mut self) -> io::Result<()>;

    /// The descriptor that becomes readable when frames wait; `None` if there is none to wait
    /// on (in memory).
    fn fd(&self) -> Option<RawFd>;
}

/// Waits up to `timeout_ms` until one of `fds` is readable; returns whether one is.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<bool> {
    const MAX: usize = 64;
    let mut polled = [libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 }; MAX];
    for (p, fd) in polled.iter_mut().zip(fds) {
        p.fd = *fd;
    }
    let n = fds.len().min(MAX);
    // SAFETY: `polled` holds `n` initialised pollfd entries for the duration of the call.
    let rc = unsafe { libc::poll(polled.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    match rc {
        0 => Ok(false),
        r if r > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) }
        }
    }
}
