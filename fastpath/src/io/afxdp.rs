//! AF_XDP (xsk-rs): one socket and UMEM per (interface, receive queue). Half the UMEM's frames
//! sit on the fill ring for receiving and return to it as soon as a frame is handled; the other
//! half are a pool for transmitting, returned through the completion ring. No frame leaks and
//! nothing allocates per packet. No XDP program is loaded here: skiff's own program redirects
//! into the socket through its XSKMAP.

use std::{
    io,
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
};

use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{LibxdpFlags, SocketConfig, UmemConfig},
};

/// A bound AF_XDP socket.
pub struct XskPort {
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Receive frames: on the fill ring, or just consumed from the rx ring.
    rx_frames: Vec<FrameDesc>,
    /// Transmit frames not in flight.
    tx_free: Vec<FrameDesc>,
    /// Scratch for completions.
    completed: Vec<FrameDesc>,
    /// Last: fields drop in declaration order, and the UMEM must outlive the socket.
    umem: Umem,
}

fn other(what: &str) -> impl Fn(String) -> io::Error + '_ {
    move |e| io::Error::other(format!("{what}: {e}"))
}

impl XskPort {
    /// Binds to `iface` queue `queue` (in the calling thread's network namespace) with a UMEM
    /// of `frames` frames (even, at least 4).
    pub fn bind(iface: &str, queue: u32, frames: u32) -> io::Result<XskPort> {
        let count = NonZeroU32::new(frames).ok_or_else(|| io::Error::other("frames must be > 0"))?;
        let (umem, mut descs) = Umem::new(UmemConfig::default(), count, false)
            .map_err(|e| other("creating the UMEM")(e.to_string()))?;
        let config =
            SocketConfig::builder().libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD).build();
        let name = iface.parse().map_err(|e| other("interface name")(format!("{e:?}")))?;
        // SAFETY: the UMEM outlives the socket (both live in this struct; the UMEM is its last
        // field, so it drops last) and its frames are only handed out through this struct.
        let (tx, rx, fq_cq) = unsafe { Socket::new(config, &umem, &name, queue) }.map_err(|e| {
            other(&format!("binding an AF_XDP socket to {iface} queue {queue}"))(e.to_string())
        })?;
        let (mut fill, comp) = fq_cq.ok_or_else(|| io::Error::other("no fill and completion queue"))?;
        let tx_free = descs.split_off(descs.len() / 2);
        // SAFETY: these frames belong to this UMEM and are not in use elsewhere.
        unsafe { fill.produce(&descs) };
        let completed = tx_free.clone();
        Ok(XskPort { rx, tx, fill, comp, rx_frames: descs, tx_free, completed, umem })
    }

    /// The socket's descriptor, for the XDP program's XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Waits up to `timeout_ms` for frames and hands each one's bytes to `f` (which may edit
    /// them in place); returns how many it received. The frames go back to the fill ring.
    pub fn recv(&mut self, timeout_ms: i32, mut f: impl FnMut(&mut [u8])) -> io::Result<usize> {
        // SAFETY: the descriptors are this UMEM's receive frames; each is read only between
        // consume and produce, while the kernel does not own it.
        let n = unsafe { self.rx.poll_and_consume(&mut self.rx_frames, timeout_ms) }?;
        for desc in &mut self.rx_frames[..n] {
            // SAFETY: as above.
            let mut data = unsafe { self.umem.data_mut(desc) };
            f(data.contents_mut());
        }
        // SAFETY: as above: the frames return to the kernel once handled.
        unsafe { self.fill.produce(&self.rx_frames[..n]) };
        Ok(n)
    }

    /// Transmits a copy of `frame`; fails when every transmit frame is in flight.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.reclaim();
        let mut desc = self
            .tx_free
            .pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::WouldBlock, "no free transmit frame"))?;
        {
            // SAFETY: a transmit frame not in flight.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut cursor = data.cursor();
            io::Write::write_all(&mut cursor, frame)?;
        }
        // SAFETY: the frame is filled and handed to the kernel; it comes back via completions.
        let sent = unsafe { self.tx.produce_and_wakeup(std::slice::from_ref(&desc)) }?;
        if sent == 0 {
            self.tx_free.push(desc);
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "transmit ring full"));
        }
        Ok(())
    }

    /// Returns completed transmit frames to the pool.
    fn reclaim(&mut self) {
        // SAFETY: completions name frames this socket sent; their addresses come back (the
        // lengths are 0, so the pool keeps whole descriptors by address).
        let n = unsafe { self.comp.consume(&mut self.completed) };
        self.tx_free.extend_from_slice(&self.completed[..n]);
    }
}
