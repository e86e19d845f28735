//! Ports in memory: frames pushed in by a test or a bench come out of `recv`, and frames sent
//! are kept for inspection. Buffers are recycled, so a steady loop allocates nothing.

use std::{collections::VecDeque, io, os::fd::RawFd};

use skiff_common::meta::XdpMeta;

use super::PacketIo;

#[derive(Debug, Default)]
pub struct MemoryPort {
    /// The interface it stands for, if any (tests of the NIC's flow table).
    ifindex: Option<u32>,
    inbox: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    queued: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl MemoryPort {
    pub fn new() -> MemoryPort {
        MemoryPort::default()
    }

    /// A port standing for interface `ifindex`: flows through it may be offloaded.
    pub fn with_ifindex(ifindex: u32) -> MemoryPort {
        MemoryPort { ifindex: Some(ifindex), ..MemoryPort::default() }
    }

    /// A frame for the next `recv`.
    pub fn push(&mut self, frame: &[u8]) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.inbox.push_back(buf);
    }

    /// The frames transmitted (flushed) so far, oldest first; their buffers are recycled.
    pub fn drain_sent(&mut self, mut f: impl FnMut(&[u8])) {
        for buf in self.sent.drain(..) {
            f(&buf);
            self.spare.push(buf);
        }
    }
}

impl PacketIo for MemoryPort {
    fn recv(&mut self, batch: usize, mut f: impl FnMut(&mut [u8], Option<XdpMeta>)) -> io::Result<usize> {
        let n = batch.min(self.inbox.len());
        for _ in 0..n {
            let mut buf = self.inbox.pop_front().expect("counted");
            f(&mut buf, None);
            self.spare.push(buf);
        }
        Ok(n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.queued.push(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sent.append(&mut self.queued);
        Ok(())
    }

    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn ifindex(&self) -> Option<u32> {
        self.ifindex
    }
}
