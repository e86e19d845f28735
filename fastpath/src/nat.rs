//! NAT on a parsed frame in place: rewrite one endpoint (address and port) of an IPv4 or IPv6
//! TCP, UDP or ICMP-echo packet, updating every checksum incrementally (RFC 1624) without
//! reading the payload; and decrement the TTL or hop limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use skiff_common::DropReason;
use skiff_wire::{
    IpProtocol,
    checksum::{self, IpPair},
    icmp, ipv4, ipv6,
    layers::{L3, L4, Parsed},
    tcp, udp,
};

/// Which endpoint of the packet to rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Rewrites `side` of the packet in `frame` (parsed as `p`) to `addr` and `port` (for ICMP
/// echo, the identifier). The family must stay the same.
pub fn rewrite(frame: &mut [u8], p: &Parsed, side: Side, addr: IpAddr, port: u16) -> Result<(), DropReason> {
    let L3::Ip(ip) = p.l3 else { return Err(DropReason::UnsupportedEthertype) };
    let (l3, l4, end) = (p.l3_offset, p.l4_offset, p.l3_offset + ip.len);
    let (head, l4_bytes) = frame.split_at_mut(l4);
    let l4_bytes = &mut l4_bytes[..end - l4];
    // The address: in the IP header, and in the L4 checksum's pseudo-header.
    let (old, new): ([u8; 16], [u8; 16]);
    let width = match (addr, ip.v6) {
        (IpAddr::V4(a), false) => {
            let mut h = ipv4::Packet::new_unchecked(&mut head[l3..]);
            let before = if side == Side::Source { h.rewrite_src(a) } else { h.rewrite_dst(a) };
            (old, new) = (pad(&before.octets()), pad(&a.octets()));
            4
        }
        (IpAddr::V6(a), true) => {
            let mut h = ipv6::Packet::new_unchecked(&mut head[l3..]);
            let before = if side == Side::Source { h.src() } else { h.dst() };
            if side == Side::Source {
                h.set_src(a)
            } else {
                h.set_dst(a)
            }
            (old, new) = (before.octets(), a.octets());
            16
        }
        _ => return Err(DropReason::UnknownProtocol),
    };
    let (old, new) = (&old[..width], &new[..width]);
    match p.l4 {
        L4::Tcp { src_port, dst_port, .. } => {
            let mut t = tcp::Packet::new_checked(l4_bytes).map_err(|_| DropReason::TcpTruncated)?;
            t.update_checksum_addr(old, new);
            let before = if side == Side::Source { src_port } else { dst_port };
            if side == Side::Source {
                t.set_src_port(port)
            } else {
                t.set_dst_port(port)
            }
            t.update_checksum16(before, port);
        }
        L4::Udp { src_port, dst_port } => {
            let mut u = udp::Packet::new_checked(l4_bytes).map_err(|_| DropReason::UdpTruncated)?;
            u.update_checksum_addr(old, new);
            let before = if side == Side::Source { src_port } else { dst_port };
            if side == Side::Source {
                u.set_src_port(port)
            } else {
                u.set_dst_port(port)
            }
            u.update_checksum16(before, port);
        }
        L4::Icmp { ident, .. } if ip.protocol == IpProtocol::ICMP || ip.protocol == IpProtocol::ICMPV6 => {
            // The pair only names the family in errors.
            let family = if ip.v6 {
                IpPair::V6(Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED)
            } else {
                IpPair::V4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)
            };
            let mut m = icmp::Packet::new_checked(l4_bytes, family).map_err(|_| DropReason::IcmpTruncated)?;
            if ip.v6 {
                // ICMPv6's checksum covers the pseudo-header; ICMPv4's does not.
                m.set_checksum(checksum::update_bytes(m.checksum(), old, new));
            }
            m.set_ident(port);
            m.update_checksum16(ident, port);
        }
        _ => return Err(DropReason::UnknownProtocol),
    }
    Ok(())
}

/// Decrements the TTL (IPv4, checksum updated) or hop limit (IPv6); a packet whose TTL runs
/// out is for the slow path's ICMP time-exceeded, not for forwarding.
pub fn decrement_ttl(frame: &mut [u8], p: &Parsed) -> Result<(), DropReason> {
    let L3::Ip(ip) = p.l3 else { return Ok(()) };
    if ip.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let l3 = &mut frame[p.l3_offset..];
    if ip.v6 {
        ipv6::Packet::new_unchecked(l3).set_hop_limit(ip.ttl - 1);
    } else {
        ipv4::Packet::new_unchecked(l3).decrement_ttl();
    }
    Ok(())
}

fn pad(v4: &[u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(v4);
    a
}
