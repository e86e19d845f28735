//! A worker's thread: pinned to its core, above the NAPI thread that feeds it, polling until
//! the datapath stops; it writes its flows into the XDP program's flow table (steered to it,
//! or forwarded at the NIC once established), tells observers what it decides, and
//! publishes its counters.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crossbeam_channel::Receiver;
use skiff_engine::tables::SharedTables;

use super::{PortChange, monotonic};
use crate::{
    io::{Bell, PacketIo},
    nic::NicFlows,
    worker::{Stats, Worker},
};

/// How often a busy worker publishes its counters.
const STATS_PERIOD: Duration = Duration::from_millis(1);
/// The span a worker's busy ratio covers.
const BUSY_WINDOW: Duration = Duration::from_secs(1);

pub(super) struct WorkerThread<P: PacketIo> {
    pub(super) worker: Worker<P>,
    pub(super) flows: NicFlows,
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
        let (mut published, mut published_at) = (Stats::default(), Duration::ZERO);
        // The busy ratio's window: since when, and the idle time then.
        let (mut window, mut idle_then) = (monotonic(), Duration::ZERO);
        let WorkerThread { worker, flows, stats, stop, shared, changes, bell, .. } = &mut self;
        while !stop.load(Ordering::Relaxed) {
            bell.clear();
            for change in changes.try_iter() {
                let old = match change.port {
                    Some(port) => worker.insert_port(change.number, port, change.sources),
                    None => worker.remove_port(change.number),
                };
                let _ = change.done.send(old);
            }
            worker.refresh(shared, flows);
            let now = monotonic();
            // No waiting for frames while counts are unpublished: a status read just after the
            // traffic stops sees all of it.
            let wait_ms = if worker.stats != published { 0 } else { 10 };
            let got = worker.poll(wait_ms, now.as_secs(), flows);
            if now - window >= BUSY_WINDOW {
                let span = (now - window).as_nanos();
                let idle = (worker.idle - idle_then).as_nanos().min(span);
                worker.stats.busy_permille = u16::try_from(1000 - idle * 1000 / span).unwrap_or(1000);
                (window, idle_then) = (now, worker.idle);
            }
            // New counts (frames, or flows placed anew after new tables) are published once the
            // frames stop, and every STATS_PERIOD while they do not.
            if worker.stats != published && (got == 0 || now - published_at >= STATS_PERIOD) {
                *stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = worker.stats;
                (published, published_at) = (worker.stats, now);
            }
        }
        *stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = worker.stats;
    }
}
