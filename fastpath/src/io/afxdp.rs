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

use skiff_common::meta::XdpMeta;

use super::{FRAME_ROOM, PacketIo};
use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
    config::{FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

/// Bytes per UMEM frame: a worker holds a frame in [`FRAME_ROOM`] bytes anyway. The UMEM is
/// populated and pinned when it is made, so each frame is resident memory: 2 KiB instead of
/// libxdp's default 4 KiB halves every socket's share. (The kernel keeps 256 bytes of each
/// for its headroom: frames up to 1792 bytes, an MTU of 1500 with room to spare.)
pub const FRAME_SIZE: u32 = 2048;
const _: () = assert!(FRAME_SIZE as usize == FRAME_ROOM);

/// Busy polling (`SO_PREFER_BUSY_POLL`): the worker drives the NIC's NAPI from its own
/// receive calls instead of waiting for interrupts, trading a core for latency. It needs a
/// driver that gives its XDP receive queues a NAPI id: veth does not (`SO_INCOMING_NAPI_ID`
/// of its sockets reads 0), and in the lab busy polling changed nothing (0.30–0.35 Mpps with
/// and without).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: microseconds to spin in the kernel per call.
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: frames per busy-poll round.
    pub budget: u32,
}

impl Default for BusyPoll {
    fn default() -> BusyPoll {
        BusyPoll { usecs: 20, budget: 64 }
    }
}

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
    /// Transmit frames filled and waiting for [`PacketIo::flush`].
    tx_queued: Vec<FrameDesc>,
    /// Scratch for completions.
    completed: Vec<FrameDesc>,
    /// Receive calls run the NIC's NAPI (busy polling).
    busy_poll: bool,
    ifindex: u32,
    /// Last: fields drop in declaration order, and the UMEM must outlive the socket.
    umem: Umem,
}

fn other(what: &str) -> impl Fn(String) -> io::Error + '_ {
    move |e| io::Error::other(format!("{what}: {e}"))
}

impl XskPort {
    /// Binds to `iface` queue `queue` (in the calling thread's network namespace) with a UMEM
    /// of `frames` frames of [`FRAME_SIZE`] bytes (even, at least 4), half for receiving and
    /// half for transmitting, and rings as long as each half.
    pub fn bind(iface: &str, queue: u32, frames: u32, busy_poll: Option<BusyPoll>) -> io::Result<XskPort> {
        let count = NonZeroU32::new(frames).ok_or_else(|| io::Error::other("frames must be > 0"))?;
        let ring = QueueSize::new((frames / 2).max(1).next_power_of_two())
            .map_err(|e| other("the ring size")(e.to_string()))?;
        let frame_size = FrameSize::new(FRAME_SIZE).map_err(|e| other("the frame size")(e.to_string()))?;
        let umem_config = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| other("the UMEM configuration")(e.to_string()))?;
        let (umem, mut descs) =
            Umem::new(umem_config, count, false).map_err(|e| other("creating the UMEM")(e.to_string()))?;
        let config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .build();
        let ifindex = super::ifindex(iface)?;
        let name = iface.parse().map_err(|e| other("interface name")(format!("{e:?}")))?;
        // SAFETY: the UMEM outlives the socket (both live in this struct; the UMEM is its last
        // field, so it drops last) and its frames are only handed out through this struct.
        let (tx, rx, fq_cq) = unsafe { Socket::new(config, &umem, &name, queue) }.map_err(|e| {
            other(&format!("binding an AF_XDP socket to {iface} queue {queue}"))(e.to_string())
        })?;
        if let Some(b) = busy_poll {
            let fd = rx.fd().as_raw_fd();
            setsockopt(fd, libc::SO_PREFER_BUSY_POLL, 1)?;
            setsockopt(fd, libc::SO_BUSY_POLL, b.usecs)?;
            setsockopt(fd, libc::SO_BUSY_POLL_BUDGET, b.budget)?;
        }
        let (mut fill, comp) = fq_cq.ok_or_else(|| io::Error::other("no fill and completion queue"))?;
        let tx_free = descs.split_off(descs.len() / 2);
        // SAFETY: these frames belong to this UMEM and are not in use elsewhere.
        unsafe { fill.produce(&descs) };
        let completed = tx_free.clone();
        let tx_queued = Vec::with_capacity(tx_free.len());
        Ok(XskPort {
            rx,
            tx,
            fill,
            comp,
            rx_frames: descs,
            tx_free,
            tx_queued,
            completed,
            busy_poll: busy_poll.is_some(),
            ifindex,
            umem,
        })
    }

    /// Returns completed transmit frames to the pool.
    fn reclaim(&mut self) {
        // SAFETY: completions name frames this socket sent; their addresses come back (the
        // lengths are 0, so the pool keeps whole descriptors by address).
        let n = unsafe { self.comp.consume(&mut self.completed) };
        self.tx_free.extend_from_slice(&self.completed[..n]);
    }
}

