//! Frames passed between workers. A flow belongs to one worker (its conntrack entry lives
//! there, with no lock), but a NIC with several queues spreads a flow's two directions by its
//! own hash: a reply to a DNATed flow (backend → client) hashes unlike its request
//! (client → frontend), and an XDP program can only redirect a frame to the socket of the
//! queue it arrived on. So a worker that receives a frame of a flow another worker owns hands
//! it over: a copy through a bounded queue, and an eventfd that wakes the owner if it sleeps
//! (VPP's NAT hands frames between workers the same way). With one worker, nothing is built.

use std::{io, os::fd::RawFd, sync::Arc};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use skiff_common::identity::Identity;

use crate::io::{Bell, FRAME_ROOM};

/// Frames a worker's inbox holds.
const DEPTH: usize = 512;

/// A frame in transit, inline: the queue's slots are its only storage (no allocation).
pub struct Frame {
    len: u16,
    /// The identity its tunnel carried, when it came decapsulated.
    tunnel: Option<Identity>,
    bytes: [u8; FRAME_ROOM],
}

/// The frames other workers handed to this one.
pub struct Inbox {
    frames: Receiver<Frame>,
    bell: Arc<Bell>,
}

/// Where a worker hands frames to one other worker.
#[derive(Clone)]
pub struct Peer {
    frames: Sender<Frame>,
    bell: Arc<Bell>,
    /// Frames sent since the bell last rang.
    pending: bool,
}

/// An inbox per worker, and for each worker its peers (indexed by worker; its own entry
/// delivers to itself and is never used).
pub fn mesh(workers: usize) -> io::Result<Vec<(Inbox, Vec<Peer>)>> {
    let mut inboxes = Vec::with_capacity(workers);
    let mut peers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = crossbeam_channel::bounded(DEPTH);
        let bell = Arc::new(Bell::new()?);
        inboxes.push(Inbox { frames: rx, bell: bell.clone() });
        peers.push(Peer { frames: tx, bell, pending: false });
    }
    Ok(inboxes.into_iter().map(|inbox| (inbox, peers.clone())).collect())
}

impl Peer {
    /// Queues a copy of `frame` (with the identity its tunnel carried); false if the peer's
    /// inbox is full (or the frame too long).
    pub fn send(&mut self, frame: &[u8], tunnel: Option<Identity>) -> bool {
        let Ok(len) = u16::try_from(frame.len()) else { return false };
        let mut f = Frame { len, tunnel, bytes: [0; FRAME_ROOM] };
        let Some(room) = f.bytes.get_mut(..frame.len()) else { return false };
        room.copy_from_slice(frame);
        match self.frames.try_send(f) {
            Ok(()) => {
                self.pending = true;
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Wakes the peer if frames were sent since the last call: one system call per batch.
    pub fn ring(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.bell.ring();
        }
    }
}

impl Inbox {
    /// Becomes readable when frames were handed over.
    pub fn fd(&self) -> RawFd {
        self.bell.fd()
    }

    /// Takes up to `max` frames, handing each to `f` to edit in place (with its tunnel's
    /// identity); returns how many. The bell is cleared first: a frame sent after that rings
    /// it again.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&mut [u8], Option<Identity>)) -> usize {
        self.bell.clear();
        let mut n = 0;
        while n < max {
            let Ok(mut frame) = self.frames.try_recv() else { break };
            f(&mut frame.bytes[..usize::from(frame.len)], frame.tunnel);
            n += 1;
        }
        n
    }
}
