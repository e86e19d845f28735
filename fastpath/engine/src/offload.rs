//! What a worker writes into the XDP program's flow table (`CT_V4`, `CT_V6`): for a new flow,
//! an entry that steers its replies to the worker; for an established one, each direction's
//! translation, which the XDP program then applies itself (see
//! [`skiff_common::conntrack::CtEntry`]). Each entry is keyed by the tuple its direction
//! arrives with.

use std::net::{IpAddr, Ipv6Addr};

use skiff_common::{
    conntrack::{CtEntry, CtKey, CtKey4, CtKey6, TcpState},
    lb::BackendId,
    proto::ip,
};

use crate::{
    conntrack::Entry,
    flow::{Direction, Tuple},
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

/// Both directions of `e` as the NIC forwards them, keyed by how each arrives: `None` when
/// the flow is not [`eligible`] or a direction has no next hop on an interface the XDP
/// program can send out of (`ifindex` of a port; a pod on another node, whose frames a worker
/// encapsulates, has none).
pub fn directions(
    e: &Entry,
    tables: &Tables,
    ifindex: impl Fn(usize) -> Option<u32>,
) -> Option<[(CtKey, CtEntry); 2]> {
    if !eligible(e) || !backend_serves(e, tables) {
        return None;
    }
    let direction = |dir: Direction| {
        let arrives = match dir {
            Direction::Original => &e.original,
            Direction::Reply => &e.reply,
        };
        let to = addr(&e.other(dir).src);
        if tables.overlay.as_deref().is_some_and(|o| o.remote_node(to).is_some()) {
            return None;
        }
        let hop = tables.next_hop(to)?;
        Some((key(arrives), entry(e, dir, ifindex(hop.port)?, hop.src_mac, hop.dst_mac)))
    };
    Some([direction(Direction::Original)?, direction(Direction::Reply)?])
}

/// Whether a service flow's backend is still one of its service's (terminating or not): a
/// flow whose backend was removed goes back to the worker.
fn backend_serves(e: &Entry, tables: &Tables) -> bool {
    if e.backend == BackendId::NONE {
        return true;
    }
    let o = &e.original;
    let frontend = Frontend { addr: addr(&o.dst), port: o.dst_port, protocol: o.protocol };
    tables.services.get(&frontend).is_some_and(|s| s.pool.backends.contains_key(&e.backend))
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

fn addr(a: &[u8; 16]) -> IpAddr {
    let a = Ipv6Addr::from(*a);
    a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
}
