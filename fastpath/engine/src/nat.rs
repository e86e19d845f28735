//! NAT on a parsed frame in place: rewrite the addresses and ports of an IPv4 or IPv6 TCP, UDP
//! or ICMP-echo packet with checksum changes worked out once per flow ([`Rewrite`], RFC 1624,
//! never reading the payload); decrement the TTL or hop limit; and translate the packet an
//! ICMP error quotes.

use std::net::{IpAddr, Ipv6Addr};

use skiff_common::DropReason;
use skiff_wire::{
    IpProtocol,
    checksum::{self, IpPair, change},
    icmp, ipv4, ipv6,
    layers::{L3, L4, Parsed},
};

use crate::flow::Tuple;

/// Which endpoint of the packet to rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// One direction of a tracked flow's translation, worked out when the flow starts: its packets
/// arrive as `from` and leave as `to`, so the change of every checksum is fixed for the flow
/// (RFC 1624: the new words' sum minus the old), the TTL decrement included. A packet then
/// costs a few stores and two one's-complement additions, in either family (what Katran and
/// Cilium's `csum_diff` do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// Added to the IPv4 header checksum: the addresses and the TTL.
    ip: u16,
    /// Added to the transport checksum: the pseudo-header's addresses (not ICMPv4's: it has
    /// none) and the ports or echo identifier.
    l4: u16,
}

/// The TTL's step down in the IPv4 checksum: the word (TTL, protocol) loses 0x100, and
/// `!m + (m - 0x100)` is 0xfeff whatever `m` is.
const TTL_DECREMENT: u32 = 0xfeff;

impl Rewrite {
    /// What it adds to the IPv4 header checksum and to the L4 checksum (the XDP program's
    /// flow table applies the same).
    pub fn deltas(&self) -> (u16, u16) {
        (self.ip, self.l4)
    }

    /// The rewrite of packets arriving as `from` into `to` (same family and protocol).
    pub fn new(from: &Tuple, to: &Tuple) -> Rewrite {
        let v6 = Ipv6Addr::from(from.src).to_ipv4_mapped().is_none();
        let addrs = if v6 { 0..16 } else { 12..16 };
        let mut ip = 0u32;
        for (old, new) in [(&from.src, &to.src), (&from.dst, &to.dst)] {
            ip += change(&old[addrs.clone()], &new[addrs.clone()]);
        }
        let ports = change(&from.src_port.to_be_bytes(), &to.src_port.to_be_bytes())
            + change(&from.dst_port.to_be_bytes(), &to.dst_port.to_be_bytes());
        let icmp_v4 = from.protocol == IpProtocol::ICMP.0;
        let l4 = if icmp_v4 { ports } else { ip + ports };
        Rewrite { ip: checksum::fold(ip + TTL_DECREMENT), l4: checksum::fold(l4) }
    }

    /// Rewrites the packet in `frame` (parsed as `p`, its tuple this rewrite's `from`) so that
    /// it leaves as the reverse of `other` (the flow's other direction: this rewrite's `to`,
    /// reversed), and decrements its TTL or hop limit. A packet whose TTL runs out is left
    /// untouched and dropped (`DropReason::TtlExceeded`).
    #[inline]
    pub fn apply(&self, frame: &mut [u8], p: &Parsed, other: &Tuple) -> Result<(), DropReason> {
        let L3::Ip(ip) = p.l3 else { return Err(DropReason::UnsupportedEthertype) };
        if ip.ttl <= 1 {
            return Err(DropReason::TtlExceeded);
        }
        let (l3, l4) = (p.l3_offset, p.l4_offset);
        if ip.v6 {
            let h: &mut [u8; ipv6::HEADER_LEN] =
                frame.get_mut(l3..).and_then(|h| h.first_chunk_mut()).ok_or(DropReason::Ipv6Truncated)?;
            h[7] = ip.ttl - 1;
            h[8..24].copy_from_slice(&other.dst);
            h[24..40].copy_from_slice(&other.src);
        } else {
            let h: &mut [u8; ipv4::HEADER_LEN] =
                frame.get_mut(l3..).and_then(|h| h.first_chunk_mut()).ok_or(DropReason::Ipv4Truncated)?;
            h[8] = ip.ttl - 1;
            h[12..16].copy_from_slice(&other.dst[12..]);
            h[16..20].copy_from_slice(&other.src[12..]);
            add_at(h, 10, self.ip, false);
        }
        // Where the ports (or the echo identifier) and the checksum are, and the header's
        // length up to them.
        let (ports_at, sum_at, zero_means_none, truncated) = match p.l4 {
            L4::Tcp { .. } => (Some(0), 16, false, DropReason::TcpTruncated),
            L4::Udp { .. } => (Some(0), 6, true, DropReason::UdpTruncated),
            L4::Icmp { .. } => (None, 2, false, DropReason::IcmpTruncated),
            L4::None => return Err(DropReason::UnknownProtocol),
        };
        let t = frame.get_mut(l4..l4 + sum_at.max(6) + 2).ok_or(truncated)?;
        match ports_at {
            Some(at) => {
                t[at..at + 2].copy_from_slice(&other.dst_port.to_be_bytes());
                t[at + 2..at + 4].copy_from_slice(&other.src_port.to_be_bytes());
            }
            // An echo request's identifier stands as its source port, a reply's as its
            // destination port.
            None => {
                let ident = if other.src_port == 0 { other.dst_port } else { other.src_port };
                t[4..6].copy_from_slice(&ident.to_be_bytes());
            }
        }
        add_at(t, sum_at, self.l4, zero_means_none);
        Ok(())
    }
}

