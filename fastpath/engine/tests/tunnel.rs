//! The overlay: frames between pods on different nodes are tracked and forwarded as they are,
//! and the encapsulation a worker writes in front of them parses back as the VXLAN or Geneve
//! it should be (addresses, ports, checksums, VNI, identity option, the inner frame intact);
//! a packet too big for the tunnel is answered with the path's MTU.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use skiff_common::{
    identity::Identity,
    tunnel::{GENEVE_OPT_CLASS, GENEVE_OPT_IDENTITY, GENEVE_PORT, VXLAN_PORT},
};
use skiff_engine::{
    conntrack::Timeouts,
    engine::{Action, Engine},
    prefix::PrefixMap,
    reply,
    tables::{LocalNode, Tables},
    tunnel::{Encap, Overlay, TunnelProtocol},
};
use skiff_testkit::eth;
use skiff_wire::{checksum::IpPair, geneve, icmp, ipv4, ipv6, udp, vxlan};

const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 2);
const NODE_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 4, 0, 0, 0, 1);
const NODE_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 4, 0, 0, 0, 2);
const HERE: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 10);
const THERE: Ipv4Addr = Ipv4Addr::new(198, 18, 129, 10);

fn overlay(protocol: TunnelProtocol, port: u16) -> Overlay {
    let mut remote = PrefixMap::default();
    remote.insert("198.18.129.0/24".parse().unwrap(), IpAddr::from(NODE_B));
    remote.insert("fd00:0:0:129::/64".parse().unwrap(), IpAddr::from(NODE_B6));
    Overlay { protocol, port, local_v4: Some(NODE_A), local_v6: Some(NODE_A6), remote, mtu: 1500 }
}

fn encap(node: IpAddr, identity: u32) -> Encap {
    Encap {
        node,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        identity: Identity(identity),
        flow_hash: 0x1234_5678,
    }
}

#[test]
fn frames_between_pods_of_two_nodes_are_tracked_and_forwarded() {
    // Here: 198.18.128.0/24; the overlay: 198.18.129.0/24 on node B.
    let node = LocalNode { pod_cidrs: vec!["198.18.128.0/24".parse().unwrap()], ..LocalNode::default() };
    let overlay = Some(Arc::new(overlay(TunnelProtocol::Vxlan, VXLAN_PORT)));
    let tables = Tables { overlay, node, ..Tables::default() };
    let mut e = Engine::new(Arc::new(tables), 1024, Timeouts::default());
    let mut out = eth().ipv4(HERE, THERE).tcp(40000, 80).syn().build();
    assert_eq!(e.process(&mut out, 0), Action::Forward, "to a pod on another node");
    assert_eq!(out, eth().ipv4(HERE, THERE).ttl(63).tcp(40000, 80).syn().build(), "forwarded as it is");
    let mut reply = eth().ipv4(THERE, HERE).tcp(80, 40000).syn().ack(1).build();
    assert_eq!(e.process(&mut reply, 0), Action::Forward, "its reply, from the tunnel");
    let mut other = eth().ipv4(HERE, Ipv4Addr::new(198, 18, 0, 2)).tcp(40001, 80).syn().build();
    assert_eq!(e.process(&mut other, 0), Action::Pass, "outside the pod CIDRs: the kernel's");
}

#[test]
fn vxlan_over_ipv4_carries_the_identity_as_its_vni() {
    let inner = eth().ipv4(HERE, THERE).udp(5000, 53).payload(b"query").build();
    let o = overlay(TunnelProtocol::Vxlan, VXLAN_PORT);
    let mut out = [0u8; 2048];
    let len = o.encapsulate(&mut out, &inner, &encap(NODE_B.into(), 300)).expect("fits");
    assert_eq!(len, inner.len() + 50, "VXLAN over IPv4 costs 50 bytes");
    assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 2]);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let ip = ipv4::Packet::new_checked(&out[14..len]).unwrap();
    assert!(ip.verify_checksum() && ip.dont_frag());
    assert_eq!((ip.src(), ip.dst(), ip.protocol().0, ip.ttl()), (NODE_A, NODE_B, 17, 64));
    let u = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((u.dst_port(), u.src_port() >= 0xc000, u.checksum()), (VXLAN_PORT, true, 0));
    let v = vxlan::Packet::new_checked(u.payload()).unwrap();
    assert_eq!((v.flags(), v.vni()), (0x08, 300));
    assert_eq!(v.payload(), &inner[..]);
    // Another flow takes another source port (the underlay spreads flows by it).
    let mut other = [0u8; 2048];
    o.encapsulate(&mut other, &inner, &Encap { flow_hash: 0x8765_4321, ..encap(NODE_B.into(), 300) });
    assert_ne!(other[34..36], out[34..36]);
    // An identity beyond 24 bits (a CIDR's) travels as the world's; too small a buffer fails.
    o.encapsulate(&mut out, &inner, &encap(NODE_B.into(), 1 << 24));
    assert_eq!(vxlan::Packet::new_checked(&out[42..len]).unwrap().vni(), Identity::WORLD.0);
    assert_eq!(o.encapsulate(&mut out[..len - 1], &inner, &encap(NODE_B.into(), 300)), None);
}

