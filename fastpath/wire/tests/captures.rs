//! Frames captured from real traffic in the lab (see `captures/capture.sh`): every one parses,
//! every checksum the kernel computed verifies, and each capture shows what it was taken for.

use std::net::{IpAddr, Ipv4Addr};

use skiff_testkit::pcap;
use skiff_wire::{
    IpProtocol,
    arp::{self, Operation},
    checksum::IpPair,
    icmp, ipv4,
    layers::{self, Fragment, L3, L4, Parsed},
    tcp::{self, TcpFlags, TcpOption},
    udp, vxlan,
};

fn capture(name: &str) -> Vec<(Vec<u8>, Parsed)> {
    let path = format!("{}/tests/captures/{name}.pcap", env!("CARGO_MANIFEST_DIR"));
    let frames = pcap::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(!frames.is_empty(), "{path} holds no frames");
    frames
        .into_iter()
        .map(|f| {
            let parsed = layers::parse(&f).unwrap_or_else(|e| panic!("{name}: {e} in {f:02x?}"));
            (f, parsed)
        })
        .collect()
}

fn ips(f: &[u8], p: &Parsed) -> IpPair {
    match p.addrs(f).expect("an IP packet") {
        (IpAddr::V4(s), IpAddr::V4(d)) => IpPair::V4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => IpPair::V6(s, d),
        _ => unreachable!(),
    }
}

/// The transport bytes of an unfragmented IP packet.
fn l4<'a>(frame: &'a [u8], p: &Parsed) -> &'a [u8] {
    let L3::Ip(ip) = p.l3 else { panic!("not IP") };
    &frame[p.l4_offset..p.l3_offset + ip.len]
}

#[test]
fn tcp_over_ipv4_and_ipv6_verifies_and_options_decode() {
    let frames = capture("tcp-http");
    let mut syns = Vec::new();
    let mut segments = 0;
    for (f, p) in &frames {
        if let L3::Ip(ip) = p.l3
            && !ip.v6
        {
            assert!(ipv4::Packet::new_checked(&f[p.l3_offset..]).unwrap().verify_checksum());
        }
        if let L4::Tcp { flags, .. } = p.l4 {
            segments += 1;
            let seg = tcp::Packet::new_checked(l4(f, p)).unwrap();
            assert!(seg.verify_checksum(ips(f, p)), "TCP checksum of {f:02x?}");
            if flags == TcpFlags::SYN {
                syns.push(seg.options().map(Result::unwrap).find_map(|o| match o {
                    TcpOption::Mss(m) => Some(m),
                    _ => None,
                }));
            }
        }
    }
    assert!(segments >= 18, "two HTTP exchanges, {segments} segments");
    assert_eq!(syns, [Some(1460), Some(1440)], "MSS of the IPv4 and the IPv6 SYN");
}

#[test]
fn fragments_carry_ports_only_in_the_first() {
    let frames = capture("fragments");
    let kinds: Vec<_> = frames
        .iter()
        .map(|(_, p)| match (p.l3, p.l4) {
            (L3::Ip(ip), l4) => (ip.v6, ip.fragment, matches!(l4, L4::Icmp { .. })),
            _ => panic!("only IP here"),
        })
        .collect();
    for v6 in [false, true] {
        let of_family: Vec<_> = kinds.iter().filter(|k| k.0 == v6).map(|k| (k.1, k.2)).collect();
        assert_eq!(
            of_family,
            [(Fragment::First, true), (Fragment::Later, false), (Fragment::Later, false)].repeat(2),
            "request and reply of 3000 bytes, each in 3 fragments (v6: {v6})"
        );
    }
}

#[test]
fn icmp_errors_quote_the_flow_that_caused_them() {
    let frames = capture("port-unreachable");
    let mut sent = Vec::new();
    let mut quoted = Vec::new();
    for (f, p) in &frames {
        match p.l4 {
            L4::Udp { .. } => {
                assert!(udp::Packet::new_checked(l4(f, p)).unwrap().verify_checksum(ips(f, p)));
                sent.push(p.flow(f).unwrap());
            }
            L4::Icmp { msg_type, .. } => {
                let v6 = matches!(ips(f, p), IpPair::V6(..));
                assert_eq!(msg_type, if v6 { icmp::v6::DST_UNREACHABLE } else { icmp::v4::DST_UNREACHABLE });
                let msg = icmp::Packet::new_checked(l4(f, p), ips(f, p)).unwrap();
                assert!(msg.verify_checksum(ips(f, p)));
                assert!(icmp::is_error(v6, msg_type));
                quoted.push(layers::parse_quoted(msg.data(), v6).unwrap());
            }
            L4::Tcp { .. } | L4::None => panic!("unexpected frame {f:02x?}"),
        }
    }
    assert_eq!(sent.len(), 2);
    assert_eq!(quoted, sent, "each error quotes the UDP flow it answers");
}

#[test]
fn arp_and_neighbour_discovery() {
    let frames = capture("neighbours");
    let ops: Vec<_> = frames
        .iter()
        .filter(|(_, p)| p.l3 == L3::Arp)
        .map(|(f, p)| arp::Packet::new_checked(&f[p.l3_offset..]).unwrap().operation())
        .collect();
    assert_eq!(ops, [Operation::REQUEST, Operation::REPLY]);
    let nd: Vec<u8> = frames
        .iter()
        .filter_map(|(_, p)| match p.l4 {
            L4::Icmp { msg_type, .. } if msg_type >= icmp::v6::NEIGHBOR_SOLICIT => Some(msg_type),
            _ => None,
        })
        .collect();
    assert_eq!(nd, [icmp::v6::NEIGHBOR_SOLICIT, icmp::v6::NEIGHBOR_ADVERT]);
}

#[test]
fn kernel_vxlan_decapsulates_to_the_inner_frame() {
    let frames = capture("vxlan");
    let mut inner_echo = 0;
    let mut hop_by_hop = 0;
    for (f, p) in &frames {
        let L4::Udp { dst_port: 8472, .. } = p.l4 else { continue };
        let dgram = udp::Packet::new_checked(l4(f, p)).unwrap();
        assert!(dgram.verify_checksum(ips(f, p)));
        let vx = vxlan::Packet::new_checked(dgram.payload()).unwrap();
        assert_eq!(vx.vni(), 42);
        let inner = layers::parse(vx.payload()).unwrap();
        match (inner.l3, inner.l4) {
            (L3::Ip(_), L4::Icmp { msg_type: icmp::v4::ECHO_REQUEST, .. }) => {
                let (_, dst) = inner.addrs(vx.payload()).unwrap();
                assert_eq!(dst, IpAddr::V4(Ipv4Addr::new(198, 19, 42, 1)));
                inner_echo += 1;
            }
            // MLD reports: ICMPv6 behind a hop-by-hop header.
            (L3::Ip(ip), L4::Icmp { .. }) if ip.protocol == IpProtocol::ICMPV6 => hop_by_hop += 1,
            other => panic!("unexpected inner frame {other:?}"),
        }
    }
    assert_eq!(inner_echo, 2);
    assert!(hop_by_hop >= 1);
}

#[test]
fn echo_requests_and_replies_verify() {
    for (f, p) in capture("icmp-echo") {
        let msg = icmp::Packet::new_checked(l4(&f, &p), ips(&f, &p)).unwrap();
        assert!(msg.verify_checksum(ips(&f, &p)));
        assert_eq!(p.flow(&f).unwrap().src_port, msg.ident());
    }
}
