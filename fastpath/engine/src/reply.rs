//! Answers the engine writes in place of a frame: a TCP RST for a connection attempt it must
//! refuse, an ICMP destination-unreachable (port unreachable) for a datagram, an ICMP
//! "fragmentation needed" or ICMPv6 "packet too big" for a packet too big for the tunnel.
//! The frame's buffer is reused; an answer that would not fit is not sent.

use std::net::IpAddr;

/// The longest quote: an IPv4 header with options (60) and 8 bytes, or IPv6 with room to spare.
const MAX_QUOTE: usize = 128;

use skiff_wire::{
    IpProtocol,
    checksum::IpPair,
    icmp::{self, IcmpRepr},
    layers::{L3, L4, Parsed},
    tcp::{TcpFlags, TcpRepr},
};

/// Rewrites the TCP segment in `frame` into the RST its sender expects (RFC 9293 §3.10.7.1)
/// from the address it was sent to; returns the reply's length. `None` for a RST (never
/// answered) or a frame that is not plain TCP.
pub fn tcp_reset(frame: &mut [u8], p: &Parsed) -> Option<usize> {
    let (L3::Ip(ip), L4::Tcp { src_port, dst_port, flags }) = (p.l3, p.l4) else { return None };
    if flags.contains(TcpFlags::RST) {
        return None;
    }
    let (src, dst) = p.addrs(frame)?;
    let seg = &frame[p.l4_offset..p.l3_offset + ip.len];
    let seq = u32::from_be_bytes(seg.get(4..8)?.try_into().ok()?);
    let ack = u32::from_be_bytes(seg.get(8..12)?.try_into().ok()?);
    let header_len = usize::from(seg.get(12)? >> 4) * 4;
    let data = seg.len().saturating_sub(header_len);
    let consumed = u32::try_from(data).ok()?
        + u32::from(flags.contains(TcpFlags::SYN))
        + u32::from(flags.contains(TcpFlags::FIN));
    let (seq, ack, reply_flags) = if flags.contains(TcpFlags::ACK) {
        (ack, 0, TcpFlags::RST)
    } else {
        (0, seq.wrapping_add(consumed), TcpFlags::RST | TcpFlags::ACK)
    };
    let rst = TcpRepr {
        src_port: dst_port,
        dst_port: src_port,
        seq,
        ack,
        flags: reply_flags,
        window: 0,
        urgent: 0,
        options: &[],
        payload: &[],
    };
    write_ip(frame, p, dst, src, IpProtocol::TCP, rst.buffer_len(), |l4, ips| rst.emit(l4, ips))
}

/// Rewrites the datagram in `frame` into an ICMP port unreachable from the address it was
/// sent to, quoting the start of the datagram (RFC 792, RFC 4443); returns the reply's length,
/// or `None` when the frame's buffer is too short to hold it.
pub fn port_unreachable(frame: &mut [u8], p: &Parsed) -> Option<usize> {
    let (_, dst) = p.addrs(frame)?;
    let types = (
        (icmp::v4::DST_UNREACHABLE, icmp::v4::CODE_PORT_UNREACHABLE),
        (icmp::v6::DST_UNREACHABLE, icmp::v6::CODE_PORT_UNREACHABLE),
    );
    icmp_error(frame, p, dst, types, 0)
}

/// Rewrites the packet in `frame`, too big for a path of `mtu` bytes, into the ICMP
/// "fragmentation needed" (RFC 1191) or ICMPv6 "packet too big" (RFC 8201) its sender's
/// path MTU discovery expects, from `from` (this node); returns the reply's length. `None`
/// for an IPv4 packet without DF (the sender did not ask for discovery) or a frame too short.
pub fn too_big(frame: &mut [u8], p: &Parsed, from: IpAddr, mtu: u16) -> Option<usize> {
    let L3::Ip(ip) = p.l3 else { return None };
    if !ip.v6 && frame.get(p.l3_offset + 6)? & 0x40 == 0 {
        return None;
    }
    let types = ((icmp::v4::DST_UNREACHABLE, icmp::v4::CODE_FRAG_NEEDED), (icmp::v6::PACKET_TOO_BIG, 0));
    icmp_error(frame, p, from, types, u32::from(mtu))
}

/// Rewrites the packet in `frame` into an ICMP error from `from` of `types` (IPv4's, IPv6's
/// type and code) with `rest` as its second word, quoting the packet's start.
fn icmp_error(
    frame: &mut [u8],
    p: &Parsed,
    from: IpAddr,
    types: ((u8, u8), (u8, u8)),
    rest: u32,
) -> Option<usize> {
    let L3::Ip(ip) = p.l3 else { return None };
    let (src, _) = p.addrs(frame)?;
    // The quote: the IP headers and the first 8 bytes of the datagram (RFC 792 asks for that
    // much; RFC 4443 for as much as fits), copied aside (no allocation) before the frame is
    // rewritten.
    let quote_len = (p.l4_offset + 8 - p.l3_offset).min(ip.len).min(MAX_QUOTE);
    let mut quote = [0u8; MAX_QUOTE];
    quote[..quote_len].copy_from_slice(frame.get(p.l3_offset..p.l3_offset + quote_len)?);
    let quote = &quote[..quote_len];
    let (msg_type, code) = if ip.v6 { types.1 } else { types.0 };
    let message = IcmpRepr { msg_type, code, rest, data: quote };
    let protocol = if ip.v6 { IpProtocol::ICMPV6 } else { IpProtocol::ICMP };
    write_ip(frame, p, from, src, protocol, message.buffer_len(), |l4, ips| message.emit(l4, ips))
}

/// Writes a new IP header from `src` to `dst` after the frame's Ethernet header (and tags),
/// then lets `emit` write `l4_len` bytes of transport; swaps the MACs. `None` if it does not fit.
fn write_ip(
    frame: &mut [u8],
    p: &Parsed,
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    l4_len: usize,
    emit: impl FnOnce(&mut [u8], IpPair),
) -> Option<usize> {
    let (l3, ips) = (
        p.l3_offset,
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpPair::V4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => IpPair::V6(s, d),
            _ => return None,
        },
    );
    let header_len = ips.header_len();
    let len = l3 + header_len + l4_len;
    if len > frame.len() {
        return None;
    }
    // The transport part first: the quote it may carry was read before anything was written.
    emit(&mut frame[l3 + header_len..len], ips);
    ips.emit_header(&mut frame[l3..], protocol, l4_len, 0);
    let (dst_mac, src_mac): ([u8; 6], [u8; 6]) = (frame[6..12].try_into().ok()?, frame[..6].try_into().ok()?);
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    Some(len)
}
