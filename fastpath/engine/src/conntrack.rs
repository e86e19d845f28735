//! Connection tracking: the flows a worker has seen, both directions of each, their TCP state
//! and when they expire.
//!
//! An entry has an original tuple (as the first packet had it) and a reply tuple (as its
//! replies will have it: after NAT, the backend's address and port), both keys of one table
//! pointing at it. The table is bounded: when it is full a new flow may evict an expired or a
//! not-yet-established flow found within a few probes, but never an established one; failing
//! that, the new flow is refused (`DropReason::CtTableFull`). Expiry runs incrementally
//! ([`Conntrack::gc_step`], a few slots per receive batch), so no sweep ever pauses a worker.
//! No two flows share a reply tuple: an insert whose reply tuple is taken is refused with the
//! flow that has it, for the engine to resolve the clash.

use hashbrown::{HashMap, hash_map::Entry as Key};
use skiff_common::{conntrack::TcpState, lb::BackendId, proto::ip};
use skiff_wire::tcp::TcpFlags;

use crate::{
    flow::{Direction, Tuple, masqueraded},
    nat::Rewrite,
};

/// Lifetimes after the last packet, in seconds (Cilium's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: u64,
    pub tcp_syn: u64,
    pub tcp_closing: u64,
    pub other: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { tcp_established: 6 * 3600, tcp_syn: 60, tcp_closing: 10, other: 60 }
    }
}

/// A tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub original: Tuple,
    pub reply: Tuple,
    pub state: TcpState,
    /// Seconds (of the caller's clock) at the last packet.
    pub last_seen: u64,
    pub seen_reply: bool,
    /// The backend a service flow was given (`BackendId::NONE` otherwise).
    pub backend: BackendId,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Some: both directions are forwarded at the NIC by the XDP program's flow table, which
    /// holds the entries of this digest ([`crate::offload::digest`]; 0: unknown, written by an
    /// agent before a restart). Their packets reach the worker only when unusual (see
    /// `skiff_common::conntrack::FlowPath`), and `last_seen` is refreshed from the table
    /// before the flow may expire. None: on the worker path.
    pub nic: Option<u64>,
    /// The NAT of each direction, by `Direction`.
    rewrites: [Rewrite; 2],
}

impl Entry {
    /// Whether both directions are forwarded at the NIC.
    #[inline]
    pub fn offloaded(&self) -> bool {
        self.nic.is_some()
    }

    #[inline]
    pub fn masqueraded(&self) -> bool {
        masqueraded(&self.original, &self.reply)
    }

    /// How a packet going in `dir` is translated.
    #[inline]
    pub fn rewrite(&self, dir: Direction) -> &Rewrite {
        &self.rewrites[dir as usize]
    }

    /// The tuple of the direction opposite to `dir`: a packet going in `dir` leaves as its
    /// reverse.
    #[inline]
    pub fn other(&self, dir: Direction) -> &Tuple {
        match dir {
            Direction::Original => &self.reply,
            Direction::Reply => &self.original,
        }
    }
}

/// Why a flow could not be tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("the connection-tracking table is full of flows it may not evict ({0})")]
    Full(usize),
    /// Replies with this tuple already belong to flow `0`.
    #[error("flow {0} already has this reply tuple")]
    ReplyTaken(u32),
}

/// The table of one worker. `now` is always the caller's clock in seconds.
pub struct Conntrack {
    keys: HashMap<Tuple, (u32, Direction)>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    capacity: usize,
    timeouts: Timeouts,
    /// Where the incremental sweep and the eviction probes continue.
    cursor: usize,
    /// Flows removed since the last [`Conntrack::drain_ended`] (bounded: beyond it, their
    /// entries stay in the XDP program's flow table, whose replies then reach the worker,
    /// which knows no flow of them and passes them).
    ended: Vec<Entry>,
    census: Census,
}

/// Tracked flows by family (IPv4, IPv6), and of them the masqueraded ones, each holding a
/// NAT port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub flows: [u64; 2],
    pub nat_ports: [u64; 2],
}

impl Census {
    fn count(&mut self, e: &Entry, add: bool) {
        let family = usize::from(std::net::Ipv6Addr::from(e.original.src).to_ipv4_mapped().is_none());
        let step = |n: &mut u64| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        step(&mut self.flows[family]);
        if e.masqueraded() {
            step(&mut self.nat_ports[family]);
        }
    }

