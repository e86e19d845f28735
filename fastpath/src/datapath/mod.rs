//! The running fast path: one worker per receive queue, each on its own core, fed by AF_XDP
//! sockets behind skiff's XDP program or by AF_PACKET sockets; the tables they share; and the
//! channels that carry what leaves the hot path (new flows for observers, exceptions for the
//! slow path).
//!
//! Worker `q` serves queue `q` of every interface. A flow belongs to one worker, chosen by its
//! client's endpoint; a frame of it that a NIC's hash put on another queue is handed to the
//! owner ([`crate::handoff`]).

mod thread;

use std::{
    fs::File,
    io,
    net::IpAddr,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crossbeam_channel::{Receiver, Sender};
use skiff_common::lb::FrontendKind;
use skiff_engine::{
    conntrack::Timeouts,
    engine::{Engine, NewFlow, Partition},
    tables::{SharedTables, Tables},
};
use skiff_xdp::{Ingress, TrackedFlows, XdpError, XdpMode};

use self::thread::WorkerThread;
use crate::{
    handoff::{self, Inbox, Peer},
    io::{
        BATCH, PacketIo,
        afxdp::{BusyPoll, XskPort},
        packet::{PacketPort, Steering},
    },
    worker::{Stats, Worker},
};

/// Where the workers' frames come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// AF_XDP sockets fed by skiff's XDP program attached in this mode.
    AfXdp(XdpMode),
    /// AF_PACKET sockets, with nftables steering (no AF_XDP needed).
    AfPacket,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub io: Io,
    /// Workers, one per receive queue.
    pub workers: u16,
    /// Cores to pin workers to, worker `q` on `cores[q % len]`; empty: every core in turn.
    pub cores: Vec<usize>,
    /// UMEM frames per AF_XDP socket.
    pub umem_frames: u32,
    pub batch: usize,
    pub busy_poll: Option<BusyPoll>,
    /// The workers' nice value (-20 is the highest priority).
    pub worker_nice: i32,
    /// Conntrack entries per worker.
    pub ct_capacity: usize,
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interfaces: Vec::new(),
            io: Io::AfXdp(XdpMode::Auto),
            workers: 1,
            cores: Vec::new(),
            umem_frames: 4096,
            batch: BATCH,
            busy_poll: None,
            worker_nice: -20,
            ct_capacity: 512 * 1024,
            timeouts: Timeouts::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the XDP program: {0}")]
    Xdp(#[from] XdpError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("AF_XDP needs the loaded XDP program")]
    NoIngress,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

/// Frames a worker's channels hold before it drops (new flows) or counts (exceptions) more.
const CHANNEL_DEPTH: usize = 4096;

/// The counters each worker publishes (as soon as it runs out of frames, and every
/// `STATS_PERIOD` while it has more).
#[derive(Clone, Default)]
pub struct StatsHandle(Vec<Arc<Mutex<Stats>>>);

impl StatsHandle {
    /// The sum over the workers.
    pub fn total(&self) -> Stats {
        let mut total = Stats::default();
        for s in &self.0 {
            total.add(&s.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        }
        total
    }
}

pub struct Datapath {
    shared: SharedTables,
    config: Config,
    /// The network namespace the datapath was started in, for steering changes made later
    /// from other threads.
    netns: File,
    ingress: Option<Mutex<Ingress>>,
    /// The mode the XDP program got (auto resolves to native or generic).
    xdp_mode: Option<XdpMode>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    stats: StatsHandle,
    /// Flows the workers started, as they start (bounded: an observer that lags misses some).
    pub flows: Receiver<NewFlow>,
    /// Frames for the slow path: what the engine left to a kernel that never saw them.
    pub exceptions: Receiver<Vec<u8>>,
}

impl Datapath {
    /// Starts the workers on `config.interfaces` in the calling thread's network namespace,
    /// with `tables` (whose next hops' `port` is the interface's index in
    /// `config.interfaces`). AF_XDP needs `ingress`, the loaded XDP program, which is attached
    /// to every interface. Returns once every socket is bound.
    pub fn start(
        config: Config,
        tables: Tables,
        ingress: Option<Ingress>,
    ) -> Result<Datapath, DatapathError> {
        let netns =
            File::open("/proc/thread-self/ns/net").map_err(io_error("opening the network namespace"))?;
        let (flows_tx, flows) = crossbeam_channel::bounded(CHANNEL_DEPTH);
        let (exceptions_tx, exceptions) = crossbeam_channel::bounded(CHANNEL_DEPTH);
        let cores = if config.cores.is_empty() {
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
        } else {
            config.cores.clone()
        };
        let mut datapath = Datapath {
            shared: SharedTables::new(Tables::default()),
            netns,
            ingress: None,
            xdp_mode: None,
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            stats: StatsHandle::default(),
            flows,
            exceptions,
            config: config.clone(),
        };
        match config.io {
            Io::AfXdp(mode) => {
                let mut ingress = ingress.ok_or(DatapathError::NoIngress)?;
                for iface in &config.interfaces {
                    datapath.xdp_mode = Some(ingress.attach(iface, mode)?);
                }
                let mut per_worker = Vec::new();
                for q in 0..config.workers {
                    let mut ports = Vec::new();
                    for iface in &config.interfaces {
                        let port = XskPort::bind(iface, q.into(), config.umem_frames, config.busy_poll)
                            .map_err(io_error(format!("AF_XDP socket on {iface} queue {q}")))?;
                        let fd = port.fd().expect("an AF_XDP port has a socket");
                        ingress.set_worker(ifindex(iface)?, q.into(), fd)?;
                        ports.push(port);
                    }
                    per_worker.push((ports, Some(ingress.tracked_flows()?)));
                }
                datapath.ingress = Some(Mutex::new(ingress));
                datapath.publish(tables)?;
                let mut handoff = datapath.handoff()?;
                for (q, (ports, mirror)) in per_worker.into_iter().enumerate() {
                    let worker =
                        datapath.worker(q, ports, &mut handoff).with_exceptions(exceptions_tx.clone());
                    datapath.spawn(q, worker, mirror, flows_tx.clone(), &cores);
                }
            }
            Io::AfPacket => {
                datapath.publish(tables)?;
                let mut handoff = datapath.handoff()?;
                for q in 0..usize::from(config.workers) {
                    let ports = config
                        .interfaces
                        .iter()
                        .map(|iface| {
                            PacketPort::open(iface, config.workers > 1)
                                .map_err(io_error(format!("AF_PACKET socket on {iface}")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let worker = datapath.worker(q, ports, &mut handoff);
                    datapath.spawn(q, worker, None, flows_tx.clone(), &cores);
                }
            }
        }
        Ok(datapath)
    }

    /// Each worker's inbox and peers for frames of flows other workers own: none with one
    /// worker.
    fn handoff(&self) -> Result<std::vec::IntoIter<(Inbox, Vec<Peer>)>, DatapathError> {
        let workers = usize::from(self.config.workers);
        let mesh = if workers > 1 { handoff::mesh(workers) } else { Ok(Vec::new()) };
        Ok(mesh.map_err(io_error("the workers' hand-off queues"))?.into_iter())
    }

    fn worker<P: PacketIo>(
        &self,
        q: usize,
        ports: Vec<P>,
        handoff: &mut impl Iterator<Item = (Inbox, Vec<Peer>)>,
    ) -> Worker<P> {
        let mut engine = Engine::new(self.shared.current(), self.config.ct_capacity, self.config.timeouts);
        let index = u16::try_from(q).unwrap_or(u16::MAX);
        engine.set_partition(Partition { index, count: self.config.workers });
        let worker = Worker::new(engine, ports).with_batch(self.config.batch);
        match handoff.next() {
            Some((inbox, peers)) => worker.with_handoff(inbox, peers),
            None => worker,
        }
    }

    fn spawn<P: PacketIo + Send + 'static>(
        &mut self,
        q: usize,
        worker: Worker<P>,
        mirror: Option<TrackedFlows>,
        flows: Sender<NewFlow>,
        cores: &[usize],
    ) {
        let stats = Arc::new(Mutex::new(Stats::default()));
        self.stats.0.push(stats.clone());
        let thread = WorkerThread {
            worker,
            mirror,
            flows,
            stats,
            stop: self.stop.clone(),
            shared: self.shared.clone(),
            core: (!cores.is_empty()).then(|| core_affinity::CoreId { id: cores[q % cores.len()] }),
            nice: self.config.worker_nice,
        };
        self.workers.push(std::thread::spawn(move || thread.run()));
    }

    /// Makes `tables` the workers' tables (from their next batch on) and steers the frontends'
    /// frames to them: into the XDP program's service map, or into the nftables steering.
    pub fn publish(&self, tables: Tables) -> Result<(), DatapathError> {
        let frontends: Vec<(IpAddr, u16, u8, FrontendKind)> =
            tables.services.iter().map(|(f, s)| (f.addr, f.port, f.protocol, s.config().kind)).collect();
        let steering = Steering {
            interfaces: self.config.interfaces.clone(),
            frontends: frontends.iter().map(|&(a, port, proto, _)| (a, proto, port)).collect(),
            backends: tables
                .services
                .iter()
                .flat_map(|(f, s)| s.backends().map(move |b| (b.addr, f.protocol, b.port)))
                .collect(),
            masquerade: [tables.node.masquerade_v4, tables.node.masquerade_v6]
                .into_iter()
                .flatten()
                .collect(),
        };
        self.shared.publish(tables);
        match &self.ingress {
            Some(ingress) => {
                ingress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).set_services(&frontends)?
            }
            None => self.in_netns(|| steering.apply()).map_err(io_error("steering frames to the workers"))?,
        }
        Ok(())
    }

    /// The mode XDP was attached in, with AF_XDP.
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        self.xdp_mode
    }

    /// The workers' counters, summed (as of their last publication: at most a moment old).
    pub fn stats(&self) -> Stats {
        self.stats.total()
    }

    /// The workers' counters, readable from elsewhere (a status API) while they run.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Stops the workers, removes the steering, detaches the XDP program (its pinned maps
    /// stay), and returns the counters.
    pub fn stop(mut self) -> Stats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if self.config.io == Io::AfPacket {
            let _ = self.in_netns(Steering::remove);
        }
        self.ingress = None;
    }

    /// Runs `f` in the datapath's network namespace (on a helper thread: `setns` changes only
    /// the calling thread).
    fn in_netns<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let fd = self.netns.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this helper thread only, with a namespace descriptor we hold.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("steering thread panicked")))
        })
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.halt();
    }
}

fn ifindex(iface: &str) -> Result<u32, DatapathError> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| io_error(iface)(io::Error::new(io::ErrorKind::InvalidInput, "interface name")))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io_error(format!("interface {iface}"))(io::Error::last_os_error())),
        i => Ok(i),
    }
}
