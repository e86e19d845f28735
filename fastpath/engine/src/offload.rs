//! What a worker writes into the XDP program's flow table (`CT_V4`, `CT_V6`): for a new flow,
//! an entry that steers its replies to the worker; for an established one, each direction's
//! translation, which the XDP program then applies itself (see
//! [`skiff_common::conntrack::CtEntry`]). Each entry is keyed by the tuple its direction
//! arrives with.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use skiff_common::{
    conntrack::{CtEntry, CtKey, CtKey4, CtKey6, TcpState},
    lb::BackendId,
    proto::ip,
};

use crate::{
    conntrack::Entry,
    flow::{Direction, Tuple},
    lb::Backend,
    tables::{Frontend, Tables},
};

/// The flow table's key for a tuple.
pub fn key(t: &Tuple) -> CtKey {
    match (v4(&t.src), v4(&t.dst)) {
        (Some(src), Some(dst)) => CtKey::V4(CtKey4::new(src, t.src_port, dst, t.dst_port, t.protocol)),
        _ => CtKey::V6(CtKey6::new(t.src, t.src_port, t.dst, t.dst_port, t.protocol)),
    }
}

fn v4(a: &[u8; 16]) -> Option<[u8; 4]> {
    Ipv6Addr::from(*a).to_ipv4_mapped().map(|a| a.octets())
}

/// Whether a flow may be forwarded at the NIC: an established TCP connection, or a UDP flow
/// that has been answered. A handshake, a closing connection and other protocols stay with
/// the worker, which follows their state.
pub fn eligible(e: &Entry) -> bool {
    match e.original.protocol {
        ip::TCP => e.state == TcpState::Established,
        ip::UDP => e.seen_reply,
        _ => false,
    }
}

/// The entry of a flow's replies that hands them to the worker (a new flow's, or one taken
/// back from the NIC). It names the tuple they leave as, as every entry does, so that the
/// table alone tells which flows there are.
pub fn to_worker(original: &Tuple, reply: &Tuple, backend: BackendId) -> (CtKey, CtEntry) {
    (key(reply), leaving(&original.reversed(), backend, Direction::Reply))
}

/// Where a flow's packets are forwarded.
// Returned by value once per flow placed: boxing the entries would allocate on the worker's
// thread.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// At the NIC: both directions as the XDP program forwards them, keyed by how each
    /// arrives.
    Nic([(CtKey, CtEntry); 2]),
    /// By its worker: not established (or closing), its backend gone from its service, or a
    /// pod on another node (whose frames a worker encapsulates).
    Worker,
    /// Not known yet: a direction has no next hop through a port with an interface (an agent
    /// just started, whose ports are not all back). A flow at the NIC stays there.
    Unknown,
}

/// A digest of a flow's two entries at the NIC: a worker that finds the same digest after new
/// tables leaves the flow alone, without a syscall (a table change rechecks every flow).
pub fn digest(directions: &[(CtKey, CtEntry); 2]) -> u64 {
    let mut hasher = DefaultHasher::new();
    directions.hash(&mut hasher);
    hasher.finish()
}

/// Where `e` belongs now; `ifindex` gives a port's interface.
pub fn placement(e: &Entry, tables: &Tables, ifindex: impl Fn(usize) -> Option<u32>) -> Placement {
    if !eligible(e) || !backend_serves(e, tables) {
        return Placement::Worker;
    }
    let ends = [Direction::Original, Direction::Reply].map(|dir| addr(&e.other(dir).src));
    if tables.overlay.as_deref().is_some_and(|o| ends.iter().any(|&to| o.remote_node(to).is_some())) {
        return Placement::Worker;
    }
    let direction = |dir: Direction, to: IpAddr| {
        let arrives = match dir {
            Direction::Original => &e.original,
            Direction::Reply => &e.reply,
        };
        let hop = tables.next_hop(to)?;
        Some((key(arrives), entry(e, dir, ifindex(hop.port)?, hop.src_mac, hop.dst_mac)))
    };
    match (direction(Direction::Original, ends[0]), direction(Direction::Reply, ends[1])) {
        (Some(original), Some(reply)) => Placement::Nic([original, reply]),
        _ => Placement::Unknown,
    }
}

