//! The overlay between nodes (tunnel routing): which node hosts each pod CIDR, and the VXLAN
//! or Geneve header a frame for a pod on another node gets. As Cilium's: the sender's
//! security identity is the VNI (Geneve also carries it in skiff's identity option), and the
//! outer UDP source port comes from the inner flow's hash so the underlay spreads flows.
//! The outer headers are written in front of a copy of the frame (a worker copies every
//! frame it sends into its staging arena anyway), so no headroom is needed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use skiff_common::{
    identity::Identity,
    proto::ethertype,
    tunnel::{GENEVE_OPT_CLASS, GENEVE_OPT_IDENTITY},
};
use skiff_wire::{
    IpProtocol, checksum,
    checksum::IpPair,
    ethernet, geneve,
    geneve::{GeneveOption, GeneveRepr},
    ipv4, ipv6,
    layers::Parsed,
    udp, vxlan,
    vxlan::VxlanRepr,
};

use crate::{hash::hash64, prefix::PrefixMap};

/// The encapsulation of the overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelProtocol {
    Vxlan,
    Geneve,
}

impl TunnelProtocol {
    /// Bytes of the tunnel header after UDP (Geneve with skiff's 8-byte identity option).
    pub const fn header_len(self) -> usize {
        match self {
            TunnelProtocol::Vxlan => vxlan::HEADER_LEN,
            TunnelProtocol::Geneve => geneve::HEADER_LEN + GENEVE_IDENTITY_LEN,
        }
    }

    /// What the tunnel costs a pod's MTU over an underlay of this family: outer IP, UDP, the
    /// tunnel header and the inner Ethernet header (50 bytes for VXLAN over IPv4).
    pub const fn mtu_overhead(self, v6_underlay: bool) -> usize {
        let ip = if v6_underlay { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN };
        ip + udp::HEADER_LEN + self.header_len() + ethernet::HEADER_LEN
    }
}

/// Skiff's Geneve identity option: 4 bytes of option header and the identity.
const GENEVE_IDENTITY_LEN: usize = 8;
/// Identities that fit a 24-bit VNI; a larger one (a CIDR's) travels as `WORLD`.
const VNI_MAX: u32 = 0x00ff_ffff;

/// The overlay as the workers need it.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlay {
    pub protocol: TunnelProtocol,
    /// The UDP port tunnel frames are sent to.
    pub port: u16,
    /// This node's underlay addresses: the outer source of each family.
    pub local_v4: Option<Ipv4Addr>,
    pub local_v6: Option<Ipv6Addr>,
    /// Other nodes' pod CIDRs, each with its node's underlay address.
    pub remote: PrefixMap<IpAddr>,
    /// The underlay's MTU.
    pub mtu: u16,
}

/// Where one encapsulated frame goes.
#[derive(Clone, Copy, Debug)]
pub struct Encap {
    /// The remote node's underlay address.
    pub node: IpAddr,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The sender's security identity.
    pub identity: Identity,
    /// The inner flow's hash ([`flow_hash`]).
    pub flow_hash: u64,
}

impl Overlay {
    /// The node hosting `dst`, when another node does.
    #[inline]
    pub fn remote_node(&self, dst: IpAddr) -> Option<IpAddr> {
        self.remote.longest(dst)
    }

    /// The largest inner IP packet a tunnel to `node` carries: the underlay's MTU less the
    /// tunnel's overhead.
    #[inline]
    pub fn path_mtu(&self, node: IpAddr) -> usize {
        usize::from(self.mtu).saturating_sub(self.protocol.mtu_overhead(node.is_ipv6()))
    }

    /// This node's underlay address of `like`'s family.
    pub fn local(&self, like: IpAddr) -> Option<IpAddr> {
        match like {
            IpAddr::V4(_) => self.local_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.local_v6.map(IpAddr::V6),
        }
    }

