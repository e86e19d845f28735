//! Header parsing: Ethernet with up to two VLAN tags, IPv4 and IPv6 (extension headers
//! followed, bounded), and the L4 header's ports. Malformed headers are drop reasons.

use aya_ebpf::programs::XdpContext;
use skiff_common::{
    DropReason,
    proto::{MAX_EXT_HEADERS, ethertype, ip},
};
use skiff_xdp_ebpf::packet::{be16, bytes, len};

pub const ETH_LEN: usize = 14;
/// Furthest offset an L4 header may start at: keeps offsets bounded for the verifier.
const MAX_L4_OFFSET: usize = 512;

/// The EtherType after any VLAN tags, and where the L3 header starts.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<(u16, usize), DropReason> {
    let eth: [u8; ETH_LEN] = bytes(ctx, 0).ok_or(DropReason::EthernetTruncated)?;
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut l3 = ETH_LEN;
    for _ in 0..2 {
        if ethertype != ethertype::VLAN && ethertype != ethertype::QINQ {
            break;
        }
        let tag: [u8; 4] = bytes(ctx, l3).ok_or(DropReason::VlanTruncated)?;
        ethertype = be16([tag[2], tag[3]]);
        l3 += 4;
    }
    if ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
        return Err(DropReason::VlanTooDeep);
    }
    Ok((ethertype, l3))
}

/// An IP header's addresses and where its payload is.
pub struct Ip<const N: usize> {
    pub src: [u8; N],
    pub dst: [u8; N],
    pub protocol: u8,
    /// Where the L4 header starts.
    pub l4: usize,
    /// A fragment after the first: it has no L4 header.
    pub later_fragment: bool,
    /// Any IPv4 fragment (more fragments, or an offset).
    pub fragment: bool,
    /// The TTL or hop limit.
    pub ttl: u8,
}

#[inline(always)]
pub fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Ip<4>, DropReason> {
    let h: [u8; 20] = bytes(ctx, l3).ok_or(DropReason::Ipv4Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::Ipv4BadVersion);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < 20 || l3 + header_len > len(ctx) {
        return Err(DropReason::Ipv4BadHeaderLength);
    }
    let total = usize::from(be16([h[2], h[3]]));
    if total < header_len || l3 + total > len(ctx) {
        return Err(DropReason::Ipv4BadTotalLength);
    }
    Ok(Ip {
        src: [h[12], h[13], h[14], h[15]],
        dst: [h[16], h[17], h[18], h[19]],
        protocol: h[9],
        l4: l3 + header_len,
        later_fragment: be16([h[6], h[7]]) & 0x1fff != 0,
        fragment: be16([h[6], h[7]]) & 0x3fff != 0,
        ttl: h[8],
    })
}

/// The fixed IPv6 header; [`extension_headers`] finds the payload.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Ip<16>, DropReason> {
    let h: [u8; 40] = bytes(ctx, l3).ok_or(DropReason::Ipv6Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::Ipv6BadVersion);
    }
    if l3 + 40 + usize::from(be16([h[4], h[5]])) > len(ctx) {
        return Err(DropReason::Ipv6BadPayloadLength);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    Ok(Ip { src, dst, protocol: h[6], l4: l3 + 40, later_fragment: false, fragment: false, ttl: h[7] })
}

/// Follows hop-by-hop, routing, fragment and destination-options headers from the fixed
/// header's; sets the upper protocol, its offset, and whether this is a later fragment.
#[inline(always)]
pub fn extension_headers(ctx: &XdpContext, h: &mut Ip<16>) -> Result<(), DropReason> {
    let (mut next, mut offset) = (h.protocol, h.l4);
    for crossed in 0..=MAX_EXT_HEADERS {
        match next {
            ip::HOP_BY_HOP | ip::ROUTING | ip::FRAGMENT | ip::DST_OPTS => {}
            _ => {
                (h.protocol, h.l4) = (next, offset);
                return Ok(());
            }
        }
        if crossed == MAX_EXT_HEADERS {
            break;
        }
        if next == ip::HOP_BY_HOP && crossed != 0 {
            return Err(DropReason::Ipv6BadExtHeader);
        }
        let e: [u8; 8] = bytes(ctx, offset).ok_or(DropReason::Ipv6BadExtHeader)?;
        if next == ip::FRAGMENT {
            if be16([e[2], e[3]]) & 0xfff8 != 0 {
                (h.protocol, h.l4, h.later_fragment) = (e[0], offset + 8, true);
                return Ok(());
            }
            offset += 8;
        } else {
            offset += (usize::from(e[1]) + 1) * 8;
        }
        if offset > MAX_L4_OFFSET || offset > len(ctx) {
            return Err(DropReason::Ipv6BadExtHeader);
        }
        next = e[0];
    }
    Err(DropReason::Ipv6ExtHeaderLimit)
}

/// An L4 header's ports (ICMP's echo identifier stands in the source port) and TCP flags.
pub struct Ports {
    pub src: u16,
    pub dst: u16,
    pub tcp_flags: u8,
}

/// Validates the L4 header at `offset` and returns its ports.
#[inline(always)]
pub fn l4(ctx: &XdpContext, offset: usize, protocol: u8) -> Result<Ports, DropReason> {
    if offset > MAX_L4_OFFSET {
        return Err(DropReason::Ipv6BadExtHeader);
    }
    match protocol {
        ip::TCP => {
            let t: [u8; 20] = bytes(ctx, offset).ok_or(DropReason::TcpTruncated)?;
            let data_offset = usize::from(t[12] >> 4) * 4;
            if data_offset < 20 || offset + data_offset > len(ctx) {
                return Err(DropReason::TcpBadDataOffset);
            }
            Ok(Ports { src: be16([t[0], t[1]]), dst: be16([t[2], t[3]]), tcp_flags: t[13] })
        }
        ip::UDP => {
            let u: [u8; 8] = bytes(ctx, offset).ok_or(DropReason::UdpTruncated)?;
            let udp_len = usize::from(be16([u[4], u[5]]));
            if udp_len < 8 || offset + udp_len > len(ctx) {
                return Err(DropReason::UdpBadLength);
            }
            Ok(Ports { src: be16([u[0], u[1]]), dst: be16([u[2], u[3]]), tcp_flags: 0 })
        }
        ip::ICMP | ip::ICMPV6 => {
            let i: [u8; 8] = bytes(ctx, offset).ok_or(DropReason::IcmpTruncated)?;
            Ok(Ports { src: be16([i[4], i[5]]), dst: 0, tcp_flags: 0 })
        }
        _ => Ok(Ports { src: 0, dst: 0, tcp_flags: 0 }),
    }
}