/// Whether a service flow's backend is still one of its service's (terminating or not): a
/// flow whose backend was removed goes back to the worker. The backend is the address and
/// port its replies come from; its id is only the quick way to it (an agent started again
/// may number backends otherwise).
fn backend_serves(e: &Entry, tables: &Tables) -> bool {
    if e.backend == BackendId::NONE {
        return true;
    }
    let (o, r) = (&e.original, &e.reply);
    let frontend = Frontend { addr: addr(&o.dst), port: o.dst_port, protocol: o.protocol };
    let is_it = |b: &Backend| b.addr == addr(&r.src) && b.port == r.src_port;
    tables.services.get(&frontend).is_some_and(|s| {
        s.pool.backends.get(&e.backend).is_some_and(is_it) || s.pool.backends.values().any(is_it)
    })
}

/// The entry of direction `dir` of `e`, forwarded at the NIC: it leaves as the reverse of the
/// other direction's tuple.
fn entry(e: &Entry, dir: Direction, ifindex: u32, src_mac: [u8; 6], dst_mac: [u8; 6]) -> CtEntry {
    let (ip_csum, l4_csum) = e.rewrite(dir).deltas();
    CtEntry {
        ip_csum,
        l4_csum,
        src_mac,
        dst_mac,
        ifindex,
        tcp_state: e.state.code(),
        ..leaving(&e.other(dir).reversed(), e.backend, dir)
    }
}

/// An entry whose packets leave as `leaves`, to the worker.
fn leaving(leaves: &Tuple, backend: BackendId, dir: Direction) -> CtEntry {
    let nic = |a: &[u8; 16]| match v4(a) {
        Some(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4);
            out
        }
        None => *a,
    };
    CtEntry {
        src: nic(&leaves.src),
        dst: nic(&leaves.dst),
        sport: leaves.src_port.to_be(),
        dport: leaves.dst_port.to_be(),
        backend_id: backend,
        flags: if dir == Direction::Reply { CtEntry::REPLY } else { 0 },
        ..CtEntry::default()
    }
}

/// A flow as the flow table holds it, which a restarted agent's worker adopts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinned {
    pub original: Tuple,
    pub reply: Tuple,
    pub backend: BackendId,
    /// Both directions are forwarded at the NIC.
    pub offloaded: bool,
    /// When (CLOCK_MONOTONIC, ns) the NIC last forwarded a packet of it (0: never).
    pub last_seen_ns: u64,
    /// What the NIC forwarded of it, both directions.
    pub packets: u64,
    pub bytes: u64,
}

/// The flows in a flow table's `entries`, each found by the entry of its replies (every flow
/// has one; it names the tuple they leave as, whose reverse is the original's); and the keys
/// of original directions whose flow has no reply entry (left by a crash between two writes),
/// for removal. `seen_ns` tells when an entry's last packet was forwarded, if one was.
pub fn pinned_flows(
    entries: &[(CtKey, CtEntry)],
    seen_ns: impl Fn(&CtEntry) -> Option<u64>,
) -> (Vec<Pinned>, Vec<CtKey>) {
    let originals: HashMap<CtKey, &CtEntry> =
        entries.iter().filter(|(_, e)| e.flags & CtEntry::REPLY == 0).map(|(k, e)| (*k, e)).collect();
    let mut matched = HashSet::new();
    let mut flows = Vec::new();
    for (key, e) in entries.iter().filter(|(_, e)| e.flags & CtEntry::REPLY != 0) {
        let reply = tuple(key);
        let original = leaves_as(key, e).reversed();
        let other = originals.get(&self::key(&original));
        matched.insert(self::key(&original));
        flows.push(Pinned {
            original,
            reply,
            backend: e.backend_id,
            offloaded: e.offloaded() && other.is_some_and(|o| o.offloaded()),
            last_seen_ns: [Some(e), other.copied()]
                .into_iter()
                .flatten()
                .filter_map(&seen_ns)
                .max()
                .unwrap_or(0),
            packets: e.packets + other.map_or(0, |o| o.packets),
            bytes: e.bytes + other.map_or(0, |o| o.bytes),
        });
    }
    let orphans = originals.into_keys().filter(|k| !matched.contains(k)).collect();
    (flows, orphans)
}

