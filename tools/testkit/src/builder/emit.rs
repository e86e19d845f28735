//! Emitting a builder's layers, innermost first.

use skiff_wire::{
    IpProtocol,
    checksum::IpPair,
    ethernet::{EtherType, EthernetRepr, Vlans},
    geneve::{self, GeneveRepr},
    icmp::IcmpRepr,
    ipv4::Ipv4Repr,
    ipv6::Ipv6Repr,
    tcp::TcpRepr,
    udp::UdpRepr,
    vxlan::VxlanRepr,
};

use super::{Builder, LayerSpec};

impl Builder {
    /// The address pair of the IP layer enclosing layer `i`, for L4 checksums.
    fn ips_before(&self, i: usize) -> IpPair {
        self.layers[..i]
            .iter()
            .rev()
            .find_map(|l| match *l {
                LayerSpec::Ipv4 { src, dst, .. } => Some(IpPair::V4(src, dst)),
                LayerSpec::Ipv6 { src, dst, .. } => Some(IpPair::V6(src, dst)),
                _ => None,
            })
            .expect("an L4 layer needs an IP layer before it")
    }

    /// Layer `i`'s bytes around `inner`, its payload (already emitted); `next` is the layer
    /// inside it.
    pub(super) fn emit_layer(
        &self,
        i: usize,
        layer: &LayerSpec,
        next: Option<&LayerSpec>,
        inner: Vec<u8>,
    ) -> Vec<u8> {
        match layer {
            LayerSpec::Tcp { .. } | LayerSpec::Udp { .. } | LayerSpec::Icmp { .. } => {
                self.transport(i, layer, inner)
            }
            _ => link_network_or_tunnel(layer, next, inner),
        }
    }

    /// TCP, UDP and ICMP, whose checksums cover the enclosing IP layer's addresses.
    fn transport(&self, i: usize, layer: &LayerSpec, inner: Vec<u8>) -> Vec<u8> {
        match layer {
            LayerSpec::Tcp { src_port, dst_port, seq, ack, flags, window, options } => {
                let repr = TcpRepr {
                    src_port: *src_port,
                    dst_port: *dst_port,
                    seq: *seq,
                    ack: *ack,
                    flags: *flags,
                    window: *window,
                    urgent: 0,
                    options,
                    payload: &inner,
                };
                let mut out = vec![0; repr.buffer_len()];
                repr.emit(&mut out, self.ips_before(i));
                out
            }
            LayerSpec::Udp { src_port, dst_port } => {
                let repr = UdpRepr { src_port: *src_port, dst_port: *dst_port, payload: &inner };
                let mut out = vec![0; repr.buffer_len()];
                repr.emit(&mut out, self.ips_before(i));
                out
            }
            LayerSpec::Icmp { msg_type, code, rest } => {
                let repr = IcmpRepr { msg_type: *msg_type, code: *code, rest: *rest, data: &inner };
                let mut out = vec![0; repr.buffer_len()];
                repr.emit(&mut out, self.ips_before(i));
                out
            }
            _ => unreachable!("not a transport layer"),
        }
    }
}

/// Ethernet, ARP, IP, IPv6 extension headers, tunnels and payloads: headers around `inner`.
fn link_network_or_tunnel(layer: &LayerSpec, next: Option<&LayerSpec>, inner: Vec<u8>) -> Vec<u8> {
    let wrap = |header_len: usize, emit: &dyn Fn(&mut [u8])| {
        let mut out = vec![0; header_len + inner.len()];
        out[header_len..].copy_from_slice(&inner);
        emit(&mut out);
        out
    };
    match layer {
        LayerSpec::Payload(bytes) => [bytes.as_slice(), &inner].concat(),
        LayerSpec::Eth { src, dst, vlans } => {
            let ethertype = match next {
                Some(LayerSpec::Ipv4 { .. }) => EtherType::IPV4,
                Some(LayerSpec::Ipv6 { .. }) => EtherType::IPV6,
                Some(LayerSpec::Arp(_)) => EtherType::ARP,
                _ => EtherType(0x88b5), // local experimental
            };
            let repr = EthernetRepr {
                src: *src,
                dst: *dst,
                vlans: Vlans::from_tcis(vlans).expect("at most 2 tags"),
                ethertype,
            };
            wrap(repr.header_len(), &|b| repr.emit(b))
        }
        LayerSpec::Arp(repr) => wrap(skiff_wire::arp::PACKET_LEN, &|b| repr.emit(b)),
        LayerSpec::Ipv4 { src, dst, ttl, ident, dont_frag, more_frags, frag_offset, protocol } => {
            let repr = Ipv4Repr {
                src: *src,
                dst: *dst,
                protocol: protocol.map_or_else(|| next_protocol(next, false), IpProtocol),
                payload_len: inner.len(),
                ttl: *ttl,
                dscp_ecn: 0,
                ident: *ident,
                dont_frag: *dont_frag,
                more_frags: *more_frags,
                frag_offset: *frag_offset,
            };
            wrap(repr.header_len(), &|b| repr.emit(b))
        }
        LayerSpec::Ipv6 { src, dst, hop_limit, flow_label } => {
            let repr = Ipv6Repr {
                src: *src,
                dst: *dst,
                next_header: next_protocol(next, true),
                payload_len: inner.len(),
                hop_limit: *hop_limit,
                traffic_class: 0,
                flow_label: *flow_label,
            };
            wrap(repr.header_len(), &|b| repr.emit(b))
        }
        LayerSpec::Ipv6Ext { kind, body } => {
            let len = 2 + body.len();
            let hdr_ext_len = if *kind == IpProtocol::FRAGMENT {
                0
            } else {
                u8::try_from(len / 8 - 1).expect("small header")
            };
            wrap(len, &|b| {
                b[0] = next_protocol(next, true).0;
                b[1] = hdr_ext_len;
                b[2..len].copy_from_slice(body);
            })
        }
        LayerSpec::Vxlan { vni } => wrap(skiff_wire::vxlan::HEADER_LEN, &|b| VxlanRepr { vni: *vni }.emit(b)),
        LayerSpec::Geneve { vni, options, critical } => {
            let repr = GeneveRepr {
                vni: *vni,
                protocol: geneve::PROTOCOL_ETHERNET,
                oam: false,
                critical: *critical,
                options,
            };
            wrap(repr.header_len(), &|b| repr.emit(b))
        }
        _ => unreachable!("a transport layer"),
    }
}

/// The protocol number that announces layer `next` inside an IPv4 (`v6` false) or IPv6 packet.
fn next_protocol(next: Option<&LayerSpec>, v6: bool) -> IpProtocol {
    match next {
        Some(LayerSpec::Tcp { .. }) => IpProtocol::TCP,
        Some(LayerSpec::Udp { .. }) => IpProtocol::UDP,
        Some(LayerSpec::Icmp { .. }) if v6 => IpProtocol::ICMPV6,
        Some(LayerSpec::Icmp { .. }) => IpProtocol::ICMP,
        Some(LayerSpec::Ipv6Ext { kind, .. }) => *kind,
        Some(LayerSpec::Ipv4 { .. }) => IpProtocol(4),
        Some(LayerSpec::Ipv6 { .. }) => IpProtocol(41),
        _ => IpProtocol::NO_NEXT_HEADER,
    }
}
