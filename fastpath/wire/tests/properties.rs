//! Property tests: emit → parse → emit is the identity for every Repr; arbitrary bytes never
//! make a parser or an accessor panic; incremental checksum updates equal recomputed sums.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use skiff_wire::{
    IpProtocol,
    arp::{self, ArpRepr, Operation},
    checksum::{self, IpPair},
    ethernet::{EtherType, EthernetRepr, Mac, Vlans},
    geneve::{self, GeneveOption, GeneveRepr},
    icmp::{self, IcmpRepr},
    ipv4::{self, Ipv4Repr},
    ipv6::{self, Ipv6Repr},
    layers,
    tcp::{self, TcpFlags, TcpRepr},
    udp::{self, UdpRepr},
    vxlan::{self, VxlanRepr},
};

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}
fn v6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(Ipv6Addr::from)
}
fn ip_pair() -> impl Strategy<Value = IpPair> {
    prop_oneof![
        (v4(), v4()).prop_map(|(a, b)| IpPair::V4(a, b)),
        (v6(), v6()).prop_map(|(a, b)| IpPair::V6(a, b))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn ethernet_round_trip(dst: [u8; 6], src: [u8; 6], tags in prop::collection::vec(any::<u16>(), 0..=2), ethertype in 0x0600u16..) {
        prop_assume!(!EtherType(ethertype).is_vlan());
        let repr = EthernetRepr { dst: Mac(dst), src: Mac(src), vlans: Vlans::from_tcis(&tags).unwrap(), ethertype: EtherType(ethertype) };
        let mut b = vec![0; repr.header_len()];
        repr.emit(&mut b);
        let (parsed, offset) = EthernetRepr::parse(&b).unwrap();
        prop_assert_eq!(parsed, repr);
        prop_assert_eq!(offset, b.len());
    }

    #[test]
    fn arp_round_trip(op in 1u16..=2, sm: [u8; 6], si in v4(), tm: [u8; 6], ti in v4()) {
        let repr = ArpRepr { operation: Operation(op), sender_mac: Mac(sm), sender_ip: si, target_mac: Mac(tm), target_ip: ti };
        let mut b = [0u8; arp::PACKET_LEN];
        repr.emit(&mut b);
        prop_assert_eq!(ArpRepr::parse(&arp::Packet::new_checked(&b[..]).unwrap()), repr);
    }

    #[test]
    fn ipv4_round_trip(src in v4(), dst in v4(), proto: u8, len in 0usize..1480, ttl: u8, tos: u8, ident: u16, df: bool, mf: bool, off in 0u16..8191) {
        let repr = Ipv4Repr { src, dst, protocol: IpProtocol(proto), payload_len: len, ttl, dscp_ecn: tos, ident, dont_frag: df, more_frags: mf, frag_offset: off * 8 };
        let mut b = vec![0; 20 + len];
        repr.emit(&mut b);
        let p = ipv4::Packet::new_checked(&b[..]).unwrap();
        let parsed = Ipv4Repr::parse(&p).unwrap();
        prop_assert_eq!(parsed, repr);
        let mut again = vec![0; 20 + len];
        parsed.emit(&mut again);
        prop_assert_eq!(again, b);
    }

    #[test]
    fn ipv6_round_trip(src in v6(), dst in v6(), nh: u8, len in 0usize..1440, hl: u8, tc: u8, flow in 0u32..(1 << 20)) {
        let repr = Ipv6Repr { src, dst, next_header: IpProtocol(nh), payload_len: len, hop_limit: hl, traffic_class: tc, flow_label: flow };
        let mut b = vec![0; 40 + len];
        repr.emit(&mut b);
        prop_assert_eq!(Ipv6Repr::parse(&ipv6::Packet::new_checked(&b[..]).unwrap()).unwrap(), repr);
    }

    #[test]
    fn tcp_round_trip(ips in ip_pair(), sp: u16, dp: u16, seq: u32, ack: u32, flags: u8, win: u16, urg: u16,
                      words in 0usize..=10, payload in prop::collection::vec(any::<u8>(), 0..200)) {
        // Options of NOPs keep the area well formed whatever its length.
        let options = vec![1u8; words * 4];
        let repr = TcpRepr { src_port: sp, dst_port: dp, seq, ack, flags: TcpFlags(flags), window: win, urgent: urg, options: &options, payload: &payload };
        let mut b = vec![0; repr.buffer_len()];
        repr.emit(&mut b, ips);
        let p = tcp::Packet::new_checked(&b[..]).unwrap();
        let parsed = TcpRepr::parse(&p, ips).unwrap();
        prop_assert_eq!(parsed, repr);
        let mut again = vec![0; b.len()];
        parsed.emit(&mut again, ips);
        prop_assert_eq!(again, b);
    }

    #[test]
    fn udp_round_trip(ips in ip_pair(), sp: u16, dp: u16, payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let repr = UdpRepr { src_port: sp, dst_port: dp, payload: &payload };
        let mut b = vec![0; repr.buffer_len()];
        repr.emit(&mut b, ips);
        let p = udp::Packet::new_checked(&b[..]).unwrap();
        prop_assert_eq!(UdpRepr::parse(&p, ips).unwrap(), repr);
    }

    #[test]
    fn icmp_round_trip(ips in ip_pair(), ty: u8, code: u8, rest: u32, data in prop::collection::vec(any::<u8>(), 0..100)) {
        let repr = IcmpRepr { msg_type: ty, code, rest, data: &data };
        let mut b = vec![0; repr.buffer_len()];
        repr.emit(&mut b, ips);
        let p = icmp::Packet::new_checked(&b[..], ips).unwrap();
        prop_assert_eq!(IcmpRepr::parse(&p, ips).unwrap(), repr);
    }

    #[test]
    fn vxlan_round_trip(vni in 0u32..(1 << 24)) {
        let mut b = [0u8; 8];
        VxlanRepr { vni }.emit(&mut b);
        prop_assert_eq!(VxlanRepr::parse(&vxlan::Packet::new_checked(&b[..]).unwrap()), VxlanRepr { vni });
    }

    #[test]
    fn geneve_round_trip(vni in 0u32..(1 << 24), oam: bool, critical: bool, opts in prop::collection::vec((any::<u16>(), any::<u8>(), 0usize..=6), 0..5)) {
        let mut options = Vec::new();
        for (class, kind, words) in opts {
            let data = vec![0xab; words * 4];
            let o = GeneveOption { class, kind, data: &data };
            let at = options.len();
            options.resize(at + o.wire_len(), 0);
            o.emit(&mut options[at..]);
        }
        let repr = GeneveRepr { vni, protocol: geneve::PROTOCOL_ETHERNET, oam, critical, options: &options };
        let mut b = vec![0; repr.header_len()];
        repr.emit(&mut b);
        prop_assert_eq!(GeneveRepr::parse(&geneve::Packet::new_checked(&b[..]).unwrap()).unwrap(), repr);
    }

    /// Any bytes: every parser either errors or yields views whose accessors are all safe.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), ips in ip_pair()) {
        poke_every_parser(&bytes, ips);
    }

    /// Incremental updates (RFC 1624) for a DNAT rewrite — address and port — equal the
    /// checksum recomputed over the rewritten segment.
    #[test]
    fn incremental_update_equals_recompute(src in v4(), dst in v4(), new_dst in v4(), sp: u16, dp: u16, new_dp: u16, payload in prop::collection::vec(any::<u8>(), 0..100)) {
        let repr = TcpRepr { src_port: sp, dst_port: dp, seq: 1, ack: 2, flags: TcpFlags::ACK, window: 100, urgent: 0, options: &[], payload: &payload };
        let mut seg = vec![0; repr.buffer_len()];
        repr.emit(&mut seg, IpPair::V4(src, dst));
        let mut p = tcp::Packet::new_checked(&mut seg[..]).unwrap();
        p.set_dst_port(new_dp);
        p.update_checksum16(dp, new_dp);
        p.update_checksum_addr(&dst.octets(), &new_dst.octets());
        let incremental = p.checksum();
        p.fill_checksum(IpPair::V4(src, new_dst));
        prop_assert_eq!(incremental, p.checksum());
    }

    #[test]
    fn incremental_update_v6_and_ttl(src in v6(), dst in v6(), new_src in v6(), ttl in 1u8.., payload in prop::collection::vec(any::<u8>(), 1..100)) {
        let repr = UdpRepr { src_port: 1, dst_port: 2, payload: &payload };
        let mut seg = vec![0; repr.buffer_len()];
        repr.emit(&mut seg, IpPair::V6(src, dst));
        let mut p = udp::Packet::new_checked(&mut seg[..]).unwrap();
        p.update_checksum_addr(&src.octets(), &new_src.octets());
        prop_assert!(p.verify_checksum(IpPair::V6(new_src, dst)));

        let ip = Ipv4Repr { src: Ipv4Addr::LOCALHOST, dst: Ipv4Addr::BROADCAST, protocol: IpProtocol::UDP, payload_len: 0, ttl, dscp_ecn: 0, ident: 9, dont_frag: true, more_frags: false, frag_offset: 0 };
        let mut h = [0u8; 20];
        ip.emit(&mut h);
        let mut p = ipv4::Packet::new_checked(&mut h[..]).unwrap();
        p.decrement_ttl();
        prop_assert!(p.verify_checksum());
        prop_assert_eq!(checksum::fold(checksum::sum(&h)), 0xffff);
    }
}

