//! The packet engine: what a worker does with one frame, with no I/O and no allocation.
//!
//! A frame goes through four stages. **Parse**: its headers, the flow tuple and TCP flags.
//! **Track**: a packet of a known flow follows the flow, whatever the service's backends have
//! become; replies get the frontend back as their source (reverse NAT), and ICMP errors about
//! the flow are translated like it. **Balance**: a packet to a service frontend starts a flow,
//! and a backend is picked (Maglev over the flow's hash or at random, or remembered for the
//! client by session affinity, within the traffic policy); a service without backends is
//! refused (TCP RST, ICMP unreachable). **Translate**: the flow is tracked with its post-NAT
//! reply tuple and the destination rewritten to the backend (DNAT; the source too when
//! masquerading). **Policy** decides every new flow of an endpoint under network policy, after
//! translation (the backend is the peer): a denied flow's first packet is dropped, an allowed
//! one is tracked like a service flow (without translation when it is not one), so the
//! verdict holds for the flow's life and its replies. **Overlay**: in tunnel routing, a frame
//! between a pod here and a pod on another node is tracked and forwarded as it is (the worker
//! encapsulates it). **Masquerade**: a pod's new flow out of the cluster leaves with the
//! node's address and a free port, as a NodePort's to a remote backend does. With several workers, a frame of a flow
//! another worker owns is handed to it. Every forwarded packet's TTL drops by one. Anything
//! else passes to the kernel.

mod icmp_error;
mod partition;

use std::{net::IpAddr, sync::Arc};

use hashbrown::HashMap;

use skiff_common::{
    DropReason,
    identity::Identity,
    lb::{BackendId, FrontendKind},
};
use skiff_wire::{
    icmp,
    layers::{self, Fragment, L3, L4, Parsed},
    tcp::TcpFlags,
};

pub use self::partition::{Partition, SNAT_PORTS};
use crate::{
    conntrack::{Conntrack, Entry, InsertError, Timeouts},
    event::{Event, EventKind, Events},
    flow::{Direction, Tuple, masqueraded, unmap},
    hash::{hash64, mix64},
    lb::Backend,
    offload,
    policy::{Policy, Verdict},
    reply,
    tables::{Frontend, Service, SharedTables, Tables},
};

/// New flows remembered between two drains (a receive batch holds at most 64 frames).
const NEW_FLOWS_PER_BATCH: usize = 256;
/// Flows whose place at the NIC changes, remembered between two drains (a round holds at most
/// 320 frames); past it a flow simply stays where it is forwarded now.
const NIC_CHANGES_PER_BATCH: usize = 512;

/// A flow an engine started: as the client sent it, as its replies will come, and its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewFlow {
    pub original: Tuple,
    pub reply: Tuple,
    pub backend: BackendId,
}

/// What to do with a frame after [`Engine::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Rewritten: send it towards its (new) destination address, a backend or the client of a
    /// reply. (Carrying the address here cost a piecewise copy of a 17-byte `IpAddr` on every
    /// packet; the I/O layer reads it from the frame.)
    Forward,
    /// Rewritten into an answer to its sender (a TCP RST, an ICMP unreachable), `len` bytes
    /// long: send it back.
    Reply {
        len: u16,
    },
    /// Not the engine's: hand it to the kernel.
    Pass,
    /// A flow another worker owns (see [`Partition`]): hand the frame, untouched, to that one.
    Handoff {
        worker: u16,
    },
    Drop(DropReason),
}

/// One worker's engine: the shared tables and its own state.
pub struct Engine {
    tables: Arc<Tables>,
    own: Own,
}

