//! Which worker owns a flow, and the source ports a worker may give flows it masquerades or
//! whose client port clashes with another flow's.

use skiff_common::DropReason;

use super::{Own, opens};
use crate::{
    flow::{Tuple, mapped},
    hash::hash64,
    tables::Tables,
};

/// The seed of the hash that gives a flow's owner (any fixed value other than the flow hash's
/// 0: every worker must agree).
const OWNER_SEED: u64 = 1;

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

impl Own {
    /// The worker owning the flow of `tuple`, a packet this worker's conntrack does not know,
    /// if that is another worker. A tracked flow that is no service's (under policy, or
    /// through the overlay) is untranslated: its owner follows from its two endpoints
    /// whichever way a packet goes.
    pub(super) fn owner_elsewhere(
        &self,
        tables: &Tables,
        tuple: &Tuple,
        to_frontend: bool,
        untranslated: bool,
    ) -> Option<u16> {
        let owner = if untranslated && !to_frontend {
            self.owner_of_pair(tuple)
        } else {
            self.owner(tables, tuple, to_frontend)
        };
        (owner != self.partition.index).then_some(owner)
    }

    /// The owner of an untranslated flow: by its two endpoints, in a fixed order.
    fn owner_of_pair(&self, tuple: &Tuple) -> u16 {
        let Partition { index, count } = self.partition;
        if count <= 1 {
            return index;
        }
        let mut ends = [[0u8; 18]; 2];
        for (end, (addr, port)) in
            ends.iter_mut().zip([(tuple.src, tuple.src_port), (tuple.dst, tuple.dst_port)])
        {
            end[..16].copy_from_slice(&addr);
            end[16..].copy_from_slice(&port.to_be_bytes());
        }
        ends.sort_unstable();
        u16::try_from(hash64(ends.as_flattened(), OWNER_SEED) % u64::from(count)).unwrap_or(0)
    }

    /// The worker owning the flow of `tuple`: by the client's endpoint (the source of a packet
    /// to a frontend, otherwise the destination), or by the port of a masqueraded reply.
    pub(super) fn owner(&self, tables: &Tables, tuple: &Tuple, to_frontend: bool) -> u16 {
        let Partition { index, count } = self.partition;
        if count <= 1 {
            return index;
        }
        let node = &tables.node;
        let masqueraded_reply = !to_frontend
            && SNAT_PORTS.contains(&tuple.dst_port)
            && [node.masquerade_v4, node.masquerade_v6].into_iter().flatten().any(|a| mapped(a) == tuple.dst);
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
    pub(super) fn resolve_clash(
        &mut self,
        tables: &Tables,
        other: u32,
        reply: Tuple,
        tcp_flags: u8,
        flow_hash: u64,
    ) -> Result<Tuple, DropReason> {
        if opens(tcp_flags) && self.conntrack.finished(other) {
            self.conntrack.remove(other);
            return Ok(reply);
        }
        Ok(Tuple { dst_port: self.free_port(tables, &reply, flow_hash)?, ..reply })
    }

    /// A port of `SNAT_PORTS` for the client side of `reply` (its destination port) that no
    /// flow's reply uses and whose replies this worker owns: from the flow's hash on, the first
    /// such port (nearly always one of the first `count` tried).
    pub(super) fn free_port(
        &self,
        tables: &Tables,
        reply: &Tuple,
        flow_hash: u64,
    ) -> Result<u16, DropReason> {
        let (first, n) = (*SNAT_PORTS.start(), SNAT_PORTS.len() as u64);
        let start = flow_hash % n;
        (0..n)
            .filter_map(|k| u16::try_from((start + k) % n).ok())
            .map(|offset| Tuple { dst_port: first + offset, ..*reply })
            .find(|t| {
                self.owner(tables, t, false) == self.partition.index && self.conntrack.lookup(t).is_none()
            })
            .map(|t| t.dst_port)
            .ok_or(DropReason::NatPortExhausted)
    }
}