    pub fn add(&mut self, o: &Census) {
        for i in 0..2 {
            self.flows[i] += o.flows[i];
            self.nat_ports[i] += o.nat_ports[i];
        }
    }
}

/// Ended flows remembered between two drains (a round removes `GC_PER_ROUND` expired flows
/// and, per new flow, at most one it evicts and one finished flow it replaces).
const ENDED_PER_ROUND: usize = 256;

/// Slots an insert into a full table examines for a victim.
const EVICTION_PROBES: usize = 16;
const TCP: u8 = ip::TCP;
const FIN: u8 = TcpFlags::FIN.0;
const SYN: u8 = TcpFlags::SYN.0;
const RST: u8 = TcpFlags::RST.0;
const ACK: u8 = TcpFlags::ACK.0;

impl Conntrack {
    /// A table for at most `capacity` flows, allocated up front (no allocation per packet).
    pub fn new(capacity: usize, timeouts: Timeouts) -> Conntrack {
        Conntrack {
            keys: HashMap::with_capacity(capacity * 2),
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            capacity,
            timeouts,
            cursor: 0,
            ended: Vec::with_capacity(ENDED_PER_ROUND),
            census: Census::default(),
        }
    }

    pub fn census(&self) -> Census {
        self.census
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flow a packet with this tuple belongs to, and its direction.
    #[inline]
    pub fn lookup(&self, tuple: &Tuple) -> Option<(u32, Direction)> {
        self.keys.get(tuple).copied()
    }

    pub fn get(&self, id: u32) -> Option<&Entry> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    /// Starts tracking a flow seen first as `original` (a tuple no flow has), whose replies
    /// will be `reply`, unless another flow's replies already have that tuple. A TCP flow's
    /// state follows its first packet's `tcp_flags`.
    pub fn insert(
        &mut self,
        original: Tuple,
        reply: Tuple,
        tcp_flags: u8,
        backend: BackendId,
        now: u64,
    ) -> Result<u32, InsertError> {
        if self.len() >= self.capacity {
            self.evict_one(now).ok_or(InsertError::Full(self.capacity))?;
        }
        // One probe finds a clash and reserves the reply's place.
        let reply_key = match self.keys.entry(reply) {
            Key::Occupied(taken) => return Err(InsertError::ReplyTaken(taken.get().0)),
            Key::Vacant(free) => free,
        };
        let state = if original.protocol != TCP {
            TcpState::None
        } else if tcp_flags & SYN != 0 && tcp_flags & ACK == 0 {
            TcpState::SynSent
        } else {
            // Picked up mid-stream (an agent restart, a flow from before it): trust it.
            TcpState::Established
        };
        let entry = Entry {
            original,
            reply,
            state,
            last_seen: now,
            seen_reply: false,
            backend,
            packets: [0; 2],
            bytes: [0; 2],
            nic: None,
            rewrites: [
                Rewrite::new(&original, &reply.reversed()),
                Rewrite::new(&reply, &original.reversed()),
            ],
        };
        self.census.count(&entry, true);
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(entry);
                id
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1).expect("capacity fits u32")
            }
        };
        reply_key.insert((id, Direction::Reply));
        self.keys.insert(original, (id, Direction::Original));
        Ok(id)
    }

    /// Accounts a packet of flow `id` in `dir` and advances its TCP state; returns the state.
    #[inline]
    pub fn update(&mut self, id: u32, dir: Direction, tcp_flags: u8, len: usize, now: u64) -> TcpState {
        let Some(e) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return TcpState::Closed;
        };
        let d = dir as usize;
        e.packets[d] += 1;
        e.bytes[d] += len as u64;
        e.last_seen = now;
        if dir == Direction::Reply {
            e.seen_reply = true;
        }
        if e.original.protocol == TCP {
            e.state = next_state(e.state, dir, tcp_flags);
        }
        e.state
    }

    /// Whether flow `id` is a finished TCP connection (closed both ways or reset): a new SYN
    /// on one of its tuples starts a new connection in its place, as in Linux's conntrack.
    #[inline]
    pub fn finished(&self, id: u32) -> bool {
        self.get(id).is_some_and(|e| matches!(e.state, TcpState::TimeWait | TcpState::Closed))
    }

    /// Whether flow `id` has outlived its timeout at `now`.
    fn expired(&self, e: &Entry, now: u64) -> bool {
        let timeout = match e.state {
            TcpState::None => self.timeouts.other,
            TcpState::SynSent | TcpState::SynRecv => self.timeouts.tcp_syn,
            TcpState::Established => self.timeouts.tcp_established,
            _ => self.timeouts.tcp_closing,
        };
        now.saturating_sub(e.last_seen) > timeout
    }

    /// Examines up to `budget` slots from where the last step stopped and removes the flows
    /// that expired; returns how many it removed. An offloaded flow that looks expired asks
    /// `nic_last_seen` first when the NIC last forwarded a packet of it (the caller's clock).
    pub fn gc_step(
        &mut self,
        now: u64,
        budget: usize,
        mut nic_last_seen: impl FnMut(&Entry) -> Option<u64>,
    ) -> usize {
        let mut removed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            self.cursor = (self.cursor + 1) % self.slots.len();
            let id = self.cursor;
            let Some(e) = self.slots[id].as_ref() else { continue };
            if !self.expired(e, now) {
                continue;
            }
            if e.offloaded()
                && let Some(seen) = nic_last_seen(e)
            {
                let e = self.slots[id].as_mut().expect("just read");
                e.last_seen = e.last_seen.max(seen);
                if !self.expired(self.slots[id].as_ref().expect("just read"), now) {
                    continue;
                }
            }
            self.remove_slot(id);
            removed += 1;
        }
        removed
    }

    /// Restores what an adopted flow (found in the XDP program's flow table after a restart)
    /// had: forwarded at the NIC or not (then it has seen a reply), and its last packet.
    pub fn restore(&mut self, id: u32, offloaded: bool, last_seen: u64) {
        if let Some(e) = self.slots.get_mut(id as usize).and_then(Option::as_mut) {
            (e.nic, e.seen_reply, e.last_seen) = (offloaded.then_some(0), offloaded, last_seen);
        }
    }

    /// Marks flow `id` as forwarded at the NIC with entries of digest `nic`, or no longer
    /// (None).
    pub fn set_nic(&mut self, id: u32, nic: Option<u64>) {
        if let Some(e) = self.slots.get_mut(id as usize).and_then(Option::as_mut) {
            e.nic = nic;
        }
    }

    /// Asks `f` of every offloaded flow where it is now (new tables: its backend or next hop
    /// may be gone or moved), as [`Entry::nic`] says it.
    pub fn recheck_offloaded(&mut self, mut f: impl FnMut(&Entry) -> Option<u64>) {
        for e in self.slots.iter_mut().flatten().filter(|e| e.offloaded()) {
            e.nic = f(e);
        }
    }

    /// Frees one slot for a new flow: the first evictable flow within `EVICTION_PROBES` slots.
    /// Established flows (and answered non-TCP ones) are never evicted.
    fn evict_one(&mut self, now: u64) -> Option<()> {
        for _ in 0..EVICTION_PROBES.min(self.slots.len()) {
            self.cursor = (self.cursor + 1) % self.slots.len();
            let id = self.cursor;
            // Expired flows, handshakes and closing TCP flows, and unanswered non-TCP flows.
            let evictable = self.slots[id].as_ref().is_some_and(|e| {
                self.expired(e, now)
                    || match e.state {
                        TcpState::Established => false,
                        TcpState::None => !e.seen_reply,
                        _ => true,
                    }
            });
            if evictable {
                self.remove_slot(id);
                return Some(());
            }
        }
        None
    }

    /// Hands each flow removed (expired, evicted or removed) since the last call to `f`: the
    /// worker withdraws it from the XDP program's flow table.
    pub fn drain_ended(&mut self, mut f: impl FnMut(&Entry)) {
        for e in self.ended.drain(..) {
            f(&e);
        }
    }

    /// Stops tracking flow `id`; it is reported by the next `drain_ended`.
    pub fn remove(&mut self, id: u32) {
        self.remove_slot(id as usize);
    }

    fn remove_slot(&mut self, slot: usize) {
        if let Some(e) = self.slots.get_mut(slot).and_then(Option::take) {
            self.census.count(&e, false);
            self.keys.remove(&e.original);
            self.keys.remove(&e.reply);
            if self.ended.len() < ENDED_PER_ROUND {
                self.ended.push(e);
            }
            self.free.push(u32::try_from(slot).expect("capacity fits u32"));
        }
    }
}

