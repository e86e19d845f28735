//! A worker: its ports (one per interface, any [`PacketIo`] backend), one engine, and where
//! each destination goes.
//!
//! [`Worker::poll`] receives a batch on every port, runs each frame through the engine, writes
//! the MACs of the frame's next hop (its destination after NAT) and queues it on that
//! neighbour's port; each port then transmits its batch at once. Frames are staged in a
//! preallocated arena between receive and transmit (a port cannot send while another is lent
//! out to receive), so nothing allocates per packet. Only exceptions (frames the engine leaves
//! to the kernel when the kernel has no copy) leave the hot path, through a bounded channel to
//! the slow path.

use std::os::fd::RawFd;

use crossbeam_channel::Sender;
use skiff_common::DropReason;
use skiff_wire::layers;

use crate::{
    conntrack::Tuple,
    engine::{Engine, NewFlow, Verdict},
    io::{BATCH, PacketIo, wait_readable},
};

/// A flow that started or ended in a worker's conntrack.
#[derive(Clone, Copy, Debug)]
pub enum FlowEvent<'a> {
    Started(&'a NewFlow),
    /// Expired or evicted: its reply tuple.
    Ended(&'a Tuple),
}

/// What a worker did, for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub forwarded: u64,
    /// Answers sent back (RSTs and ICMP errors for services without backends).
    pub replied: u64,
    pub dropped: u64,
    /// Drops by `DropReason` code.
    pub drops: [u64; DropReason::COUNT],
    /// Frames the engine left to the kernel: handed to the slow path when the kernel has no
    /// copy (AF_XDP), ignored when it has (AF_PACKET).
    pub not_ours: u64,
    /// Of those, handed to the slow path.
    pub exceptions: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            received: 0,
            forwarded: 0,
            replied: 0,
            dropped: 0,
            drops: [0; DropReason::COUNT],
            not_ours: 0,
            exceptions: 0,
        }
    }
}

impl Stats {
    fn count_drop(&mut self, reason: DropReason) {
        self.dropped += 1;
        self.drops[usize::from(reason.code())] += 1;
    }

    /// The drops of one reason.
    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[usize::from(reason.code())]
    }

    /// Adds another worker's counts (for a node-wide total).
    pub fn add(&mut self, o: &Stats) {
        self.received += o.received;
        self.forwarded += o.forwarded;
        self.replied += o.replied;
        self.dropped += o.dropped;
        self.not_ours += o.not_ours;
        self.exceptions += o.exceptions;
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }
}

const FRAME_ROOM: usize = 2048;
/// Conntrack slots examined for expiry per round: a full sweep of 512k slots every 8k rounds,
/// never a pause.
const GC_PER_ROUND: usize = 64;

pub struct Worker<P: PacketIo> {
    engine: Engine,
    ports: Vec<P>,
    fds: Vec<RawFd>,
    /// Frames per receive batch.
    batch: usize,
    /// Where frames the kernel never saw go when the engine passes them (the slow path);
    /// `None` when the ports leave the kernel a copy.
    exceptions: Option<Sender<Vec<u8>>>,
    arena: Vec<u8>,
    staged: Vec<(usize, usize)>,
    pub stats: Stats,
}

impl<P: PacketIo> Worker<P> {
    pub fn new(engine: Engine, ports: Vec<P>) -> Worker<P> {
        let room = ports.len().max(1) * BATCH;
        Worker {
            engine,
            fds: ports.iter().filter_map(PacketIo::fd).collect(),
            ports,
            batch: BATCH,
            exceptions: None,
            arena: vec![0; room * FRAME_ROOM],
            staged: Vec::with_capacity(room),
            stats: Stats::default(),
        }
    }

    /// Frames per receive batch (at most [`BATCH`]).
    pub fn with_batch(mut self, batch: usize) -> Worker<P> {
        self.batch = batch.clamp(1, BATCH);
        self
    }

