//! The layered parse of a whole frame, Ethernet to L4, into what the datapath decides on:
//! offsets of each layer and the flow (addresses, protocol, ports). Structure is validated at
//! every layer, by the same views the rest of the crate uses; checksums are not (a full sum
//! reads the payload: the engine verifies them where it needs to).
//!
//! This is the per-packet hot path, so it reads fixed headers through `&[u8; N]` (no bounds
//! checks after the first) and builds its result once, from locals: building small structs
//! piecewise and copying them cost more here than the parsing (store-forwarding stalls).

use core::net::IpAddr;

use crate::{
    Error, IpProtocol, Layer, Problem, Result, be16,
    ethernet::{self, EtherType, Vlans},
    icmp, ipv4, ipv6,
    tcp::{self, TcpFlags},
    udp,
};

/// A frame parsed down to its transport header: offsets and the scalars the datapath branches
/// on. Addresses stay in the frame; [`Parsed::flow`] reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The EtherType after any VLAN tags.
    pub ethertype: EtherType,
    /// The VLAN tags, outermost first (MACs are at the start of the frame, unparsed).
    pub vlans: Vlans,
    /// Offset of the network header (after any VLAN tags).
    pub l3_offset: usize,
    pub l3: L3,
    /// Offset of the transport header (after IPv4 options or IPv6 extension headers); equal to
    /// the end of the network header when there is no transport header to parse.
    pub l4_offset: usize,
    pub l4: L4,
}

/// The network layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    Ip(IpHeader),
    Arp,
    /// An EtherType the datapath does not parse (LLDP, MPLS, …).
    Other(EtherType),
}

/// What the datapath needs of an IPv4 or IPv6 header besides its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    pub v6: bool,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub protocol: IpProtocol,
    /// TTL or hop limit.
    pub ttl: u8,
    pub fragment: Fragment,
    /// Bytes from the network header to the end of the IP packet (excluding Ethernet padding).
    pub len: usize,
}

/// Where a packet stands in fragmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    None,
    /// The first fragment: it carries the transport header.
    First,
    /// A later fragment: no transport header, no ports.
    Later,
}

/// The transport layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: TcpFlags,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Icmp {
        msg_type: u8,
        code: u8,
        ident: u16,
    },
    /// No transport header to read: a later fragment, ARP, or an unparsed protocol.
    None,
}

/// The 5-tuple of a flow. For ICMP, the echo identifier stands in the source port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: IpProtocol,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Parsed {
    /// Source and destination address of an IP packet, read from `frame` (the frame parsed).
    #[inline]
    pub fn addrs(&self, frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
        let L3::Ip(ip) = self.l3 else { return None };
        let l3 = frame.get(self.l3_offset..)?;
        if ip.v6 {
            let a: &[u8; ipv6::HEADER_LEN] = l3.first_chunk()?;
            let src: [u8; 16] = a[8..24].try_into().ok()?;
            let dst: [u8; 16] = a[24..40].try_into().ok()?;
            Some((IpAddr::V6(src.into()), IpAddr::V6(dst.into())))
        } else {
            let a: &[u8; ipv4::HEADER_LEN] = l3.first_chunk()?;
            Some((
                IpAddr::V4([a[12], a[13], a[14], a[15]].into()),
                IpAddr::V4([a[16], a[17], a[18], a[19]].into()),
            ))
        }
    }

    /// The flow of an IP packet (ports are 0 for a later fragment or another protocol),
    /// reading addresses from `frame` (the frame parsed).
    pub fn flow(&self, frame: &[u8]) -> Option<FlowKey> {
        let L3::Ip(ip) = self.l3 else { return None };
        let (src_port, dst_port) = match self.l4 {
            L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => (src_port, dst_port),
            L4::Icmp { ident, .. } => (ident, 0),
            L4::None => (0, 0),
        };
        let (src, dst) = self.addrs(frame)?;
        Some(FlowKey { src, dst, protocol: ip.protocol, src_port, dst_port })
    }
}

