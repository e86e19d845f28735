//! The layered parse of a whole frame, Ethernet to L4, into what the datapath decides on:
//! offsets of each layer and the flow (addresses, protocol, ports). Structure is validated at
//! every layer; checksums are not (a full sum reads the payload: the engine verifies them where
//! it needs to).

use core::net::IpAddr;

use crate::{
    Error, IpProtocol, Layer, Problem, Result, be16,
    ethernet::{EtherType, EthernetRepr},
    icmp, ipv4, ipv6,
    tcp::{self, TcpFlags},
    udp,
};

/// A frame parsed down to its transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub eth: EthernetRepr,
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

/// What the datapath needs of an IPv4 or IPv6 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
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
    /// The flow of an IP packet (ports are 0 for a later fragment or another protocol).
    pub fn flow(&self) -> Option<FlowKey> {
        let L3::Ip(ip) = self.l3 else { return None };
        let (src_port, dst_port) = match self.l4 {
            L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => (src_port, dst_port),
            L4::Icmp { ident, .. } => (ident, 0),
            L4::None => (0, 0),
        };
        Some(FlowKey { src: ip.src, dst: ip.dst, protocol: ip.protocol, src_port, dst_port })
    }
}

/// Parses Ethernet (and VLAN tags), IPv4/IPv6 (options, extension headers, fragments) and the
/// TCP, UDP or ICMP header of `frame`.
pub fn parse(frame: &[u8]) -> Result<Parsed> {
    let (eth, l3_offset) = EthernetRepr::parse(frame)?;
    let l3_bytes = &frame[l3_offset..];
    let (l3, l4_rel) = match eth.ethertype {
        EtherType::IPV4 => {
            let p = ipv4::Packet::new_checked(l3_bytes)?;
            let fragment = match (p.frag_offset(), p.more_frags()) {
                (0, false) => Fragment::None,
                (0, true) => Fragment::First,
                _ => Fragment::Later,
            };
            let ip = IpHeader {
                src: p.src().into(),
                dst: p.dst().into(),
                protocol: p.protocol(),
                ttl: p.ttl(),
                fragment,
                len: usize::from(p.total_len()),
            };
            (L3::Ip(ip), p.header_len())
        }
        EtherType::IPV6 => {
            let p = ipv6::Packet::new_checked(l3_bytes)?;
            let up = p.upper_layer()?;
            let fragment = match up.fragment {
                None => Fragment::None,
                Some(f) if f.is_first() => Fragment::First,
                Some(_) => Fragment::Later,
            };
            let ip = IpHeader {
                src: p.src().into(),
                dst: p.dst().into(),
                protocol: up.protocol,
                ttl: p.hop_limit(),
                fragment,
                len: ipv6::HEADER_LEN + usize::from(p.payload_len()),
            };
            (L3::Ip(ip), ipv6::HEADER_LEN + up.offset)
        }
        EtherType::ARP => {
            crate::arp::Packet::new_checked(l3_bytes)?;
            (L3::Arp, crate::arp::PACKET_LEN)
        }
        other => (L3::Other(other), 0),
    };
    let l4_offset = l3_offset + l4_rel;
    let l4 = match l3 {
        L3::Ip(ip) if ip.fragment != Fragment::Later => {
            transport(ip.protocol, &frame[l4_offset..l3_offset + ip.len], matches!(ip.src, IpAddr::V6(_)))?
        }
        _ => L4::None,
    };
    Ok(Parsed { eth, l3_offset, l3, l4_offset, l4 })
}

fn transport(protocol: IpProtocol, l4: &[u8], v6: bool) -> Result<L4> {
    Ok(match protocol {
        IpProtocol::TCP => {
            let t = tcp::Packet::new_checked(l4)?;
            L4::Tcp { src_port: t.src_port(), dst_port: t.dst_port(), flags: t.flags() }
        }
        IpProtocol::UDP => {
            let u = udp::Packet::new_checked(l4)?;
            L4::Udp { src_port: u.src_port(), dst_port: u.dst_port() }
        }
        IpProtocol::ICMP | IpProtocol::ICMPV6 if v6 == (protocol == IpProtocol::ICMPV6) => {
            let layer = if v6 { Layer::Icmpv6 } else { Layer::Icmpv4 };
            let h = l4.get(..icmp::HEADER_LEN).ok_or(Error::new(layer, Problem::Truncated))?;
            L4::Icmp { msg_type: h[0], code: h[1], ident: be16(&h[4..6]) }
        }
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