fn poke_every_parser(bytes: &[u8], ips: IpPair) {
    if let Ok(p) = skiff_wire::ethernet::Frame::new_checked(bytes) {
        let _ = (p.dst(), p.src(), p.ethertype(), p.payload().len());
    }
    let _ = EthernetRepr::parse(bytes);
    if let Ok(p) = arp::Packet::new_checked(bytes) {
        let _ = ArpRepr::parse(&p);
    }
    if let Ok(p) = ipv4::Packet::new_checked(bytes) {
        let _ = (p.options(), p.payload(), p.is_fragment(), p.verify_checksum(), Ipv4Repr::parse(&p));
    }
    if let Ok(p) = ipv4::Packet::new_quoted(bytes) {
        let _ = p.payload();
    }
    if let Ok(p) = ipv6::Packet::new_checked(bytes) {
        let _ = (p.payload(), p.upper_layer(), Ipv6Repr::parse(&p));
    }
    if let Ok(p) = ipv6::Packet::new_quoted(bytes) {
        let _ = p.upper_layer();
    }
    let _ = ipv6::walk_extension_headers(IpProtocol::HOP_BY_HOP, bytes);
    if let Ok(p) = tcp::Packet::new_checked(bytes) {
        let _ = (p.payload(), p.options().count(), p.verify_checksum(ips), TcpRepr::parse(&p, ips));
    }
    if let Ok(p) = udp::Packet::new_checked(bytes) {
        let _ = (p.payload(), UdpRepr::parse(&p, ips));
    }
    if let Ok(p) = udp::Packet::new_header_checked(bytes) {
        let _ = (p.payload(), p.verify_checksum(ips));
    }
    if let Ok(p) = icmp::Packet::new_checked(bytes, ips) {
        let _ = (p.data(), p.ident(), IcmpRepr::parse(&p, ips));
    }
    if let Ok(p) = vxlan::Packet::new_checked(bytes) {
        let _ = (p.vni(), p.payload());
    }
    if let Ok(p) = geneve::Packet::new_checked(bytes) {
        let _ = (p.options().count(), p.payload(), GeneveRepr::parse(&p));
    }
    if let Ok(parsed) = layers::parse(bytes) {
        let _ = parsed.flow(bytes);
    }
    let _ = layers::parse_quoted(bytes, false);
    let _ = layers::parse_quoted(bytes, true);
}
