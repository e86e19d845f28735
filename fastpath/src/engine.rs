//! The packet engine: what a worker does with one frame, with no I/O and no allocation.
//!
//! A frame to a service frontend starts a flow: a backend is picked (Maglev over the flow's
//! hash or at random, or remembered for the client by session affinity, within the traffic
//! policy), the flow is tracked with its post-NAT reply tuple, and the destination is
//! rewritten to the backend (DNAT; the source too when masquerading). Later packets of the
//! flow follow its tracked backend, whatever the service's backends have become; replies get
//! the frontend back as their source (reverse NAT), and ICMP errors about the flow are
//! translated like it. A service without backends is refused (TCP RST, ICMP unreachable).
//! With several workers, a frame of a flow another worker owns is handed to it. Every
//! forwarded packet's TTL drops by one. Anything else passes to the kernel.

use std::{net::IpAddr, sync::Arc};

use hashbrown::HashMap;

use skiff_common::{DropReason, lb::BackendId};
use skiff_wire::{
    Error as WireError, Layer, Problem, icmp,
    layers::{self, Fragment, L3, L4, Parsed},
    tcp::TcpFlags,
};

use crate::{
    conntrack::{self, Conntrack, Direction, Entry, InsertError, Timeouts, Tuple},
    hash::hash64,
    lb::{Algorithm, Backend, Selector, maglev::MaglevError},
    nat::{self, Side},
    reply,
};

/// The seed of the hash that gives a flow's owner (any fixed value other than the flow hash's
/// 0: every worker must agree).
const OWNER_SEED: u64 = 1;

/// New flows remembered between two drains (a receive batch holds at most 64 frames).
const NEW_FLOWS_PER_BATCH: usize = 256;

/// A service frontend: address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: u8,
}

/// How a frontend exposes its service. Traffic to a ClusterIP follows the service's
/// internalTrafficPolicy; traffic from outside the cluster to the others follows its
/// externalTrafficPolicy and is masqueraded when it goes to another node's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FrontendKind {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