/// The TCP state after a packet with `flags` in `dir` (a compact form of Linux's table).
fn next_state(state: TcpState, dir: Direction, flags: u8) -> TcpState {
    use TcpState::*;
    if flags & RST != 0 {
        return Closed;
    }
    match (state, dir) {
        (SynSent, Direction::Reply) if flags & SYN != 0 && flags & ACK != 0 => SynRecv,
        (SynRecv, Direction::Original) if flags & ACK != 0 && flags & FIN == 0 => Established,
        (Established | SynRecv, _) if flags & FIN != 0 => FinWait,
        (FinWait, _) if flags & FIN != 0 => TimeWait,
        (s, _) => s,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn flow(n: u16) -> (Tuple, Tuple) {
        let client: IpAddr = Ipv4Addr::new(198, 18, 0, 2).into();
        let vip: IpAddr = Ipv4Addr::new(198, 19, 0, 10).into();
        let backend: IpAddr = Ipv4Addr::new(198, 18, 128, 10).into();
        (Tuple::new(client, vip, TCP, 40000 + n, 80), Tuple::new(backend, client, TCP, 8080, 40000 + n))
    }

    /// Flows by family and NAT ports, as flows come and go.
    #[test]
    fn the_census_follows_inserts_and_removals() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let (orig, reply) = flow(1);
        let plain = ct.insert(orig, reply, SYN, BackendId(3), 0).unwrap();
        let (orig, reply) = flow(2);
        let node: IpAddr = Ipv4Addr::new(198, 18, 0, 1).into();
        let snat = Tuple { dst: Tuple::new(node, node, TCP, 0, 0).dst, dst_port: 61000, ..reply };
        ct.insert(orig, snat, SYN, BackendId(3), 0).unwrap();
        let v6 = |a: u16| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, a]);
        ct.insert(
            Tuple::new(v6(1), v6(2), TCP, 1, 2),
            Tuple::new(v6(2), v6(1), TCP, 2, 1),
            SYN,
            BackendId::NONE,
            0,
        )
        .unwrap();
        assert_eq!(ct.census(), Census { flows: [2, 1], nat_ports: [1, 0] });
        ct.remove(plain);
        assert_eq!(ct.census(), Census { flows: [1, 1], nat_ports: [1, 0] });
    }

    #[test]
    fn handshake_to_close_and_both_directions_find_the_entry() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let (orig, reply) = flow(1);
        let id = ct.insert(orig, reply, SYN, BackendId(3), 0).unwrap();
        assert_eq!(ct.lookup(&reply), Some((id, Direction::Reply)));
        assert_eq!(ct.update(id, Direction::Original, SYN, 60, 0), TcpState::SynSent);
        assert_eq!(ct.update(id, Direction::Reply, SYN | ACK, 60, 0), TcpState::SynRecv);
        assert_eq!(ct.update(id, Direction::Original, ACK, 52, 1), TcpState::Established);
        assert_eq!(ct.update(id, Direction::Original, FIN | ACK, 52, 2), TcpState::FinWait);
        assert_eq!(ct.update(id, Direction::Reply, FIN | ACK, 52, 2), TcpState::TimeWait);
        let e = ct.get(id).unwrap();
        assert_eq!((e.packets, e.seen_reply, e.backend), ([3, 2], true, BackendId(3)));
    }

    #[test]
    fn timeouts_follow_the_state() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let (o1, r1) = flow(1);
        let (o2, r2) = flow(2);
        let syn = ct.insert(o1, r1, SYN, BackendId::NONE, 0).unwrap();
        let est = ct.insert(o2, r2, ACK, BackendId::NONE, 0).unwrap();
        assert_eq!(ct.gc_step(61, 8, |_| None), 1, "the SYN-only flow expires after 60 s");
        let mut ended = Vec::new();
        ct.drain_ended(|e| ended.push(e.reply));
        assert_eq!(ended.len(), 1, "its reply tuple is reported once");
        assert!(ct.get(syn).is_none() && ct.lookup(&o1).is_none() && ct.lookup(&r1).is_none());
        assert_eq!(ct.gc_step(6 * 3600, 8, |_| None), 0);
        assert_eq!(ct.gc_step(6 * 3600 + 1, 8, |_| None), 1);
        assert!(ct.get(est).is_none());
    }

    /// An offloaded flow lives as long as the NIC forwards its packets, and expires by the
    /// NIC's last packet once it stops.
    #[test]
    fn an_offloaded_flow_expires_by_the_nics_last_packet() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let (o, r) = flow(1);
        let udp = |t: Tuple| Tuple { protocol: ip::UDP, ..t };
        let (o, r) = (udp(o), udp(r));
        let id = ct.insert(o, r, 0, BackendId::NONE, 0).unwrap();
        ct.update(id, Direction::Reply, 0, 60, 0);
        ct.set_nic(id, Some(1));
        let mut asked = 0;
        assert_eq!(
            ct.gc_step(61, 8, |_| {
                asked += 1;
                Some(50)
            }),
            0,
            "forwarded at 50 s"
        );
        assert_eq!((asked, ct.get(id).unwrap().last_seen), (1, 50));
        assert_eq!(ct.gc_step(100, 8, |_| None), 0, "not expired: nothing asked");
        assert_eq!(ct.gc_step(111, 8, |_| Some(50)), 1, "nothing since 50 s: expired at 111 s");
        let mut ended = Vec::new();
        ct.drain_ended(|e| ended.push((e.original, e.offloaded())));
        assert_eq!(ended, [(o, true)], "reported whole, for both its NIC entries to go");
        let id = ct.insert(o, r, 0, BackendId::NONE, 0).unwrap();
        ct.set_nic(id, Some(1));
        ct.recheck_offloaded(|e| (e.original != o).then_some(1));
        assert!(!ct.get(id).unwrap().offloaded(), "a recheck that says no takes it back");
    }

    #[test]
    fn a_full_table_evicts_unestablished_flows_never_established_ones() {
        let mut ct = Conntrack::new(4, Timeouts::default());
        for n in 0..3 {
            let (o, r) = flow(n);
            ct.insert(o, r, ACK, BackendId::NONE, 0).unwrap();
        }
        let (half_open, half_open_reply) = flow(3);
        ct.insert(half_open, half_open_reply, SYN, BackendId::NONE, 0).unwrap();
        ct.drain_ended(|_| {});
        // Full: the new flow takes the half-open flow's place, and only its.
        let (o, r) = flow(4);
        ct.insert(o, r, ACK, BackendId::NONE, 1).unwrap();
        assert_eq!(ct.lookup(&half_open), None, "the half-open flow was evicted");
        assert!(ct.lookup(&o).is_some() && ct.lookup(&r).is_some(), "the new flow is tracked");
        assert_eq!(ct.len(), 4);
        let mut ended = Vec::new();
        ct.drain_ended(|e| ended.push(e.reply));
        assert_eq!(ended, [half_open_reply], "it is withdrawn from the XDP program");
        // Now all four are established: a fifth is refused and they all still work.
        let (o, r) = flow(5);
        assert_eq!(ct.insert(o, r, SYN, BackendId::NONE, 1), Err(InsertError::Full(4)));
        for n in [0, 1, 2, 4] {
            assert!(ct.lookup(&flow(n).0).is_some(), "flow {n} still tracked");
        }
    }

    #[test]
    fn a_reset_or_a_close_both_ways_finishes_a_connection() {
        let mut ct = Conntrack::new(2, Timeouts::default());
        let (o, r) = flow(1);
        let reset = ct.insert(o, r, ACK, BackendId::NONE, 0).unwrap();
        assert!(!ct.finished(reset));
        assert_eq!(ct.update(reset, Direction::Reply, RST, 40, 0), TcpState::Closed);
        assert!(ct.finished(reset));
        let (o, r) = flow(2);
        let closed = ct.insert(o, r, ACK, BackendId::NONE, 0).unwrap();
        ct.update(closed, Direction::Original, FIN | ACK, 52, 0);
        assert!(!ct.finished(closed), "half closed: the other side may still send");
        ct.update(closed, Direction::Reply, FIN | ACK, 52, 0);
        assert!(ct.finished(closed));
        ct.remove(closed);
        assert!(ct.lookup(&o).is_none() && ct.lookup(&r).is_none());
        let mut ended = Vec::new();
        ct.drain_ended(|e| ended.push(e.reply));
        assert_eq!(ended, [r]);
    }
}
