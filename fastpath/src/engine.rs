//! The packet engine: what a worker does with one frame, with no I/O and no allocation.
//!
//! A frame to a service frontend starts a flow: a backend is picked by Maglev over the flow's
//! hash, the flow is tracked with its post-NAT reply tuple, and the destination is rewritten
//! to the backend (DNAT). Later packets of the flow follow its tracked backend, whatever the
//! service's backends have become; replies get the frontend back as their source (reverse
//! NAT). Every forwarded packet's TTL drops by one. Anything else passes to the kernel.

use std::{net::IpAddr, sync::Arc};

use hashbrown::HashMap;

use skiff_common::{DropReason, lb::BackendId};
use skiff_wire::{
    Error as WireError, Layer, Problem, icmp,
    layers::{self, Fragment, L3, L4, Parsed},
};

use crate::{
    conntrack::{Conntrack, Direction, Timeouts, Tuple},
    hash::hash64,
    lb::maglev::{Maglev, Weighted},
    nat::{self, Side},
    reply,
};

/// New flows remembered between two drains (a receive batch holds at most 64 frames).
const NEW_FLOWS_PER_BATCH: usize = 256;

/// A service frontend: address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: u8,
}

/// A service's backends and their Maglev table.
#[derive(Clone, Debug)]
pub struct Service {
    backends: HashMap<BackendId, Weighted>,
    maglev: Maglev,
    /// `sessionAffinity: ClientIP`: new flows from a client go to its last backend for this
    /// many seconds after its last new flow.
    affinity_timeout: Option<u64>,
}

impl Service {
    /// A service over `backends`, with a Maglev table of `table_size` slots.
    pub fn new(backends: Vec<Weighted>, table_size: u32) -> Result<Service, crate::lb::maglev::MaglevError> {
        let maglev = Maglev::build(&backends, table_size)?;
        Ok(Service {
            backends: backends.into_iter().map(|b| (b.id, b)).collect(),
            maglev,
            affinity_timeout: None,
        })
    }

    /// With `sessionAffinity: ClientIP` and its timeout in seconds (Kubernetes' default is
    /// 10800).
    pub fn with_client_affinity(mut self, timeout: u64) -> Service {
        self.affinity_timeout = Some(timeout);
        self
    }
}

/// What the control plane gives the workers: swapped whole, never edited in place.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub services: HashMap<Frontend, Service>,
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
        len: usize,
    },
    /// Not the engine's: hand it to the kernel.
    Pass,
    Drop(DropReason),
}

/// One worker's engine: the shared tables and its own connection tracking.
pub struct Engine {
    tables: Arc<Tables>,
    conntrack: Conntrack,
    /// Reply tuples of flows started since the last [`Engine::drain_new_flows`]: the XDP
    /// program must learn them to steer the replies to the worker.
    new_flows: Vec<Tuple>,
    /// Session affinity: (frontend, client) → (backend, seconds of the last new flow).
    affinity: HashMap<(Frontend, IpAddr), (BackendId, u64)>,
}

