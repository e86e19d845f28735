//! Every kind of frame the builder makes parses back to the flow it was built with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use skiff_testkit::{Builder, eth};
use skiff_wire::{
    IpProtocol,
    ethernet::EthernetRepr,
    geneve::{self, GeneveOption},
    layers::{self, Fragment, L3, L4},
    udp, vxlan,
};

const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const B4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0x19, 0, 0, 0, 0x10);

fn flow_of(frame: &[u8]) -> (IpAddr, IpAddr, IpProtocol, u16, u16) {
    let f = layers::parse(frame).unwrap().flow(frame).unwrap();
    (f.src, f.dst, f.protocol, f.src_port, f.dst_port)
}

#[test]
fn l4_over_both_families_with_vlans_and_extension_headers() {
    let variants: Vec<(&str, Builder)> =
        vec![("plain", eth()), ("802.1Q", eth().vlan(100)), ("QinQ", eth().vlan(200).vlan(10))];
    for (name, base) in variants {
        let tcp4 = base.clone().ipv4(A4, B4).tcp(1234, 80).syn().payload(b"x").build();
        assert_eq!(flow_of(&tcp4), (A4.into(), B4.into(), IpProtocol::TCP, 1234, 80), "{name}");
        let udp6 = base.clone().ipv6(A6, B6).hop_by_hop().dst_opts(16).udp(5353, 53).payload(b"q").build();
        assert_eq!(flow_of(&udp6), (A6.into(), B6.into(), IpProtocol::UDP, 5353, 53), "{name}");
        let echo6 = base.clone().ipv6(A6, B6).echo_request(77, 1).build();
        assert_eq!(flow_of(&echo6), (A6.into(), B6.into(), IpProtocol::ICMPV6, 77, 0), "{name}");
        let tags = EthernetRepr::parse(&tcp4).unwrap().0.vlans.len();
        assert_eq!(tags, ["plain", "802.1Q", "QinQ"].iter().position(|n| *n == name).unwrap(), "{name}");
    }
}

#[test]
fn fragments() {
    let first = eth().ipv4(A4, B4).fragment4(0, true, 9).udp(1, 2).payload(&[0; 32]).build();
    let later = eth().ipv4(A4, B4).fragment4(40, false, 9).protocol(17).payload(&[0; 32]).build();
    let p = layers::parse(&first).unwrap();
    assert!(matches!((p.l3, p.l4), (L3::Ip(ip), L4::Udp { .. }) if ip.fragment == Fragment::First));
    let p = layers::parse(&later).unwrap();
    assert!(matches!((p.l3, p.l4), (L3::Ip(ip), L4::None) if ip.fragment == Fragment::Later));
    let later6 = eth().ipv6(A6, B6).fragment6(1448, false, 7).payload(&[0; 16]).build();
    assert!(matches!(layers::parse(&later6).unwrap().l3, L3::Ip(ip) if ip.fragment == Fragment::Later));
}

#[test]
fn vxlan_and_geneve_wrap_an_inner_frame() {
    let inner = |b: Builder| b.eth().ipv4(A4, B4).tcp(1, 80).syn().build();
    let outer = || eth().ipv4(Ipv4Addr::new(198, 18, 2, 2), Ipv4Addr::new(198, 18, 2, 1));

    let vx = inner(outer().udp(40000, 8472).vxlan(7));
    let p = layers::parse(&vx).unwrap();
    let d = udp::Packet::new_checked(&vx[p.l4_offset..]).unwrap();
    let v = vxlan::Packet::new_checked(d.payload()).unwrap();
    assert_eq!((v.vni(), v.payload()), (7, &inner(Builder::empty())[..]));

    let mut opts = [0u8; 8];
    GeneveOption { class: 0x0103, kind: 0x80, data: &[0, 0, 1, 0] }.emit(&mut opts);
    for options in [&[][..], &opts[..]] {
        let gn = inner(outer().udp(40000, 6081).geneve(9, options));
        let p = layers::parse(&gn).unwrap();
        let d = udp::Packet::new_checked(&gn[p.l4_offset..]).unwrap();
        let g = geneve::Packet::new_checked(d.payload()).unwrap();
        assert_eq!((g.vni(), g.critical(), g.options_len()), (9, !options.is_empty(), options.len()));
        assert_eq!(g.payload(), &inner(Builder::empty())[..]);
    }
}
