//! Connection tracking: flow keys, the per-flow entry, and the TCP state it records.

use core::mem::offset_of;

use crate::lb::BackendId;

/// An IPv4 flow as seen in one direction: the key of [`CT_V4`](crate::maps::CT_V4).
/// Addresses and ports are in network byte order, copied straight from the packet; for ICMP
/// echo, `sport` holds the identifier and `dport` is 0. Aligned to its words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    /// IANA protocol number.
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey4>() == 16 && align_of::<CtKey4>() == 4);
const _: () = assert!(offset_of!(CtKey4, sport) == 8 && offset_of!(CtKey4, proto) == 12);

/// An IPv6 flow as seen in one direction: the key of [`CT_V6`](crate::maps::CT_V6), laid out
/// and ordered as [`CtKey4`].
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// IANA protocol number.
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey6>() == 40 && align_of::<CtKey6>() == 4);
const _: () = assert!(offset_of!(CtKey6, sport) == 32 && offset_of!(CtKey6, proto) == 36);

/// Directions of flows `CT_V4` (and `CT_V6`) hold: two per offloaded flow, one per flow the
/// worker keeps (its replies'), so room for half a million flows at the NIC.
pub const CT_CAPACITY: u32 = 1 << 20;

/// Slots of each family's flow cache, a power of two: 2^15 of [`CachedFlow`] are 3.5 MiB for
/// IPv4 and 4.3 MiB for IPv6.
pub const FLOW_CACHE_SLOTS: u32 = 1 << 15;

/// A slot of a flow cache (`FLOW_CACHE_V4`, `FLOW_CACHE_V6`): a direction of the flow table
/// held where the XDP program reads it without a call (an array lookup the verifier inlines,
/// where a hash lookup is a third of a forward's cost). A direction whose slot
/// ([`cache_slot`]) another holds lives in `CT_V4`/`CT_V6` instead; never in both.
///
/// The worker that owns the direction writes the slot in place, under `seq`, a sequence
/// lock: odd while a write is under way. The XDP program copies the slot and uses the copy
/// only if `seq` was even and unchanged across it. An all-zero key is a free slot (no frame
/// carries protocol 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CachedFlow<K> {
    pub seq: u32,
    pub _pad: u32,
    pub key: K,
    pub entry: CtEntry,
}
const _: () = assert!(size_of::<CachedFlow<CtKey4>>() == 112 && size_of::<CachedFlow<CtKey6>>() == 136);

/// The flow-cache slot of `key` (a [`CtKey4`] or [`CtKey6`]): its 32-bit words each times
/// an odd constant of its own (multiplies that run side by side), XORed, mixed once more; the
/// top bits. Collisions only cost speed.
pub fn cache_slot<K: Copy>(key: &K) -> u32 {
    let words = (key as *const K).cast::<u32>();
    let (mut h, mut odd) = (0u32, 0x9e37_79b1u32);
    for i in 0..size_of::<K>() / 4 {
        // SAFETY: a word within `key`, read unaligned.
        let word = unsafe { words.add(i).read_unaligned() };
        h ^= word.wrapping_mul(odd);
        odd = odd.wrapping_add(1 << 20);
    }
    (h ^ h >> 15).wrapping_mul(0x85eb_ca6b) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros())
}

/// A key's fields with the protocol and the padding as one word: the BPF backend zeroes the
/// padding of a key built field by field with a call to `memset`, a third of a forward's cost.
#[repr(C)]
struct KeyWords<const N: usize> {
    saddr: [u8; N],
    daddr: [u8; N],
    ports: [u8; 4],
    proto: u32,
}

impl<const N: usize> KeyWords<N> {
    const fn new(saddr: [u8; N], sport: u16, daddr: [u8; N], dport: u16, proto: u8) -> Self {
        let [s, d] = [sport.to_be_bytes(), dport.to_be_bytes()];
        KeyWords {
            saddr,
            daddr,
            ports: [s[0], s[1], d[0], d[1]],
            proto: u32::from_ne_bytes([proto, 0, 0, 0]),
        }
    }
}

/// A key of either family (not a map type itself: the maps are per family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtKey {
    V4(CtKey4),
    V6(CtKey6),
}

