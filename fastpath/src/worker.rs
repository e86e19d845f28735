//! A worker: AF_XDP ports, one engine, and where each destination goes.
//!
//! [`Worker::poll`] receives a batch on every port, runs each frame through the engine, writes
//! the MACs of the frame's next hop (its destination after NAT) and transmits it on that
//! neighbour's port. Frames are staged in a preallocated arena between receive and transmit
//! (a port cannot send while another is lent out to receive), so nothing allocates per packet.

use std::net::IpAddr;

use hashbrown::HashMap;
use skiff_wire::layers;

use crate::{
    conntrack::Tuple,
    engine::{Engine, Verdict},
    io::afxdp::XskPort,
};

/// How to reach an address: out of which port, with which MACs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub port: usize,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// What a worker did, for counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub forwarded: u64,
    /// Answers sent back (RSTs and ICMP errors for services without backends).
    pub replied: u64,
    pub dropped: u64,
    /// Frames the engine left to the kernel, which an AF_XDP worker cannot give back.
    pub not_ours: u64,
    pub no_neighbor: u64,
}

const FRAME_ROOM: usize = 2048;
const BATCH: usize = 64;
/// Conntrack slots examined for expiry per round: a full sweep of 512k slots every 8k rounds,
/// never a pause.
const GC_PER_ROUND: usize = 64;

pub struct Worker {
    engine: Engine,
    ports: Vec<XskPort>,
    neighbors: HashMap<IpAddr, Neighbor>,
    arena: Vec<u8>,
    staged: Vec<(usize, usize)>,
    pub stats: Stats,
}

impl Worker {
    pub fn new(engine: Engine, ports: Vec<XskPort>, neighbors: HashMap<IpAddr, Neighbor>) -> Worker {
        let room = ports.len().max(1) * BATCH;
        Worker {
            engine,
            ports,
            neighbors,
            arena: vec![0; room * FRAME_ROOM],
            staged: Vec::with_capacity(room),
            stats: Stats::default(),
        }
    }

    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// One round: every port's waiting frames through the engine and out, and a bounded step of
    /// conntrack expiry. `now` is the clock conntrack expires flows by (seconds).
    /// `on_new_flow` gets each new flow's reply tuple before any of its packets is sent.
    /// Returns frames received.
    pub fn poll(&mut self, timeout_ms: i32, now: u64, mut on_new_flow: impl FnMut(&Tuple)) -> usize {
        let mut received = 0;
        let Worker { engine, ports, neighbors, arena, staged, stats } = self;
        staged.clear();
        for port in ports.iter_mut() {
            let got = port.recv(timeout_ms, |frame| {
                stats.received += 1;
                let frame = match engine.process(frame, now) {
                    Verdict::Forward => frame,
                    Verdict::Reply { len } => {
                        stats.replied += 1;
                        &mut frame[..len]
                    }
                    Verdict::Pass => {
                        stats.not_ours += 1;
                        return;
                    }
                    Verdict::Drop(_) => {
                        stats.dropped += 1;
                        return;
                    }
                };
                let next_hop = layers::parse(frame).ok().and_then(|p| p.addrs(frame)).map(|(_, dst)| dst);
                let Some(n) = next_hop.and_then(|dst| neighbors.get(&dst)) else {
                    stats.no_neighbor += 1;
                    return;
                };
                frame[..6].copy_from_slice(&n.dst_mac);
                frame[6..12].copy_from_slice(&n.src_mac);
                let slot = staged.len();
                if frame.len() <= FRAME_ROOM && (slot + 1) * FRAME_ROOM <= arena.len() {
                    arena[slot * FRAME_ROOM..slot * FRAME_ROOM + frame.len()].copy_from_slice(frame);
                    staged.push((n.port, frame.len()));
                }
            });
            received += got.unwrap_or(0);
        }
        engine.drain_new_flows(&mut on_new_flow);
        engine.conntrack().gc_step(now, GC_PER_ROUND);
        for (slot, &(port, len)) in staged.iter().enumerate() {
            let frame = &arena[slot * FRAME_ROOM..slot * FRAME_ROOM + len];
            if ports.get_mut(port).is_some_and(|p| p.send(frame).is_ok()) {
                stats.forwarded += 1;
            } else {
                stats.dropped += 1;
            }
        }
        received
    }
}
