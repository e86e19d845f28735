//! A worker: its ports (one per interface, any [`PacketIo`] backend), one engine, and where
//! each destination goes.
//!
//! [`Worker::poll`] receives a batch on every port, runs each frame through the engine, writes
//! the MACs of the frame's next hop (its destination after NAT, or for a pod on another node
//! the node, the frame then encapsulated) and queues it on that neighbour's port; each port then transmits its batch at once. Frames of flows another
//! worker owns go to it ([`crate::handoff`]). Frames are staged in a
//! preallocated arena between receive and transmit (a port cannot send while another is lent
//! out to receive), so nothing allocates per packet. Only exceptions (frames the engine leaves
//! to the kernel when the kernel has no copy) leave the hot path, through a bounded channel to
//! the slow path.

use std::{sync::Arc, time::Duration};

use crossbeam_channel::Sender;
use skiff_common::{
    DropReason,
    conntrack::{CtEntry, CtKey},
    endpoint::PodSources,
    identity::Identity,
    lb::BackendId,
    meta::XdpMeta,
    tunnel::claimed_identity,
};
use skiff_wire::layers;

use skiff_engine::{
    conntrack::{Census, Entry},
    engine::{Action, Engine, NewFlow},
    event::{Event, EventKind},
    flow::Tuple,
    offload::{self, Placement},
    reply,
    tables::{SharedTables, Tables},
    tunnel::{self, Encap},
};

use crate::{
    handoff::{Inbox, Peer},
    io::{BATCH, Bell, FRAME_ROOM, PacketIo, Readiness},
};

/// What hears of a worker's flows: the XDP program's flow table (with AF_XDP). `()` hears
/// nothing and offloads nothing.
pub trait Flows {
    /// A flow started, before its first packet leaves: its replies must reach the worker.
    /// `false` when the flow table had no room to steer them.
    fn started(&mut self, flow: &NewFlow) -> bool;
    /// A flow ended (expired, evicted or replaced by a new connection): its entries go.
    /// Returns what the NIC forwarded of it (packets, bytes).
    fn ended(&mut self, flow: &Entry) -> (u64, u64);
    /// Installs both directions of an established flow at the NIC, which forwards them from
    /// then on; `false` when it could not (a full table): the flow stays on the worker path.
    fn offload(&mut self, directions: &[(CtKey, CtEntry); 2]) -> bool;
    /// Takes an offloaded flow back (closing, its backend or next hop gone).
    fn take_back(&mut self, flow: &Entry);
    /// When (the worker's clock, seconds) the NIC last forwarded a packet of an offloaded
    /// flow, if it has.
    fn nic_last_seen(&mut self, flow: &Entry) -> Option<u64>;
}

impl Flows for () {
    fn started(&mut self, _: &NewFlow) -> bool {
        true
    }
    fn ended(&mut self, _: &Entry) -> (u64, u64) {
        (0, 0)
    }
    fn offload(&mut self, _: &[(CtKey, CtEntry); 2]) -> bool {
        false
    }
    fn take_back(&mut self, _: &Entry) {}
    fn nic_last_seen(&mut self, _: &Entry) -> Option<u64> {
        None
    }
}

/// What a worker did, for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub forwarded: u64,
    pub forwarded_bytes: u64,
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
    /// Frames of flows another worker owns, handed to it.
    pub handed_off: u64,
    /// New flows translated to a service's backend (DNAT).
    pub service_flows: u64,
    /// Flows handed to the NIC's flow table, and taken back.
    pub offloaded: u64,
    pub taken_back: u64,
    /// Flows the NIC's flow table had no room for: an established flow stays on the worker
    /// path; a new flow's replies are not steered to the worker (they pass to the kernel).
    pub flow_table_full: u64,
    /// Flow events observers did not get (a full buffer or channel).
    pub events_lost: u64,
    /// The flows tracked now.
    pub census: Census,
    /// Of the last second, the part spent at work, in thousandths (the worker's thread
    /// measures it).
    pub busy_permille: u16,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            received: 0,
            forwarded: 0,
            forwarded_bytes: 0,
            replied: 0,
            dropped: 0,
            drops: [0; DropReason::COUNT],
            not_ours: 0,
            exceptions: 0,
            handed_off: 0,
            service_flows: 0,
            offloaded: 0,
            taken_back: 0,
            flow_table_full: 0,
            events_lost: 0,
            census: Census::default(),
            busy_permille: 0,
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
        self.forwarded_bytes += o.forwarded_bytes;
        self.replied += o.replied;
        self.dropped += o.dropped;
        self.not_ours += o.not_ours;
        self.exceptions += o.exceptions;
        self.handed_off += o.handed_off;
        self.service_flows += o.service_flows;
        self.offloaded += o.offloaded;
        self.taken_back += o.taken_back;
        self.flow_table_full += o.flow_table_full;
        self.events_lost += o.events_lost;
        self.census.add(&o.census);
        self.busy_permille = self.busy_permille.max(o.busy_permille);
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }
}

