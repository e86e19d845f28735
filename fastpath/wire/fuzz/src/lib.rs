//! The fuzz targets' checks, one function per target, so that the cargo-fuzz binaries
//! (`fuzz_targets/`) and the workspace's replay of the seed corpus
//! (`fastpath/wire/tests/fuzz_seeds.rs`, which includes this file) run the same code. Each
//! parses untrusted bytes, must not panic, and checks that what it parsed emits back to the
//! same fields.

use std::net::{Ipv4Addr, Ipv6Addr};

use skiff_wire::{
    IpProtocol, arp,
    checksum::IpPair,
    ethernet::{EthernetRepr, Frame, VlanTag},
    geneve, icmp, ipv4, ipv6,
    layers::{self, L3, L4},
    tcp, udp, vxlan,
};

/// A target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("ethernet", ethernet),
    ("arp", arp),
    ("ipv4", ipv4),
    ("ipv6", ipv6),
    ("tcp", tcp),
    ("udp", udp),
    ("icmp", icmp),
    ("vxlan", vxlan),
    ("geneve", geneve),
    ("frame", frame),
];

pub fn ethernet(data: &[u8]) {
    if let Ok(f) = Frame::new_checked(data) {
        let _ = (f.dst(), f.src(), f.ethertype(), f.payload());
    }
    if let Ok(t) = VlanTag::new_checked(data) {
        let _ = (t.vid(), t.pcp(), t.inner_type());
    }
    if let Ok((repr, offset)) = EthernetRepr::parse(data) {
        assert!(offset <= data.len());
        let mut out = vec![0; repr.header_len()];
        repr.emit(&mut out);
        // Re-emitting normalises only the outer TPID of a lone tag; the parse must agree.
        assert_eq!(EthernetRepr::parse(&out).unwrap().0, repr);
    }
}

pub fn arp(data: &[u8]) {
    if let Ok(p) = arp::Packet::new_checked(data) {
        let repr = arp::ArpRepr::parse(&p);
        let mut out = [0u8; arp::PACKET_LEN];
        repr.emit(&mut out);
        assert_eq!(&out[..], &data[..out.len()]);
    }
}

pub fn ipv4(data: &[u8]) {
    if let Ok(p) = ipv4::Packet::new_quoted(data) {
        let _ = (p.payload(), p.options(), p.is_fragment());
    }
    if let Ok(p) = ipv4::Packet::new_checked(data)
        && let Ok(repr) = ipv4::Ipv4Repr::parse(&p)
    {
        assert_eq!(repr.payload_len, p.payload().len());
        let mut out = vec![0u8; 20 + repr.payload_len];
        repr.emit(&mut out);
        let again = ipv4::Ipv4Repr::parse(&ipv4::Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(again, repr, "emit of a parsed header parses back to it");
    }
}

pub fn ipv6(data: &[u8]) {
    if let Ok(p) = ipv6::Packet::new_quoted(data) {
        let _ = p.upper_layer();
    }
    if let Ok(p) = ipv6::Packet::new_checked(data) {
        let repr = ipv6::Ipv6Repr::parse(&p).unwrap();
        let mut out = [0u8; 40];
        repr.emit(&mut out);
        assert_eq!(&out[..], &data[..40]);
        if let Ok(up) = p.upper_layer() {
            assert!(up.offset <= p.payload().len());
            assert!(usize::from(up.ext_headers) <= ipv6::MAX_EXT_HEADERS);
        }
    }
    if let Some((&first, rest)) = data.split_first() {
        let _ = ipv6::walk_extension_headers(IpProtocol(first), rest);
    }
}

pub fn tcp(data: &[u8]) {
    const IPS: IpPair = IpPair::V4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
    let Ok(p) = tcp::Packet::new_checked(data) else { return };
    for option in p.options() {
        let _ = option;
    }
    let _ = (p.payload(), p.flags(), p.verify_checksum(IPS));
    if let Ok(repr) = tcp::TcpRepr::parse(&p, IPS)
        && repr.options.len() % 4 == 0
    {
        let mut out = vec![0; repr.buffer_len()];
        repr.emit(&mut out, IPS);
        // The checksum may differ only as +0 versus -0 in one's complement, and the reserved
        // bits beside the data offset are not part of the repr.
        assert_eq!(
            (&out[..12], out[12], &out[13..16], &out[18..]),
            (&data[..12], data[12] & 0xf0, &data[13..16], &data[18..])
        );
        assert_eq!(tcp::TcpRepr::parse(&tcp::Packet::new_checked(&out[..]).unwrap(), IPS).unwrap(), repr);
    }
}

pub fn udp(data: &[u8]) {
    const IPS: IpPair = IpPair::V6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
    if let Ok(p) = udp::Packet::new_header_checked(data) {
        let _ = (p.payload(), p.verify_checksum(IPS));
    }
    if let Ok(p) = udp::Packet::new_checked(data)
        && let Ok(repr) = udp::UdpRepr::parse(&p, IPS)
    {
        let mut out = vec![0; repr.buffer_len()];
        repr.emit(&mut out, IPS);
        assert_eq!((&out[..6], &out[8..]), (&data[..6], &data[8..out.len()]));
        assert_eq!(udp::UdpRepr::parse(&udp::Packet::new_checked(&out[..]).unwrap(), IPS).unwrap(), repr);
    }
}

/// The first byte picks the family (its low bit: IPv6), the rest is the message.
pub fn icmp(data: &[u8]) {
    let Some((&family, data)) = data.split_first() else { return };
    let v6 = family & 1 == 1;
    let ips = if v6 {
        IpPair::V6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST)
    } else {
        IpPair::V4(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST)
    };
    let Ok(p) = icmp::Packet::new_checked(data, ips) else { return };
    let _ = (p.ident(), p.seq(), p.rest());
    let _ = layers::parse_quoted(p.data(), v6);
    if let Ok(repr) = icmp::IcmpRepr::parse(&p, ips) {
        let mut out = vec![0; repr.buffer_len()];
        repr.emit(&mut out, ips);
        assert_eq!((&out[..2], &out[4..]), (&data[..2], &data[4..]));
        assert_eq!(
            icmp::IcmpRepr::parse(&icmp::Packet::new_checked(&out[..], ips).unwrap(), ips).unwrap(),
            repr
        );
    }
}

