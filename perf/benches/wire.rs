//! skiff-wire's hot operations, each beside a baseline measured in the same run:
//! - a full Ethernet/IPv4/TCP parse to the 5-tuple, and an IPv6 parse through two extension
//!   headers, against etherparse's `SlicedPacket::from_ethernet` on the same frames (which,
//!   like `skiff_headers`, leaves addresses in the frame); `skiff` also returns the whole
//!   `FlowKey` by value, which costs more than the parse (two 17-byte `IpAddr`s);
//! - a DNAT rewrite (destination address and port) with RFC 1624 incremental checksum updates,
//!   against recomputing the IPv4 and TCP checksums after the rewrite.

use std::{hint::black_box, net::Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use skiff_testkit::eth;
use skiff_wire::{checksum::IpPair, ipv4, layers, tcp};

fn frames() -> (Vec<u8>, Vec<u8>) {
    let tcp4 = eth()
        .ipv4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 19, 0, 10))
        .tcp(45000, 80)
        .ack(1)
        .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
        .payload(&[0x41; 64])
        .build();
    let udp6 = eth()
        .ipv6("fd00::2".parse().unwrap(), "fd00:0:0:19::10".parse().unwrap())
        .hop_by_hop()
        .dst_opts(16)
        .udp(5353, 53)
        .payload(&[0x42; 64])
        .build();
    (tcp4, udp6)
}

fn parse(c: &mut Criterion) {
    let (tcp4, udp6) = frames();
    for (name, frame) in [("eth_ipv4_tcp", &tcp4), ("eth_ipv6_2ext_udp", &udp6)] {
        let mut g = c.benchmark_group(format!("parse/{name}"));
        g.bench_function("skiff", |b| {
            b.iter(|| {
                let frame = black_box(frame);
                layers::parse(frame).ok().and_then(|p| p.flow(frame))
            })
        });
        // The parse alone: offsets, protocol, ports and flags, no addresses copied out.
        g.bench_function("skiff_headers", |b| {
            b.iter(|| layers::parse(black_box(frame)).map(|p| (p.l4_offset, p.l4)).ok())
        });
        g.bench_function("etherparse", |b| {
            b.iter(|| {
                let s = etherparse::SlicedPacket::from_ethernet(black_box(frame)).ok()?;
                let ports = match s.transport? {
                    etherparse::TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
                    etherparse::TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
                    _ => return None,
                };
                Some((s.net.map(|n| n.ip_payload_ref().map(|p| p.ip_number)), ports))
            })
        });
        g.finish();
    }
}

/// Rewrites destination 198.19.0.10:80 to 198.18.128.10:8080 in a frame of `payload` bytes.
fn dnat(c: &mut Criterion) {
    let new_dst = Ipv4Addr::new(198, 18, 128, 10);
    for payload in [64usize, 1400] {
        let frame = eth()
            .ipv4(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 19, 0, 10))
            .tcp(45000, 80)
            .ack(1)
            .payload(&vec![0x43; payload])
            .build();
        let mut g = c.benchmark_group(format!("dnat/payload_{payload}"));
        // Each iteration rewrites once, alternating between the service and the backend
        // address, so both variants do the same work on the same frame.
        let targets = [(new_dst, 8080), (Ipv4Addr::new(198, 19, 0, 10), 80)];
        g.bench_function("incremental", |b| {
            let mut f = frame.clone();
            let mut i = 0;
            b.iter(|| {
                let (dst, port) = targets[i & 1];
                i += 1;
                let (ip, l4) = f[14..].split_at_mut(20);
                let mut ip = ipv4::Packet::new_unchecked(ip);
                let old = ip.rewrite_dst(black_box(dst));
                let mut seg = tcp::Packet::new_checked(l4).unwrap();
                seg.update_checksum_addr(&old.octets(), &dst.octets());
                let old_port = seg.dst_port();
                seg.set_dst_port(port);
                seg.update_checksum16(old_port, port);
            })
        });
        g.bench_function("recompute", |b| {
            let mut f = frame.clone();
            let mut i = 0;
            b.iter(|| {
                let (dst, port) = targets[i & 1];
                i += 1;
                let (ip, l4) = f[14..].split_at_mut(20);
                let mut ip = ipv4::Packet::new_unchecked(ip);
                ip.set_dst(black_box(dst));
                ip.fill_checksum();
                let mut seg = tcp::Packet::new_checked(l4).unwrap();
                seg.set_dst_port(port);
                seg.fill_checksum(IpPair::V4(ip.src(), dst));
            })
        });
        g.finish();
    }
}

criterion_group!(benches, parse, dnat);
criterion_main!(benches);