/// Kubernetes' traffic policies: `Local` sends the flows it governs only to this node's
/// backends (and keeps the client's address: no masquerading).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// How a frontend balances its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceConfig {
    pub kind: FrontendKind,
    pub algorithm: Algorithm,
    /// The policy of this frontend's kind: internal for a ClusterIP, external otherwise.
    pub traffic_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP`: new flows from a client go to its last backend for this
    /// many seconds after its last new flow (Kubernetes' default is 10800).
    pub affinity_timeout: Option<u64>,
}

/// A frontend: its configuration and its backends' pool.
#[derive(Clone, Debug)]
pub struct Service {
    config: ServiceConfig,
    pool: Arc<Pool>,
}

/// Backends and their selectors, shared by every frontend of one service port (its ClusterIP,
/// NodePorts, load-balancer IPs): one Maglev table each, not one per frontend, and a table
/// publish that keeps a service reuses it instead of rebuilding.
#[derive(Debug)]
struct Pool {
    algorithm: Algorithm,
    backends: HashMap<BackendId, Backend>,
    /// Over every backend.
    all: Selector,
    /// Over this node's backends, when a `Local` policy needs it.
    local: Option<Selector>,
}

impl Service {
    pub fn new(backends: Vec<Backend>, config: ServiceConfig) -> Result<Service, MaglevError> {
        let all = Selector::build(&backends, config.algorithm)?;
        let local = (config.traffic_policy == TrafficPolicy::Local)
            .then(|| Selector::build(backends.iter().filter(|b| b.local), config.algorithm))
            .transpose()?;
        let backends = backends.into_iter().map(|b| (b.id, b)).collect();
        Ok(Service { config, pool: Arc::new(Pool { algorithm: config.algorithm, backends, all, local }) })
    }

    /// Another frontend of the same backends: shares this one's selectors when `config` can
    /// use them (same algorithm, and the local selector when its policy is `Local`).
    pub fn sharing(&self, config: ServiceConfig) -> Result<Service, MaglevError> {
        let pool = &self.pool;
        if pool.algorithm == config.algorithm
            && (config.traffic_policy == TrafficPolicy::Cluster || pool.local.is_some())
        {
            return Ok(Service { config, pool: pool.clone() });
        }
        Service::new(pool.backends.values().copied().collect(), config)
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.pool.backends.values()
    }

    /// Whether a new flow from this client is bound to this node's backends.
    fn local_only(&self, internal_client: bool) -> bool {
        self.config.traffic_policy == TrafficPolicy::Local
            && (self.config.kind == FrontendKind::ClusterIp || !internal_client)
    }
}

/// This node as the engine needs to know it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// The source addresses of masqueraded flows.
    pub masquerade_v4: Option<IpAddr>,
    pub masquerade_v6: Option<IpAddr>,
    /// The cluster's addresses (pod CIDRs, node addresses): clients inside them are internal.
    pub cluster_prefixes: Vec<(IpAddr, u8)>,
}

impl Node {
    fn masquerade(&self, like: IpAddr) -> Option<IpAddr> {
        if like.is_ipv4() { self.masquerade_v4 } else { self.masquerade_v6 }
    }

    fn is_internal(&self, addr: IpAddr) -> bool {
        self.cluster_prefixes.iter().any(|&(prefix, len)| in_prefix(addr, prefix, len))
    }
}

/// Whether `addr` is in `prefix/len` (never across address families).
pub fn in_prefix(addr: IpAddr, prefix: IpAddr, len: u8) -> bool {
    let bits = |a: IpAddr| match a {
        IpAddr::V4(a) => (u128::from(a.to_bits()) << 96, 32),
        IpAddr::V6(a) => (a.to_bits(), 128),
    };
    let ((a, width), (p, prefix_width)) = (bits(addr), bits(prefix));
    let mask = u128::MAX.checked_shl(128 - u32::from(len.min(width))).unwrap_or(0);
    width == prefix_width && a & mask == p & mask
}

/// How to reach an address: out of which port (the interface's index in the worker's ports,
/// which is its index in the datapath's interfaces), with which MACs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub port: usize,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// What the control plane gives the workers: swapped whole, never edited in place.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub services: HashMap<Frontend, Service>,
    pub node: Node,
    /// Where translated packets go, by destination address; the unspecified address of a
    /// family is its default route.
    pub next_hops: HashMap<IpAddr, Neighbor>,
}

impl Tables {
    pub fn next_hop(&self, dst: IpAddr) -> Option<&Neighbor> {
        self.next_hops.get(&dst).or_else(|| {
            let any = match dst {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            self.next_hops.get(&any)
        })
    }
}

/// The tables as the control plane publishes them: a new version replaces the old one
/// atomically (arc-swap), and workers pick it up between batches. No lock on the packet path,
/// and no packet ever sees a half-built table.
#[derive(Clone, Default)]
pub struct SharedTables(Arc<arc_swap::ArcSwap<Tables>>);

impl SharedTables {
    pub fn new(tables: Tables) -> SharedTables {
        SharedTables(Arc::new(arc_swap::ArcSwap::from_pointee(tables)))
    }

    /// Replaces the tables every worker sees from its next batch on.
    pub fn publish(&self, tables: Tables) {
        self.0.store(Arc::new(tables));
    }

    /// The current version.
    pub fn current(&self) -> Arc<Tables> {
        self.0.load_full()
    }
}

/// A flow an engine started: as the client sent it, as its replies will come, and its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewFlow {
    pub original: Tuple,
    pub reply: Tuple,
    pub backend: BackendId,
}

/// What to do with a frame after [`Engine::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
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

/// Source ports for masquerading, and for a client's port remapped on a clash: above the
/// kernel's ephemeral range (32768–60999), so they never take the 5-tuple of a connection
/// whose port a kernel chose.
pub const SNAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

/// Which worker of how many an engine is. A flow belongs to the worker its client's endpoint
/// (address and port) hashes to, whichever queue its packets arrive on: a request's source,
/// a reply's destination. Workers masquerade with disjoint sets of source ports
/// (`port % count == index`), so their flows never collide and a masqueraded reply's port
/// names its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub index: u16,
    pub count: u16,
}