/// What belongs to one worker alone (no lock on the packet path): split from the tables so a
/// stage can read a service while it updates the worker's state.
struct Own {
    conntrack: Conntrack,
    partition: Partition,
    /// Flows started since the last [`Engine::drain_new_flows`]: the XDP program must learn
    /// their reply tuples to steer the replies to the worker.
    new_flows: Vec<NewFlow>,
    /// Flows that became [`offload::eligible`] for the NIC, or stopped being, since the last
    /// [`Engine::drain_nic_changes`].
    nic_changes: Vec<u32>,
    /// What observers hear of since the last drain (`Engine::events`).
    events: Events,
    /// Session affinity: (frontend, client) → (backend, seconds of the last new flow).
    affinity: HashMap<(Frontend, IpAddr), (BackendId, u64)>,
    /// State of the random draws (`Algorithm::Random`).
    random: u64,
}

/// A parsed IP packet as the later stages need it.
struct Packet {
    tuple: Tuple,
    tcp_flags: u8,
    /// From the IP header on.
    len: usize,
    v6: bool,
}

/// Where a new flow goes: a service's backend, or its own destination.
struct Decision {
    to: (IpAddr, u16),
    backend: BackendId,
    /// The node address the flow leaves from, when it is masqueraded.
    masquerade: Option<IpAddr>,
    flow_hash: u64,
}

