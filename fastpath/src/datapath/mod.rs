//! The running fast path: one worker per receive queue, each on its own core, fed by AF_XDP
//! sockets behind skiff's XDP program or by AF_PACKET sockets; the tables they share; and the
//! channels that carry what leaves the hot path (flow events for observers, exceptions for
//! the slow path).
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
    time::Duration,
};

use crossbeam_channel::{Receiver, Sender};
use skiff_common::{
    Counter,
    config::XdpConfig,
    conntrack::FlowPath,
    endpoint::{EndpointInfo, PodSources},
    identity::Identity,
    lb::FrontendKind,
    proto::ip,
};
use skiff_engine::{
    conntrack::Timeouts,
    engine::{Engine, Partition, SNAT_PORTS},
    event::Event,
    offload,
    policy::Policy,
    tables::{LocalNode, SharedTables, Tables},
    tunnel::{Overlay, TunnelProtocol},
};
use skiff_xdp::{FlowTable, Ingress, XdpError, XdpMode};

use self::thread::WorkerThread;
use crate::{
    handoff::{self, Inbox, Peer},
    io::{
        BATCH, Bell, PacketIo,
        afxdp::{BusyPoll, XskPort},
        ifindex,
        packet::{PacketPort, Steering},
    },
    nic::NicFlows,
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
    /// UMEM frames per AF_XDP socket on `interfaces` (2 KiB each: 8 MiB per socket).
    pub umem_frames: u32,
    /// UMEM frames per AF_XDP socket on an interface attached while running: a pod's veth,
    /// which carries one pod's traffic. 512 (1 MiB per socket) keep 110 pods, kubelet's
    /// default maximum, well inside the agent's 256 MiB.
    pub attached_umem_frames: u32,
    pub batch: usize,
    pub busy_poll: Option<BusyPoll>,
    /// The workers' nice value (-20 is the highest priority).
    pub worker_nice: i32,
    /// Conntrack entries per worker.
    pub ct_capacity: usize,
    pub timeouts: Timeouts,
    /// Workers record what they decide for [`Datapath::events`].
    pub flow_events: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interfaces: Vec::new(),
            io: Io::AfXdp(XdpMode::Auto),
            workers: 1,
            cores: Vec::new(),
            umem_frames: 4096,
            attached_umem_frames: 512,
            batch: BATCH,
            busy_poll: None,
            worker_nice: -20,
            ct_capacity: 512 * 1024,
            timeouts: Timeouts::default(),
            flow_events: true,
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
        for s in self.each() {
            total.add(&s);
        }
        total
    }

    /// Each worker's, by queue.
    pub fn each(&self) -> Vec<Stats> {
        self.0.iter().map(|s| *s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).collect()
    }
}

pub struct Datapath {
    shared: SharedTables,
    config: Config,
    /// The network namespace the datapath was started in: interfaces are found, sockets bound
    /// and steering changed there, from whatever thread asks.
    netns: File,
    ingress: Option<Mutex<Ingress>>,
    /// The mode the XDP program got on the first interface (auto resolves to native or
    /// generic).
    xdp_mode: Option<XdpMode>,
    /// The interfaces served, by port number (a next hop's `port`); `None` where one was
    /// detached (the number is given again to the next).
    ports: Vec<Option<Port>>,
    /// Each worker's channel for port changes.
    changes: Changes,
    /// Each worker's bell: rung after a port change or new tables, so that the worker takes
    /// them at once instead of after its sleep (up to 10 ms) for frames.
    bells: Vec<Arc<Bell>>,
    /// The AF_PACKET steering as last applied (its interfaces change with the ports).
    steering: Mutex<Steering>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    stats: StatsHandle,
    adopted: Adopted,
    /// What the workers decide ([`Event`]s), as they do (bounded: an observer that lags
    /// misses some, counted in the workers' `events_lost`).
    pub events: Receiver<Event>,
    /// Frames for the slow path: what the engine left to a kernel that never saw them.
    pub exceptions: Receiver<Vec<u8>>,
}