    /// Hands passed frames to the slow path through `exceptions` (for ports whose frames the
    /// kernel never sees).
    pub fn with_exceptions(mut self, exceptions: Sender<Vec<u8>>) -> Worker<P> {
        self.exceptions = Some(exceptions);
        self
    }

    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn ports_mut(&mut self) -> &mut [P] {
        &mut self.ports
    }

    /// One round: every port's waiting frames through the engine and out, and a bounded step of
    /// conntrack expiry. When no frame waits, first sleeps up to `timeout_ms` until one does.
    /// `now` is the clock conntrack expires flows by (seconds). `on_flow` hears of each new
    /// flow before any of its packets is sent, and of each flow removed. Returns frames
    /// received.
    pub fn poll(&mut self, timeout_ms: i32, now: u64, mut on_flow: impl FnMut(FlowEvent)) -> usize {
        let mut received = self.receive(now);
        if received == 0 && timeout_ms != 0 && wait_readable(&self.fds, timeout_ms).unwrap_or(false) {
            received = self.receive(now);
        }
        self.engine.drain_new_flows(|f| on_flow(FlowEvent::Started(f)));
        let conntrack = self.engine.conntrack();
        conntrack.gc_step(now, GC_PER_ROUND);
        conntrack.drain_ended(|t| on_flow(FlowEvent::Ended(t)));
        let Worker { ports, arena, staged, stats, .. } = self;
        for (slot, &(port, len)) in staged.iter().enumerate() {
            let frame = &arena[slot * FRAME_ROOM..slot * FRAME_ROOM + len];
            match ports.get_mut(port).map(|p| p.send(frame)) {
                Some(Ok(())) => stats.forwarded += 1,
                _ => stats.count_drop(DropReason::NoTxSpace),
            }
        }
        for port in ports.iter_mut() {
            if port.flush().is_err() {
                // Frames the ring had no room for; the count is not reported per frame.
                stats.count_drop(DropReason::NoTxSpace);
            }
        }
        received
    }

    /// Receives one batch per port and stages what goes out.
    fn receive(&mut self, now: u64) -> usize {
        let mut received = 0;
        let Worker { engine, ports, batch, exceptions, arena, staged, stats, .. } = self;
        staged.clear();
        for port in ports.iter_mut() {
            let got = port.recv(*batch, |frame| {
                stats.received += 1;
                let frame = match engine.process(frame, now) {
                    Verdict::Forward => frame,
                    Verdict::Reply { len } => {
                        stats.replied += 1;
                        &mut frame[..usize::from(len)]
                    }
                    Verdict::Pass => {
                        stats.not_ours += 1;
                        if let Some(slow) = exceptions {
                            // Off the hot path: a copy for the slow path, dropped if it lags.
                            match slow.try_send(frame.to_vec()) {
                                Ok(()) => stats.exceptions += 1,
                                Err(_) => stats.count_drop(DropReason::SlowPathBusy),
                            }
                        }
                        return;
                    }
                    Verdict::Drop(reason) => {
                        stats.count_drop(reason);
                        return;
                    }
                };
                let next_hop = layers::parse(frame).ok().and_then(|p| p.addrs(frame)).map(|(_, dst)| dst);
                let Some(n) = next_hop.and_then(|dst| engine.tables().next_hop(dst)) else {
                    stats.count_drop(DropReason::Unroutable);
                    return;
                };
                frame[..6].copy_from_slice(&n.dst_mac);
                frame[6..12].copy_from_slice(&n.src_mac);
                let slot = staged.len();
                if frame.len() <= FRAME_ROOM && (slot + 1) * FRAME_ROOM <= arena.len() {
                    arena[slot * FRAME_ROOM..slot * FRAME_ROOM + frame.len()].copy_from_slice(frame);
                    staged.push((n.port, frame.len()));
                } else {
                    stats.count_drop(DropReason::MtuExceeded);
                }
            });
            received += got.unwrap_or(0);
        }
        received
    }
}