impl Engine {
    pub fn new(tables: Arc<Tables>, ct_capacity: usize, timeouts: Timeouts) -> Engine {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()));
        Engine {
            tables,
            own: Own {
                conntrack: Conntrack::new(ct_capacity, timeouts),
                partition: Partition::default(),
                new_flows: Vec::with_capacity(NEW_FLOWS_PER_BATCH),
                nic_changes: Vec::with_capacity(NIC_CHANGES_PER_BATCH),
                events: Events::default(),
                // As many clients as flows; preallocated so the packet path does not allocate.
                affinity: HashMap::with_capacity(ct_capacity),
                random: seed,
            },
        }
    }

    /// Makes this engine worker `index` of `count`.
    pub fn set_partition(&mut self, partition: Partition) {
        self.own.partition = partition;
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Installs new tables; tracked flows keep their backends.
    pub fn set_tables(&mut self, tables: Arc<Tables>) {
        self.tables = tables;
    }

    /// Takes the newest published tables, if they changed (returns whether): a worker calls
    /// this between batches.
    pub fn refresh(&mut self, shared: &SharedTables) -> bool {
        shared.refresh(&mut self.tables)
    }

    pub fn conntrack(&mut self) -> &mut Conntrack {
        &mut self.own.conntrack
    }

    /// Hands each flow started since the last call to `f` (the worker mirrors their reply
    /// tuples into the XDP program's tracked flows, before their first packet leaves).
    pub fn drain_new_flows(&mut self, mut f: impl FnMut(&NewFlow)) {
        for t in self.own.new_flows.drain(..) {
            f(&t);
        }
    }

    /// What observers hear of: the engine's records since the last drain, to which the
    /// worker adds its own (drops after the engine).
    pub fn events(&mut self) -> &mut Events {
        &mut self.own.events
    }

    /// Hands each flow that ended since the last call to `f`, which returns what the NIC
    /// forwarded of it (packets, bytes); observers hear of it with its whole counts.
    pub fn drain_ended(&mut self, mut f: impl FnMut(&Entry) -> (u64, u64)) {
        let Own { conntrack, events, .. } = &mut self.own;
        conntrack.drain_ended(|e| {
            let (packets, bytes) = f(e);
            events.push(Event {
                translated: e.reply.reversed(),
                backend: e.backend,
                packets: e.packets[0] + e.packets[1] + packets,
                bytes: e.bytes[0] + e.bytes[1] + bytes,
                ..Event::of(EventKind::Ended, e.original)
            });
        });
    }

    /// Hands each flow that became [`offload::eligible`] for the NIC, or stopped being (a
    /// connection closing), since the last call to `f` with the tables; `f` returns whether
    /// the flow is forwarded at the NIC from now on, as [`Entry::nic`] says it.
    pub fn drain_nic_changes(&mut self, mut f: impl FnMut(&Entry, &Tables) -> Option<u64>) {
        let Own { conntrack, nic_changes, .. } = &mut self.own;
        for id in nic_changes.drain(..) {
            if let Some(e) = conntrack.get(id) {
                let nic = f(e, &self.tables);
                conntrack.set_nic(id, nic);
            }
        }
    }

    /// Asks `f` of every flow forwarded at the NIC where it is now (after new tables: its
    /// backend or next hop may be gone or moved), as [`Entry::nic`] says it.
    pub fn recheck_offloaded(&mut self, mut f: impl FnMut(&Entry, &Tables) -> Option<u64>) {
        let tables = &self.tables;
        self.own.conntrack.recheck_offloaded(|e| f(e, tables));
    }

    /// Tracks a flow found in the XDP program's flow table after a restart, if this worker owns
    /// it (as it would own its packets); returns whether it does. A TCP flow is taken as
    /// established, as one picked up mid-stream is.
    pub fn adopt(&mut self, flow: &offload::Pinned, now: u64) -> bool {
        let to_frontend = flow.backend != BackendId::NONE;
        let untranslated = !to_frontend && !masqueraded(&flow.original, &flow.reply);
        if self.own.owner_elsewhere(&self.tables, &flow.original, to_frontend, untranslated).is_some() {
            return false;
        }
        let conntrack = &mut self.own.conntrack;
        let Ok(id) = conntrack.insert(flow.original, flow.reply, TcpFlags::ACK.0, flow.backend, now) else {
            return false;
        };
        let seen =
            if flow.offloaded && flow.last_seen_ns != 0 { flow.last_seen_ns / 1_000_000_000 } else { now };
        conntrack.restore(id, flow.offloaded, seen);
        true
    }

    /// Processes one frame in place at time `now` (seconds).
    pub fn process(&mut self, frame: &mut [u8], now: u64) -> Action {
        self.try_process(frame, now, true, None).unwrap_or_else(Action::Drop)
    }

    /// Processes a frame the XDP program decapsulated, whose tunnel carried the sender's
    /// security identity `tunnel`: a new flow's must be the identity this node gives its
    /// source.
    pub fn process_tunnelled(&mut self, frame: &mut [u8], now: u64, tunnel: Identity) -> Action {
        self.try_process(frame, now, true, Some(tunnel)).unwrap_or_else(Action::Drop)
    }

    /// Processes a frame another worker handed over, with the identity its tunnel carried
    /// (never hands it on: with tables that just changed, two workers could disagree on the
    /// owner).
    pub fn process_handed(&mut self, frame: &mut [u8], now: u64, tunnel: Option<Identity>) -> Action {
        self.try_process(frame, now, false, tunnel).unwrap_or_else(Action::Drop)
    }

    fn try_process(
        &mut self,
        frame: &mut [u8],
        now: u64,
        may_hand_off: bool,
        tunnel: Option<Identity>,
    ) -> Result<Action, DropReason> {
        // Parse.
        let p = layers::parse(frame)?;
        let L3::Ip(ip) = p.l3 else { return Ok(Action::Pass) };
        let prefilter = &self.tables.prefilter;
        if !prefilter.is_empty() && p.addrs(frame).is_some_and(|(src, _)| prefilter.longest(src).is_some()) {
            return Err(DropReason::DeniedCidr);
        }
        // `policy_port`: the port policy rules name, an ICMP message's type for ICMP.
        let (src_port, dst_port, tcp_flags, policy_port) = match p.l4 {
            L4::Tcp { src_port, dst_port, flags } => (src_port, dst_port, flags.0, dst_port),
            L4::Udp { src_port, dst_port } => (src_port, dst_port, 0, dst_port),
            L4::Icmp { msg_type, .. } if icmp::is_error(ip.v6, msg_type) => {
                return self.own.icmp_error(&self.tables, frame, &p, may_hand_off);
            }
            L4::Icmp { msg_type, ident, .. } if msg_type == icmp::v4::ECHO_REPLY && !ip.v6 => {
                (0, ident, 0, u16::from(msg_type))
            }
            L4::Icmp { msg_type: icmp::v6::ECHO_REPLY, ident, .. } if ip.v6 => {
                (0, ident, 0, u16::from(icmp::v6::ECHO_REPLY))
            }
            L4::Icmp { msg_type, ident, .. } => (ident, 0, 0, u16::from(msg_type)),
            L4::None => (0, 0, 0, 0),
        };
        let tuple = Tuple::of(frame, &p, src_port, dst_port).ok_or(DropReason::Internal)?;
        let packet = Packet { tuple, tcp_flags, len: p.l3_offset + ip.len, v6: ip.v6 };
        // Track.
        if let Some(forwarded) = self.own.follow(frame, &p, &packet, now)? {
            return Ok(forwarded);
        }
        let (src, dst) = (unmap(tuple.src, ip.v6), unmap(tuple.dst, ip.v6));
        let policy = &*self.tables.policy;
        // A tunnel's identity counts only where it is what this node numbers the source:
        // nodes that number label sets differently (from folders, or an identity not yet
        // agreed) fail closed, never judge a flow by another label set.
        if tunnel.is_some_and(|identity| identity != policy.ipcache.lookup(src)) {
            return Err(DropReason::TunnelIdentityMismatch);
        }
        let under_policy = policy.enforces(src) || policy.enforces(dst);
        if ip.fragment == Fragment::Later {
            // No ports: a fragment of a service flow cannot be balanced without reassembly,
            // nor one of a flow under policy judged.
            let ours = under_policy || self.tables.is_frontend_address(dst);
            return Ok(if ours { Action::Drop(DropReason::Ipv4Fragment) } else { Action::Pass });
        }
        if p.l4 == L4::None && !under_policy {
            return Ok(Action::Pass);
        }
        let frontend = Frontend { addr: dst, port: dst_port, protocol: ip.protocol.0 };
        let service = if p.l4 == L4::None { None } else { self.tables.services.get(&frontend) };
        // A pod's frame to a pod on another node, or one from the tunnel to a pod here; a
        // pod's flow out of the cluster, masqueraded.
        let tables = &self.tables;
        let tunnelled = service.is_none()
            && tables
                .overlay
                .as_ref()
                .is_some_and(|o| o.remote_node(dst).is_some() || tables.node.hosts_pod(dst));
        let masquerade = if service.is_none() { self.tables.node.egress_masquerade(src, dst) } else { None };
        let untranslated = (under_policy || tunnelled) && masquerade.is_none();
        if may_hand_off
            && let Some(worker) =
                self.own.owner_elsewhere(&self.tables, &tuple, service.is_some(), untranslated)
        {
            return Ok(Action::Handoff { worker });
        }
        let flow_hash = hash64(&tuple.to_bytes(), 0);
        let Some(service) = service else {
            if !under_policy && !tunnelled && masquerade.is_none() {
                return Ok(Action::Pass);
            }
            // Not a service: tracked as it is (or masqueraded), once policy allows it.
            self.own.judge(policy, &packet.tuple, (dst, policy_port), BackendId::NONE)?;
            let decision = Decision { to: (dst, dst_port), backend: BackendId::NONE, masquerade, flow_hash };
            return self.own.start(&self.tables, frame, &p, &packet, decision, now);
        };
        // Balance, judge (the backend is the peer), then translate.
        let internal_client = self.tables.node.is_internal(src);
        let Some(backend) = self.own.balance(service, frontend, &packet, internal_client, flow_hash, now)?
        else {
            return Ok(refuse(frame, &p));
        };
        self.own.judge(policy, &packet.tuple, (backend.addr, backend.port), backend.id)?;
        let masquerade =
            (service.config.kind != FrontendKind::ClusterIp && !internal_client && !backend.local)
                .then(|| self.tables.node.masquerade(dst))
                .flatten();
        let decision =
            Decision { to: (backend.addr, backend.port), backend: backend.id, masquerade, flow_hash };
        self.own.start(&self.tables, frame, &p, &packet, decision, now)
    }
}

