//! Connection tracking: flow keys, the per-flow entry, and the TCP state it records.

use core::mem::offset_of;

use crate::lb::BackendId;

/// An IPv4 flow as seen in one direction: the key of [`CT_V4`](crate::maps::CT_V4).
/// Addresses and ports are in network byte order, copied straight from the packet; for ICMP
/// echo, `sport` holds the identifier and `dport` is 0.
#[repr(C)]
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
const _: () = assert!(size_of::<CtKey4>() == 16 && align_of::<CtKey4>() == 2);
const _: () = assert!(offset_of!(CtKey4, sport) == 8 && offset_of!(CtKey4, proto) == 12);

/// An IPv6 flow as seen in one direction: the key of [`CT_V6`](crate::maps::CT_V6), laid out
/// and ordered as [`CtKey4`].
#[repr(C)]
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
const _: () = assert!(size_of::<CtKey6>() == 40 && align_of::<CtKey6>() == 2);
const _: () = assert!(offset_of!(CtKey6, sport) == 32 && offset_of!(CtKey6, proto) == 36);

/// A key of either family (not a map type itself: the maps are per family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtKey {
    V4(CtKey4),
    V6(CtKey6),
}

impl CtKey4 {
    /// The key of a flow from `saddr:sport` to `daddr:dport` (ports in host order).
    pub const fn new(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16, proto: u8) -> Self {
        CtKey4 { saddr, daddr, sport: sport.to_be(), dport: dport.to_be(), proto, _pad: [0; 3] }
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
        CtKey6 { saddr, daddr, sport: sport.to_be(), dport: dport.to_be(), proto, _pad: [0; 3] }
    }

    /// The same flow seen from the other end: the key of its replies.
    #[must_use]
    pub const fn reversed(self) -> Self {
        CtKey6 { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport, ..self }
    }
}

/// A tracked flow, for both families: the value of `CT_V4` and `CT_V6`. Counters, ids and
/// times are host order; `nat_addr` and `nat_port` are network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtEntry {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last packet; expiry runs from it.
    pub last_seen_ns: u64,
    /// Packets and bytes from the originator.
    pub orig_packets: u64,
    pub orig_bytes: u64,
    /// Packets and bytes from the responder.
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// The address that reverse NAT restores in replies: the service IP after DNAT, the
    /// original source after SNAT. IPv4 in the first 4 bytes, as in [`crate::addr`].
    pub nat_addr: [u8; 16],
    /// The backend chosen for a DNAT flow; `BackendId::NONE` otherwise.
    pub backend_id: BackendId,
    /// The interface the flow arrived on, for sending replies back out of it.
    pub ifindex: u32,
    /// The port that reverse NAT restores, beside `nat_addr`.
    pub nat_port: u16,
    /// The service frontend this flow was load-balanced through (`ServiceValue::rev_nat_index`).
    pub rev_nat_index: u16,
    /// A [`TcpState`] code.
    pub tcp_state: u8,
    /// `CtEntry::SEEN_REPLY` and the other `CtEntry` flag constants.
    pub flags: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtEntry>() == 72 && align_of::<CtEntry>() == 8);

impl CtEntry {
    /// A packet in the reply direction has been seen.
    pub const SEEN_REPLY: u8 = 1 << 0;
    /// The destination was rewritten (service IP to backend): replies get `nat_addr` and
    /// `nat_port` back as their source.
    pub const NAT_DNAT: u8 = 1 << 1;
    /// The source was rewritten (masquerade): replies get `nat_addr` and `nat_port` back as
    /// their destination.
    pub const NAT_SNAT: u8 = 1 << 2;
    /// The flow came in through a NodePort: replies must leave through this node.
    pub const NODE_PORT: u8 = 1 << 3;

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

pod!(CtKey4, CtKey6, CtEntry);

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn reversed_swaps_ends() {
        let key = CtKey4 {
            saddr: [198, 18, 0, 1],
            daddr: [198, 18, 0, 2],
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let reply = key.reversed();
        assert_eq!((reply.saddr, reply.dport), (key.daddr, key.sport));
        assert_eq!(reply.reversed(), key);
        let key6 = CtKey6 { saddr: [1; 16], sport: 1, proto: 17, ..CtKey6::default() };
        assert_eq!((key6.reversed().daddr, key6.reversed().dport), ([1; 16], 1));
        assert_eq!(key6.reversed().reversed(), key6);
    }
}