/// Adds `delta` to the checksum at `at` in `bytes` (RFC 1624 eqn. 3). `zero_means_none`: a
/// UDP checksum of 0 means there is none, and a computed 0 is sent as 0xffff.
#[inline]
fn add_at(bytes: &mut [u8], at: usize, delta: u16, zero_means_none: bool) {
    let old = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    if zero_means_none && old == 0 {
        return;
    }
    let mut new = !checksum::fold(u32::from(!old) + u32::from(delta));
    if zero_means_none && new == 0 {
        new = 0xffff;
    }
    bytes[at..at + 2].copy_from_slice(&new.to_be_bytes());
}

/// Decrements the TTL (IPv4, checksum updated) or hop limit (IPv6); a packet whose TTL runs
/// out is not forwarded (`DropReason::TtlExceeded`).
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
            let delta =
                change(&old[..width], &new[..width]) + change(&before.to_be_bytes(), &port.to_be_bytes());
            add_at(t, sum_at, checksum::fold(delta), protocol == IpProtocol::UDP.0);
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use skiff_testkit::eth;
    use skiff_wire::{icmp, layers};

    use super::Rewrite;
    use crate::{flow::Tuple, hash::mix64};

    /// A packet of `t` (ICMP: an echo request with the source port as identifier, or a reply
    /// with the destination port), built whole with every checksum computed.
    fn packet(t: &Tuple, ttl: u8, udp_zero_sum: bool) -> Vec<u8> {
        let addr = |a: [u8; 16]| {
            let a = Ipv6Addr::from(a);
            a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
        };
        let b = match (addr(t.src), addr(t.dst)) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth().ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth().ipv6(s, d),
            _ => unreachable!("one family"),
        }
        .ttl(ttl);
        let v6 = Ipv6Addr::from(t.src).to_ipv4_mapped().is_none();
        let b = match (t.protocol, t.src_port) {
            (6, _) => b.tcp(t.src_port, t.dst_port).ack(7),
            (17, _) => b.udp(t.src_port, t.dst_port),
            (_, 0) => b.icmp(
                if v6 { icmp::v6::ECHO_REPLY } else { icmp::v4::ECHO_REPLY },
                0,
                u32::from(t.dst_port) << 16 | 9,
            ),
            _ => b.icmp(
                if v6 { icmp::v6::ECHO_REQUEST } else { icmp::v4::ECHO_REQUEST },
                0,
                u32::from(t.src_port) << 16 | 9,
            ),
        };
        let mut frame = b.payload(b"seventeen bytes!!").build();
        if udp_zero_sum {
            // IPv4 UDP without a checksum: it must stay without one.
            let at = frame.len() - 17 - 2;
            frame[at..at + 2].fill(0);
        }
        frame
    }

    /// Every rewrite of either family and protocol gives the frame a builder makes for the new
    /// tuple, checksums computed from scratch: DNAT, reverse NAT, masquerading both ends.
    #[test]
    fn a_precomputed_rewrite_equals_building_the_packet_anew() {
        let mut seed = 1u64;
        let mut next = || {
            seed = mix64(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
            seed
        };
        for case in 0..2000 {
            let v6 = case % 2 == 1;
            let protocol = [6, 17, 17, if v6 { 58 } else { 1 }][case / 2 % 4];
            let udp_zero_sum = !v6 && case / 2 % 4 == 2;
            let mut addr = || -> IpAddr {
                let r = next();
                if v6 {
                    Ipv6Addr::from(u128::from(r) << 64 | 0xfd00 << 112 | u128::from(r >> 7)).into()
                } else {
                    Ipv4Addr::from((r >> 32) as u32).into()
                }
            };
            let (a, b, c, d) = (addr(), addr(), addr(), addr());
            let r = next().to_be_bytes();
            let port = |k: usize| u16::from_be_bytes([r[2 * k], r[2 * k + 1]]) | 1;
            let (from, to) = if protocol == 1 || protocol == 58 {
                // Echo: a request's identifier rewritten, or a reply's.
                if case / 8 % 2 == 0 {
                    (Tuple::new(a, b, protocol, port(0), 0), Tuple::new(c, d, protocol, port(1), 0))
                } else {
                    (Tuple::new(a, b, protocol, 0, port(0)), Tuple::new(c, d, protocol, 0, port(1)))
                }
            } else {
                (Tuple::new(a, b, protocol, port(0), port(1)), Tuple::new(c, d, protocol, port(2), port(3)))
            };
            let ttl = r[0] | 2;
            let mut frame = packet(&from, ttl, udp_zero_sum);
            let p = layers::parse(&frame).expect("a well-formed packet");
            Rewrite::new(&from, &to).apply(&mut frame, &p, &to.reversed()).expect("rewritten");
            assert_eq!(frame, packet(&to, ttl - 1, udp_zero_sum), "case {case}: {from:?} -> {to:?}");
        }
    }
}