/// Conntrack slots examined for expiry per round: a full sweep of 512k slots every 8k rounds,
/// never a pause.
const GC_PER_ROUND: usize = 64;

pub struct Worker<P: PacketIo> {
    /// By port number (a next hop's `port`); `None` where a port was removed.
    ports: Vec<Option<P>>,
    /// By port number: the addresses the pod behind a port may send from, where the worker
    /// checks them (with AF_PACKET; the XDP program does with AF_XDP).
    sources: Vec<Option<PodSources>>,
    /// What `poll` waits on: the ports' descriptors, the inbox's and the bell's.
    ready: Readiness,
    /// Frames per receive batch.
    batch: usize,
    /// The port a round starts receiving from: each in turn, so that with more ports than a
    /// round has room for, every port is served.
    first: usize,
    /// Frames other workers handed over, with several workers.
    inbox: Option<Inbox>,
    /// Rung when the worker's thread has something for it (see [`Worker::with_bell`]).
    bell: Option<Arc<Bell>>,
    /// Time spent waiting for frames (kept apart from `stats`: it changes at every wait, and
    /// a change of counts is published).
    pub idle: Duration,
    core: Core,
    pub stats: Stats,
}

/// Frames one round receives from the ports, at most: with many ports (one per pod), the
/// staging arena stays this size instead of growing with them.
pub const ROUND: usize = 4 * BATCH;

/// What a frame meets between receive and transmit: the engine, and where its output goes.
struct Core {
    engine: Engine,
    /// Where frames the kernel never saw go when the engine passes them (the slow path);
    /// `None` when the ports leave the kernel a copy.
    exceptions: Option<Sender<Vec<u8>>>,
    /// Where flow events go, when observed.
    observer: Option<Sender<Event>>,
    /// The other workers, by index, for frames of flows they own.
    peers: Vec<Peer>,
    arena: Vec<u8>,
    staged: Vec<(usize, usize)>,
}

impl<P: PacketIo> Worker<P> {
    /// A worker over `ports`, numbered from 0 in order.
    pub fn new(mut engine: Engine, ports: Vec<P>) -> Worker<P> {
        // Unobserved: nothing is recorded.
        engine.events().on = false;
        // A round from the ports and a batch from the inbox.
        let room = ROUND + BATCH;
        let mut worker = Worker {
            sources: vec![None; ports.len()],
            ports: ports.into_iter().map(Some).collect(),
            ready: Readiness::default(),
            batch: BATCH,
            first: 0,
            inbox: None,
            bell: None,
            idle: Duration::ZERO,
            core: Core {
                engine,
                exceptions: None,
                observer: None,
                peers: Vec::new(),
                arena: vec![0; room * FRAME_ROOM],
                staged: Vec::with_capacity(room),
            },
            stats: Stats::default(),
        };
        worker.ports_changed();
        worker
    }

    /// Serves `port` as port number `number` from the next round on, its frames only from
    /// `sources` when given; gives back the one there was (to be closed).
    pub fn insert_port(&mut self, number: usize, port: P, sources: Option<PodSources>) -> Option<P> {
        if self.ports.len() <= number {
            self.ports.resize_with(number + 1, || None);
            self.sources.resize(number + 1, None);
        }
        self.sources[number] = sources;
        let old = self.ports[number].replace(port);
        self.ports_changed();
        old
    }

    /// Stops serving port `number` and gives it back (to be closed).
    pub fn remove_port(&mut self, number: usize) -> Option<P> {
        let port = self.ports.get_mut(number).and_then(Option::take);
        while self.ports.last().is_some_and(Option::is_none) {
            self.ports.pop();
        }
        self.sources.truncate(self.ports.len());
        self.ports_changed();
        port
    }

    fn ports_changed(&mut self) {
        let inbox = self.inbox.as_ref().map(Inbox::fd);
        let bell = self.bell.as_deref().map(Bell::fd);
        self.ready =
            Readiness::new(self.ports.iter().flatten().filter_map(PacketIo::fd).chain(inbox).chain(bell));
    }

    /// Frames per receive batch (at most [`BATCH`]).
    pub fn with_batch(mut self, batch: usize) -> Worker<P> {
        self.batch = batch.clamp(1, BATCH);
        self
    }