pub fn vxlan(data: &[u8]) {
    let Ok(p) = vxlan::Packet::new_checked(data) else { return };
    let repr = vxlan::VxlanRepr::parse(&p);
    assert!(repr.vni < 1 << 24);
    // The header emits back with the VNI it carried (flags and reserved bits normalised).
    let mut out = [0u8; vxlan::HEADER_LEN];
    repr.emit(&mut out);
    assert_eq!(&out[4..7], &data[4..7], "the VNI's bytes");
    assert_eq!(vxlan::VxlanRepr::parse(&vxlan::Packet::new_checked(&out[..]).unwrap()), repr);
    let _ = layers::parse(p.payload());
}

pub fn geneve(data: &[u8]) {
    let Ok(p) = geneve::Packet::new_checked(data) else { return };
    let mut seen = 0;
    for o in p.options().flatten() {
        seen += o.wire_len();
    }
    assert!(seen <= p.options_len());
    if let Ok(repr) = geneve::GeneveRepr::parse(&p) {
        let mut out = vec![0; repr.header_len()];
        repr.emit(&mut out);
        // Reserved bits are not kept; everything the repr carries must be.
        assert_eq!(geneve::GeneveRepr::parse(&geneve::Packet::new_checked(&out[..]).unwrap()).unwrap(), repr);
    }
    let _ = layers::parse(p.payload());
}

/// The whole-frame parse agrees with the per-layer parsers at the offsets it reports: the
/// Ethernet header, the IP header's addresses and protocol, the ports.
pub fn frame(data: &[u8]) {
    let Ok(parsed) = layers::parse(data) else { return };
    assert!(parsed.l3_offset <= parsed.l4_offset && parsed.l4_offset <= data.len());
    let (eth, l3_offset) = EthernetRepr::parse(data).expect("a parsed frame has an Ethernet header");
    assert_eq!((eth.ethertype, l3_offset), (parsed.ethertype, parsed.l3_offset));
    let L3::Ip(ip) = parsed.l3 else { return };
    assert!(parsed.l3_offset + ip.len <= data.len());
    let flow = parsed.flow(data).expect("an IP packet has a flow");
    let l3 = &data[parsed.l3_offset..parsed.l3_offset + ip.len];
    if ip.v6 {
        let p = ipv6::Packet::new_checked(l3).expect("the frame parse checked it");
        assert_eq!((flow.src, flow.dst), (p.src().into(), p.dst().into()));
    } else {
        let p = ipv4::Packet::new_checked(l3).expect("the frame parse checked it");
        assert_eq!((flow.src, flow.dst, flow.protocol), (p.src().into(), p.dst().into(), p.protocol()));
    }
    let l4 = &data[parsed.l4_offset..parsed.l3_offset + ip.len];
    match parsed.l4 {
        L4::Tcp { src_port, dst_port, .. } => {
            let t = tcp::Packet::new_checked(l4).expect("the frame parse checked it");
            assert_eq!((t.src_port(), t.dst_port()), (src_port, dst_port));
        }
        L4::Udp { src_port, dst_port } => {
            let u = udp::Packet::new_header_checked(l4).expect("the frame parse checked it");
            assert_eq!((u.src_port(), u.dst_port()), (src_port, dst_port));
        }
        L4::Icmp { .. } | L4::None => {}
    }
}