impl Default for Partition {
    fn default() -> Partition {
        Partition { index: 0, count: 1 }
    }
}

/// One worker's engine: the shared tables and its own connection tracking.
pub struct Engine {
    tables: Arc<Tables>,
    conntrack: Conntrack,
    partition: Partition,
    /// Flows started since the last [`Engine::drain_new_flows`]: the XDP program must learn
    /// their reply tuples to steer the replies to the worker.
    new_flows: Vec<NewFlow>,
    /// Session affinity: (frontend, client) → (backend, seconds of the last new flow).
    affinity: HashMap<(Frontend, IpAddr), (BackendId, u64)>,
    /// State of the random draws (`Algorithm::Random`).
    random: u64,
}

impl Engine {
    pub fn new(tables: Arc<Tables>, ct_capacity: usize, timeouts: Timeouts) -> Engine {
        Engine {
            tables,
            conntrack: Conntrack::new(ct_capacity, timeouts),
            partition: Partition::default(),
            new_flows: Vec::with_capacity(NEW_FLOWS_PER_BATCH),
            // As many clients as flows; preallocated so the packet path does not allocate.
            affinity: HashMap::with_capacity(ct_capacity),
            random: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos())),
        }
    }

    /// Makes this engine worker `index` of `count`.
    pub fn set_partition(&mut self, partition: Partition) {
        self.partition = partition;
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Installs new tables; tracked flows keep their backends.
    pub fn set_tables(&mut self, tables: Arc<Tables>) {
        self.tables = tables;
    }

    /// Takes the newest published tables, if they changed: a worker calls this between
    /// batches (one atomic load when nothing changed).
    pub fn refresh(&mut self, shared: &SharedTables) {
        let current = shared.0.load();
        if !Arc::ptr_eq(&current, &self.tables) {
            self.tables = arc_swap::Guard::into_inner(current);
        }
    }

    pub fn conntrack(&mut self) -> &mut Conntrack {
        &mut self.conntrack
    }

    /// Hands each flow started since the last call to `f` (the worker mirrors their reply
    /// tuples into the XDP program's tracked flows, before their first packet leaves).
    pub fn drain_new_flows(&mut self, mut f: impl FnMut(&NewFlow)) {
        for t in self.new_flows.drain(..) {
            f(&t);
        }
    }

    /// Processes one frame in place at time `now` (seconds).
    pub fn process(&mut self, frame: &mut [u8], now: u64) -> Verdict {
        self.try_process(frame, now, true).unwrap_or_else(Verdict::Drop)
    }

    /// Processes a frame another worker handed over (never hands it on: with tables that
    /// just changed, two workers could disagree on the owner).
    pub fn process_handed(&mut self, frame: &mut [u8], now: u64) -> Verdict {
        self.try_process(frame, now, false).unwrap_or_else(Verdict::Drop)
    }

    fn try_process(&mut self, frame: &mut [u8], now: u64, may_hand_off: bool) -> Result<Verdict, DropReason> {
        let p = layers::parse(frame).map_err(drop_reason)?;
        let L3::Ip(ip) = p.l3 else { return Ok(Verdict::Pass) };
        let (src_port, dst_port, tcp_flags) = match p.l4 {
            L4::Tcp { src_port, dst_port, flags } => (src_port, dst_port, flags.0),
            L4::Udp { src_port, dst_port } => (src_port, dst_port, 0),
            L4::Icmp { msg_type, .. } if icmp::is_error(ip.v6, msg_type) => {
                return self.icmp_error(frame, &p, may_hand_off);
            }
            L4::Icmp { msg_type, ident, .. } if msg_type == icmp::v4::ECHO_REPLY && !ip.v6 => (0, ident, 0),
            L4::Icmp { msg_type: icmp::v6::ECHO_REPLY, ident, .. } if ip.v6 => (0, ident, 0),
            L4::Icmp { ident, .. } => (ident, 0, 0),
            L4::None => (0, 0, 0),
        };
        let tuple = tuple_of(frame, &p, src_port, dst_port).ok_or(DropReason::Internal)?;
        if let Some((id, dir)) = self.conntrack.lookup(&tuple) {
            if !(opens(tcp_flags) && self.conntrack.finished(id)) {
                self.conntrack.update(id, dir, tcp_flags, p.l3_offset + ip.len, now);
                let entry = self.conntrack.get(id).ok_or(DropReason::Internal)?;
                entry.rewrite(dir).apply(frame, &p, entry.other(dir))?;
                return Ok(Verdict::Forward);
            }
            // A new connection on a finished one's tuple: balanced afresh.
            self.conntrack.remove(id);
        }
        let (src, dst) = (unmap(tuple.src, ip.v6), unmap(tuple.dst, ip.v6));
        if ip.fragment == Fragment::Later {
            // No ports: a fragment of a service flow cannot be balanced without reassembly.
            let to_service = self.tables.services.keys().any(|f| f.addr == dst);
            return Ok(if to_service { Verdict::Drop(DropReason::Ipv4Fragment) } else { Verdict::Pass });
        }
        if p.l4 == L4::None {
            return Ok(Verdict::Pass);
        }
        let len = p.l3_offset + ip.len;
        let frontend = Frontend { addr: dst, port: dst_port, protocol: ip.protocol.0 };
        let service = self.tables.services.get(&frontend);
        if may_hand_off && let Some(worker) = self.owner_elsewhere(&tuple, service.is_some()) {
            return Ok(Verdict::Handoff { worker });
        }
        let Some(service) = service else { return Ok(Verdict::Pass) };
        let internal_client = self.tables.node.is_internal(src);
        let local_only = service.local_only(internal_client);
        let pool = &*service.pool;
        let selector = if local_only { pool.local.as_ref() } else { Some(&pool.all) };
        let flow_hash = hash64(&tuple.to_bytes(), 0);
        self.random = crate::hash::mix64(self.random.wrapping_add(0x9e37_79b9_7f4a_7c15));
        let timeout = service.config.affinity_timeout;
        let remembered = timeout.and_then(|timeout| {
            let (id, at) = *self.affinity.get(&(frontend, src))?;
            let b = pool.backends.get(&id)?;
            (now.saturating_sub(at) <= timeout && b.weight > 0 && (b.local || !local_only)).then_some(id)
        });
        let Some(backend_id) = remembered.or_else(|| selector?.pick(flow_hash, self.random)) else {
            if local_only && !pool.all.is_empty() {
                // Backends elsewhere only: a Local policy drops rather than leave the node.
                return Err(DropReason::NoLocalBackend);
            }
            return Ok(refuse(frame, &p));
        };
        // Past capacity new clients are not remembered (no allocation on the packet path);
        // known clients are refreshed in place.
        let key = (frontend, src);
        if timeout.is_some()
            && (self.affinity.len() < self.affinity.capacity() || self.affinity.contains_key(&key))
        {
            self.affinity.insert(key, (backend_id, now));
        }
        let backend = *pool.backends.get(&backend_id).ok_or(DropReason::NoBackendMatch)?;
        let masquerade =
            (service.config.kind != FrontendKind::ClusterIp && !internal_client && !backend.local)
                .then(|| self.tables.node.masquerade(src))
                .flatten();
        let proto = ip.protocol.0;
        let reply = match masquerade {
            Some(node) => {
                let reply = Tuple::new(backend.addr, node, proto, backend.port, 0);
                Tuple { dst_port: self.free_port(&reply, flow_hash)?, ..reply }
            }
            None => Tuple::new(backend.addr, src, proto, backend.port, src_port),
        };
        let id = match self.conntrack.insert(tuple, reply, tcp_flags, backend_id, now) {
            Err(InsertError::ReplyTaken(other)) => {
                let reply = self.resolve_clash(other, reply, tcp_flags, flow_hash)?;
                self.conntrack.insert(tuple, reply, tcp_flags, backend_id, now)
            }
            inserted => inserted,
        }
        .map_err(|e| match e {
            InsertError::Full(_) => DropReason::CtTableFull,
            InsertError::ReplyTaken(_) => DropReason::Internal,
        })?;
        self.conntrack.update(id, Direction::Original, tcp_flags, len, now);
        let entry = self.conntrack.get(id).ok_or(DropReason::Internal)?;
        if self.new_flows.len() < NEW_FLOWS_PER_BATCH {
            self.new_flows.push(NewFlow { original: tuple, reply: entry.reply, backend: backend_id });
        }
        entry.rewrite(Direction::Original).apply(frame, &p, &entry.reply)?;
        Ok(Verdict::Forward)
    }

    /// The worker owning the flow of `tuple`, a packet this worker's conntrack does not know,
    /// if that is another worker.
    fn owner_elsewhere(&self, tuple: &Tuple, to_frontend: bool) -> Option<u16> {
        let owner = self.owner(tuple, to_frontend);
        (owner != self.partition.index).then_some(owner)
    }

    /// The worker owning the flow of `tuple`: by the client's endpoint (the source of a packet
    /// to a frontend, otherwise the destination), or by the port of a masqueraded reply.
    fn owner(&self, tuple: &Tuple, to_frontend: bool) -> u16 {
        let Partition { index, count } = self.partition;
        if count <= 1 {
            return index;
        }
        let node = &self.tables.node;
        let masqueraded_reply = !to_frontend
            && SNAT_PORTS.contains(&tuple.dst_port)
            && [node.masquerade_v4, node.masquerade_v6]
                .into_iter()
                .flatten()
                .any(|a| conntrack::mapped(a) == tuple.dst);
        if masqueraded_reply {
            return tuple.dst_port % count;
        }
        let (addr, port) =
            if to_frontend { (tuple.src, tuple.src_port) } else { (tuple.dst, tuple.dst_port) };
        let mut client = [0u8; 18];
        client[..16].copy_from_slice(&addr);
        client[16..].copy_from_slice(&port.to_be_bytes());
        u16::try_from(hash64(&client, OWNER_SEED) % u64::from(count)).unwrap_or(0)
    }

    /// The reply tuple for a new flow whose `reply` flow `other` already has: a client reused
    /// its port towards two frontends with the same backend, which must still tell the two
    /// connections apart. A finished TCP connection gives way to a new SYN (the backend's
    /// kernel decides, as without NAT); a live flow keeps its tuple and the new flow's client
    /// port is remapped, as Linux's NAT does on a clash.
    fn resolve_clash(
        &mut self,
        other: u32,
        reply: Tuple,
        tcp_flags: u8,
        flow_hash: u64,
    ) -> Result<Tuple, DropReason> {
        if opens(tcp_flags) && self.conntrack.finished(other) {
            self.conntrack.remove(other);
            return Ok(reply);
        }
        Ok(Tuple { dst_port: self.free_port(&reply, flow_hash)?, ..reply })
    }

    /// A port of `SNAT_PORTS` for the client side of `reply` (its destination port) that no
    /// flow's reply uses and whose replies this worker owns: from the flow's hash on, the first
    /// such port (nearly always one of the first `count` tried).
    fn free_port(&self, reply: &Tuple, flow_hash: u64) -> Result<u16, DropReason> {
        let (first, n) = (*SNAT_PORTS.start(), SNAT_PORTS.len() as u64);
        let start = flow_hash % n;
        (0..n)
            .filter_map(|k| u16::try_from((start + k) % n).ok())
            .map(|offset| first + offset)
            .map(|port| Tuple { dst_port: port, ..*reply })
            .find(|t| self.owner(t, false) == self.partition.index && self.conntrack.lookup(t).is_none())
            .map(|t| t.dst_port)
            .ok_or(DropReason::NatPortExhausted)
    }

    /// An ICMP error quotes a packet as it was sent; the reverse of the quote is the direction
    /// the error travels in. About a tracked flow it is translated like the flow (the client
    /// must see it come from the frontend, the backend must see it about its own packet);
    /// about no flow it is dropped if it targets a frontend address, and left alone otherwise.
    fn icmp_error(
        &mut self,
        frame: &mut [u8],
        p: &Parsed,
        may_hand_off: bool,
    ) -> Result<Verdict, DropReason> {
        let L3::Ip(ip) = p.l3 else { return Ok(Verdict::Pass) };
        let (_, dst) = p.addrs(frame).ok_or(DropReason::Internal)?;
        let quote = frame
            .get(p.l4_offset + icmp::HEADER_LEN..p.l3_offset + ip.len)
            .ok_or(DropReason::IcmpTruncated)?;
        // The quote reversed: the tuple of a packet of the flow going the way the error goes.
        let key = layers::parse_quoted(quote, ip.v6)
            .ok()
            .map(|q| Tuple::new(q.dst, q.src, q.protocol.0, q.dst_port, q.src_port));
        let tracked = key.as_ref().and_then(|key| self.conntrack.lookup(key));
        if tracked.is_none()
            && may_hand_off
            && let Some(key) = key
        {
            let frontend =
                Frontend { addr: unmap(key.dst, ip.v6), port: key.dst_port, protocol: key.protocol };
            if let Some(worker) = self.owner_elsewhere(&key, self.tables.services.contains_key(&frontend)) {
                return Ok(Verdict::Handoff { worker });
            }
        }
        let Some((id, dir)) = tracked else {
            let to_service = self.tables.services.keys().any(|f| f.addr == dst);
            return Ok(if to_service {
                Verdict::Drop(DropReason::UnsolicitedIcmpError)
            } else {
                Verdict::Pass
            });
        };
        let entry = self.conntrack.get(id).ok_or(DropReason::Internal)?;
        nat::decrement_ttl(frame, p)?;
        translate_icmp_error(frame, p, entry, dir)?;
        Ok(Verdict::Forward)
    }
}

