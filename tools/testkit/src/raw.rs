//! An AF_PACKET socket bound to one interface: puts built frames on the wire exactly as they
//! are, and reads every frame the interface receives. Create it from a thread inside the
//! interface's network namespace (`skiff_lab::Netns::run`); it keeps working from any thread.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// A raw Ethernet socket on one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

const ETH_P_ALL: u16 = 0x0003;

impl PacketSocket {
    /// Opens a socket that sends on and receives from `iface` (all protocols).
    pub fn bind(iface: &str) -> io::Result<Self> {
        let name =
            CString::new(iface).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
        // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = ETH_P_ALL.to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("small constant");
        addr.sll_protocol = proto;
        addr.sll_ifindex = i32::try_from(index).map_err(|_| io::Error::other("ifindex"))?;
        let len = u32::try_from(size_of::<libc::sockaddr_ll>()).expect("small struct");
        // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes for the duration of the call.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Sends one frame as is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for `frame.len()` bytes during the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if usize::try_from(n).ok() != Some(frame.len()) {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives frames until `pred` accepts one or `timeout` passes; returns the accepted one.
    /// Frames this socket sent itself (outgoing) are skipped.
    pub fn recv_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&raw mut pfd, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; zero is a valid value for recvfrom to fill.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = u32::try_from(size_of::<libc::sockaddr_ll>()).expect("small struct");
            // SAFETY: `buf` and `from` are valid for the lengths given during the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &raw mut from_len,
                )
            };
            let Ok(n) = usize::try_from(n) else { return Err(io::Error::last_os_error()) };
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if pred(&buf[..n]) {
                return Ok(Some(buf[..n].to_vec()));
            }
        }
    }
}
