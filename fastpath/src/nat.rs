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
    let (old, new) = set_addr(&mut head[l3..], ip.v6, side, addr, false)?;
    let width = if ip.v6 { 16 } else { 4 };
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

/// Translates an ICMP error about a NATed flow: the outer `side` address becomes `addr`, and
/// inside the quoted packet the opposite endpoint becomes `addr:port` (the quote is the packet
/// as it left us, so its other side is the one the error's sender saw). The quoted IP header
/// checksum and any quoted L4 checksum are updated incrementally; the ICMP checksum, which
/// covers the quote, is recomputed (an error message is short).
pub fn translate_icmp_error(
    frame: &mut [u8],
    p: &Parsed,
    side: Side,
    addr: IpAddr,
    port: u16,
) -> Result<(), DropReason> {
    let L3::Ip(ip) = p.l3 else { return Err(DropReason::UnsupportedEthertype) };
    let (l3, l4, end) = (p.l3_offset, p.l4_offset, p.l3_offset + ip.len);
    let inner = match side {
        Side::Source => Side::Destination,
        Side::Destination => Side::Source,
    };
    set_addr(&mut frame[l3..l4], ip.v6, side, addr, false)?;
    let quote = frame.get_mut(l4 + icmp::HEADER_LEN..end).ok_or(DropReason::IcmpTruncated)?;
    let (old, new) = set_addr(quote, ip.v6, inner, addr, true)?;
    // The quoted transport header: its port, and its checksum where the quote holds it.
    let quoted_l4 = if ip.v6 {
        let q = ipv6::Packet::new_quoted(&*quote).map_err(|_| DropReason::IcmpTruncated)?;
        ipv6::HEADER_LEN + q.upper_layer().map_err(|_| DropReason::IcmpTruncated)?.offset
    } else {
        ipv4::Packet::new_quoted(&*quote).map_err(|_| DropReason::IcmpTruncated)?.header_len()
    };
    let protocol = if ip.v6 { quote[6] } else { quote[9] };
    let t = quote.get_mut(quoted_l4..).ok_or(DropReason::IcmpTruncated)?;
    if t.len() >= 4 && (protocol == IpProtocol::TCP.0 || protocol == IpProtocol::UDP.0) {
        let at = if inner == Side::Source { 0 } else { 2 };
        let before = u16::from_be_bytes([t[at], t[at + 1]]);
        t[at..at + 2].copy_from_slice(&port.to_be_bytes());
        let width = if ip.v6 { 16 } else { 4 };
        let sum_at = if protocol == IpProtocol::TCP.0 { 16 } else { 6 };
        if t.len() >= sum_at + 2 {
            let sum = u16::from_be_bytes([t[sum_at], t[sum_at + 1]]);
            if !(protocol == IpProtocol::UDP.0 && sum == 0) {
                let sum = checksum::update16(
                    checksum::update_bytes(sum, &old[..width], &new[..width]),
                    before,
                    port,
                );
                t[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
            }
        }
    }
    let (src, dst) = p.addrs(frame).ok_or(DropReason::Internal)?;
    let ips = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => IpPair::V4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => IpPair::V6(s, d),
        _ => return Err(DropReason::Internal),
    };
    let mut m = icmp::Packet::new_checked(&mut frame[l4..end], ips).map_err(|_| DropReason::IcmpTruncated)?;
    m.fill_checksum(ips);
    Ok(())
}

/// Sets the `side` address of the IP header at the start of `header` to `addr` (updating an
/// IPv4 header checksum); `quoted` accepts a header whose packet is cut short. Returns the old
/// and new address bytes (IPv4 in the first 4).
fn set_addr(
    header: &mut [u8],
    v6: bool,
    side: Side,
    addr: IpAddr,
    quoted: bool,
) -> Result<([u8; 16], [u8; 16]), DropReason> {
    match (addr, v6) {
        (IpAddr::V4(a), false) => {
            let mut h = if quoted {
                ipv4::Packet::new_quoted(header).map_err(|_| DropReason::IcmpTruncated)?
            } else {
                ipv4::Packet::new_unchecked(header)
            };
            let before = if side == Side::Source { h.rewrite_src(a) } else { h.rewrite_dst(a) };
            Ok((pad(&before.octets()), pad(&a.octets())))
        }
        (IpAddr::V6(a), true) => {
            let mut h = if quoted {
                ipv6::Packet::new_quoted(header).map_err(|_| DropReason::IcmpTruncated)?
            } else {
                ipv6::Packet::new_unchecked(header)
            };
            let before = if side == Side::Source { h.src() } else { h.dst() };
            if side == Side::Source {
                h.set_src(a)
            } else {
                h.set_dst(a)
            }
            Ok((before.octets(), a.octets()))
        }
        _ => Err(DropReason::UnknownProtocol),
    }
}