    /// Writes `inner` encapsulated towards `to.node` into `out`; returns the outer frame's
    /// length, or `None` when it does not fit `out` or this node has no underlay address of
    /// the node's family.
    pub fn encapsulate(&self, out: &mut [u8], inner: &[u8], to: &Encap) -> Option<usize> {
        let v6 = to.node.is_ipv6();
        let ip_len = if v6 { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN };
        let tunnel_len = self.protocol.header_len();
        let udp_at = ethernet::HEADER_LEN + ip_len;
        let payload_at = udp_at + udp::HEADER_LEN + tunnel_len;
        let total = payload_at + inner.len();
        let out = out.get_mut(..total)?;
        out[payload_at..].copy_from_slice(inner);
        // The identity is the VNI: an identity beyond 24 bits travels as the world's.
        let vni = if to.identity.0 <= VNI_MAX { to.identity.0 } else { Identity::WORLD.0 };
        let tunnel = &mut out[udp_at + udp::HEADER_LEN..payload_at];
        match self.protocol {
            TunnelProtocol::Vxlan => VxlanRepr { vni }.emit(tunnel),
            TunnelProtocol::Geneve => {
                let mut option = [0; GENEVE_IDENTITY_LEN];
                let data = to.identity.0.to_be_bytes();
                GeneveOption { class: GENEVE_OPT_CLASS, kind: GENEVE_OPT_IDENTITY, data: &data }
                    .emit(&mut option);
                let repr = GeneveRepr {
                    vni,
                    protocol: geneve::PROTOCOL_ETHERNET,
                    oam: false,
                    critical: false,
                    options: &option,
                };
                repr.emit(tunnel);
            }
        }
        // Linux picks tunnel source ports from the ephemeral range the same way.
        // The hash's low 14 bits are the point.
        #[allow(clippy::cast_possible_truncation)]
        let src_port = 0xc000 | (to.flow_hash as u16 & 0x3fff);
        let udp_len = total - udp_at;
        let datagram = &mut out[udp_at..];
        datagram[0..2].copy_from_slice(&src_port.to_be_bytes());
        datagram[2..4].copy_from_slice(&self.port.to_be_bytes());
        datagram[4..6].copy_from_slice(&u16::try_from(udp_len).ok()?.to_be_bytes());
        datagram[6..8].copy_from_slice(&[0, 0]);
        // 20 bits of the hash label the flow.
        #[allow(clippy::cast_possible_truncation)]
        let flow_label = (to.flow_hash >> 16) as u32 & 0x000f_ffff;
        let ips = match to.node {
            IpAddr::V4(dst) => IpPair::V4(self.local_v4?, dst),
            IpAddr::V6(dst) => IpPair::V6(self.local_v6?, dst),
        };
        // DF: the pods' MTU leaves room for the headers, the underlay never fragments.
        ips.emit_header(&mut out[ethernet::HEADER_LEN..], IpProtocol::UDP, udp_len, flow_label);
        let ether = if let IpPair::V6(..) = ips {
            // IPv6 requires the UDP checksum (Linux drops zero-checksum tunnel datagrams by
            // default); over IPv4 there is none (RFC 7348), as Linux sends it.
            let sum = ips.pseudo(IpProtocol::UDP.0, udp_len) + checksum::sum(&out[udp_at..]);
            let c = checksum::finish(sum);
            out[udp_at + 6..udp_at + 8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            ethertype::IPV6
        } else {
            ethertype::IPV4
        };
        out[0..6].copy_from_slice(&to.dst_mac);
        out[6..12].copy_from_slice(&to.src_mac);
        out[12..14].copy_from_slice(&ether.to_be_bytes());
        Some(total)
    }
}

/// A hash of the inner flow (its addresses and ports, the same both ways round or not: each
/// direction only needs to stay on one underlay path).
#[inline]
pub fn flow_hash(frame: &[u8], p: &Parsed) -> u64 {
    let addrs = match p.l3 {
        skiff_wire::layers::L3::Ip(ip) if ip.v6 => frame.get(p.l3_offset + 8..p.l3_offset + 40),
        skiff_wire::layers::L3::Ip(_) => frame.get(p.l3_offset + 12..p.l3_offset + 20),
        _ => None,
    };
    let ports = frame.get(p.l4_offset..p.l4_offset + 4).unwrap_or_default();
    hash64(ports, hash64(addrs.unwrap_or_default(), 0))
}