/// The metadata the XDP program wrote just in front of `frame`, if it wrote any; cleared as it
/// is read, since the UMEM frame is reused and a later frame without metadata must not find
/// this one's.
///
/// # Safety
/// `frame` must start at least `size_of::<XdpMeta>()` bytes into memory this socket may
/// read and write (its UMEM frame's headroom).
unsafe fn take_meta(frame: &mut [u8]) -> Option<XdpMeta> {
    // SAFETY: the caller guarantees the bytes in front of `frame` are ours; unaligned reads
    // and writes of a plain-old-data struct.
    unsafe {
        let at = frame.as_mut_ptr().sub(size_of::<XdpMeta>()).cast::<XdpMeta>();
        let meta = at.read_unaligned();
        if !meta.is_valid() {
            return None;
        }
        at.write_unaligned(XdpMeta::default());
        Some(meta)
    }
}

fn setsockopt(fd: RawFd, name: libc::c_int, value: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(value).map_err(|_| io::Error::other("socket option out of range"))?;
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
    // SAFETY: `value` is a valid int for the duration of the call.
    let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, name, (&raw const value).cast(), len) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl PacketIo for XskPort {
    fn recv(&mut self, batch: usize, mut f: impl FnMut(&mut [u8], Option<XdpMeta>)) -> io::Result<usize> {
        let batch = batch.min(self.rx_frames.len());
        if self.busy_poll {
            // The NIC's receive processing runs here, in the worker's thread, instead of in a
            // softirq or NAPI thread competing with it for the core.
            // SAFETY: a zero-length, non-blocking receive on our own socket; no buffer is
            // written.
            unsafe {
                libc::recvfrom(
                    self.rx.fd().as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        // SAFETY: the descriptors are this UMEM's receive frames; each is read only between
        // consume and produce, while the kernel does not own it.
        let n = unsafe { self.rx.consume(&mut self.rx_frames[..batch]) };
        for desc in &mut self.rx_frames[..n] {
            // SAFETY: as above.
            let mut data = unsafe { self.umem.data_mut(desc) };
            let frame = data.contents_mut();
            // SAFETY: a received frame starts after the kernel's XDP headroom (256 bytes) in
            // its UMEM frame, which this socket owns until it is produced back below.
            let meta = unsafe { take_meta(frame) };
            f(frame, meta);
        }
        // SAFETY: as above: the frames return to the kernel once handled.
        unsafe { self.fill.produce(&self.rx_frames[..n]) };
        if self.fill.needs_wakeup() {
            self.fill.wakeup(self.rx.fd_mut(), 0)?;
        }
        Ok(n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.tx_free.is_empty() {
            self.reclaim();
        }
        let mut desc = self
            .tx_free
            .pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::WouldBlock, "no free transmit frame"))?;
        {
            // SAFETY: a transmit frame not in flight.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            io::Write::write_all(&mut data.cursor(), frame)?;
        }
        self.tx_queued.push(desc);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.reclaim();
        if self.tx_queued.is_empty() {
            return Ok(());
        }
        // SAFETY: the queued frames are filled and handed to the kernel; they come back via
        // completions.
        let sent = unsafe { self.tx.produce(&self.tx_queued) };
        // In copy mode each wakeup transmits at most 32 frames (the kernel's TX_BATCH_SIZE):
        // one per 32, or the ring backs up.
        for _ in 0..sent.div_ceil(32) {
            if !self.tx.needs_wakeup() {
                break;
            }
            self.tx.wakeup()?;
        }
        // What the ring had no room for goes back to the pool (those frames are dropped).
        let unsent = self.tx_queued.len() - sent;
        self.tx_free.extend(self.tx_queued.drain(..).skip(sent));
        if unsent > 0 {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("transmit ring full: {unsent} dropped"),
            ));
        }
        Ok(())
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.rx.fd().as_raw_fd())
    }

    fn ifindex(&self) -> Option<u32> {
        Some(self.ifindex)
    }
}