    /// Hands passed frames to the slow path through `exceptions` (for ports whose frames the
    /// kernel never sees).
    pub fn with_exceptions(mut self, exceptions: Sender<Vec<u8>>) -> Worker<P> {
        self.core.exceptions = Some(exceptions);
        self
    }

    /// Tells `observer` what the worker decides ([`Event`]s, passed on once per round; lost
    /// and counted when it lags).
    pub fn with_observer(mut self, observer: Sender<Event>) -> Worker<P> {
        self.core.engine.events().on = true;
        self.core.observer = Some(observer);
        self
    }

    /// Wakes from waiting for frames when `bell` rings: whoever rings it (a port change, new
    /// tables) need not wait out a sleep.
    pub fn with_bell(mut self, bell: Arc<Bell>) -> Worker<P> {
        self.bell = Some(bell);
        self.ports_changed();
        self
    }

    /// Exchanges frames of each other's flows with the other workers (see [`crate::handoff`]).
    pub fn with_handoff(mut self, inbox: Inbox, peers: Vec<Peer>) -> Worker<P> {
        self.inbox = Some(inbox);
        self.core.peers = peers;
        self.ports_changed();
        self
    }

    pub fn engine(&mut self) -> &mut Engine {
        &mut self.core.engine
    }

    /// Takes the newest published tables, if they changed; then every flow forwarded at the
    /// NIC is checked against them (its backend may be gone, its next hop moved).
    pub fn refresh(&mut self, shared: &SharedTables, flows: &mut impl Flows) {
        let Worker { ports, core, stats, .. } = self;
        if core.engine.refresh(shared) {
            core.engine.recheck_offloaded(|e, tables| place(e, tables, ports, flows, stats));
        }
    }

    /// Port `number`, if the worker serves one under that number.
    pub fn port_mut(&mut self, number: usize) -> Option<&mut P> {
        self.ports.get_mut(number).and_then(Option::as_mut)
    }

    /// The ports, in number order.
    pub fn ports_mut(&mut self) -> impl Iterator<Item = &mut P> {
        self.ports.iter_mut().flatten()
    }

    /// One round: every port's waiting frames (and those handed over) through the engine and
    /// out, and a bounded step of conntrack expiry. When no frame waits, first sleeps up to
    /// `timeout_ms` until one does. `now` is the clock conntrack expires flows by (seconds).
    /// `flows` hears of each new flow before any of its packets is sent, of each flow removed,
    /// and takes established flows to the NIC and back. Returns frames received.
    pub fn poll(&mut self, timeout_ms: i32, now: u64, flows: &mut impl Flows) -> usize {
        let mut received = self.receive(now);
        if received == 0 && timeout_ms != 0 {
            // Only while idle: the clock costs nothing then.
            let waiting = crate::datapath::monotonic();
            let ready = self.ready.wait(timeout_ms).unwrap_or(false);
            let waited = crate::datapath::monotonic().saturating_sub(waiting);
            self.idle += waited;
            if ready {
                received = self.receive(now);
            }
        }
        let engine = &mut self.core.engine;
        // Ended before started: a new flow may take over a finished one's reply tuple.
        engine.conntrack().gc_step(now, GC_PER_ROUND, |e| flows.nic_last_seen(e));
        engine.drain_ended(|e| flows.ended(e));
        let Worker { ports, core, stats, .. } = self;
        core.engine.drain_new_flows(|f| {
            stats.service_flows += u64::from(f.backend != BackendId::NONE);
            stats.flow_table_full += u64::from(!flows.started(f));
        });
        core.engine.drain_nic_changes(|e, tables| place(e, tables, ports, flows, stats));
        for (slot, &(port, len)) in core.staged.iter().enumerate() {
            let frame = &core.arena[slot * FRAME_ROOM..slot * FRAME_ROOM + len];
            match ports.get_mut(port).and_then(Option::as_mut).map(|p| p.send(frame)) {
                Some(Ok(())) => {
                    stats.forwarded += 1;
                    stats.forwarded_bytes += len as u64;
                }
                Some(Err(_)) => stats.count_drop(DropReason::NoTxSpace),
                // Its port was removed after the frame's next hop was published.
                None => stats.count_drop(DropReason::Unroutable),
            }
        }
        for port in ports.iter_mut().flatten() {
            if port.flush().is_err() {
                // Frames the ring had no room for; the count is not reported per frame.
                stats.count_drop(DropReason::NoTxSpace);
            }
        }
        core.tell_observer(stats);
        stats.census = core.engine.conntrack().census();
        received
    }