/// The flows an earlier agent left in the XDP program's flow table that the workers took
/// over at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    pub flows: usize,
    /// Of those, forwarded at the NIC.
    pub at_nic: usize,
    /// Directions lost in flow-cache slots an agent killed mid-write left half written.
    pub torn: usize,
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns` and of the flow table's times
/// (`FlowTable::seen_ns`): conntrack compares them with its own.
pub(crate) fn monotonic() -> Duration {
    Duration::from_nanos(skiff_xdp::monotonic_ns())
}

/// An interface the datapath serves.
#[derive(Clone, Debug)]
struct Port {
    name: String,
    ifindex: u32,
    /// A pod's addresses, the only sources its frames may have.
    sources: Option<PodSources>,
    /// The mode the XDP program got on it, with AF_XDP.
    xdp_mode: Option<XdpMode>,
}

/// A change to a worker's ports: serve `port` as port `number`, or (`None`) stop serving it;
/// the worker answers on `done` once it has, with the port it no longer serves (to be
/// closed by [`close_aside`]).
pub(crate) struct PortChange<P> {
    number: usize,
    port: Option<P>,
    /// The addresses the pod behind the port may send from, when the worker checks them.
    sources: Option<PodSources>,
    done: Sender<Option<P>>,
}

enum Changes {
    AfXdp(Vec<Sender<PortChange<XskPort>>>),
    AfPacket(Vec<Sender<PortChange<PacketPort>>>),
}

/// How long a worker may take to make a port change (it looks between rounds, woken by its
/// bell).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// An interface attached while running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Its port number: next hops through it name it.
    pub port: usize,
    /// The mode the XDP program got on it, with AF_XDP.
    pub xdp_mode: Option<XdpMode>,
}

impl Datapath {
    /// Starts the workers on `config.interfaces` (ports 0, 1, … in order) in the calling
    /// thread's network namespace, with `tables`. AF_XDP needs `ingress`, the loaded XDP
    /// program, which is attached to every interface; its workers adopt the flows an earlier
    /// datapath left in its flow table. Without `tables` (an agent that has not read its
    /// objects yet) the workers start with empty tables and the XDP program's maps keep what
    /// they hold, as an earlier agent left them, until the first [`Datapath::publish`]: a
    /// restart does not open, for a moment, what that agent's tables closed. Returns once
    /// every socket is bound.
    pub fn start(
        config: Config,
        tables: Option<Tables>,
        ingress: Option<Ingress>,
    ) -> Result<Datapath, DatapathError> {
        let netns =
            File::open("/proc/thread-self/ns/net").map_err(io_error("opening the network namespace"))?;
        let (events_tx, events) = crossbeam_channel::bounded(CHANNEL_DEPTH);
        let (exceptions_tx, exceptions) = crossbeam_channel::bounded(CHANNEL_DEPTH);
        let cores = if config.cores.is_empty() {
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
        } else {
            config.cores.clone()
        };
        let changes = match config.io {
            Io::AfXdp(_) => Changes::AfXdp(Vec::new()),
            Io::AfPacket => Changes::AfPacket(Vec::new()),
        };
        let mut datapath = Datapath {
            // The workers' first tables, so that they see no change when these are published.
            shared: SharedTables::new(tables.clone().unwrap_or_default()),
            netns,
            ingress: None,
            xdp_mode: None,
            ports: Vec::new(),
            changes,
            bells: Vec::new(),
            steering: Mutex::new(Steering::default()),
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            stats: StatsHandle::default(),
            adopted: Adopted::default(),
            events,
            exceptions,
            config: config.clone(),
        };
        let mut handoff = datapath.handoff()?;
        match config.io {
            Io::AfXdp(_) => {
                let ingress = ingress.ok_or(DatapathError::NoIngress)?;
                // The flows an earlier agent left in the flow table, adopted by their owners
                // before any frame of theirs reaches a worker.
                let mut table = ingress.flow_table()?;
                datapath.adopted.torn = table.settle();
                let (pinned, orphans) = offload::pinned_flows(&table.entries(), |e| table.seen_ns(e));
                for key in orphans {
                    table.remove(key)?;
                }
                let now = monotonic().as_secs();
                let mut senders = Vec::new();
                for q in 0..usize::from(config.workers) {
                    let table = ingress.flow_table()?;
                    let mut worker = datapath.worker(q, &mut handoff).with_exceptions(exceptions_tx.clone());
                    for flow in &pinned {
                        if worker.engine().adopt(flow, now) {
                            datapath.adopted.flows += 1;
                            datapath.adopted.at_nic += usize::from(flow.offloaded);
                        }
                    }
                    senders.push(datapath.spawn(q, worker, Some(table), events_tx.clone(), &cores)?);
                }
                datapath.ingress = Some(Mutex::new(ingress));
                datapath.changes = Changes::AfXdp(senders);
            }
            Io::AfPacket => {
                let mut senders = Vec::new();
                for q in 0..usize::from(config.workers) {
                    let worker = datapath.worker(q, &mut handoff);
                    senders.push(datapath.spawn(q, worker, None, events_tx.clone(), &cores)?);
                }
                datapath.changes = Changes::AfPacket(senders);
            }
        }
        if let Some(tables) = tables {
            datapath.publish(tables)?;
        }
        for iface in &config.interfaces {
            let attached = datapath.attach_port(iface, config.umem_frames, None)?;
            datapath.xdp_mode = datapath.xdp_mode.or(attached.xdp_mode);
        }
        Ok(datapath)
    }

    /// Serves `iface` too, from now on, without disturbing the other ports' traffic: a socket
    /// per worker (with a small UMEM, `config.attached_umem_frames`), then the XDP program (or
    /// the steering). For a pod's veth, made after the datapath started.
    /// Serves `iface` from now on. When it is a pod's veth, `sources` are the pod's addresses:
    /// its frames from any other are dropped (`SpoofedSource`), so that no pod takes another's
    /// identity; empty for an interface that is no pod's.
    pub fn attach(&mut self, iface: &str, sources: &[IpAddr]) -> Result<Attached, DatapathError> {
        if let Some(port) = self.port_of(iface) {
            let xdp_mode = self.ports[port].as_ref().and_then(|p| p.xdp_mode);
            return Ok(Attached { port, xdp_mode });
        }
        self.attach_port(iface, self.config.attached_umem_frames, pod_sources(sources))
    }

    fn attach_port(
        &mut self,
        iface: &str,
        umem_frames: u32,
        sources: Option<PodSources>,
    ) -> Result<Attached, DatapathError> {
        let number = self.ports.iter().position(Option::is_none).unwrap_or(self.ports.len());
        let ifindex = self.in_netns(|| ifindex(iface)).map_err(io_error(format!("interface {iface}")))?;
        let (workers, busy_poll) = (self.config.workers, self.config.busy_poll);
        let mut xdp_mode = None;
        match &self.changes {
            Changes::AfXdp(senders) => {
                let Io::AfXdp(mode) = self.config.io else { unreachable!("AF_XDP changes") };
                let ingress = self.ingress.as_ref().ok_or(DatapathError::NoIngress)?;
                let mut guard = ingress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let ingress: &mut Ingress = &mut guard;
                // Sockets first: the program redirects to a bound socket from its first frame.
                let ports = self
                    .in_netns(|| {
                        (0..workers)
                            .map(|q| XskPort::bind(iface, q.into(), umem_frames, busy_poll))
                            .collect::<io::Result<Vec<_>>>()
                    })
                    .map_err(io_error(format!("AF_XDP sockets on {iface}")))?;
                for (q, port) in (0u32..).zip(&ports) {
                    ingress.set_worker(ifindex, q, port.fd().expect("an AF_XDP port has a socket"))?;
                }
                // Before the program attaches: a pod's first frame is checked already.
                ingress.set_pod_sources(ifindex, sources)?;
                change_ports(senders, &self.bells, number, ports.into_iter().map(Some), None, iface)?;
                let attached = self
                    .in_netns(|| Ok(ingress.attach(iface, mode)))
                    .map_err(io_error(format!("attaching XDP to {iface}")))?;
                match attached {
                    Ok(mode) => {
                        xdp_mode = Some(mode);
                        // The flow table forwards out of it only if it takes XDP frames (a
                        // veth whose peer has GRO or an XDP program); else those flows stay
                        // with the workers (`FlowPath::NoDevice`).
                        let takes = self.in_netns(|| skiff_xdp::takes_xdp_frames(ifindex)).unwrap_or(false);
                        ingress.set_tx_port(ifindex, takes)?;
                    }
                    Err(e) => {
                        let _ = change_ports(
                            senders,
                            &self.bells,
                            number,
                            (0..workers).map(|_| None),
                            None,
                            iface,
                        );
                        let _ = ingress.unset_worker(ifindex);
                        let _ = ingress.set_pod_sources(ifindex, None);
                        return Err(e.into());
                    }
                }
            }
            Changes::AfPacket(senders) => {
                let fanout = workers > 1;
                let ports = self
                    .in_netns(|| {
                        (0..workers).map(|_| PacketPort::open(iface, fanout)).collect::<io::Result<Vec<_>>>()
                    })
                    .map_err(io_error(format!("AF_PACKET sockets on {iface}")))?;
                // The workers see every frame: they check the sources.
                change_ports(senders, &self.bells, number, ports.into_iter().map(Some), sources, iface)?;
            }
        }
        if number == self.ports.len() {
            self.ports.push(None);
        }
        self.ports[number] = Some(Port { name: iface.to_owned(), ifindex, sources, xdp_mode });
        self.refresh_xdp_config()?;
        self.steer()?;
        Ok(Attached { port: number, xdp_mode })
    }

    /// Stops serving `iface`: the workers close its sockets, the XDP program leaves it (or the
    /// steering does). An interface already deleted (its pod's namespace went) is detached all
    /// the same. `false` if it was not served.
    pub fn detach(&mut self, iface: &str) -> Result<bool, DatapathError> {
        let Some(number) = self.port_of(iface) else { return Ok(false) };
        let Some(port) = self.ports[number].take() else { return Ok(false) };
        let workers = self.config.workers;
        match &self.changes {
            Changes::AfXdp(senders) => {
                change_ports(senders, &self.bells, number, (0..workers).map(|_| None), None, iface)?;
                if let Some(ingress) = &self.ingress {
                    let mut ingress = ingress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    ingress.detach(&port.name);
                    ingress.set_tx_port(port.ifindex, false)?;
                    ingress.unset_worker(port.ifindex)?;
                    ingress.set_pod_sources(port.ifindex, None)?;
                }
            }
            Changes::AfPacket(senders) => {
                change_ports(senders, &self.bells, number, (0..workers).map(|_| None), None, iface)?;
            }
        }
        self.refresh_xdp_config()?;
        self.steer()?;
        Ok(true)
    }

    /// The interfaces served with the mode the XDP program got on each (with AF_XDP).
    pub fn xdp_modes(&self) -> Vec<(String, XdpMode)> {
        self.ports.iter().flatten().filter_map(|p| Some((p.name.clone(), p.xdp_mode?))).collect()
    }

    /// The interfaces served, with their port numbers.
    pub fn ports(&self) -> Vec<(usize, String)> {
        self.ports.iter().enumerate().filter_map(|(n, p)| Some((n, p.as_ref()?.name.clone()))).collect()
    }

    /// The XDP program's settings: in tunnel routing, this node's underlay addresses and the
    /// tunnel's port (the other protocol's port off), so tunnel frames are decapsulated; which
    /// families' pod traffic out of the cluster is masqueraded; whether its decisions are
    /// sampled for observers (drops always are); the node's own addresses and host
    /// interfaces, whose traffic passes without a lookup (the first few of each).
    fn xdp_config(&self, overlay: Option<&Overlay>, node: &LocalNode, host: &[IpAddr]) -> XdpConfig {
        let mut config = XdpConfig {
            flags: if node.egress_masquerade_v4 { XdpConfig::MASQUERADE_V4 } else { 0 }
                | if node.egress_masquerade_v6 { XdpConfig::MASQUERADE_V6 } else { 0 },
            trace_sample_every: if self.config.flow_events {
                XdpConfig::DEFAULT.trace_sample_every
            } else {
                0
            },
            ..XdpConfig::DEFAULT
        };
        if let Some(o) = overlay {
            let port = |p| if o.protocol == p { o.port } else { 0 };
            config.tunnel_v4 = o.local_v4.map_or([0; 4], |a| a.octets());
            config.tunnel_v6 = o.local_v6.map_or([0; 16], |a| a.octets());
            config.vxlan_port = port(TunnelProtocol::Vxlan);
            config.geneve_port = port(TunnelProtocol::Geneve);
        }
        let v4 = host.iter().filter_map(|a| match a {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        });
        let v6 = host.iter().filter_map(|a| match a {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        });
        // Never an index a pod's veth has (an uplink deleted unseen, its index given again).
        let ports = self.ports.iter().flatten();
        let pods: Vec<u32> = ports.clone().filter(|p| p.sources.is_some()).map(|p| p.ifindex).collect();
        let uplinks = ports.filter(|p| p.sources.is_none() && !pods.contains(&p.ifindex)).map(|p| p.ifindex);
        config.host_v4.iter_mut().zip(v4).for_each(|(slot, a)| *slot = a);
        config.host_v6.iter_mut().zip(v6).for_each(|(slot, a)| *slot = a);
        config.host_interfaces.iter_mut().zip(uplinks).for_each(|(slot, i)| *slot = i);
        config
    }

    /// Sets the XDP program's settings again for the current tables, after the interfaces
    /// served changed.
    fn refresh_xdp_config(&self) -> Result<(), DatapathError> {
        let Some(ingress) = &self.ingress else { return Ok(()) };
        let tables = self.shared.current();
        let host: Vec<IpAddr> = host_addresses(&tables.policy).collect();
        let config = self.xdp_config(tables.overlay.as_deref(), &tables.node, &host);
        ingress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).set_config(&config)?;
        Ok(())
    }

    fn port_of(&self, iface: &str) -> Option<usize> {
        self.ports.iter().position(|p| p.as_ref().is_some_and(|p| p.name == iface))
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
        handoff: &mut impl Iterator<Item = (Inbox, Vec<Peer>)>,
    ) -> Worker<P> {
        let mut engine = Engine::new(self.shared.current(), self.config.ct_capacity, self.config.timeouts);
        let index = u16::try_from(q).unwrap_or(u16::MAX);
        engine.set_partition(Partition { index, count: self.config.workers });
        let worker = Worker::new(engine, Vec::new()).with_batch(self.config.batch);
        match handoff.next() {
            Some((inbox, peers)) => worker.with_handoff(inbox, peers),
            None => worker,
        }
    }

    /// Runs `worker` on its thread; returns where its port changes go.
    fn spawn<P: PacketIo + Send + 'static>(
        &mut self,
        q: usize,
        worker: Worker<P>,
        table: Option<FlowTable>,
        observer: Sender<Event>,
        cores: &[usize],
    ) -> Result<Sender<PortChange<P>>, DatapathError> {
        let stats = Arc::new(Mutex::new(Stats::default()));
        self.stats.0.push(stats.clone());
        let (changes_tx, changes) = crossbeam_channel::unbounded();
        let bell = Arc::new(Bell::new().map_err(io_error("a worker's eventfd"))?);
        self.bells.push(bell.clone());
        let worker = if self.config.flow_events { worker.with_observer(observer) } else { worker };
        let thread = WorkerThread {
            worker: worker.with_bell(bell.clone()),
            bell,
            flows: NicFlows::new(table),
            stats,
            stop: self.stop.clone(),
            shared: self.shared.clone(),
            changes,
            core: (!cores.is_empty()).then(|| core_affinity::CoreId { id: cores[q % cores.len()] }),
            nice: self.config.worker_nice,
        };
        self.workers.push(std::thread::spawn(move || thread.run()));
        Ok(changes_tx)
    }

    /// Makes `tables` the workers' tables (from their next batch on) and steers the frontends'
    /// frames to them: into the XDP program's service map, or into the nftables steering.
    pub fn publish(&self, tables: Tables) -> Result<(), DatapathError> {
        let frontends: Vec<(IpAddr, u16, u8, FrontendKind)> =
            tables.services.iter().map(|(f, s)| (f.addr, f.port, f.protocol, s.config().kind)).collect();
        let host: Vec<IpAddr> = host_addresses(&tables.policy).collect();
        let endpoints = steered_endpoints(&tables.policy, &host);
        let denied: Vec<(IpAddr, u8, u32)> = tables
            .prefilter
            .entries()
            .into_iter()
            .map(|(net, rule)| (net.addr(), net.prefix_len(), rule))
            .collect();
        if self.ingress.is_none() {
            let mut steering = self.steering.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            steering.frontends = frontends.iter().map(|&(a, port, proto, _)| (a, proto, port)).collect();
            steering.backends = tables
                .services
                .iter()
                .flat_map(|(f, s)| s.backends().map(move |b| (b.addr, f.protocol, b.port)))
                .collect();
            steering.masquerade =
                [tables.node.masquerade_v4, tables.node.masquerade_v6].into_iter().flatten().collect();
            let with =
                |flag| endpoints.iter().filter(|(_, e)| e.flags & flag != 0).map(|(a, _)| *a).collect();
            steering.enforced = with(EndpointInfo::POLICY_ENFORCED);
            steering.host = with(EndpointInfo::HOST);
            steering.denied = tables.prefilter.entries().into_iter().map(|(net, _)| net).collect();
        }
        let changed = !Arc::ptr_eq(&self.shared.current().policy, &tables.policy);
        let ipcache = (changed && self.ingress.is_some()).then(|| {
            let entries = tables.policy.ipcache.entries().into_iter();
            entries.map(|(net, id)| (net.addr(), net.prefix_len(), id)).collect::<Vec<_>>()
        });
        let (overlay, node) = (tables.overlay.clone(), tables.node.clone());
        self.shared.publish(tables);
        self.bells.iter().for_each(|b| b.ring());
        match &self.ingress {
            Some(ingress) => {
                let mut ingress = ingress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // The node's ports that need more than the kernel: its NodePorts and frontends,
                // masquerading's, the tunnel's. Before the services: a new NodePort's first
                // frame finds its bit set.
                let served = frontends.iter().filter(|(addr, ..)| host.contains(addr));
                let snat = [ip::TCP, ip::UDP]
                    .into_iter()
                    .flat_map(|proto| SNAT_PORTS.map(move |port| (proto, port)));
                let tunnel = overlay.as_ref().map(|o| (ip::UDP, o.port));
                ingress.set_host_ports(
                    served.map(|&(_, port, proto, _)| (proto, port)).chain(snat).chain(tunnel),
                )?;
                ingress.set_services(&frontends)?;
                ingress.set_endpoints(&endpoints)?;
                ingress.set_deny_list(&denied)?;
                if let Some(ipcache) = ipcache {
                    ingress.set_ipcache(&ipcache)?;
                }
                let remote = overlay.as_ref().map(|o| o.remote.entries()).unwrap_or_default();
                let mut nodes: Vec<IpAddr> = remote.iter().map(|&(_, node)| node).collect();
                nodes.sort_unstable();
                nodes.dedup();
                let pods: Vec<(IpAddr, u8)> =
                    remote.iter().map(|(net, _)| (net.addr(), net.prefix_len())).collect();
                ingress.set_overlay(&nodes, &pods)?;
                let cluster: Vec<(IpAddr, u8)> =
                    node.cluster_prefixes.iter().map(|net| (net.addr(), net.prefix_len())).collect();
                ingress.set_cluster(&cluster)?;
                ingress.set_config(&self.xdp_config(overlay.as_deref(), &node, &host))?;
            }
            None => self.steer()?,
        }
        Ok(())
    }

    /// Applies the AF_PACKET steering over the interfaces served now (nothing to do with
    /// AF_XDP, whose program steers).
    fn steer(&self) -> Result<(), DatapathError> {
        if self.ingress.is_some() {
            return Ok(());
        }
        let mut guard = self.steering.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let steering: &mut Steering = &mut guard;
        let served: Vec<String> = self.ports().into_iter().map(|(_, name)| name).collect();
        let pods: Vec<(String, PodSources)> =
            self.ports.iter().flatten().filter_map(|p| Some((p.name.clone(), p.sources?))).collect();
        self.in_netns(|| {
            // A pod's veth can go before its DEL comes (its namespace was deleted): nftables
            // refuses a ruleset naming a device that does not exist.
            steering.interfaces = served.into_iter().filter(|name| ifindex(name).is_ok()).collect();
            steering.sources =
                pods.into_iter().filter(|(name, _)| steering.interfaces.contains(name)).collect();
            // No interface yet (the datapath is starting): nothing to steer.
            if steering.interfaces.is_empty() { Steering::remove() } else { steering.apply() }
        })
        .map_err(io_error("steering frames to the workers"))
    }

    /// The mode XDP was attached in, with AF_XDP.
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        self.xdp_mode
    }

    /// The flows adopted from an earlier agent at start.
    pub fn adopted(&self) -> Adopted {
        self.adopted
    }

    /// The workers' counters, summed (as of their last publication: at most a moment old).
    pub fn stats(&self) -> Stats {
        self.stats.total()
    }

    /// Packets of tracked flows by where the XDP program sent them (forwarded at the NIC, or
    /// to a worker and why), with AF_XDP.
    pub fn flow_paths(&self) -> Result<Vec<(FlowPath, Counter)>, DatapathError> {
        let Some(ingress) = &self.ingress else { return Ok(Vec::new()) };
        Ok(ingress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).flow_paths()?)
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

/// Sends each worker its part of a port change (`ports`: one per worker, in order) and waits
/// until all have made it.
/// A pod's addresses as the source check holds them (`None`: no address, no check).
fn pod_sources(addresses: &[IpAddr]) -> Option<PodSources> {
    let mut sources = PodSources::default();
    for a in addresses {
        match a {
            IpAddr::V4(a) => sources.v4 = a.octets(),
            IpAddr::V6(a) => sources.v6 = a.octets(),
        }
    }
    (!addresses.is_empty()).then_some(sources)
}

/// The endpoints whose frames the workers must see (pods under policy), and the node's own
/// addresses (frames to them stay the kernel's).
fn steered_endpoints(policy: &Policy, host: &[IpAddr]) -> Vec<(IpAddr, EndpointInfo)> {
    let pods = policy.endpoints.iter().filter(|(_, e)| e.enforced()).map(|(addr, e)| {
        (*addr, EndpointInfo { identity: e.identity, flags: EndpointInfo::POLICY_ENFORCED })
    });
    let host =
        host.iter().map(|&addr| (addr, EndpointInfo { identity: Identity::HOST, flags: EndpointInfo::HOST }));
    pods.chain(host).collect()
}

/// The node's own addresses (the host identity's whole-address entries of the ipcache).
fn host_addresses(policy: &Policy) -> impl Iterator<Item = IpAddr> {
    let entries = policy.ipcache.entries().into_iter();
    entries
        .filter(|(net, id)| *id == Identity::HOST && net.prefix_len() == net.max_prefix_len())
        .map(|(net, _)| net.addr())
}

fn change_ports<P: Send + 'static>(
    senders: &[Sender<PortChange<P>>],
    bells: &[Arc<Bell>],
    number: usize,
    ports: impl Iterator<Item = Option<P>>,
    sources: Option<PodSources>,
    iface: &str,
) -> Result<(), DatapathError> {
    let (done_tx, done) = crossbeam_channel::bounded(senders.len());
    for ((sender, bell), port) in senders.iter().zip(bells).zip(ports) {
        let change = PortChange { number, port, sources, done: done_tx.clone() };
        sender.send(change).map_err(|_| io_error(iface)(io::Error::other("a worker has stopped")))?;
        bell.ring();
    }
    let mut old = Vec::new();
    for _ in senders {
        let port = done.recv_timeout(CHANGE_TIMEOUT).map_err(|_| {
            io_error(iface)(io::Error::new(io::ErrorKind::TimedOut, "a worker did not make the port change"))
        })?;
        old.extend(port);
    }
    close_aside(old);
    Ok(())
}

/// Closes ports no worker serves any more, on a thread of their own: closing an AF_XDP or
/// packet socket waits for an RCU grace period (`synchronize_net`), 5–13 ms measured, which
/// neither a worker (its other ports' traffic) nor the caller (a CNI DEL) should wait for.
fn close_aside<P: Send + 'static>(ports: Vec<P>) {
    if !ports.is_empty() {
        // Should the thread not start, the ports it was given are closed here instead.
        let _ = std::thread::Builder::new().name("skiff-close".into()).spawn(move || drop(ports));
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.halt();
    }
}
