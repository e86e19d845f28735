//! Protocol numbers that the XDP programs and the userspace parsers both read from frames.

/// EtherTypes (host order; big-endian on the wire).
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// An 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
    /// An 802.1ad service tag (QinQ).
    pub const QINQ: u16 = 0x88a8;
    /// Transparent Ethernet bridging: Geneve's protocol type for an Ethernet payload.
    pub const TEB: u16 = 0x6558;
}

/// IANA IP protocol numbers (IPv4's protocol, IPv6's next header).
pub mod ip {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DST_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// IPv6 extension headers a parser follows before it gives up (`Ipv6ExtHeaderLimit`).
pub const MAX_EXT_HEADERS: usize = 8;