impl CtKey4 {
    /// The key of a flow from `saddr:sport` to `daddr:dport` (ports in host order).
    pub const fn new(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16, proto: u8) -> Self {
        // SAFETY: the fields' bytes in order, any of which is valid.
        unsafe {
            core::mem::transmute::<KeyWords<4>, CtKey4>(KeyWords::new(saddr, sport, daddr, dport, proto))
        }
    }

    /// The same flow seen from the other end: the key of its replies.
    #[must_use]
    pub const fn reversed(self) -> Self {
        CtKey4 { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport, ..self }
    }
}

impl CtKey6 {
    /// The key of a flow from `[saddr]:sport` to `[daddr]:dport` (ports in host order).
    pub const fn new(saddr: [u8; 16], sport: u16, daddr: [u8; 16], dport: u16, proto: u8) -> Self {
        // SAFETY: as in `CtKey4::new`.
        unsafe {
            core::mem::transmute::<KeyWords<16>, CtKey6>(KeyWords::new(saddr, sport, daddr, dport, proto))
        }
    }

    /// The same flow seen from the other end: the key of its replies.
    #[must_use]
    pub const fn reversed(self) -> Self {
        CtKey6 { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport, ..self }
    }
}

/// One direction of a tracked flow as the XDP program sees it arrive: the value of `CT_V4`
/// and `CT_V6`, keyed by the direction's tuple. A worker writes it; the XDP program either
/// hands the direction's packets to the worker (`ifindex` 0: a new flow, a flow closing, one
/// the NIC cannot forward) or forwards them itself: rewritten to [`CtEntry::src`] …
/// [`CtEntry::dport`] with the checksum deltas given, TTL or hop limit decremented, new MACs,
/// out of `ifindex` (the flow table at the NIC, as the kernel's flowtable or Katran's). Then it
/// records the time and counts; the worker stays the authority and reads them.
///
/// Addresses and ports are network byte order (IPv4 in the first 4 bytes); times, counters
/// and deltas host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtEntry {
    /// The kernel's tick count (`bpf_jiffies64`) at the last packet the XDP program
    /// forwarded; 0: none. `skiff_xdp::Jiffies` tells the time it was.
    pub last_seen: u64,
    /// Packets and bytes the XDP program forwarded.
    pub packets: u64,
    pub bytes: u64,
    /// The tuple a packet of this direction leaves as (after NAT).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Added to the IPv4 header checksum (the addresses and the TTL's decrement) and to the
    /// L4 checksum (pseudo-header and ports), RFC 1624.
    pub ip_csum: u16,
    pub l4_csum: u16,
    /// The next hop's MACs.
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The interface the XDP program sends the packet out of; 0: the worker does.
    pub ifindex: u32,
    /// The backend chosen for a service flow; `BackendId::NONE` otherwise.
    pub backend_id: BackendId,
    /// [`CtEntry::REPLY`].
    pub flags: u8,
    /// The flow's [`TcpState`] code when the worker wrote the entry.
    pub tcp_state: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtEntry>() == 88 && align_of::<CtEntry>() == 8);

impl CtEntry {
    /// The key is the flow's reply direction (else its original one).
    pub const REPLY: u8 = 1 << 0;

    /// Whether the XDP program forwards this direction itself.
    pub const fn offloaded(&self) -> bool {
        self.ifindex != 0
    }

    /// The recorded TCP state; `None` for a code this version does not know.
    pub const fn tcp_state(&self) -> Option<TcpState> {
        TcpState::from_u8(self.tcp_state)
    }
}

code_enum! {
    /// TCP state of a tracked flow. Codes follow Linux's `enum tcp_conntrack`, so they read the
    /// same as `conntrack -L` states.
    pub enum TcpState: u8, fn from_u8 {
        None = 0, "none", "No TCP state: not TCP, or nothing seen yet.";
        SynSent = 1, "syn-sent", "The originator's SYN has been seen.";
        SynRecv = 2, "syn-recv", "The responder's SYN-ACK has been seen.";
        Established = 3, "established", "The handshake has completed.";
        FinWait = 4, "fin-wait", "One side has sent FIN.";
        CloseWait = 5, "close-wait", "The first FIN has been acknowledged.";
        LastAck = 6, "last-ack", "Both sides have sent FIN; the last ACK is pending.";
        TimeWait = 7, "time-wait", "Both FINs are acknowledged; lingering for late segments.";
        Closed = 8, "closed", "Reset or closed; the entry expires shortly.";
    }
}