/// Parses Ethernet (and VLAN tags), IPv4/IPv6 (options, extension headers, fragments) and the
/// TCP, UDP or ICMP header of `frame`. Inlined into its callers (the engine) so the result's
/// fields stay in registers instead of being copied piecewise across the call.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed> {
    let (ethertype, vlans, l3_offset) = ethernet_header(frame)?;
    let l3_bytes = &frame[l3_offset..];
    let (l3, l4_rel) = match ethertype {
        EtherType::IPV4 => ipv4_header(l3_bytes)?,
        EtherType::IPV6 => ipv6_header(l3_bytes)?,
        EtherType::ARP => {
            crate::arp::Packet::new_checked(l3_bytes)?;
            (L3::Arp, crate::arp::PACKET_LEN)
        }
        other => (L3::Other(other), 0),
    };
    let l4_offset = l3_offset + l4_rel;
    let l4 = match l3 {
        L3::Ip(ip) if ip.fragment != Fragment::Later => {
            transport(ip.protocol, &frame[l4_offset..l3_offset + ip.len], ip.v6)?
        }
        _ => L4::None,
    };
    Ok(Parsed { ethertype, vlans, l3_offset, l3, l4_offset, l4 })
}

/// EtherType after the tags, the tags, and the offset of the network header.
#[inline(always)]
fn ethernet_header(frame: &[u8]) -> Result<(EtherType, Vlans, usize)> {
    let eth: &[u8; ethernet::HEADER_LEN] =
        frame.first_chunk().ok_or(Error::new(Layer::Ethernet, Problem::Truncated))?;
    let ethertype = EtherType(be16(&eth[12..14]));
    if !ethertype.is_vlan() {
        return Ok((ethertype, Vlans::NONE, ethernet::HEADER_LEN));
    }
    // Tagged frames are rare on a node's links: the general parser handles them.
    let (repr, offset) = ethernet::EthernetRepr::parse(frame)?;
    Ok((repr.ethertype, repr.vlans, offset))
}

/// The IPv4 header, validated by `ipv4::Packet::new_checked`.
#[inline(always)]
fn ipv4_header(l3: &[u8]) -> Result<(L3, usize)> {
    let p = ipv4::Packet::new_checked(l3)?;
    let fragment = match (p.frag_offset(), p.more_frags()) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let ip = IpHeader {
        v6: false,
        protocol: p.protocol(),
        ttl: p.ttl(),
        fragment,
        len: usize::from(p.total_len()),
    };
    Ok((L3::Ip(ip), p.header_len()))
}

/// The IPv6 header and its extension headers, validated by `ipv6::Packet::new_checked`.
#[inline(always)]
fn ipv6_header(l3: &[u8]) -> Result<(L3, usize)> {
    let p = ipv6::Packet::new_checked(l3)?;
    let up = p.upper_layer()?;
    let fragment = match up.fragment {
        None => Fragment::None,
        Some(f) if f.is_first() => Fragment::First,
        Some(_) => Fragment::Later,
    };
    let len = ipv6::HEADER_LEN + usize::from(p.payload_len());
    let ip = IpHeader { v6: true, protocol: up.protocol, ttl: p.hop_limit(), fragment, len };
    Ok((L3::Ip(ip), ipv6::HEADER_LEN + up.offset))
}