    /// Receives a batch per port (a round's worth at most, from each port in turn) and one
    /// from the inbox, and stages what goes out.
    fn receive(&mut self, now: u64) -> usize {
        let Worker { ports, sources, batch, first, inbox, core, stats, .. } = self;
        core.staged.clear();
        let mut received = 0;
        let count = ports.len();
        for k in 0..count {
            let room = ROUND - received;
            if room == 0 {
                // The rest start the next round.
                *first = (*first + k) % count;
                break;
            }
            let number = (*first + k) % count;
            let Some(port) = ports[number].as_mut() else { continue };
            let own = sources.get(number).copied().flatten();
            received += port
                .recv((*batch).min(room), |frame, meta| {
                    stats.received += 1;
                    if let Some(own) = &own
                        && !from_own(frame, own)
                    {
                        return core.dropped(frame, DropReason::SpoofedSource, stats);
                    }
                    let tunnel = meta.as_ref().and_then(tunnel_identity);
                    let action = match tunnel {
                        Some(identity) => core.engine.process_tunnelled(frame, now, identity),
                        None => core.engine.process(frame, now),
                    };
                    core.stage(frame, action, tunnel, stats);
                })
                .unwrap_or(0);
        }
        for peer in &mut core.peers {
            peer.ring();
        }
        if let Some(inbox) = inbox {
            received += inbox.drain(*batch, |frame, tunnel| {
                let action = core.engine.process_handed(frame, now, tunnel);
                core.stage(frame, action, tunnel, stats);
            });
        }
        received
    }
}

impl Core {
    /// Passes the round's events on, stamped with the time.
    fn tell_observer(&mut self, stats: &mut Stats) {
        let Some(observer) = &self.observer else { return };
        let mut at_ns = 0;
        stats.events_lost += self.engine.events().drain(|mut e| {
            if at_ns == 0 {
                at_ns = u64::try_from(crate::datapath::monotonic().as_nanos()).unwrap_or(u64::MAX);
            }
            e.at_ns = at_ns;
            stats.events_lost += u64::from(observer.try_send(e).is_err());
        });
    }

    /// Counts a drop of `frame` and records it for observers.
    fn dropped(&mut self, frame: &[u8], reason: DropReason, stats: &mut Stats) {
        stats.count_drop(reason);
        self.record(frame, EventKind::Dropped(reason));
    }

    /// Records what became of an IP `frame` for observers (a frame of another protocol is
    /// counted only).
    fn record(&mut self, frame: &[u8], kind: EventKind) {
        let events = self.engine.events();
        if events.on
            && let Some(k) = layers::parse(frame).ok().and_then(|p| p.flow(frame))
        {
            let tuple = Tuple::new(k.src, k.dst, k.protocol.0, k.src_port, k.dst_port);
            events.push(Event::of(kind, tuple));
        }
    }

    /// Acts on the engine's action for `frame`: stages it for transmit to its next hop, hands
    /// it to its owner (with `tunnel`, the identity its tunnel carried) or to the slow path,
    /// or counts its drop.
    fn stage(&mut self, frame: &mut [u8], action: Action, tunnel: Option<Identity>, stats: &mut Stats) {
        let frame = match action {
            Action::Forward => frame,
            Action::Reply { len } => {
                stats.replied += 1;
                &mut frame[..usize::from(len)]
            }
            Action::Handoff { worker } => {
                let sent =
                    self.peers.get_mut(usize::from(worker)).is_some_and(|peer| peer.send(frame, tunnel));
                if sent {
                    stats.handed_off += 1;
                } else {
                    self.dropped(frame, DropReason::HandoffBusy, stats);
                }
                return;
            }
            Action::Pass => {
                stats.not_ours += 1;
                if let Some(slow) = &self.exceptions {
                    // Off the hot path: a copy for the slow path, dropped if it lags.
                    match slow.try_send(frame.to_vec()) {
                        Ok(()) => {
                            stats.exceptions += 1;
                            self.record(frame, EventKind::ToSlowPath);
                        }
                        Err(_) => self.dropped(frame, DropReason::SlowPathBusy, stats),
                    }
                }
                return;
            }
            Action::Drop(reason) => {
                self.dropped(frame, reason, stats);
                return;
            }
        };
        self.route(frame, stats);
    }