/// Translates an ICMP error about a tracked flow, travelling in `dir`, like the flow's own
/// packets: it leaves looking like the other direction's tuple reversed. The far end always
/// changes (errors from the backend's side come from the frontend, the client's errors reach
/// the backend); the near end only for a masqueraded flow.
fn translate_icmp_error(
    frame: &mut [u8],
    p: &Parsed,
    entry: &Entry,
    dir: Direction,
) -> Result<(), DropReason> {
    let L3::Ip(ip) = p.l3 else { return Err(DropReason::UnsupportedEthertype) };
    let other = entry.other(dir);
    let endpoint = |side| match side {
        Side::Source => (other.dst, other.dst_port),
        Side::Destination => (other.src, other.src_port),
    };
    let (far, near) = match dir {
        Direction::Original => (Side::Destination, Side::Source),
        Direction::Reply => (Side::Source, Side::Destination),
    };
    let (addr, port) = endpoint(far);
    nat::translate_icmp_error(frame, p, far, unmap(addr, ip.v6), port)?;
    if entry.masqueraded() {
        let (addr, port) = endpoint(near);
        nat::translate_icmp_error(frame, p, near, unmap(addr, ip.v6), port)?;
    }
    Ok(())
}

/// The tuple of a parsed IP packet, its addresses read straight from the frame (IPv4 ones
/// mapped, built in registers: no byte-wise copies for the hash to stall on).
#[inline]
fn tuple_of(frame: &[u8], p: &Parsed, src_port: u16, dst_port: u16) -> Option<Tuple> {
    let L3::Ip(ip) = p.l3 else { return None };
    let l3 = frame.get(p.l3_offset..)?;
    let (src, dst) = if ip.v6 {
        let h: &[u8; 40] = l3.first_chunk()?;
        (h[8..24].try_into().ok()?, h[24..40].try_into().ok()?)
    } else {
        let h: &[u8; 20] = l3.first_chunk()?;
        let mapped = |a: &[u8]| {
            let a = u32::from_be_bytes(a.try_into().unwrap_or_default());
            (0xffff_u128 << 32 | u128::from(a)).to_be_bytes()
        };
        (mapped(&h[12..16]), mapped(&h[16..20]))
    };
    Some(Tuple { src, dst, src_port, dst_port, protocol: ip.protocol.0 })
}