impl Own {
    /// Policy on a new flow towards `to` (its destination, or the backend chosen for it, on
    /// the port rules name) when either end is under policy, recorded for observers with the
    /// identities and the deciding direction.
    fn judge(
        &mut self,
        policy: &Policy,
        tuple: &Tuple,
        to: (IpAddr, u16),
        backend: BackendId,
    ) -> Result<(), DropReason> {
        let src = unmap(tuple.src, to.0.is_ipv6());
        if !policy.enforces(src) && !policy.enforces(to.0) {
            return Ok(());
        }
        let trace = policy.trace(src, to.0, tuple.protocol, to.1);
        let verdict = trace.verdict();
        // The direction that decided: a denial's, else the destination's when it judged.
        let ingress = matches!((trace.egress, trace.ingress), (Some(Verdict::Allowed(_)) | None, Some(_)));
        self.events.push(Event {
            backend,
            src_identity: trace.src_identity,
            dst_identity: trace.dst_identity,
            ..Event::of(EventKind::Judged { verdict, ingress }, *tuple)
        });
        verdict.drop_reason().map_or(Ok(()), Err)
    }

    /// Track: a packet of a tracked flow is accounted and translated like its flow. A new
    /// connection on a finished one's tuple removes the old flow and goes on to be balanced
    /// afresh (`None`, as for a packet of no flow). A SYN-ACK on a finished flow's reply
    /// tuple answers a connection this worker never saw (a client that connected to the
    /// backend itself, socket-LB's way, from the port a NAT'd flow had): the old flow goes,
    /// and the frame is the kernel's (its retransmission reaches it once the XDP program
    /// forgets the flow).
    #[inline]
    fn follow(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        packet: &Packet,
        now: u64,
    ) -> Result<Option<Action>, DropReason> {
        let Some((id, dir)) = self.conntrack.lookup(&packet.tuple) else { return Ok(None) };
        if self.conntrack.finished(id) {
            if opens(packet.tcp_flags) {
                self.conntrack.remove(id);
                return Ok(None);
            }
            if dir == Direction::Reply && answers_open(packet.tcp_flags) {
                self.conntrack.remove(id);
                return Ok(Some(Action::Pass));
            }
        }
        let (was_eligible, first_reply) = self
            .conntrack
            .get(id)
            .map_or((false, false), |e| (offload::eligible(e), dir == Direction::Reply && !e.seen_reply));
        self.conntrack.update(id, dir, packet.tcp_flags, packet.len, now);
        let entry = self.conntrack.get(id).ok_or(DropReason::Internal)?;
        if first_reply {
            let translated = entry.original.reversed();
            let reply =
                Event { translated, backend: entry.backend, ..Event::of(EventKind::Replied, packet.tuple) };
            self.events.push(reply);
        }
        if offload::eligible(entry) != was_eligible && self.nic_changes.len() < NIC_CHANGES_PER_BATCH {
            self.nic_changes.push(id);
        }
        entry.rewrite(dir).apply(frame, p, entry.other(dir))?;
        Ok(Some(Action::Forward))
    }