    /// Stages a frame for its next hop: its destination's, or for a pod on another node the
    /// node's, the frame then encapsulated (or, too big for the tunnel, answered).
    fn route(&mut self, frame: &mut [u8], stats: &mut Stats) {
        let parsed = layers::parse(frame).ok();
        let Some((src, dst)) = parsed.as_ref().and_then(|p| p.addrs(frame)) else {
            stats.count_drop(DropReason::Unroutable);
            return;
        };
        let tables = self.engine.tables();
        // A pod on another node: through the tunnel to its node.
        let tunnel = tables.overlay.as_deref().and_then(|o| Some((o, o.remote_node(dst)?)));
        let Some(n) = tables.next_hop(tunnel.map_or(dst, |(_, node)| node)) else {
            stats.count_drop(DropReason::Unroutable);
            return;
        };
        // Too big for the tunnel: the sender's path MTU discovery learns the path's MTU.
        if let (Some((overlay, node)), Some(p)) = (tunnel, &parsed) {
            let path_mtu = overlay.path_mtu(node);
            if frame.len().saturating_sub(p.l3_offset) > path_mtu {
                let from = overlay.local(dst).unwrap_or(dst);
                let mtu = u16::try_from(path_mtu).unwrap_or(u16::MAX);
                return match reply::too_big(frame, p, from, mtu).and_then(|len| u16::try_from(len).ok()) {
                    Some(len) => {
                        self.stage(&mut frame[..usize::from(len)], Action::Reply { len }, None, stats)
                    }
                    None => stats.count_drop(DropReason::MtuExceeded),
                };
            }
        }
        // Inside a tunnel too the frame is addressed as the outer one: a Linux vxlan device
        // whose address is its uplink's takes it.
        frame[..6].copy_from_slice(&n.dst_mac);
        frame[6..12].copy_from_slice(&n.src_mac);
        let slot = self.staged.len();
        let Some(out) = self.arena.get_mut(slot * FRAME_ROOM..(slot + 1) * FRAME_ROOM) else {
            return stats.count_drop(DropReason::NoTxSpace);
        };
        let len = match (tunnel, &parsed) {
            (Some((overlay, node)), Some(p)) => {
                let to = Encap {
                    node,
                    src_mac: n.src_mac,
                    dst_mac: n.dst_mac,
                    identity: tables.policy.ipcache.lookup(src),
                    flow_hash: tunnel::flow_hash(frame, p),
                };
                overlay.encapsulate(out, frame, &to)
            }
            _ => out.get_mut(..frame.len()).map(|out| {
                out.copy_from_slice(frame);
                frame.len()
            }),
        };
        match len {
            Some(len) => self.staged.push((n.port, len)),
            None => stats.count_drop(DropReason::MtuExceeded),
        }
    }
}

/// Puts a flow where it belongs now: both directions forwarded at the NIC when it is
/// established and both have a next hop the XDP program can send out of, back on the worker
/// path when it closes or its backend is gone; a flow whose next hops are not known yet stays
/// where it is. A flow whose entries at the NIC would not change is not written again. Returns
/// where it is, as [`Entry::nic`] says it.
fn place<P: PacketIo>(
    e: &Entry,
    tables: &Tables,
    ports: &[Option<P>],
    flows: &mut impl Flows,
    stats: &mut Stats,
) -> Option<u64> {
    let ifindex = |port: usize| ports.get(port).and_then(Option::as_ref).and_then(PacketIo::ifindex);
    let nic = match offload::placement(e, tables, ifindex) {
        Placement::Nic(directions) => {
            let digest = offload::digest(&directions);
            let done = e.nic == Some(digest) || flows.offload(&directions);
            if !e.offloaded() {
                stats.offloaded += u64::from(done);
                stats.flow_table_full += u64::from(!done);
            }
            done.then_some(digest)
        }
        Placement::Unknown => e.nic,
        Placement::Worker => None,
    };
    if e.offloaded() && nic.is_none() {
        flows.take_back(e);
        stats.taken_back += 1;
    }
    nic
}

/// The sender's identity a decapsulated frame's tunnel carried.
fn tunnel_identity(meta: &XdpMeta) -> Option<Identity> {
    (meta.flags & XdpMeta::DECAPSULATED != 0).then(|| claimed_identity(meta.vni, meta.src_identity))
}

/// Whether a frame from a pod's port comes from one of the pod's addresses (frames that are
/// not IP, and IPv6 neighbour discovery, do).
fn from_own(frame: &[u8], own: &PodSources) -> bool {
    let Some((src, _)) = layers::parse(frame).ok().and_then(|p| p.addrs(frame)) else { return true };
    match src {
        std::net::IpAddr::V4(a) => a.octets() == own.v4,
        std::net::IpAddr::V6(a) => a.octets() == own.v6 || PodSources::neighbour_discovery_v6(&a.octets()),
    }
}
