//! A worker's thread: pinned to its core, above the NAPI thread that feeds it, polling until
//! the datapath stops; it mirrors its flows into the XDP program's tracked flows, tells
//! observers of new flows, and publishes its counters.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use skiff_common::conntrack::{CtEntry, CtKey, CtKey4, CtKey6};
use skiff_engine::{
    engine::NewFlow,
    flow::{Tuple, masqueraded},
    tables::SharedTables,
};
use skiff_xdp::TrackedFlows;

use super::PortChange;
use crate::{
    io::{Bell, PacketIo},
    worker::{FlowEvent, Stats, Worker},
};

/// How often a busy worker publishes its counters.
const STATS_PERIOD: Duration = Duration::from_millis(1);

pub(super) struct WorkerThread<P: PacketIo> {
    pub(super) worker: Worker<P>,
    /// The XDP program's tracked flows, with AF_XDP.
    pub(super) mirror: Option<TrackedFlows>,
    pub(super) flows: Sender<NewFlow>,
    pub(super) stats: Arc<Mutex<Stats>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) shared: SharedTables,
    /// Ports to serve or stop serving (interfaces attached or detached while running).
    pub(super) changes: Receiver<PortChange<P>>,
    /// Rung after a port change or new tables.
    pub(super) bell: Arc<Bell>,
    pub(super) core: Option<core_affinity::CoreId>,
    pub(super) nice: i32,
}

impl<P: PacketIo> WorkerThread<P> {
    pub(super) fn run(mut self) {
        if let Some(core) = self.core {
            core_affinity::set_for_current(core);
        }
        // Above the NAPI thread feeding it when they share a core, the worker empties its
        // ring before more is received; at equal priority they split the core, and the
        // kernel spends its half receiving frames the full ring then drops (receive
        // livelock). Measured in the lab bench: 0.35 → 0.52 Mpps.
        // SAFETY: setpriority on the calling thread only; without CAP_SYS_NICE it fails and
        // the worker keeps its priority.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, self.nice) };
        let started = Instant::now();
        let (mut unpublished, mut published_at) = (false, Duration::ZERO);
        let WorkerThread { worker, mirror, flows, stats, stop, shared, changes, bell, .. } = &mut self;
        while !stop.load(Ordering::Relaxed) {
            bell.clear();
            for change in changes.try_iter() {
                let old = match change.port {
                    Some(port) => worker.insert_port(change.number, port, change.sources),
                    None => worker.remove_port(change.number),
                };
                let _ = change.done.send(old);
            }
            worker.engine().refresh(shared);
            let now = started.elapsed();
            // No waiting for frames while counts are unpublished: a status read just after the
            // traffic stops sees all of it.
            let wait_ms = if unpublished { 0 } else { 10 };
            let got = worker.poll(wait_ms, now.as_secs(), |event| on_flow(event, mirror.as_mut(), flows));
            unpublished |= got > 0;
            if unpublished && (got == 0 || now - published_at >= STATS_PERIOD) {
                *stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = worker.stats;
                (unpublished, published_at) = (false, now);
            }
        }
        *stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = worker.stats;
    }
}

/// A new flow's replies are steered to the worker by the XDP program (before its first packet
/// leaves) and observers hear of it; an ended flow's are no longer steered.
fn on_flow(event: FlowEvent, mirror: Option<&mut TrackedFlows>, flows: &Sender<NewFlow>) {
    match event {
        FlowEvent::Started(flow) => {
            if let Some(m) = mirror {
                // A flow whose replies the program cannot steer would be lost: the failure
                // shows in the program's pass counters.
                let nat = if masqueraded(&flow.original, &flow.reply) {
                    CtEntry::NAT_DNAT | CtEntry::NAT_SNAT
                } else {
                    CtEntry::NAT_DNAT
                };
                let _ = m.track(ct_key(&flow.reply), CtEntry { flags: nat, ..CtEntry::default() });
            }
            let _ = flows.try_send(*flow);
        }
        FlowEvent::Ended(reply) => {
            if let Some(m) = mirror {
                let _ = m.untrack(ct_key(reply));
            }
        }
    }
}

/// The XDP program's key for a tuple.
fn ct_key(t: &Tuple) -> CtKey {
    let v4 = |a: &[u8; 16]| std::net::Ipv6Addr::from(*a).to_ipv4_mapped().map(|a| a.octets());
    match (v4(&t.src), v4(&t.dst)) {
        (Some(src), Some(dst)) => CtKey::V4(CtKey4::new(src, t.src_port, dst, t.dst_port, t.protocol)),
        _ => CtKey::V6(CtKey6::new(t.src, t.src_port, t.dst, t.dst_port, t.protocol)),
    }
}