impl Engine {
    pub fn new(tables: Arc<Tables>, ct_capacity: usize, timeouts: Timeouts) -> Engine {
        Engine {
            tables,
            conntrack: Conntrack::new(ct_capacity, timeouts),
            new_flows: Vec::with_capacity(NEW_FLOWS_PER_BATCH),
            // As many clients as flows; preallocated so the packet path does not allocate.
            affinity: HashMap::with_capacity(ct_capacity),
        }
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

    /// Hands each reply tuple of the flows started since the last call to `f` (the worker
    /// mirrors them into the XDP program's tracked flows, before their first packet leaves).
    pub fn drain_new_flows(&mut self, mut f: impl FnMut(&Tuple)) {
        for t in self.new_flows.drain(..) {
            f(&t);
        }
    }

    /// Processes one frame in place at time `now` (seconds).
    pub fn process(&mut self, frame: &mut [u8], now: u64) -> Verdict {
        match self.try_process(frame, now) {
            Ok(v) => v,
            Err(reason) => Verdict::Drop(reason),
        }
    }

    fn try_process(&mut self, frame: &mut [u8], now: u64) -> Result<Verdict, DropReason> {
        let p = layers::parse(frame).map_err(drop_reason)?;
        let L3::Ip(ip) = p.l3 else { return Ok(Verdict::Pass) };
        let (src, dst) = p.addrs(frame).ok_or(DropReason::Internal)?;
        if ip.fragment == Fragment::Later {
            // No ports: a fragment of a service flow cannot be balanced without reassembly.
            let to_service = self.tables.services.keys().any(|f| f.addr == dst);
            return Ok(if to_service { Verdict::Drop(DropReason::Ipv4Fragment) } else { Verdict::Pass });
        }
        if let L4::Icmp { msg_type, .. } = p.l4
            && icmp::is_error(ip.v6, msg_type)
        {
            return self.icmp_error(frame, &p, dst);
        }
        let (src_port, dst_port, tcp_flags) = match p.l4 {
            L4::Tcp { src_port, dst_port, flags } => (src_port, dst_port, flags.0),
            L4::Udp { src_port, dst_port } => (src_port, dst_port, 0),
            L4::Icmp { ident, .. } => (ident, 0, 0),
            L4::None => return Ok(Verdict::Pass),
        };
        let tuple = Tuple::new(src, dst, ip.protocol.0, src_port, dst_port);
        let len = p.l3_offset + ip.len;
        if let Some((id, dir)) = self.conntrack.lookup(&tuple) {
            self.conntrack.update(id, dir, tcp_flags, len, now);
            let entry = self.conntrack.get(id).ok_or(DropReason::Internal)?;
            // The other end of the translation: the backend for the client's packets, the
            // frontend for the backend's replies.
            let (side, addr, port) = match dir {
                Direction::Original => (Side::Destination, entry.reply.src, entry.reply.src_port),
                Direction::Reply => (Side::Source, entry.original.dst, entry.original.dst_port),
            };
            return self.forward(frame, &p, side, unmap(addr, src), port);
        }
        let frontend = Frontend { addr: dst, port: dst_port, protocol: ip.protocol.0 };
        let Some(service) = self.tables.services.get(&frontend) else { return Ok(Verdict::Pass) };
        let flow_hash = hash64(&tuple.to_bytes(), 0);
        let remembered = service.affinity_timeout.and_then(|timeout| {
            let (id, at) = *self.affinity.get(&(frontend, src))?;
            (now.saturating_sub(at) <= timeout && service.backends.get(&id).is_some_and(|b| b.weight > 0))
                .then_some(id)
        });
        let Some(backend_id) = remembered.or_else(|| service.maglev.pick(flow_hash)) else {
            return Ok(refuse(frame, &p));
        };
        // Past capacity new clients are not remembered (no allocation on the packet path);
        // known clients are refreshed in place.
        let key = (frontend, src);
        if service.affinity_timeout.is_some()
            && (self.affinity.len() < self.affinity.capacity() || self.affinity.contains_key(&key))
        {
            self.affinity.insert(key, (backend_id, now));
        }
        let backend = *service.backends.get(&backend_id).ok_or(DropReason::NoBackendMatch)?;
        let reply = Tuple::new(backend.addr, src, ip.protocol.0, backend.port, src_port);
        let id = self
            .conntrack
            .insert(tuple, reply, tcp_flags, backend_id, now)
            .map_err(|_| DropReason::CtTableFull)?;
        self.conntrack.update(id, Direction::Original, tcp_flags, len, now);
        if self.new_flows.len() < NEW_FLOWS_PER_BATCH {
            self.new_flows.push(reply);
        }
        self.forward(frame, &p, Side::Destination, backend.addr, backend.port)
    }

    /// An ICMP error quotes a packet as it was sent; the reverse of the quote is the direction
    /// the error travels in. About a tracked flow it is translated like the flow (the client
    /// must see it come from the frontend, the backend must see it about its own packet);
    /// about no flow it is dropped if it targets a frontend address, and left alone otherwise.
    fn icmp_error(&mut self, frame: &mut [u8], p: &Parsed, dst: IpAddr) -> Result<Verdict, DropReason> {
        let L3::Ip(ip) = p.l3 else { return Ok(Verdict::Pass) };
        let quote = frame
            .get(p.l4_offset + icmp::HEADER_LEN..p.l3_offset + ip.len)
            .ok_or(DropReason::IcmpTruncated)?;
        let tracked = layers::parse_quoted(quote, ip.v6).ok().and_then(|q| {
            let key = Tuple::new(q.dst, q.src, q.protocol.0, q.dst_port, q.src_port);
            self.conntrack.lookup(&key)
        });
        let Some((id, dir)) = tracked else {
            let to_service = self.tables.services.keys().any(|f| f.addr == dst);
            return Ok(if to_service {
                Verdict::Drop(DropReason::UnsolicitedIcmpError)
            } else {
                Verdict::Pass
            });
        };
        let entry = self.conntrack.get(id).ok_or(DropReason::Internal)?;
        let (side, addr, port) = match dir {
            Direction::Reply => (Side::Source, entry.original.dst, entry.original.dst_port),
            Direction::Original => (Side::Destination, entry.reply.src, entry.reply.src_port),
        };
        nat::decrement_ttl(frame, p)?;
        nat::translate_icmp_error(frame, p, side, unmap(addr, dst), port)?;
        Ok(Verdict::Forward)
    }

    fn forward(
        &self,
        frame: &mut [u8],
        p: &Parsed,
        side: Side,
        addr: IpAddr,
        port: u16,
    ) -> Result<Verdict, DropReason> {
        nat::decrement_ttl(frame, p)?;
        nat::rewrite(frame, p, side, addr, port)?;
        Ok(Verdict::Forward)
    }
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
    reply.map_or(Verdict::Drop(DropReason::ServiceWithoutBackends), |len| Verdict::Reply { len })
}

/// A tuple address back as an `IpAddr` of the same family as `like`.
fn unmap(a: [u8; 16], like: IpAddr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(a);
    match (like, v6.to_ipv4_mapped()) {
        (IpAddr::V4(_), Some(v4)) => v4.into(),
        _ => v6.into(),
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