#[inline(always)]
fn transport(protocol: IpProtocol, l4: &[u8], v6: bool) -> Result<L4> {
    // Reads the fields into locals and builds the enum once (see the module docs).
    let (kind, a, b, c) = match protocol {
        IpProtocol::TCP => {
            tcp::Packet::new_checked(l4)?;
            let h: &[u8; tcp::HEADER_LEN] =
                l4.first_chunk().ok_or(Error::new(Layer::Tcp, Problem::Truncated))?;
            (0, be16(&h[0..2]), be16(&h[2..4]), h[13])
        }
        IpProtocol::UDP => {
            udp::Packet::new_checked(l4)?;
            let h: &[u8; udp::HEADER_LEN] =
                l4.first_chunk().ok_or(Error::new(Layer::Udp, Problem::Truncated))?;
            (1, be16(&h[0..2]), be16(&h[2..4]), 0)
        }
        IpProtocol::ICMP | IpProtocol::ICMPV6 if v6 == (protocol == IpProtocol::ICMPV6) => {
            let layer = if v6 { Layer::Icmpv6 } else { Layer::Icmpv4 };
            let h: &[u8; icmp::HEADER_LEN] = l4.first_chunk().ok_or(Error::new(layer, Problem::Truncated))?;
            (2, be16(&h[0..2]), be16(&h[4..6]), 0)
        }
        _ => (3, 0, 0, 0),
    };
    Ok(match kind {
        0 => L4::Tcp { src_port: a, dst_port: b, flags: TcpFlags(c) },
        1 => L4::Udp { src_port: a, dst_port: b },
        // Type and code are the two bytes of `a`.
        2 => L4::Icmp { msg_type: a.to_be_bytes()[0], code: a.to_be_bytes()[1], ident: b },
        _ => L4::None,
    })
}

/// Reads the flow of the packet quoted in an ICMP error (`data` of the message): its IP
/// header and the first 8 bytes of its transport header, as RFC 792 and RFC 4443 guarantee.
/// The flow is as the quoted packet had it, i.e. the reverse of the error's own direction.
pub fn parse_quoted(data: &[u8], v6: bool) -> Result<FlowKey> {
    let (src, dst, protocol, l4): (IpAddr, IpAddr, _, _) = if v6 {
        let p = ipv6::Packet::new_quoted(data)?;
        let up = p.upper_layer()?;
        (p.src().into(), p.dst().into(), up.protocol, data.get(ipv6::HEADER_LEN + up.offset..))
    } else {
        let p = ipv4::Packet::new_quoted(data)?;
        (p.src().into(), p.dst().into(), p.protocol(), data.get(p.header_len()..))
    };
    let (layer, need) = match protocol {
        IpProtocol::TCP => (Layer::Tcp, 4),
        IpProtocol::UDP => (Layer::Udp, 4),
        IpProtocol::ICMP => (Layer::Icmpv4, 8),
        IpProtocol::ICMPV6 => (Layer::Icmpv6, 8),
        _ => return Ok(FlowKey { src, dst, protocol, src_port: 0, dst_port: 0 }),
    };
    let l4 = l4.and_then(|l4| l4.get(..need)).ok_or(Error::new(layer, Problem::Truncated))?;
    let (src_port, dst_port) =
        if need == 8 { (be16(&l4[4..6]), 0) } else { (be16(&l4[..2]), be16(&l4[2..4])) };
    Ok(FlowKey { src, dst, protocol, src_port, dst_port })
}

impl crate::checksum::IpPair {
    /// Bytes of the header [`IpPair::emit_header`] writes: 20 for IPv4, 40 for IPv6.
    pub const fn header_len(self) -> usize {
        match self {
            crate::checksum::IpPair::V4(..) => ipv4::HEADER_LEN,
            crate::checksum::IpPair::V6(..) => ipv6::HEADER_LEN,
        }
    }

    /// Writes a fresh IP header from this pair's source to its destination, carrying
    /// `payload_len` bytes of `protocol`, at the start of `buf`: TTL (hop limit) 64, DF set,
    /// `flow_label` for IPv6. What a node sends of its own (answers, tunnel headers).
    pub fn emit_header(self, buf: &mut [u8], protocol: IpProtocol, payload_len: usize, flow_label: u32) {
        match self {
            crate::checksum::IpPair::V4(src, dst) => ipv4::Ipv4Repr {
                src,
                dst,
                protocol,
                payload_len,
                ttl: 64,
                dscp_ecn: 0,
                ident: 0,
                dont_frag: true,
                more_frags: false,
                frag_offset: 0,
            }
            .emit(buf),
            crate::checksum::IpPair::V6(src, dst) => ipv6::Ipv6Repr {
                src,
                dst,
                next_header: protocol,
                payload_len,
                hop_limit: 64,
                traffic_class: 0,
                flow_label,
            }
            .emit(buf),
        }
    }
}