    /// Balance: the backend of a new flow to `service` (`None`: no backend takes new flows,
    /// and the flow is refused).
    fn balance(
        &mut self,
        service: &Service,
        frontend: Frontend,
        packet: &Packet,
        internal_client: bool,
        flow_hash: u64,
        now: u64,
    ) -> Result<Option<Backend>, DropReason> {
        let local_only = service.local_only(internal_client);
        let pool = &*service.pool;
        let selector = if local_only { pool.local.as_ref() } else { Some(&pool.all) };
        let client = unmap(packet.tuple.src, packet.v6);
        self.random = mix64(self.random.wrapping_add(0x9e37_79b9_7f4a_7c15));
        let timeout = service.config.affinity_timeout;
        let remembered = timeout.and_then(|timeout| {
            let (id, at) = *self.affinity.get(&(frontend, client))?;
            let b = pool.backends.get(&id)?;
            (now.saturating_sub(at) <= timeout && b.weight > 0 && (b.local || !local_only)).then_some(id)
        });
        let Some(backend_id) = remembered.or_else(|| selector?.pick(flow_hash, self.random)) else {
            if local_only && !pool.all.is_empty() {
                // Backends elsewhere only: a Local policy drops rather than leave the node.
                return Err(DropReason::NoLocalBackend);
            }
            return Ok(None);
        };
        // Past capacity new clients are not remembered (no allocation on the packet path);
        // known clients are refreshed in place.
        let key = (frontend, client);
        if timeout.is_some()
            && (self.affinity.len() < self.affinity.capacity() || self.affinity.contains_key(&key))
        {
            self.affinity.insert(key, (backend_id, now));
        }
        pool.backends.get(&backend_id).copied().map(Some).ok_or(DropReason::NoBackendMatch)
    }