#[test]
fn geneve_over_ipv6_carries_the_identity_option_and_a_udp_checksum() {
    let inner = eth().ipv6(HERE.to_ipv6_mapped(), THERE.to_ipv6_mapped()).tcp(1, 2).syn().build();
    let o = overlay(TunnelProtocol::Geneve, GENEVE_PORT);
    let mut out = [0u8; 2048];
    let len = o.encapsulate(&mut out, &inner, &encap(NODE_B6.into(), 70000)).expect("fits");
    // Outer Ethernet, IPv6, UDP, Geneve with the option: what the pods' MTU leaves room for.
    assert_eq!(len - inner.len(), TunnelProtocol::Geneve.mtu_overhead(true));
    assert_eq!(TunnelProtocol::Geneve.mtu_overhead(true), 78);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let ip = ipv6::Packet::new_checked(&out[14..len]).unwrap();
    assert_eq!((ip.src(), ip.dst(), ip.next_header().0), (NODE_A6, NODE_B6, 17));
    let u = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(u.dst_port(), GENEVE_PORT);
    assert!(u.verify_checksum(IpPair::V6(NODE_A6, NODE_B6)), "IPv6 needs the UDP checksum");
    let g = geneve::Packet::new_checked(u.payload()).unwrap();
    assert_eq!((g.vni(), g.protocol(), g.critical()), (70000, geneve::PROTOCOL_ETHERNET, false));
    let option = g.options().next().unwrap().unwrap();
    assert_eq!((option.class, option.kind), (GENEVE_OPT_CLASS, GENEVE_OPT_IDENTITY));
    assert_eq!(option.data, &70000u32.to_be_bytes());
    assert_eq!(g.payload(), &inner[..]);
    // No IPv4 underlay address here: an IPv4 node cannot be reached.
    let v6_only = Overlay { local_v4: None, ..o };
    assert_eq!(v6_only.encapsulate(&mut out, &inner, &encap(NODE_B.into(), 300)), None);
}

#[test]
fn a_packet_too_big_for_the_tunnel_is_answered_with_the_path_mtu() {
    let o = overlay(TunnelProtocol::Vxlan, VXLAN_PORT);
    let path_mtu = o.path_mtu(NODE_B.into());
    assert_eq!(path_mtu, 1450, "1500 less VXLAN over IPv4's 50");
    let big = |df: bool| {
        let b = eth().ipv4(HERE, THERE);
        let b = if df { b } else { b.fragment4(0, false, 7) };
        b.tcp(40000, 80).ack(1).payload(&[7; 1460]).build()
    };
    let mut frame = big(true);
    let p = skiff_wire::layers::parse(&frame).unwrap();
    let len = reply::too_big(&mut frame, &p, NODE_A.into(), 1450).expect("DF set: answered");
    let ip = ipv4::Packet::new_checked(&frame[14..len]).unwrap();
    assert_eq!((ip.src(), ip.dst(), ip.protocol().0), (NODE_A, HERE, 1));
    let icmp = icmp::Packet::new_checked(ip.payload(), IpPair::V4(NODE_A, HERE)).unwrap();
    assert!(icmp.verify_checksum(IpPair::V4(NODE_A, HERE)));
    assert_eq!((icmp.msg_type(), icmp.code(), icmp.rest()), (3, 4, 1450), "fragmentation needed, MTU 1450");
    assert_eq!(&icmp.data()[..20], &big(true)[14..34], "quoting the packet's header");
    // Without DF the sender asked for no discovery: not answered (the worker counts the drop).
    let mut frame = big(false);
    let p = skiff_wire::layers::parse(&frame).unwrap();
    assert_eq!(reply::too_big(&mut frame, &p, NODE_A.into(), 1450), None);
    // IPv6: packet too big, always.
    let (here6, there6) =
        (Ipv6Addr::new(0xfd00, 0, 0, 0x10, 0, 0, 0, 2), Ipv6Addr::new(0xfd00, 0, 0, 0x11, 0, 0, 0, 2));
    let mut frame = eth().ipv6(here6, there6).tcp(40000, 80).ack(1).payload(&[7; 1440]).build();
    let p = skiff_wire::layers::parse(&frame).unwrap();
    let len = reply::too_big(&mut frame, &p, NODE_A6.into(), 1430).expect("answered");
    let ip = ipv6::Packet::new_checked(&frame[14..len]).unwrap();
    let icmp = icmp::Packet::new_checked(ip.payload(), IpPair::V6(NODE_A6, here6)).unwrap();
    assert_eq!((ip.dst(), icmp.msg_type(), icmp.code(), icmp.rest()), (here6, 2, 0, 1430));
}