code_enum! {
    /// Where the XDP program sent a packet of a tracked flow: the index into
    /// [`FLOW_COUNTS`](crate::maps::FLOW_COUNTS).
    pub enum FlowPath: u32, fn from_u32 {
        Forwarded = 0, "forwarded", "Rewritten and sent out at the NIC (XDP_REDIRECT), no worker involved.";
        Worker = 1, "worker", "To the worker: a flow it has not offloaded (new, closing, or kept on its path).";
        TcpControl = 2, "tcp-control", "To the worker: a SYN, FIN or RST of an offloaded flow, whose TCP state the worker follows.";
        NotSimple = 3, "not-simple", "To the worker: a VLAN tag, IP options, IPv6 extension headers, a fragment or a TTL running out.";
        NoDevice = 4, "no-device", "To the worker: the output interface cannot take XDP frames (not in TX_PORTS).";
        Busy = 5, "busy", "To the worker: a worker was writing the flow's cache slot (or was killed while it did).";
    }
}

pod!(CtKey4, CtKey6, CtEntry);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_paths() {
        FlowPath::assert_well_formed();
    }

    #[test]
    fn tcp_states_follow_linux() {
        TcpState::assert_well_formed();
        assert_eq!(TcpState::Established.code(), 3);
        assert_eq!(TcpState::TimeWait.code(), 7);
        assert_eq!(TcpState::Closed.code(), 8);
        let entry = CtEntry { tcp_state: 3, ..CtEntry::default() };
        assert_eq!(entry.tcp_state(), Some(TcpState::Established));
        assert_eq!(CtEntry { tcp_state: 200, ..entry }.tcp_state(), None);
    }

    /// A key written field by field.
    fn by_fields() -> CtKey4 {
        CtKey4 {
            saddr: [198, 18, 0, 1],
            daddr: [198, 18, 0, 2],
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        }
    }

    #[test]
    fn keys_built_from_words_hold_their_fields() {
        assert_eq!(CtKey4::new([198, 18, 0, 1], 40000, [198, 18, 0, 2], 80, 6), by_fields());
        let (a, b) = ([0xfd, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [0xfd; 16]);
        let fields6 =
            CtKey6 { saddr: a, daddr: b, sport: 1u16.to_be(), dport: 53u16.to_be(), proto: 17, _pad: [0; 3] };
        assert_eq!(CtKey6::new(a, 1, b, 53, 17), fields6);
    }

    #[test]
    fn cache_slots_spread_and_are_in_range() {
        let slots: std::collections::HashSet<u32> = (0..4096u16)
            .map(|port| cache_slot(&CtKey4::new([198, 18, 0, 1], port, [198, 19, 0, 10], 80, 6)))
            .collect();
        assert!(slots.iter().all(|&s| s < FLOW_CACHE_SLOTS));
        // 4096 keys into 2^15 slots: about 3850 distinct if spread at random; a hash that
        // ignored the port would give 1.
        assert!(slots.len() > 3500, "{} distinct slots", slots.len());
        assert_ne!(
            cache_slot(&CtKey4::new([1, 2, 3, 4], 5, [6, 7, 8, 9], 10, 6)),
            cache_slot(&CtKey4::new([6, 7, 8, 9], 10, [1, 2, 3, 4], 5, 6))
        );
    }

    #[test]
    fn reversed_swaps_ends() {
        let key = by_fields();
        let reply = key.reversed();
        assert_eq!((reply.saddr, reply.dport), (key.daddr, key.sport));
        assert_eq!(reply.reversed(), key);
        let key6 = CtKey6 { saddr: [1; 16], sport: 1, proto: 17, ..CtKey6::default() };
        assert_eq!((key6.reversed().daddr, key6.reversed().dport), ([1; 16], 1));
        assert_eq!(key6.reversed().reversed(), key6);
    }
}