    /// Translate: tracks the new flow with its reply tuple (from the node's address and a free
    /// port when masqueraded) and rewrites its first packet.
    fn start(
        &mut self,
        tables: &Tables,
        frame: &mut [u8],
        p: &Parsed,
        packet: &Packet,
        decision: Decision,
        now: u64,
    ) -> Result<Action, DropReason> {
        let Decision { to: (addr, port), backend, masquerade, flow_hash } = decision;
        let (tuple, flags) = (packet.tuple, packet.tcp_flags);
        let client = unmap(tuple.src, packet.v6);
        let reply = match masquerade {
            Some(node) => {
                let reply = Tuple::new(addr, node, tuple.protocol, port, 0);
                Tuple { dst_port: self.free_port(tables, &reply, flow_hash)?, ..reply }
            }
            None => Tuple::new(addr, client, tuple.protocol, port, tuple.src_port),
        };
        let id = match self.conntrack.insert(tuple, reply, flags, backend, now) {
            Err(InsertError::ReplyTaken(other)) => {
                let reply = self.resolve_clash(tables, other, reply, flags, flow_hash)?;
                self.conntrack.insert(tuple, reply, flags, backend, now)
            }
            inserted => inserted,
        }
        .map_err(|e| match e {
            InsertError::Full(_) => DropReason::CtTableFull,
            InsertError::ReplyTaken(_) => DropReason::Internal,
        })?;
        self.conntrack.update(id, Direction::Original, flags, packet.len, now);
        let entry = self.conntrack.get(id).ok_or(DropReason::Internal)?;
        if self.new_flows.len() < NEW_FLOWS_PER_BATCH {
            self.new_flows.push(NewFlow { original: tuple, reply: entry.reply, backend });
        }
        let translated = entry.reply.reversed();
        self.events.push(Event { translated, backend, ..Event::of(EventKind::Started, tuple) });
        // Picked up established (a flow older than the worker).
        if offload::eligible(entry) && self.nic_changes.len() < NIC_CHANGES_PER_BATCH {
            self.nic_changes.push(id);
        }
        entry.rewrite(Direction::Original).apply(frame, p, &entry.reply)?;
        Ok(Action::Forward)
    }
}

/// Whether a packet's TCP flags open a connection: SYN without ACK (never for other
/// protocols, whose flags are 0).
#[inline]
fn opens(tcp_flags: u8) -> bool {
    tcp_flags & (TcpFlags::SYN.0 | TcpFlags::ACK.0) == TcpFlags::SYN.0
}

/// A SYN-ACK: the answer to a connection's first packet.
fn answers_open(tcp_flags: u8) -> bool {
    tcp_flags & (TcpFlags::SYN.0 | TcpFlags::ACK.0) == TcpFlags::SYN.0 | TcpFlags::ACK.0
}

/// A service without backends answers: TCP with a RST, UDP with port unreachable (when the
/// frame's buffer can hold it); anything else is dropped. Always counted as
/// `ServiceWithoutBackends` by the caller's drop or reply accounting.
fn refuse(frame: &mut [u8], p: &Parsed) -> Action {
    let reply = match p.l4 {
        L4::Tcp { .. } => reply::tcp_reset(frame, p),
        L4::Udp { .. } => reply::port_unreachable(frame, p),
        _ => None,
    };
    reply
        .and_then(|len| u16::try_from(len).ok())
        .map_or(Action::Drop(DropReason::ServiceWithoutBackends), |len| Action::Reply { len })
}