/// Whether a packet's TCP flags open a connection: SYN without ACK (never for other
/// protocols, whose flags are 0).
#[inline]
fn opens(tcp_flags: u8) -> bool {
    tcp_flags & (TcpFlags::SYN.0 | TcpFlags::ACK.0) == TcpFlags::SYN.0
}

/// A service without backends answers: TCP with a RST, UDP with port unreachable (when the
/// frame's buffer can hold it); anything else is dropped. Always counted as
/// `ServiceWithoutBackends` by the caller's drop or reply accounting.
fn refuse(frame: &mut [u8], p: &Parsed) -> Verdict {
    let reply = match p.l4 {
        L4::Tcp { .. } => reply::tcp_reset(frame, p),
        L4::Udp { .. } => reply::port_unreachable(frame, p),
        _ => None,
    };
    reply
        .and_then(|len| u16::try_from(len).ok())
        .map_or(Verdict::Drop(DropReason::ServiceWithoutBackends), |len| Verdict::Reply { len })
}

/// A tuple address back as an `IpAddr` of its packet's family.
fn unmap(a: [u8; 16], v6: bool) -> IpAddr {
    let addr = std::net::Ipv6Addr::from(a);
    match addr.to_ipv4_mapped() {
        Some(v4) if !v6 => v4.into(),
        _ => addr.into(),
    }
}

