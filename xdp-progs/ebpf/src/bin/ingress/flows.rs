//! The flow table at the NIC. A packet of a tracked flow goes to the worker unless the worker
//! offloaded the flow's direction; then it is translated here (addresses, ports, checksums
//! by the entry's precomputed deltas, TTL or hop limit, MACs) and sent out of the entry's
//! interface through `TX_PORTS` (XDP_REDIRECT), as the kernel's flowtable or Katran do. What is
//! not plain (TCP SYN, FIN or RST, IP options, extension headers, fragments, a TTL running out,
//! VLAN tags, an output the devmap lacks) still goes to the worker, counted by [`FlowPath`].

use aya_ebpf::{helpers::bpf_jiffies64, programs::XdpContext};
use skiff_common::{
    DropReason,
    conntrack::{CtEntry, FlowPath},
    proto::ip,
};
use skiff_xdp_ebpf::packet::{be16, bytes_mut, len};

use crate::{
    maps::{FLOW_COUNTS, TX_PORTS},
    metrics::count,
    parse::{ETH_LEN, Ip},
};

const V4_L4: usize = ETH_LEN + 20;
const V6_L4: usize = ETH_LEN + 40;
const TCP_SYN_FIN_RST: u8 = 0x07;

/// Forwards an IPv4 packet (L3 at `l3`, header `h` as parsed) whose tuple has the entry at
/// `entry`: `Ok(true)`, redirected; `Ok(false)`, it goes to the worker.
#[inline(always)]
pub fn forward_v4(
    ctx: &XdpContext,
    l3: usize,
    h: &Ip<4>,
    tcp_flags: u8,
    entry: *mut CtEntry,
) -> Result<bool, DropReason> {
    // No VLAN tag, no options, not a fragment (MF or an offset), a TTL left.
    let plain = l3 == ETH_LEN && h.l4 == V4_L4 && !h.fragment && h.ttl > 1;
    finish(ctx, try_forward(ctx, entry, plain, (V4_L4, h.protocol, tcp_flags)))
}

/// As [`forward_v4`], for IPv6 (no extension headers).
#[inline(always)]
pub fn forward_v6(
    ctx: &XdpContext,
    l3: usize,
    h: &Ip<16>,
    tcp_flags: u8,
    entry: *mut CtEntry,
) -> Result<bool, DropReason> {
    let plain = l3 == ETH_LEN && h.l4 == V6_L4 && h.ttl > 1;
    finish(ctx, try_forward(ctx, entry, plain, (V6_L4, h.protocol, tcp_flags)))
}

#[inline(always)]
fn finish(ctx: &XdpContext, path: Result<FlowPath, DropReason>) -> Result<bool, DropReason> {
    let path = path?;
    count(&FLOW_COUNTS, path as u32, len(ctx) as u64);
    Ok(path == FlowPath::Forwarded)
}

/// `plain`: the IP header is one the rewrite handles; then where L4 starts, its protocol
/// and (TCP) flags, as parsed.
#[inline(always)]
fn try_forward(
    ctx: &XdpContext,
    entry: *mut CtEntry,
    plain: bool,
    (l4, protocol, tcp_flags): (usize, u8, u8),
) -> Result<FlowPath, DropReason> {
    // SAFETY: a pointer from a successful lookup, valid for this run (an update replaces the
    // element under RCU: this run sees the old one or the new one, whole).
    let e = unsafe { &*entry };
    if !e.offloaded() {
        return Ok(FlowPath::Worker);
    }
    match protocol {
        _ if !plain => return Ok(FlowPath::NotSimple),
        // TCP without SYN, FIN or RST, or UDP; anything else is the worker's.
        ip::TCP if tcp_flags & TCP_SYN_FIN_RST != 0 => return Ok(FlowPath::TcpControl),
        ip::TCP | ip::UDP => {}
        _ => return Ok(FlowPath::NotSimple),
    }
    // The redirect is only recorded here (it happens when the program returns), so it is
    // asked for before the frame changes: an output missing from the devmap leaves the frame
    // whole for the worker.
    if TX_PORTS.redirect(e.ifindex, 0).is_err() {
        return Ok(FlowPath::NoDevice);
    }
    // Bounds checked by the parse: the rewrite cannot stop half way.
    if rewrite(ctx, e, l4, protocol).is_none() {
        return Err(DropReason::Internal);
    }
    // SAFETY: as above. Plain adds, not atomic ones (a locked add costs more than the rest of
    // the rewrite): a direction arrives on one receive queue, so one CPU at a time writes its
    // entry, and a rare race between two loses a count, never corrupts one. The tick count,
    // because the verifier inlines it into a load where any clock helper is a call (a tenth
    // of the forward's cost where returns are dear), and conntrack reads this in seconds.
    unsafe {
        (*entry).packets += 1;
        (*entry).bytes += len(ctx) as u64;
        (*entry).last_seen = bpf_jiffies64();
    }
    Ok(FlowPath::Forwarded)
}

/// Writes the entry's tuple, checksums, TTL and MACs into the frame.
#[inline(always)]
fn rewrite(ctx: &XdpContext, e: &CtEntry, l4: usize, protocol: u8) -> Option<()> {
    let eth: &mut [u8; 12] = bytes_mut(ctx, 0)?;
    eth[..6].copy_from_slice(&e.dst_mac);
    eth[6..].copy_from_slice(&e.src_mac);
    if l4 == V4_L4 {
        let h: &mut [u8; 20] = bytes_mut(ctx, ETH_LEN)?;
        h[8] -= 1;
        h[12..16].copy_from_slice(&e.src[..4]);
        h[16..20].copy_from_slice(&e.dst[..4]);
        let sum = add(be16([h[10], h[11]]), e.ip_csum, false);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
    } else {
        let h: &mut [u8; 40] = bytes_mut(ctx, ETH_LEN)?;
        h[7] -= 1;
        h[8..24].copy_from_slice(&e.src);
        h[24..40].copy_from_slice(&e.dst);
    }
    let t: &mut [u8; 8] = bytes_mut(ctx, l4)?;
    t[..2].copy_from_slice(&e.sport.to_ne_bytes());
    t[2..4].copy_from_slice(&e.dport.to_ne_bytes());
    if protocol == ip::UDP {
        let sum = add(be16([t[6], t[7]]), e.l4_csum, true);
        t[6..8].copy_from_slice(&sum.to_be_bytes());
    } else {
        let t: &mut [u8; 18] = bytes_mut(ctx, l4)?;
        let sum = add(be16([t[16], t[17]]), e.l4_csum, false);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
    }
    Some(())
}

/// `old` checksum plus `delta` (RFC 1624 eqn. 3). A UDP checksum of 0 means none, and a
/// computed 0 is sent as 0xffff.
#[inline(always)]
fn add(old: u16, delta: u16, udp: bool) -> u16 {
    if udp && old == 0 {
        return 0;
    }
    let mut sum = u32::from(!old) + u32::from(delta);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let new = !(sum as u16);
    if udp && new == 0 { 0xffff } else { new }
}