/// A key as a tuple.
fn tuple(key: &CtKey) -> Tuple {
    match key {
        CtKey::V4(k) => Tuple::new(
            Ipv4Addr::from(k.saddr).into(),
            Ipv4Addr::from(k.daddr).into(),
            k.proto,
            u16::from_be(k.sport),
            u16::from_be(k.dport),
        ),
        CtKey::V6(k) => Tuple::new(
            Ipv6Addr::from(k.saddr).into(),
            Ipv6Addr::from(k.daddr).into(),
            k.proto,
            u16::from_be(k.sport),
            u16::from_be(k.dport),
        ),
    }
}

/// The tuple a packet of the entry's direction (of `key`'s family) leaves as.
fn leaves_as(key: &CtKey, e: &CtEntry) -> Tuple {
    let (src, dst): (IpAddr, IpAddr) = match key {
        CtKey::V4(_) => {
            let v4 = |a: &[u8; 16]| IpAddr::from([a[0], a[1], a[2], a[3]]);
            (v4(&e.src), v4(&e.dst))
        }
        CtKey::V6(_) => (Ipv6Addr::from(e.src).into(), Ipv6Addr::from(e.dst).into()),
    };
    let protocol = match key {
        CtKey::V4(k) => k.proto,
        CtKey::V6(k) => k.proto,
    };
    Tuple::new(src, dst, protocol, u16::from_be(e.sport), u16::from_be(e.dport))
}

fn addr(a: &[u8; 16]) -> IpAddr {
    let a = Ipv6Addr::from(*a);
    a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use skiff_common::{conntrack::CtEntry, lb::BackendId, proto::ip};

    use super::*;
    use crate::{
        conntrack::{Conntrack, Timeouts},
        tables::{Neighbor, Tables},
    };

    /// A flow's table entries (its replies steered, or both directions offloaded) give back
    /// the flow; an original direction without its replies' entry is an orphan.
    #[test]
    fn the_flow_table_gives_back_its_flows() {
        let (client, vip, pod): (IpAddr, IpAddr, IpAddr) = (
            Ipv4Addr::new(198, 18, 0, 2).into(),
            Ipv4Addr::new(198, 19, 0, 10).into(),
            Ipv4Addr::new(198, 18, 128, 10).into(),
        );
        let v6: (IpAddr, IpAddr, IpAddr) = (
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
            Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10).into(),
            Ipv6Addr::new(0xfd00, 0x128, 0, 0, 0, 0, 0, 0x10).into(),
        );
        let hop = Neighbor { port: 0, src_mac: [2; 6], dst_mac: [4; 6] };
        let tables = Tables {
            next_hops: [(client, hop), (pod, hop), (v6.0, hop), (v6.2, hop)].into_iter().collect(),
            ..Tables::default()
        };
        let mut ct = Conntrack::new(8, Timeouts::default());
        let mut entries = Vec::new();
        let mut expected = Vec::new();
        for (n, (c, v, p)) in [(client, vip, pod), v6].into_iter().enumerate() {
            let original = Tuple::new(c, v, ip::UDP, 5000, 53);
            let reply = Tuple::new(p, c, ip::UDP, 5353, 5000);
            let id = ct.insert(original, reply, 0, BackendId::NONE, 0).unwrap();
            ct.update(id, Direction::Reply, 0, 60, 0);
            let e = ct.get(id).unwrap();
            let offloaded = n == 0;
            if offloaded {
                let Placement::Nic([(ko, mut eo), (kr, er)]) = placement(e, &tables, |_| Some(1)) else {
                    panic!("established, with next hops")
                };
                eo.packets = 3;
                entries.extend([(ko, eo), (kr, er)]);
            } else {
                entries.push(to_worker(&original, &reply, BackendId::NONE));
            }
            expected.push((original, reply, offloaded, u64::from(offloaded) * 3));
        }
        let orphan = Tuple::new(client, vip, ip::UDP, 5001, 53);
        entries.push((key(&orphan), CtEntry { ifindex: 1, ..CtEntry::default() }));
        let (flows, orphans) = pinned_flows(&entries, |_| None);
        let got: Vec<_> = flows.iter().map(|f| (f.original, f.reply, f.offloaded, f.packets)).collect();
        assert_eq!(got, expected);
        assert_eq!(orphans, [key(&orphan)]);
    }
}