/// The counted reason for a frame the parser refused.
pub fn drop_reason(e: WireError) -> DropReason {
    use DropReason as D;
    match (e.layer, e.problem) {
        (Layer::Ethernet, _) => D::EthernetTruncated,
        (Layer::Vlan, Problem::TooManyHeaders) => D::VlanTooDeep,
        (Layer::Vlan, _) => D::VlanTruncated,
        (Layer::Ipv4, Problem::BadVersion) => D::Ipv4BadVersion,
        (Layer::Ipv4, Problem::BadHeaderLength) => D::Ipv4BadHeaderLength,
        (Layer::Ipv4, Problem::BadLength) => D::Ipv4BadTotalLength,
        (Layer::Ipv4, Problem::BadChecksum) => D::Ipv4BadChecksum,
        (Layer::Ipv4, _) => D::Ipv4Truncated,
        (Layer::Ipv6, Problem::BadVersion) => D::Ipv6BadVersion,
        (Layer::Ipv6, Problem::Truncated) => D::Ipv6Truncated,
        (Layer::Ipv6, _) => D::Ipv6BadPayloadLength,
        (Layer::Ipv6Ext, Problem::TooManyHeaders) => D::Ipv6ExtHeaderLimit,
        (Layer::Ipv6Ext, _) => D::Ipv6BadExtHeader,
        (Layer::Tcp, Problem::BadHeaderLength) => D::TcpBadDataOffset,
        (Layer::Tcp, Problem::BadChecksum) | (Layer::Udp, Problem::BadChecksum) => D::L4BadChecksum,
        (Layer::Tcp, _) => D::TcpTruncated,
        (Layer::Udp, Problem::BadLength) => D::UdpBadLength,
        (Layer::Udp, _) => D::UdpTruncated,
        (Layer::Icmpv4 | Layer::Icmpv6, Problem::BadChecksum) => D::L4BadChecksum,
        (Layer::Icmpv4 | Layer::Icmpv6, _) => D::IcmpTruncated,
        (Layer::Arp, _) => D::UnsupportedEthertype,
        (Layer::Vxlan, Problem::BadFlags) => D::VxlanBadFlags,
        (Layer::Vxlan, _) => D::VxlanTruncated,
        (Layer::Geneve, Problem::BadVersion) => D::GeneveBadVersion,
        (Layer::Geneve, Problem::BadOption) => D::GeneveOptionOverflow,
        (Layer::Geneve, _) => D::GeneveTruncated,
    }
}
